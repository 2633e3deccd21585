"""The watcher reads its subscription with a blocking read (no timer per message), so its
liveness rests on the keepalive: these attack that. Real redis-server, a real TCP proxy that
black-holes an open connection (harness/blackhole.py), seconds long (in the default suite)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from pausesvc import EmbeddedRedis, PauseClient, PauseWatcher
from reliability.harness.blackhole import BlackholeProxy
from reliability.harness.probe import until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]


async def test_an_idle_subscription_black_holed_is_declared_dead_and_recovers(
    redis_server: EmbeddedRedis, namespace: str
) -> None:
    """No event arrives, so the reader sits in its blocking read: the missing PONGs alone must
    end the subscription (within the interval and a ping period), and once the link is back the
    view catches up on what changed meanwhile."""
    with BlackholeProxy(redis_server.port) as proxy:
        async with PauseWatcher(
            proxy.url, namespace=namespace, health_check_interval=0.6, max_backoff=0.2
        ) as w:
            await w.wait_synced(10)
            assert w.in_sync
            proxy.blackhole()
            t0 = time.monotonic()
            await until(lambda: not w.in_sync, 10, "the black-holed watcher leaves sync")
            lost_after = time.monotonic() - t0
            assert "PONG" in (w.last_error or ""), w.last_error
            with PauseClient(redis_server.url, namespace=namespace) as c:
                c.pause("a")  # made while the watcher cannot see it
            proxy.forward()
            await until(lambda: w.in_sync and w.is_paused("a"), 15, "healed, the view has the pause")
    assert lost_after < 0.6 + 0.3 + 1.5  # the interval, a ping period, slack for a busy machine


async def test_an_idle_healthy_subscription_stays_up_and_still_resyncs(
    redis_url: str, namespace: str
) -> None:
    """Nothing ever changes here: the keepalive's PONGs keep the link proven (no reconnect,
    a fresh proof) and wake the blocking reader, so the slow safety-net resync still runs."""
    async with PauseWatcher(
        redis_url, namespace=namespace, resync_interval=0.3, health_check_interval=0.4
    ) as w:
        await w.wait_synced(10)
        before = w.stats.resyncs
        await until(lambda: w.stats.resyncs >= before + 3, 10, "three periodic resyncs")
        await asyncio.sleep(1.0)  # 2.5 intervals more: a healthy idle link is never dropped
        assert w.stats.events == 0
        assert w.stats.reconnects == 0, w.last_error
        assert w.proof_age < 0.4 and w.in_sync


async def test_a_killed_subscription_is_resubscribed_and_resynced(redis_url: str, namespace: str) -> None:
    """Redis closes the subscription (CLIENT KILL) while the reader blocks: a change made
    before it resubscribed is not lost."""
    async with PauseWatcher(redis_url, namespace=namespace, max_backoff=0.2) as w:
        await w.wait_synced(10)
        r = redis.Redis.from_url(redis_url)
        try:
            r.client_kill_filter(_type="pubsub")
            with PauseClient(redis_url, namespace=namespace) as c:
                c.pause("b")
        finally:
            r.close()
        await until(lambda: w.is_paused("b"), 15, "the view has the pause made while it was gone")
        await asyncio.sleep(0.2)
        assert w.in_sync


async def test_closing_a_watcher_blocked_in_its_read_returns_promptly(redis_url: str, namespace: str) -> None:
    w = PauseWatcher(redis_url, namespace=namespace)
    await w.start()
    await w.wait_synced(10)
    t0 = time.monotonic()
    await asyncio.wait_for(w.aclose(), 5)
    assert time.monotonic() - t0 < 3
