"""Replica processes at the registry seam that converge on desired weight versions: each has its
own watcher and reports through the public :class:`pausesvc.Replica` API (loaded, failed, or
never), and acknowledges drains as the gate does. Run on a private event loop in a thread, so
blocking tests (the HTTP service, the CLI) can swap against them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from pausesvc import AdapterState, AsyncPauseClient, DesiredVersion, PauseEvent, PauseWatcher, Replica


class VersionReplica:
    def __init__(self, redis_url: str, namespace: str, rid: str, mode: str = "load") -> None:
        self.client = AsyncPauseClient(redis_url, namespace=namespace)
        self.replica = Replica(self.client, rid)
        self.watcher = PauseWatcher(redis_url, namespace=namespace)
        self.mode = mode
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _on_version(self, name: str, dv: DesiredVersion | None) -> None:
        if dv is not None and self.mode != "silent":
            self._spawn(self._load(name, dv))

    def _on_pause(self, name: str, st: AdapterState | None, ev: PauseEvent | None) -> None:
        if ev is not None and st is not None and st.drain_requested and self.mode != "silent":
            self._spawn(
                self.replica.acknowledge(name, ev.revision, [], epoch=ev.epoch, tokens=sorted(st.tokens))
            )

    async def _load(self, name: str, dv: DesiredVersion) -> None:
        await asyncio.sleep(0.02)
        ok = self.mode != "fail"
        await self.replica.report_version(
            name,
            dv.version,
            status="loaded" if ok else "failed",
            revision=dv.revision,
            reason=None if ok else f"cannot read {dv.path}",
            attempts=1,
        )

    async def start(self) -> None:
        await self.replica.heartbeat({"url": f"http://{self.replica.id}:8000", "pid": "1"})
        self.watcher.add_version_listener(self._on_version)
        self.watcher.add_listener(self._on_pause)
        await self.watcher.start()
        self._spawn(self._beat())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            await self.replica.heartbeat({})

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.watcher.aclose()
        await self.replica.leave()
        await self.client.aclose()


@contextlib.contextmanager
def version_fleet(redis_url: str, namespace: str, *modes: str) -> Iterator[None]:
    """Replicas ``r0``, ``r1``, ... (one per mode: load, fail, silent) running in a thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def run() -> None:
        reps = [VersionReplica(redis_url, namespace, f"r{i}", m) for i, m in enumerate(modes)]
        for r in reps:
            await r.start()
        ready.set()
        await stop.wait()
        for r in reps:
            await r.stop()

    th = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    th.start()
    try:
        if not ready.wait(10):
            raise RuntimeError("replicas did not start")
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        th.join(10)
        loop.close()
