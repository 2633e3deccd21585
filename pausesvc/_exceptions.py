"""The exception tree of pausesvc.

    PauseError
    ├── InvalidInputError (also a ValueError)
    │   └── InvalidNameError
    ├── ConflictError
    │   ├── StaleTokenError          a resume/renew presented a token that is not the hold's
    │   ├── NotHolderError           the holder holds no pause of that adapter
    │   └── LeaseLostError           a ``paused(..., ttl=...)`` block outlived its lease
    ├── RedisUnavailableError        Redis cannot be reached / the connection was lost
    │   └── RedisPermissionError     Redis refused the command for this user (ACL)
    ├── PauseTimeoutError (also a TimeoutError)
    │   ├── DrainTimeoutError        some live replica processes did not acknowledge a drain
    │   ├── SwapError                some live replicas did not load a swap's version in time
    │   └── ReplicationTimeoutError  the change is written, but fewer Redis replicas than
    │                                `replication_wait` confirmed it (WAIT)
    ├── DataLossError                the namespace revision went backwards (Redis lost its data)
    └── ClientClosedError (also a RuntimeError)  a call on a closed client or watcher

redis-py exceptions are translated in exactly one place: :func:`translate_redis_errors`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import redis.exceptions as rexc

if TYPE_CHECKING:
    from pausesvc.protocol.models import SwapResult

__all__ = [
    "ClientClosedError",
    "ConflictError",
    "DataLossError",
    "DrainTimeoutError",
    "InvalidInputError",
    "InvalidNameError",
    "LeaseLostError",
    "NotHolderError",
    "PauseError",
    "PauseTimeoutError",
    "RedisPermissionError",
    "RedisUnavailableError",
    "ReplicationTimeoutError",
    "StaleTokenError",
    "SwapError",
    "translate_redis_errors",
]


class PauseError(Exception):
    """Root of every error pausesvc raises."""


class InvalidInputError(PauseError, ValueError):
    """An argument is not acceptable. Nothing was changed."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidNameError(InvalidInputError):
    """An adapter or holder name is not acceptable."""


class ConflictError(PauseError):
    """The request was refused because of the current state. Nothing was changed."""


class StaleTokenError(ConflictError):
    """A fencing token does not match the holder's current pause."""

    def __init__(self, message: str, *, presented: str, current: str) -> None:
        super().__init__(message)
        self.presented = presented
        self.current = current


class NotHolderError(ConflictError):
    """The holder does not hold a pause of this adapter (others may)."""

    def __init__(self, message: str, *, holders: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.holders = list(holders)


class LeaseLostError(ConflictError):
    """The lease of a ``paused(..., ttl=...)`` block ran out or was taken away while the block
    ran (the renewals were refused, or none reached Redis before the lease ended): the fleet may
    already see the adapter resumed. The async block is cancelled and this is raised in its
    place; the blocking one cannot be interrupted and raises it when the block ends."""


class RedisUnavailableError(PauseError):
    """Redis could not be reached, or the connection broke mid-call."""


class RedisPermissionError(RedisUnavailableError):
    """Redis refused the command for this connection's user (ACL ``NOPERM``): a configuration
    matter, not an outage (a least-privilege replica user cannot pause, for one)."""


class ClientClosedError(PauseError, RuntimeError):
    """A call on a client (or watcher) after ``close()``/``aclose()``: closed is final."""


class PauseTimeoutError(PauseError, TimeoutError):
    """An operation did not complete before its deadline."""


class DrainTimeoutError(PauseTimeoutError):
    """Not every live replica process acknowledged the drain before the deadline.

    The pause itself is in place (and held): only the acknowledgement is missing.
    """

    def __init__(self, message: str, *, token: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.token = token
        self.missing = list(missing)


class ReplicationTimeoutError(PauseTimeoutError):
    """The change is written on the primary, but WAIT saw fewer replicas than required.

    A failover now could lose it. Changes are idempotent: retry, or check ``status``.
    """

    def __init__(self, message: str, *, acked: int, wanted: int) -> None:
        super().__init__(message)
        self.acked = acked
        self.wanted = wanted


class DataLossError(PauseError):
    """The namespace revision went backwards: Redis restarted without its data."""


@contextlib.contextmanager
def translate_redis_errors() -> Iterator[None]:
    """Map redis-py exceptions onto the pausesvc tree (the one place that does it)."""
    try:
        yield
    except PauseError:
        raise
    except (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError) as exc:
        raise RedisUnavailableError(f"Redis unavailable: {exc}") from exc
    except rexc.AuthenticationError as exc:  # pragma: no cover - subclass of ConnectionError
        raise RedisUnavailableError(f"Redis authentication failed: {exc}") from exc
    except rexc.NoPermissionError as exc:
        raise RedisPermissionError(f"Redis refused the command (ACL): {exc}") from exc
    except rexc.ReadOnlyError as exc:
        raise RedisUnavailableError(f"Redis is read-only (a replica?): {exc}") from exc
    except rexc.ResponseError as exc:
        raise PauseError(f"Redis answered with an error: {exc}") from exc
    except rexc.RedisError as exc:
        raise RedisUnavailableError(f"Redis error: {exc}") from exc
    except OSError as exc:
        raise RedisUnavailableError(f"Redis unreachable: {exc}") from exc


class SwapError(PauseTimeoutError):
    """A swap's barrier was not passed: some live replicas did not report the new version loaded
    before the deadline (``missing``: replica id -> url) or reported that loading it failed
    (``failed``: replica id -> reason). The desired version IS set and the swap's pause was
    released: each replica holds the adapter locally until it has loaded the desired version,
    so the adapter stays paused on those replicas only. ``result`` lists who did load it."""

    def __init__(
        self, message: str, *, missing: Mapping[str, str], failed: Mapping[str, str], result: SwapResult
    ) -> None:
        super().__init__(message)
        self.missing = dict(missing)
        self.failed = dict(failed)
        self.result = result

    @property
    def timed_out(self) -> bool:
        """True when some replica never reported (a timeout), False when all that did not
        load it reported a failure."""
        return bool(self.missing)
