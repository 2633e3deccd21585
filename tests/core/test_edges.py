"""The promises at the edges (issue 14): data loss, failover, fencing tokens, leases, reaping.

Every test runs against a real redis-server; the ones that lose data restart a private one
without persistence (``fresh_redis``), exactly as a Redis restart without AOF loses it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from _wait import until

from pausesvc import (
    AsyncPauseClient,
    DrainTimeoutError,
    EmbeddedRedis,
    LeaseLostError,
    PauseClient,
    PauseWatcher,
    Settings,
    StaleTokenError,
    shared_watcher,
)
from pausesvc.client._async import release_watcher


@pytest.fixture
def client(redis_url: str, namespace: str) -> Iterator[PauseClient]:
    with PauseClient(redis_url, namespace=namespace) as c:
        yield c


def _restart_empty(server: EmbeddedRedis) -> None:
    """A Redis restart that lost everything (no AOF): same port, empty dataset."""
    server.stop(kill=True)
    server.start()


# -- 4. fencing tokens are unique across incarnations ----------------------------------------------
def test_a_token_from_before_a_data_loss_never_releases_the_new_pause(
    fresh_redis: EmbeddedRedis, namespace: str
) -> None:
    with PauseClient(fresh_redis.url, namespace=namespace) as old:
        g_old = old.pause("a", holder="trainer")
    _restart_empty(fresh_redis)
    with PauseClient(fresh_redis.url, namespace=namespace) as new:
        g_new = new.pause("a", holder="trainer")
        assert g_new.revision == g_old.revision  # revisions repeat after the loss...
        assert g_new.token != g_old.token  # ...tokens do not
        with pytest.raises(StaleTokenError):
            new.resume("a", holder="trainer", token=g_old.token)
        with pytest.raises(StaleTokenError):
            new.renew("a", "trainer", 10, token=g_old.token)
        assert new.is_paused("a")
        new.resume("a", holder="trainer", token=g_new.token)
        assert not new.is_paused("a")


def test_tokens_are_opaque_strings_the_cli_round_trips(client: PauseClient) -> None:
    g = client.pause("a", holder="t")
    assert isinstance(g.token, str) and g.token.split("-")[0] == str(g.revision)
    assert client.get("a").holders["t"].token == g.token  # type: ignore[union-attr]


# -- 3. data loss and failover never release a pause -------------------------------------------------
async def test_restart_without_aof_orphans_the_pause_and_the_next_pause_is_new(
    fresh_redis: EmbeddedRedis, namespace: str
) -> None:
    async with (
        PauseWatcher(fresh_redis.url, namespace=namespace, max_backoff=0.2) as w,
        AsyncPauseClient(fresh_redis.url, namespace=namespace) as c,
    ):
        await c.pause("a", holder="ctl")
        await until(lambda: w.is_paused("a"))
        epoch = w.epoch
        _restart_empty(fresh_redis)
        await until(lambda: w.stats.data_losses >= 1 and w.in_sync, 10)
        assert w.is_paused("a") and "a" in w.orphans  # never released silently
        # the next pause of another adapter, at the revisions of the old incarnation, is seen
        await c.pause("b", holder="ctl")
        await until(lambda: w.is_paused("b"))
        assert w.epoch != epoch
        # a controller's resume re-asserts the orphan
        await c.resume("a", holder="ctl")
        await until(lambda: not w.is_paused("a"))


@pytest.mark.parametrize("noticed", ["before", "by-the-resume"])
async def test_after_a_data_loss_only_the_orphans_own_token_releases_it(
    fresh_redis: EmbeddedRedis, namespace: str, noticed: str
) -> None:
    """Redis lost controller 2's pause; controller 1, whose lease ran out before, still has
    its old token. Redis cannot check a token it lost, the views can: the stale token's resume
    releases nothing (nor does another holder's token), the current holder's token does -
    whether the view noticed the loss before the resume or only through the resume's event."""
    url = fresh_redis.url
    async with PauseWatcher(url, namespace=namespace, max_backoff=0.2, resync_interval=30) as w:
        with PauseClient(url, namespace=namespace) as c:
            stale = c.pause("a", holder="trainer", ttl=0.3)
            await asyncio.sleep(0.5)
            c.reap()
            current = c.pause("a", holder="trainer")
            c.pause("b", holder="trainer")
        await until(lambda: w.is_paused("a") and w.is_paused("b"))
        r = redis.Redis.from_url(url)
        r.flushall()  # the loss: no restart, nothing the watcher sees until the next change
        r.close()
        with PauseClient(url, namespace=namespace) as c:
            if noticed == "before":
                c.pause("c", holder="other")
                await until(lambda: w.stats.data_losses >= 1 and "a" in w.orphans, 10)
            c.resume("a", holder="trainer", token=stale.token)  # the zombie controller
            c.resume("a", holder="other", token=current.token)  # the right token, not its holder
            c.resume("b", holder="trainer", token=stale.token)
            c.pause("d", holder="other")  # an event after them: the view has seen them
            await until(lambda: w.is_paused("d"), 10)
            assert w.is_paused("a") and "a" in w.orphans and w.is_paused("b")
            c.resume("a", holder="trainer", token=current.token)  # the current holder
            await until(lambda: not w.is_paused("a"), 10)
            assert w.is_paused("b") and "b" in w.orphans


async def test_the_blocking_wait_holds_a_pause_redis_lost_and_survives_a_restart(
    fresh_redis: EmbeddedRedis, namespace: str
) -> None:
    """``PauseClient.wait_unpaused`` (``pausesvc wait``) follows the state as the watcher
    does: a FLUSHALL or a restart without AOF does not end the wait (the pause is an orphan),
    a dropped connection is reconnected, and the controller's resume ends it."""
    url = fresh_redis.url
    with PauseClient(url, namespace=namespace) as c:
        g = c.pause("a", holder="ctl")
    done: list[bool] = []

    def wait() -> None:
        with PauseClient(url, namespace=namespace) as w:
            done.append(w.wait_unpaused("a", timeout=60))

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    await asyncio.sleep(0.5)
    r = redis.Redis.from_url(url)
    r.flushall()
    r.client_kill_filter(_type="pubsub")
    r.close()
    await asyncio.sleep(1.5)
    _restart_empty(fresh_redis)
    await asyncio.sleep(2.5)  # reconnected and re-read (the loss is seen now)
    assert t.is_alive() and not done, "the wait ended on a data loss or a lost connection"
    with PauseClient(url, namespace=namespace) as c:
        c.resume("a", holder="ctl", token=g.token)
    t.join(10)
    assert done == [True]


async def test_wait_unpaused_after_a_data_loss_does_not_wait_for_the_lost_revision(
    fresh_redis: EmbeddedRedis, namespace: str
) -> None:
    async with AsyncPauseClient(fresh_redis.url, namespace=namespace) as c:
        w = await c.watcher()
        for _ in range(20):  # this client's last write is at revision 40
            await c.pause("x")
            await c.resume("x")
        assert await c.wait_unpaused("y", timeout=5)
        _restart_empty(fresh_redis)
        await until(lambda: w.stats.data_losses >= 1 and w.in_sync, 10)
        t0 = time.monotonic()
        assert await c.wait_unpaused("y", timeout=5) is True
        assert time.monotonic() - t0 < 1.0


async def test_failover_to_a_lagging_replica_never_releases_a_pause(
    redis_url: str, namespace: str, raw_redis: redis.Redis
) -> None:
    """The promoted replica has the same epoch but lacks the newest writes (asynchronous
    replication); a controller's writes then bring the revision back up. The pause the watcher
    knew must stay held (an orphan), however high the revision climbs."""
    k = f"pausesvc:{{{namespace}}}"
    async with (
        PauseWatcher(redis_url, namespace=namespace, resync_interval=0.3) as w,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        await c.pause("base-work", holder="ctl")
        before = {key: raw_redis.dump(key) for key in (f"{k}:paused", f"{k}:rev", f"{k}:epoch")}
        await c.pause("a", holder="ctl")  # the write the replica never got
        await until(lambda: w.is_paused("a"))
        # the failover: the dataset goes back to the replica's copy (same epoch)
        for key, value in before.items():
            raw_redis.restore(key, 0, value, replace=True)  # type: ignore[arg-type]
        for i in range(5):  # controller writes overtake the lost revision
            await c.pause(f"other-{i}", holder="ctl")
        await asyncio.sleep(1.0)  # several periodic resyncs
        assert w.is_paused("a") and "a" in w.orphans
        assert w.is_paused("other-4")


async def test_an_orphaned_lease_ends_when_the_lease_would_have_ended(
    fresh_redis: EmbeddedRedis, namespace: str
) -> None:
    async with (
        PauseWatcher(fresh_redis.url, namespace=namespace, max_backoff=0.2) as w,
        AsyncPauseClient(fresh_redis.url, namespace=namespace) as c,
    ):
        await c.pause("a", holder="ctl", ttl=2.0)
        t0 = time.monotonic()
        await until(lambda: w.is_paused("a"))
        _restart_empty(fresh_redis)
        await until(lambda: "a" in w.orphans, 10)
        # nobody can renew a hold Redis lost (renew answers not_holder): it ends at its expiry
        assert await w.wait_unpaused("a", timeout=10)
        assert time.monotonic() - t0 >= 1.9


# -- 5. smaller breaks -------------------------------------------------------------------------------
async def test_sharded_pubsub_on_is_honoured_by_the_shared_watcher(redis_url: str, namespace: str) -> None:
    s = Settings(redis_url=redis_url, namespace=namespace, sharded_pubsub="on")
    async with AsyncPauseClient(settings=s) as c:
        assert c.sharded
        w = await shared_watcher(redis_url, namespace, settings=s)
        try:
            await w.wait_synced(5)
            t0 = time.monotonic()
            await c.pause("a")
            await until(lambda: w.is_paused("a"), 2.0)
            assert time.monotonic() - t0 < 2.0 and w.stats.events >= 1
        finally:
            await release_watcher(redis_url, namespace)


async def test_paused_with_ttl_cancels_the_block_when_the_lease_is_lost(
    redis_url: str, namespace: str
) -> None:
    async with (
        AsyncPauseClient(redis_url, namespace=namespace) as c,
        AsyncPauseClient(redis_url, namespace=namespace) as operator,
    ):
        ran = 0.0
        t0 = time.monotonic()
        with pytest.raises(LeaseLostError):
            async with c.paused("a", holder="trainer", ttl=0.6):
                await operator.resume("a", force=True)  # the hold is taken away
                await asyncio.sleep(10)
        ran = time.monotonic() - t0
        assert ran < 2.0
        assert not await c.is_paused("a")


def test_paused_sync_raises_when_the_lease_was_lost(redis_url: str, namespace: str) -> None:
    with PauseClient(redis_url, namespace=namespace) as c:
        with pytest.raises(LeaseLostError), c.paused("a", holder="trainer", ttl=0.3):
            c.resume("a", force=True)
            time.sleep(0.6)
        assert not c.is_paused("a")


async def test_paused_does_not_leak_a_hold_when_the_drain_fails_or_is_cancelled(
    redis_url: str, namespace: str
) -> None:
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        await c._heartbeat("silent", {"url": "http://silent"})  # live, never acknowledges
        with pytest.raises(DrainTimeoutError):
            async with c.paused("a", holder="t", drain=True, timeout=0.3):
                pytest.fail("the block must not run")
        assert not await c.is_paused("a")

        async def enter() -> None:
            async with c.paused("b", holder="t", drain=True, timeout=30):
                pytest.fail("the block must not run")

        task = asyncio.create_task(enter())
        await asyncio.sleep(0.5)
        assert await c.is_paused("b")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await c.is_paused("b")
    with PauseClient(redis_url, namespace=namespace) as sc:
        with pytest.raises(DrainTimeoutError), sc.paused("c", holder="t", drain=True, timeout=0.3):
            pytest.fail("the block must not run")
        assert not sc.is_paused("c")


async def test_an_expired_hold_nobody_reaped_is_reaped_by_the_next_watcher(
    redis_url: str, namespace: str, raw_redis: redis.Redis
) -> None:
    k = f"pausesvc:{{{namespace}}}"
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        await c.pause("a", ttl=0.2)
    await asyncio.sleep(0.4)
    rev = int(raw_redis.get(f"{k}:rev") or 0)
    assert raw_redis.hexists(f"{k}:paused", "a")  # the ghost: no watcher was in sync
    async with PauseWatcher(redis_url, namespace=namespace) as w:
        assert not w.is_paused("a")
        await until(lambda: not raw_redis.hexists(f"{k}:paused", "a"))
        assert int(raw_redis.get(f"{k}:rev") or 0) == rev + 1  # one 'expire' change
        assert raw_redis.zscore(f"{k}:tombstones", "a") == rev + 1


async def test_a_lease_expiry_wake_up_never_runs_ahead_of_redis(redis_url: str, namespace: str) -> None:
    async with (
        AsyncPauseClient(redis_url, namespace=namespace) as c,
        AsyncPauseClient(redis_url, namespace=namespace) as reader,
    ):
        for i in range(8):
            await c.pause(f"l{i}", ttl=0.15)
            assert await c.wait_unpaused(f"l{i}", timeout=5)
            # what woke the waiter must be what Redis's own readers see at once
            assert not await reader.is_paused(f"l{i}")
            assert f"l{i}" not in (await reader.snapshot()).paused


def test_tombstones_are_bounded(client: PauseClient, raw_redis: redis.Redis, namespace: str) -> None:
    k = f"pausesvc:{{{namespace}}}:tombstones"
    pipe_client = client
    for i in range(10_050):
        pipe_client.resume(f"n{i}")
    assert raw_redis.zcard(k) == 10_000
    assert raw_redis.zscore(k, "n10049") is not None and raw_redis.zscore(k, "n0") is None


# -- one rule for applying events (the watcher and the blocking events() share it) -------------
@pytest.mark.parametrize(
    ("ev_rev", "ev_epoch", "rev", "epoch", "since", "verdict"),
    [
        (6, "e1", 5, "e1", 0.1, "apply"),
        (8, "e1", 5, "e1", 0.1, "gap"),
        (5, "e1", 5, "e1", 0.1, "skip"),  # already in the snapshot
        (3, "e1", 5, "e1", 0.1, "skip"),  # buffered before the snapshot
        (3, "e1", 5, "e1", 5.0, "revision-behind"),  # long after it: a failover went back
        (6, "e2", 5, "e1", 0.1, "epoch-changed"),
        (1, "e2", 5, "e1", 0.1, "epoch-changed"),  # a new incarnation's revision 1
        (1, "e1", 0, None, 0.1, "apply"),  # the first write ever
        (0, "e1", 0, None, 0.1, "epoch-unknown"),
    ],
)
def test_classify_event(
    ev_rev: int, ev_epoch: str, rev: int, epoch: str | None, since: float, verdict: str
) -> None:
    from pausesvc.protocol.models import PauseEvent
    from pausesvc.protocol.view import classify_event

    ev = PauseEvent(ev_rev, ev_epoch, "a", "pause", True, "h", None, 0.0)
    assert classify_event(ev, rev, epoch, since) == verdict


# -- a block must not act under a lease it lost ----------------------------------------------------
async def test_a_block_that_lost_its_lease_stops_even_inside_redis_calls(
    redis_url: str, namespace: str
) -> None:
    """An operator forces the resume: the next renewal is refused and the block - which awaits
    nothing but pausesvc writes, whose cancellation redis-py may swallow mid-command - ends
    with LeaseLostError at once, and writes nothing more."""
    async with (
        AsyncPauseClient(redis_url, namespace=namespace) as c,
        AsyncPauseClient(redis_url, namespace=namespace) as op,
    ):
        writes_after: list[float] = []
        t0 = time.monotonic()
        with pytest.raises(LeaseLostError):
            async with c.paused("a", holder="trainer", ttl=0.6):
                await op.resume("a", force=True)
                i = 0
                while time.monotonic() - t0 < 5:
                    i += 1
                    await c.set_version("a", f"v{i}", f"/w/{i}")
                    writes_after.append(time.monotonic())
        ended = time.monotonic()
        assert ended - t0 < 2.0, "the block went on long after the lease was lost"
        assert not await c.get("a")
        last = (await c.get_version("a")).version  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        assert (await c.get_version("a")).version == last  # type: ignore[union-attr]  # no more writes


async def test_a_block_woken_past_its_lease_cannot_write_and_can_ask(redis_url: str, namespace: str) -> None:
    """A process stopped (SIGSTOP, a long GC - here a blocking sleep) past its lease: its next
    pausesvc write is refused before it is sent, and ``check_lease()`` says so for any other
    step, even before the renewer ran."""
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        with pytest.raises(LeaseLostError):
            async with c.paused("a", holder="trainer", ttl=0.3):
                c.check_lease()  # held: fine
                time.sleep(0.5)  # noqa: ASYNC251 - the stopped process: no task runs meanwhile
                with pytest.raises(LeaseLostError):
                    c.check_lease()
                await c.set_version("a", "v1", "/w")  # refused: LeaseLostError
        assert await c.get_version("a") is None


def test_the_blocking_block_that_lost_its_lease_cannot_write(client: PauseClient, redis_url: str) -> None:
    """A blocking block cannot be interrupted, but once its renewer learned the lease is lost
    (here: an operator forced the resume), its next pausesvc write is refused before it is
    sent, and ``check_lease()`` raises."""
    with pytest.raises(LeaseLostError), client.paused("a", holder="trainer", ttl=0.3):
        client.check_lease()
        with PauseClient(redis_url, namespace=client.namespace) as op:
            op.resume("a", force=True)
        time.sleep(0.4)  # a renewal is refused meanwhile
        with pytest.raises(LeaseLostError):
            client.check_lease()
        client.set_version("a", "v1", "/w")
    assert client.get_version("a") is None


@pytest.mark.parametrize("kind", ["async", "blocking"])
async def test_a_nested_block_of_the_same_holder_leaves_the_outer_hold(
    redis_url: str, namespace: str, kind: str
) -> None:
    """The inner ``paused()`` joined the hold (created False, the same token): on its exit the
    hold is the outer block's, and stays."""
    if kind == "async":
        async with AsyncPauseClient(redis_url, namespace=namespace) as c:
            async with c.paused("a", holder="trainer") as outer:
                async with c.paused("a", holder="trainer") as inner:
                    assert not inner.created and inner.token == outer.token
                assert await c.get("a") is not None
            assert await c.get("a") is None
        return
    with PauseClient(redis_url, namespace=namespace) as b:
        with b.paused("a", holder="trainer") as outer:
            with b.paused("a", holder="trainer") as inner:
                assert not inner.created and inner.token == outer.token
            assert b.get("a") is not None
        assert b.get("a") is None


async def test_the_drain_barrier_rereads_the_registry_before_it_returns(
    redis_url: str, namespace: str
) -> None:
    """The last expected acknowledgement arrives - but a replica registered meanwhile: the
    barrier reads the registry again (the key is the truth) and waits for that one too."""
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        await c._heartbeat("r1", {"url": "http://r1"})

        async def replicas() -> None:
            while (st := await c.get("a")) is None:  # noqa: ASYNC110 - polls Redis itself
                await asyncio.sleep(0.01)
            await c._heartbeat("late", {"url": "http://late"})  # registers, never acknowledges
            await c._ack("r1", "a", st.revision, [], epoch=await _epoch(c), tokens=sorted(st.tokens))

        helper = asyncio.create_task(replicas())
        with pytest.raises(DrainTimeoutError) as err:
            await c.pause("a", holder="t", drain=True, timeout=1.0)
        await helper
        assert err.value.missing == {"late": "http://late"} or "late" in str(err.value)


async def _epoch(c: AsyncPauseClient) -> str | None:
    return (await c.snapshot()).epoch
