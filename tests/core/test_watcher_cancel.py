"""The watcher's subscription task stops when cancelled, even if redis-py swallows the
cancellation (it reports "no message" when a cancel lands as its read times out)."""

from __future__ import annotations

import asyncio
from typing import Any

from pausesvc import PauseWatcher


class SwallowingPubSub:
    """A pub/sub whose read turns a cancellation into "no message", as redis-py can."""

    async def get_message(self, timeout: float) -> Any:
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            return None
        return None


async def test_a_swallowed_cancellation_still_stops_the_read() -> None:
    w = PauseWatcher("redis://127.0.0.1:1", sharded=False)
    try:
        task = asyncio.create_task(w._get_message(SwallowingPubSub(), 5.0))
        await asyncio.sleep(0.01)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert task in done and task.cancelled()
    finally:
        await w.aclose()
