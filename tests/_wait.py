"""``until()``: wait for a condition instead of sleeping for a guess; ``attempts()``: retries of a
scenario a starved machine can spoil (tests/ is on sys.path)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable

#: how often a real-vLLM scenario that needs a stream still running when its pause lands is tried
ATTEMPTS = 8


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


async def attempts(n: int = ATTEMPTS) -> AsyncIterator[int]:
    """0, 1, ... n - 1, each retry a second after the last: a spell in which this 2-core machine
    (two CPU engines, the test run) starved one attempt passes before the next."""
    for i in range(n):
        if i:
            await asyncio.sleep(1.0)
        yield i
