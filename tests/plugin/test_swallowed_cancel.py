"""The gate's retry loops stop when cancelled even if redis-py turns the cancellation into a
connection error mid-command (the loops retry while Redis is "away": without the check, a
runtime's shutdown would leave them retrying for ever)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.exceptions as rexc
from pausesvc_vllm._runtime import GateRuntime, _PauseKey
from pausesvc_vllm._versions import VersionKeeper

from pausesvc import Settings


class _Replica:
    """Its Redis calls wait; the first cancellation that lands in one comes out as a lost
    connection (as redis-py can), later ones as themselves (so a failing test ends)."""

    def __init__(self) -> None:
        self.swallowed = False

    async def _call(self, *args: Any, **kwargs: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed = True
            raise rexc.ConnectionError("Connection closed by server.") from None

    acknowledge = report_version = _call


class _Watcher:
    def is_paused(self, name: str) -> bool:
        return True  # the view stays paused: only the cancellation can end the loop


async def _cancelled_in_time(coro: Any) -> bool:
    """Cancel the loop once: did it stop (within 3 s)? A loop that went on is cancelled again
    (then it stops: only the first cancellation is swallowed)."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=3)
    if task not in done:
        for _ in range(50):
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
            if task.done():
                break
        return False
    return task.cancelled()


async def test_a_drain_acknowledgement_stops_when_cancelled() -> None:
    rt = GateRuntime(Settings(redis_url="redis://127.0.0.1:1", namespace="swallow"))
    rt.replica = _Replica()  # type: ignore[assignment]
    rt.watcher = _Watcher()  # type: ignore[assignment]
    rt._ack_slots = asyncio.Semaphore(1)
    key = _PauseKey("e", 3, frozenset({"3-x"}))
    assert await _cancelled_in_time(rt._ack("lora-a", key, []))
    assert rt.stats.ack_errors == 0  # not counted as a failed acknowledgement


async def test_a_version_report_stops_when_cancelled() -> None:
    from pausesvc import DesiredVersion

    def spawn(coro: Any, name: str) -> asyncio.Task[None]:
        return asyncio.ensure_future(coro)

    async def drain(name: str, wanted: Any) -> None:
        return None

    replica = _Replica()
    keeper = VersionKeeper(lambda: None, lambda: replica, drain, spawn)  # type: ignore[arg-type]
    desired = DesiredVersion("lora-a", "v2", "/w/v2", {}, 7, 0.0)
    assert await _cancelled_in_time(keeper._report("lora-a", desired, "loaded", None, 1, lambda: True))
