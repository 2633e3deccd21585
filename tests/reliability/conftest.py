"""Fixtures of the reliability suite: private redis-servers, replica fleets, figures.

Every process is started in its own process group and stopped by a finalizer, pass or fail.
Figures (heal times, counts) are printed and appended as JSON lines to
``$PAUSESVC_RELIABILITY_FIGURES`` (default ``/tmp/pausesvc-reliability-figures.jsonl``).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pausesvc import EmbeddedRedis
from reliability.harness.fleet import Fleet


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# `timeout` and CI runners stop pytest with SIGTERM: turn it into KeyboardInterrupt so the
# fixtures' finalizers still stop every redis-server and replica this suite started
signal.signal(signal.SIGTERM, _interrupt)

FULL = os.environ.get("PAUSESVC_RELIABILITY_FULL") == "1"
full_only = pytest.mark.skipif(not FULL, reason="minutes long: set PAUSESVC_RELIABILITY_FULL=1")
FIGURES = Path(os.environ.get("PAUSESVC_RELIABILITY_FIGURES", "/tmp/pausesvc-reliability-figures.jsonl"))


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    def record(**values: Any) -> None:
        entry = {
            "test": request.node.nodeid.split("::")[-1],
            "full": FULL,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **values,
        }
        print("FIGURES", json.dumps(entry))
        with open(FIGURES, "a") as f:
            f.write(json.dumps(entry) + "\n")

    return record


@pytest.fixture
def ns() -> str:
    return f"rel{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pausesvc-rel-") as d:
        yield Path(d)


@pytest.fixture
def redis_srv(workdir: Path) -> Iterator[EmbeddedRedis]:
    """A private redis-server (AOF on, fsync always) this test may kill and restart."""
    server = EmbeddedRedis(appendonly=True, dir=str(workdir), extra_args=["--appendfsync", "always"])
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def make_fleet(workdir: Path) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(redis_url: str, namespace: str, **kw: Any) -> Fleet:
        f = Fleet(redis_url, namespace, workdir, **kw)
        fleets.append(f)
        return f

    yield make
    for f in fleets:
        f.close()
