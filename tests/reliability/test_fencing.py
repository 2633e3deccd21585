"""Self-fencing: a replica that cannot prove it is in sync serves nothing.

Real processes: the fake-engine replicas (the real gate inside), a real redis-server, and for the
partition a TCP proxy that black-holes a replica's Redis connections with TCP still open
(``harness/blackhole.py``). Each test causes its fault, proves it happened (the replica's own
status says ``fenced``), then judges the product by what a CLIENT received: no token of the paused
adapter after the drain barrier returned.

Fleet settings (``harness/fleet.py`` FAST_ENV): heartbeat 0.2 s, health check 0.4 s, fence bound
0.8 s, replica timeout 1.5 s (>= 0.8 + 0.3 margin).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pausesvc import AsyncPauseClient, EmbeddedRedis, Settings
from reliability.harness.blackhole import BlackholeProxy
from reliability.harness.fleet import Fleet, Replica
from reliability.harness.probe import status, until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]


class Stream:
    """A streaming completion; records when each token chunk ARRIVED at the client."""

    def __init__(self, rep: Replica, adapter: str, max_tokens: int = 100_000) -> None:
        self.rep, self.adapter, self.max_tokens = rep, adapter, max_tokens
        self.arrivals: list[float] = []
        self.finish: str | None = None
        self.ended = ""
        self.started = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        body = {"model": self.adapter, "prompt": [1], "max_tokens": self.max_tokens, "stream": True}
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(60, read=60)) as c,
                c.stream("POST", self.rep.url + "/v1/completions", json=body) as r,
            ):
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choice = json.loads(line[6:])["choices"][0]
                    if choice.get("finish_reason"):
                        self.finish = choice["finish_reason"]
                    if choice.get("text"):
                        self.arrivals.append(time.monotonic())
                        self.started.set()
            self.ended = "eof"
        except httpx.HTTPError as exc:
            self.ended = type(exc).__name__
        finally:
            self.started.set()

    def after(self, t: float) -> int:
        return sum(1 for a in self.arrivals if a > t)


async def _post(rep: Replica, model: str, timeout: float) -> httpx.Response | None:
    """A request of ``model``; None if it got no answer within ``timeout`` (held)."""
    async with httpx.AsyncClient(timeout=timeout + 5) as c:
        try:
            return await asyncio.wait_for(
                c.post(rep.url + "/v1/completions", json={"model": model, "prompt": [1], "max_tokens": 2}),
                timeout,
            )
        except TimeoutError:
            return None


async def _keep_requesting(rep: Replica, model: str, stop: asyncio.Event) -> int:
    """Short requests of ``model`` until ``stop``; returns how many were answered 200."""
    ok = 0
    async with httpx.AsyncClient(timeout=30) as c:
        while not stop.is_set():
            try:
                r = await c.post(
                    rep.url + "/v1/completions", json={"model": model, "prompt": [1], "max_tokens": 1}
                )
                ok += r.status_code == 200
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    return ok


async def _fenced(rep: Replica) -> bool:
    return bool((await status(rep))["fenced"])


def test_settings_refuse_a_barrier_that_drops_unfenced_replicas() -> None:
    with pytest.raises(ValueError, match="replica_timeout_s"):
        Settings(replica_timeout_s=3, fence_bound_s=3)
    with pytest.raises(ValueError, match="fence_bound_s"):
        Settings(heartbeat_interval_s=2, fence_bound_s=1.5, replica_timeout_s=5)
    Settings(replica_timeout_s=4, fence_bound_s=3, fence_margin_s=1)


async def test_partitioned_replica_fences_before_the_barrier_drops_it(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    """Packets dropped, TCP open: the cut-off replica fences itself (parks new requests, aborts
    and cuts in-flight ones) BEFORE ``pause(drain=True)`` gives up on it and returns; no token of
    the paused adapter reaches a client after that. Healed, it serves again."""
    with BlackholeProxy(redis_srv.port) as proxy:
        healthy = make_fleet(redis_srv.url, ns).start(1)[0]
        victim = make_fleet(proxy.url, ns).start(1)[0]
        async with AsyncPauseClient(redis_srv.url, namespace=ns, holder="trainer") as ctl:
            stream = Stream(victim, "a0")
            other = Stream(victim, "a1")
            await asyncio.wait_for(stream.started.wait(), 10)
            assert stream.arrivals, "the victim's stream never produced a token"
            assert not await _fenced(victim)

            # requests keep arriving while the fence goes up: parked ones must not spin the
            # replica's loop (it must keep answering its status)
            stop = asyncio.Event()
            traffic = [asyncio.create_task(_keep_requesting(victim, "a1", stop)) for _ in range(8)]
            await asyncio.sleep(0.3)
            proxy.blackhole()
            t_cut = time.monotonic()
            fenced_after = await until(lambda: _fenced(victim), 5, "the victim fences itself")
            for _ in range(5):
                await asyncio.sleep(0.2)
                assert (await status(victim, timeout=2.0))["fenced"]  # its loop is alive
            t_fenced = time.monotonic()
            grant = await ctl.pause("a0", drain=True, timeout=15)
            t_ret = time.monotonic()
            replicas = {r["id"]: r for r in await ctl.replicas(include_dead=True)}
            assert sum(1 for r in replicas.values() if r["live"]) == 1  # the victim was dropped

            # no token of a0 (nor of anything) reached a client after the barrier returned
            assert stream.after(t_ret) == 0 and other.after(t_ret) == 0
            late = stream.after(t_fenced + 0.05)
            # new requests of the paused adapter AND of others are parked on the victim
            held_a0 = asyncio.create_task(_post(victim, "a0", 1.0))
            held_base = asyncio.create_task(_post(victim, "base", 1.0))
            assert await held_a0 is None and await held_base is None
            served = await _post(healthy, "a1", 5.0)  # the rest of the fleet is unaffected
            assert served is not None and served.status_code == 200

            await ctl.resume("a0", token=grant.token)
            proxy.forward()
            t_heal = time.monotonic()
            await until(lambda: _not(_fenced(victim)), 15, "the victim heals and unfences")
            healed = time.monotonic() - t_heal
            r = await _post(victim, "a0", 10.0)
            assert r is not None and r.status_code == 200
            await asyncio.wait_for(asyncio.gather(stream.task, other.task), 10)
            stop.set()
            served_loops = await asyncio.wait_for(asyncio.gather(*traffic), 20)
            assert all(n >= 1 for n in served_loops)
    figures(
        partition_to_fenced_s=round(fenced_after, 3),
        drain_returned_after_partition_s=round(t_ret - t_cut, 3),
        tokens_after_drain_returned=stream.after(t_ret),
        tokens_after_fenced=late,
        heal_to_unfenced_s=round(healed, 3),
        victim_stream_end=stream.ended,
    )
    assert fenced_after < 0.8 + 0.4 + 1.0  # the bound, a health-check period and slack


async def _not(coro: Any) -> bool:
    return not await coro


async def test_partitioned_replica_never_expires_a_lease_the_controller_renews(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet]
) -> None:
    """The controller keeps renewing a 1 s lease in Redis while the replica is cut off: the
    replica must not expire it locally and serve the adapter (it cannot see the renewals)."""
    with BlackholeProxy(redis_srv.port) as proxy:
        victim = make_fleet(proxy.url, ns).start(1)[0]
        async with AsyncPauseClient(redis_srv.url, namespace=ns, holder="trainer") as ctl:
            async with ctl.paused("a0", ttl=1.0):
                await until(lambda: _paused_on(victim, "a0"), 5, "the victim learns the pause")
                proxy.blackhole()
                await asyncio.sleep(2.5)  # 2.5 leases long: renewed in Redis meanwhile
                assert await ctl.is_paused("a0")
                assert await _post(victim, "a0", 1.0) is None  # still parked
            proxy.forward()
            await until(lambda: _not(_fenced(victim)), 15, "the victim heals")
            r = await _post(victim, "a0", 10.0)
            assert r is not None and r.status_code == 200


async def _paused_on(rep: Replica, name: str) -> bool:
    return name in (await status(rep))["paused"]


async def test_sigstopped_replica_forwards_nothing_when_it_wakes(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    """SIGSTOP a replica with a stream of a0 decoding; the drain gives up on it after
    replica_timeout_s; SIGCONT it before the resume. It wakes fenced (its proofs are old), so
    not one token reaches the client after the drain returned - the stream is cut - and it
    acknowledges the drain once it is back in sync."""
    fleet = make_fleet(redis_srv.url, ns)
    _r1, r2 = fleet.start(2)
    async with AsyncPauseClient(redis_srv.url, namespace=ns, holder="trainer") as ctl:
        stream = Stream(r2, "a0")
        await asyncio.wait_for(stream.started.wait(), 10)
        fleet.signal(r2, signal.SIGSTOP)
        t_stop = time.monotonic()
        grant = await ctl.pause("a0", drain=True, timeout=15)
        t_ret = time.monotonic()
        fleet.signal(r2, signal.SIGCONT)
        t_cont = time.monotonic()
        await until(
            lambda: _acked(ctl, str(r2.pid), "a0", grant.token), 10, "r2 acknowledges the drain after SIGCONT"
        )
        await asyncio.sleep(0.3)
        emitted = stream.after(t_ret)
        await ctl.resume("a0", token=grant.token)
        await asyncio.wait_for(stream.task, 10)
        st = await status(r2)
    figures(
        drain_returned_after_stop_s=round(t_ret - t_stop, 3),
        stopped_s=round(t_cont - t_stop, 3),
        tokens_after_drain_returned=emitted,
        fenced_cuts=st["stats"]["fenced_cuts"],
        stream_end=stream.ended,
        stream_finish=stream.finish,
    )
    assert emitted == 0
    assert st["stats"]["fences"] >= 1


async def _acked(ctl: AsyncPauseClient, pid: str, name: str, token: str) -> bool:
    for rec in await ctl.replicas():
        if rec.get("pid") == pid:
            d = rec.get("drains", {}).get(name)
            return isinstance(d, dict) and token in (d.get("tokens") or [])
    return False
