"""Tinker's own response types from samples that survived pauses (``pip install pausesvc[tinker]``).

A Tinker-API backend forwards a ``SampleRequest`` to the fleet with :func:`sample_tinker` and
answers its caller with a real ``tinker.types.SampleResponse``. Tinker's ``StopReason`` is
``"stop" | "length"``: there is no ``"abort"``, so a sample that could not be finished raises
(a :class:`~pausesvc.sampling.SampleError`), it never becomes ``"length"``.

``tinker`` is imported when these functions are called, never by ``import pausesvc``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from pausesvc._exceptions import InvalidInputError
from pausesvc.sampling import sample_with_retry
from pausesvc.sampling_protocol import (
    MissingLogprobError,
    RetryPolicy,
    SampleResponseError,
    SampleResult,
    UnresumableAbortError,
)

__all__ = ["completion_request", "sample_tinker", "to_sample_response", "to_sampled_sequence"]

_STOP_REASONS = {"stop": "stop", "length": "length"}


def _types() -> Any:
    try:
        from tinker import types
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the Tinker helpers need the tinker extra: pip install 'pausesvc[tinker]'") from exc
    return types


def _stop_reason(result: SampleResult) -> str:
    reason = _STOP_REASONS.get(result.finish_reason)
    if reason is not None:
        return reason
    if result.finish_reason == "abort":
        raise UnresumableAbortError("an aborted sample has no Tinker stop reason", partial=result)
    raise SampleResponseError(
        f"finish_reason {result.finish_reason!r} has no Tinker stop reason", partial=result
    )


def to_sampled_sequence(result: SampleResult, *, sequence_id: str = "") -> Any:
    """A ``tinker.types.SampledSequence`` with an honest ``stop_reason`` (aborts raise)."""
    types = _types()
    stop = _stop_reason(result)
    cls = types.SampledSequence
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    if "tokens_np" in names:  # tinker >= 0.30: numpy-backed dataclass
        import numpy as np

        return cls(
            stop_reason=stop,
            sequence_id=sequence_id,
            tokens_np=np.asarray(result.tokens, dtype=np.int32),
            logprobs_np=None if result.logprobs is None else np.asarray(result.logprobs, dtype=np.float32),
        )
    return cls(
        stop_reason=stop,
        tokens=list(result.tokens),  # older pydantic model
        logprobs=None if result.logprobs is None else list(result.logprobs),
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


def to_sample_response(
    results: Sequence[SampleResult],
    *,
    prompt_logprobs: bool = False,
    sequence_ids: Sequence[str] | None = None,
) -> Any:
    """A ``tinker.types.SampleResponse`` of one sequence per result (prompt logprobs from the
    first result)."""
    types = _types()
    ids = list(sequence_ids) if sequence_ids is not None else [str(i) for i in range(len(results))]
    seqs = [to_sampled_sequence(r, sequence_id=s) for r, s in zip(results, ids, strict=True)]
    kwargs: dict[str, Any] = {"sequences": seqs}
    if prompt_logprobs and results:
        values = prompt_logprob_values(results[0])
        cls = types.SampleResponse
        if dataclasses.is_dataclass(cls) and "prompt_logprobs_np" in {
            f.name for f in dataclasses.fields(cls)
        }:
            import numpy as np

            kwargs["prompt_logprobs_np"] = np.asarray(
                [np.nan if v is None else v for v in values], dtype=np.float32
            )
        else:
            kwargs["prompt_logprobs"] = values
    return types.SampleResponse(**kwargs)


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
) -> Any:
    """Sample ``num_samples`` sequences concurrently (one n=1 request each, so each resumes on
    its own) and answer with a ``tinker.types.SampleResponse``."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise InvalidInputError("num_samples must be a positive integer", field="num_samples")
    _types()
    bodies = [
        completion_request(
            model, prompt, sampling_params, prompt_logprobs=prompt_logprobs and i == 0, index=i
        )
        for i in range(num_samples)
    ]
    try:
        async with asyncio.TaskGroup() as tg:  # one failure cancels the other samples
            tasks = [
                tg.create_task(
                    sample_with_retry(http, base_url, b, waiter=waiter, timeout=timeout, policy=policy)
                )
                for b in bodies
            ]
    except ExceptionGroup as group:
        raise group.exceptions[0] from group
    return to_sample_response([t.result() for t in tasks], prompt_logprobs=prompt_logprobs)
