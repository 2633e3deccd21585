"""A view is proven in sync only once it HOLDS the snapshot it read: the fence of a replica
(``proof_age`` older than the bound) must not lift while a resync is still between its snapshot
read and applying it (it awaits the tombstone reads in between)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pausesvc import AsyncPauseClient, PauseWatcher


async def test_the_proof_is_given_after_the_view_holds_the_snapshot(redis_url: str, namespace: str) -> None:
    async with (
        AsyncPauseClient(redis_url, namespace=namespace, holder="t") as client,
        PauseWatcher(redis_url, namespace=namespace) as w,
    ):
        assert await w.wait_synced(5)
        grant = await client.pause("lora-a")
        assert await w.wait_revision(grant.revision, timeout=5)
        w._proof = time.monotonic() - 100  # as after a partition: fenced
        w._view.paused.clear()  # ... and the view missed the pause
        gate = asyncio.Event()
        real = w._zscores

        async def slow(*args: Any) -> dict[str, int]:
            await gate.wait()
            return await real(*args)

        w._zscores = slow  # type: ignore[method-assign]
        task = asyncio.create_task(w._resync("test"))
        await asyncio.sleep(0.1)
        assert not w.is_paused("lora-a") and w.proof_age > 50, "proven in sync with a stale view"
        gate.set()
        await asyncio.wait_for(task, 5)
        assert w.is_paused("lora-a") and w.proof_age < 5
