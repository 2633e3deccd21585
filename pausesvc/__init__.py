"""pausesvc: Redis-backed distributed pause state for multi-LoRA LLM serving."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pausesvc import _moved
from pausesvc._exceptions import (
    ClientClosedError,
    ConflictError,
    DataLossError,
    DrainTimeoutError,
    InvalidInputError,
    InvalidNameError,
    LeaseLostError,
    NotHolderError,
    PauseError,
    PauseTimeoutError,
    RedisPermissionError,
    RedisUnavailableError,
    ReplicationTimeoutError,
    StaleTokenError,
    SwapError,
)
from pausesvc.protocol.keys import GLOBAL, Keys, validate_name
from pausesvc.protocol.models import (
    AdapterState,
    DesiredVersion,
    Grant,
    Hold,
    PauseEvent,
    ResumeResult,
    Snapshot,
    SwapResult,
)

__version__ = "0.1.0"

_moved.install()  # pausesvc.sampling_tinker & co. (moved into pausesvc.sampling) still import

#: public name -> the module that defines it, imported on first use (PEP 562): a process takes
#: only what it touches - the vLLM gate never loads the blocking client or the embedded Redis,
#: and the errors and records above cost no more than redis-py itself.
_LAZY = {
    "Settings": "pausesvc._settings",
    "AsyncPauseClient": "pausesvc.client._async",
    "release_watcher": "pausesvc.client._async",
    "shared_watcher": "pausesvc.client._async",
    "PauseClient": "pausesvc.client._blocking",
    "EmbeddedRedis": "pausesvc.devtools.embedded",
    "Replica": "pausesvc.replica",
    "PauseWatcher": "pausesvc.watcher",
}

if TYPE_CHECKING:
    from pausesvc._settings import Settings
    from pausesvc.client._async import AsyncPauseClient, release_watcher, shared_watcher
    from pausesvc.client._blocking import PauseClient
    from pausesvc.devtools.embedded import EmbeddedRedis
    from pausesvc.replica import Replica
    from pausesvc.watcher import PauseWatcher


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pausesvc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "GLOBAL",
    "AdapterState",
    "AsyncPauseClient",
    "ClientClosedError",
    "ConflictError",
    "DataLossError",
    "DesiredVersion",
    "DrainTimeoutError",
    "EmbeddedRedis",
    "Grant",
    "Hold",
    "InvalidInputError",
    "InvalidNameError",
    "Keys",
    "LeaseLostError",
    "NotHolderError",
    "PauseClient",
    "PauseError",
    "PauseEvent",
    "PauseTimeoutError",
    "PauseWatcher",
    "RedisPermissionError",
    "RedisUnavailableError",
    "Replica",
    "ReplicationTimeoutError",
    "ResumeResult",
    "Settings",
    "Snapshot",
    "StaleTokenError",
    "SwapError",
    "SwapResult",
    "__version__",
    "release_watcher",
    "shared_watcher",
    "validate_name",
]
