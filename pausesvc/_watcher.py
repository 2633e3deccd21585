"""The per-process view of a namespace's pause state: one subscription, answers from memory.

Protocol (see docs/protocol.md): SUBSCRIBE and wait for the confirmation, THEN read the snapshot,
then apply events in revision order. A gap, a reconnect/resubscribe, a new epoch or a revision
that goes backwards triggers a fresh snapshot; a slow periodic resync is the safety net.

While Redis is unreachable the view is *fail closed*: adapters known to be paused stay paused
(leases are not expired locally either: a renew may have happened that we cannot see).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Literal

import redis.asyncio as aredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from pausesvc._base import parse_snapshot_reply, validate_timeout
from pausesvc._exceptions import RedisUnavailableError, translate_redis_errors
from pausesvc._keys import GLOBAL, Keys, validate_name
from pausesvc._models import AdapterState, PauseEvent, Snapshot
from pausesvc._redis import (
    aclose_client,
    async_client,
    ensure_initialized,
    is_cluster,
    next_message,
    subscribe_confirmed,
)
from pausesvc._scripts import read_script, state_script

__all__ = ["Listener", "PauseWatcher", "WatcherStats"]

logger = logging.getLogger("pausesvc.watcher")

#: Called (synchronously, on the watcher's loop) with (name, new state or None, event or None)
#: every time the view of an adapter is set - including re-confirmations by a resync.
Listener = Callable[[str, AdapterState | None, PauseEvent | None], None]

_NETWORK_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, OSError, RedisUnavailableError)


class WatcherStats:
    """Counters a metrics exporter can read (no dependency on prometheus-client here)."""

    __slots__ = ("data_losses", "event_lag_s", "events", "gaps", "local_expiries",
                 "reconnects", "resyncs")

    def __init__(self) -> None:
        self.events = 0
        self.gaps = 0
        self.resyncs = 0
        self.reconnects = 0
        self.data_losses = 0
        self.local_expiries = 0
        self.event_lag_s = 0.0


class PauseWatcher:
    """One pub/sub subscription per process; ``is_paused`` in O(1) from memory.

    Use as ``async with PauseWatcher(url) as w:`` or ``await w.start()`` / ``await w.aclose()``.
    """

    def __init__(
        self,
        redis: aredis.Redis | str,
        *,
        namespace: str = "default",
        resync_interval: float = 10.0,
        health_check_interval: float = 2.0,
        max_backoff: float = 2.0,
        on_data_loss: Literal["hold", "release"] = "hold",
        sharded: bool | None = None,
        reap_leases: bool = True,
    ) -> None:
        self.keys = Keys(namespace)
        if isinstance(redis, str):
            # Our own client, with redis-py's retries off: failures surface here, where the
            # reconnect loop marks the view stale and backs off with jitter.
            self._redis = async_client(
                redis,
                health_check_interval=health_check_interval,
                socket_connect_timeout=2.0,
                socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),
            )
            self._owns_redis = True
        else:
            self._redis = redis
            self._owns_redis = False
        self._sharded = is_cluster(self._redis) if sharded is None else sharded
        self._snapshot_script = self._redis.register_script(read_script("snapshot"))
        self._reap_script = self._redis.register_script(state_script("reap"))
        self.resync_interval = resync_interval
        self.max_backoff = max_backoff
        self.on_data_loss = on_data_loss
        self.reap_leases = reap_leases

        self._paused: dict[str, AdapterState] = {}
        self._orphans: dict[str, AdapterState] = {}
        self._orphaned_at: dict[str, tuple[str | None, int]] = {}
        self._rev = 0
        self._epoch: str | None = None
        self._clock_offset = 0.0
        self._in_sync = False
        self._ever_synced = asyncio.Event()
        self._out_of_sync_since: float | None = time.monotonic()
        self._last_sync: float | None = None
        self._waiters: dict[str, asyncio.Event] = {}
        self._rev_event: asyncio.Event | None = None
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._reap_task: asyncio.Task[None] | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.stats = WatcherStats()
        self.last_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, *, wait: bool = True, timeout: float | None = 10.0) -> None:
        """Start the subscription task; with ``wait``, return once the view is in sync.

        Raises :class:`RedisUnavailableError` if the first sync does not happen within
        ``timeout`` (the task keeps retrying in the background).
        """
        if self._closed:
            raise RuntimeError("watcher is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"pausesvc-watcher-{self.keys.namespace}")
        if wait:
            try:
                async with asyncio.timeout(timeout):
                    await self._ever_synced.wait()
            except TimeoutError:
                raise RedisUnavailableError(
                    f"could not sync the pause state within {timeout}s: {self.last_error}"
                ) from None

    async def aclose(self) -> None:
        """Stop the subscription and release waiters' bookkeeping. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        for task in (self._task, self._reap_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._owns_redis:
            await aclose_client(self._redis)

    async def __aenter__(self) -> PauseWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- queries (memory only) ---------------------------------------------------------------------
    def is_paused(self, name: str) -> bool:
        """True when ``name`` (or everything, via ``*``) is paused in this process's view."""
        paused, orphans = self._paused, self._orphans
        if not paused and not orphans:
            return False
        return name in paused or GLOBAL in paused or name in orphans or GLOBAL in orphans

    @property
    def any_paused(self) -> bool:
        """Is anything paused in this view? (O(1): a gate's fast path when nothing is.)"""
        return bool(self._paused or self._orphans)

    def state(self, name: str) -> AdapterState | None:
        return self._paused.get(name) or self._orphans.get(name)

    def paused_names(self) -> list[str]:
        return sorted(set(self._paused) | set(self._orphans))

    @property
    def paused(self) -> dict[str, AdapterState]:
        return dict(self._paused)

    @property
    def orphans(self) -> dict[str, AdapterState]:
        """Adapters held after a data loss (policy 'hold') that Redis no longer knows about."""
        return dict(self._orphans)

    @property
    def revision(self) -> int:
        return self._rev

    @property
    def epoch(self) -> str | None:
        return self._epoch

    @property
    def in_sync(self) -> bool:
        return self._in_sync

    @property
    def synced_once(self) -> bool:
        return self._ever_synced.is_set()

    @property
    def staleness(self) -> float:
        """Seconds since the view stopped being in sync (0.0 while in sync)."""
        if self._in_sync or self._out_of_sync_since is None:
            return 0.0
        return time.monotonic() - self._out_of_sync_since

    @property
    def last_sync_age(self) -> float | None:
        return None if self._last_sync is None else time.monotonic() - self._last_sync

    def server_time(self) -> float:
        """The Redis server's clock as estimated from the last snapshot."""
        return time.time() + self._clock_offset

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def wait_synced(self, timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._ever_synced.wait()
        except TimeoutError:
            return False
        return True

    async def wait_revision(self, revision: int, epoch: str | None = None,
                            timeout: float | None = None) -> bool:
        """Wait until this view has applied ``revision`` (read-your-writes for a writer in
        this process). Returns at once if ``epoch`` differs from the view's (data loss)."""
        try:
            async with asyncio.timeout(timeout):
                while self._rev < revision and (epoch is None or self._epoch in (None, epoch)):
                    if self._rev_event is None:
                        self._rev_event = asyncio.Event()
                    await self._rev_event.wait()
        except TimeoutError:
            return False
        return True

    def _advanced(self) -> None:
        ev, self._rev_event = self._rev_event, None
        if ev is not None:
            ev.set()

    async def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        """Wait until ``name`` is not paused. True: not paused; False: still paused at timeout.

        Wakes as soon as this process learns of the resume (or of the lease expiry). Before
        the first sync the state is unknown and counts as paused.
        """
        validate_name(name)
        timeout = validate_timeout(timeout)
        if self._task is None:
            await self.start(wait=False)
        if self._ever_synced.is_set() and not self.is_paused(name):
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._ever_synced.wait()
                while self.is_paused(name):
                    ev = self._waiters.get(name)
                    if ev is None:
                        ev = self._waiters[name] = asyncio.Event()
                    await ev.wait()
        except TimeoutError:
            return False
        return True

    # -- the subscription loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while True:
            pubsub = None
            try:
                await ensure_initialized(self._redis)
                pubsub = self._redis.pubsub()
                await self._subscribe(pubsub)
                await self._resync("subscribe")
                attempt = 0
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except _NETWORK_ERRORS as exc:
                self._lost(exc)
            except Exception as exc:  # a bug or a protocol surprise: never kill the view
                logger.exception("pausesvc watcher: unexpected error, reconnecting")
                self._lost(exc)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(pubsub.aclose())
            attempt += 1
            self.stats.reconnects += 1
            delay = min(self.max_backoff, 0.05 * (2 ** min(attempt, 10)))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _lost(self, exc: BaseException) -> None:
        if self._in_sync:
            logger.warning(
                "pausesvc watcher lost Redis (%s); holding %d paused adapter(s) (fail closed)",
                exc, len(self._paused) + len(self._orphans),
                extra={"event": "watcher_lost", "namespace": self.keys.namespace},
            )
            self._out_of_sync_since = time.monotonic()
        self._in_sync = False
        self.last_error = f"{type(exc).__name__}: {exc}"

    async def _get_message(self, pubsub: Any, timeout: float) -> Any:
        msg = await next_message(pubsub, self._sharded, timeout)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py turns a cancellation that lands as its read times out into "no message"
            # (its TimeoutError handler): honour it, or aclose() (and asyncio.run's shutdown)
            # waits for this task forever
            raise asyncio.CancelledError
        return msg

    async def _subscribe(self, pubsub: Any) -> None:
        await subscribe_confirmed(pubsub, self.keys.events, self._sharded)

    async def _listen(self, pubsub: Any) -> None:
        next_resync = time.monotonic() + self.resync_interval
        while True:
            wait = max(0.0, min(1.0, next_resync - time.monotonic()))
            msg = await self._get_message(pubsub, wait)
            if msg is None:
                if time.monotonic() >= next_resync:
                    await self._resync("periodic")
                    next_resync = time.monotonic() + self.resync_interval
                continue
            kind = msg["type"]
            if kind in ("subscribe", "ssubscribe"):
                # redis-py reconnected and resubscribed by itself: we may have missed anything
                self.stats.reconnects += 1
                await self._resync("resubscribe")
                next_resync = time.monotonic() + self.resync_interval
            elif kind in ("message", "smessage"):
                reason = self._on_message(msg["data"])
                if reason is not None:
                    await self._resync(reason)
                    next_resync = time.monotonic() + self.resync_interval

    def _on_message(self, data: Any) -> str | None:
        """Apply one event; return a reason to resync instead, or None."""
        try:
            ev = PauseEvent.from_json(data)
        except (ValueError, KeyError, TypeError):
            logger.warning("pausesvc watcher: ignoring a malformed event: %.200r", data)
            return "malformed-event"
        if self._epoch is not None and ev.epoch != self._epoch:
            return "epoch-changed"
        if ev.revision <= self._rev:
            return None if self._epoch is not None else "epoch-unknown"
        if ev.revision != self._rev + 1:
            self.stats.gaps += 1
            return "gap"
        self._rev = ev.revision
        if self._epoch is None:
            self._epoch = ev.epoch
        self.stats.events += 1
        self.stats.event_lag_s = max(0.0, self.server_time() - ev.ts) if ev.ts else 0.0
        state = ev.state
        if state is not None:
            state = state.without_expired(self.server_time())
        self._set(ev.name, state, ev)
        self._schedule_expiry()
        self._advanced()
        return None

    async def read_snapshot(self) -> Snapshot:
        k = self.keys
        with translate_redis_errors():
            res = await self._snapshot_script(keys=[k.paused, k.rev, k.epoch], args=[""])
        return parse_snapshot_reply(res)

    async def _tombstones(self, names: list[str]) -> dict[str, int]:
        """Revision of the last resume of each name that has one (``resumed`` hash)."""
        if not names:
            return {}
        with translate_redis_errors():
            values = await self._redis.hmget(self.keys.resumed, names)
        return {n: int(v) for n, v in zip(names, values, strict=True) if v is not None}

    async def _resync(self, reason: str) -> None:
        t0 = time.time()
        snap = await self.read_snapshot()
        t1 = time.time()
        self.stats.resyncs += 1
        lost = self._epoch is not None and (
            snap.epoch != self._epoch or snap.revision < self._rev
        )
        if lost:
            self.stats.data_losses += 1
            missing = {n: s for n, s in self._paused.items() if n not in snap.paused}
            logger.error(
                "pausesvc: revision went backwards (%s@%s -> %s@%s): Redis lost data; policy=%s, "
                "%d adapter(s) this process knew paused are gone from Redis: %s",
                self._epoch, self._rev, snap.epoch, snap.revision, self.on_data_loss,
                len(missing), ", ".join(sorted(missing)) or "-",
                extra={"event": "data_loss", "namespace": self.keys.namespace},
            )
            if self.on_data_loss == "hold":
                tombs = await self._tombstones(list(missing))
                for n, st in missing.items():
                    t = tombs.get(n)
                    if t is not None and (snap.epoch != self._epoch or t > st.revision):
                        logger.warning("pausesvc: %r was resumed again after the data loss "
                                       "(revision %d): not held", n, t)
                        continue  # a controller already re-asserted it; we missed the event
                    self._orphans[n] = st
                    self._orphaned_at[n] = (snap.epoch, snap.revision)
        elif self._orphans:
            # a re-assertion whose event this process missed (it was disconnected) still left a
            # tombstone in Redis: release the orphans resumed since they were orphaned
            tombs = await self._tombstones(list(self._orphans))
            for n, t in tombs.items():
                epoch, at = self._orphaned_at.get(n, (None, 0))
                if epoch != snap.epoch or t > at:
                    logger.warning("pausesvc: orphaned pause of %r released: resumed at "
                                   "revision %d", n, t)
                    self.release_orphan(n)
        self._clock_offset = snap.server_time - (t0 + t1) / 2
        self._rev = snap.revision
        self._epoch = snap.epoch
        changed = reason not in ("subscribe", "periodic") or lost
        for name in set(self._paused) | set(snap.paused):
            new = snap.paused.get(name)
            old = self._paused.get(name)
            if old != new or new is not None:
                if old != new:
                    changed = True
                ev = None
                if old != new:
                    ev = PauseEvent(snap.revision, snap.epoch, name, "resync", new is not None,
                                    None, new, snap.server_time)
                self._set(name, new, ev)
        if changed or not self._in_sync:
            logger.info("pausesvc watcher in sync at revision %d (%s)", self._rev, reason,
                        extra={"event": "resync", "revision": self._rev, "reason": reason})
        self._in_sync = True
        self._out_of_sync_since = None
        self._last_sync = time.monotonic()
        self._ever_synced.set()
        self._schedule_expiry()
        self._wake_all()
        self._advanced()

    # -- applying state ------------------------------------------------------------------------------
    def _set(self, name: str, state: AdapterState | None, ev: PauseEvent | None) -> None:
        if state is None:
            self._paused.pop(name, None)
        else:
            self._paused[name] = state
        if ev is not None and ev.op != "resync" and name in self._orphans:
            # a controller re-asserted this adapter after the data loss: Redis is the truth again
            del self._orphans[name]
            self._orphaned_at.pop(name, None)
            logger.warning("pausesvc: orphaned pause of %r released by a new change (rev %d)",
                           name, ev.revision)
        if not self.is_paused(name):
            self._wake(name)
        if name == GLOBAL and not self.is_paused(GLOBAL):
            self._wake_all()
        for listener in self._listeners:
            try:
                listener(name, state, ev)
            except Exception:
                logger.exception("pausesvc watcher listener failed")

    def _wake(self, name: str) -> None:
        ev = self._waiters.pop(name, None)
        if ev is not None:
            ev.set()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for name, ev in waiters.items():
            if self.is_paused(name):
                self._waiters[name] = ev
            else:
                ev.set()

    def release_orphan(self, name: str) -> bool:
        """Operator confirmation: stop holding an adapter orphaned by a data loss."""
        if self._orphans.pop(name, None) is None:
            return False
        self._orphaned_at.pop(name, None)
        if not self.is_paused(name):
            self._wake(name)
        if name == GLOBAL:
            self._wake_all()
        for listener in self._listeners:
            listener(name, self._paused.get(name), None)
        return True

    # -- leases ----------------------------------------------------------------------------------------
    def _schedule_expiry(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        ends = [s.next_expiry for s in self._paused.values() if s.next_expiry is not None]
        if not ends:
            return
        delay = max(0.0, min(ends) - self.server_time())
        loop = asyncio.get_running_loop()
        self._expiry_timer = loop.call_later(delay + 0.001, self._expire_local)

    def _expire_local(self) -> None:
        self._expiry_timer = None
        if not self._in_sync:
            return  # fail closed: a renew we cannot see may have happened; resync re-arms
        now = self.server_time()
        for name, st in list(self._paused.items()):
            nxt = st.next_expiry
            if nxt is not None and nxt <= now:
                self.stats.local_expiries += 1
                new = st.without_expired(now)
                ev = PauseEvent(self._rev, self._epoch, name, "expire", new is not None, None,
                                new, now)
                self._set(name, new, ev)
        self._schedule_expiry()
        if self.reap_leases and (self._reap_task is None or self._reap_task.done()):
            self._reap_task = asyncio.create_task(self._reap())

    async def _reap(self) -> None:
        """Turn expired leases into real changes in Redis (any process may; idempotent)."""
        try:
            for _ in range(20):
                with translate_redis_errors():
                    res = await self._reap_script(
                        keys=self.keys.state_keys(),
                        args=["SPUBLISH" if self._sharded else "PUBLISH"],
                    )
                next_ms = int(res[1])
                # our clock estimate may run a little ahead of Redis's: retry what is due soon
                if next_ms < 0 or next_ms / 1000.0 - self.server_time() > 0.25:
                    return
                await asyncio.sleep(max(0.005, next_ms / 1000.0 - self.server_time() + 0.005))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. a read-only ACL user: the local expiry already happened
            logger.debug("pausesvc watcher could not reap leases: %s", exc)
