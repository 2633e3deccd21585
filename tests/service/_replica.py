"""A stand-in for a vLLM replica process at the registry seam: it heartbeats into the real
registry and acknowledges drains through the real Lua scripts, reporting given request ids as
aborted. (The real gate lives in vllm_plugin/; the protocol exercised here is the real one.)"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pausesvc import AdapterState, AsyncPauseClient, PauseEvent


class FakeReplica:
    def __init__(
        self,
        redis_url: str,
        namespace: str,
        replica_id: str,
        *,
        aborted: dict[str, list[str]] | None = None,
        ack: bool = True,
    ) -> None:
        self.client = AsyncPauseClient(redis_url, namespace=namespace)
        self.id = replica_id
        self.aborted = aborted or {}
        self.ack = ack
        self.acked: list[tuple[str, int]] = []
        self._queue: asyncio.Queue[PauseEvent] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []

    def _listener(self, name: str, state: AdapterState | None, ev: PauseEvent | None) -> None:
        if ev is not None and ev.paused and ev.op == "pause":
            self._queue.put_nowait(ev)

    async def __aenter__(self) -> FakeReplica:
        await self.client._heartbeat(self.id, {"url": f"http://{self.id}:8000", "pid": "4242"})
        w = await self.client.watcher()
        assert await w.wait_synced(5)
        w.add_listener(self._listener)
        self._tasks.append(asyncio.create_task(self._heartbeats()))
        self._tasks.append(asyncio.create_task(self._acks()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        (await self.client.watcher()).remove_listener(self._listener)
        await self.client._deregister(self.id)
        await self.client.aclose()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            await self.client._heartbeat(self.id, {})

    async def _acks(self) -> None:
        while True:
            ev = await self._queue.get()
            if self.ack:
                await self.client._ack(
                    self.id,
                    ev.name,
                    ev.revision,
                    self.aborted.pop(ev.name, []),
                    epoch=ev.epoch,
                    tokens=sorted(ev.state.tokens) if ev.state else None,
                )
                self.acked.append((ev.name, ev.revision))
