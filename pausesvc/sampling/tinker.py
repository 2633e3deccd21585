"""Tinker's own response types from samples that survived pauses (``pip install pausesvc[tinker]``).

A Tinker-API backend forwards a ``SampleRequest`` to the fleet with :func:`sample_tinker` and
answers its caller with a real ``tinker.types.SampleResponse``. Tinker's ``StopReason`` is
``"stop" | "length"``: there is no ``"abort"``, so a sample that could not be finished raises
(a :class:`~pausesvc.sampling.SampleError`), it never becomes ``"length"``.

Weights (Tinker 0.38's ``SamplingClientKind``, ``"snapshot" | "inflight"``):

- ``kind="snapshot"`` (Tinker's default: "inference must stay on one saved set of weights"):
  a sample whose version spans name two versions, or a response whose sequences were sampled
  by different versions, raises :class:`MixedVersionsError` (its ``partial`` is the offending
  sample, whole). A resume on the same weights is fine. A span without a label (the response
  named no version) next to a labelled one counts as a second version; a sample with no label
  at all (a gate without versions) cannot be checked and is returned.
- ``kind="inflight"`` ("rollouts move to newer weights without restarting"): such a sample is
  returned, and - unlike Tinker's own inflight responses, which "do not identify which saved
  weights produced each token" - it says so.

Tinker's ``SampledSequence`` (a frozen dataclass; on the wire: stop reason, tokens, logprobs,
top-k) has no metadata or extension field, so every sequence is a
:class:`PausesvcSampledSequence`: the SDK's class
with ``boundaries`` and ``versions`` added (``isinstance(seq, types.SampledSequence)`` holds,
``dataclasses.replace`` keeps them). They live in the process only: Tinker's wire format drops
them.

This module imports ``tinker``; ``import pausesvc`` and ``pausesvc.sampling`` never do.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import httpx

from pausesvc._exceptions import InvalidInputError
from pausesvc.sampling import sample_with_retry
from pausesvc.sampling.continuation import (
    Boundary,
    MissingLogprobError,
    MixedVersionsError,
    RetryPolicy,
    SampleResponseError,
    SampleResult,
    UnresumableAbortError,
    VersionSpan,
)

try:
    import numpy as np  # a dependency of tinker
    from tinker import types
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "pausesvc.sampling.tinker needs the tinker extra: pip install 'pausesvc[tinker]'"
    ) from exc

__all__ = [
    "PausesvcSampledSequence",
    "check_kind",
    "completion_request",
    "prompt_logprob_values",
    "sample_tinker",
    "to_sample_response",
    "to_sampled_sequence",
]

_STOP_REASONS: dict[str, types.StopReason] = {"stop": "stop", "length": "length"}
_KINDS: tuple[str, ...] = get_args(types.SamplingClientKind)


@dataclass(frozen=True)
class PausesvcSampledSequence(types.SampledSequence):
    """A ``tinker.types.SampledSequence`` that says where it was resumed and which weights
    produced which tokens.

    ``boundaries``: :attr:`SampleResult.boundaries` (one per resume). ``versions``:
    :attr:`SampleResult.versions`, contiguous :class:`~pausesvc.sampling.VersionSpan` runs over
    ``tokens``. A sequence that spans a weight swap is off-policy from ``versions[1].start`` on.
    """

    boundaries: tuple[Boundary, ...] = ()
    versions: tuple[VersionSpan, ...] = ()


def _stop_reason(result: SampleResult) -> types.StopReason:
    reason = _STOP_REASONS.get(result.finish_reason)
    if reason is not None:
        return reason
    if result.finish_reason == "abort":
        raise UnresumableAbortError("an aborted sample has no Tinker stop reason", partial=result)
    raise SampleResponseError(
        f"finish_reason {result.finish_reason!r} has no Tinker stop reason", partial=result
    )


def _valid_kind(kind: object) -> None:
    if kind not in _KINDS:
        raise InvalidInputError(f"kind must be one of {', '.join(_KINDS)}; got {kind!r}", field="kind")


def check_kind(result: SampleResult, kind: types.SamplingClientKind = "snapshot") -> None:
    """Raise :class:`MixedVersionsError` when ``kind`` is ``"snapshot"`` and the sample's tokens
    do not all carry one version label (an unlabelled span next to a labelled one counts as a
    second version: it cannot be shown to be the same weights)."""
    _valid_kind(kind)
    labels = {span.version for span in result.versions}
    if kind == "snapshot" and len(labels) > 1:
        spans = ", ".join(f"[{s.start}, {s.end}) {s.version!r}" for s in result.versions)
        raise MixedVersionsError(
            f"a snapshot sample must come from one set of weights, but its tokens span {spans} "
            "(sample with kind='inflight' to accept it)",
            partial=result,
        )


def to_sampled_sequence(
    result: SampleResult, *, sequence_id: str = "", kind: types.SamplingClientKind = "snapshot"
) -> PausesvcSampledSequence:
    """A ``tinker.types.SampledSequence`` (a :class:`PausesvcSampledSequence`) with an honest
    ``stop_reason`` (aborts raise) and the sample's boundaries and version spans; see
    :func:`check_kind` for ``kind``."""
    stop = _stop_reason(result)
    check_kind(result, kind)
    return PausesvcSampledSequence(
        stop_reason=stop,
        sequence_id=sequence_id,
        tokens_np=np.asarray(result.tokens, dtype=np.int32),
        logprobs_np=None if result.logprobs is None else np.asarray(result.logprobs, dtype=np.float32),
        boundaries=result.boundaries,
        versions=result.versions,
    )


def prompt_logprob_values(result: SampleResult) -> list[float | None]:
    """vLLM's prompt logprobs (``{token_id: {"logprob": ...}}`` per position) as Tinker's
    per-position floats: the logprob of the prompt's own token, None at position 0."""
    ids, entries = result.prompt_token_ids, result.prompt_logprobs
    if ids is None or entries is None or len(entries) != len(ids):
        raise MissingLogprobError("prompt logprobs were requested but not returned", partial=result)
    out: list[float | None] = []
    for i, (tok, entry) in enumerate(zip(ids, entries, strict=True)):
        if entry is None and i == 0:
            out.append(None)
            continue
        value = entry.get(str(tok), entry.get(tok)) if isinstance(entry, Mapping) else None
        lp = value.get("logprob") if isinstance(value, Mapping) else value
        if isinstance(lp, bool) or not isinstance(lp, (int, float)):
            raise MissingLogprobError(f"no prompt logprob for position {i}", partial=result)
        out.append(float(lp))
    return out


def _one_version_across(results: Sequence[SampleResult]) -> None:
    """A snapshot response comes from one set of weights: all its sequences share one label
    (each one already has a single label, see :func:`check_kind`)."""
    labelled = [(i, r) for i, r in enumerate(results) if r.versions]
    for i, result in labelled[1:]:
        first, label = labelled[0][1].versions[0].version, result.versions[0].version
        if label != first:
            raise MixedVersionsError(
                f"a snapshot response must come from one set of weights, but sequence {i} was "
                f"sampled by {label!r} and sequence {labelled[0][0]} by {first!r} (use kind='inflight')",
                partial=result,
            )


def to_sample_response(
    results: Sequence[SampleResult],
    *,
    prompt_logprobs: bool = False,
    sequence_ids: Sequence[str] | None = None,
    kind: types.SamplingClientKind = "snapshot",
) -> types.SampleResponse:
    """A ``tinker.types.SampleResponse`` of one sequence per result (prompt logprobs from the
    first result); ``kind`` as for :func:`to_sampled_sequence`."""
    ids = list(sequence_ids) if sequence_ids is not None else [str(i) for i in range(len(results))]
    seqs = [to_sampled_sequence(r, sequence_id=s, kind=kind) for r, s in zip(results, ids, strict=True)]
    if kind == "snapshot":
        _one_version_across(results)
    if not (prompt_logprobs and results):
        return types.SampleResponse(sequences=seqs)
    values = prompt_logprob_values(results[0])
    return types.SampleResponse(
        sequences=seqs,
        prompt_logprobs_np=np.asarray([np.nan if v is None else v for v in values], dtype=np.float32),
    )


def _sample_seed(seed: int, index: int) -> int:
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}#sample{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def completion_request(
    model: str,
    prompt: Sequence[int] | Any,
    sampling_params: Any,
    *,
    prompt_logprobs: bool = False,
    index: int = 0,
) -> dict[str, Any]:
    """The ``/v1/completions`` body for one Tinker sample (``prompt``: token ids or a
    ``ModelInput``; ``sampling_params``: a ``SamplingParams`` or a mapping of its fields)."""
    tokens = prompt.to_ints() if hasattr(prompt, "to_ints") else list(prompt)
    sp = (
        sampling_params
        if isinstance(sampling_params, Mapping)
        else (
            sampling_params.model_dump() if hasattr(sampling_params, "model_dump") else vars(sampling_params)
        )
    )
    body: dict[str, Any] = {
        "model": model,
        "prompt": tokens,
        "max_tokens": sp.get("max_tokens"),
        "temperature": sp.get("temperature", 1.0),
        "top_p": sp.get("top_p", 1.0),
        "top_k": sp.get("top_k", -1),
        "logprobs": 0,
    }
    if sp.get("seed") is not None:
        body["seed"] = _sample_seed(int(sp["seed"]), index)
    stop = sp.get("stop")
    if isinstance(stop, str):
        body["stop"] = [stop]
    elif stop is not None:
        stop = list(stop)
        if not stop:
            body["ignore_eos"] = True  # Tinker: [] disables every stop token, EOS included
        elif all(isinstance(s, int) and not isinstance(s, bool) for s in stop):
            body["stop_token_ids"] = stop
        elif all(isinstance(s, str) for s in stop):
            body["stop"] = stop
        else:
            raise InvalidInputError("stop must be strings or token ids, not both", field="stop")
    if prompt_logprobs:
        body["prompt_logprobs"] = 0
    return body


async def sample_tinker(
    http: httpx.AsyncClient,
    base_url: str,
    *,
    model: str,
    prompt: Sequence[int] | Any,
    sampling_params: Any,
    waiter: object,
    num_samples: int = 1,
    prompt_logprobs: bool = False,
    timeout: float | None = 600.0,
    policy: RetryPolicy | None = None,
    kind: types.SamplingClientKind = "snapshot",
) -> types.SampleResponse:
    """Sample ``num_samples`` sequences concurrently (one n=1 request each, so each resumes on
    its own) and answer with a ``tinker.types.SampleResponse`` of
    :class:`PausesvcSampledSequence`.

    ``kind="snapshot"`` (default): a sequence resumed across a weight swap raises
    :class:`MixedVersionsError` as soon as it finishes (cancelling the other samples), and so
    do sequences sampled whole by different versions. ``kind="inflight"``: they are returned,
    their ``versions`` saying which weights produced what.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise InvalidInputError("num_samples must be a positive integer", field="num_samples")
    _valid_kind(kind)
    bodies = [
        completion_request(
            model, prompt, sampling_params, prompt_logprobs=prompt_logprobs and i == 0, index=i
        )
        for i in range(num_samples)
    ]

    async def one(body: dict[str, Any]) -> SampleResult:
        result = await sample_with_retry(http, base_url, body, waiter=waiter, timeout=timeout, policy=policy)
        check_kind(result, kind)
        return result

    try:
        async with asyncio.TaskGroup() as tg:  # one failure cancels the other samples
            tasks = [tg.create_task(one(b)) for b in bodies]
    except ExceptionGroup as group:
        raise group.exceptions[0] from group
    return to_sample_response([t.result() for t in tasks], prompt_logprobs=prompt_logprobs, kind=kind)
