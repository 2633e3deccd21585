"""The watcher: its subscription task stops when cancelled, even if redis-py swallows the
cancellation (it reports "no message" when a cancel lands as its read times out); the
O(1) ``any_paused`` a gate's fast path reads."""

from __future__ import annotations

import asyncio
from typing import Any

from pausesvc import PauseWatcher


class SwallowingPubSub:
    """A pub/sub whose read turns a cancellation into "no message", as redis-py can."""

    async def get_message(self, timeout: float | None) -> Any:
        try:
            await asyncio.sleep(3600 if timeout is None else timeout)
        except asyncio.CancelledError:
            return None
        return None


async def test_a_swallowed_cancellation_still_stops_the_read() -> None:
    w = PauseWatcher("redis://127.0.0.1:1", sharded=False)
    try:
        task = asyncio.create_task(w._read_loop(SwallowingPubSub(), polled=False))
        await asyncio.sleep(0.01)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert task in done and task.cancelled()
    finally:
        await w.aclose()


async def test_any_paused_follows_the_view(redis_url: str, namespace: str) -> None:
    from pausesvc import AsyncPauseClient

    async with (
        PauseWatcher(redis_url, namespace=namespace) as w,
        AsyncPauseClient(redis_url, namespace=namespace, holder="t") as c,
    ):
        assert not w.any_paused
        grant = await c.pause("lora-a")
        assert await w.wait_revision(grant.revision, timeout=5)
        assert w.any_paused
        res = await c.resume("lora-a")
        assert await w.wait_revision(res.revision, timeout=5)
        assert not w.any_paused


async def test_close_returns_when_a_cancellation_is_turned_into_a_lost_link(redis_url: str) -> None:
    """redis-py can turn a cancellation that lands mid-command into a connection error; the
    subscription loop then sees "link lost" and would reconnect for ever (seen in CI: a gate's
    shutdown hung on an ACL-refused watcher). aclose() still returns, promptly."""
    import redis.exceptions as rexc

    w = PauseWatcher(redis_url, namespace="swallow", max_backoff=0.05)

    async def subscribe_swallowing(pubsub: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise rexc.ConnectionError("Connection closed by server.") from None

    w._subscribe = subscribe_swallowing  # type: ignore[method-assign]
    await w.start(wait=False)
    await asyncio.sleep(0.05)
    await asyncio.wait_for(w.aclose(), 5)
    assert w._task is not None and w._task.done()
