"""Redis Sentinel failover and Redis Cluster under the checker's workload, and the cost of
``replication_wait`` (WAIT)."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pausesvc import AsyncPauseClient
from reliability.harness.fleet import Fleet
from reliability.harness.probe import fleet_views, until
from reliability.harness.topologies import ClusterSet, SentinelSet
from reliability.harness.workload import Workload, fast_settings

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli missing"),
]


@pytest.fixture
def sentinels(workdir: Path) -> Iterator[SentinelSet]:
    s = SentinelSet(workdir)
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture
def cluster(workdir: Path) -> Iterator[ClusterSet]:
    c = ClusterSet(workdir)
    try:
        yield c.start()
    finally:
        c.close()


async def _pause_latency(url: str, ns: str, wait: int, n: int) -> list[float]:
    out = []
    async with AsyncPauseClient(
        url, namespace=ns, settings=fast_settings(replication_wait=wait, replication_wait_timeout_ms=1000)
    ) as c:
        for i in range(n):
            t0 = time.perf_counter()
            g = await c.pause(f"w{i % 10}")
            out.append(time.perf_counter() - t0)
            await c.resume(f"w{i % 10}", token=g.token)
    return out


@pytest.mark.timeout(240)
async def test_sentinel_failover_during_a_pause_resume_loop(
    sentinels: SentinelSet, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    # the cost of WAIT, measured on this primary + replica before the failover
    n = 200
    no_wait = await _pause_latency(sentinels.url, ns + "w", 0, n)
    with_wait = await _pause_latency(sentinels.url, ns + "w", 1, n)
    cost = {
        "pause_p50_ms_wait0": round(1000 * statistics.median(no_wait), 3),
        "pause_p50_ms_wait1": round(1000 * statistics.median(with_wait), 3),
        "pause_p99_ms_wait0": round(1000 * sorted(no_wait)[int(n * 0.99)], 3),
        "pause_p99_ms_wait1": round(1000 * sorted(with_wait)[int(n * 0.99)], 3),
    }

    fleet = make_fleet(sentinels.url, ns)
    fleet.start(2)
    m: dict[str, Any] = {}
    old = sentinels.primary.port

    async def fault(wl: Workload) -> None:
        assert wl.client is not None
        await asyncio.sleep(1.5)
        sentinels.primary.stop(kill=True)
        t_kill = time.monotonic()
        m["failover_s"] = round(
            await until(lambda: sentinels.master_port() not in (None, old), 30, "sentinels promote"), 3
        )

        # heal: a change through the sentinel URL reaches every replica's view
        async def changed() -> bool:
            try:
                g = await wl.client.pause("probe", holder="probe")  # type: ignore[union-attr]
                await wl.client.resume("probe", holder="probe", token=g.token)  # type: ignore[union-attr]
            except Exception:
                return False
            return True

        await until(changed, 30, "a pause through the sentinel URL", step=0.1)
        m["first_write_after_kill_s"] = round(time.monotonic() - t_kill, 3)
        snap = await wl.client.snapshot()
        await until(lambda: _views_at(fleet, snap.revision), 30, "replicas follow")
        m["replicas_follow_after_kill_s"] = round(time.monotonic() - t_kill, 3)

    # the controller waits for one replica on every change (no acknowledged pause is lost in
    # the failover); the timeout bounds the cost once the only replica has become the primary
    async with Workload(
        fleet, settings=fast_settings(replication_wait=1, replication_wait_timeout_ms=200)
    ) as wl:
        rep = await wl.run(30, samplers=2, streamers=2, waiters=10, fault=fault)
        snap = await wl.client.snapshot()  # type: ignore[union-attr]
        views = await fleet_views(fleet)
        w = await wl.client.watcher()  # type: ignore[union-attr]
        m["data_losses_seen"] = w.stats.data_losses
    m["consistent"] = all(
        v["revision"] == snap.revision and set(v["paused"]) == set(snap.paused) and not v["orphans"]
        for v in views
    )
    figures(**cost, **m, **rep.figures())
    assert m["consistent"], (snap, views)
    assert m["data_losses_seen"] == 0
    rep.assert_green()


async def _views_at(fleet: Fleet, revision: int) -> bool:
    views = await fleet_views(fleet)
    return all(v["in_sync"] and v["revision"] >= revision for v in views)


@pytest.mark.timeout(180)
async def test_cluster_checker_green(
    cluster: ClusterSet, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    fleet = make_fleet(cluster.url, ns)
    fleet.start(2)
    async with Workload(fleet) as wl:
        assert wl.client is not None and wl.client.sharded
        rep = await wl.run(25, samplers=2, streamers=2, waiters=10)
    figures(primaries=3, sharded_pubsub=True, **rep.figures())
    rep.assert_green()
