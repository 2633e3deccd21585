"""PauseWatcher: one subscription per process, no lost wake-ups, resync on faults."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
import redis
from _wait import until

from pausesvc import AsyncPauseClient, EmbeddedRedis, PauseClient, PauseWatcher


async def test_is_paused_from_memory_and_waiters_wake(redis_url: str, namespace: str) -> None:
    async with (
        PauseWatcher(redis_url, namespace=namespace) as w,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        assert w.in_sync and not w.is_paused("a")
        g = await c.pause("a")
        await until(lambda: w.is_paused("a"))
        assert not w.is_paused("b")
        waiter = asyncio.create_task(w.wait_unpaused("a", timeout=10))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        t0 = time.monotonic()
        await c.resume("a", token=g.token)
        assert await waiter is True
        assert time.monotonic() - t0 < 1.0
        assert await w.wait_unpaused("a", timeout=0) is True


async def test_wait_times_out_false(redis_url: str, namespace: str) -> None:
    async with (
        PauseWatcher(redis_url, namespace=namespace) as w,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        await c.pause("a")
        await until(lambda: w.is_paused("a"))
        assert await w.wait_unpaused("a", timeout=0.1) is False


async def test_global_pause_holds_everyone(redis_url: str, namespace: str) -> None:
    async with (
        PauseWatcher(redis_url, namespace=namespace) as w,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        await c.pause("*")
        await until(lambda: w.is_paused("anything"))
        waiters = [asyncio.create_task(w.wait_unpaused(n, 10)) for n in ("x", "y", "*")]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in waiters)
        await c.resume("*")
        assert await asyncio.gather(*waiters) == [True, True, True]


async def test_client_wait_sees_its_own_pause(redis_url: str, namespace: str) -> None:
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        await (await c.watcher()).wait_synced(5)
        await c.pause("a")
        # read-your-writes: the watcher may not have the event yet, the wait must still block
        assert await c.wait_unpaused("a", timeout=0.2) is False


async def test_lease_expiry_wakes_waiters_within_a_second(redis_url: str, namespace: str) -> None:
    async with (
        PauseWatcher(redis_url, namespace=namespace) as w,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        await c.pause("a", holder="dead-controller", ttl=0.5)
        await until(lambda: w.is_paused("a"))
        t0 = time.monotonic()
        assert await w.wait_unpaused("a", timeout=5) is True
        elapsed = time.monotonic() - t0
        assert 0.3 < elapsed < 1.5
        # and the expiry became a real change in Redis (the watcher reaped it)
        await until(lambda: w.stats.events >= 2)
        assert await c.get("a") is None


async def test_randomized_interleaving_never_loses_a_wakeup(redis_url: str, namespace: str) -> None:
    """Many waiters start at random moments around many pause/resume cycles in several
    processes' worth of watchers; every one must return True soon after the final resume."""
    rng = random.Random(1234)
    adapters = [f"lora-{i}" for i in range(4)]
    async with AsyncPauseClient(redis_url, namespace=namespace) as ctl:
        watchers = [PauseWatcher(redis_url, namespace=namespace) for _ in range(3)]
        for w in watchers:
            await w.start()
        try:
            results: list[asyncio.Task[bool]] = []

            async def controller() -> None:
                for _ in range(60):
                    a = rng.choice(adapters)
                    g = await ctl.pause(a, holder=f"h{rng.randint(0, 2)}")
                    await asyncio.sleep(rng.uniform(0, 0.004))
                    await ctl.resume(a, holder=g.holder, token=g.token)
                    await asyncio.sleep(rng.uniform(0, 0.004))

            async def spawner() -> None:
                for _ in range(400):
                    w = rng.choice(watchers)
                    results.append(asyncio.create_task(w.wait_unpaused(rng.choice(adapters), 20)))
                    await asyncio.sleep(rng.uniform(0, 0.001))

            await asyncio.gather(controller(), spawner())
            await ctl.resume("lora-0", force=True)  # everything is resumed by now
            done = await asyncio.gather(*results)
            assert all(done), f"{done.count(False)} waiters missed their wake-up"
            for w in watchers:
                await until(lambda w=w: w.revision == watchers[0].revision)
                assert w.paused_names() == []
        finally:
            for w in watchers:
                await w.aclose()


async def test_thousand_waiters_one_subscription(
    redis_url: str, namespace: str, raw_redis: redis.Redis
) -> None:
    channel = f"pausesvc:{{{namespace}}}:events"
    async with (
        AsyncPauseClient(redis_url, namespace=namespace) as c1,
        AsyncPauseClient(redis_url, namespace=namespace) as c2,
    ):
        await c1.pause("a")
        tasks = [asyncio.create_task((c1 if i % 2 else c2).wait_unpaused("a", 20)) for i in range(1000)]
        await asyncio.sleep(0.3)
        assert raw_redis.pubsub_numsub(channel) == [(channel, 1)]
        assert not any(t.done() for t in tasks)
        await c1.resume("a")
        assert all(await asyncio.gather(*tasks))
        assert raw_redis.pubsub_numsub(channel) == [(channel, 1)]


async def test_waiter_group_timeouts_cancels_and_a_pause_in_between(redis_url: str, namespace: str) -> None:
    """The waiters of one adapter share one wake pass: a caller that times out or is
    cancelled leaves the others waiting, a pause landing before a woken caller runs makes
    it wait again, and nothing is left behind once every caller is gone."""
    async with (
        PauseWatcher(redis_url, namespace=namespace) as w,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        g = await c.pause("a")
        await until(lambda: w.is_paused("a"))
        await c.pause("b-paused")
        await until(lambda: w.is_paused("b-paused"))
        short = [asyncio.create_task(w.wait_unpaused("a", 0.1)) for _ in range(50)]
        long = [asyncio.create_task(w.wait_unpaused("a", 20)) for _ in range(50)]
        doomed = [asyncio.create_task(w.wait_unpaused("a", 20)) for _ in range(10)]
        other = asyncio.create_task(w.wait_unpaused("b-paused", 0.2))
        assert await asyncio.gather(*short) == [False] * 50
        for t in doomed:
            t.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        assert all(t.cancelled() for t in doomed)
        assert await other is False
        assert not any(t.done() for t in long)
        # resume and pause again in one step of the loop: the woken callers see it paused
        # when they run and wait again (same deadline)
        await c.resume("a", token=g.token)
        await until(lambda: not w.is_paused("a"))
        assert all(await asyncio.gather(*long))
        g = await c.pause("a")
        await until(lambda: w.is_paused("a"))
        again = [asyncio.create_task(w.wait_unpaused("a", 20)) for _ in range(20)]
        await asyncio.sleep(0.05)
        w._wake("a")  # a wake while still paused (as a resume followed at once by a pause)
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in again)
        await c.resume("a", token=g.token)
        assert all(await asyncio.gather(*again))
        assert w._waiters == {}, "bookkeeping left behind"


async def test_waiters_before_the_first_sync_wake_on_it(redis_url: str, namespace: str) -> None:
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        await c.pause("a")
        w = PauseWatcher(redis_url, namespace=namespace)
        try:
            free = asyncio.create_task(w.wait_unpaused("free", 20))
            held = asyncio.create_task(w.wait_unpaused("a", 0.5))
            assert await free is True  # unknown until the first sync, then not paused
            assert await held is False
            assert w.synced_once and w._waiters == {}
        finally:
            await w.aclose()


async def test_killed_pubsub_connection_resyncs_and_waiters_wake(
    redis_url: str, namespace: str, raw_redis: redis.Redis
) -> None:
    async with (
        PauseWatcher(redis_url, namespace=namespace) as w,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        await c.pause("a")
        await until(lambda: w.is_paused("a"))
        waiter = asyncio.create_task(w.wait_unpaused("a", 20))
        resyncs = w.stats.resyncs
        raw_redis.client_kill_filter(_type="pubsub")
        # the resume happens while the watcher is (possibly) disconnected: its event is lost
        await c.resume("a")
        assert await waiter is True
        await until(lambda: w.stats.resyncs > resyncs and w.in_sync)
        await c.pause("b")
        await until(lambda: w.is_paused("b"))


async def test_gap_in_revisions_triggers_resync(
    redis_url: str, namespace: str, raw_redis: redis.Redis
) -> None:
    async with (
        PauseWatcher(redis_url, namespace=namespace) as w,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        await c.pause("a")
        await until(lambda: w.is_paused("a"))
        # simulate a lost message: resume behind the channel's back (state and tombstone)
        raw_redis.hdel(f"pausesvc:{{{namespace}}}:paused", "a")
        rev = raw_redis.incr(f"pausesvc:{{{namespace}}}:rev")
        raw_redis.zadd(f"pausesvc:{{{namespace}}}:tombstones", {"a": rev})
        await c.pause("b")  # its event skips a revision
        await until(lambda: w.is_paused("b") and not w.is_paused("a"))
        assert w.stats.gaps >= 1


async def test_redis_restart_with_aof_keeps_pause_and_waiters_wake(
    fresh_redis: EmbeddedRedis, namespace: str
) -> None:
    fresh_redis.stop()
    server = EmbeddedRedis(port=fresh_redis.port, appendonly=True, dir=fresh_redis.dir)
    server.start()
    try:
        url = server.url
        async with PauseWatcher(url, namespace=namespace, max_backoff=0.2) as w:
            with PauseClient(url, namespace=namespace) as c:
                c.pause("a")
                await until(lambda: w.is_paused("a"))
                waiter = asyncio.create_task(w.wait_unpaused("a", 30))
                server.stop(kill=True)
                await until(lambda: not w.in_sync)
                assert w.is_paused("a")  # fail closed while Redis is gone
                assert w.staleness > 0
                server.start()
                await until(lambda: w.in_sync, timeout=10)
                assert w.is_paused("a") and w.stats.data_losses == 0  # AOF kept it
                c2 = PauseClient(url, namespace=namespace)
                c2.resume("a")
                c2.close()
                assert await waiter is True
    finally:
        server.stop()


async def test_redis_restart_without_persistence_holds_known_pauses(
    fresh_redis: EmbeddedRedis, namespace: str
) -> None:
    url = fresh_redis.url
    async with PauseWatcher(url, namespace=namespace, max_backoff=0.2) as w:
        with PauseClient(url, namespace=namespace) as c:
            c.pause("a", holder="trainer")
            c.pause("b")
            c.resume("b")
        await until(lambda: w.is_paused("a") and w.revision == 3)
        waiter = asyncio.create_task(w.wait_unpaused("a", 30))
        fresh_redis.stop(kill=True)
        fresh_redis.start()  # empty: the revision goes backwards
        await until(lambda: w.in_sync and w.stats.data_losses == 1, timeout=10)
        assert w.is_paused("a"), "a pause must never be released silently by a data loss"
        assert "a" in w.orphans
        await asyncio.sleep(0.2)
        assert not waiter.done()
        # a controller re-asserts: the resume is announced even though Redis forgot the pause
        with PauseClient(url, namespace=namespace) as c:
            c.resume("a", holder="trainer")
        assert await asyncio.wait_for(waiter, 5) is True
        assert not w.orphans


async def test_release_policy_trusts_empty_state(fresh_redis: EmbeddedRedis, namespace: str) -> None:
    url = fresh_redis.url
    async with PauseWatcher(url, namespace=namespace, max_backoff=0.2, on_data_loss="release") as w:
        with PauseClient(url, namespace=namespace) as c:
            c.pause("a")
        await until(lambda: w.is_paused("a"))
        fresh_redis.stop(kill=True)
        fresh_redis.start()
        await until(lambda: w.in_sync and w.stats.data_losses == 1, timeout=10)
        assert not w.is_paused("a")


async def test_start_fails_clearly_when_redis_is_down(namespace: str) -> None:
    from pausesvc import RedisUnavailableError
    from pausesvc.devtools.embedded import free_port

    w = PauseWatcher(f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)
    with pytest.raises(RedisUnavailableError):
        await w.start(timeout=0.5)
    assert not w.in_sync and not w.synced_once
    assert w.is_paused("a") is True  # never read: unknown counts as paused (fail closed)
    # a waiter before the first sync counts the state as unknown = paused
    assert await w.wait_unpaused("a", timeout=0.2) is False
    await w.aclose()
    await w.aclose()


async def test_orphan_released_by_a_resume_the_watcher_missed(
    fresh_redis: EmbeddedRedis,
    namespace: str,
) -> None:
    """After a data loss the watcher holds 'a'; a controller's resume lands while the watcher's
    subscription is down: the tombstone in Redis releases the orphan at the next resync."""
    url = fresh_redis.url
    async with PauseWatcher(url, namespace=namespace, max_backoff=0.2) as w:
        with PauseClient(url, namespace=namespace) as c:
            c.pause("a")
        await until(lambda: w.is_paused("a"))
        fresh_redis.stop(kill=True)
        fresh_redis.start()
        await until(lambda: w.in_sync and "a" in w.orphans, timeout=10)
        r = redis.Redis.from_url(url)
        r.client_kill_filter(_type="pubsub")  # the resume's event will be missed
        with PauseClient(url, namespace=namespace) as c:
            c.resume("a")
        r.close()
        assert await w.wait_unpaused("a", timeout=10) is True
        assert not w.orphans


async def test_a_standalone_subscription_is_read_blocking_with_no_timer_per_read(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One connection's subscription is read the way a bare subscriber reads it: a blocking
    ``get_message(timeout=None)``, its liveness from the keepalive's PONGs. Only a Redis
    Cluster's per-node subscriptions are polled. (redis-py 8.2 gave the standalone asyncio
    PubSub a ``get_sharded_message`` alias, which the watcher took for a cluster's: it then
    polled with a timer per read and PINGed from the reader, ~25% more CPU per event.)"""
    from redis.asyncio.client import PubSub

    from pausesvc._redis import is_cluster_pubsub

    timeouts: list[float | None] = []
    armed = False  # the subscription's confirmation is read with a timeout, by design
    real = PubSub.get_message

    async def recording(
        self: PubSub, ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
    ) -> Any:
        if armed:
            timeouts.append(timeout)
        return await real(self, ignore_subscribe_messages, timeout)

    monkeypatch.setattr(PubSub, "get_message", recording)  # before the reader binds it
    async with (
        PauseWatcher(redis_url, namespace=namespace, health_check_interval=0.5) as w,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        assert await w.wait_synced(10)
        assert not is_cluster_pubsub(w._redis.pubsub())
        await asyncio.sleep(0.3)  # the reader is in its loop: its next read is a listening one
        armed = True
        for _ in range(10):
            g = await c.pause("a")
            await until(lambda: w.is_paused("a"))
            await c.resume("a", token=g.token)
            await until(lambda: not w.is_paused("a"))
        await asyncio.sleep(1.0)  # a few keepalive rounds: still no timed read, still in sync
        assert timeouts and set(timeouts) == {None}, sorted(set(map(str, timeouts)))
        assert w.in_sync and w.stats.reconnects == 0 and w.stats.events == 20
