"""The asyncio client: pause/resume/renew with holders, fencing tokens and leases; waiting.

``wait_unpaused`` and ``events`` use the process's shared :class:`PauseWatcher` (one
subscription per event loop, Redis URL and namespace, however many clients and waiters).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis

from pausesvc._exceptions import (
    ClientClosedError,
    ConflictError,
    DrainTimeoutError,
    LeaseLostError,
    translate_redis_errors,
)
from pausesvc._redis import aclose_client, async_client, honour_cancellation, retry_stale
from pausesvc._settings import Settings
from pausesvc.client._base import BaseClient, PausePlan, lease_lost_message
from pausesvc.client._drain import AckWaiter, list_replicas
from pausesvc.protocol.codec import parse_snapshot_reply
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
from pausesvc.protocol.scripts import registry_script
from pausesvc.protocol.validate import validate_timeout
from pausesvc.watcher import PauseWatcher

__all__ = ["AsyncPauseClient", "release_watcher", "shared_watcher"]

logger = logging.getLogger("pausesvc.client")


@dataclasses.dataclass(slots=True)
class _Shared:
    """One process-wide watcher and how many clients hold it."""

    watcher: PauseWatcher
    refs: int = 0


# loop -> (url, namespace) -> the shared watcher
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], _Shared]] = (
    weakref.WeakKeyDictionary()
)


async def shared_watcher(
    url: str, namespace: str = "default", *, settings: Settings | None = None
) -> PauseWatcher:
    """The process's watcher for (url, namespace) on this event loop; started, refcounted.

    Release it with :func:`release_watcher` (clients do this on close).
    """
    loop = asyncio.get_running_loop()
    per_loop = _SHARED.setdefault(loop, {})
    entry = per_loop.get((url, namespace))
    if entry is None:
        s = settings or Settings()
        watcher = PauseWatcher(
            url,
            namespace=namespace,
            resync_interval=s.resync_interval_s,
            health_check_interval=s.health_check_interval_s,
            max_backoff=s.reconnect_max_backoff_s,
            on_data_loss=s.on_data_loss,
            sharded={"on": True, "off": False}.get(s.sharded_pubsub),
            fence_bound=s.fence_bound_s,
            command_timeout=s.command_timeout_s,
        )
        entry = per_loop[(url, namespace)] = _Shared(watcher)
        await watcher.start(wait=False)
    entry.refs += 1
    return entry.watcher


async def release_watcher(url: str, namespace: str = "default") -> None:
    """Give back one reference taken with :func:`shared_watcher`; the last one closes it."""
    loop = asyncio.get_running_loop()
    per_loop = _SHARED.get(loop, {})
    entry = per_loop.get((url, namespace))
    if entry is None:
        return
    entry.refs -= 1
    if entry.refs <= 0:
        del per_loop[(url, namespace)]
        await entry.watcher.aclose()


class AsyncPauseClient(BaseClient):
    """Change, read and wait on pause state. ``async with AsyncPauseClient(url) as c: ...``"""

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = None,
        holder: str | None = None,
        redis: aredis.Redis | None = None,
        settings: Settings | None = None,
    ) -> None:
        redis = self._configure(
            url, namespace=namespace, holder=holder, redis=redis, settings=settings, client_for=async_client
        )
        self._ack_script = redis.register_script(registry_script("ack"))
        self._version_report_script = redis.register_script(registry_script("version_report"))
        self._hb_script = redis.register_script(registry_script("heartbeat"))
        self._watcher: PauseWatcher | None = None
        self._own_watcher = False
        #: the leases of the ``paused(ttl=...)`` blocks each task runs: its writes are refused
        #: once one is lost or ran out (a block must not act under a lease it lost)
        self._leases: dict[asyncio.Task[Any], list[_Lease]] = {}
        self._last_write: tuple[int, str | None] = (0, None)
        #: a drain barrier's subscription, kept (unsubscribed) for the next one: no new
        #: connection per ``pause(drain=True)``
        self.idle_ack_pubsub: Any = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close connections and release the shared watcher. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.idle_ack_pubsub is not None:
            with contextlib.suppress(Exception):
                await self.idle_ack_pubsub.aclose()
            self.idle_ack_pubsub = None
        if self._watcher is not None:
            if self._own_watcher:
                await self._watcher.aclose()
            elif self.url is not None:
                await release_watcher(self.url, self.namespace)
            self._watcher = None
        if self._owns_redis:
            await aclose_client(self.redis)
        self._forget_connection()

    async def __aenter__(self) -> AsyncPauseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def watcher(self) -> PauseWatcher:
        """The process's shared watcher for this client's Redis and namespace (started)."""
        if self._closed:
            raise ClientClosedError("the client is closed; make a new one")
        if self._watcher is None:
            if self.url is not None:
                self._watcher = await shared_watcher(self.url, self.namespace, settings=self.settings)
            else:
                self._watcher = PauseWatcher(
                    self.redis,
                    namespace=self.namespace,
                    sharded=self.sharded,
                    on_data_loss=self.settings.on_data_loss,
                    fence_bound=self.settings.fence_bound_s,
                )
                self._own_watcher = True
                await self._watcher.start(wait=False)
        return self._watcher

    async def _run(self, script: str, args: list[str]) -> Any:
        if self._closed:
            raise ClientClosedError("the client is closed; make a new one")
        task = asyncio.current_task()
        leases = self._leases.get(task) if self._leases and task is not None else None
        if leases:
            _refuse_without_lease(leases)
        with translate_redis_errors():
            keys = self._script_keys(script)
            res = await retry_stale(self.redis, lambda: self._scripts[script](keys=keys, args=args))
            if leases:
                # the renewer cancels a block that lost its lease; redis-py may have swallowed
                # that cancellation mid-command: honour it, the block must not go on
                honour_cancellation(task)
            rev = int(res[2] if script == "pause" else res[1])
            epoch = res[4] if len(res) > 4 and res[4] else None
            if epoch != self._last_write[1] or rev > self._last_write[0]:
                self._last_write = (rev, epoch)
            if self.replication_wait:
                acked = await self.redis.execute_command(
                    "WAIT", self.replication_wait, self.replication_wait_timeout_ms
                )
        if self.replication_wait:
            self._check_replication(acked)
        return res

    # -- changes -----------------------------------------------------------------------------------
    async def pause(
        self,
        name: str,
        *,
        holder: str | None = None,
        reason: str | None = None,
        ttl: float | None = None,
        drain: bool = False,
        timeout: float | None = None,
    ) -> Grant:
        """Hold ``name`` paused. Returns the grant; ``grant.token`` fences resume/renew.

        With ``drain=True``, return only once every live replica process acknowledged that it
        has no request of ``name`` in flight (else :class:`DrainTimeoutError`; the pause stays).
        """
        h, args, drain_timeout = self._pause_plan(name, holder, reason, ttl, drain, timeout)
        if drain_timeout is None:
            return self._parse_grant(name, h, await self._run("pause", args))
        async with AckWaiter(self, name) as acks:
            grant = self._parse_grant(name, h, await self._run("pause", args))
            await acks.wait(grant, drain_timeout)
        return grant

    async def resume(
        self, name: str, *, holder: str | None = None, token: str | int | None = None, force: bool = False
    ) -> ResumeResult:
        """Release ``holder``'s hold (all holds with ``force``).

        Raises :class:`StaleTokenError` if ``token`` is not the hold's current token and
        :class:`NotHolderError` if the adapter is paused but not by ``holder``.
        """
        h, args = self._resume_args(name, holder, token, force)
        return self._parse_resume(name, h, token, await self._run("resume", args))

    async def renew(
        self, name: str, holder: str | None, ttl: float, *, token: str | int | None = None
    ) -> AdapterState:
        """Extend ``holder``'s lease on ``name`` to ``ttl`` seconds from now."""
        h, args = self._renew_args(name, holder, ttl, token)
        return self._parse_renew(name, h, token, await self._run("renew", args))

    async def reap(self) -> int:
        """Turn expired leases into resumes now (watchers also do this). Returns holds reaped."""
        with translate_redis_errors():
            res = await self._scripts["reap"](keys=self.keys.state_keys(), args=[self.publish_command])
        return int(res[0])

    # -- weight versions ---------------------------------------------------------------------------
    async def set_version(
        self, name: str, version: str, path: str, *, load: dict[str, Any] | None = None
    ) -> DesiredVersion:
        """Set the desired weight version of ``name`` (one revision, one ``version`` event);
        every replica loads it before it serves ``name`` again. The same version, path and
        load again is a no-op that returns the stored record. Does not wait: see :meth:`swap`."""
        args = self._set_version_args(name, version, path, load)
        return self._parse_set_version(await self._run("set_version", args))

    async def clear_version(self, name: str) -> bool:
        """Forget ``name``'s desired version (replicas keep what they loaded). True if it had one."""
        return self._parse_cleared(await self._run("set_version", self._clear_version_args(name)))

    async def get_version(self, name: str) -> DesiredVersion | None:
        """The desired version of ``name`` (None: none set)."""
        validate_name(name)
        with translate_redis_errors():
            raw = await retry_stale(self.redis, lambda: self.redis.hget(self.keys.versions, name))
        return self._parse_version(raw)

    async def versions(self) -> dict[str, DesiredVersion]:
        """Every adapter's desired version."""
        with translate_redis_errors():
            raw = await retry_stale(self.redis, lambda: self.redis.hgetall(self.keys.versions))
        return self._parse_versions(raw)

    async def swap(
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
        """Move ``name`` to ``version`` (weights at ``path``) on every replica, in one call.

        With the barrier: pause with drain, set the version, wait until every live replica
        reports it loaded, resume. Raises :class:`SwapError` naming the replicas that did not
        load it in ``timeout`` (default ``drain_timeout_s``) or failed to; the pause is released
        either way and those replicas keep ``name`` held until they load it. Without the
        barrier: set the version and return at once (each replica converges on its own)."""
        args, budget = self._swap_start(name, version, path, load, timeout)
        t0 = time.monotonic()
        if not barrier:
            return self._unbarriered(self._parse_set_version(await self._run("set_version", args)), t0)
        h, pause_args = self._swap_pause_args(name, holder, reason, version, budget)
        async with AckWaiter(self, name) as acks:  # subscribed before anything is written
            grant = await self._pause_shielded(name, h, pause_args)
            try:
                # at most half the budget: a replica that does not drain is named by the
                # version barrier, and the others still get time to report
                with contextlib.suppress(DrainTimeoutError):
                    await acks.wait(grant, budget / 2)
                dv = self._parse_set_version(await self._run("set_version", args))
                b = await acks.wait_versions(dv.version, dv.revision, self._left(budget, t0))
            finally:
                if grant.created:
                    await self._release_swap(name, grant)
        return self._swap_result(dv, b, t0)

    async def _pause_shielded(self, name: str, holder: str, args: list[str]) -> Grant:
        """Write a pause; if cancelled while the script runs, wait for it and release the hold
        it made before the cancellation propagates (no leaked pause)."""
        write = asyncio.ensure_future(self._run("pause", args))
        try:
            return self._parse_grant(name, holder, await asyncio.shield(write))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                g = self._parse_grant(name, holder, await asyncio.shield(write))
                if g.created:
                    await asyncio.shield(self.resume(name, holder=holder, token=g.token))
            raise

    async def _release_swap(self, name: str, grant: Grant) -> None:
        try:
            await asyncio.shield(self.resume(name, holder=grant.holder, token=grant.token))
        except ConflictError as exc:
            self._swap_pause_gone(name, exc)

    # -- reads ---------------------------------------------------------------------------------------
    async def get(self, name: str) -> AdapterState | None:
        """The state of ``name`` (None: not paused). ``*`` is not folded in."""
        validate_name(name)
        with translate_redis_errors():
            res = await retry_stale(
                self.redis, lambda: self._snapshot_script(keys=self._snapshot_keys(), args=[name])
            )
        return self._parse_get(name, res)

    async def snapshot(self) -> Snapshot:
        """Every paused adapter and the revision, in one round trip."""
        with translate_redis_errors():
            res = await retry_stale(
                self.redis, lambda: self._snapshot_script(keys=self._snapshot_keys(), args=[""])
            )
        return parse_snapshot_reply(res)

    async def is_paused(self, name: str) -> bool:
        """Ask Redis (one round trip): is ``name`` paused, directly or by ``*``?"""
        return self._covers(await self.snapshot(), name)

    async def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        """Wait until ``name`` is not paused. True: not paused; False: still paused at timeout."""
        validate_name(name)
        t = validate_timeout(timeout)
        w = await self.watcher()
        deadline = None if t is None else time.monotonic() + t
        # read-your-writes: a pause this client just made must not look unpaused to its waiters
        # (unless Redis has since lost that write: then there is nothing to wait for)
        rev, epoch = self._last_write
        if not w.reached(rev, epoch) and not await w.wait_revision(rev, epoch, timeout=t):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return await w.wait_unpaused(name, remaining)

    async def events(self) -> AsyncIterator[PauseEvent]:
        """Every change as this process learns it (resync differences come as op 'resync')."""
        w = await self.watcher()
        queue: asyncio.Queue[PauseEvent] = asyncio.Queue(maxsize=10_000)

        def listener(name: str, state: AdapterState | None, ev: PauseEvent | None) -> None:
            if ev is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(ev)

        w.add_listener(listener)
        try:
            while True:
                yield await queue.get()
        finally:
            w.remove_listener(listener)

    @contextlib.asynccontextmanager
    async def paused(
        self,
        name: str,
        *,
        holder: str | None = None,
        reason: str | None = None,
        ttl: float | None = None,
        drain: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[Grant]:
        """Pause on entry, always release this hold on exit (exceptions and cancellation too).

        A hold made on entry is released even when the drain wait fails or is cancelled. With
        ``ttl``, the lease is renewed every ttl/3 while the block runs; if it is lost (a renew
        is refused, or none succeeds before the lease would end), the block is cancelled and
        :class:`LeaseLostError` raised in its place: the fleet may already see the adapter
        resumed, so the block must not go on as if it held it.
        """
        plan = self._pause_plan(name, holder, reason, ttl, drain, timeout)
        body = asyncio.current_task()
        sent = time.monotonic()
        grant = await self._pause_released_on_failure(name, plan)
        lease = _Lease(body, float(ttl), sent, name, grant) if ttl is not None else None
        renewer: asyncio.Task[None] | None = None
        if lease is not None:
            renewer = asyncio.create_task(self._keep_renewing(name, grant, lease))
            if body is not None:
                self._leases.setdefault(body, []).append(lease)
        try:
            try:
                yield grant
            except (asyncio.CancelledError, LeaseLostError):
                if lease is not None and lease.lost and body is not None:
                    await lease.take_back()  # our cancellations: delivered, swallowed or pending
                    if body.cancelling() == 0:
                        raise LeaseLostError(lease.message(name, grant)) from None
                raise
            if lease is not None and lease.lost:
                await lease.take_back()  # the block ended before our cancellation reached it
                raise LeaseLostError(lease.message(name, grant))
        finally:
            if renewer is not None:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await renewer
            if lease is not None and body is not None:
                self._forget_lease(body, lease)
            if not grant.created:
                self._hold_kept(name, grant)  # an outer block (or a task of the same holder) holds it
            else:
                try:
                    await asyncio.shield(self.resume(name, holder=grant.holder, token=grant.token))
                except ConflictError as exc:
                    self._hold_gone(name, grant, exc)

    def check_lease(self) -> None:
        """Raise :class:`LeaseLostError` if a ``paused(ttl=...)`` block this task runs has lost
        its lease, or its lease ran out by this process's clock (from the last renewal's
        send) - before the renewer noticed, as after a SIGSTOP. pausesvc's own writes from the
        block check it themselves; call it before any other step that must not run without
        the hold (loading weights, publishing them)."""
        task = asyncio.current_task()
        leases = self._leases.get(task) if task is not None else None
        if leases:
            _refuse_without_lease(leases)

    def _forget_lease(self, task: asyncio.Task[Any], lease: _Lease) -> None:
        stack = self._leases.get(task, [])
        if lease in stack:
            stack.remove(lease)
        if not stack:
            self._leases.pop(task, None)

    async def _pause_released_on_failure(self, name: str, plan: PausePlan) -> Grant:
        """``pause`` for :meth:`paused`: if the drain wait fails or is cancelled after the hold
        was written, the hold is released before the error propagates (no leaked pause)."""
        holder, args, drain_timeout = plan
        if drain_timeout is None:
            return self._parse_grant(name, holder, await self._run("pause", args))
        async with AckWaiter(self, name) as acks:
            write = asyncio.ensure_future(self._run("pause", args))
            try:
                grant = self._parse_grant(name, holder, await asyncio.shield(write))
            except asyncio.CancelledError:
                # cancelled while the script ran: wait for it (shielded) to learn the token
                with contextlib.suppress(Exception):
                    res = await asyncio.shield(write)
                    g = self._parse_grant(name, holder, res)
                    await asyncio.shield(self.resume(name, holder=holder, token=g.token))
                raise
            try:
                await acks.wait(grant, drain_timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.resume(name, holder=holder, token=grant.token))
                raise
        return grant

    async def _keep_renewing(self, name: str, grant: Grant, lease: _Lease) -> None:
        ttl = lease.ttl
        while True:
            await asyncio.sleep(max(0.0, min(ttl / 3, lease.deadline - time.monotonic())))
            if lease.lost:
                return  # the block found it out first (a write refused)
            if time.monotonic() >= lease.deadline:
                await lease.lose("no renewal reached Redis before the lease ended")
                return
            sent = time.monotonic()
            try:
                async with asyncio.timeout(max(0.01, lease.deadline - sent)):
                    await self.renew(name, grant.holder, ttl, token=grant.token)
                lease.deadline = sent + ttl  # measured from the send: never later than Redis's
            except ConflictError as exc:
                await lease.lose(f"the renewal was refused: {exc}")
                return
            except TimeoutError:
                continue  # the deadline check above decides
            except Exception as exc:
                logger.warning("pausesvc: renewing %r failed (%s); retrying", name, exc)

    # -- replicas ----------------------------------------------------------------------------------
    async def replicas(self, *, include_dead: bool = False) -> list[dict[str, Any]]:
        """Replica processes in the registry with heartbeat age, drain acknowledgements
        (``drains``) and loaded weight versions (``versions``: adapter -> report)."""
        return await list_replicas(self, include_dead=include_dead)

    async def _heartbeat(self, replica_id: str, fields: dict[str, str]) -> None:
        ttl_ms = int(self.settings.replica_timeout_s * 3000)
        args: list[str] = [self.publish_command, replica_id, str(ttl_ms), str(ttl_ms * 10)]
        for k, v in fields.items():
            args += [k, v]
        keys = [self.keys.replicas, self.keys.replica(replica_id), self.keys.acks]
        with translate_redis_errors():  # idempotent: retried once on a connection Redis closed
            await retry_stale(self.redis, lambda: self._hb_script(keys=keys, args=args))

    async def _ack(
        self,
        replica_id: str,
        name: str,
        revision: int,
        aborted: list[str],
        *,
        epoch: str | None = None,
        tokens: list[str] | None = None,
    ) -> None:
        record = json.dumps(
            {
                "replica": replica_id,
                "name": name,
                "rev": revision,
                "epoch": epoch,
                "tokens": tokens,
                "aborted": aborted,
                "ts": time.time(),
            }
        )
        keys = [self.keys.replicas, self.keys.replica(replica_id), self.keys.acks]
        args = [self.publish_command, replica_id, name, record]
        with translate_redis_errors():  # idempotent (the same record again): retried once
            await retry_stale(self.redis, lambda: self._ack_script(keys=keys, args=args))

    async def _deregister(self, replica_id: str) -> None:
        with translate_redis_errors():
            await self.redis.zrem(self.keys.replicas, replica_id)
            await self.redis.delete(self.keys.replica(replica_id))


#: how often a block that lost its lease is cancelled again until it is out (s)
CANCEL_AGAIN_S = 0.05


class _Lease:
    """A ``paused(..., ttl=...)`` block's lease, as its renewer sees it (monotonic clock)."""

    __slots__ = ("body", "cancels", "deadline", "grant", "lost", "name", "reason", "taken_back", "ttl")

    def __init__(
        self, body: asyncio.Task[Any] | None, ttl: float, sent: float, name: str, grant: Grant
    ) -> None:
        self.body = body
        self.ttl = ttl
        self.deadline = sent + ttl  # from the pause's send: never later than Redis's expiry
        self.lost = False
        self.cancels = 0  # cancellations sent to the block
        self.taken_back = False  # the block is out: send no more
        self.reason = ""
        self.name = name
        self.grant = grant

    async def lose(self, reason: str) -> None:
        """Mark the lease lost and cancel the block - again every ``CANCEL_AGAIN_S`` until it
        is out: redis-py swallows a cancellation that lands mid-command (8.2), and a block
        that awaits only such calls would otherwise go on under a lease it lost."""
        self.lost = True
        self.reason = reason
        logger.warning("pausesvc: lease lost (%s); cancelling the paused block", reason)
        body = self.body
        while body is not None and not body.done() and not self.taken_back:
            self.cancels += 1
            body.cancel()
            await asyncio.sleep(CANCEL_AGAIN_S)

    async def take_back(self) -> None:
        """In the block's task, once it is out: no more cancellations; the ones sent are
        delivered here if still pending and uncounted, so none hits the cleanup after it."""
        self.taken_back = True
        task = self.body
        if task is None or not self.cancels:
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        for _ in range(min(self.cancels, task.cancelling())):
            task.uncancel()
        self.cancels = 0

    def message(self, name: str, grant: Grant) -> str:
        return lease_lost_message(name, grant, self.reason)


def _refuse_without_lease(leases: list[_Lease]) -> None:
    """Raise :class:`LeaseLostError` before a write from a block whose lease was lost or ran
    out - also before its renewer noticed (a process woken from SIGSTOP runs its own step
    before the renewer's timer); the lease is then lost for the renewer too."""
    now = time.monotonic()
    for lease in leases:
        if not lease.lost and now >= lease.deadline:
            lease.lost, lease.reason = True, "no renewal reached Redis before the lease ended"
        if lease.lost:
            raise LeaseLostError(lease_lost_message(lease.name, lease.grant, lease.reason))
