"""The protocol runs unchanged on a three-primary Redis Cluster on loopback (sharded pub/sub)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from pausesvc import AsyncPauseClient, EmbeddedRedis, PauseClient, PauseWatcher, StaleTokenError

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli missing")


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    tmp = tempfile.TemporaryDirectory(prefix="pausesvc-cluster-")
    nodes = []
    try:
        for i in range(3):
            n = EmbeddedRedis(
                dir=f"{tmp.name}",
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{i}.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            n.start()
            nodes.append(n)
        addrs = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addrs, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while True:
            out = subprocess.run(
                ["redis-cli", "-p", str(nodes[0].port), "cluster", "info"], capture_output=True, text=True
            ).stdout
            if "cluster_state:ok" in out:
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.1)
        yield "redis+cluster://" + ",".join(addrs)
    finally:
        for n in nodes:
            n.stop()
        tmp.cleanup()


def test_sync_protocol_on_cluster(cluster_url: str, namespace: str) -> None:
    with PauseClient(cluster_url, namespace=namespace) as c:
        assert c.sharded
        g = c.pause("a", holder="one", ttl=30)
        c.pause("a", holder="two")
        assert set(c.get("a").holders) == {"one", "two"}  # type: ignore[union-attr]
        with pytest.raises(StaleTokenError):
            c.resume("a", holder="one", token=f"{g.revision}-0")
        c.resume("a", holder="one", token=g.token)
        assert c.is_paused("a")
        c.resume("a", holder="two")
        assert not c.is_paused("a") and c.snapshot().revision == g.revision + 3
        c.pause("b", ttl=0.3)
        assert c.wait_unpaused("b", timeout=5) is True


async def test_watcher_and_waiters_on_cluster(cluster_url: str, namespace: str) -> None:
    async with (
        PauseWatcher(cluster_url, namespace=namespace) as w,
        AsyncPauseClient(cluster_url, namespace=namespace) as c,
    ):
        g = await c.pause("a")
        deadline = time.monotonic() + 5
        while not w.is_paused("a"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        waiters = [asyncio.create_task(w.wait_unpaused("a", 10)) for _ in range(50)]
        await asyncio.sleep(0.05)
        await c.resume("a", token=g.token)
        assert all(await asyncio.gather(*waiters))
        await c.pause("lease", ttl=0.3)
        assert await c.wait_unpaused("lease", 5) is True
        assert w.stats.gaps == 0 and w.in_sync


async def test_drain_on_cluster(cluster_url: str, namespace: str) -> None:
    async with AsyncPauseClient(cluster_url, namespace=namespace) as c:
        await c._heartbeat("rep", {"url": "http://r"})

        async def ack() -> None:
            await asyncio.sleep(0.2)
            st = await c.get("a")
            assert st is not None
            await c._ack("rep", "a", st.revision, [])

        task = asyncio.create_task(ack())
        await c.pause("a", drain=True, timeout=5)
        await task
        assert [r["id"] for r in await c.replicas()] == ["rep"]


async def test_the_watchers_health_check_is_answered_on_cluster(cluster_url: str, namespace: str) -> None:
    """The PING goes on the per-node pub/sub that reads the events channel: a watcher on a
    cluster stays subscribed (it reconnected every health-check interval when the PING went
    out on a connection nobody read)."""
    async with PauseWatcher(cluster_url, namespace=namespace) as w:
        assert await w.wait_synced(10)
        await asyncio.sleep(4 * w.health_check_interval + 0.5)
        assert w.stats.reconnects == 0 and w.in_sync, (w.stats.reconnects, w.last_error)


async def test_a_cluster_subscription_is_told_from_a_standalone_one(cluster_url: str, redis_url: str) -> None:
    """By its class, not by ``get_sharded_message`` (redis-py 8.2 has one on both)."""
    from pausesvc._redis import aclose_client, async_client, is_cluster_pubsub

    cluster, single = async_client(cluster_url), async_client(redis_url)
    try:
        assert is_cluster_pubsub(cluster.pubsub())
        assert not is_cluster_pubsub(single.pubsub())
    finally:
        await aclose_client(cluster)
        await aclose_client(single)
