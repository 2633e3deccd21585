"""sample_with_retry over /v1/completions against a scripted fake server (no Redis)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from _sampling_fake import AlwaysPaused, Drop, FakeVLLM, Gen, NeverPaused, Status, text_of

from pausesvc import InvalidInputError, PauseError
from pausesvc.sampling import (
    MissingLogprobError,
    RetryPolicy,
    SampleResponseError,
    SampleRetryError,
    SampleTimeoutError,
    UnresumableAbortError,
    derive_seed,
    sample_with_retry,
)

PROMPT = [10, 20, 30]
FAST = RetryPolicy(backoff_s=0.001, max_backoff_s=0.002)


def req(**kw: Any) -> dict[str, Any]:
    return {"model": "lora-a", "prompt": list(PROMPT), "max_tokens": 16, **kw}


async def run(script: list[Any], request: dict[str, Any], **kw: Any) -> tuple[Any, FakeVLLM]:
    fake = FakeVLLM(script)
    kw.setdefault("waiter", NeverPaused())
    kw.setdefault("policy", FAST)
    async with fake.async_client() as http:
        result = await sample_with_retry(http, "", request, **kw)
    return result, fake


async def test_a_sample_that_never_aborts_makes_one_call_and_returns_it_unchanged() -> None:
    result, fake = await run([Gen([5, 6, 7], "stop")], req(logprobs=1, prompt_logprobs=0))
    assert len(fake.requests) == 1
    assert fake.bodies[0] == {**req(logprobs=1, prompt_logprobs=0), "return_token_ids": True}
    plain = FakeVLLM([Gen([5, 6, 7], "stop")])
    expected = plain.answer("/v1/completions", fake.bodies[0], plain.script[0])[1]
    expected["id"] = "cmpl-1"
    assert result.response == expected
    assert (result.tokens, result.finish_reason, result.attempts) == ([5, 6, 7], "stop", 1)
    assert result.logprobs == [-0.005, -0.006, -0.007]
    assert result.boundaries == ()
    assert not result.resumed


async def test_the_skyrl_example() -> None:
    result, fake = await run([Gen(list(range(100, 105)), "abort"), Gen(list(range(200, 204)), "stop")], req())
    assert result.tokens == [100, 101, 102, 103, 104, 200, 201, 202, 203]
    assert result.finish_reason == "stop"
    assert len(fake.requests) == 2
    assert fake.bodies[1]["prompt"] == [10, 20, 30, 100, 101, 102, 103, 104]
    assert fake.bodies[1]["max_tokens"] == 11
    assert [b.index for b in result.boundaries] == [5]


async def test_accumulation_across_several_aborts() -> None:
    script = [Gen([1, 2], "abort"), Gen([3], None), Gen([4, 5, 6], "abort"), Gen([7], "length")]
    result, fake = await run(script, req(max_tokens=7, logprobs=1, min_tokens=5))
    assert result.tokens == [1, 2, 3, 4, 5, 6, 7]
    assert result.logprobs == [-t / 1000 for t in range(1, 8)]
    assert result.top_logprobs == [{f"<{t}>": -t / 1000} for t in range(1, 8)]
    assert result.finish_reason == "length"
    assert result.text == text_of(list(range(1, 8)))
    assert [b["prompt"] for b in fake.bodies] == [
        PROMPT,
        [*PROMPT, 1, 2],
        [*PROMPT, 1, 2, 3],
        [*PROMPT, 1, 2, 3, 4, 5, 6],
    ]
    assert [b["max_tokens"] for b in fake.bodies] == [7, 5, 4, 1]
    assert [b["min_tokens"] for b in fake.bodies] == [5, 3, 2, 0]
    assert [(b.index, b.attempt, b.reason) for b in result.boundaries] == [
        (2, 2, "abort"),
        (3, 3, "abort"),
        (6, 4, "abort"),
    ]
    choice = result.response["choices"][0]
    assert choice["token_ids"] == result.tokens and choice["text"] == result.text
    assert choice["prompt_token_ids"] == PROMPT
    offsets = choice["logprobs"]["text_offset"]
    assert [result.text[o : o + 3] for o in offsets] == [f"<{t}>" for t in range(1, 8)]
    assert result.response["usage"] == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}


async def test_missing_finish_reason_counts_as_abort() -> None:
    script = [Gen([1, 2], omit_finish=True), Gen([3], "stop")]
    result, fake = await run(script, req())
    assert result.tokens == [1, 2, 3] and len(fake.requests) == 2


async def test_abort_with_nothing_left_is_length_without_a_call() -> None:
    result, fake = await run([Gen([1, 2, 3, 4], "abort")], req(max_tokens=4))
    assert (result.tokens, result.finish_reason, len(fake.requests)) == ([1, 2, 3, 4], "length", 1)
    assert result.response["choices"][0]["finish_reason"] == "length"


async def test_prompt_logprobs_are_the_original_prompts_only() -> None:
    result, fake = await run([Gen([1, 2], "abort"), Gen([3], "stop")], req(prompt_logprobs=0))
    second = fake.bodies[1]
    assert second["prompt_logprobs"] == 0 and second["prompt"] == [*PROMPT, 1, 2]
    assert result.prompt_token_ids == PROMPT
    assert result.prompt_logprobs == [
        None,
        {"20": {"logprob": -0.01, "rank": 1, "decoded_token": "<20>"}},
        {"30": {"logprob": -0.02, "rank": 1, "decoded_token": "<30>"}},
    ]
    assert result.response["choices"][0]["prompt_logprobs"] == result.prompt_logprobs


async def test_zero_progress_aborts_back_off_with_jitter() -> None:
    policy = RetryPolicy(backoff_s=0.04, max_backoff_s=1.0)
    script = [Gen([], "abort")] * 4 + [Gen([9], "stop")]
    result, fake = await run(script, req(), policy=policy)
    assert result.tokens == [9]
    gaps = [b.at - a.at for a, b in zip(fake.requests, fake.requests[1:], strict=False)]
    # 0.04 * 2**k, each jittered into [50%, 100%]
    for k, gap in enumerate(gaps):
        assert 0.04 * 2**k * 0.5 <= gap < 0.04 * 2**k + 0.5
    assert [b.index for b in result.boundaries] == [0, 0, 0, 0]


async def test_zero_progress_aborts_are_capped() -> None:
    policy = RetryPolicy(max_zero_progress_aborts=3, backoff_s=0.001, max_backoff_s=0.001)
    fake_script = [Gen([1, 2], "abort"), Gen([], "abort")]
    with pytest.raises(SampleRetryError) as ei:
        await run(fake_script, req(), policy=policy)
    partial = ei.value.partial
    assert partial is not None and partial.tokens == [1, 2]
    assert partial.finish_reason == "abort" and partial.attempts == 5


async def test_a_zero_progress_abort_explained_by_a_pause_is_resent_at_once() -> None:
    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=1.0)
    t0 = time.monotonic()
    result, _ = await run(
        [Gen([], "abort"), Gen([4], "stop")], req(), policy=policy, waiter=NeverPaused(pause_revision=7)
    )
    assert time.monotonic() - t0 < 0.5
    assert [(b.index, b.pause_revision) for b in result.boundaries] == [(0, 7)]


async def test_the_deadline_bounds_a_stalled_request() -> None:
    never = asyncio.Event()
    from _sampling_fake import Hold

    t0 = time.monotonic()
    with pytest.raises(SampleTimeoutError) as ei:
        await run([Gen([1, 2], "abort"), Hold(never, Gen([3]))], req(), timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 2.0
    assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, PauseError)
    assert ei.value.partial is not None and ei.value.partial.tokens == [1, 2]


async def test_the_deadline_bounds_the_wait_for_a_resume() -> None:
    t0 = time.monotonic()
    with pytest.raises(SampleTimeoutError) as ei:
        await run([Gen([1], "abort")], req(), timeout=0.3, waiter=AlwaysPaused())
    assert 0.25 < time.monotonic() - t0 < 2.0
    assert ei.value.partial is not None and ei.value.partial.tokens == [1]


async def test_a_transport_error_after_progress_keeps_the_tokens() -> None:
    script = [Gen([100, 101], "abort"), Drop(), Gen([102, 103], "stop")]
    result, fake = await run(script, req())
    assert result.tokens == [100, 101, 102, 103]
    assert fake.bodies[1]["prompt"] == fake.bodies[2]["prompt"] == [*PROMPT, 100, 101]
    assert [(b.index, b.reason) for b in result.boundaries] == [(2, "abort"), (2, "transport")]


async def test_transport_errors_are_capped_and_the_partial_result_survives() -> None:
    policy = RetryPolicy(max_failures=2, backoff_s=0.001, max_backoff_s=0.001)
    with pytest.raises(SampleRetryError) as ei:
        await run([Gen([100, 101, 102], "abort"), Drop()], req(), policy=policy)
    assert ei.value.partial is not None and ei.value.partial.tokens == [100, 101, 102]
    assert ei.value.partial.finish_reason == "abort"
    assert ei.value.__cause__ is None or isinstance(ei.value.__cause__, Exception)


async def test_retryable_statuses_are_retried_other_statuses_raise() -> None:
    result, _fake = await run([Gen([1], "abort"), Status(503), Gen([2], "stop")], req())
    assert result.tokens == [1, 2] and [b.reason for b in result.boundaries] == ["abort", "status"]
    with pytest.raises(SampleResponseError) as ei:
        await run([Gen([1], "abort"), Status(404)], req())
    assert ei.value.status_code == 404 and ei.value.partial is not None
    assert ei.value.partial.tokens == [1]


@pytest.mark.parametrize("logprobs", [[-0.1, None], [-0.1], [-0.1, "x"]])
async def test_a_missing_logprob_is_an_error_never_a_zero(logprobs: list[Any]) -> None:
    with pytest.raises(MissingLogprobError) as ei:
        await run([Gen([1], "abort"), Gen([2, 3], "stop", logprobs=logprobs)], req(logprobs=0))
    assert ei.value.partial is not None and ei.value.partial.logprobs == [-0.001]


async def test_an_abort_without_token_ids_cannot_be_resumed() -> None:
    with pytest.raises(UnresumableAbortError) as ei:
        await run([Gen([1, 2], "abort", no_token_ids=True)], req())
    assert ei.value.partial is not None and ei.value.partial.finish_reason == "abort"


async def test_text_that_no_token_made_is_refused() -> None:
    """An abort carrying text with an empty token_ids list: the sample's text would claim what
    its tokens (and the continuation's prompt) lack - refused, not kept."""
    with pytest.raises(UnresumableAbortError):
        await run([Gen([], "abort", text="HELLO"), Gen([7, 8], "stop")], req())


async def test_an_abort_is_never_reported_as_length_when_the_waiter_fails() -> None:
    class Broken:
        async def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
            raise PauseError("control service refused")

    with pytest.raises(UnresumableAbortError) as ei:
        await run([Gen([1, 2], "abort")], req(max_tokens=3), waiter=Broken())
    assert ei.value.partial is not None and ei.value.partial.finish_reason == "abort"


async def test_boundaries_record_the_index_and_the_pause_revision() -> None:
    script = [Gen([1, 2, 3], "abort"), Gen([4], "abort"), Gen([5], "stop")]
    result, _ = await run(script, req(), waiter=NeverPaused(pause_revision=42))
    assert [(b.index, b.pause_revision, b.attempt) for b in result.boundaries] == [(3, 42, 2), (4, 42, 3)]


async def test_a_continuation_gets_a_derived_seed() -> None:
    result, fake = await run([Gen([1, 2], "abort"), Gen([3], "stop")], req(seed=1234))
    assert fake.bodies[0]["seed"] == 1234
    assert fake.bodies[1]["seed"] == derive_seed(1234, 2) != 1234
    assert result.boundaries[0].seed == fake.bodies[1]["seed"]
    assert 0 <= derive_seed(-5, 3) < 2**63 and derive_seed(7, 0) == 7


async def test_a_string_prompt_resumes_from_the_servers_prompt_token_ids() -> None:
    result, fake = await run([Gen([1, 2], "abort"), Gen([3], "stop")], req(prompt="hello"))
    assert fake.bodies[1]["prompt"] == [1, 2, 3, 1, 2] and result.tokens == [1, 2, 3]


BAD: list[tuple[dict[str, Any], str]] = [
    ({"n": 2}, "n"),
    ({"best_of": 3}, "best_of"),
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"stream": True}, "stream"),
    ({"echo": True}, "echo"),
    ({"prompt": [[1, 2]]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"model": None}, "model"),
    ({"logprobs": -1}, "logprobs"),
    ({"seed": "x"}, "seed"),
    ({"min_tokens": -1}, "min_tokens"),
]


@pytest.mark.parametrize(("patch", "fieldname"), BAD)
async def test_every_validation_error_is_raised_before_any_call(
    patch: dict[str, Any], fieldname: str
) -> None:
    request = req(**patch)
    if patch.get("max_tokens", 1) is None:
        del request["max_tokens"]
    fake = FakeVLLM([Gen([1])])
    async with fake.async_client() as http:
        with pytest.raises(InvalidInputError) as ei:
            await sample_with_retry(http, "", request, waiter=NeverPaused())
    assert ei.value.field == fieldname and isinstance(ei.value, ValueError)
    assert fake.requests == []


async def test_other_bad_arguments() -> None:
    fake = FakeVLLM([Gen([1])])
    async with fake.async_client() as http:
        with pytest.raises(InvalidInputError):
            await sample_with_retry(http, "", [1, 2], waiter=NeverPaused())  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await sample_with_retry(http, "", req(), waiter=NeverPaused(), timeout=-1)
        with pytest.raises(InvalidInputError):
            RetryPolicy(max_failures=-1)
        with pytest.raises(PauseError):
            await sample_with_retry(http, "", req(), waiter=object())
        result = await sample_with_retry(
            http, "http://vllm/v1/completions", req(), waiter=NeverPaused(), adapter="other"
        )
        assert result.tokens == [1]
    assert [r.path for r in fake.requests] == ["/v1/completions"]
