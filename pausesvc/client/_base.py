"""What the async and the blocking client share: configuration, script arguments, reply parsing.

No I/O happens in this module (the httpx ``BaseClient`` pattern).
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from pausesvc._exceptions import (
    ClientClosedError,
    InvalidInputError,
    InvalidNameError,
    NotHolderError,
    ReplicationTimeoutError,
    StaleTokenError,
    SwapError,
)
from pausesvc._redis import is_cluster
from pausesvc._settings import Settings
from pausesvc.protocol.codec import parse_snapshot_reply, parse_versions, text
from pausesvc.protocol.keys import GLOBAL, Keys, validate_holder, validate_name, validate_version
from pausesvc.protocol.models import AdapterState, DesiredVersion, Grant, ResumeResult, Snapshot, SwapResult
from pausesvc.protocol.scripts import STATE_SCRIPTS, read_script, state_script
from pausesvc.protocol.validate import (
    MAX_TTL_S,
    validate_load,
    validate_path,
    validate_reason,
    validate_timeout,
    validate_token,
    validate_ttl,
)

logger = logging.getLogger("pausesvc.client")

__all__ = [
    "CLOSED_REDIS",
    "SWAP_LEASE_MARGIN_S",
    "BaseClient",
    "PausePlan",
    "lease_lost_message",
    "swap_outcome",
]


#: a swap's pause is a lease this much longer than its barrier's budget (see _swap_pause_args)
SWAP_LEASE_MARGIN_S = 60.0


def _checked(
    name: str,
    holder: str,
    token: str | int | None,
    res: Sequence[Any],
    not_holder: Callable[[AdapterState | None], str],
) -> tuple[str, AdapterState | None]:
    """The status and the state of a resume / renew reply; raises what its 'not_holder' /
    'stale' answer means (nothing was changed). ``not_holder(state)``: what the holder lacks."""
    tok = None if token is None else str(token)
    status, state_raw, current = text(res[0]), text(res[2]), text(res[3])
    state = AdapterState.from_json(state_raw) if state_raw else None
    why = not_holder(state)
    if status == "not_holder":
        raise NotHolderError(f"{holder!r} {why}", holders=sorted(state.holders) if state else [])
    if status == "stale":
        raise StaleTokenError(
            f"token {tok} is stale: {holder!r}'s current pause of {name!r} has token {current}",
            presented=tok or "",
            current=current,
        )
    return status, state


def swap_outcome(
    name: str,
    version: str,
    revision: int,
    barrier: tuple[list[str], dict[str, str], dict[str, str]],
    seconds: float,
) -> SwapResult:
    """The result of a swap whose barrier ended with ``(loaded, missing, failed)``; raises
    :class:`SwapError` naming the replicas when some are missing or failed."""
    loaded, missing, failed = barrier
    result = SwapResult(name, version, revision, sorted(loaded), seconds)
    if not missing and not failed:
        return result
    parts = []
    if failed:
        parts.append("failed to load it: " + "; ".join(f"{r} ({why})" for r, why in sorted(failed.items())))
    if missing:
        parts.append(
            f"did not report it within {seconds:.3g}s: "
            + ", ".join(f"{r} ({url})" for r, url in sorted(missing.items()))
        )
    raise SwapError(
        f"{name!r} is set to version {version!r} (revision {revision}), but "
        f"{len(missing) + len(failed)} live replica(s) are not on it: {'; '.join(parts)}. "
        f"{name!r} stays held on those replicas only until they load it",
        missing=missing,
        failed=failed,
        result=result,
    )


def lease_lost_message(name: str, grant: Grant, reason: str) -> str:
    """What :class:`LeaseLostError` says when a ``paused(..., ttl=...)`` block lost its lease."""
    return (
        f"the lease of {grant.holder!r} on {name!r} (token {grant.token}) was lost while "
        f"the block ran: {reason}"
    )


@functools.lru_cache(maxsize=64)
def _state_keys(keys: Keys) -> tuple[str, ...]:
    """The state scripts' KEYS of a namespace (on every pause and resume: made once)."""
    return tuple(keys.state_keys())


class PausePlan(NamedTuple):
    """A checked pause: the holder, the script's arguments and, with a drain, its deadline."""

    holder: str
    args: list[str]
    drain_timeout: float | None


class _ClosedRedis:
    """What a closed client's ``redis`` is: every use raises :class:`ClientClosedError` (redis-py
    would quietly open a new connection)."""

    def __getattr__(self, name: str) -> Any:
        raise ClientClosedError("the client is closed; make a new one")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # a registered script
        raise ClientClosedError("the client is closed; make a new one")


CLOSED_REDIS: Any = _ClosedRedis()


class BaseClient:
    """Configuration and the pure parts of every operation."""

    def __init__(
        self,
        *,
        namespace: str = "default",
        default_holder: str = "default",
        sharded: bool = False,
        replication_wait: int = 0,
        replication_wait_timeout_ms: int = 1000,
    ) -> None:
        self.keys = Keys(namespace)
        self.namespace = namespace
        self.default_holder = validate_holder(default_holder)
        self.sharded = sharded
        self.replication_wait = replication_wait
        self.replication_wait_timeout_ms = replication_wait_timeout_ms
        self.strict_replication = False
        self.replication_shortfalls = 0

    def _configure(
        self,
        url: str | None,
        *,
        namespace: str | None,
        holder: str | None,
        redis: Any,
        settings: Settings | None,
        client_for: Callable[..., Any],
    ) -> Any:
        """What both clients' constructors do: the settings, the connection (``client_for(url,
        ...)`` unless ``redis`` is given; a command timeout on it always), the namespace and
        holder, the state and read scripts. Returns the connection."""
        s = settings or Settings()
        url = url if url is not None else s.redis_url
        self._owns_redis = redis is None
        if redis is None:
            if url is None:
                raise InvalidInputError(
                    "no Redis URL: pass url=... or set PAUSESVC_REDIS_URL", field="redis_url"
                )
            redis = client_for(
                url,
                health_check_interval=s.health_check_interval_s,
                socket_connect_timeout=5.0,
                # WAIT blocks for up to replication_wait_timeout_ms: never cut it short
                socket_timeout=max(s.command_timeout_s, s.replication_wait_timeout_ms / 1000 + 1),
            )
        BaseClient.__init__(
            self,
            namespace=namespace or s.namespace,
            default_holder=holder or s.holder,
            sharded={"on": True, "off": False}.get(s.sharded_pubsub, is_cluster(redis)),
            replication_wait=s.replication_wait,
            replication_wait_timeout_ms=s.replication_wait_timeout_ms,
        )
        self.url = url
        self.settings = s
        self.redis = redis
        self._scripts = {n: redis.register_script(state_script(n)) for n in STATE_SCRIPTS}
        self._snapshot_script = redis.register_script(read_script("snapshot"))
        self._replicas_script = redis.register_script(read_script("replicas"))
        self._closed = False
        return redis

    def _forget_connection(self) -> None:
        """After close: the connection and every registered script refuse further use."""
        self.redis = CLOSED_REDIS
        for attr in [a for a in vars(self) if a.endswith("_script")]:
            setattr(self, attr, CLOSED_REDIS)
        scripts = getattr(self, "_scripts", None)
        if isinstance(scripts, dict):
            for name in scripts:
                scripts[name] = CLOSED_REDIS

    def _snapshot_keys(self) -> list[str]:
        return self.keys.snapshot_keys()

    @property
    def publish_command(self) -> str:
        return "SPUBLISH" if self.sharded else "PUBLISH"

    def _check_replication(self, acked: Any) -> None:
        """WAIT saw fewer replicas than ``replication_wait``: the change is applied on the
        primary (and stays applied: raising would make an idempotent retry loop forever while
        no replica is attached, e.g. right after a failover), but a failover now could lose it.
        Logged as a warning and counted in ``replication_shortfalls``; with
        ``strict_replication`` it raises :class:`ReplicationTimeoutError` instead."""
        if int(acked) >= self.replication_wait:
            return
        self.replication_shortfalls += 1
        message = (
            f"the change is written, but only {int(acked)} of {self.replication_wait} "
            f"Redis replica(s) confirmed it within {self.replication_wait_timeout_ms} ms "
            "(WAIT): a failover now could lose it"
        )
        if self.strict_replication:
            raise ReplicationTimeoutError(message, acked=int(acked), wanted=self.replication_wait)
        logger.warning(
            "pausesvc: %s", message, extra={"event": "replication_shortfall", "namespace": self.namespace}
        )

    def _script_keys(self, script: str) -> Sequence[str]:
        return self.keys.version_keys() if script == "set_version" else _state_keys(self.keys)

    # -- arguments -------------------------------------------------------------------------------
    def _holder(self, holder: str | None) -> str:
        return self.default_holder if holder is None else validate_holder(holder)

    def _pause_args(
        self,
        name: str,
        holder: str | None,
        reason: str | None,
        ttl: float | None,
        drain: bool = False,
        timeout: object = None,
    ) -> tuple[str, list[str]]:
        name = validate_name(name)
        h = self._holder(holder)
        ttl_ms = 0 if ttl is None else validate_ttl(ttl)
        if not isinstance(drain, bool):
            raise InvalidInputError("drain must be a boolean", field="drain")
        if timeout is not None and not drain:
            # a pause without drain returns at once: a timeout there would be silently ignored
            raise InvalidInputError(
                "timeout bounds the wait for a drain; pass drain=True with it (or no timeout)",
                field="timeout",
            )
        return h, [
            self.publish_command,
            name,
            h,
            validate_reason(reason),
            str(ttl_ms),
            "1" if drain else "0",
            secrets.token_hex(6),
        ]

    def _pause_plan(
        self,
        name: str,
        holder: str | None,
        reason: str | None,
        ttl: float | None,
        drain: bool,
        timeout: object,
    ) -> PausePlan:
        """``pause``'s arguments checked (those, then the timeout); a drain's deadline is
        ``timeout`` or ``drain_timeout_s``, None without a drain."""
        h, args = self._pause_args(name, holder, reason, ttl, drain, timeout)
        t = validate_timeout(timeout)
        return PausePlan(h, args, self._budget(t) if drain else None)

    def _budget(self, timeout: float | None) -> float:
        return timeout if timeout is not None else self.settings.drain_timeout_s

    def _swap_start(
        self, name: str, version: str, path: str, load: object, timeout: object
    ) -> tuple[list[str], float]:
        """``swap``'s set_version arguments and the barrier's budget (``timeout`` or
        ``drain_timeout_s``), checked in that order."""
        args = self._set_version_args(name, version, path, load)
        return args, self._budget(validate_timeout(timeout))

    def _resume_args(
        self, name: str, holder: str | None, token: str | int | None, force: bool
    ) -> tuple[str, list[str]]:
        name = validate_name(name)
        h = self._holder(holder)
        tok = "" if token is None else validate_token(token)
        if not isinstance(force, bool):
            raise InvalidInputError("force must be a boolean", field="force")
        return h, [self.publish_command, name, h, tok, "1" if force else "0"]

    def _renew_args(
        self, name: str, holder: str | None, ttl: float, token: str | int | None
    ) -> tuple[str, list[str]]:
        name = validate_name(name)
        h = self._holder(holder)
        tok = "" if token is None else validate_token(token)
        return h, [self.publish_command, name, h, str(validate_ttl(ttl)), tok]

    def _set_version_args(self, name: str, version: str, path: str, load: object) -> list[str]:
        name = validate_name(name)
        if name == GLOBAL:
            raise InvalidNameError(
                "a desired version belongs to one LoRA adapter; '*' is not one", field="name"
            )
        ld = validate_load(load)
        return [
            self.publish_command,
            name,
            "set",
            validate_version(version),
            validate_path(path),
            json.dumps(ld, sort_keys=True),
        ]

    def _clear_version_args(self, name: str) -> list[str]:
        return [self.publish_command, validate_name(name), "clear", "", "", "{}"]

    def _swap_pause_args(
        self, name: str, holder: str | None, reason: str | None, version: str, budget: float
    ) -> tuple[str, list[str]]:
        """The swap's pause: holder given, or ``<default holder>/swap`` (never the caller's own
        default hold, which the swap's resume would release); a drain; a lease of the barrier's
        budget + SWAP_LEASE_MARGIN_S, so a controller that dies mid-swap leaves no pause behind
        (each replica still holds the adapter until it has loaded the desired version)."""
        h = f"{self.default_holder}/swap" if holder is None else validate_holder(holder)
        ttl = min(MAX_TTL_S, budget + SWAP_LEASE_MARGIN_S)
        return self._pause_args(name, h, reason or f"swap to {version}", ttl, True)

    # -- results ----------------------------------------------------------------------------------
    @staticmethod
    def _unbarriered(dv: DesiredVersion, t0: float) -> SwapResult:
        """A swap without the barrier: the version is set, nobody was waited for."""
        return SwapResult(dv.name, dv.version, dv.revision, [], time.monotonic() - t0)

    @staticmethod
    def _left(budget: float, t0: float) -> float:
        return max(0.0, budget - (time.monotonic() - t0))

    @staticmethod
    def _swap_result(
        dv: DesiredVersion, barrier: tuple[list[str], dict[str, str], dict[str, str]], t0: float
    ) -> SwapResult:
        return swap_outcome(dv.name, dv.version, dv.revision, barrier, time.monotonic() - t0)

    @staticmethod
    def _swap_pause_gone(name: str, exc: Exception) -> None:
        """The swap's own pause was gone at its release: its lease ran out, or a forced resume."""
        logger.warning("pausesvc: the swap's pause of %r was already gone: %s", name, exc)

    @staticmethod
    def _hold_kept(name: str, grant: Grant) -> None:
        """A ``paused()`` block whose holder already held ``name`` when it began (a nested
        block, another task or thread of the same holder, an earlier run that did not
        release): the hold is theirs, and is left in place (never released under them)."""
        logger.warning(
            "pausesvc: %r already held %r when this paused() block began (token %s): "
            "left in place on exit; release it where it was made",
            grant.holder,
            name,
            grant.token,
        )

    @staticmethod
    def _hold_gone(name: str, grant: Grant, exc: Exception) -> None:
        """A ``paused()`` block's hold was gone at its release."""
        logger.warning("pausesvc: hold of %r by %r was already gone on exit: %s", name, grant.holder, exc)

    @staticmethod
    def _parse_cleared(res: Sequence[Any]) -> bool:
        return str(res[0]) in ("cleared", b"cleared")

    @staticmethod
    def _parse_version(raw: Any) -> DesiredVersion | None:
        return None if raw is None else DesiredVersion.from_json(raw)

    @staticmethod
    def _parse_versions(raw: dict[str, Any]) -> dict[str, DesiredVersion]:
        return parse_versions([x for kv in raw.items() for x in kv])

    @staticmethod
    def _parse_get(name: str, res: Any) -> AdapterState | None:
        return parse_snapshot_reply(res).paused.get(name)

    @staticmethod
    def _covers(snap: Snapshot, name: str) -> bool:
        """Is ``name`` paused in ``snap``, directly or by ``*``?"""
        return name in snap.paused or GLOBAL in snap.paused

    @staticmethod
    def _parse_set_version(res: Sequence[Any]) -> DesiredVersion:
        return DesiredVersion.from_json(text(res[2]))

    @staticmethod
    def _parse_grant(name: str, holder: str, res: Sequence[Any]) -> Grant:
        status, token, rev, state = text(res[0]), text(res[1]), int(res[2]), text(res[3])
        return Grant(
            name=name,
            holder=holder,
            token=token,
            revision=rev,
            created=status == "created",
            state=AdapterState.from_json(state),
            epoch=text(res[4]) if len(res) > 4 and res[4] else None,
        )

    @staticmethod
    def _parse_resume(name: str, holder: str, token: str | int | None, res: Sequence[Any]) -> ResumeResult:
        rev = int(res[1])
        status, state = _checked(
            name,
            holder,
            token,
            res,
            lambda state: (
                f"holds no pause of {name!r} (held by: "
                f"{', '.join(sorted(state.holders)) if state else 'nobody'})"
            ),
        )
        return ResumeResult(
            name=name,
            holder=holder,
            released=status.startswith("released"),
            paused=state is not None,
            revision=rev,
            state=state,
            epoch=text(res[4]) if len(res) > 4 and res[4] else None,
        )

    @staticmethod
    def _parse_renew(name: str, holder: str, token: str | int | None, res: Sequence[Any]) -> AdapterState:
        _, state = _checked(
            name, holder, token, res, lambda _: f"holds no live pause of {name!r} (expired or released)"
        )
        assert state is not None  # 'renewed' always carries the state
        return state

    @staticmethod
    def _now() -> float:
        return time.time()
