"""Scenario 7: one of R replicas is slow (answers after 2 s) or dead during pause/resume.

Baseline: the slow replica's endpoints sleep 2 s before answering; the dead one was SIGKILLed.
pausesvc: the slow replica's process is SIGSTOPped for 2 s (its loop cannot run: it learns of
the change late); the dead one was SIGKILLed. ``pause(drain=True)`` waits for every LIVE
replica's acknowledgement, so it is measured too: a dead replica counts as live until its
heartbeat is ``replica_timeout_s`` (5 s) old.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from bench._procs import baseline_replica, pausesvc_replica
from bench._util import Collector, start_procs, stop_procs
from bench.baseline.fanout import CLIENTS, FanoutController
from pausesvc import AsyncPauseClient

__all__ = ["run"]

log = logging.getLogger("bench")


async def _timed(coro: Any) -> tuple[float, str]:
    t0 = time.monotonic()
    try:
        await coro
        outcome = "ok"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:80]}"
    return 1e3 * (time.monotonic() - t0), outcome


async def _baseline(R: int, fault: str, col: Collector, clients: list[str]) -> list[dict[str, Any]]:
    delays = [2.0 if (fault == "slow" and i == 0) else 0.0 for i in range(R)]
    procs = start_procs(baseline_replica, [(i, col.port, delays[i]) for i in range(R)])
    rows = []
    try:
        ports = [int(r.extra) for r in sorted(await col.expect("b", "ready", R, 60), key=lambda r: r.idx)]
        if fault == "dead":
            os.kill(procs[0].pid, signal.SIGKILL)
            procs[0].join(5)
        for kind in clients:
            f = FanoutController(kind, ports, timeout=30.0)
            try:
                for op in ("pause", "resume"):
                    ms, outcome = await _timed(getattr(f, op)("A"))
                    rows.append(
                        {"design": kind, "R": R, "fault": fault, "op": op, "ms": ms, "outcome": outcome}
                    )
            finally:
                await f.aclose()
    finally:
        stop_procs(procs)
    col.arm("b", "ready")
    return rows


async def _pausesvc(url: str, R: int, fault: str, col: Collector) -> list[dict[str, Any]]:
    ns = f"fault{fault}{R}"
    procs = start_procs(pausesvc_replica, [(i, url, col.port, ns) for i in range(R)])
    rows = []
    client = AsyncPauseClient(url, namespace=ns, holder="bench")
    loop = asyncio.get_running_loop()
    try:
        await col.expect("p", "ready", R, 60)
        await asyncio.sleep(1.2)  # every replica heartbeated: the registry knows all R
        victim = procs[0].pid
        for drain in (False, True):
            if fault == "slow":
                os.kill(victim, signal.SIGSTOP)
                loop.call_later(2.0, os.kill, victim, signal.SIGCONT)
            elif fault == "dead" and procs[0].is_alive():
                os.kill(victim, signal.SIGKILL)
                procs[0].join(5)
            ms, outcome = await _timed(client.pause("A", drain=drain, timeout=10 if drain else None))
            rows.append(
                {
                    "design": "pausesvc" + (" drain=True" if drain else ""),
                    "R": R,
                    "fault": fault,
                    "op": "pause",
                    "ms": ms,
                    "outcome": outcome,
                }
            )
            ms, outcome = await _timed(client.resume("A"))
            rows.append(
                {
                    "design": "pausesvc" + (" drain=True" if drain else ""),
                    "R": R,
                    "fault": fault,
                    "op": "resume",
                    "ms": ms,
                    "outcome": outcome,
                }
            )
            await asyncio.sleep(2.2 if fault == "slow" else 0.1)
    finally:
        await client.aclose()
        stop_procs(procs)
    col.arm("p", "ready")
    return rows


async def run(url: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    col = await Collector.open()
    rows: list[dict[str, Any]] = []
    try:
        for R in cfg["fault_rs"]:
            for fault in ("slow", "dead"):
                rows += await _pausesvc(url, R, fault, col)
                rows += await _baseline(R, fault, col, cfg.get("fault_clients", list(CLIENTS)))
                log.info("faults R=%d %s done", R, fault)
    finally:
        col.close()
    return rows
