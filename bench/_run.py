"""``python -m bench [--quick] [--out DIR] [--only a,b] [--[no-]docs]``: run, save JSON, write docs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from bench._util import compile_bytecode, machine, versions
from pausesvc import EmbeddedRedis

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("latency", "wakeup", "gate", "memory", "faults", "fleet", "cluster", "netns", "profiles")
#: left out of --quick (minutes each, or root-only); select them with --only
SLOW = ("fleet", "cluster", "netns", "profiles")

FULL: dict[str, Any] = {
    "rs": [1, 4, 16, 64],
    "trials": 30,
    "cpu_events": 20,
    "ws": [100, 1000, 10000],
    "wake_rs": [4, 16],
    "wake_trials": 5,
    "gate_rounds": 12,
    "gate_seconds": 1.0,
    "gate_conc": 8,
    "held": 10000,
    "fault_rs": [4, 16],
    "fault_clients": ["skyrl", "httpx-per-replica", "raw"],
    "fleet_rs": [100, 300, 1000],
    "fleet_trials": 40,
    "fleet_cpu_events": 10,
    "fleet_profile_events": 10,
    "fleet_workers": 4,
    "cluster_r": 300,
    "netns_rs": [4, 16],
    "netns_trials": 20,
    "netns_cpu_events": 10,
}
QUICK: dict[str, Any] = {
    "rs": [1, 4],
    "trials": 4,
    "cpu_events": 2,
    "ws": [100, 1000],
    "wake_rs": [4],
    "wake_trials": 2,
    "gate_rounds": 2,
    "gate_seconds": 0.3,
    "gate_conc": 4,
    "held": 1000,
    "fault_rs": [4],
    "fault_clients": ["skyrl"],
    "fleet_rs": [10, 30],
    "fleet_trials": 3,
    "fleet_cpu_events": 2,
    "fleet_profile_events": 0,
    "fleet_workers": 2,
    "cluster_r": 20,
    "netns_rs": [2],
    "netns_trials": 3,
}


async def _scenario(name: str, url: str, cfg: dict[str, Any]) -> Any:
    if name == "latency":
        from bench import _latency

        return await _latency.run(url, cfg["rs"], cfg["trials"], cfg["cpu_events"])
    if name == "wakeup":
        from bench import _wakeup

        return await _wakeup.run(url, cfg)
    if name == "gate":
        from bench import _gate

        return await _gate.run(url, cfg)
    if name == "memory":
        from bench import _wakeup

        return await _wakeup.run_memory(url, cfg)
    if name == "faults":
        from bench import _faults

        return await _faults.run(url, cfg)
    if name == "fleet":
        from bench import fleet

        return await fleet.run(url, cfg)
    if name == "cluster":
        from bench import fleet

        return await fleet.run_cluster(url, cfg)
    if name == "netns":
        from bench import _netns

        return await _netns.run(url, cfg)
    if name == "profiles":
        from bench import _profiles

        return await _profiles.run(url, cfg)
    raise ValueError(name)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a <= 60 s smoke run (CI)")
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="directory for the JSON results (default bench/results)",
    )
    ap.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of {','.join(SCENARIOS)} "
        f"(default: all; --quick leaves out {','.join(SLOW)})",
    )
    ap.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="regenerate docs/benchmarks.md and docs/img/bench-*.png "
        "(default: on for a full run, off for --quick)",
    )
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="only regenerate the docs from a results file of an earlier run",
    )
    args = ap.parse_args(argv)
    if args.from_json is not None:
        from bench._report import write_docs

        write_docs(_with_vllm(json.loads(args.from_json.read_text()), args.out), ROOT / "docs")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("httpx", "pausesvc", "pausesvc_vllm", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("bench")
    cfg = QUICK if args.quick else FULL
    only = [s for s in args.only.split(",") if s] or [s for s in SCENARIOS if not (args.quick and s in SLOW)]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {','.join(SCENARIOS)}")
    command = "python -m bench" + (" --quick" if args.quick else "")
    if args.only:
        command += f" --only {args.only}"
    results: dict[str, Any] = {
        "meta": {
            "command": command,
            "argv": shlex.join(sys.argv),
            "mode": "quick" if args.quick else "full",
            "config": cfg,
            "machine": machine(),
            "bytecode": compile_bytecode(),
            "versions": versions(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
    }
    t_all = time.monotonic()
    with EmbeddedRedis() as server:
        results["meta"]["redis_port"] = server.port
        for name in only:
            t = time.monotonic()
            log.info("scenario %s ...", name)
            results[name] = asyncio.run(_scenario(name, server.url, cfg))
            log.info("scenario %s done in %.1fs", name, time.monotonic() - t)
    results["meta"]["seconds"] = round(time.monotonic() - t_all, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{results['meta']['mode']}.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True))
    log.info("results: %s (%.1fs)", path, results["meta"]["seconds"])
    if args.docs or (args.docs is None and not args.quick):
        from bench._report import write_docs

        write_docs(_with_vllm(results, args.out), ROOT / "docs")


def _with_vllm(results: dict[str, Any], out: Path) -> dict[str, Any]:
    """The results with ``bench/vllm_overhead.py``'s and ``bench/vllm_memory.py``'s
    (``vllm-overhead.json``, ``vllm-memory.json`` in ``out``, written by ``python
    bench/vllm_overhead.py > bench/results/vllm-overhead.json`` and the same for memory): real
    vLLM runs outside ``python -m bench`` (the vLLM venv), reported beside it."""
    for key, name in (("vllm_overhead", "vllm-overhead.json"), ("vllm_memory", "vllm-memory.json")):
        path = out / name
        if key not in results and path.exists():
            results = {**results, key: json.loads(path.read_text())}
    return results
