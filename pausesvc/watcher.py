"""The per-process view of a namespace's pause state: one subscription, answers from memory.

Protocol (see docs/protocol.md): SUBSCRIBE and wait for the confirmation, THEN read the snapshot,
then apply events in revision order. A gap, a reconnect/resubscribe, a new epoch or a revision
that goes backwards triggers a fresh snapshot; a slow periodic resync is the safety net.

While Redis is unreachable the view is *fail closed*: adapters known to be paused stay paused
(leases are not expired locally either: a renew may have happened that we cannot see).

Proof of sync: the view PINGs Redis on its subscription every ``health_check_interval / 2``;
each PONG (and each snapshot read) proves that the view was complete when the PING was sent.
:attr:`PauseWatcher.proof_age` is the age of the newest proof (monotonic clock). A subscription
whose PONG is older than ``health_check_interval`` is treated as dead (packets dropped with
TCP still open) and reconnected; a gate fences itself when the proof is older than its fence
bound. Lease expiry and server time are computed against the monotonic clock, so a wall-clock
step moves neither.

Data loss: an adapter the view holds that is absent from a snapshot is released only when the
``tombstones`` key shows a resume at or after its state's revision (same epoch) or any resume
in a new epoch; otherwise it is an *orphan* (policy ``hold``), whether or not the revision went
backwards (a failover to a lagging replica keeps the epoch and catches the revision up).
"""

from __future__ import annotations

import asyncio
import collections
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

from pausesvc._exceptions import ClientClosedError, RedisUnavailableError, translate_redis_errors
from pausesvc._redis import (
    aclose_client,
    async_client,
    ensure_initialized,
    honour_cancellation,
    is_cluster,
    is_cluster_pubsub,
    next_message,
    pubsub_connected,
    subscribe_confirmed,
)
from pausesvc.protocol.codec import parse_snapshot_reply, scores
from pausesvc.protocol.keys import GLOBAL, Keys, validate_name
from pausesvc.protocol.models import AdapterState, DesiredVersion, PauseEvent, Snapshot
from pausesvc.protocol.scripts import read_script, state_script
from pausesvc.protocol.validate import validate_timeout
from pausesvc.protocol.view import Change, Reset, View

__all__ = ["Listener", "PauseWatcher", "VersionListener", "WatcherStats"]

logger = logging.getLogger("pausesvc.watcher")

#: Called (synchronously, on the watcher's loop) with (name, new state or None, event or None)
#: every time the view of an adapter is set - including re-confirmations by a resync.
Listener = Callable[[str, AdapterState | None, PauseEvent | None], None]
#: Called (synchronously, on the watcher's loop) with (name, desired version or None) for each
#: applied ``version`` event, and after a resync for each name whose desired version changed.
VersionListener = Callable[[str, DesiredVersion | None], None]

_NETWORK_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, OSError, RedisUnavailableError, TimeoutError)
_PUBSUB_TYPES = frozenset(
    {
        "message",
        "smessage",
        "pmessage",
        "subscribe",
        "ssubscribe",
        "psubscribe",
        "unsubscribe",
        "sunsubscribe",
        "punsubscribe",
    }
)


def _connect(redis: aredis.Redis | str, command_timeout: float) -> tuple[Any, bool]:
    """The watcher's client and whether it owns it. Its own, for a URL, with redis-py's retries
    off: failures surface in the watcher, whose reconnect loop marks the view stale and backs
    off with jitter; and no redis-py health checks: the view PINGs its subscription itself,
    and a PONG of theirs would be taken for one of ours."""
    if not isinstance(redis, str):
        return redis, False
    client = async_client(
        redis,
        socket_connect_timeout=2.0,
        socket_timeout=command_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
    )
    return client, True


class WatcherStats:
    """Counters a metrics exporter can read (no dependency on prometheus-client here)."""

    __slots__ = ("data_losses", "event_lag_s", "events", "gaps", "local_expiries", "reconnects", "resyncs")

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
        health_check_interval: float = 1.0,
        max_backoff: float = 2.0,
        on_data_loss: Literal["hold", "release"] = "hold",
        sharded: bool | None = None,
        reap_leases: bool = True,
        fence_bound: float = 3.0,
        command_timeout: float | None = None,
    ) -> None:
        self.keys = Keys(namespace)
        self.health_check_interval = health_check_interval
        self.fence_bound = fence_bound
        self._redis, self._owns_redis = _connect(redis, command_timeout or max(1.0, health_check_interval))
        self._sharded = is_cluster(self._redis) if sharded is None else sharded
        self._snapshot_script = self._redis.register_script(read_script("snapshot"))
        self._reap_script = self._redis.register_script(state_script("reap"))
        self.resync_interval = resync_interval
        self.max_backoff = max_backoff
        self.reap_leases = reap_leases

        self._view = View(on_data_loss=on_data_loss)
        #: resumes that found nothing in Redis which made us re-read (see :meth:`_settle`)
        self._unsettled: list[PauseEvent] = []
        # server time = time.monotonic() + offset: mid is the best estimate, low never runs
        # ahead of Redis's clock (TIME was read at or before the reply arrived)
        self._mono_offset = time.time() - time.monotonic()
        self._mono_offset_low = self._mono_offset
        self._proof: float | None = None
        # the deadline of the current subscription (no proof for health_check_interval) and
        # its loop; None while not subscribed
        self._alive: tuple[asyncio.Timeout, asyncio.AbstractEventLoop] | None = None
        # the send times of the PINGs not answered yet (a PONG never comes on a dead link: bounded)
        self._pings: collections.deque[float] = collections.deque(maxlen=64)
        self._in_sync = False
        self._ever_synced = asyncio.Event()
        self._out_of_sync_since: float | None = time.monotonic()
        self._last_sync: float | None = None
        # adapter name -> the futures of its wait_unpaused callers, in arrival order (a dict
        # used as an ordered set): one pass resolves them all when the name may go on
        self._waiters: dict[str, dict[asyncio.Future[bool], None]] = {}
        self._rev_event: asyncio.Event | None = None
        self._listeners: list[Listener] = []
        self._version_listeners: list[VersionListener] = []
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
            raise ClientClosedError("the watcher is closed; make a new one")
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
            for _ in range(3):  # a cancellation redis-py swallowed is repeated, not waited for
                if task is None or task.done():
                    break
                task.cancel()
                await asyncio.wait([task], timeout=2.0)
            if task is not None and not task.done():
                logger.error("pausesvc watcher: task %s did not stop when cancelled", task.get_name())
            elif task is not None and not task.cancelled() and task.exception() is not None:
                logger.warning("pausesvc watcher: task %s failed: %r", task.get_name(), task.exception())
        if self._owns_redis:
            await aclose_client(self._redis)

    async def __aenter__(self) -> PauseWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- queries (memory only) ---------------------------------------------------------------------
    def is_paused(self, name: str) -> bool:
        """True when ``name`` (or everything, via ``*``) is paused in this process's view - and
        before the view was first read from Redis (unknown counts as paused, as for
        :meth:`wait_unpaused`: a caller that asks too early is held, not waved through)."""
        return self._view.is_paused(name) or not self._ever_synced.is_set()

    @property
    def any_paused(self) -> bool:
        """Is anything paused in this view? (O(1): a gate's fast path when nothing is.)"""
        return bool(self._view.paused or self._view.orphans)

    def state(self, name: str) -> AdapterState | None:
        return self._view.state(name)

    def paused_names(self) -> list[str]:
        return sorted(set(self._view.paused) | set(self._view.orphans))

    @property
    def paused(self) -> dict[str, AdapterState]:
        return dict(self._view.paused)

    @property
    def orphans(self) -> dict[str, AdapterState]:
        """Adapters held after a data loss (policy 'hold') that Redis no longer knows about."""
        return dict(self._view.orphans)

    @property
    def revision(self) -> int:
        return self._view.revision

    @property
    def on_data_loss(self) -> Literal["hold", "release"]:
        """What an adapter that vanished from Redis without a resume becomes: ``hold`` (an
        orphan, still paused) or ``release``."""
        return self._view.on_data_loss

    @on_data_loss.setter
    def on_data_loss(self, value: Literal["hold", "release"]) -> None:
        self._view.on_data_loss = value

    @property
    def epoch(self) -> str | None:
        return self._view.epoch

    @property
    def in_sync(self) -> bool:
        """In sync with Redis, and proven so within the fence bound."""
        return self._in_sync and self.proof_age <= self.fence_bound

    @property
    def proof_age(self) -> float:
        """Seconds since the newest proof that this view was complete (a PONG or a snapshot
        read, dated when it was sent); ``inf`` before the first."""
        return float("inf") if self._proof is None else time.monotonic() - self._proof

    def _prove(self, sent: float) -> None:
        if self._proof is None or sent > self._proof:
            self._proof = sent
            self._push_deadline()

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
        """The Redis server's clock as estimated from the last snapshot (monotonic-based)."""
        return time.monotonic() + self._mono_offset

    def server_time_floor(self) -> float:
        """A lower bound of the Redis server's clock: what lease expiry is judged against, so
        an adapter never looks resumed here before Redis's own readers see it resumed."""
        return time.monotonic() + self._mono_offset_low

    def desired(self, name: str) -> DesiredVersion | None:
        """The desired weight version of ``name`` in this view (None: none set)."""
        return self._view.desired.get(name)

    @property
    def desired_versions(self) -> dict[str, DesiredVersion]:
        return dict(self._view.desired)

    def add_version_listener(self, listener: VersionListener) -> None:
        self._version_listeners.append(listener)

    def remove_version_listener(self, listener: VersionListener) -> None:
        with contextlib.suppress(ValueError):
            self._version_listeners.remove(listener)

    def _version_changed(self, name: str, desired: DesiredVersion | None) -> None:
        for listener in self._version_listeners:
            try:
                listener(name, desired)
            except Exception:
                logger.exception("pausesvc watcher version listener failed")

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

    def reached(self, revision: int, epoch: str | None = None) -> bool:
        """Has this view applied ``revision`` of ``epoch`` - or is that write gone (its epoch
        was lost, or the view is in another one), so that waiting for it is pointless?"""
        view = self._view
        if epoch is not None:
            if epoch in view.gone_epochs:
                return True
            if view.epoch is not None and view.epoch != epoch:
                return True
        return self._ever_synced.is_set() and view.revision >= revision

    async def wait_revision(
        self, revision: int, epoch: str | None = None, timeout: float | None = None
    ) -> bool:
        """Wait until this view has applied ``revision`` (read-your-writes for a writer in
        this process). Returns at once if ``epoch`` is not the view's any more (data loss)."""
        try:
            async with asyncio.timeout(timeout):
                while not self.reached(revision, epoch):
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
        # One future per caller in the adapter's group: the wake of ``name`` resolves the
        # whole group in one pass (True), the caller's own timer resolves only its future
        # (False). A timeout cancels no task (no asyncio.timeout per waiter to unwind).
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            fut: asyncio.Future[bool] = loop.create_future()
            group = self._waiters.get(name)
            if group is None:
                group = self._waiters[name] = {}
            group[fut] = None
            timer = None if deadline is None else loop.call_at(deadline, _resolve, fut, False)
            try:
                woken = await fut
            except BaseException:  # cancelled: leave nothing behind
                self._forget_waiter(name, group, fut)
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if not woken:  # its own timer: the group is still waiting, without it
                self._forget_waiter(name, group, fut)
                return False
            # woken with its whole group (_wake took the group out: nothing to forget)
            if self._ever_synced.is_set() and not self._view.is_paused(name):
                return True
            # paused again before this caller ran: wait again, same deadline

    def _forget_waiter(
        self, name: str, group: dict[asyncio.Future[bool], None], fut: asyncio.Future[bool]
    ) -> None:
        group.pop(fut, None)
        if not group and self._waiters.get(name) is group:
            del self._waiters[name]  # the last caller of a group nobody woke

    # -- the subscription loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while True:
            pubsub = None
            try:
                await ensure_initialized(self._redis)
                pubsub = self._redis.pubsub()
                self._pings.clear()
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
            honour_cancellation()  # one redis-py turned into a "lost link" above
            attempt += 1
            self.stats.reconnects += 1
            delay = min(self.max_backoff, 0.05 * (2 ** min(attempt, 10)))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _lost(self, exc: BaseException) -> None:
        if self._in_sync:
            logger.warning(
                "pausesvc watcher lost Redis (%s); holding %d paused adapter(s) (fail closed)",
                exc,
                len(self._view.paused) + len(self._view.orphans),
                extra={"event": "watcher_lost", "namespace": self.keys.namespace},
            )
            self._out_of_sync_since = time.monotonic()
        self._in_sync = False
        self.last_error = f"{type(exc).__name__}: {exc}"

    async def _subscribe(self, pubsub: Any) -> None:
        await subscribe_confirmed(pubsub, self.keys.events, self._sharded)

    async def _ping(self, pubsub: Any) -> None:
        """PING on the subscription; replies come back in order, so each PONG proves the
        oldest PING still unanswered (see :meth:`_pong`)."""
        sent = time.monotonic()
        # Redis Cluster: redis-py's ClusterPubSub.ping() goes out on a connection nobody reads;
        # the PING must go on the per-node PubSub that holds the events channel (its replies
        # come back through get_sharded_message, in order with the messages)
        nodes = list(getattr(pubsub, "node_pubsub_mapping", {}).values()) or [pubsub]
        for node in nodes:
            self._pings.append(sent)
            await node.ping()

    def _pong(self) -> None:
        if self._pings:
            self._prove(self._pings.popleft())

    async def _listen(self, pubsub: Any) -> None:
        """Read the subscription until it fails. A plain subscription is read like a bare
        subscriber reads it - a blocking read, no timer per message - while a keepalive task
        PINGs it; each PONG wakes the reader (so the periodic resync needs no timed read) and
        pushes the ONE deadline of the subscription (no PONG for ``health_check_interval``:
        dead, although TCP may look open). Redis Cluster's pub/sub has one reader per node
        and no blocking read: it is polled, pinging between reads."""
        polled = is_cluster_pubsub(pubsub)
        loop = asyncio.get_running_loop()
        keepalive = None if polled else asyncio.create_task(self._keepalive(pubsub))
        try:
            async with asyncio.timeout(None) as alive:
                self._alive = (alive, loop)
                self._push_deadline()
                await self._read_loop(pubsub, polled)
        except TimeoutError:
            age = float("inf") if self._proof is None else time.monotonic() - self._proof
            raise TimeoutError(
                f"no PONG from Redis for {age:.2f}s (health_check_interval {self.health_check_interval:g}s)"
            ) from None
        finally:
            self._alive = None
            if keepalive is not None:
                keepalive.cancel()
                await asyncio.wait([keepalive], timeout=1.0)
                if keepalive.done() and not keepalive.cancelled() and keepalive.exception():
                    logger.warning("pausesvc watcher: keepalive failed: %r", keepalive.exception())

    async def _read_loop(self, pubsub: Any, polled: bool) -> None:
        period = self.health_check_interval / 2
        next_resync = time.monotonic() + self.resync_interval
        next_ping = time.monotonic()
        task = asyncio.current_task()
        read = pubsub.get_message  # the blocking read (a standalone server reads 'smessage's too)
        while True:
            if polled:
                now = time.monotonic()
                if now >= next_ping:
                    await self._ping(pubsub)
                    next_ping = now + period
                wait = max(0.0, min(period, next_resync - now, next_ping - now))
                msg = await next_message(pubsub, self._sharded, wait)
            else:
                msg = await read(timeout=None)
            honour_cancellation(task)  # one redis-py turned into "no message"
            reason = self._dispatch(msg) if msg is not None else None
            if reason is None and time.monotonic() >= next_resync:
                reason = "periodic"
            if reason is not None:
                await self._resync(reason)
                next_resync = time.monotonic() + self.resync_interval

    def _dispatch(self, msg: Any) -> str | None:
        """Handle one message of the subscription (no await: the usual event costs no task
        switch); return a reason to resync, or None."""
        kind = msg["type"]
        if kind in ("message", "smessage"):
            return self._on_message(msg["data"])
        if kind not in _PUBSUB_TYPES:
            # a PONG: redis-py (decode_responses) hands it over as {'type': 'P', ...} -
            # the reply string split into fields - or, in some versions, as 'pong'
            self._pong()
            return None
        if kind in ("subscribe", "ssubscribe"):
            # redis-py reconnected and resubscribed by itself: we may have missed anything
            self.stats.reconnects += 1
            return "resubscribe"
        return None

    async def _keepalive(self, pubsub: Any) -> None:
        """PING the subscription every ``health_check_interval / 2`` (its reader reads the
        PONGs). A PING that cannot be sent ends the subscription's deadline now: the reader
        then reconnects (this task never reconnects the connection it shares)."""
        period = self.health_check_interval / 2
        task = asyncio.current_task()
        try:
            while True:
                if not pubsub_connected(pubsub):  # never reconnect it from here
                    raise rexc.ConnectionError("the subscription's connection is closed")
                self._pings.append(time.monotonic())
                await pubsub.connection.send_command("PING", check_health=False)
                honour_cancellation(task)  # redis-py may swallow it mid-send
                await asyncio.sleep(period)
        except _NETWORK_ERRORS as exc:
            logger.debug("pausesvc watcher: keepalive PING failed: %s", exc)
            if self._alive is not None:
                alive, loop = self._alive
                alive.reschedule(loop.time())

    def _push_deadline(self) -> None:
        """The subscription is dead ``health_check_interval`` after the newest proof."""
        if self._alive is None:
            return
        alive, loop = self._alive
        base = time.monotonic() if self._proof is None else self._proof
        alive.reschedule(loop.time() + (base + self.health_check_interval - time.monotonic()))

    def _on_message(self, data: Any) -> str | None:
        """Apply one event; return a reason to resync instead, or None."""
        try:
            ev = PauseEvent.from_json(data)
        except (ValueError, KeyError, TypeError):
            logger.warning("pausesvc watcher: ignoring a malformed event: %.200r", data)
            return "malformed-event"
        verdict = self._view.classify(ev, time.monotonic())
        if verdict == "skip":
            self._settle(ev)  # in the snapshot already, but a snapshot does not show this
            return None
        if verdict != "apply":
            if verdict == "gap":
                self.stats.gaps += 1
            if ev.not_paused:  # settled once the snapshot it makes us read is in the view
                self._unsettled.append(ev)
            return verdict
        self.stats.events += 1
        self.stats.event_lag_s = max(0.0, self.server_time() - ev.ts) if ev.ts else 0.0
        self._changed(self._view.apply(ev, self.server_time_floor()))
        if ev.op == "version":
            self._version_changed(ev.name, ev.version)
        self._schedule_expiry()
        self._advanced()
        return None

    def _settle(self, ev: PauseEvent) -> None:
        """A resume that found nothing in Redis, already covered by the view's snapshot: it
        releases the orphan it names (:meth:`View.settle`)."""
        if ev.not_paused:
            change = self._view.settle(ev)
            if change is not None:
                self._changed(change)

    async def read_snapshot(self) -> Snapshot:
        k = self.keys
        with translate_redis_errors():
            res = await self._snapshot_script(keys=k.snapshot_keys(), args=[""])
        return parse_snapshot_reply(res)

    async def _zscores(self, key: str, names: list[str]) -> dict[str, int]:
        """The score of each of ``names`` that has one in the zset ``key`` (a tombstone)."""
        if not names:
            return {}
        with translate_redis_errors():
            return scores(names, await self._redis.zmscore(key, names))

    async def _resync(self, reason: str) -> None:
        t0 = time.monotonic()
        snap = await self.read_snapshot()
        t1 = time.monotonic()
        self.stats.resyncs += 1
        tombs, cleared = self._view.wanted(snap)
        done = self._view.reset(
            snap,
            await self._zscores(self.keys.tombstones, tombs),
            await self._zscores(self.keys.cleared_versions, cleared),
            time.monotonic(),
        )
        self._mono_offset = snap.server_time - (t0 + t1) / 2
        self._mono_offset_low = snap.server_time - t1
        self._report(done, snap, reason)
        for change in done.changes:
            self._changed(change)
        unsettled, self._unsettled = self._unsettled, []
        for ev in unsettled:
            self._settle(ev)
        for name, desired in done.versions:  # after the pauses
            self._version_changed(name, desired)
        # the proof is dated when the snapshot was SENT, and given only now that the view holds
        # it: a fenced replica must not unfence while the awaits above still show a stale view
        self._prove(t0)
        self._in_sync = True
        self._out_of_sync_since = None
        self._last_sync = time.monotonic()
        self._ever_synced.set()
        self._schedule_expiry()
        if snap.expired and self.reap_leases and (self._reap_task is None or self._reap_task.done()):
            # expired holds nobody reaped (no watcher was in sync at expiry): reap them now
            self._reap_task = asyncio.create_task(self._reap())
        self._wake_all()
        self._advanced()

    def _report(self, done: Reset, snap: Snapshot, reason: str) -> None:
        """Log what a resync found: a data loss, lost versions, orphans released, a change."""
        (was_epoch, was_rev), ns = done.was, self.keys.namespace
        if done.lost:
            self.stats.data_losses += 1
            logger.error(
                "pausesvc: Redis lost data (%s@%s -> %s@%s%s); policy=%s, %d adapter(s) this "
                "process knew paused are gone from Redis without a resume: %s",
                was_epoch,
                was_rev,
                snap.epoch,
                snap.revision,
                "" if done.backwards else ", same epoch: a failover to a lagging replica?",
                self.on_data_loss,
                len(done.orphaned),
                ", ".join(done.orphaned) or "-",
                extra={"event": "data_loss", "namespace": ns},
            )
        if done.kept_versions:
            logger.error(
                "pausesvc: Redis lost desired weight versions (%s@%s -> %s@%s); keeping the last "
                "known ones (a clear removes them): %s",
                was_epoch,
                was_rev,
                snap.epoch,
                snap.revision,
                ", ".join(f"{n}@{self._view.desired[n].version}" for n in done.kept_versions),
                extra={"event": "versions_lost", "namespace": ns},
            )
        for name in done.released:
            logger.warning("pausesvc: orphaned pause of %r released: resumed after it was orphaned", name)
        if done.changed or done.lost or reason not in ("subscribe", "periodic") or not self._in_sync:
            logger.info(
                "pausesvc watcher in sync at revision %d (%s)",
                snap.revision,
                reason,
                extra={"event": "resync", "revision": snap.revision, "reason": reason},
            )

    # -- applying state ------------------------------------------------------------------------------
    def _changed(self, change: Change) -> None:
        """The view of one adapter was set: wake its waiters, tell the listeners."""
        name = change.name
        if change.orphan_released:
            logger.warning(
                "pausesvc: orphaned pause of %r released by a new change (rev %d)",
                name,
                change.event.revision if change.event else self._view.revision,
            )
        if not self.is_paused(name):
            self._wake(name)
        if name == GLOBAL and not self.is_paused(GLOBAL):
            self._wake_all()
        for listener in self._listeners:
            try:
                listener(name, change.state, change.event)
            except Exception:
                logger.exception("pausesvc watcher listener failed")

    def _wake(self, name: str) -> None:
        group = self._waiters.pop(name, None)
        if group:
            for fut in group:
                if not fut.done():
                    fut.set_result(True)

    def _wake_all(self) -> None:
        for name in [n for n in self._waiters if not self.is_paused(n)]:
            self._wake(name)

    def release_orphan(self, name: str) -> bool:
        """Operator confirmation: stop holding an adapter orphaned by a data loss."""
        if not self._view.release_orphan(name):
            return False
        self._orphan_gone(name)
        return True

    def _orphan_gone(self, name: str) -> None:
        if not self.is_paused(name):
            self._wake(name)
        if name == GLOBAL:
            self._wake_all()
        for listener in self._listeners:
            try:
                listener(name, self._view.paused.get(name), None)
            except Exception:
                logger.exception("pausesvc watcher listener failed")

    # -- leases ----------------------------------------------------------------------------------------
    def _schedule_expiry(self) -> None:
        """Have the timer fire by the view's next lease expiry. A timer armed no later than
        that stays (it may fire early or for nothing: it expires only what has expired and
        arms again), so an event costs no timer of its own."""
        end = self._view.next_expiry()
        if end is None:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, end - self.server_time_floor()) + 0.001
        timer = self._expiry_timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._expiry_timer = loop.call_at(when, self._expire_local)

    def _expire_local(self) -> None:
        self._expiry_timer = None
        if not self.in_sync:
            # fail closed: a renew we cannot see may have happened; a resync re-arms. Checked
            # again shortly: the proof may be only a little late
            if self._in_sync:
                loop = asyncio.get_running_loop()
                self._expiry_timer = loop.call_later(0.1, self._expire_local)
            return
        changes, released = self._view.expire(self.server_time_floor())
        for name in released:
            logger.warning("pausesvc: orphaned pause of %r released: its lease ran out", name)
        for change in changes:
            if change.name not in released:
                self.stats.local_expiries += 1
            self._changed(change)
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


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)
