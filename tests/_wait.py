"""``until()``: wait for a condition instead of sleeping for a guess (tests/ is on sys.path)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(
    pred: Callable[[], object | Awaitable[object]], timeout: float = 5.0, every: float = 0.01
) -> None:
    """Return as soon as ``pred()`` (sync, or a coroutine function) is true; fail at ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout:g}s")
        await asyncio.sleep(every)
