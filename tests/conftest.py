"""Shared fixtures: the test session starts its OWN redis-server on a free port.

Nothing here touches the machine's Redis on 6379. Each test gets a fresh namespace, so tests
never see each other's state even though they share one server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator

import pytest
import redis

from pausesvc import EmbeddedRedis

#: Skips that are a choice (a flag selects the long runs), never a missing tool.
_CHOSEN_SKIPS = ("PAUSESVC_RELIABILITY_FULL=1",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    """With ``PAUSESVC_NO_SKIPS=1`` (CI sets it) a test that skips because a tool is missing
    (Chromium, schemathesis, openssl ...) FAILS: a green CI run must have run it."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("PAUSESVC_NO_SKIPS") != "1" or not report.skipped:
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(chosen in reason for chosen in _CHOSEN_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped in CI (PAUSESVC_NO_SKIPS=1): {reason}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw_redis(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def fresh_redis() -> Iterator[EmbeddedRedis]:
    """A private redis-server for tests that kill or restart it."""
    server = EmbeddedRedis()
    server.start()
    yield server
    server.cleanup()
