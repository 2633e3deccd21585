"""The blocking client. Same operations as :class:`AsyncPauseClient`, on a blocking redis-py client.

It never runs the async client behind the caller's back. ``wait_unpaused`` and ``events`` open
one subscription for the duration of the call and follow the same protocol as the watcher:
SUBSCRIBE, wait for the confirmation, read the key, then wait for messages (re-reading on a
revision gap, a reconnect and every second).
"""

from __future__ import annotations

import contextlib
import json
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
from pausesvc.protocol.keys import GLOBAL, validate_name
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
        """Block until ``name`` is not paused. True: not paused; False: still paused at timeout."""
        validate_name(name)
        t = validate_timeout(timeout)
        deadline = None if t is None else time.monotonic() + t
        with translate_redis_errors():
            pubsub = self._subscribe(self.keys.events)
            try:
                while True:
                    snap = self.snapshot()  # after the subscription is confirmed
                    if not self._covers(snap, name):
                        return True
                    ends = [s.expires_at for n, s in snap.paused.items() if n in (name, GLOBAL)]
                    lease_end = None if None in ends else max(e for e in ends if e is not None)
                    wait = RECHECK_S
                    if lease_end is not None:
                        wait = min(wait, max(0.0, lease_end - snap.server_time) + 0.005)
                    if deadline is not None:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return False
                        wait = min(wait, remaining)
                    end = time.monotonic() + wait
                    while time.monotonic() < end:
                        msg = self._get_message(pubsub, max(0.0, end - time.monotonic()))
                        if msg is None:
                            continue
                        if msg["type"] in ("subscribe", "ssubscribe"):
                            break  # reconnected: re-read
                        if msg["type"] in ("message", "smessage"):
                            try:
                                ev = json.loads(msg["data"])
                            except ValueError:
                                break
                            if ev.get("name") in (name, GLOBAL) or ev.get("rev", 0) > snap.revision + 1:
                                break
            finally:
                pubsub.close()

    def events(self, *, timeout: float | None = None) -> Iterator[PauseEvent]:
        """Yield changes as they are published. A gap, a reconnect, a data loss re-read the
        snapshot and yield the differences the watcher's view would see (op ``resync``;
        ``orphaned`` for a pause Redis lost without a resume, which stays paused; desired
        versions that changed meanwhile as op ``version``)."""
        validate_timeout(timeout)
        with translate_redis_errors():
            pubsub = self._subscribe(self.keys.events)
            try:
                view = View()
                self._reset(view)
                while True:
                    msg = self._get_message(pubsub, timeout if timeout is not None else 1.0)
                    if msg is None:
                        if timeout is not None:
                            return
                        continue
                    if msg["type"] not in ("message", "smessage", "subscribe", "ssubscribe"):
                        continue
                    ev = None
                    if msg["type"] in ("message", "smessage"):
                        try:
                            ev = PauseEvent.from_json(msg["data"])
                        except (ValueError, KeyError, TypeError):
                            ev = None
                    verdict = "resubscribed" if ev is None else view.classify(ev, time.monotonic())
                    if verdict == "skip":
                        continue
                    if ev is not None and verdict == "apply":
                        view.apply(ev, ev.ts)
                        yield ev
                    else:
                        yield from self._reset(view)
            finally:
                pubsub.close()

    def _reset(self, view: View) -> list[PauseEvent]:
        """Re-read the snapshot into ``view``; the differences as events."""
        snap = self.snapshot()
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
        if ttl is not None:
            renewer = threading.Thread(
                target=self._keep_renewing, args=(name, grant, float(ttl), stop, sent, lost), daemon=True
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
            try:
                self.resume(name, holder=grant.holder, token=grant.token)
            except ConflictError as exc:
                self._hold_gone(name, grant, exc)

    def _keep_renewing(
        self, name: str, grant: Grant, ttl: float, stop: threading.Event, sent: float, lost: list[str]
    ) -> None:
        deadline = sent + ttl  # from the pause's send: never later than Redis's expiry
        while not stop.wait(max(0.0, min(ttl / 3, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                lost.append("no renewal reached Redis before the lease ended")
                logger.warning("pausesvc: lease of %r by %r lost: not renewed in time", name, grant.holder)
                return
            sent = time.monotonic()
            try:
                self.renew(name, grant.holder, ttl, token=grant.token)
                deadline = sent + ttl
            except ConflictError as exc:
                lost.append(f"the renewal was refused: {exc}")
                logger.warning("pausesvc: lease of %r by %r lost; stop renewing", name, grant.holder)
                return
            except Exception as exc:
                logger.warning("pausesvc: renewing %r failed (%s); retrying", name, exc)
