"""The replica registry and the drain barrier (the controller's side).

A replica process (the vLLM gate) heartbeats into ``replicas`` (ZSET, Redis clock) and keeps a
record hash; when it has no request of adapter A in flight for the pause at revision r it runs
the ``ack`` script, which stores ``drain:A`` in its record and publishes on ``acks``.

A drained pause waits like a watcher does: SUBSCRIBE to ``acks`` first, then read the records
(the key is the truth), then wait for messages; re-read on a slow timer.

A swap's version barrier waits the same way, on the same channel, for every live replica's
``version:A`` report (``version_report`` script): :func:`version_barrier` is the one rule.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pausesvc._exceptions import DrainTimeoutError, translate_redis_errors
from pausesvc._redis import (
    ensure_initialized,
    next_message,
    next_message_sync,
    pubsub_connected,
    retry_stale,
    subscribe_confirmed,
)
from pausesvc.protocol.codec import replica_record
from pausesvc.protocol.models import Grant, token_revision

if TYPE_CHECKING:
    from pausesvc.client._async import AsyncPauseClient
    from pausesvc.client._blocking import PauseClient

__all__ = ["AckWaiter", "Barrier", "list_replicas", "missing_acks", "version_barrier"]

RECHECK_S = 0.25

#: (loaded: replica ids, missing: replica id -> url, failed: replica id -> reason)
Barrier = tuple[list[str], dict[str, str], dict[str, str]]
T = TypeVar("T")


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> list[tuple[Any, float]]:
    return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]


def covers(d: object, name: str, key: str, grant: Grant) -> bool:
    """Does the drain record ``d`` (of ``key``: ``name`` or ``*``) acknowledge ``grant``?

    Its revision must be the hold's (its token's) or later, in the grant's epoch; and because a failover to a
    lagging replica repeats revisions in the same epoch, it must name the grant's token (a drain
    of ``name`` itself), or (a drain of ``*``) have been written after the hold was made
    (Redis clock). Records from before tokens existed carry neither and count by revision."""
    if not isinstance(d, dict):
        return False
    try:
        rev = int(d.get("rev", 0))
    except (TypeError, ValueError):
        return False
    if rev < token_revision(grant.token):  # the pause has held since then: nothing came in
        return False
    epoch = d.get("epoch")
    if epoch is not None and grant.epoch is not None and epoch != grant.epoch:
        return False
    if key == name:
        tokens = d.get("tokens")
        return tokens is None or grant.token in tokens
    hold = grant.state.holders.get(grant.holder)
    at = d.get("at")
    return at is None or hold is None or float(at) / 1000.0 >= hold.since


def missing_acks(replicas: list[dict[str, Any]], name: str, grant: Grant) -> list[str]:
    """Live replica ids that have not acknowledged draining ``name`` for ``grant``."""
    out = []
    for rec in replicas:
        if not rec.get("live"):
            continue
        drains = rec.get("drains", {})
        ok = covers(drains.get(name), name, name, grant) or (
            name != "*" and covers(drains.get("*"), name, "*", grant)
        )
        if not ok:
            out.append(str(rec["id"]))
    return sorted(out)


def version_barrier(replicas: list[dict[str, Any]], name: str, version: str, revision: int) -> Barrier:
    """Where every LIVE replica stands on ``name`` at ``version`` (set at ``revision``): its
    ``version:<name>`` record has status ``loaded`` (or ``failed``, with its reason) for that
    version at ``revision`` or later; anything else (no report, an older one, ``loading``) is
    missing. The same liveness as :func:`missing_acks`."""
    loaded: list[str] = []
    missing: dict[str, str] = {}
    failed: dict[str, str] = {}
    for rec in replicas:
        if not rec.get("live"):
            continue
        rid = str(rec["id"])
        r = rec.get("versions", {}).get(name)
        current = isinstance(r, dict) and r.get("version") == version and _rev(r) >= revision
        status = r.get("status") if current and isinstance(r, dict) else None
        if status == "loaded":
            loaded.append(rid)
        elif status == "failed" and isinstance(r, dict):
            failed[rid] = f"{r.get('reason') or 'load failed'} (attempts: {r.get('attempts', 0)})"
        else:
            missing[rid] = str(rec.get("url", "-"))
    return sorted(loaded), missing, failed


def barrier_done(b: Barrier) -> bool:
    """Every live replica reported: loaded, or failed (a failure ends the wait)."""
    return not b[1]


def _rev(record: dict[str, Any]) -> int:
    try:
        return int(record.get("rev", 0))
    except (TypeError, ValueError):
        return 0


def _build(
    client: AsyncPauseClient | PauseClient,
    members: list[tuple[Any, float]],
    records: list[dict[Any, Any]],
    now: list[Any],
    include_dead: bool,
) -> list[dict[str, Any]]:
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    timeout_ms = client.settings.replica_timeout_s * 1000
    out = []
    for (rid, score), raw in zip(members, records, strict=True):
        rec = replica_record(raw, score, now_ms, _decode(rid))
        # a replica that fences later than our timeout assumes (its own fence_bound_s) stays
        # live until it has surely fenced itself: the barrier never drops an unfenced replica
        limit = timeout_ms
        try:
            fence = float(rec.get("fence_bound_s", 0) or 0)
        except (TypeError, ValueError):
            fence = 0.0
        limit = max(limit, (fence + client.settings.fence_margin_s) * 1000)
        rec["live"] = (now_ms - score) <= limit and bool(raw)
        if rec["live"] or include_dead:
            out.append(rec)
    return out


def _records(client: AsyncPauseClient | PauseClient, members: list[tuple[Any, float]]) -> Any:
    """A pipeline that reads every member's record in one round trip (execute it)."""
    pipe = client.redis.pipeline(transaction=False)
    for rid, _ in members:
        pipe.hgetall(client.keys.replica(_decode(rid)))
    return pipe


async def list_replicas(client: AsyncPauseClient, *, include_dead: bool = False) -> list[dict[str, Any]]:
    k = client.keys
    with translate_redis_errors():
        flat, now = await retry_stale(
            client.redis, lambda: client._replicas_script(keys=[k.replicas], args=[])
        )
        members = _pairs(flat)
        records = await _records(client, members).execute() if members else []
    return _build(client, members, records, now, include_dead)


def list_replicas_sync(client: PauseClient, *, include_dead: bool = False) -> list[dict[str, Any]]:
    k = client.keys
    with translate_redis_errors():
        flat, now = client._replicas_script(keys=[k.replicas], args=[])
        members = _pairs(flat)
        records = _records(client, members).execute() if members else []
    return _build(client, members, records, now, include_dead)


def _timeout_error(name: str, token: str, missing: list[str], timeout: float) -> DrainTimeoutError:
    return DrainTimeoutError(
        f"pause of {name!r} (token {token}) is in place, but {len(missing)} live replica "
        f"process(es) did not acknowledge the drain within {timeout:g}s: {', '.join(missing)}",
        token=token,
        missing=missing,
    )


class AckWaiter:
    """Subscribe to acks BEFORE the pause is written, then wait for every live replica."""

    def __init__(self, client: AsyncPauseClient, name: str) -> None:
        self.client = client
        self.name = name
        self._pubsub: Any = None

    async def __aenter__(self) -> AckWaiter:
        with translate_redis_errors():
            await ensure_initialized(self.client.redis)

            async def subscribe() -> None:
                if self._pubsub is None:  # the last barrier's subscription, if it is idle
                    self._pubsub, self.client.idle_ack_pubsub = self.client.idle_ack_pubsub, None
                if self._pubsub is None or not pubsub_connected(self._pubsub):
                    if self._pubsub is not None:
                        await self._pubsub.aclose()
                    self._pubsub = self.client.redis.pubsub()
                # what the last use left on it (its UNSUBSCRIBE reply, late acks) is dropped
                # until this confirmation
                await subscribe_confirmed(self._pubsub, self.client.keys.acks, self.client.sharded)

            await retry_stale(self.client.redis, subscribe)
        return self

    async def _get(self, timeout: float) -> Any:
        return await next_message(self._pubsub, self.client.sharded, timeout)

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        ps, self._pubsub = self._pubsub, None
        if ps is None:
            return
        client = self.client
        if (
            exc_type is None
            and client.idle_ack_pubsub is None
            and not client.sharded
            and pubsub_connected(ps)
        ):
            with contextlib.suppress(Exception):
                await ps.unsubscribe()  # not waited for: the next subscribe skips its reply
                if not client._closed:
                    client.idle_ack_pubsub = ps
                    return
        await ps.aclose()

    async def wait(self, grant: Grant, timeout: float) -> list[dict[str, Any]]:
        """Every live replica acknowledged ``grant``: read the registry once (after the pause
        was written, so it holds every replica that could have admitted a request before it),
        then count the acknowledgements as they come - each message IS the record the ack
        script stored - and re-read on the slow timer (which drops replicas that died)."""
        deadline = time.monotonic() + timeout
        replicas = await list_replicas(self.client)
        missing = set(missing_acks(replicas, self.name, grant))
        while True:
            if not missing:
                # the last acknowledgement counted: the registry (the truth) must agree - a
                # replica that registered meanwhile is waited for too
                replicas = await list_replicas(self.client)
                missing = set(missing_acks(replicas, self.name, grant))
                if not missing:
                    return replicas
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timeout_error(self.name, grant.token, sorted(missing), timeout)
            record = await self._next_report(min(RECHECK_S, remaining))
            if record is None:  # the slow timer: where does everyone stand?
                replicas = await list_replicas(self.client)
                missing = set(missing_acks(replicas, self.name, grant))
            elif record.get("type") != "version" and covers(
                record, self.name, str(record.get("name")), grant
            ):
                missing.discard(str(record.get("replica")))  # a drain record (no "type")

    async def _next_report(self, wait: float) -> dict[str, Any] | None:
        """The next message about this adapter on ``acks`` (a drain record or a version
        report), or None after ``wait``."""
        with translate_redis_errors():
            end = time.monotonic() + wait
            while time.monotonic() < end:
                msg = await self._get(max(0.0, end - time.monotonic()))
                if msg is not None and msg["type"] in ("message", "smessage"):
                    try:
                        data = json.loads(msg["data"])
                    except ValueError:
                        continue
                    if isinstance(data, dict) and data.get("name") in (self.name, "*"):
                        return data
        return None

    async def wait_versions(self, version: str, revision: int, timeout: float) -> Barrier:
        """Wait (subscribed before the version was set) until every live replica reported
        ``version`` of this adapter loaded or failed; at the deadline, return where they stand."""
        deadline = time.monotonic() + timeout
        while True:
            b = version_barrier(await list_replicas(self.client), self.name, version, revision)
            remaining = deadline - time.monotonic()
            if barrier_done(b) or remaining <= 0:
                return b
            await self._next_report(min(RECHECK_S, remaining))


def _wait_sync(
    client: PauseClient, pubsub: Any, timeout: float, check: Callable[[list[dict[str, Any]]], T | None]
) -> tuple[T | None, list[dict[str, Any]]]:
    """Re-read the registry until ``check`` answers (or the deadline: then ``(None, last)``),
    woken by any message on ``acks`` (subscribed before the change was written)."""
    deadline = time.monotonic() + timeout
    while True:
        replicas = list_replicas_sync(client)
        done = check(replicas)
        remaining = deadline - time.monotonic()
        if done is not None or remaining <= 0:
            return done, replicas
        with translate_redis_errors():
            end = time.monotonic() + min(RECHECK_S, remaining)
            while time.monotonic() < end:
                msg = next_message_sync(pubsub, client.sharded, max(0.0, end - time.monotonic()))
                if msg is not None and msg["type"] in ("message", "smessage"):
                    break


def wait_drained_sync(
    client: PauseClient, pubsub: Any, name: str, grant: Grant, timeout: float
) -> list[dict[str, Any]]:
    done, replicas = _wait_sync(
        client, pubsub, timeout, lambda reps: True if not missing_acks(reps, name, grant) else None
    )
    if done is None:
        raise _timeout_error(name, grant.token, missing_acks(replicas, name, grant), timeout)
    return replicas


def wait_versions_sync(
    client: PauseClient, pubsub: Any, name: str, version: str, revision: int, timeout: float
) -> Barrier:
    """The blocking twin of :meth:`AckWaiter.wait_versions` (same rule, same channel)."""

    def check(reps: list[dict[str, Any]]) -> Barrier | None:
        b = version_barrier(reps, name, version, revision)
        return b if barrier_done(b) else None

    done, replicas = _wait_sync(client, pubsub, timeout, check)
    return done if done is not None else version_barrier(replicas, name, version, revision)
