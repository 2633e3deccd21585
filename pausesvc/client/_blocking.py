"""The blocking client. Same operations as :class:`AsyncPauseClient`, on a blocking redis-py client.

It never runs the async client behind the caller's back. ``wait_unpaused`` and ``events`` open
one subscription for the duration of the call and follow the same protocol as the watcher:
SUBSCRIBE, wait for the confirmation, read the key, then wait for messages (re-reading on a
revision gap, a reconnect and every second).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

from pausesvc._exceptions import (
    ClientClosedError,
    ConflictError,
    DrainTimeoutError,
    LeaseLostError,
    translate_redis_errors,
)
from pausesvc._redis import (
    close_client,
    next_message_sync,
    subscribe_confirmed_sync,
    sync_client,
)
from pausesvc._settings import Settings
from pausesvc.client._base import BaseClient, PausePlan, lease_lost_message
from pausesvc.client._drain import list_replicas_sync, wait_drained_sync, wait_versions_sync
from pausesvc.protocol.codec import parse_snapshot_reply, scores
from pausesvc.protocol.keys import validate_name
from pausesvc.protocol.models import (
    AdapterState,
    DesiredVersion,
    Grant,
    PauseEvent,
    ResumeResult,
    Snapshot,
    SwapResult,
)
from pausesvc.protocol.validate import validate_timeout
from pausesvc.protocol.view import View

__all__ = ["PauseClient"]

logger = logging.getLogger("pausesvc.client")

RECHECK_S = 1.0
#: the first and the longest wait before reconnecting a lost subscription (s)
RECONNECT_S = (0.05, 1.0)


class PauseClient(BaseClient):
    """Blocking twin of :class:`AsyncPauseClient`. ``with PauseClient(url) as c: ...``"""

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = None,
        holder: str | None = None,
        redis: redis.Redis | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._configure(
            url, namespace=namespace, holder=holder, redis=redis, settings=settings, client_for=sync_client
        )
        #: thread id -> the leases of the ``paused(ttl=...)`` blocks it runs, each as
        #: [name, grant, deadline, reason]: its writes are refused once one is lost or ran out
        self._leases: dict[int, list[list[Any]]] = {}

    def close(self) -> None:
        """Close the connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_redis:
            close_client(self.redis)
        self._forget_connection()

    def __enter__(self) -> PauseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, script: str, args: list[str]) -> Any:
        if self._closed:
            raise ClientClosedError("the client is closed; make a new one")
        if self._leases:
            self._refuse_without_lease()
        with translate_redis_errors():
            keys = self._script_keys(script)
            res = self._scripts[script](keys=keys, args=args)
            if self.replication_wait:
                acked = self.redis.execute_command(
                    "WAIT", self.replication_wait, self.replication_wait_timeout_ms
                )
        if self.replication_wait:
            self._check_replication(acked)
        return res

    def _get_message(self, pubsub: Any, timeout: float) -> Any:
        return next_message_sync(pubsub, self.sharded, timeout)

    def _subscribe(self, channel: str) -> Any:
        pubsub = self.redis.pubsub()
        try:
            subscribe_confirmed_sync(pubsub, channel, self.sharded)
        except BaseException:
            pubsub.close()
            raise
        return pubsub

    # -- changes -----------------------------------------------------------------------------------
    def pause(
        self,
        name: str,
        *,
        holder: str | None = None,
        reason: str | None = None,
        ttl: float | None = None,
        drain: bool = False,
        timeout: float | None = None,
    ) -> Grant:
        plan = self._pause_plan(name, holder, reason, ttl, drain, timeout)
        return self._pause(name, plan, release_on_failure=False)

    def _pause(self, name: str, plan: PausePlan, *, release_on_failure: bool) -> Grant:
        """Pause; with a drain, wait for every live replica's acknowledgement (a timeout keeps
        the pause unless ``release_on_failure``: a ``paused()`` block leaks no hold)."""
        h, args, drain_timeout = plan
        if drain_timeout is None:
            return self._parse_grant(name, h, self._run("pause", args))
        with translate_redis_errors():
            pubsub = self._subscribe(self.keys.acks)
        try:
            grant = self._parse_grant(name, h, self._run("pause", args))
            try:
                wait_drained_sync(self, pubsub, name, grant, drain_timeout)
            except BaseException:  # a drain timeout, Ctrl-C...
                if release_on_failure:
                    with contextlib.suppress(Exception):
                        self.resume(name, holder=h, token=grant.token)
                raise
        finally:
            pubsub.close()
        return grant

    def resume(
        self, name: str, *, holder: str | None = None, token: str | int | None = None, force: bool = False
    ) -> ResumeResult:
        h, args = self._resume_args(name, holder, token, force)
        return self._parse_resume(name, h, token, self._run("resume", args))

    def renew(
        self, name: str, holder: str | None, ttl: float, *, token: str | int | None = None
    ) -> AdapterState:
        h, args = self._renew_args(name, holder, ttl, token)
        return self._parse_renew(name, h, token, self._run("renew", args))

    def reap(self) -> int:
        with translate_redis_errors():
            res = self._scripts["reap"](keys=self.keys.state_keys(), args=[self.publish_command])
        return int(res[0])

    # -- reads ---------------------------------------------------------------------------------------
    def get(self, name: str) -> AdapterState | None:
        validate_name(name)
        with translate_redis_errors():
            res = self._snapshot_script(keys=self._snapshot_keys(), args=[name])
        return self._parse_get(name, res)

    def snapshot(self) -> Snapshot:
        with translate_redis_errors():
            res = self._snapshot_script(keys=self._snapshot_keys(), args=[""])
        return parse_snapshot_reply(res)

    def is_paused(self, name: str) -> bool:
        return self._covers(self.snapshot(), name)

    def replicas(self, *, include_dead: bool = False) -> list[dict[str, Any]]:
        return list_replicas_sync(self, include_dead=include_dead)

    # -- weight versions ---------------------------------------------------------------------------
    def set_version(
        self, name: str, version: str, path: str, *, load: dict[str, Any] | None = None
    ) -> DesiredVersion:
        """See :meth:`AsyncPauseClient.set_version`."""
        args = self._set_version_args(name, version, path, load)
        return self._parse_set_version(self._run("set_version", args))

    def clear_version(self, name: str) -> bool:
        return self._parse_cleared(self._run("set_version", self._clear_version_args(name)))

    def get_version(self, name: str) -> DesiredVersion | None:
        validate_name(name)
        with translate_redis_errors():
            raw = self.redis.hget(self.keys.versions, name)
        return self._parse_version(raw)

    def versions(self) -> dict[str, DesiredVersion]:
        with translate_redis_errors():
            raw = self.redis.hgetall(self.keys.versions)
        return self._parse_versions(raw)

    def swap(
        self,
        name: str,
        version: str,
        path: str,
        *,
        load: dict[str, Any] | None = None,
        barrier: bool = True,
        timeout: float | None = None,
        holder: str | None = None,
        reason: str | None = None,
    ) -> SwapResult:
        """See :meth:`AsyncPauseClient.swap` (same steps, same barrier rule)."""
        args, budget = self._swap_start(name, version, path, load, timeout)
        t0 = time.monotonic()
        if not barrier:
            return self._unbarriered(self._parse_set_version(self._run("set_version", args)), t0)
        h, pause_args = self._swap_pause_args(name, holder, reason, version, budget)
        with translate_redis_errors():
            pubsub = self._subscribe(self.keys.acks)  # before anything is written
        try:
            grant = self._parse_grant(name, h, self._run("pause", pause_args))
            try:
                # at most half the budget: a replica that does not drain is named by the
                # version barrier, and the others still get time to report
                with contextlib.suppress(DrainTimeoutError):
                    wait_drained_sync(self, pubsub, name, grant, budget / 2)
                dv = self._parse_set_version(self._run("set_version", args))
                b = wait_versions_sync(self, pubsub, name, dv.version, dv.revision, self._left(budget, t0))
            finally:
                if grant.created:
                    try:
                        self.resume(name, holder=h, token=grant.token)
                    except ConflictError as exc:
                        self._swap_pause_gone(name, exc)
        finally:
            pubsub.close()
        return self._swap_result(dv, b, t0)

    def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        """Block until ``name`` is not paused. True: not paused; False: still paused at timeout.

        Follows the state as the watcher does (:meth:`_follow`): a pause Redis lost without a
        resume stays paused here (an orphan, under ``on_data_loss="hold"``), a lost connection
        is reconnected (what was paused stays paused meanwhile, and the timeout still counts)."""
        validate_name(name)
        t = validate_timeout(timeout)
        deadline = None if t is None else time.monotonic() + t
        view = View(on_data_loss=self.settings.on_data_loss)
        for _ in self._follow(view, tick=RECHECK_S, stop=deadline, expire=True):
            if not view.is_paused(name):
                return True
        return False

    def events(self, *, timeout: float | None = None) -> Iterator[PauseEvent]:
        """Yield changes as they are published. A gap, a reconnect, a data loss re-read the
        snapshot and yield the differences the watcher's view would see (op ``resync``;
        ``orphaned`` for a pause Redis lost without a resume, which stays paused; desired
        versions that changed meanwhile as op ``version``); so does a periodic re-read every
        ``resync_interval_s``. A lost connection is reconnected (the view kept). ``timeout``:
        return after that many seconds without a message."""
        validate_timeout(timeout)
        view = View(on_data_loss=self.settings.on_data_loss)
        for ev in self._follow(view, tick=timeout if timeout is not None else 1.0, idle=timeout):
            if ev is not None:
                yield ev

    def _follow(
        self,
        view: View,
        *,
        tick: float,
        idle: float | None = None,
        stop: float | None = None,
        expire: bool = False,
    ) -> Iterator[PauseEvent | None]:
        """Keep ``view`` equal to Redis: subscribe, read the snapshot, apply each event in
        order, re-read on a gap, a reconnect, another epoch and every ``resync_interval_s``.

        Yields None once the state is first read, then each applied event, the differences of
        each re-read, and None at least every ``tick`` seconds. ``expire``: end the view's
        leases as they run out (on a clock that never runs ahead of Redis's). Returns after
        ``idle`` seconds without a message, or at ``stop`` (monotonic). The first connection's
        failure raises; a connection lost later is reconnected with backoff, the view - what
        it holds paused, orphans included - kept."""
        clock = _ServerClock()
        pubsub = self._start_following(view, clock)
        delay, stale, quiet_since = RECONNECT_S[0], False, time.monotonic()
        try:
            yield None  # the state as first read (not a change)
            with translate_redis_errors():  # what is not a lost connection
                while True:
                    try:
                        if pubsub is None:
                            pubsub = self._subscribe(self.keys.events)
                            logger.warning("pausesvc: subscription back; re-reading the state")
                        if stale:
                            changes = self._reset(view, clock)
                            stale, delay = False, RECONNECT_S[0]
                            yield from changes
                        msg = self._get_message(pubsub, _wait(tick, stop, idle, quiet_since))
                    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                        _close_quietly(pubsub)
                        pubsub, stale = None, True
                        logger.warning(
                            "pausesvc: lost Redis (%s); retrying in %.2fs, still holding", exc, delay
                        )
                        time.sleep(min(delay, _wait(delay, stop, None, quiet_since)))
                        delay = min(RECONNECT_S[1], delay * 2)
                        if stop is not None and time.monotonic() >= stop:
                            return
                        continue
                    now = time.monotonic()
                    if msg is not None and msg["type"] in _DELIVERED:
                        quiet_since = now
                        ev, stale = _apply(view, msg, clock)
                        if ev is not None:
                            yield ev
                    stale = stale or clock.age() >= self.settings.resync_interval_s
                    if expire:
                        view.expire(clock.now())
                    yield None
                    if (stop is not None and now >= stop) or (idle is not None and now - quiet_since >= idle):
                        return
        finally:
            _close_quietly(pubsub)

    def _start_following(self, view: View, clock: _ServerClock) -> Any:
        """The subscription, once the state is first read into ``view`` (a failure raises)."""
        with translate_redis_errors():
            pubsub = self._subscribe(self.keys.events)
            try:
                self._reset(view, clock)
                return pubsub
            except BaseException:
                pubsub.close()
                raise

    def _reset(self, view: View, clock: _ServerClock | None = None) -> list[PauseEvent]:
        """Re-read the snapshot into ``view``; the differences as events. ``clock`` is set
        to the snapshot's server time."""
        t0 = time.monotonic()
        snap = self.snapshot()
        if clock is not None:
            clock.set(snap.server_time, t0)
        tombs, cleared = view.wanted(snap)
        done = view.reset(
            snap,
            self._zscores(self.keys.tombstones, tombs),
            self._zscores(self.keys.cleared_versions, cleared),
            time.monotonic(),
        )
        if done.lost or done.kept_versions:
            logger.error(
                "pausesvc: Redis lost data (%s@%s -> %s@%s); still paused: %s; versions kept: %s",
                *done.was,
                snap.epoch,
                snap.revision,
                ", ".join(done.orphaned) or "-",
                ", ".join(done.kept_versions) or "-",
            )
        out = [c.event for c in done.changes if c.event is not None]
        if clock is not None:
            unsettled, clock.unsettled = clock.unsettled, []
            out += [ev for ev in unsettled if view.settle(ev) is not None]
        for name, desired in done.versions:
            st = view.state(name)
            out.append(
                PauseEvent(
                    snap.revision,
                    snap.epoch,
                    name,
                    "version",
                    st is not None,
                    None,
                    st,
                    snap.server_time,
                    desired,
                )
            )
        return out

    def _zscores(self, key: str, names: list[str]) -> dict[str, int]:
        """The score of each of ``names`` that has one in the zset ``key`` (a tombstone)."""
        if not names:
            return {}
        return scores(names, self.redis.zmscore(key, names))

    @contextlib.contextmanager
    def paused(
        self,
        name: str,
        *,
        holder: str | None = None,
        reason: str | None = None,
        ttl: float | None = None,
        drain: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Grant]:
        """Pause on entry, always release this hold on exit (also when the drain wait fails).

        With ``ttl``, a thread renews the lease every ttl/3. A blocking block cannot be
        interrupted: if the lease was lost while it ran (a renewal refused, or none reached
        Redis before the lease ended), :class:`LeaseLostError` is raised when it ends.
        """
        sent = time.monotonic()
        grant = self._pause(
            name, self._pause_plan(name, holder, reason, ttl, drain, timeout), release_on_failure=True
        )
        stop = threading.Event()
        lost: list[str] = []
        renewer = None
        me = threading.get_ident()
        lease: list[Any] = [name, grant, sent + float(ttl or 0), lost]
        if ttl is not None:
            self._leases.setdefault(me, []).append(lease)
            renewer = threading.Thread(
                target=self._keep_renewing, args=(name, grant, float(ttl), stop, lease, lost), daemon=True
            )
            renewer.start()
        try:
            yield grant
            if lost:
                raise LeaseLostError(lease_lost_message(name, grant, lost[0]))
        finally:
            stop.set()
            if renewer is not None:
                renewer.join(timeout=5.0)
                stack = self._leases.get(me, [])
                if lease in stack:
                    stack.remove(lease)
                if not stack:
                    self._leases.pop(me, None)
            if not grant.created:
                self._hold_kept(name, grant)  # an outer block (or a thread of the same holder) holds it
            else:
                try:
                    self.resume(name, holder=grant.holder, token=grant.token)
                except ConflictError as exc:
                    self._hold_gone(name, grant, exc)

    def check_lease(self) -> None:
        """Raise :class:`LeaseLostError` if a ``paused(ttl=...)`` block this thread runs has
        lost its lease or its lease ran out by this process's clock. pausesvc's own writes
        from the block check it themselves; call it before any other step that must not run
        without the hold."""
        if self._leases:
            self._refuse_without_lease()

    def _refuse_without_lease(self) -> None:
        """Raise :class:`LeaseLostError` before a write from a ``paused(ttl=...)`` block of this
        thread whose lease was lost or ran out (the block cannot be interrupted; its writes
        can be refused)."""
        now = time.monotonic()
        for name, grant, deadline, lost in self._leases.get(threading.get_ident(), ()):
            if lost or now >= deadline:
                reason = lost[0] if lost else "no renewal reached Redis before the lease ended"
                raise LeaseLostError(lease_lost_message(name, grant, reason))

    def _keep_renewing(
        self, name: str, grant: Grant, ttl: float, stop: threading.Event, lease: list[Any], lost: list[str]
    ) -> None:
        # lease[2]: the deadline, from the pause's send: never later than Redis's expiry
        while not stop.wait(max(0.0, min(ttl / 3, lease[2] - time.monotonic()))):
            if time.monotonic() >= lease[2]:
                lost.append("no renewal reached Redis before the lease ended")
                logger.warning("pausesvc: lease of %r by %r lost: not renewed in time", name, grant.holder)
                return
            sent = time.monotonic()
            try:
                self.renew(name, grant.holder, ttl, token=grant.token)
                lease[2] = sent + ttl
            except ConflictError as exc:
                lost.append(f"the renewal was refused: {exc}")
                logger.warning("pausesvc: lease of %r by %r lost; stop renewing", name, grant.holder)
                return
            except Exception as exc:
                logger.warning("pausesvc: renewing %r failed (%s); retrying", name, exc)


_DELIVERED = ("message", "smessage", "subscribe", "ssubscribe")


class _ServerClock:
    """Redis's clock as a lower bound: the server time a snapshot was read at, plus the time
    since the read was SENT (so it never runs ahead of Redis's)."""

    __slots__ = ("at", "server", "unsettled")

    def __init__(self) -> None:
        self.server = 0.0
        self.at = time.monotonic()
        #: resumes that found nothing in Redis which made the follower re-read (View.settle)
        self.unsettled: list[PauseEvent] = []

    def set(self, server: float, sent: float) -> None:
        self.server, self.at = server, sent

    def now(self) -> float:
        return self.server + (time.monotonic() - self.at)

    def age(self) -> float:
        """Seconds since the last snapshot was read."""
        return time.monotonic() - self.at


def _wait(tick: float, stop: float | None, idle: float | None, quiet_since: float) -> float:
    """How long the next read may block: ``tick``, less when ``stop`` or the idle end is near."""
    wait, now = tick, time.monotonic()
    if stop is not None:
        wait = min(wait, stop - now)
    if idle is not None:
        wait = min(wait, quiet_since + idle - now)
    return max(0.0, wait)


def _apply(view: View, msg: Any, clock: _ServerClock) -> tuple[PauseEvent | None, bool]:
    """Apply one delivered message to ``view``: (the event applied or None, must the snapshot
    be re-read: a gap, another epoch, a resubscription, a malformed event)."""
    ev = _event(msg)
    verdict = "resubscribed" if ev is None else view.classify(ev, time.monotonic())
    if ev is not None and verdict == "apply":
        view.apply(ev, clock.now())
        return ev, False
    if ev is not None and ev.not_paused:
        # a resume that found nothing: the orphan it names is released once the snapshot
        # covers it (now, for a skip; after the re-read otherwise)
        if verdict == "skip":
            return (ev if view.settle(ev) is not None else None), False
        clock.unsettled.append(ev)
    return None, verdict != "skip"


def _event(msg: Any) -> PauseEvent | None:
    """The event a message carries; None for a (re)subscription or a malformed message."""
    if msg["type"] not in ("message", "smessage"):
        return None
    try:
        return PauseEvent.from_json(msg["data"])
    except (ValueError, KeyError, TypeError):
        return None


def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):
            pubsub.close()
