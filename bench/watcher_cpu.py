"""CPU per event per view of many watchers in ONE process, and the time until all applied it.

    python bench/watcher_cpu.py [--views 200] [--events 300]

An embedded Redis; ``--views`` real ``PauseWatcher``s (each its own connection and view) on
one event loop; a controller in the same loop pauses and resumes one adapter ``--events``
times, each time waiting until every view's listener saw the change. Reports the median time
from the call to the last view, and the process's CPU per event per view (the controller's
call included: compare figures of this script only).
It is how the watcher's read mode was compared (a blocking read vs polling with a timer per
read: bench/notes.md). Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pausesvc import AsyncPauseClient, EmbeddedRedis, PauseWatcher


class _Tally:
    """Set ``done`` when every view applied the change it waits for (a listener per view)."""

    def __init__(self, views: int) -> None:
        self.views, self.count, self.want = views, 0, True
        self.done = asyncio.Event()

    def arm(self, paused: bool) -> None:
        self.count, self.want = 0, paused
        self.done.clear()

    def listener(self, name: str, state: object, event: object) -> None:
        if (state is not None) == self.want:
            self.count += 1
            if self.count == self.views:
                self.done.set()


async def measure(url: str, views: int, events: int) -> dict[str, Any]:
    tally = _Tally(views)
    watchers = [PauseWatcher(url, namespace="watcher-cpu") for _ in range(views)]
    for w in watchers:
        await w.start()
        w.add_listener(tally.listener)
    for w in watchers:
        await w.wait_synced(30)
    async with AsyncPauseClient(url, namespace="watcher-cpu", holder="bench") as c:
        await asyncio.sleep(1.0)
        seconds: list[float] = []
        cpu = 0.0
        token = ""
        for i in range(events):
            tally.arm(i % 2 == 0)
            c0, t0 = time.process_time(), time.perf_counter()
            if i % 2 == 0:
                token = (await c.pause("a")).token
            else:
                await c.resume("a", token=token)
            await asyncio.wait_for(tally.done.wait(), 30)
            seconds.append(time.perf_counter() - t0)
            cpu += time.process_time() - c0
            await asyncio.sleep(0.01)
    for w in watchers:
        await w.aclose()
    return {
        "views": views,
        "events": events,
        "to_all_ms_p50": round(statistics.median(seconds) * 1e3, 2),
        "cpu_us_per_event_per_view": round(cpu / events / views * 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=200)
    ap.add_argument("--events", type=int, default=300)
    args = ap.parse_args()
    with EmbeddedRedis() as redis:
        print(json.dumps(asyncio.run(measure(redis.url, args.views, args.events))))


if __name__ == "__main__":
    main()
