"""Load and soak: pause/resume cycles across 20 adapters while held requests (real HTTP through
the gates) and waiters pile up. Zero lost wake-ups, zero leaked held requests, flat memory,
a constant number of Redis connections.

Ten adapters are *pinned* (paused by holder "pin" for the whole run; their cycles pause and
release a second holder, so they stay paused): 90% of the held requests and waiters sit on
them all along, and none may get through before the end. The ten *cycling* adapters are
paused by "cyc" and released briefly by every cycle: their requests and waiters wake, finish
and come back.

Default run: 500 cycles, 200 held requests, 200 waiters. ``PAUSESVC_RELIABILITY_FULL=1``:
10,000 cycles, 1,000 held requests, 1,000 waiters."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from pausesvc import AsyncPauseClient, EmbeddedRedis
from reliability.conftest import FULL
from reliability.harness.fleet import Fleet, rss_kb
from reliability.harness.workload import LBTransport, fast_settings

pytestmark = pytest.mark.reliability

CYCLES, HELD, WAITERS = (10_000, 1_000, 1_000) if FULL else (500, 200, 200)
ADAPTERS = [f"s{i}" for i in range(20)]
PINNED, CYCLING = ADAPTERS[:10], ADAPTERS[10:]


def _adapter(i: int) -> str:
    """90% of the held requests and waiters on pinned adapters, 10% on cycling ones."""
    return CYCLING[i % 10] if i % 10 == 0 else PINNED[i % 10]


@pytest.mark.timeout(3600 if FULL else 170)
async def test_soak_cycles_with_held_requests_and_waiters(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    fleet = make_fleet(redis_srv.url, ns)
    fleet.start(2)
    raw = redis.Redis.from_url(redis_srv.url, decode_responses=True)
    paused_ev = {a: asyncio.Event() for a in ADAPTERS}
    gen = dict.fromkeys(ADAPTERS, 0)  # bumped by every pause the controller completes
    repaused = {a: asyncio.Condition() for a in ADAPTERS}
    stop = asyncio.Event()
    done = {
        "cycles": 0,
        "completions": 0,
        "wakes": 0,
        "wait_false": 0,
        "errors": 0,
        "statuses": {},
        "pinned_leaks": 0,
    }
    releasing = asyncio.Event()  # set once the final release of the pinned adapters starts
    samples: list[dict[str, Any]] = []

    async with (
        AsyncPauseClient(redis_srv.url, namespace=ns, settings=fast_settings(), holder="soak") as c,
        httpx.AsyncClient(
            transport=LBTransport(fleet), base_url="http://fleet", timeout=httpx.Timeout(120, connect=10)
        ) as http,
    ):
        await (await c.watcher()).wait_synced(10)
        for a in PINNED:
            await c.pause(a, holder="pin")
        for a in ADAPTERS:
            await c.pause(a, holder="cyc")
            paused_ev[a].set()

        async def held_request(i: int) -> None:
            a = _adapter(i)
            while not stop.is_set():
                try:
                    r = await http.post("/v1/completions", json={"model": a, "prompt": [1], "max_tokens": 1})
                    done["statuses"][r.status_code] = done["statuses"].get(r.status_code, 0) + 1
                    done["completions"] += 1
                    if a in PINNED and not releasing.is_set():
                        done["pinned_leaks"] += 1
                except httpx.HTTPError as exc:
                    done["errors"] += 1
                    kinds = done.setdefault("error_kinds", {})
                    kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
                    await asyncio.sleep(0.05)

        async def waiter(i: int) -> None:
            a = _adapter(i)
            while not stop.is_set():
                await paused_ev[a].wait()
                if stop.is_set():
                    return
                g = gen[a]
                if await c.wait_unpaused(a, timeout=None if a in PINNED else 60):
                    done["wakes"] += 1
                    if a in PINNED and not releasing.is_set():
                        done["pinned_leaks"] += 1
                else:
                    done["wait_false"] += 1
                async with repaused[a]:  # woke: wait for the next pause
                    await repaused[a].wait_for(lambda a=a, g=g: gen[a] > g or stop.is_set())

        def sample() -> None:
            clients = raw.client_list()
            samples.append(
                {
                    "cycle": done["cycles"],
                    "rss_kb": [rss_kb(r.pid) for r in fleet.live],
                    "self_rss_kb": rss_kb(os.getpid()),
                    "redis_clients": len(clients),
                    "redis_used_memory": raw.info("memory")["used_memory"],
                }
            )

        async def controller(mine: list[str], n: int) -> None:
            for _ in range(n):
                a = random.choice(mine)
                paused_ev[a].clear()
                await c.resume(a, holder="cyc")
                await asyncio.sleep(random.uniform(0.005, 0.02))
                await c.pause(a, holder="cyc")
                paused_ev[a].set()
                gen[a] += 1
                async with repaused[a]:
                    repaused[a].notify_all()
                done["cycles"] += 1
                if done["cycles"] % max(1, CYCLES // 10) == 0:
                    sample()
                await asyncio.sleep(random.uniform(0, 0.01))

        tasks = [asyncio.create_task(held_request(i)) for i in range(HELD)]
        tasks += [asyncio.create_task(waiter(i)) for i in range(WAITERS)]
        # let every held request reach a gate
        async with httpx.AsyncClient(timeout=5) as direct:
            for _ in range(600):
                held = 0
                for r in fleet.live:
                    held += (await direct.get(r.url + "/pausesvc/status")).json()["stats"]["held_total"]
                if held >= HELD:
                    break
                await asyncio.sleep(0.1)
        sample()
        t0 = time.monotonic()
        groups = [ADAPTERS[i::4] for i in range(4)]
        await asyncio.gather(*(controller(g, CYCLES // 4) for g in groups))
        elapsed = time.monotonic() - t0
        sample()
        # the end: everything resumed and stays resumed -> every held request and waiter goes on
        stop.set()
        releasing.set()
        t_end = time.monotonic()
        for a in ADAPTERS:
            await c.resume(a, force=True)
            paused_ev[a].set()  # let waiters see stop
            async with repaused[a]:
                repaused[a].notify_all()
        _, pending = await asyncio.wait(tasks, timeout=30)
        settle = time.monotonic() - t_end
        for t in pending:
            t.cancel()
        async with httpx.AsyncClient(timeout=5) as direct:
            gates = [(await direct.get(r.url + "/pausesvc/status")).json()["stats"] for r in fleet.live]
    raw.close()

    warm, last = samples[1], samples[-1]
    rss_growth_kb = max(b - a for a, b in zip(warm["rss_kb"], last["rss_kb"], strict=True))
    figures(
        cycles=done["cycles"],
        adapters=len(ADAPTERS),
        held_requests=HELD,
        waiters=WAITERS,
        cycle_rate_per_s=round(done["cycles"] / elapsed, 1),
        completions=done["completions"],
        wakes=done["wakes"],
        wait_timeouts=done["wait_false"],
        transport_errors=done["errors"],
        error_kinds=done.get("error_kinds", {}),
        statuses=done["statuses"],
        left_pending=len(pending),
        settle_s=round(settle, 2),
        replica_rss_mb=[[round(k / 1024, 1) for k in s["rss_kb"]] for s in samples],
        redis_clients=[s["redis_clients"] for s in samples],
        redis_used_memory=[s["redis_used_memory"] for s in samples],
        rss_growth_mb=round(rss_growth_kb / 1024, 1),
        pinned_leaks=done["pinned_leaks"],
        gates_held=[g["held_total"] for g in gates],
        gates_in_flight=[g["in_flight"] for g in gates],
    )
    assert done["cycles"] == CYCLES // 4 * 4
    assert not pending, f"{len(pending)} held requests / waiters never finished (lost wake-ups)"
    assert done["wait_false"] == 0
    assert done["pinned_leaks"] == 0, "a held request or waiter of a paused adapter got through"
    assert all(g["held_total"] == 0 and not g["in_flight"] for g in gates)
    assert set(done["statuses"]) == {200}, done["statuses"]
    assert rss_growth_kb < 30 * 1024, samples
    clients = [s["redis_clients"] for s in samples[1:]]
    assert max(clients) - min(clients) <= 2, clients
