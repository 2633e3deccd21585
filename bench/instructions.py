"""What one pause event costs a replica process, and what the gate adds to one unpaused
request, in instructions (callgrind).

    .venv/bin/python bench/instructions.py [--events 300] [--gap-ms 15] [--requests 2000]

Seconds per event or request move with the host (the gate's in-process cost per request
measured 9.5 and 4.8 us on two hosts at the same request path); the instructions a process
executes for the same inputs do not. Each process runs under ``valgrind --tool=callgrind``:

- ``per_event``: the whole process, at two event counts (100 and 100 + ``--events``; the
  shorter run idles for as long as the longer one's extra events last, so timers - heartbeats,
  keepalive PINGs - cancel out); instructions per event = difference / ``--events``. For the
  gate runtime (``gate``, the replica side of the vLLM plugin) and for the floor (``floor``: a
  bare redis-py asyncio subscriber that decodes each message, what ``python -m bench`` calls
  the raw-subscriber floor).
- ``parts``: the gate runtime with collection switched on only inside one function
  (``CALLGRIND_TOGGLE_COLLECT`` from a small C shim, compiled here with gcc): the watcher's
  handling of a message (``dispatch``: decoding, the view, the listeners), the decoding alone
  (``decode``: ``PauseEvent.from_json``), and the gate's listener (``listener``). The switch
  itself costs ~1,400 instructions per call, included.
- ``per_request``: ``--requests`` unpaused requests through the gate middleware in process
  (a no-op app, the request of ``python -m bench --only profiles``' *gate micro*), collected
  over the loop of requests only, and the same loop calling the app directly: the gate's
  instructions per request = the difference.

Events alternate pause / resume of one adapter, ``--gap-ms`` apart (the replica handles each
alone). Needs valgrind and gcc. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NS = "instr"
FLOOR_CHANNEL = "bench:instr"
BASE_EVENTS = 100
_SHIM = "#include <valgrind/callgrind.h>\nvoid toggle(void) { CALLGRIND_TOGGLE_COLLECT; }\n"
_PARTS = ("dispatch", "decode", "listener")


# -- the measured process (run under valgrind) ----------------------------------------------------
def _child(kind: str, url: str, events: int, idle_s: float, part: str, shim: str) -> None:
    async def gate() -> None:
        from bench._procs import start_gate

        _, watcher = await start_gate(url, NS)
        seen = [0]
        done = asyncio.Event()

        def count(name: str, state: Any, ev: Any) -> None:
            seen[0] += 1
            if seen[0] >= events:
                done.set()

        if part != "none":
            _collect_inside(watcher, part, ctypes.CDLL(shim).toggle)
        watcher.add_listener(count)
        print("ready", flush=True)
        await done.wait()
        await asyncio.sleep(idle_s)
        os._exit(0)  # valgrind writes its profile at exit; the teardown would only add noise

    async def floor() -> None:
        import redis.asyncio as aredis

        ps = aredis.Redis.from_url(url).pubsub()
        await ps.subscribe(FLOOR_CHANNEL)
        seen = 0
        async for msg in ps.listen():
            if msg["type"] == "subscribe":
                print("ready", flush=True)
            elif msg["type"] == "message":
                msg["data"].decode()
                seen += 1
                if seen >= events:
                    await asyncio.sleep(idle_s)
                    os._exit(0)

    asyncio.run(gate() if kind == "gate" else floor())


def _collect_inside(watcher: Any, part: str, toggle: Any) -> None:
    """Switch collection on for the calls of ``part`` only (collection starts off)."""

    def around(f: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            toggle()
            try:
                return f(*args)
            finally:
                toggle()

        return wrapped

    if part == "dispatch":
        watcher._dispatch = around(watcher._dispatch)
    elif part == "listener":
        watcher._listeners[:] = [around(f) for f in watcher._listeners]
    elif part == "decode":
        from pausesvc.protocol import models

        decode = models.PauseEvent.from_json
        models.PauseEvent.from_json = around(decode)  # type: ignore[method-assign]


def _child_requests(url: str, target: str, n: int, shim: str) -> None:
    """``n`` requests to the no-op app, directly or through a started, synced gate, with
    collection on for that loop only (nothing in it waits: no other task runs meanwhile)."""

    async def main() -> None:
        from pausesvc_vllm import PauseGateMiddleware

        from bench.fakeapp import noop_request
        from pausesvc import Settings

        app, receive, send, scope = noop_request()
        mw = PauseGateMiddleware(app, settings=Settings(redis_url=url, namespace=NS))
        await mw.runtime.start()
        assert mw.runtime.watcher is not None
        await mw.runtime.watcher.wait_synced(30)
        call = mw if target == "gated" else app
        for _ in range(200):  # warm: the interpreter specializes the code first
            await call(dict(scope), receive, send)
        toggle = ctypes.CDLL(shim).toggle
        toggle()
        for _ in range(n):
            await call(dict(scope), receive, send)
        toggle()
        os._exit(0)

    asyncio.run(main())


# -- the driver --------------------------------------------------------------------------------------
async def _run(
    url: str, kind: str, events: int, gap: float, tmp: Path, part: str, shim: str, idle: float = 0.0
) -> int:
    """Total instructions of one measured process that saw ``events`` events, then idled
    ``idle`` seconds (collected only inside ``part``, unless it is ``none``)."""
    from pausesvc import AsyncPauseClient

    out = tmp / f"cg.{kind}.{part}.{events}"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        *(["--collect-atstart=no"] if part != "none" else []),
        sys.executable,
        __file__,
        "--child",
        kind,
        url,
        str(events),
        str(idle),
        part,
        shim,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 300)
        if line.strip() != b"ready":
            raise RuntimeError(f"the measured {kind} process did not start (exit {proc.returncode})")
        await asyncio.sleep(1.0)
        import redis.asyncio as aredis

        async with AsyncPauseClient(url, namespace=NS, holder="bench") as client:
            pub = aredis.Redis.from_url(url)
            try:
                grant = None
                for i in range(events):
                    if kind == "floor":
                        await pub.publish(FLOOR_CHANNEL, "1" if i % 2 == 0 else "0")
                    elif grant is None:
                        grant = await client.pause("A")
                    else:
                        await client.resume("A", token=grant.token)
                        grant = None
                    await asyncio.sleep(gap)
                if grant is not None:
                    await client.resume("A", token=grant.token)
            finally:
                await pub.aclose()
        await asyncio.wait_for(proc.wait(), 300)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return _total(out)


async def _requests(url: str, target: str, n: int, tmp: Path, shim: str) -> int:
    """Instructions of ``n`` requests to ``target`` (``direct`` or ``gated``)."""
    out = tmp / f"cg.requests.{target}"
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--callgrind-out-file={out}"]
    cmd += [sys.executable, __file__, "--child-requests", url, target, str(n), shim]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    if await asyncio.wait_for(proc.wait(), 600) != 0:
        raise RuntimeError(f"the measured {target} request loop failed (exit {proc.returncode})")
    return _total(out)


def _total(out: Path) -> int:
    match = re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))


async def measure(url: str, events: int, gap: float, requests: int, tmp: Path, shim: Path) -> dict[str, Any]:
    idle = events * (gap + 0.002)  # about what the longer run's extra events take
    per_event = {}
    for kind in ("floor", "gate"):
        short = await _run(url, kind, BASE_EVENTS, gap, tmp, "none", str(shim), idle)
        long = await _run(url, kind, BASE_EVENTS + events, gap, tmp, "none", str(shim))
        per_event[kind] = round((long - short) / events)
    parts = {p: round(await _run(url, "gate", events, gap, tmp, p, str(shim)) / events) for p in _PARTS}
    direct = await _requests(url, "direct", requests, tmp, str(shim)) / requests
    gated = await _requests(url, "gated", requests, tmp, str(shim)) / requests
    return {
        "command": (
            f"python bench/instructions.py --events {events} --gap-ms {gap * 1000:g} --requests {requests}"
        ),
        "events": events,
        "instructions_per_event": per_event,
        "gate_over_floor": round(per_event["gate"] / per_event["floor"], 2),
        "gate_parts_per_event": parts,
        "requests": requests,
        "instructions_per_request": {
            "direct": round(direct),
            "gated": round(gated),
            "gate_adds": round(gated - direct),
        },
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, url, events, idle, part, shim = sys.argv[2:8]
        _child(kind, url, int(events), float(idle), part, shim)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child-requests":
        url, target, n, shim = sys.argv[2:6]
        _child_requests(url, target, int(n), shim)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300, help="events per measured run (default 300)")
    ap.add_argument("--gap-ms", type=float, default=15.0, help="ms between events (default 15)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per measured loop (default 2000)")
    args = ap.parse_args()
    missing = [t for t in ("valgrind", "gcc") if shutil.which(t) is None]
    if not Path("/usr/include/valgrind/callgrind.h").exists():
        missing.append("valgrind/callgrind.h")
    if missing:
        sys.exit(f"bench/instructions.py: needs valgrind and gcc (missing: {', '.join(missing)})")
    from pausesvc import EmbeddedRedis

    with tempfile.TemporaryDirectory() as d, EmbeddedRedis() as server:
        tmp = Path(d)
        shim = tmp / "libtoggle.so"
        (tmp / "toggle.c").write_text(_SHIM)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(shim), str(tmp / "toggle.c")], check=True)
        out = asyncio.run(measure(server.url, args.events, args.gap_ms / 1000, args.requests, tmp, shim))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
