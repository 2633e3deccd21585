"""Scenarios 1, 2, 4 and the CPU/connection parts of 6: controller latency, propagation, the
Redis floor, CPU per pause event and Redis connections per replica, against R replica processes.

For each R, three sets of R processes run side by side: pausesvc replicas (the gate runtime),
SkyRL replicas (uvicorn + the baseline app) and raw redis-py subscribers (the floor). Every trial
runs each design once, in an order rotated from trial to trial (A B C ... B C A ...), so slow
drifts of this shared machine hit every design alike; the list alternates the sets of processes
(see ``_interleaved``), so no design runs right after one on its own processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aredis

from bench._procs import baseline_replica, floor_subscriber, loop_names, pausesvc_replica
from bench._util import Collector, start_procs, stop_procs, summary
from bench.baseline.fanout import CLIENTS, FanoutController
from pausesvc import AsyncPauseClient

__all__ = ["run"]

log = logging.getLogger("bench")
ADAPTER = "A"
FLOOR_CHANNEL = "bench:floor"

#: the durable floor: the least a pause that survives a restart writes, in one bare EVALSHA -
#: the state stored (HSET), the revision bumped (INCR), then the PUBLISH - no holders, tokens,
#: leases or tombstones, no Python above redis-py on either side
DURABLE_FLOOR = """
redis.call('HSET', KEYS[1], 'A', ARGV[1])
local rev = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return rev
"""


async def _redis_cpu(r: aredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class _Design:
    """One way to pause and resume, and which reports show that every replica saw it."""

    def __init__(
        self, name: str, kind: str, pause: Any, resume: Any, states: tuple[str, str] = ("1", "0")
    ) -> None:
        self.name, self.kind, self.pause, self.resume = name, kind, pause, resume
        #: the reports (state) that show a replica saw the pause, the resume
        self.states = states
        self.ctl: dict[str, list[float]] = {"pause": [], "resume": []}
        self.prop: dict[str, list[float]] = {"pause": [], "resume": []}
        self.cpu: dict[str, list[float]] = {"pause": [], "resume": []}


async def _one(col: Collector, d: _Design, op: str, n: int, record: bool) -> tuple[float, float]:
    state = d.states[0] if op == "pause" else d.states[1]
    col.arm(d.kind, state)
    c0 = time.process_time()
    t0 = time.monotonic()
    await (d.pause() if op == "pause" else d.resume())
    t1 = time.monotonic()
    c1 = time.process_time()
    reps = await col.expect(d.kind, state, n)
    last = max(r.t for r in reps)
    if record:
        d.ctl[op].append(t1 - t0)
        d.prop[op].append(last - t0)
        d.cpu[op].append(c1 - c0)
    return t1 - t0, last - t0


def _interleaved(groups: list[list[_Design]]) -> list[_Design]:
    """One design of each group in turn (p b f u b f p b f): a round rotates this list, and a
    rotation keeps each design's predecessor, so none may be one that ran on the same
    processes - it would leave them warm (caches, the scheduler's state) for the next, which
    measured up to 2x faster at R = 16 than the same design after another group's. The kinds
    of consecutive designs differ, the last's and the first's too, when every group but one
    has a design left at each turn (here: 3 pausesvc designs, 3 fan-outs, 3 floors)."""
    out: list[_Design] = []
    for i in range(max(len(g) for g in groups)):
        out += [g[i] for g in groups if i < len(g)]
    return out


async def _round(
    col: Collector, designs: list[_Design], n: int, settle: float, record: bool, rot: int
) -> None:
    order = designs[rot % len(designs) :] + designs[: rot % len(designs)]
    for d in order:
        for op in ("pause", "resume"):
            await _one(col, d, op, n, record)
            await asyncio.sleep(settle)


async def _cpu_block(
    col: Collector, d: _Design, n: int, events: int, r: aredis.Redis, settle: float
) -> dict[str, float]:
    """CPU of every party over ``events`` pause+resume pairs of one design, back to back."""
    rc0 = await _redis_cpu(r)
    c0 = time.process_time()
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for _ in range(events):
        for op, state in (("pause", d.states[0]), ("resume", d.states[1])):
            col.arm(d.kind, state)
            await (d.pause() if op == "pause" else d.resume())
            for rep in await col.expect(d.kind, state, n):
                first.setdefault(rep.idx, rep.cpu)
                last[rep.idx] = rep.cpu
            await asyncio.sleep(settle)
    ctl = time.process_time() - c0
    rcpu = await _redis_cpu(r) - rc0
    changes = 2 * events
    replicas = sum(last[i] - first[i] for i in first) / max(1, changes - 1)
    return {
        "controller_ms": 1e3 * ctl / changes,
        "replicas_ms": 1e3 * replicas,
        "redis_ms": 1e3 * rcpu / changes,
        "total_ms": 1e3 * (ctl / changes + replicas + rcpu / changes),
    }


async def _at_r(
    url: str,
    R: int,
    trials: int,
    cpu_events: int,
    *,
    spawn: Any = start_procs,
    host: str = "127.0.0.1",
    report_path: str | None = None,
    on_ports: Any = None,
    uvloop: bool = False,
) -> dict[str, Any]:
    """``spawn(target, argsets)`` starts the replica processes (the namespace runs wrap it),
    ``host`` is where the baseline replicas listen, ``report_path`` an AF_UNIX report socket,
    ``await on_ports(ports)`` runs once the baseline replicas listen (a relay in front);
    ``uvloop``: R more pausesvc replicas on uvloop (design ``pausesvc-uvloop``, own namespace)."""
    col = await Collector.open(report_path)
    ns = f"bench{R}"
    r = aredis.Redis.from_url(url)
    procs: list[Any] = []
    try:
        await r.ping()
        before = await r.info("clients")
        ps_before = len(await r.client_list(_type="pubsub"))
        p_procs = spawn(pausesvc_replica, [(i, url, col.port, ns) for i in range(R)])
        procs += p_procs
        ready = await col.expect("p", "ready", R, timeout=120)
        gate_mode = ready[0].extra
        await asyncio.sleep(0.3)  # heartbeats and the client pools settle
        after = await r.info("clients")
        ps_after = len(await r.client_list(_type="pubsub"))
        conns = {
            "per_replica_total": (after["connected_clients"] - before["connected_clients"]) / R,
            "per_replica_pubsub": (ps_after - ps_before) / R,
        }
        uv = uvloop and "uvloop" in loop_names()
        if uv:
            procs += spawn(pausesvc_replica, [(i, url, col.port, ns + "u", "uvloop", "u") for i in range(R)])
            await col.expect("u", "ready", R, timeout=120)
        procs += spawn(baseline_replica, [(i, col.port) for i in range(R)])
        procs += spawn(floor_subscriber, [(i, url, col.port, FLOOR_CHANNEL) for i in range(R)])
        ports = sorted((rep.idx, int(rep.extra)) for rep in await col.expect("b", "ready", R, timeout=120))
        await col.expect("f", "ready", R, timeout=120)
        if on_ports is not None:
            await on_ports([p for _, p in ports])
        log.info("R=%d: %d processes up (pausesvc side: %s)", R, 3 * R, gate_mode)

        client = AsyncPauseClient(url, namespace=ns, holder="bench")
        pub = aredis.Redis.from_url(url)
        await pub.ping()
        uv_client = AsyncPauseClient(url, namespace=ns + "u", holder="bench")
        acks = pub.pubsub()
        await acks.subscribe(f"{FLOOR_CHANNEL}:acks")
        while (await acks.get_message(timeout=5)) is None:
            pass  # the subscribe confirmation

        async def barrier(data: str) -> None:
            """The floor of a drain barrier: a bare PUBLISH out, and each bare subscriber's
            bare PUBLISH back, counted on one subscription (no state, no registry)."""
            await pub.publish(FLOOR_CHANNEL, data)
            got = 0
            while got < R:
                msg = await acks.get_message(timeout=30)
                if msg is None:
                    raise TimeoutError(f"barrier floor: {got}/{R} acknowledgements")
                got += msg["type"] == "message"

        durable = pub.register_script(DURABLE_FLOOR)
        durable_keys = ["bench:durable:state", "bench:durable:rev", FLOOR_CHANNEL]
        grant: dict[str, str] = {}

        async def p_pause(drain: bool = False, c: AsyncPauseClient = client) -> None:
            grant[c.namespace] = (await c.pause(ADAPTER, drain=drain, timeout=30 if drain else None)).token

        async def p_resume(c: AsyncPauseClient = client) -> None:
            await c.resume(ADAPTER, token=grant[c.namespace])

        fanouts = {k: FanoutController(k, [p for _, p in ports], host=host) for k in CLIENTS}
        pausesvc = [
            _Design("pausesvc", "p", p_pause, p_resume),
            *(
                [_Design("pausesvc-uvloop", "u", lambda: p_pause(c=uv_client), lambda: p_resume(uv_client))]
                if uv
                else []
            ),
            _Design("pausesvc-drain", "p", lambda: p_pause(True), p_resume),
        ]
        fanout = [
            _Design(k, "b", (lambda f=f: f.pause(ADAPTER)), (lambda f=f: f.resume(ADAPTER)))
            for k, f in fanouts.items()
        ]
        floors = [
            _Design(
                "floor", "f", lambda: pub.publish(FLOOR_CHANNEL, "1"), lambda: pub.publish(FLOOR_CHANNEL, "0")
            ),
            _Design("floor-barrier", "f", lambda: barrier("B1"), lambda: barrier("B0"), ("B1", "B0")),
            _Design(
                "floor-durable",
                "f",
                lambda: durable(keys=durable_keys, args=["D1"]),
                lambda: durable(keys=durable_keys, args=["D0"]),
                ("D1", "D0"),
            ),
        ]
        designs = _interleaved([pausesvc, fanout, floors])
        settle = 0.005 + 0.0005 * R
        for w in range(3):
            await _round(col, designs, R, settle, False, w)
        pings: list[float] = []
        for t in range(trials):
            await _round(col, designs, R, settle, True, t)
            for _ in range(5):
                t0 = time.monotonic()
                await pub.ping()
                pings.append(time.monotonic() - t0)
        cpu = {}
        for d in designs:
            if d.name != "pausesvc-drain":
                cpu[d.name] = await _cpu_block(col, d, R, cpu_events, r, settle)
        out: dict[str, Any] = {
            "R": R,
            "gate": gate_mode,
            "connections": conns,
            "ping_ms": summary(pings, 1e3),
            "cpu_per_event": cpu,
        }
        for d in designs:
            out[d.name] = {
                f"{kind}_{op}_ms": summary(vals[op], 1e3)
                for kind, vals in (("controller", d.ctl), ("propagation", d.prop), ("controller_cpu", d.cpu))
                for op in ("pause", "resume")
            }
        for f in fanouts.values():
            await f.aclose()
        await client.aclose()
        await uv_client.aclose()
        await acks.aclose()
        await pub.aclose()
        return out
    finally:
        stop_procs(procs)
        await r.aclose()
        col.close()


async def run(url: str, rs: list[int], trials: int, cpu_events: int) -> list[dict[str, Any]]:
    out = []
    for R in rs:
        t = time.monotonic()
        out.append(await _at_r(url, R, trials, cpu_events, uvloop=True))
        log.info("R=%d done in %.1fs", R, time.monotonic() - t)
    return out
