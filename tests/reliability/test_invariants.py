"""The invariant checker on a healthy fleet: pause(drain) -> swap -> resume at random while
samplers stream and retry and waiters wait. Nothing may be decoded inside a drained window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pausesvc import AsyncPauseClient, EmbeddedRedis
from reliability.conftest import FULL
from reliability.harness.checker import Window, check, read_logs
from reliability.harness.workload import Workload

pytestmark = pytest.mark.reliability


@pytest.mark.timeout(300)
async def test_checker_green_on_a_healthy_fleet(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Any], figures: Callable[..., None]
) -> None:
    fleet = make_fleet(redis_srv.url, ns)
    fleet.start(3)
    cycles = 300 if FULL else 40
    async with Workload(fleet) as wl:
        rep = await wl.run(cycles, samplers=4, streamers=4, waiters=30)
    figures(replicas=3, **rep.figures())
    rep.assert_green()
    assert rep.cycles == cycles
    assert rep.resumed_samples > 0, "no sample was ever interrupted: the test proves nothing"


async def test_checker_catches_a_controller_that_does_not_drain(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Any]
) -> None:
    """The checker is not vacuous: a controller that swaps without waiting for the drain, on an
    engine whose aborts are slow, is caught (tokens inside the window, swap while decoding)."""
    fleet = make_fleet(redis_srv.url, ns, interval=0.01)
    (r,) = fleet.start(1)
    async with (
        Workload(fleet, adapters=["a0"]) as wl,
        httpx.AsyncClient(timeout=30) as http,
        AsyncPauseClient(redis_srv.url, namespace=ns) as c,
    ):
        # a slow engine: an abort takes effect 0.5 s after it is asked for
        (await http.post(r.url + "/fake/config", json={"abort_delay_s": 0.5})).raise_for_status()
        task = asyncio.create_task(
            http.post(r.url + "/v1/completions", json={"model": "a0", "prompt": [1], "max_tokens": 100})
        )
        for _ in range(500):  # decoding (not merely sent) before the pause lands
            if "a0" in (await http.get(r.url + "/fake/state")).json()["live"]:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        g = await c.pause("a0")  # no drain=True
        t_ret = time.monotonic_ns()
        swapped = await wl.swap("a0", 1)
        await asyncio.sleep(0.2)
        t_res = time.monotonic_ns()
        await c.resume("a0", token=g.token)
        await task
    tokens, engine_v = read_logs([r.log])
    f = check(tokens, engine_v, [Window("a0", t_ret, t_res, 1, swapped)], [], {"a0": 0})
    assert f.window and f.swap_while_decoding, f.summary()


async def test_slow_aborts_still_drain_before_the_swap(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Any], figures: Callable[..., None]
) -> None:
    """The same slow engine with drain=True: pause returns only after the aborts took effect."""
    fleet = make_fleet(redis_srv.url, ns)
    reps = fleet.start(2)
    async with httpx.AsyncClient(timeout=5) as http:
        for r in reps:
            (await http.post(r.url + "/fake/config", json={"abort_delay_s": 0.3})).raise_for_status()
    async with Workload(fleet, adapters=["a0", "a1"]) as wl:
        rep = await wl.run(8, samplers=2, streamers=2, waiters=5)
    figures(replicas=2, abort_delay_s=0.3, **rep.figures())
    rep.assert_green()
    assert min(rep.drain_s) >= 0.3 or rep.resumed_samples == 0
