"""A REAL uvicorn server per test (in a thread, on a free port) against the session's real
redis-server, with a fresh namespace per test. Streaming is proven over real sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from pausesvc import Settings
from pausesvc.service import create_app


@dataclass
class Live:
    url: str
    settings: Settings
    redis_url: str
    namespace: str

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 10.0), **kw)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the real ``pausesvc`` CLI against this server's Redis and namespace."""
        env = {**os.environ, "PAUSESVC_REDIS_URL": self.redis_url, "PAUSESVC_NAMESPACE": self.namespace}
        proc = subprocess.run(
            [sys.executable, "-m", "pausesvc.cli", *args], env=env, capture_output=True, text=True, timeout=30
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"pausesvc {args} failed: {proc.stderr}")
        return proc


@contextlib.contextmanager
def run_server(settings: Settings, *, wait_ready: bool = True, **app_kw: Any) -> Iterator[str]:
    """Serve ``create_app(settings)`` with uvicorn in a thread; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings, **app_kw)
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    # ready = the watcher synced once
    while wait_ready and httpx.get(f"{url}/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("service not ready")
        time.sleep(0.02)
    try:
        yield url
    finally:
        app.state.svc.begin_shutdown()  # as `pausesvc serve` does on SIGTERM/SIGINT
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture
def make_live(redis_url: str, namespace: str) -> Iterator[Callable[..., Live]]:
    """``make_live(api_token=..., auth_reads=..., heartbeat_s=...)`` -> a running server."""
    stack = contextlib.ExitStack()

    def make(*, heartbeat_s: float = 15.0, max_wait_s: float | None = None, **overrides: Any) -> Live:
        settings = Settings(
            redis_url=redis_url,
            namespace=namespace,
            replica_timeout_s=overrides.pop("replica_timeout_s", 3.0),
            fence_bound_s=overrides.pop("fence_bound_s", 1.5),
            drain_timeout_s=overrides.pop("drain_timeout_s", 5.0),
            **overrides,
        )
        url = stack.enter_context(run_server(settings, heartbeat_s=heartbeat_s, max_wait_s=max_wait_s))
        return Live(url, settings, redis_url, namespace)

    with stack:
        yield make


@pytest.fixture
def live(make_live: Callable[..., Live]) -> Live:
    return make_live()


@pytest.fixture
def http(live: Live) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c
