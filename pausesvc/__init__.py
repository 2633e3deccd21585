"""pausesvc: Redis-backed distributed pause state for multi-LoRA LLM serving."""

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
from pausesvc._settings import Settings
from pausesvc.client._async import AsyncPauseClient, release_watcher, shared_watcher
from pausesvc.client._blocking import PauseClient
from pausesvc.devtools.embedded import EmbeddedRedis
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
from pausesvc.replica import Replica
from pausesvc.watcher import PauseWatcher

__version__ = "0.1.0"

_moved.install()  # pausesvc.sampling_tinker & co. (moved into pausesvc.sampling) still import

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
