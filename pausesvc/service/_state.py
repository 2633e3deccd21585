"""What one running service owns: the client, the shared watcher, metrics; the few operations
several routes share (read-your-writes waits, collecting aborted request ids); and ``Svc``, the
dependency that hands the state to every router's routes."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import Request

from pausesvc._exceptions import RedisUnavailableError, translate_redis_errors
from pausesvc._settings import Settings
from pausesvc.client._async import AsyncPauseClient
from pausesvc.client._drain import covers, missing_acks
from pausesvc.protocol.models import AdapterState, DesiredVersion, Grant, PauseEvent
from pausesvc.service._metrics import Metrics
from pausesvc.watcher import PauseWatcher

__all__ = [
    "ServiceState",
    "Svc",
    "collect_aborted",
    "fleet_versions",
    "replica_versions",
    "service_state",
    "until_disconnected",
]

#: /metrics reads the registry at most this often (a scrape never waits on Redis for long)
VERSIONS_REFRESH_S = 2.0

logger = logging.getLogger("pausesvc.service")


def collect_aborted(replicas: list[dict[str, Any]], name: str, grant: Grant) -> tuple[list[str], list[str]]:
    """(replica ids that acknowledged, request ids they aborted) for the pause ``grant``.

    Reads the drain acknowledgements the replicas stored in their records (``drain:<name>``,
    see ``lua/ack.lua``): ``{"replica", "name", "rev", "aborted": [ids], "ts"}``.
    """
    acked: list[str] = []
    aborted: list[str] = []
    for rec in replicas:
        d = rec.get("drains", {}).get(name)
        if not isinstance(d, dict) or not covers(d, name, name, grant):
            continue
        acked.append(str(rec.get("id")))
        ids = d.get("aborted") or []
        if isinstance(ids, list):
            aborted.extend(str(i) for i in ids)
    return sorted(acked), aborted


def _loaded(rec: dict[str, Any], name: str) -> dict[str, Any] | None:
    r = rec.get("versions", {}).get(name)
    return r if isinstance(r, dict) else None


def replica_versions(
    replicas: list[dict[str, Any]], name: str, desired: DesiredVersion | None
) -> list[dict[str, Any]]:
    """Each live replica's last version report of ``name`` and whether it is the desired one."""
    out = []
    for rec in replicas:
        if not rec.get("live"):
            continue
        r = _loaded(rec, name)
        on = (
            desired is not None
            and r is not None
            and r.get("status") == "loaded"
            and r.get("version") == desired.version
        )
        out.append({"id": str(rec["id"]), "url": rec.get("url"), "loaded": r, "on_desired": on})
    return out


def fleet_versions(
    desired: dict[str, DesiredVersion], replicas: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per adapter (desired or reported by a live replica): ``desired`` (its version or None),
    ``on`` (loaded version -> live replicas on it), ``off`` (live replicas not on the desired
    version) and ``mixed`` (the live replicas do not all stand at the same version; a replica
    that has not loaded any counts as one more place)."""
    live = [r for r in replicas if r.get("live")]
    names = set(desired) | {n for r in live for n in r.get("versions", {})}
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        want = desired.get(name)
        on: dict[str, int] = {want.version: 0} if want is not None else {}
        places: set[str | None] = set()
        for r in live:
            rep = _loaded(r, name)
            v = str(rep.get("version")) if rep is not None and rep.get("status") == "loaded" else None
            places.add(v)
            if v is not None:
                on[v] = on.get(v, 0) + 1
        off = len(live) - (on.get(want.version, 0) if want is not None else 0)
        out[name] = {
            "desired": want.version if want is not None else None,
            "on": on,
            "off": off,
            "mixed": len(places) > 1,
        }
    return out


async def until_disconnected(request: Request) -> None:
    """Return when the client goes away (the body, if any, has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ServiceState:
    def __init__(
        self, settings: Settings, *, heartbeat_s: float = 15.0, max_wait_s: float | None = None
    ) -> None:
        self.settings = settings
        self.heartbeat_s = heartbeat_s
        #: a single long-poll answers (paused=true) after at most this long; clients loop
        self.max_wait_s = max_wait_s
        self.metrics = Metrics()
        self.client: AsyncPauseClient | None = None
        self.watcher: PauseWatcher | None = None
        self.closing = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: what /metrics shows about weight versions (see :meth:`refresh_versions`)
        self.fleet_versions: dict[str, dict[str, Any]] = {}
        self._versions_at = 0.0

    def begin_shutdown(self) -> None:
        """Thread- and signal-safe: end event streams and long-polls now (the server is
        stopping and waits for open connections before it shuts the app down)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.closing.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.client = AsyncPauseClient(settings=self.settings)
        self.watcher = await self.client.watcher()
        self.watcher.add_listener(self._on_change)

    async def aclose(self) -> None:
        if self.watcher is not None:
            self.watcher.remove_listener(self._on_change)
        if self.client is not None:
            await self.client.aclose()
        self.client = None
        self.watcher = None

    @property
    def c(self) -> AsyncPauseClient:
        if self.client is None:
            raise RuntimeError("service not started")
        return self.client

    @property
    def w(self) -> PauseWatcher:
        if self.watcher is None:
            raise RuntimeError("service not started")
        return self.watcher

    def _on_change(self, name: str, state: AdapterState | None, ev: PauseEvent | None) -> None:
        if ev is None:
            return
        self.metrics.changes.labels(ev.op).inc()
        logger.info(
            "%s %s -> %s",
            ev.op,
            name,
            "paused" if ev.paused else "not paused",
            extra={
                "event": "change",
                "adapter": name,
                "op": ev.op,
                "holder": ev.holder,
                "revision": ev.revision,
                "paused": ev.paused,
                "holders": sorted(state.holders) if state else [],
            },
        )

    async def redis_revision(self) -> tuple[int, str | None]:
        """The namespace's current revision and epoch, read from Redis (one round trip)."""
        k = self.c.keys
        with translate_redis_errors():
            pipe = self.c.redis.pipeline(transaction=False)
            pipe.get(k.rev)
            pipe.get(k.epoch)
            rev, epoch = await pipe.execute()
        return int(rev or 0), (str(epoch) if epoch is not None else None)

    async def wait_unpaused(self, name: str, timeout: float) -> bool:
        """True as soon as ``name`` is not paused, False if still paused after ``timeout``.

        Linearizable with completed writes from ANY process: the view first catches up with
        the revision Redis has now, so a pause that returned before this call is never missed.
        If Redis is unreachable the view answers (fail closed: what it knew paused stays so).
        """
        deadline = time.monotonic() + timeout
        w = self.w
        try:
            rev, epoch = await asyncio.wait_for(self.redis_revision(), timeout=max(timeout, 1.0))
        except (RedisUnavailableError, TimeoutError):
            rev, epoch = 0, None
        if rev > w.revision and not await w.wait_revision(rev, epoch, timeout=timeout):
            return not w.is_paused(name) and w.in_sync
        return await w.wait_unpaused(name, max(0.0, deadline - time.monotonic()))

    async def wait_or_disconnect(self, request: Request, name: str, timeout: float) -> bool:
        if self.max_wait_s is not None:
            timeout = min(timeout, self.max_wait_s)
        waiter = asyncio.ensure_future(self.wait_unpaused(name, timeout))
        gone = asyncio.ensure_future(until_disconnected(request))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({waiter, gone, closing}, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                return waiter.result()
            return False  # client left (nobody reads this) or shutdown: "still paused", loop
        finally:
            for t in (waiter, gone, closing):
                t.cancel()
            await asyncio.gather(waiter, gone, closing, return_exceptions=True)

    async def refresh_versions(self) -> None:
        """Re-read the registry for ``fleet_versions`` (at most every VERSIONS_REFRESH_S; the
        desired versions come from the view). Redis unreachable: the last numbers stay."""
        if self.watcher is None or time.monotonic() - self._versions_at < VERSIONS_REFRESH_S:
            return
        try:
            async with asyncio.timeout(1.0):
                replicas = await self.c.replicas()
        except (RedisUnavailableError, TimeoutError) as exc:
            logger.warning("metrics: could not read the replica registry: %s", exc)
            return
        self._versions_at = time.monotonic()
        self.fleet_versions = fleet_versions(self.w.desired_versions, replicas)

    async def drained_replicas(self, name: str, grant: Grant) -> tuple[list[str], list[str]]:
        replicas = await self.c.replicas()
        still = missing_acks(replicas, name, grant)
        if still:  # raced with a replica that just registered: report what we have
            logger.info(
                "drain of %s: replicas registered after the barrier: %s",
                name,
                still,
                extra={"event": "drain_late_replicas", "adapter": name},
            )
        return collect_aborted(replicas, name, grant)


def service_state(request: Request) -> ServiceState:
    """The app's ServiceState (``create_app`` puts it on ``app.state``), as a route dependency."""
    state: ServiceState = request.app.state.svc
    return state


#: a route parameter annotated ``Svc`` is given the app's ServiceState
Svc = Annotated[ServiceState, Depends(service_state)]
