"""Shared fixtures: the test session starts its OWN redis-server on a free port.

Nothing here touches the machine's Redis on 6379. Each test gets a fresh namespace, so tests
never see each other's state even though they share one server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from pausesvc import EmbeddedRedis


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
