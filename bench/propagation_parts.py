"""Where a pause's propagation goes, beside the floor's: one pausesvc replica process and one raw
subscriber process, alternated, R = 1.

    .venv/bin/python bench/propagation_parts.py [--events 400] [--loop asyncio|uvloop]

For each pause/resume (and each floor PUBLISH) it splits the time from the call's start to the
replica's report into: the controller's Python before its command is written to the socket
(``prep``), from there until the replica's watcher starts handling the message (``arrive``:
Redis runs the script or the PUBLISH, the kernel wakes the replica, redis-py reads and parses
the reply) and the watcher's handling until the view changed and was reported (``handle``). The
floor's ``arrive + handle`` is one figure (a raw subscriber reports as it reads). Redis's own
time per command comes from ``INFO commandstats`` over the same calls. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aredis  # noqa: E402
import redis.asyncio.connection as rconn  # noqa: E402

from bench._procs import _until_term, floor_subscriber, run_on, start_gate  # noqa: E402
from bench._util import Collector, send_report, start_procs, stop_procs  # noqa: E402
from pausesvc import AsyncPauseClient, EmbeddedRedis  # noqa: E402

CHANNEL = "bench:parts"


def replica(url: str, port: int, ns: str, loop: str) -> None:
    """A gate runtime whose watcher notes when it starts handling a message; each change of
    the view is reported with that instant."""

    async def main() -> None:
        sock, addr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ("127.0.0.1", port)
        _, watcher = await start_gate(url, ns)
        entry = [0.0]
        dispatch = watcher._dispatch

        def timed(msg: Any) -> Any:
            entry[0] = time.monotonic()
            return dispatch(msg)

        watcher._dispatch = timed  # type: ignore[method-assign]
        last: dict[str, bool] = {}

        def on_change(name: str, state: Any, ev: Any) -> None:
            paused = watcher.is_paused(name)
            if last.get(name, False) != paused:
                last[name] = paused
                send_report(sock, addr, "p", 0, "1" if paused else "0", f"{entry[0]:.9f}")

        watcher.add_listener(on_change)
        send_report(sock, addr, "p", 0, "ready")
        await _until_term()

    run_on(loop, main())


_SENT: list[float] = []
_send_packed = rconn.AbstractConnection.send_packed_command


async def _spy(self: Any, command: Any, check_health: bool = True) -> None:
    _SENT.append(time.monotonic())
    await _send_packed(self, command, check_health)


def _us(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1e6, 1)


async def measure(url: str, events: int, loop: str) -> dict[str, Any]:
    col = await Collector.open()
    procs = start_procs(replica, [(url, col.port, "parts", loop)])
    procs += start_procs(floor_subscriber, [(0, url, col.port, CHANNEL)])
    rconn.AbstractConnection.send_packed_command = _spy  # type: ignore[method-assign]
    client = AsyncPauseClient(url, namespace="parts", holder="bench")
    pub = aredis.Redis.from_url(url)
    try:
        await col.expect("p", "ready", 1, timeout=60)
        await col.expect("f", "ready", 1, timeout=60)
        await pub.ping()
        g = await client.pause("A")
        await client.resume("A", token=g.token)
        await asyncio.sleep(0.5)
        await pub.config_resetstat()
        p: dict[str, list[float]] = {"prep": [], "arrive": [], "handle": [], "total": []}
        f: dict[str, list[float]] = {"prep": [], "arrive_and_handle": [], "total": []}
        for _ in range(events):
            for state in ("1", "0"):
                col.arm("p", state)
                _SENT.clear()
                t0 = time.monotonic()
                if state == "1":
                    g = await client.pause("A")
                else:
                    await client.resume("A", token=g.token)
                rep = (await col.expect("p", state, 1))[0]
                entry = float(rep.extra)
                p["prep"].append(_SENT[0] - t0)
                p["arrive"].append(entry - _SENT[0])
                p["handle"].append(rep.t - entry)
                p["total"].append(rep.t - t0)
                await asyncio.sleep(0.003)
                col.arm("f", state)
                _SENT.clear()
                t0 = time.monotonic()
                await pub.publish(CHANNEL, state)
                rep = (await col.expect("f", state, 1))[0]
                f["prep"].append(_SENT[0] - t0)
                f["arrive_and_handle"].append(rep.t - _SENT[0])
                f["total"].append(rep.t - t0)
                await asyncio.sleep(0.003)
        stats = await pub.info("commandstats")
        return {
            "command": f"python bench/propagation_parts.py --events {events} --loop {loop}",
            "events": 2 * events,
            "replica_loop": loop,
            "pausesvc_us": {k: _us(v) for k, v in p.items()},
            "floor_us": {k: _us(v) for k, v in f.items()},
            "ratio": round(statistics.median(p["total"]) / statistics.median(f["total"]), 2),
            "redis_us_per_call": {
                "evalsha (pause, resume)": stats.get("cmdstat_evalsha", {}).get("usec_per_call"),
                "publish": stats.get("cmdstat_publish", {}).get("usec_per_call"),
            },
            "redis_calls": {k.removeprefix("cmdstat_"): v.get("calls") for k, v in stats.items()},
        }
    finally:
        rconn.AbstractConnection.send_packed_command = _send_packed  # type: ignore[method-assign]
        await client.aclose()
        await pub.aclose()
        stop_procs(procs)
        col.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=400, help="pause+resume pairs (default 400)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the replica's loop")
    args = ap.parse_args()
    with EmbeddedRedis() as server:
        out = asyncio.run(measure(server.url, args.events, args.loop))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
