"""Replica and controller faults under the checker's workload: a replica SIGKILLed mid-drain, a
replica that stops heartbeating (SIGSTOP), a replica started mid-pause, a controller killed while
holding a pause (with and without a lease)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pausesvc import AsyncPauseClient, EmbeddedRedis
from reliability.harness.checker import Window
from reliability.harness.fleet import REPO, TESTS_DIR, Fleet, Replica
from reliability.harness.probe import status, until
from reliability.harness.workload import Workload

pytestmark = pytest.mark.reliability


async def _long_request(rep: Replica, adapter: str, tokens: int = 400) -> asyncio.Task[Any]:
    """A request of ``adapter`` decoding on ``rep`` (direct, not through the balancer)."""

    async def go() -> Any:
        async with httpx.AsyncClient(timeout=60) as c:
            try:
                r = await c.post(
                    rep.url + "/v1/completions", json={"model": adapter, "prompt": [1], "max_tokens": tokens}
                )
                data = r.json()
                if r.status_code != 200:  # e.g. 503 replica_fenced: cut by a fenced gate
                    return data["error"].get("code") or str(r.status_code)
                return data["choices"][0]["finish_reason"]
            except httpx.TransportError as exc:
                return type(exc).__name__

    task = asyncio.create_task(go())
    async with httpx.AsyncClient(timeout=5) as c:
        for _ in range(200):
            if adapter in (await c.get(rep.url + "/fake/state")).json()["live"]:
                return task
            await asyncio.sleep(0.01)
    raise AssertionError(f"the request of {adapter} never reached {rep.name}'s engine")


async def _registry_drained(client: AsyncPauseClient, rid_prefix: str, name: str, token: str) -> bool:
    """Has that replica acknowledged draining ``name`` for the pause holding ``token``?"""
    for rec in await client.replicas():
        if rec["id"].split(":")[1] == rid_prefix:
            d = rec["drains"].get(name)
            return isinstance(d, dict) and token in (d.get("tokens") or [])
    return False


@pytest.mark.timeout(120)
async def test_replica_killed_mid_drain(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    """r2's engine takes 5 s to abort; r2 is SIGKILLed 0.3 s into the drain. The drain returns
    once r2's heartbeat is older than replica_timeout_s (1.5 s here) - not after 5 s."""
    fleet = make_fleet(redis_srv.url, ns)
    _r1, r2, _r3 = fleet.start(3)
    m: dict[str, Any] = {}

    async def fault(wl: Workload) -> None:
        assert wl.client is not None
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=5) as c:
            (await c.post(r2.url + "/fake/config", json={"abort_delay_s": 5})).raise_for_status()
        victim = await _long_request(r2, "a0")
        t0 = time.monotonic()
        pause = asyncio.create_task(wl.client.pause("a0", drain=True, timeout=15, holder="swapper"))
        await asyncio.sleep(0.3)
        fleet.kill(r2)
        t_kill = time.monotonic()
        grant = await pause
        t_ret = time.monotonic_ns()
        m["drain_returned_after_kill_s"] = round(time.monotonic() - t_kill, 3)
        m["drain_total_s"] = round(time.monotonic() - t0, 3)
        m["victim"] = await victim
        version = wl.versions["a0"] + 1
        swapped = await wl.swap("a0", version)
        wl.versions["a0"] = version
        await asyncio.sleep(0.2)
        wl.windows.append(Window("a0", t_ret, time.monotonic_ns(), version, swapped))
        await wl._resume("a0", grant.token, holder="swapper")
        live = {r["id"].split(":")[1] for r in await wl.client.replicas()}
        m["registry_after"] = sorted(live)

    async with Workload(fleet) as wl:
        wl.adapters_for_controller = ["a1", "a2", "a3"]
        rep = await wl.run(20, samplers=2, streamers=2, waiters=10, fault=fault)
    figures(replica_timeout_s=1.5, **m, **rep.figures())
    assert m["drain_returned_after_kill_s"] < 4.0
    assert str(r2.pid) not in m["registry_after"]
    rep.assert_green()


@pytest.mark.timeout(120)
async def test_replica_that_stops_heartbeating(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    """r2 is SIGSTOPped with a request of a0 decoding: the drain gives up on it after
    replica_timeout_s; r2 is SIGCONTed INSIDE the window (before the resume). What r2 emits
    before it learns the pause is counted (``zombie_tokens``): the barrier cannot cover a
    process that was not running; r2 missed the swap, so a controller must not trust it."""
    fleet = make_fleet(redis_srv.url, ns)
    _r1, r2 = fleet.start(2)
    m: dict[str, Any] = {}

    async def fault(wl: Workload) -> None:
        assert wl.client is not None
        await asyncio.sleep(0.5)
        victim = await _long_request(r2, "a0")
        fleet.signal(r2, signal.SIGSTOP)
        t_stop = time.monotonic()
        grant = await wl.client.pause("a0", drain=True, timeout=15, holder="swapper")
        t_ret = time.monotonic_ns()
        m["drain_returned_after_stop_s"] = round(time.monotonic() - t_stop, 3)
        version = wl.versions["a0"] + 1
        swapped = await wl.swap("a0", version)  # r2 is not live: not swapped
        wl.versions["a0"] = version
        m["swapped"] = sorted(swapped)
        wl.exempt[r2.name] = time.monotonic_ns()
        fleet.signal(r2, signal.SIGCONT)
        t_cont = time.monotonic()
        m["rejoined_and_drained_s"] = round(
            await until(
                lambda: _registry_drained(wl.client, str(r2.pid), "a0", grant.token),
                10,  # type: ignore[arg-type]
                "r2 acknowledges the drain after SIGCONT",
            ),
            3,
        )
        m["victim"] = await victim
        await asyncio.sleep(0.2)
        t_res = time.monotonic_ns()
        wl.windows.append(Window("a0", t_ret, t_res, version, swapped))
        await wl._resume("a0", grant.token, holder="swapper")
        m["zombie_tokens"] = sum(
            1
            for line in r2.log.read_text().splitlines()
            if line.startswith("a0\t") and t_ret < int(line.split("\t")[3]) < t_res
        )
        m["stopped_s"] = round(t_cont - t_stop, 3)

    async with Workload(fleet) as wl:
        wl.adapters_for_controller = ["a1", "a2", "a3"]
        rep = await wl.run(15, samplers=2, streamers=2, waiters=10, fault=fault)
    figures(replica_timeout_s=1.5, **m, **rep.figures())
    assert m["drain_returned_after_stop_s"] < 4.0
    # woken fenced, the gate cut the victim's response (503 replica_fenced) or it was aborted
    assert m["victim"] in ("abort", "replica_fenced")
    # tokens the fake ENGINE logged while the process woke (its loop may run a decode step
    # before the fence monitor); none of them reaches a client - test_fencing.py proves that
    assert m["zombie_tokens"] <= 5
    rep.assert_green()


@pytest.mark.timeout(120)
async def test_replica_started_mid_pause(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    fleet = make_fleet(redis_srv.url, ns)
    fleet.start(2)
    m: dict[str, Any] = {}

    async def fault(wl: Workload) -> None:
        assert wl.client is not None
        await asyncio.sleep(0.5)
        grant = await wl.client.pause("a0", drain=True, timeout=15, holder="swapper")
        t_ret = time.monotonic_ns()
        version = wl.versions["a0"] + 1
        swapped = await wl.swap("a0", version)
        wl.versions["a0"] = version
        t0 = time.monotonic()
        (r3,) = fleet.start(1, versions=dict(wl.versions))
        m["started_s"] = round(time.monotonic() - t0, 3)
        # its first request of a0 is held
        async with httpx.AsyncClient(timeout=30) as c:
            held = asyncio.create_task(
                c.post(r3.url + "/v1/completions", json={"model": "a0", "prompt": [1], "max_tokens": 3})
            )
            m["acked_after_ready_s"] = round(
                await until(
                    lambda: _registry_drained(wl.client, str(r3.pid), "a0", grant.token),
                    10,  # type: ignore[arg-type]
                    "r3 acknowledges the drain",
                ),
                3,
            )
            await asyncio.sleep(0.5)
            assert not held.done(), "r3 served a0 while a0 was paused"
            st = await status(r3)
            m["r3_held_while_paused"] = st["stats"]["held"].get("a0", 0)
            wl.windows.append(Window("a0", t_ret, time.monotonic_ns(), version, swapped | {r3.name}))
            t1 = time.monotonic()
            await wl._resume("a0", grant.token, holder="swapper")
            resp = await held
            m["held_released_after_resume_s"] = round(time.monotonic() - t1, 3)
            assert resp.status_code == 200 and resp.json()["choices"][0]["token_ids"][0] // 100_000 == version

    async with Workload(fleet) as wl:
        wl.adapters_for_controller = ["a1", "a2", "a3"]
        rep = await wl.run(15, samplers=2, streamers=2, waiters=10, fault=fault)
    figures(**m, **rep.figures())
    assert m["r3_held_while_paused"] >= 1  # ours, plus any sampler the balancer sent to r3
    rep.assert_green()


async def _run(args: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, args
    return out.decode()


def _controller(redis_url: str, ns: str, name: str, holder: str, ttl: float | None) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PAUSESVC_REDIS_URL": redis_url,
        "PAUSESVC_NAMESPACE": ns,
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(REPO)]),
    }
    args = [sys.executable, "-m", "reliability.harness.controller_proc", name, holder]
    if ttl is not None:
        args.append(str(ttl))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("HELD"), line
    return proc


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ttl", [2.0, None], ids=["lease", "no-lease"])
async def test_controller_killed_while_holding_a_pause(
    redis_srv: EmbeddedRedis, ns: str, ttl: float | None, figures: Callable[..., None]
) -> None:
    proc = _controller(redis_srv.url, ns, "a0", "trainer-7", ttl)
    try:
        async with AsyncPauseClient(redis_srv.url, namespace=ns) as c:
            assert await c.is_paused("a0")
            waiters = [asyncio.create_task(c.wait_unpaused("a0", 30)) for _ in range(100)]
            await asyncio.sleep(ttl or 0.5)  # the lease was renewed at least once
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            t_kill = time.monotonic()
            if ttl is not None:
                assert all(await asyncio.gather(*waiters))
                resumed = time.monotonic() - t_kill
                figures(ttl_s=ttl, resumed_after_kill_s=round(resumed, 3), waiters=100)
                assert resumed <= ttl + 1.5
                return
            await asyncio.sleep(3.0)
            assert not any(w.done() for w in waiters), "a pause without a lease ended by itself"
            cli = [sys.executable, "-m", "pausesvc", "--redis-url", redis_srv.url, "--namespace", ns]
            st = json.loads(await _run([*cli, "status", "a0", "--json"]))
            text = await _run([*cli, "status"])
            assert st["paused"] and list(st["state"]["holders"]) == ["trainer-7"]
            assert "trainer-7" in text
            age = time.time() - st["state"]["since"]  # seconds in the JSON
            figures(
                still_paused_after_kill_s=3.0,
                status_holder="trainer-7",
                status_age_s=round(age, 1),
                status_line=text.strip().splitlines()[0],
            )
            assert age >= 3.0
            await c.resume("a0", force=True)  # the operator's repair
            assert all(await asyncio.gather(*waiters))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
