"""Version spans: every attempt's x-pausesvc-adapter-version header, recorded per token span."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from _sampling_fake import FakeVLLM, Gen, NeverPaused, Status, SyncNeverPaused

from pausesvc.sampling import (
    ADAPTER_VERSION_HEADER,
    RetryPolicy,
    SampleResult,
    SampleRetryError,
    VersionSpan,
    chat_with_retry,
    chat_with_retry_sync,
    sample_with_retry,
    sample_with_retry_sync,
    version_of,
)

FAST = RetryPolicy(backoff_s=0.001, max_backoff_s=0.002)


def completion(**kw: Any) -> dict[str, Any]:
    return {"model": "lora-a", "prompt": [10, 20, 30], "max_tokens": 16, **kw}


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": "lora-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, **kw}


async def run(script: list[Any], *, endpoint: str = "completion", **kw: Any) -> tuple[SampleResult, FakeVLLM]:
    fake = FakeVLLM(script)
    kw.setdefault("policy", FAST)
    async with fake.async_client() as http:
        if endpoint == "chat":
            result = await chat_with_retry(http, "", chat(), waiter=NeverPaused(), **kw)
        else:
            result = await sample_with_retry(http, "", completion(), waiter=NeverPaused(), **kw)
    return result, fake


def run_sync(script: list[Any], *, endpoint: str = "completion") -> SampleResult:
    fake = FakeVLLM(script)
    with fake.sync_client() as http:
        if endpoint == "chat":
            return chat_with_retry_sync(http, "", chat(), waiter=SyncNeverPaused(), policy=FAST)
        return sample_with_retry_sync(http, "", completion(), waiter=SyncNeverPaused(), policy=FAST)


def tiles(result: SampleResult) -> bool:
    """The spans cover the tokens from 0 to len(tokens), in order, without gaps or overlaps."""
    edges = [0] + [s.end for s in result.versions]
    return [s.start for s in result.versions] == edges[:-1] and edges[-1] == len(result.tokens)


SWAP = [Gen([1, 2], "abort", version="v1"), Gen([3, 4, 5], "stop", version="v2")]


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
async def test_a_sample_resumed_across_a_swap_has_one_span_per_version(endpoint: str) -> None:
    result, _ = await run(SWAP, endpoint=endpoint)
    assert result.tokens == [1, 2, 3, 4, 5] and result.finish_reason == "stop"
    assert result.versions == (VersionSpan(0, 2, "v1"), VersionSpan(2, 5, "v2"))
    assert [b.index for b in result.boundaries] == [result.versions[1].start]
    assert tiles(result)


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_the_blocking_helpers_record_the_same_spans(endpoint: str) -> None:
    result = run_sync(SWAP, endpoint=endpoint)
    assert result.versions == (VersionSpan(0, 2, "v1"), VersionSpan(2, 5, "v2"))


async def test_without_the_header_the_spans_say_none() -> None:
    result, _ = await run([Gen([1, 2], "abort"), Gen([3], "stop")])
    assert result.resumed and result.versions == (VersionSpan(0, 3, None),)
    mixed, _ = await run([Gen([1, 2], "abort", version="v1"), Gen([3], "stop")])
    assert mixed.versions == (VersionSpan(0, 2, "v1"), VersionSpan(2, 3, None))


async def test_segments_of_the_same_version_merge() -> None:
    v1 = [Gen([1], "abort", version="v1"), Gen([2], "abort", version="v1")]
    result, _ = await run([*v1, Gen([3], "stop")])
    assert result.versions == (VersionSpan(0, 2, "v1"), VersionSpan(2, 3, None))
    result, _ = await run([*v1, Gen([3], version="v1")])
    assert len(result.boundaries) == 2 and result.versions == (VersionSpan(0, 3, "v1"),)
    # a version that comes back after another one is a new span, not a merge across it
    result, _ = await run(
        [Gen([1], "abort", version="v1"), Gen([2], "abort", version="v2"), Gen([3], "stop", version="v1")]
    )
    assert result.versions == (VersionSpan(0, 1, "v1"), VersionSpan(1, 2, "v2"), VersionSpan(2, 3, "v1"))


async def test_attempts_without_tokens_leave_no_span() -> None:
    # aborted while queued on the old weights, then sampled entirely by the new ones
    script = [Gen([], "abort", version="v1"), Status(503), Gen([7, 8], "stop", version="v2")]
    result, fake = await run(script)
    assert len(fake.requests) == 3 and result.versions == (VersionSpan(0, 2, "v2"),)
    empty, _ = await run([Gen([], "stop", version="v1")])
    assert empty.tokens == [] and empty.versions == ()


async def test_a_never_aborted_sample_has_one_span() -> None:
    result, _ = await run([Gen([4, 5], "stop", version="v9")])
    assert result.versions == (VersionSpan(0, 2, "v9"),) and len(result.versions[0]) == 2
    assert result.response["id"] == "cmpl-1"  # still the server's own answer


async def test_the_partial_of_an_error_carries_its_spans() -> None:
    script = [Gen([1, 2], "abort", version="v1"), Gen([], "abort", version="v2")]
    with pytest.raises(SampleRetryError) as ei:
        await run(script, policy=RetryPolicy(max_zero_progress_aborts=1, backoff_s=0, max_backoff_s=0))
    partial = ei.value.partial
    assert partial is not None and partial.finish_reason == "abort"
    assert partial.versions == (VersionSpan(0, 2, "v1"),)


def test_version_of_reads_the_header_case_insensitively() -> None:
    assert ADAPTER_VERSION_HEADER == "x-pausesvc-adapter-version"
    assert version_of(httpx.Headers({"X-Pausesvc-Adapter-Version": " v3 "})) == "v3"
    assert version_of(httpx.Headers({"x-pausesvc-adapter-version": ""})) is None
    assert version_of(httpx.Headers({})) is None


def test_a_response_naming_two_versions_is_refused() -> None:
    """A repeated version header (something between the replica and us): which weights made
    the tokens cannot be told - refused, never one span labelled "v1, v2"."""
    from pausesvc.sampling import SampleResponseError

    headers = httpx.Headers([("X-Pausesvc-Adapter-Version", "v1"), ("X-Pausesvc-Adapter-Version", "v2")])
    with pytest.raises(SampleResponseError, match="2 adapter versions"):
        version_of(headers)
    same = httpx.Headers([("X-Pausesvc-Adapter-Version", "v1"), ("X-Pausesvc-Adapter-Version", "v1")])
    assert version_of(same) == "v1"
