"""Chat completions, the blocking wrappers and the Tinker types, against the scripted fake."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from _sampling_fake import FakeVLLM, Gen, NeverPaused, SyncNeverPaused, text_of

import pausesvc.sampling as sampling
from pausesvc import InvalidInputError, PauseError
from pausesvc.sampling import (
    MissingLogprobError,
    RetryPolicy,
    SampleResult,
    UnresumableAbortError,
    chat_with_retry,
    chat_with_retry_sync,
    sample_with_retry_sync,
)

FAST = RetryPolicy(backoff_s=0.001, max_backoff_s=0.002)
MSGS = [{"role": "user", "content": "hi"}]


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": "lora-a", "messages": list(MSGS), "max_completion_tokens": 10, **kw}


async def run_chat(script: list[Any], request: dict[str, Any]) -> tuple[SampleResult, FakeVLLM]:
    fake = FakeVLLM(script)
    async with fake.async_client() as http:
        result = await chat_with_retry(http, "", request, waiter=NeverPaused(), policy=FAST)
    return result, fake


async def test_chat_continues_the_partial_assistant_message() -> None:
    script = [Gen([1, 2], "abort"), Gen([3], None), Gen([4, 5], "stop")]
    result, fake = await run_chat(script, chat(logprobs=True, max_tokens=12))
    assert result.tokens == [1, 2, 3, 4, 5] and result.finish_reason == "stop"
    assert result.text == text_of([1, 2, 3, 4, 5])
    assert result.logprobs == [-t / 1000 for t in range(1, 6)]
    first, second, third = fake.bodies
    assert "continue_final_message" not in first and first["messages"] == MSGS
    assert second["messages"] == [*MSGS, {"role": "assistant", "content": text_of([1, 2])}]
    assert second["continue_final_message"] is True and second["add_generation_prompt"] is False
    assert (second["max_completion_tokens"], second["max_tokens"]) == (8, 10)
    assert third["messages"][-1]["content"] == text_of([1, 2, 3])
    assert third["max_completion_tokens"] == 7
    assert [p.endswith("/v1/chat/completions") for p in (r.path for r in fake.requests)] == [True] * 3
    assert result.response["choices"][0]["message"] == {"role": "assistant", "content": result.text}
    assert len(result.response["choices"][0]["logprobs"]["content"]) == 5
    assert result.prompt_token_ids == [ord("h"), ord("i")]
    assert [b.index for b in result.boundaries] == [2, 3]


async def test_chat_never_aborting_is_one_call() -> None:
    result, fake = await run_chat([Gen([7], "stop")], chat())
    assert len(fake.requests) == 1 and result.response["id"] == "chatcmpl-1"


async def test_chat_prefill_is_extended_not_duplicated() -> None:
    msgs = [*MSGS, {"role": "assistant", "content": "Sure: "}]
    result, fake = await run_chat(
        [Gen([1], "abort"), Gen([2], "stop")],
        chat(messages=msgs, continue_final_message=True, add_generation_prompt=False),
    )
    assert fake.bodies[1]["messages"] == [*MSGS, {"role": "assistant", "content": "Sure: " + text_of([1])}]
    assert result.tokens == [1, 2]


async def test_chat_cannot_resume_inside_a_character() -> None:
    with pytest.raises(UnresumableAbortError) as ei:
        await run_chat([Gen([1, 2], "abort", text="ab\ufffd")], chat())
    assert ei.value.partial is not None and ei.value.partial.tokens == [1, 2]


async def test_chat_missing_logprob() -> None:
    with pytest.raises(MissingLogprobError):
        await run_chat([Gen([1, 2], "stop", logprobs=[-0.5, None])], chat(logprobs=True))


@pytest.mark.parametrize(
    ("patch", "fieldname"),
    [
        ({"max_completion_tokens": None}, "max_completion_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 3}, "n"),
        ({"messages": []}, "messages"),
        ({"stream": True}, "stream"),
        ({"top_logprobs": -2}, "top_logprobs"),
    ],
)
async def test_chat_validation(patch: dict[str, Any], fieldname: str) -> None:
    fake = FakeVLLM([Gen([1])])
    async with fake.async_client() as http:
        with pytest.raises(InvalidInputError) as ei:
            await chat_with_retry(http, "", chat(**patch), waiter=NeverPaused())
    assert ei.value.field == fieldname and fake.requests == []


def test_sync_wrapper_the_skyrl_example() -> None:
    fake = FakeVLLM([Gen(list(range(100, 105)), "abort"), Gen(list(range(200, 204)), "stop")])
    waiter = SyncNeverPaused(pause_revision=3)
    with fake.sync_client() as http:
        result = sample_with_retry_sync(
            http, "", {"model": "lora-a", "prompt": [10, 20, 30], "max_tokens": 16}, waiter=waiter
        )
    assert result.tokens == [*range(100, 105), *range(200, 204)]
    assert result.finish_reason == "stop"
    assert fake.bodies[1]["prompt"] == [10, 20, 30, *range(100, 105)]
    assert fake.bodies[1]["max_tokens"] == 11 and waiter.waits == 1
    assert [(b.index, b.pause_revision) for b in result.boundaries] == [(5, 3)]


def test_sync_chat_and_sync_waiter_checks() -> None:
    fake = FakeVLLM([Gen([1], "abort"), Gen([2], "stop")])
    with fake.sync_client() as http:
        result = chat_with_retry_sync(http, "", chat(), waiter=SyncNeverPaused())
        assert result.tokens == [1, 2]
        with pytest.raises(PauseError):  # an async waiter cannot block
            sample_with_retry_sync(
                http,
                "",
                {"model": "a", "prompt": [1], "max_tokens": 2},
                waiter=sampling.ServiceWaiter("http://x"),
            )


# the modules whose classes and functions pausesvc.sampling re-exports
SAMPLING_MODULES = {"pausesvc.sampling", "pausesvc.sampling.continuation", "pausesvc.sampling.waiters"}


def test_exported_members() -> None:
    """__all__ is what the module defines (httpx's test): every public class or function of the
    sampling modules found in pausesvc.sampling is declared, and every declared name exists."""
    public = {
        name: obj
        for name, obj in vars(sampling).items()
        if not name.startswith("_") and not inspect.ismodule(obj)
    }
    defined = {name for name, obj in public.items() if getattr(obj, "__module__", None) in SAMPLING_MODULES}
    declared = set(sampling.__all__)
    assert defined <= declared, f"public but not in __all__: {defined - declared}"
    assert declared <= set(public), f"in __all__ but not defined: {declared - set(public)}"
    assert len(set(sampling.__all__)) == len(sampling.__all__)
    for exc in (
        "SampleError",
        "UnresumableAbortError",
        "SampleRetryError",
        "SampleTimeoutError",
        "SampleResponseError",
        "MissingLogprobError",
    ):
        assert issubclass(getattr(sampling, exc), PauseError)
    assert "fastapi" not in sampling.__dict__ and "vllm" not in sampling.__dict__


# -- Tinker ----------------------------------------------------------------------------------------
tinker = pytest.importorskip("tinker")


async def test_tinker_response_with_an_honest_stop_reason() -> None:
    from tinker import types

    from pausesvc.sampling.tinker import sample_tinker

    fake = FakeVLLM([Gen([1, 2], "abort"), Gen([3], "length")])
    params = types.SamplingParams(max_tokens=3, temperature=0.5, seed=9, stop=[7])
    async with fake.async_client() as http:
        resp = await sample_tinker(
            http,
            "",
            model="lora-a",
            prompt=types.ModelInput.from_ints([10, 20, 30]),
            sampling_params=params,
            waiter=NeverPaused(),
            prompt_logprobs=True,
            policy=FAST,
        )
    assert isinstance(resp, types.SampleResponse)
    (seq,) = resp.sequences
    assert isinstance(seq, types.SampledSequence)
    assert seq.tokens == [1, 2, 3] and seq.stop_reason == "length"
    assert seq.logprobs == pytest.approx([-0.001, -0.002, -0.003])
    assert resp.prompt_logprobs == [None, pytest.approx(-0.01), pytest.approx(-0.02)]
    assert fake.bodies[0]["stop_token_ids"] == [7] and fake.bodies[0]["seed"] == 9
    assert fake.bodies[1]["prompt"] == [10, 20, 30, 1, 2]


async def test_tinker_num_samples_use_distinct_seeds() -> None:
    from pausesvc.sampling.tinker import sample_tinker

    fake = FakeVLLM([Gen([5], "stop")])
    async with fake.async_client() as http:
        resp = await sample_tinker(
            http,
            "",
            model="a",
            prompt=[1, 2],
            sampling_params={"max_tokens": 4, "seed": 1, "stop": []},
            waiter=NeverPaused(),
            num_samples=3,
        )
    assert [s.stop_reason for s in resp.sequences] == ["stop"] * 3
    assert len({b["seed"] for b in fake.bodies}) == 3
    assert all(b["ignore_eos"] for b in fake.bodies)


async def test_tinker_an_unresumable_abort_raises_never_length() -> None:
    from pausesvc.sampling.tinker import sample_tinker, to_sampled_sequence

    fake = FakeVLLM([Gen([1, 2], "abort", no_token_ids=True)])
    async with fake.async_client() as http:
        with pytest.raises(UnresumableAbortError):
            await sample_tinker(
                http, "", model="a", prompt=[1], sampling_params={"max_tokens": 4}, waiter=NeverPaused()
            )
    # a partial (aborted) result can never be dressed up as a Tinker sequence
    fake3 = FakeVLLM([Gen([], "abort")])
    async with fake3.async_client() as http:
        with pytest.raises(sampling.SampleRetryError) as ei:
            await sampling.sample_with_retry(
                http,
                "",
                {"model": "a", "prompt": [1], "max_tokens": 4},
                waiter=NeverPaused(),
                policy=RetryPolicy(max_zero_progress_aborts=0),
            )
    assert ei.value.partial is not None
    with pytest.raises(UnresumableAbortError):
        to_sampled_sequence(ei.value.partial)
