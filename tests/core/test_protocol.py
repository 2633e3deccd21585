"""The Redis protocol through the clients, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis

import pausesvc
from pausesvc import (
    AsyncPauseClient,
    InvalidInputError,
    InvalidNameError,
    NotHolderError,
    PauseClient,
    StaleTokenError,
)


@pytest.fixture
def client(redis_url: str, namespace: str) -> PauseClient:
    with PauseClient(redis_url, namespace=namespace) as c:
        yield c


def _events(ps: redis.client.PubSub, n: int) -> list[dict[str, Any]]:
    """The next ``n`` events of a subscription, decoded (each within 2 s)."""
    events: list[dict[str, Any]] = []
    while len(events) < n:
        m = ps.get_message(timeout=2)
        assert m is not None, f"only {len(events)} events"
        if m["type"] == "message":
            events.append(json.loads(m["data"]))
    return events


def test_pause_resume_roundtrip_and_keys_readable(
    client: PauseClient, raw_redis: redis.Redis, namespace: str
) -> None:
    g = client.pause("lora-a", holder="trainer", reason="swap", ttl=30)
    assert g.created and g.token.split("-")[0] == str(g.revision)
    # plain redis-cli readable state
    raw = raw_redis.hget(f"pausesvc:{{{namespace}}}:paused", "lora-a")
    data = json.loads(raw)
    assert data["holders"]["trainer"]["token"] == g.token
    assert data["holders"]["trainer"]["reason"] == "swap"
    assert raw_redis.get(f"pausesvc:{{{namespace}}}:rev") == str(g.revision)
    assert raw_redis.zscore(f"pausesvc:{{{namespace}}}:leases", "lora-a trainer") is not None
    st = client.get("lora-a")
    assert st is not None and st.paused and set(st.holders) == {"trainer"}
    assert st.expires_at is not None and 29 < st.expires_at - time.time() < 31
    res = client.resume("lora-a", holder="trainer", token=g.token)
    assert res.released and not res.paused
    assert client.get("lora-a") is None
    assert raw_redis.zcard(f"pausesvc:{{{namespace}}}:leases") == 0


def test_every_change_bumps_revision_and_publishes_one_event(
    client: PauseClient, raw_redis: redis.Redis, namespace: str
) -> None:
    ps = raw_redis.pubsub()
    ps.subscribe(f"pausesvc:{{{namespace}}}:events")
    assert ps.get_message(timeout=2)["type"] == "subscribe"
    g = client.pause("a")
    client.pause("a", holder="h2")
    client.renew("a", "h2", 10)
    client.resume("a")
    client.resume("a", holder="h2")
    events = _events(ps, 5)
    assert [e["rev"] for e in events] == list(range(g.revision, g.revision + 5))
    assert [e["op"] for e in events] == ["pause", "pause", "renew", "release", "resume"]
    assert [e["paused"] for e in events] == [True, True, True, True, False]
    assert all(e["name"] == "a" and e["epoch"] == events[0]["epoch"] for e in events)
    assert "state" not in events[-1] and events[0]["state"]["holders"]["default"]["token"] == g.token
    ps.close()


def test_each_event_carries_the_state_as_stored_and_replied(
    client: PauseClient, raw_redis: redis.Redis, namespace: str
) -> None:
    """The scripts encode a state once: the stored JSON, the event's "state" and the reply's
    state are the same, for every op that leaves the adapter paused (pause, a second holder,
    renew, a pause again with a new reason, a partial release, a lease expiry)."""
    ps = raw_redis.pubsub()
    ps.subscribe(f"pausesvc:{{{namespace}}}:events")
    assert ps.get_message(timeout=2)["type"] == "subscribe"
    key = f"pausesvc:{{{namespace}}}:paused"
    replies = [client.pause("a", holder="h1").state]
    stored = [raw_redis.hget(key, "a")]
    replies.append(client.pause("a", holder="h2", ttl=60).state)
    stored.append(raw_redis.hget(key, "a"))
    replies.append(client.renew("a", "h2", 30))
    stored.append(raw_redis.hget(key, "a"))
    replies.append(client.pause("a", holder="h1", reason='swap \u00e9 "quoted"').state)
    stored.append(raw_redis.hget(key, "a"))
    replies.append(client.resume("a", holder="h1").state)
    stored.append(raw_redis.hget(key, "a"))
    client.pause("a", holder="h3", ttl=0.2)
    stored.append(raw_redis.hget(key, "a"))
    time.sleep(0.3)
    client.reap()  # h3's lease ran out: one 'expire' change, h2 still holds
    stored.append(raw_redis.hget(key, "a"))
    events = _events(ps, 7)
    ps.close()
    assert [e["op"] for e in events] == ["pause", "pause", "renew", "renew", "release", "pause", "expire"]
    for ev, raw in zip(events, stored, strict=True):
        assert ev["paused"] is True and ev["state"] == json.loads(raw), ev["op"]
        assert set(ev) >= {"v", "rev", "epoch", "name", "op", "holder", "ts", "state"}
    for st, ev in zip(replies, events, strict=False):
        assert st is not None and st.revision == ev["rev"] and set(st.holders) == set(ev["state"]["holders"])
    assert events[3]["state"]["holders"]["h1"]["reason"] == 'swap \u00e9 "quoted"'


def test_holders_keep_adapter_paused_until_last_release(client: PauseClient) -> None:
    g1 = client.pause("a", holder="one")
    g2 = client.pause("a", holder="two")
    assert g2.token > g1.token
    r = client.resume("a", holder="one")
    assert r.released and r.paused and r.state is not None and set(r.state.holders) == {"two"}
    assert client.is_paused("a")
    r = client.resume("a", holder="two", token=g2.token)
    assert r.released and not r.paused
    assert not client.is_paused("a")


def test_same_holder_pause_is_idempotent(client: PauseClient) -> None:
    g1 = client.pause("a", holder="h")
    g2 = client.pause("a", holder="h")
    assert g2.token == g1.token and not g2.created and g2.revision == g1.revision
    assert len(client.get("a").holders) == 1  # type: ignore[union-attr]
    client.resume("a", holder="h")
    assert not client.is_paused("a")


def test_stale_token_is_refused_and_changes_nothing(client: PauseClient) -> None:
    old = client.pause("a")
    client.resume("a", token=old.token)
    new = client.pause("a")  # a newer pause by the same (default) holder
    with pytest.raises(StaleTokenError) as ei:
        client.resume("a", token=old.token)
    assert ei.value.presented == old.token and ei.value.current == new.token
    assert client.get("a").token == new.token  # type: ignore[union-attr]
    with pytest.raises(StaleTokenError):
        client.renew("a", None, 5, token=old.token)
    client.resume("a", token=new.token)


def test_not_holder_is_refused(client: PauseClient) -> None:
    client.pause("a", holder="owner")
    with pytest.raises(NotHolderError) as ei:
        client.resume("a", holder="intruder")
    assert ei.value.holders == ["owner"]
    assert client.is_paused("a")
    with pytest.raises(NotHolderError):
        client.renew("a", "intruder", 5)
    assert client.resume("a", holder="owner").released


def test_force_resume_clears_every_hold(client: PauseClient) -> None:
    client.pause("a", holder="x", ttl=60)
    client.pause("a", holder="y")
    r = client.resume("a", holder="ops", force=True)
    assert r.released and not r.paused
    assert client.get("a") is None


def test_resume_of_unpaused_adapter_is_harmless(client: PauseClient) -> None:
    r = client.resume("never-paused")
    assert not r.released and not r.paused


def test_lease_expiry_resumes_and_is_renewable(client: PauseClient) -> None:
    g = client.pause("a", holder="ctl", ttl=0.3)
    time.sleep(0.15)
    client.renew("a", "ctl", 0.6, token=g.token)
    time.sleep(0.3)
    assert client.is_paused("a")  # renewed
    time.sleep(0.45)
    assert not client.is_paused("a")  # readers never see an expired hold as paused
    assert client.get("a") is None
    with pytest.raises(NotHolderError):
        client.renew("a", "ctl", 5)  # an expired hold cannot be renewed
    assert client.reap() == 0  # renew already reaped it


def test_reap_publishes_expire(client: PauseClient, raw_redis: redis.Redis, namespace: str) -> None:
    client.pause("a", holder="ctl", ttl=0.05)
    client.pause("a", holder="keeper")
    time.sleep(0.1)
    ps = raw_redis.pubsub()
    ps.subscribe(f"pausesvc:{{{namespace}}}:events")
    ps.get_message(timeout=2)
    assert client.reap() == 1
    m = ps.get_message(timeout=2)
    ev = json.loads(m["data"])
    assert ev["op"] == "expire" and ev["holder"] == "ctl" and ev["paused"] is True
    assert client.reap() == 0
    ps.close()


def test_global_pause(client: PauseClient) -> None:
    client.pause("*", holder="ops")
    assert client.is_paused("anything") and client.is_paused("base-model")
    client.resume("*", holder="ops")
    assert not client.is_paused("anything")


def test_snapshot_one_round_trip(client: PauseClient) -> None:
    for n in ("a", "b", "c"):
        client.pause(n)
    snap = client.snapshot()
    assert set(snap.paused) == {"a", "b", "c"} and snap.revision >= 3 and snap.epoch


def test_namespaces_are_isolated(redis_url: str, namespace: str) -> None:
    with (
        PauseClient(redis_url, namespace=namespace + "x") as a,
        PauseClient(redis_url, namespace=namespace + "y") as b,
    ):
        a.pause("lora")
        assert a.is_paused("lora") and not b.is_paused("lora")


@pytest.mark.parametrize("bad", ["", "a b", "tab\there", "nl\n", "x" * 257, "ctl\x00", "nb\u2028"])
def test_invalid_names_raise_typed_value_error_and_change_nothing(client: PauseClient, bad: str) -> None:
    before = client.snapshot().revision
    with pytest.raises(InvalidNameError) as ei:
        client.pause(bad)
    assert isinstance(ei.value, ValueError)
    with pytest.raises(InvalidNameError):
        client.pause("ok", holder=bad)
    with pytest.raises(InvalidNameError):
        client.resume(bad)
    with pytest.raises(InvalidNameError):
        client.wait_unpaused(bad, timeout=0)
    assert client.snapshot().revision == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": 0},
        {"ttl": -1},
        {"ttl": float("nan")},
        {"ttl": "5"},
        {"ttl": 10**9},
        {"reason": 5},
        {"reason": "x" * 5000},
        {"timeout": -1},
    ],
)
def test_invalid_arguments(client: PauseClient, kwargs: dict[str, object]) -> None:
    before = client.snapshot().revision
    with pytest.raises(InvalidInputError):
        client.pause("a", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        client.resume("a", token=0)
    with pytest.raises(InvalidInputError):
        client.resume("a", token="five")
    assert client.snapshot().revision == before


def test_no_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAUSESVC_REDIS_URL", raising=False)
    with pytest.raises(InvalidInputError, match="PAUSESVC_REDIS_URL"):
        PauseClient()
    with pytest.raises(InvalidInputError, match="redis_url"):
        PauseClient("http://nope")


def test_paused_context_manager_releases_on_error(client: PauseClient) -> None:
    with pytest.raises(RuntimeError), client.paused("a", holder="cm"):
        assert client.is_paused("a")
        raise RuntimeError("boom")
    assert not client.is_paused("a")


async def test_async_paused_context_manager_renews_and_releases_on_cancel(
    redis_url: str, namespace: str
) -> None:
    import asyncio

    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        entered = asyncio.Event()

        async def body() -> None:
            async with c.paused("a", holder="cm", ttl=0.3):
                entered.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(body())
        await entered.wait()
        await asyncio.sleep(0.6)  # two lease lengths: kept alive by renewals
        assert await c.get("a") is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await c.get("a") is None


def test_close_is_idempotent(redis_url: str) -> None:
    c = PauseClient(redis_url)
    c.close()
    c.close()


def test_unix_socket_url(tmp_path, namespace: str) -> None:  # type: ignore[no-untyped-def]
    from pausesvc import EmbeddedRedis

    sock = tmp_path / "r.sock"
    with EmbeddedRedis(extra_args=["--unixsocket", str(sock), "--unixsocketperm", "700"]):
        with PauseClient(f"unix://{sock}", namespace=namespace) as c:
            c.pause("a")
            assert c.is_paused("a")


def test_sync_wait_wakes_on_lease_expiry(client: PauseClient) -> None:
    client.pause("a", ttl=0.4)
    t0 = time.monotonic()
    assert client.wait_unpaused("a", timeout=5) is True
    assert 0.2 < time.monotonic() - t0 < 1.5


def test_sync_wait_wakes_on_resume_from_another_thread(
    client: PauseClient, redis_url: str, namespace: str
) -> None:
    import threading

    client.pause("a")

    def later() -> None:
        time.sleep(0.3)
        with PauseClient(redis_url, namespace=namespace) as other:
            other.resume("a")

    threading.Thread(target=later).start()
    t0 = time.monotonic()
    assert client.wait_unpaused("a", timeout=10) is True
    assert time.monotonic() - t0 < 2


async def test_async_events_iterator(redis_url: str, namespace: str) -> None:
    import asyncio

    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        w = await c.watcher()
        await w.wait_synced(5)
        got = []

        async def consume() -> None:
            async for ev in c.events():
                got.append((ev.op, ev.name, ev.paused))
                if len(got) == 3:
                    return

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        await c.pause("e1")
        await c.pause("e1", holder="b")
        await c.resume("e1", force=True)
        await asyncio.wait_for(task, 5)
        assert got == [("pause", "e1", True), ("pause", "e1", True), ("force", "e1", False)]


def test_drain_without_replicas_returns_at_once(client: PauseClient) -> None:
    g = client.pause("a", drain=True, timeout=2)
    assert g.created and client.replicas() == []


async def test_drain_waits_for_every_live_replica_and_names_the_missing(
    redis_url: str, namespace: str
) -> None:
    import asyncio

    from pausesvc import DrainTimeoutError

    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        await c._heartbeat("rep-1", {"url": "http://r1", "pid": "1"})
        await c._heartbeat("rep-2", {"url": "http://r2", "pid": "2"})
        with pytest.raises(DrainTimeoutError) as ei:
            await c.pause("a", holder="t", drain=True, timeout=0.3)
        assert ei.value.missing == ["rep-1", "rep-2"]
        assert (await c.get("a")) is not None  # the pause itself stays in place
        token = int(ei.value.token.split("-")[0])

        async def replicas_ack() -> None:
            await asyncio.sleep(0.2)
            await c._ack("rep-1", "a", token, ["cmpl-x-0"])
            await asyncio.sleep(0.2)
            await c._ack("rep-2", "a", token, [])

        async def heartbeats() -> None:
            while True:
                await c._heartbeat("rep-1", {"url": "http://r1", "pid": "1"})
                await c._heartbeat("rep-2", {"url": "http://r2", "pid": "2"})
                await asyncio.sleep(0.2)

        beating = asyncio.create_task(heartbeats())
        t0 = time.monotonic()
        task = asyncio.create_task(replicas_ack())
        with pytest.raises(DrainTimeoutError):  # acks for the older token do not count
            await c.pause("a", holder="t2", drain=True, timeout=0.8)
        await task
        await c._ack("rep-1", "a", token + 1, [])
        await c._ack("rep-2", "a", token + 1, [])
        g = await c.pause("a", holder="t2", drain=True, timeout=5)
        # the second pause has a newer token: acks for the older one do not count
        assert g.revision > token
        with pytest.raises(DrainTimeoutError):
            await c.pause("a", holder="t3", drain=True, timeout=0.2)
        rev = (await c.get("a")).revision  # type: ignore[union-attr]
        await c._ack("rep-1", "a", rev, [])
        await c._ack("rep-2", "a", rev, [])
        g3 = await c.pause("a", holder="t3", drain=True, timeout=2)
        assert not g3.created and g3.state.drain_requested
        assert time.monotonic() - t0 < 5
        recs = await c.replicas()
        assert {r["id"] for r in recs} == {"rep-1", "rep-2"}
        assert all(r["live"] and r["heartbeat_age_s"] < 5 for r in recs)
        r1 = next(r for r in recs if r["id"] == "rep-1")
        assert r1["url"] == "http://r1" and r1["drains"]["a"]["rev"] == rev
        beating.cancel()


def test_replication_wait_without_replicas_reports_a_timeout(redis_url: str, namespace: str) -> None:
    from pausesvc import ReplicationTimeoutError, Settings

    s = Settings(replication_wait=1, replication_wait_timeout_ms=50)
    with PauseClient(redis_url, namespace=namespace, settings=s) as c:
        c.pause("a")  # applied on the primary; the shortfall is logged and counted
        assert c.replication_shortfalls == 1 and c.is_paused("a")
        c.strict_replication = True
        with pytest.raises(ReplicationTimeoutError) as ei:
            c.resume("a")
        assert ei.value.acked == 0 and ei.value.wanted == 1
        assert not c.is_paused("a")  # written on the primary: the error says so


def test_embedded_redis_dies_with_its_parent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A `pausesvc serve` killed with SIGKILL must not leave its embedded redis-server behind."""
    import os
    import signal
    import subprocess
    import sys

    code = (
        "import sys, time; from pausesvc import EmbeddedRedis; r = EmbeddedRedis().start(); "
        "print(r.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(child, 0)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(child, 0)
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":
                    break  # exited, waiting for init to reap it
        except (ProcessLookupError, FileNotFoundError):
            break
        assert time.monotonic() < deadline, "embedded redis-server outlived its parent"
        time.sleep(0.05)


def test_sync_events_follow_a_data_loss(client: PauseClient, raw_redis: redis.Redis, namespace: str) -> None:
    """Revisions restart after Redis loses its data: the iterator resyncs instead of dropping
    every later event as 'old', and the pauses Redis lost without a resume are said to be
    orphaned - still paused - never resumed (the watcher's rule)."""
    import threading

    client.pause("a")
    client.pause("b")
    got: list[tuple[str, str, bool]] = []

    def consume() -> None:
        for ev in client.events(timeout=3):
            got.append((ev.op, ev.name, ev.paused))
            if any(n == "c" and p for _, n, p in got):
                return

    t = threading.Thread(target=consume)
    t.start()
    channel = client.keys.events
    deadline = time.monotonic() + 10
    while raw_redis.pubsub_numsub(channel)[0][1] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)
    for key in raw_redis.keys(f"pausesvc:{{{namespace}}}:*"):
        raw_redis.delete(key)  # the namespace's data is gone: revisions start again at 1
    with PauseClient(client.url, namespace=namespace) as other:
        other.pause("c")
        other.pause("c", holder="h2")
    t.join(10)
    assert any(n == "c" and p for _, n, p in got), got  # learned after the loss
    assert ("orphaned", "a", True) in got and ("orphaned", "b", True) in got, got
    assert ("resync", "a", False) not in got and ("resync", "b", False) not in got, got


def test_sync_events_survive_a_dropped_connection(
    client: PauseClient, raw_redis: redis.Redis, namespace: str
) -> None:
    """``events()`` (``pausesvc watch``) reconnects a subscription Redis dropped (a restart,
    a failover, a CLIENT KILL) and re-reads the state: what changed meanwhile is reported, and
    it goes on. It does not end with 'Redis unavailable'."""
    import threading

    got: list[tuple[str, str, bool]] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for ev in client.events(timeout=5):
                got.append((ev.op, ev.name, ev.paused))
                if ("pause", "after", True) in got:
                    return
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    channel = client.keys.events
    deadline = time.monotonic() + 10
    while raw_redis.pubsub_numsub(channel)[0][1] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    raw_redis.client_kill_filter(_type="pubsub")
    with PauseClient(client.url, namespace=namespace) as other:
        other.pause("meanwhile")  # while the subscription is down (or just back)
        while raw_redis.pubsub_numsub(channel)[0][1] < 1:
            assert time.monotonic() < deadline + 10
            time.sleep(0.02)
        time.sleep(0.3)
        other.pause("after")
    t.join(15)
    assert not errors, errors
    assert ("pause", "after", True) in got, got
    assert any(n == "meanwhile" and p for _, n, p in got), got


async def test_drain_barriers_reuse_one_subscription_and_late_acks_never_count(
    redis_url: str, namespace: str, raw_redis: redis.Redis
) -> None:
    """Back-to-back ``pause(drain=True)`` calls share one kept subscription (no new connection
    each); what the last barrier left on it - an acknowledgement that came after it returned -
    does not satisfy the next one, and closing the client closes it."""
    from pausesvc import DrainTimeoutError

    def newest_connection() -> int:  # Redis numbers connections in order: a new one shows
        return max(int(cl["id"]) for cl in raw_redis.client_list())

    async with AsyncPauseClient(redis_url, namespace=namespace, holder="t") as c:
        await c._heartbeat("rep-1", {"url": "http://r1"})
        seen = []
        for _ in range(5):
            task = asyncio.create_task(_ack_when_paused(c, "rep-1", "a"))
            g = await c.pause("a", drain=True, timeout=5)
            await task
            await c._ack("rep-1", "a", g.revision, [])  # late: after the barrier returned
            await c.resume("a", token=g.token)
            assert c.idle_ack_pubsub is not None
            seen.append(newest_connection())
        assert len(set(seen)) == 1, seen  # no new connection per barrier
        with pytest.raises(DrainTimeoutError) as ei:  # the late acks are older: no count
            await c.pause("a", drain=True, timeout=0.4)
        assert ei.value.missing == ["rep-1"]
        assert c.idle_ack_pubsub is None  # a barrier that failed does not keep its subscription
        task = asyncio.create_task(_ack_when_paused(c, "rep-1", "b"))
        await c.pause("b", drain=True, timeout=5)
        await task
        idle = c.idle_ack_pubsub
    assert idle is not None and idle.connection is None  # closed with the client


async def _ack_when_paused(c: AsyncPauseClient, replica: str, name: str) -> None:
    for _ in range(1000):  # the pause is written right after the barrier subscribed
        st = await c.get(name)
        if st is not None:
            await c._ack(replica, name, st.revision, [])
            return
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("kill", [True, False])
async def test_the_next_drain_after_a_redis_restart_uses_a_live_subscription(
    fresh_redis: pausesvc.EmbeddedRedis, namespace: str, kill: bool
) -> None:
    """The barrier's kept subscription died with Redis (killed, or shut down cleanly) while it
    sat idle: the next ``pause(drain=True)`` still subscribes before it writes, counts the
    acknowledgement and returns - and without one it still times out naming the replica."""
    from pausesvc import DrainTimeoutError

    async with AsyncPauseClient(fresh_redis.url, namespace=namespace, holder="t") as c:
        await c._heartbeat("rep-1", {"url": "http://r1"})
        task = asyncio.create_task(_ack_when_paused(c, "rep-1", "a"))
        g = await c.pause("a", drain=True, timeout=5)
        await task
        await c.resume("a", token=g.token)
        assert c.idle_ack_pubsub is not None
        fresh_redis.stop(kill=kill)
        fresh_redis.start()
        await c._heartbeat("rep-1", {"url": "http://r1"})  # the registry was lost with the data
        task = asyncio.create_task(_ack_when_paused(c, "rep-1", "b"))
        g2 = await c.pause("b", drain=True, timeout=5)
        await task
        assert g2.created
        with pytest.raises(DrainTimeoutError) as ei:
            await c.pause("c", drain=True, timeout=0.5)
        assert ei.value.missing == ["rep-1"]
