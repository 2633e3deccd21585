"""Small polling helpers: the fleet's views, measured heal times."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from reliability.harness.fleet import Fleet, Replica


async def status(rep: Replica, timeout: float = 2.0) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=timeout) as c:
        return (await c.get(rep.url + "/pausesvc/status")).json()  # type: ignore[no-any-return]


async def until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> float:
    """Poll an async or sync predicate; return the seconds it took; fail with ``what``."""
    t0 = time.monotonic()
    last: Any = None
    while True:
        try:
            res = pred()
            if asyncio.iscoroutine(res):
                res = await res
            if res:
                return time.monotonic() - t0
            last = res
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what} (last: {last!r})")
        await asyncio.sleep(step)


async def fleet_views(fleet: Fleet) -> list[dict[str, Any]]:
    return [await status(r) for r in fleet.live]


async def all_views(fleet: Fleet, pred: Callable[[dict[str, Any]], bool]) -> bool:
    views = await fleet_views(fleet)
    return bool(views) and all(pred(v) for v in views)
