"""Tinker's snapshot and inflight sampling kinds over resumed samples, with the installed SDK's types."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any, get_args

import pytest
from _sampling_fake import FakeVLLM, Gen, NeverPaused

from pausesvc import InvalidInputError
from pausesvc.sampling import MixedVersionsError, RetryPolicy, SampleResult, VersionSpan

tinker = pytest.importorskip("tinker")
from tinker import types  # noqa: E402

from pausesvc.sampling.tinker import (  # noqa: E402
    PausesvcSampledSequence,
    check_kind,
    sample_tinker,
    to_sample_response,
    to_sampled_sequence,
)

FAST = RetryPolicy(backoff_s=0.001, max_backoff_s=0.002)
SWAP = [Gen([1, 2], "abort", version="v1"), Gen([3, 4, 5], "stop", version="v2")]


async def sample(script: list[Any], **kw: Any) -> tuple[Any, FakeVLLM]:
    fake = FakeVLLM(script)
    async with fake.async_client() as http:
        resp = await sample_tinker(
            http,
            "",
            model="lora-a",
            prompt=types.ModelInput.from_ints([10, 20, 30]),
            sampling_params=types.SamplingParams(max_tokens=8, temperature=0.7),
            waiter=NeverPaused(pause_revision=4),
            policy=FAST,
            **kw,
        )
    return resp, fake


def test_the_sdk_defines_the_two_kinds_and_no_metadata_field() -> None:
    # what the mapping is built on: if a later SDK adds a metadata field, use it instead
    assert set(get_args(types.SamplingClientKind)) == {"snapshot", "inflight"}
    names = {f.name for f in dataclasses.fields(types.SampledSequence)}
    assert not names & {"metadata", "extra", "extensions", "provenance", "versions"}


async def test_inflight_returns_a_sample_resumed_across_a_swap_with_its_spans() -> None:
    resp, fake = await sample(SWAP, kind="inflight")
    assert isinstance(resp, types.SampleResponse)
    (seq,) = resp.sequences
    assert isinstance(seq, types.SampledSequence) and isinstance(seq, PausesvcSampledSequence)
    assert seq.tokens == [1, 2, 3, 4, 5] and seq.stop_reason == "stop"
    assert seq.logprobs == pytest.approx([-t / 1000 for t in range(1, 6)])
    assert seq.versions == (VersionSpan(0, 2, "v1"), VersionSpan(2, 5, "v2"))
    assert [(b.index, b.pause_revision) for b in seq.boundaries] == [(2, 4)]
    assert fake.bodies[1]["prompt"] == [10, 20, 30, 1, 2]


async def test_snapshot_is_the_default_and_refuses_a_sample_that_spans_two_versions() -> None:
    with pytest.raises(MixedVersionsError) as ei:
        await sample(SWAP)
    partial = ei.value.partial
    assert partial is not None and partial.tokens == [1, 2, 3, 4, 5]
    assert [s.version for s in partial.versions] == ["v1", "v2"]
    assert "kind='inflight'" in str(ei.value)


async def test_snapshot_accepts_a_resume_on_the_same_weights() -> None:
    resp, _ = await sample([Gen([1, 2], "abort", version="v1"), Gen([3], "length", version="v1")])
    (seq,) = resp.sequences
    assert seq.tokens == [1, 2, 3] and seq.stop_reason == "length"
    assert seq.versions == (VersionSpan(0, 3, "v1"),) and len(seq.boundaries) == 1


async def test_snapshot_and_unlabelled_spans() -> None:
    # no header at all (a gate without versions): nothing to check, the sample is returned
    resp, _ = await sample([Gen([1], "abort"), Gen([2], "stop")])
    assert resp.sequences[0].versions == (VersionSpan(0, 2, None),)
    # an unlabelled span next to a labelled one cannot be shown to be the same weights
    with pytest.raises(MixedVersionsError):
        await sample([Gen([1], "abort"), Gen([2], "stop", version="v1")])


async def test_an_unknown_kind_is_refused_before_any_call() -> None:
    fake = FakeVLLM(SWAP)
    async with fake.async_client() as http:
        with pytest.raises(InvalidInputError) as ei:
            await sample_tinker(
                http,
                "",
                model="a",
                prompt=[1],
                sampling_params={"max_tokens": 4},
                waiter=NeverPaused(),
                kind="latest",
            )
    assert ei.value.field == "kind" and fake.requests == []


def mixed() -> SampleResult:
    return SampleResult(
        "completion",
        [7, 8, 9],
        "",
        "stop",
        None,
        [-0.1, -0.2, -0.3],
        None,
        [1, 2],
        None,
        (),
        2,
        {},
        (VersionSpan(0, 1, "a"), VersionSpan(1, 3, "b")),
    )


def test_the_conversions_honour_the_kind_and_keep_the_spans_through_the_sdk() -> None:
    with pytest.raises(MixedVersionsError):
        to_sampled_sequence(mixed())
    with pytest.raises(MixedVersionsError):
        to_sample_response([mixed()])
    check_kind(mixed(), "inflight")
    resp = to_sample_response([mixed()], kind="inflight", sequence_ids=["s-1"])
    (seq,) = resp.sequences
    # the SDK stamps sequence ids with dataclasses.replace (SamplingClient._attach_sequence_ids)
    stamped = dataclasses.replace(seq, sequence_id="s-2")
    assert isinstance(stamped, PausesvcSampledSequence) and stamped.versions == seq.versions
    assert stamped.tokens == [7, 8, 9]
    copy = pickle.loads(pickle.dumps(seq))
    assert copy.versions == seq.versions and copy.sequence_id == "s-1" and copy.tokens == [7, 8, 9]
    plain = to_sampled_sequence(dataclasses.replace(mixed(), versions=(VersionSpan(0, 3, "a"),)))
    assert plain.versions == (VersionSpan(0, 3, "a"),) and plain.boundaries == ()


def test_a_snapshot_response_comes_from_one_set_of_weights() -> None:
    def on(version: str | None, tokens: list[int]) -> SampleResult:
        spans = (VersionSpan(0, len(tokens), version),) if tokens else ()
        return dataclasses.replace(mixed(), tokens=tokens, logprobs=None, versions=spans)

    with pytest.raises(MixedVersionsError) as ei:
        to_sample_response([on("a", [1]), on(None, []), on("b", [2])])
    assert ei.value.partial is not None and ei.value.partial.tokens == [2] and "sequence 2" in str(ei.value)
    resp = to_sample_response([on("a", [1]), on(None, []), on("a", [2])])
    assert [s.tokens for s in resp.sequences] == [[1], [], [2]]
    assert len(to_sample_response([on("a", [1]), on("b", [2])], kind="inflight").sequences) == 2
