"""Goal figures no other scenario measures, and the profiles behind the misses.

- ``gate_micro``: the gate's CPU per unpaused request in process (its ASGI call on a no-op app
  minus the app called directly), ``rounds`` interleaved rounds of ``n`` requests; a cProfile
  of one gated round.
- ``cli``: wall time of ``pausesvc status`` against ``python -c "import redis"``, alternated,
  and the slowest imports of ``pausesvc.cli`` (``-X importtime``).
- ``imports``: the slowest imports of ``pausesvc_vllm`` (what the gate adds to a process's RSS).
- ``gate_process``: cProfile of one replica process (the gate runtime and its watcher) over
  ``changes`` pause/resume changes, plain and ``drain=True``: where a replica's CPU per change
  goes (propagation, drain, CPU per event).
- ``wake``: cProfile of one process waking 10,000 ``wait_unpaused`` waiters.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._util import Collector, profile_top, send_report, start_procs, stop_procs
from bench.fakeapp import noop_request
from pausesvc import AsyncPauseClient, Settings

__all__ = ["gate_profiled", "run"]

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent


async def gate_micro(url: str, n: int, rounds: int) -> dict[str, Any]:
    from pausesvc_vllm import PauseGateMiddleware

    app, receive, send, scope = noop_request()
    mw = PauseGateMiddleware(app, settings=Settings(redis_url=url, namespace="benchmicro"))
    await mw.runtime.start()
    assert mw.runtime.watcher is not None
    await mw.runtime.watcher.wait_synced(5)
    costs, direct, gated = [], [], []
    try:
        for r in range(rounds):
            per = {}
            order = (("direct", app), ("gated", mw)) if r % 2 == 0 else (("gated", mw), ("direct", app))
            for label, target in order:
                await asyncio.sleep(0.01)  # the watcher's PONGs get read (the loop never blocks below)
                c0 = time.process_time()
                for _ in range(n):
                    await target(dict(scope), receive, send)
                per[label] = (time.process_time() - c0) / n * 1e6
            direct.append(per["direct"])
            gated.append(per["gated"])
            costs.append(per["gated"] - per["direct"])
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        for _ in range(n):
            await mw(dict(scope), receive, send)
        prof.disable()
    finally:
        await mw.runtime.aclose()
    return {
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "n": n,
        "rounds": rounds,
        "direct_us": direct,
        "gated_us": gated,
        "cost_us": costs,
        "cost_us_median": statistics.median(costs),
        "profile": profile_top(prof),
    }


_MICRO_SCRIPT = """
import json, sys
from bench._procs import run_on
from bench._profiles import gate_micro
out = run_on(sys.argv[2], gate_micro(sys.argv[1], int(sys.argv[3]), int(sys.argv[4])))
print(json.dumps(out))
"""


async def gate_micro_on(url: str, loop: str, n: int, rounds: int) -> dict[str, Any]:
    """:func:`gate_micro` in a fresh process on ``loop`` (asyncio or uvloop)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _MICRO_SCRIPT,
        url,
        loop,
        str(n),
        str(rounds),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(child.communicate(), 300)
    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def _run_wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, timeout=60, check=False)
    return time.perf_counter() - t0


def _importtime(module: str, n: int = 15) -> list[tuple[str, float]]:
    """The ``n`` imports with the largest cumulative time (ms) when importing ``module``."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    rows = []
    for ln in res.stderr.splitlines():
        parts = ln[len("import time:") :].split("|") if ln.startswith("import time:") else []
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        depth = (len(parts[2]) - len(parts[2].lstrip()) - 1) // 2
        rows.append((f"{'  ' * depth}{parts[2].strip()}", int(parts[1]) / 1e3))
    return sorted(rows, key=lambda r: -r[1])[:n]


def cli(url: str, runs: int) -> dict[str, Any]:
    env = {**os.environ, "PAUSESVC_REDIS_URL": url, "PAUSESVC_NAMESPACE": "benchcli"}
    exe = str(Path(sys.executable).with_name("pausesvc"))
    status, bare = [], []
    for i in range(runs):
        pair = [("status", [exe, "status"]), ("import", [sys.executable, "-c", "import redis"])]
        for label, cmd in pair if i % 2 == 0 else pair[::-1]:
            (status if label == "status" else bare).append(_run_wall(cmd, env))
    return {
        "runs": runs,
        "status_s": status,
        "import_redis_s": bare,
        "ratio_median": statistics.median(status) / statistics.median(bare),
        "importtime_ms": _importtime("pausesvc.cli"),
    }


def gate_profiled(url: str, ns: str, report: int, out_path: str) -> None:
    """Child: a replica's gate runtime under cProfile; reports each change of its view; on
    SIGTERM writes the top functions to ``out_path``."""
    from bench._procs import start_gate

    async def main() -> None:
        import socket

        sock, addr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ("127.0.0.1", report)
        mw, watcher = await start_gate(url, ns)
        last = [False]

        def on_change(name: str, state: Any, ev: Any) -> None:
            paused = watcher.is_paused("A")
            if paused != last[0]:
                last[0] = paused
                send_report(sock, addr, "g", 0, "1" if paused else "0")

        watcher.add_listener(on_change)
        prof = cProfile.Profile(time.process_time)  # CPU time: the idle epoll wait is not counted
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, prof.enable)
        send_report(sock, addr, "g", 0, "ready")
        await stop.wait()
        prof.disable()
        await asyncio.to_thread(Path(out_path).write_text, profile_top(prof, 22))
        send_report(sock, addr, "g", 0, "done")
        if mw is not None:
            await mw.runtime.aclose()

    asyncio.run(main())


async def gate_process(url: str, changes: int, drain: bool) -> str:
    col = await Collector.open()
    ns = f"benchprof{int(drain)}"
    with tempfile.TemporaryDirectory(prefix="pausesvc-prof-") as tmp:
        out = f"{tmp}/gate.prof"
        procs = start_procs(gate_profiled, [(url, ns, col.port, out)])
        client = AsyncPauseClient(url, namespace=ns, holder="bench")
        try:
            await col.expect("g", "ready", 1, timeout=60)
            os.kill(procs[0].pid, signal.SIGUSR1)
            for _ in range(changes // 2):
                for op, state in (("pause", "1"), ("resume", "0")):
                    col.arm("g", state)
                    if op == "pause":
                        g = await client.pause("A", drain=drain, timeout=30 if drain else None)
                    else:
                        await client.resume("A", token=g.token)
                    await col.expect("g", state, 1)
                    await asyncio.sleep(0.005)
            col.arm("g", "done")
            procs[0].terminate()
            await col.expect("g", "done", 1, timeout=30)
            return await asyncio.to_thread(Path(out).read_text)
        finally:
            await client.aclose()
            stop_procs(procs)
            col.close()


async def wake(url: str, waiters: int) -> dict[str, Any]:
    from pausesvc import PauseWatcher

    ns = "benchwakeprof"
    client = AsyncPauseClient(url, namespace=ns, holder="bench")
    async with PauseWatcher(url, namespace=ns) as w:
        g = await client.pause("A")
        await w.wait_revision(g.revision, timeout=10)
        done: list[float] = []

        async def one() -> None:
            await w.wait_unpaused("A", timeout=60)
            done.append(time.monotonic())

        tasks = [asyncio.create_task(one()) for _ in range(waiters)]
        await asyncio.sleep(0.5)
        t_event: list[float] = []
        w.add_listener(lambda *a: t_event.append(time.monotonic()))
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        await client.resume("A", token=g.token)
        await asyncio.gather(*tasks)
        prof.disable()
    await client.aclose()
    t0 = t_event[0] if t_event else min(done)
    xs = sorted(d - t0 for d in done)
    return {
        "waiters": waiters,
        # under cProfile (slower than unprofiled): the wake-up figures are scenario 3's
        "profiled_p50_ms": 1e3 * xs[len(xs) // 2],
        "profiled_p99_ms": 1e3 * xs[int(0.99 * (len(xs) - 1))],
        "profile": profile_top(prof),
    }


async def run(url: str, cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t = time.monotonic()
    n, rounds = cfg.get("micro_n", 5000), cfg.get("micro_rounds", 7)
    out["gate_micro"] = await gate_micro(url, n, rounds)
    log.info(
        "profiles: gate_micro %.1f us (%.1fs)", out["gate_micro"]["cost_us_median"], time.monotonic() - t
    )
    from bench._procs import loop_names

    if "uvloop" in loop_names():
        out["gate_micro_uvloop"] = await gate_micro_on(url, "uvloop", n, rounds)
        log.info("profiles: gate_micro on uvloop %.1f us", out["gate_micro_uvloop"]["cost_us_median"])
    out["cli"] = await asyncio.to_thread(cli, url, cfg.get("cli_runs", 7))
    log.info("profiles: cli status / import redis = %.2fx", out["cli"]["ratio_median"])
    out["imports_vllm_plugin_ms"] = await asyncio.to_thread(_importtime, "pausesvc_vllm")
    changes = cfg.get("profile_changes", 300)
    out["gate_process"] = await gate_process(url, changes, drain=False)
    out["gate_process_drain"] = await gate_process(url, max(20, changes // 3), drain=True)
    out["wake"] = await wake(url, cfg.get("wake_profile_waiters", 10000))
    log.info("profiles done in %.1fs", time.monotonic() - t)
    return out
