"""The clients a controller or a sampler holds: :class:`AsyncPauseClient` (asyncio) and
:class:`PauseClient` (blocking), on the shared configuration and argument/reply handling of
``_base``; the drain and version barriers are ``_drain``.

Each is imported on first use (PEP 562): an asyncio process (the vLLM gate) never loads the
blocking client."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pausesvc._exceptions import SwapError
    from pausesvc.client._async import AsyncPauseClient, release_watcher, shared_watcher
    from pausesvc.client._blocking import PauseClient

__all__ = ["AsyncPauseClient", "PauseClient", "SwapError", "release_watcher", "shared_watcher"]

_EXPORTS = {
    "AsyncPauseClient": "pausesvc.client._async",
    "release_watcher": "pausesvc.client._async",
    "shared_watcher": "pausesvc.client._async",
    "PauseClient": "pausesvc.client._blocking",
    "SwapError": "pausesvc._exceptions",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pausesvc.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
