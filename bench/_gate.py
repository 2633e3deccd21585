"""Scenario 5: the gate's cost on unpaused traffic, through uvicorn, with and without it.

Three uvicorn servers (one worker each) serve the same fake streaming ``/v1/completions``: bare,
behind ``PauseGateMiddleware``, behind the SkyRL gate. One load-generator process (lean raw
HTTP/1.1 keep-alive client, C connections) drives one server at a time, the order rotating every
round. Server CPU per request comes from /proc (user+system of the server process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from bench._util import ctx, percentile, proc_cpu, start_procs, stop_procs, summary

__all__ = ["run"]

log = logging.getLogger("bench")
VARIANTS = ("none", "pausesvc", "skyrl")
_BODY = json.dumps({"model": "A", "prompt": "hello", "max_tokens": 4, "stream": True}).encode()


def server_proc(variant: str, url: str, conn: Any) -> None:
    import os

    from bench._procs import start_gate, start_uvicorn
    from bench.baseline.app import SkyRLReplica
    from bench.fakeapp import fake_openai_app

    async def main() -> None:
        app: Any = fake_openai_app
        if variant == "pausesvc":
            app, _ = await start_gate(url, "gate", app=fake_openai_app)
        elif variant == "skyrl":
            app = SkyRLReplica(fake_openai_app)
        port = await start_uvicorn(app)
        conn.send((port, os.getpid()))
        await asyncio.Event().wait()

    asyncio.run(main())


def loadgen_proc(conn: Any) -> None:
    from bench._http import RawConnection, build_post

    async def run(port: int, conc: int, seconds: float) -> tuple[int, float, list[float]]:
        raw = build_post("127.0.0.1", port, "/v1/completions", _BODY)
        count = [0]
        ttfb: list[float] = []
        stop = time.monotonic() + seconds

        async def worker() -> None:
            c = RawConnection("127.0.0.1", port)
            await c.connect()
            while time.monotonic() < stop:
                status, _, t = await c.request(raw)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}")
                count[0] += 1
                ttfb.append(t)
            await c.close()

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return count[0], time.monotonic() - t0, ttfb

    while True:
        cmd = conn.recv()
        if cmd is None:
            return
        conn.send(asyncio.run(run(*cmd)))


async def run(url: str, cfg: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    pipes = {v: ctx().Pipe() for v in VARIANTS}
    procs = start_procs(server_proc, [(v, url, pipes[v][1]) for v in VARIANTS])
    lg_a, lg_b = ctx().Pipe()
    procs += start_procs(loadgen_proc, [(lg_b,)])
    try:
        info = {v: await loop.run_in_executor(None, pipes[v][0].recv) for v in VARIANTS}
        rows: dict[str, dict[str, list[float]]] = {
            v: {"rps": [], "cpu_us": [], "ttfb_ms": []} for v in VARIANTS
        }
        for rnd in range(cfg["gate_rounds"] + 1):
            order = VARIANTS[rnd % 3 :] + VARIANTS[: rnd % 3]
            for v in order:
                port, pid = info[v]
                c0 = proc_cpu(pid)
                lg_a.send((port, cfg["gate_conc"], cfg["gate_seconds"]))
                count, elapsed, ttfb = await loop.run_in_executor(None, lg_a.recv)
                c1 = proc_cpu(pid)
                if rnd == 0:
                    continue  # warm-up round
                rows[v]["rps"].append(count / elapsed)
                rows[v]["cpu_us"].append(1e6 * (c1 - c0) / count)
                rows[v]["ttfb_ms"].append(1e3 * percentile(sorted(ttfb), 0.5))
        base = rows["none"]
        out = []
        for v in VARIANTS:
            r = {k: summary(vals) for k, vals in rows[v].items()}
            out.append(
                {
                    "variant": v,
                    **r,
                    "ratio": r["rps"]["median"] / summary(base["rps"])["median"],
                    "added_cpu_us": r["cpu_us"]["median"] - summary(base["cpu_us"])["median"],
                    "raw": rows[v],
                }
            )
            log.info("gate %s: %.0f req/s, %.1f us CPU/request", v, r["rps"]["median"], r["cpu_us"]["median"])
        from bench.fakeapp import CHUNKS

        return {
            "summary": out,
            "concurrency": cfg["gate_conc"],
            "seconds": cfg["gate_seconds"],
            "chunks": CHUNKS,
        }
    finally:
        lg_a.send(None)
        stop_procs(procs)
