"""Scenario 5: the gate's cost on unpaused traffic, through uvicorn, with and without it.

Per event loop (asyncio, and uvloop - what vLLM's uvicorn runs - when installed), four uvicorn
servers (one worker each) serve the same fake streaming ``/v1/completions``: bare, behind
``PauseGateMiddleware``, behind the SkyRL gate, and behind a pure-ASGI layer that wraps receive
and send and does nothing else (what being such a layer costs at all). One load-generator
process (lean raw HTTP/1.1 keep-alive client, C connections) drives one server at a time, the
order rotating every round.
A gate's ratio per round is its throughput over the bare server's on the same loop in the same
round; the spread of those ratios over the rounds is reported. Server CPU per request comes from
/proc (user+system of the server process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from typing import Any

from bench._procs import loop_names
from bench._util import ctx, percentile, proc_cpu, start_procs, stop_procs, summary

__all__ = ["run"]

log = logging.getLogger("bench")
VARIANTS = ("none", "pausesvc", "skyrl", "wrap-only")
_BODY = json.dumps({"model": "A", "prompt": "hello", "max_tokens": 4, "stream": True}).encode()


def wrap_only(app: Any) -> Any:
    """A pure-ASGI layer that wraps ``receive`` and ``send`` and does nothing else: the gate
    wraps both (to hold a request's body and to cut a response), so this is its cost before
    any of its own work."""

    async def layer(scope: Any, receive: Any, send: Any) -> None:
        async def wrapped_receive() -> Any:
            return await receive()

        async def wrapped_send(message: Any) -> None:
            await send(message)

        await app(scope, wrapped_receive, wrapped_send)

    return layer


def server_proc(variant: str, url: str, conn: Any, loop: str = "asyncio") -> None:
    import os

    from bench._procs import run_on, start_gate, start_uvicorn
    from bench.baseline.app import SkyRLReplica
    from bench.fakeapp import fake_openai_app

    async def main() -> None:
        app: Any = fake_openai_app
        if variant == "pausesvc":
            app, _ = await start_gate(url, "gate", app=fake_openai_app)
        elif variant == "skyrl":
            app = SkyRLReplica(fake_openai_app)
        elif variant == "wrap-only":
            app = wrap_only(fake_openai_app)
        port = await start_uvicorn(app)
        conn.send((port, os.getpid()))
        await asyncio.Event().wait()

    run_on(loop, main())


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
    loops = loop_names()
    servers = [(v, lp) for lp in loops for v in VARIANTS]
    pipes = {s: ctx().Pipe() for s in servers}
    procs = start_procs(server_proc, [(v, url, pipes[(v, lp)][1], lp) for v, lp in servers])
    lg_a, lg_b = ctx().Pipe()
    procs += start_procs(loadgen_proc, [(lg_b,)])
    try:
        info = {s: await loop.run_in_executor(None, pipes[s][0].recv) for s in servers}
        rows: dict[tuple[str, str], dict[str, list[float]]] = {
            s: {"rps": [], "cpu_us": [], "ttfb_ms": []} for s in servers
        }
        for rnd in range(cfg["gate_rounds"] + 1):
            k = rnd % len(servers)
            for s in servers[k:] + servers[:k]:
                port, pid = info[s]
                c0 = proc_cpu(pid)
                lg_a.send((port, cfg["gate_conc"], cfg["gate_seconds"]))
                count, elapsed, ttfb = await loop.run_in_executor(None, lg_a.recv)
                c1 = proc_cpu(pid)
                if rnd == 0:
                    continue  # warm-up round
                rows[s]["rps"].append(count / elapsed)
                rows[s]["cpu_us"].append(1e6 * (c1 - c0) / count)
                rows[s]["ttfb_ms"].append(1e3 * percentile(sorted(ttfb), 0.5))
        out = [_row(v, lp, rows[(v, lp)], rows[("none", lp)]) for v, lp in servers]
        from bench.fakeapp import CHUNKS

        return {
            "summary": [r for r in out if r["loop"] == "asyncio"],
            "by_loop": out,
            "loops": list(loops),
            "rounds": cfg["gate_rounds"],
            "concurrency": cfg["gate_conc"],
            "seconds": cfg["gate_seconds"],
            "chunks": CHUNKS,
        }
    finally:
        lg_a.send(None)
        stop_procs(procs)


def _row(
    variant: str, loop: str, rows: dict[str, list[float]], base: dict[str, list[float]]
) -> dict[str, Any]:
    r = {k: summary(vals) for k, vals in rows.items()}
    ratios = [g / b for g, b in zip(rows["rps"], base["rps"], strict=True)]
    log.info(
        "gate %s on %s: %.0f req/s, %.1f us CPU/request, per-round ratio %.3f (%.3f-%.3f)",
        variant,
        loop,
        r["rps"]["median"],
        r["cpu_us"]["median"],
        statistics.median(ratios),
        min(ratios),
        max(ratios),
    )
    return {
        "variant": variant,
        "loop": loop,
        **r,
        "ratio": r["rps"]["median"] / summary(base["rps"])["median"],
        "round_ratios": ratios,
        "round_ratio": {**summary(ratios), "min": min(ratios)},
        "added_cpu_us": r["cpu_us"]["median"] - summary(base["cpu_us"])["median"],
        "raw": rows,
    }
