"""Scenario 3 (wake-up of W waiters) and the memory/connection parts of scenario 6.

A waiter process holds W waiters on adapter A, paused. The controller resumes A; every waiter
records ``time.monotonic()`` when it runs again. Designs:

- ``pausesvc-wait``: W tasks in ``PauseWatcher.wait_unpaused("A")`` (the watcher of the gate);
- ``pausesvc-gate``: W requests held by ``PauseGateMiddleware``, driven through its ASGI interface
  (a client that stays connected; the inner app records the time);
- ``baseline-gate``: W requests held by the SkyRL gate (``asyncio.Event``) of a replica whose
  uvicorn receives the controller's ``resume_lora_requests``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import redis.asyncio as aredis

from bench._util import Collector, percentile, rss_bytes, start_procs, stop_procs, summary
from bench.baseline.fanout import FanoutController
from pausesvc import AsyncPauseClient

__all__ = ["run", "run_memory"]

log = logging.getLogger("bench")
DESIGNS = ("pausesvc-wait", "pausesvc-gate", "baseline-gate")
_BODY = json.dumps({"model": "A", "prompt": "x", "max_tokens": 4, "stream": True}).encode()


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "http_version": "1.1",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())],
        "server": ("127.0.0.1", 1),
        "client": ("127.0.0.1", 2),
    }


def waiter_proc(idx: int, url: str, ns: str, udp_port: int, conn: Any, design: str) -> None:
    """Child: hold W waiters per 'arm' command; report their wake-up times."""
    from bench._procs import start_gate, start_uvicorn
    from bench.baseline.app import SkyRLReplica

    async def main() -> None:
        loop = asyncio.get_running_loop()
        t_event = [0.0]
        times: list[float] = []

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            times.append(time.monotonic())  # the request reached the app: it proceeds

        if design == "baseline-gate":

            def on_change(name: str, paused: bool) -> None:
                if not paused:
                    t_event[0] = time.monotonic()

            app: Any = SkyRLReplica(inner, on_change=on_change)
            port = await start_uvicorn(app)
            watcher = None
        else:
            app, watcher = await start_gate(url, ns, app=inner)
            port = 0

            def listener(name: str, state: Any, ev: Any) -> None:
                if name == "A" and state is None and not t_event[0]:
                    t_event[0] = time.monotonic()

            watcher.add_listener(listener)
        sent = [False]

        async def receive_body() -> dict[str, Any]:
            # a client that sent its body and stays connected
            return {"type": "http.request", "body": _BODY, "more_body": False}

        async def stays() -> dict[str, Any]:
            return await loop.create_future()  # type: ignore[no-any-return]

        async def send(message: Any) -> None:
            sent[0] = True

        async def one_request() -> None:
            first = [True]

            async def receive() -> dict[str, Any]:
                if first[0]:
                    first[0] = False
                    return await receive_body()
                return await stays()

            await app(_scope(), receive, send)

        async def one_wait() -> None:
            assert watcher is not None
            await watcher.wait_unpaused("A", 120)
            times.append(time.monotonic())

        conn.send(("ready", port))
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd[0] == "stop":
                return
            w = cmd[1]
            if watcher is not None:
                while not watcher.is_paused("A"):  # noqa: ASYNC110 - polling the view is the point
                    await asyncio.sleep(0.001)
            times.clear()
            t_event[0] = 0.0
            rss0 = rss_bytes()
            make = one_wait if design == "pausesvc-wait" else one_request
            tasks = [asyncio.create_task(make()) for _ in range(w)]
            for _ in range(5):
                await asyncio.sleep(0.01 + w * 2e-6)
            rss1 = rss_bytes()
            conn.send(("armed", rss0, rss1))
            await asyncio.gather(*tasks)
            conn.send(("done", t_event[0], times))
            del tasks

    asyncio.run(main())


async def _recv(conn: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


class _Waiters:
    def __init__(self, url: str, design: str, r: int, ns: str, udp_port: int) -> None:
        from bench._util import ctx

        self.design, self.r = design, r
        self.conns = []
        argsets = []
        for i in range(r):
            a, b = ctx().Pipe()
            self.conns.append(a)
            argsets.append((i, url, ns, udp_port, b, design))
        self.procs = start_procs(waiter_proc, argsets)

    async def ready(self) -> list[int]:
        return [(await _recv(c))[1] for c in self.conns]

    async def trial(self, w_total: int, resume: Any) -> dict[str, Any]:
        per = [w_total // self.r + (1 if i < w_total % self.r else 0) for i in range(self.r)]
        for c, w in zip(self.conns, per, strict=True):
            c.send(("arm", w))
        armed = [await _recv(c) for c in self.conns]
        t0 = time.monotonic()
        await resume()
        done = [await _recv(c) for c in self.conns]
        after_event = sorted(t - d[1] for d in done for t in d[2])
        after_resume = sorted(t - t0 for d in done for t in d[2])
        return {
            "after_event": after_event,
            "after_resume": after_resume,
            "rss": [(a[1], a[2]) for a in armed],
            "per": per,
        }

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("stop",))
            except OSError:
                pass
        stop_procs(self.procs)


async def _measure(
    url: str, design: str, r: int, w: int, trials: int, col: Collector
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ns = f"wake{design[:2]}{r}{w}"
    wt = _Waiters(url, design, r, ns, col.port)
    client = AsyncPauseClient(url, namespace=ns, holder="bench")
    fan = None
    try:
        ports = await wt.ready()
        if design == "baseline-gate":
            fan = FanoutController("raw", ports)
        raw = []
        for _ in range(trials):
            if fan is not None:
                await fan.pause("A")
                res = await wt.trial(w, lambda: fan.resume("A"))
            else:
                g = await client.pause("A")
                res = await wt.trial(w, lambda g=g: client.resume("A", token=g.token))
            raw.append(res)
            await asyncio.sleep(0.05)
        out: dict[str, Any] = {"design": design, "W": w, "R": r}
        for key in ("after_event", "after_resume"):
            per_trial = [res[key] for res in raw]
            out[f"{key}_ms"] = {
                "p50": summary([percentile(x, 0.5) for x in per_trial], 1e3),
                "p99": summary([percentile(x, 0.99) for x in per_trial], 1e3),
                "max": summary([x[-1] for x in per_trial], 1e3),
            }
        return out, raw
    finally:
        if fan is not None:
            await fan.aclose()
        await client.aclose()
        wt.close()


async def run(url: str, cfg: dict[str, Any]) -> dict[str, Any]:
    col = await Collector.open()
    out: dict[str, Any] = {"one_process": [], "spread": []}
    try:
        for w in cfg["ws"]:
            for design in DESIGNS:
                res, _ = await _measure(url, design, 1, w, cfg["wake_trials"], col)
                out["one_process"].append(res)
                log.info(
                    "wake-up %s W=%d: p50 %.2f ms p99 %.2f ms after the event",
                    design,
                    w,
                    res["after_event_ms"]["p50"]["median"],
                    res["after_event_ms"]["p99"]["median"],
                )
        for r in cfg["wake_rs"]:
            for design in ("pausesvc-wait", "baseline-gate"):
                w = max(cfg["ws"])
                res, _ = await _measure(url, design, r, w, max(2, cfg["wake_trials"] // 2), col)
                out["spread"].append(res)
    finally:
        col.close()
    return out


#: what a vLLM API server process has imported before the gate (the honest baseline)
VLLM_PRELOADED = ("fastapi", "starlette.applications", "pydantic", "uvicorn")
#: the gate's imports, one step each, in dependency order: the RSS step of each is reported
RSS_STEPS = (
    "hiredis",
    "redis",
    "redis.asyncio",
    "pydantic_settings",
    "pausesvc.protocol",  # the package's own modules (names of the current layout; a step
    "pausesvc.client",  # that does not import is skipped)
    "pausesvc.watcher",
    "pausesvc",
    "pausesvc_vllm",
)

_RSS_SCRIPT = """
import asyncio, importlib, json, sys
from bench._util import rss_bytes
bare = rss_bytes()
for m in sys.argv[2].split(","):
    importlib.import_module(m)
base = rss_bytes()
before = set(sys.modules)
steps = []
for m in sys.argv[3].split(","):
    r0 = rss_bytes()
    new0 = set(sys.modules)
    try:
        importlib.import_module(m)
    except ImportError:
        continue
    steps.append([m, rss_bytes() - r0, len(set(sys.modules) - new0)])
imported = rss_bytes()
mods = sorted(set(sys.modules) - before)
async def main(url):
    from pausesvc import Settings
    from pausesvc_vllm import PauseGateMiddleware
    async def app(scope, receive, send):
        pass
    mw = PauseGateMiddleware(app, settings=Settings(redis_url=url, namespace="rss"))
    await mw.runtime.start()
    await mw.runtime.watcher.wait_synced(30)
    await asyncio.sleep(0.5)
    synced = rss_bytes()
    late = sorted(set(sys.modules) - before - set(mods))
    print(json.dumps({"bare": bare, "base": base, "imported": imported, "synced": synced,
                      "steps": steps, "modules": mods, "late_modules": late}))
    await mw.runtime.aclose()
asyncio.run(main(sys.argv[1]))
"""

#: RSS of importing the gate, per module ("self": its own exec minus the imports it made, the
#: way ``-X importtime`` splits time), after the same baseline imports: which modules it is
_TRACE_SCRIPT = """
import importlib, importlib.abc, json, sys
from bench._util import rss_bytes
for m in sys.argv[1].split(","):
    importlib.import_module(m)
own, stack = {}, []
class Meter(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for f in sys.meta_path:
            if f is self or not hasattr(f, "find_spec"):
                continue
            spec = f.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                inner = spec.loader.exec_module
                def exec_module(module, inner=inner, name=name):
                    stack.append(0)
                    r0 = rss_bytes()
                    try:
                        inner(module)
                    finally:
                        total = rss_bytes() - r0
                        children = stack.pop()
                        own[name] = own.get(name, 0) + total - children
                        if stack:
                            stack[-1] += total
                spec.loader.exec_module = exec_module
                return spec
            if spec is not None:
                return spec
        return None
sys.meta_path.insert(0, Meter())
import pausesvc_vllm
print(json.dumps(sorted(own.items(), key=lambda kv: -kv[1])[:30]))
"""

_CONN_SCRIPT = """
import asyncio, json, sys
from pausesvc import AsyncPauseClient
async def main(url, adapters, waiters):
    c = AsyncPauseClient(url, namespace="conns", holder="bench")
    tasks = [asyncio.create_task(c.wait_unpaused(f"a{i % adapters}", 60)) for i in range(waiters)]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    sys.stdin.readline()
    for t in tasks: t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await c.aclose()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


async def gate_rss(url: str, env: dict[str, str]) -> dict[str, Any]:
    """RSS a started, synced gate adds to a process that has imported what vLLM's API server
    imports first (FastAPI, Starlette, pydantic, uvicorn), and each import step's share."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RSS_SCRIPT,
        url,
        ",".join(VLLM_PRELOADED),
        ",".join(RSS_STEPS),
        stdout=subprocess.PIPE,
        env=env,
    )
    stdout, _ = await asyncio.wait_for(child.communicate(), 60)
    m = json.loads(stdout.decode().strip().splitlines()[-1])
    mb = 2**20
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _TRACE_SCRIPT, ",".join(VLLM_PRELOADED), stdout=subprocess.PIPE, env=env
    )
    traced, _ = await asyncio.wait_for(child.communicate(), 60)
    by_module = json.loads(traced.decode().strip().splitlines()[-1])
    return {
        "added_rss_mb": (m["synced"] - m["base"]) / mb,
        "added_rss_detail": (
            f"imports {(m['imported'] - m['base']) / mb:.1f} MB, "
            f"started and synced {(m['synced'] - m['imported']) / mb:.1f} MB; baseline: a process "
            f"that imported {', '.join(VLLM_PRELOADED)} first ({m['base'] / mb:.1f} MB, bare "
            f"Python {m['bare'] / mb:.1f} MB)"
        ),
        "rss_baseline_mb": m["base"] / mb,
        "rss_bare_mb": m["bare"] / mb,
        "rss_steps": [{"module": s, "mb": b / mb, "new_modules": n} for s, b, n in m["steps"]],
        "rss_modules": m["modules"],
        "rss_late_modules": m["late_modules"],
        "rss_by_module": [{"module": k, "mb": n / mb} for k, n in by_module],
    }


async def run_memory(url: str, cfg: dict[str, Any]) -> dict[str, Any]:
    col = await Collector.open()
    out: dict[str, Any] = {"held": [], "connections": []}
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    try:
        for design in ("pausesvc-gate", "baseline-gate"):
            _, raw = await _measure(url, design, 1, cfg["held"], 1, col)
            rss0, rss1 = raw[0]["rss"][0]
            out["held"].append(
                {
                    "design": design,
                    "held": cfg["held"],
                    "rss_mb_before": rss0 / 2**20,
                    "rss_mb_after": rss1 / 2**20,
                    "bytes_per_held": (rss1 - rss0) / cfg["held"],
                }
            )
        out.update(await gate_rss(url, env))
        r = aredis.Redis.from_url(url)
        # a paused adapter per name the waiters wait on
        c = AsyncPauseClient(url, namespace="conns", holder="bench")
        for i in range(1000):
            await c.pause(f"a{i}")
        await c.aclose()
        for adapters, waiters in ((1, 0), (10, 100), (1000, 10000)):
            before = len(await r.client_list())
            ps_before = len(await r.client_list(_type="pubsub"))
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CONN_SCRIPT,
                url,
                str(adapters),
                str(waiters),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            assert proc.stdout is not None and proc.stdin is not None
            await asyncio.wait_for(proc.stdout.readline(), 60)
            out["connections"].append(
                {
                    "adapters": adapters,
                    "waiters": waiters,
                    "connections": len(await r.client_list()) - before,
                    "pubsub": len(await r.client_list(_type="pubsub")) - ps_before,
                }
            )
            proc.stdin.write(b"\n")
            await proc.stdin.drain()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                log.warning("connection probe did not exit in 10 s; killed")
                proc.kill()
                await proc.wait()
        await r.aclose()
    finally:
        col.close()
    return out
