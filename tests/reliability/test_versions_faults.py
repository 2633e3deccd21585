"""Weight versions at the edges: a partition during a swap, a Redis that loses its data after
one, a load that fails on one replica only.

Real processes: fake-engine replicas with the real gate (their "weights" are
``fake://<adapter>/<version>``; every token encodes the version that produced it and is
logged), a real redis-server, the black-hole proxy. Judged by the token logs: no token of the
version the fleet left, emitted after the swap returned, on any replica; no load while a request
of the adapter was still decoding (VIOLATION lines).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pausesvc import AsyncPauseClient, EmbeddedRedis, SwapError
from reliability.harness.blackhole import BlackholeProxy
from reliability.harness.checker import read_logs
from reliability.harness.fleet import Fleet, Replica
from reliability.harness.probe import status, until
from reliability.test_fencing import Stream, _fenced, _keep_requesting, _not, _post

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]
HEADER = "x-pausesvc-adapter-version"


def _old_tokens_after(fleet_logs: list[Path], adapter: str, version: int, t: float) -> list[str]:
    tokens, _ = read_logs(fleet_logs)
    t_ns = int(t * 1e9)
    return [
        f"{k.replica}@{k.t_ns}"
        for k in tokens
        if k.adapter == adapter and k.version < version and k.t_ns > t_ns
    ]


async def _versions(rep: Replica) -> dict[str, Any]:
    return dict((await status(rep))["versions"])


async def test_a_replica_partitioned_during_a_swap_never_serves_the_old_version(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    with BlackholeProxy(redis_srv.port) as proxy:
        healthy = make_fleet(redis_srv.url, ns).start(1, versions={"a0": 1})[0]
        victim = make_fleet(proxy.url, ns).start(1, versions={"a0": 1})[0]
        logs = [healthy.log, victim.log]
        async with AsyncPauseClient(redis_srv.url, namespace=ns, holder="trainer") as ctl:
            await until(lambda: _n_live(ctl, 2), 10, "both replicas registered")
            victim_id = await _id_of(ctl, victim)
            async with httpx.AsyncClient() as c:  # a slow load: a window to serve v1 in, if it could
                r = await c.post(victim.url + "/fake/config", json={"load_delay_s": 1.0})
                assert r.status_code == 200
            streams = [Stream(r, "a0") for r in (healthy, victim)]
            for s in streams:
                await asyncio.wait_for(s.started.wait(), 10)
            proxy.blackhole()  # the victim is cut off as the swap starts: it cannot learn it
            t0 = time.monotonic()
            try:
                result = await ctl.swap("a0", "v2", "fake://a0/2", timeout=20)
                loaded = result.loaded
            except SwapError as exc:  # the victim named as missing is fine too
                assert set(exc.missing) | set(exc.failed) == {victim_id}, exc
                loaded = exc.result.loaded if exc.result is not None else []
            t_ret = time.monotonic()
            assert len(loaded) == 1, loaded
            assert await _fenced(victim), "the cut-off replica must have fenced itself"
            assert _old_tokens_after(logs, "a0", 2, t_ret) == []
            assert await _post(victim, "a0", 1.0) is None  # parked while fenced
            r = await _post(healthy, "a0", 5.0)
            assert r is not None and r.headers.get(HEADER) == "v2"

            # requests of a0 keep arriving at the victim while it heals and converges: none may
            # be served with v1 (the token logs below say which version produced every token)
            stop = asyncio.Event()
            traffic = [asyncio.create_task(_keep_requesting(victim, "a0", stop)) for _ in range(4)]
            await asyncio.sleep(0.2)
            proxy.forward()
            await until(lambda: _not(_fenced(victim)), 15, "the victim heals")
            await until(lambda: _loaded(victim, "a0", "v2"), 15, "the victim loads v2 by itself")
            stop.set()
            assert sum(await asyncio.wait_for(asyncio.gather(*traffic), 20)) >= 1
            r = await _post(victim, "a0", 10.0)
            assert r is not None and r.status_code == 200 and r.headers.get(HEADER) == "v2"
            assert all(t // 100_000 == 2 for t in r.json()["choices"][0]["token_ids"])
            await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), 10)
        _, violations = read_logs(logs)
        assert violations == [], violations
        assert _old_tokens_after(logs, "a0", 2, t_ret) == []
    figures(swap_with_partitioned_replica_s=round(t_ret - t0, 3), victim_stream_end=streams[1].ended)


async def test_the_swapped_version_survives_redis_losing_its_data(
    workdir: Path, ns: str, make_fleet: Callable[..., Fleet]
) -> None:
    """Redis restarted empty (no AOF) after a swap: the replicas keep v2 (a replica never goes
    back to weights the fleet left), keep serving it, and the next swap works in the new epoch."""
    srv = EmbeddedRedis(dir=str(workdir))
    srv.start()
    try:
        fleet = make_fleet(srv.url, ns)
        reps = fleet.start(2, versions={"a0": 1})
        async with AsyncPauseClient(srv.url, namespace=ns, holder="trainer") as ctl:
            await until(lambda: _n_live(ctl, 2), 10, "both replicas registered")
            await ctl.swap("a0", "v2", "fake://a0/2", timeout=20)
            # every view applied the swap's resume first: a pause a view still holds when Redis
            # loses it is an orphan, held on purpose (docs/semantics.md), not what this tests
            for rep in reps:
                await until(lambda rep=rep: _unpaused(rep, "a0"), 10, "the resume reached the view")
            srv.stop(kill=True)
            srv.start()  # empty: no desired version in Redis any more
            t_lost = time.monotonic()
            await until(lambda: _n_live(ctl, 2), 15, "the replicas re-register")
            for rep in reps:
                assert (await _versions(rep))["loaded"]["a0"] == "v2"
                r = await _post(rep, "a0", 10.0)
                assert r is not None and r.headers.get(HEADER) == "v2", await status(rep)
            assert _old_tokens_after([r.log for r in reps], "a0", 2, t_lost) == []
            await ctl.swap("a0", "v3", "fake://a0/3", timeout=20)
            for rep in reps:
                r = await _post(rep, "a0", 10.0)
                assert r is not None and r.headers.get(HEADER) == "v3"
    finally:
        srv.cleanup()


async def test_a_load_failing_on_one_replica_names_it_and_holds_only_there(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet]
) -> None:
    fleet = make_fleet(redis_srv.url, ns)
    good, bad = fleet.start(2, versions={"a0": 1})
    async with AsyncPauseClient(redis_srv.url, namespace=ns, holder="trainer") as ctl:
        await until(lambda: _n_live(ctl, 2), 10, "both replicas registered")
        # the bad replica's engine refuses every load from now on
        async with httpx.AsyncClient() as c:
            r = await c.post(bad.url + "/fake/config", json={"fail_loads": True})
            assert r.status_code == 200
        with pytest.raises(SwapError) as info:
            await ctl.swap("a0", "v2", "fake://a0/2", timeout=10)
        assert list(info.value.failed) == [await _id_of(ctl, bad)], info.value
        assert not info.value.missing
        assert await ctl.get("a0") is None  # the fleet-wide pause is released
        r = await _post(good, "a0", 5.0)
        assert r is not None and r.headers.get(HEADER) == "v2"
        assert await _post(bad, "a0", 1.0) is None  # held there, never served with v1
        assert (await _versions(bad))["errors"]["a0"]["attempts"] >= 1


async def _id_of(ctl: AsyncPauseClient, rep: Replica) -> str:
    for r in await ctl.replicas():
        if str(r.get("pid")) == str(rep.pid):
            return str(r["id"])
    raise AssertionError(f"{rep.name} is not in the registry")


async def _n_live(ctl: AsyncPauseClient, n: int) -> bool:
    return len(await ctl.replicas()) == n


async def _loaded(rep: Replica, name: str, version: str) -> bool:
    return (await _versions(rep))["loaded"].get(name) == version


async def _unpaused(rep: Replica, name: str) -> bool:
    return name not in (await status(rep))["paused"]
