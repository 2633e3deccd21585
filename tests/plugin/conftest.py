"""Fixtures for the gate's unit tests: a recording ``send``, a scripted ``receive``, fake apps.

No vLLM here. The engine is faked only at the seam the gate uses (``app.state.engine_client``
with ``output_processor.request_states`` and ``abort``); the pause protocol is real Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from pausesvc_vllm import PauseGateMiddleware

from pausesvc import AsyncPauseClient, Settings


class Recorder:
    """A recording ``send``: every message with the time it was sent."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.changed = asyncio.Event()

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.times.append(time.monotonic())
        self.changed.set()

    @property
    def status(self) -> int | None:
        for m in self.messages:
            if m["type"] == "http.response.start":
                return int(m["status"])
        return None

    @property
    def headers(self) -> dict[str, str]:
        for m in self.messages:
            if m["type"] == "http.response.start":
                return {k.decode().lower(): v.decode() for k, v in m["headers"]}
        return {}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < n:
                self.changed.clear()
                await self.changed.wait()


class Receiver:
    """A scripted ``receive``: tests push messages; a call waits until one is there."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.calls = 0
        for m in messages:
            self.queue.put_nowait(m)

    def push(self, message: dict[str, Any]) -> None:
        self.queue.put_nowait(message)

    def disconnect(self) -> None:
        self.push({"type": "http.disconnect"})

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return await self.queue.get()


def http_scope(
    path: str = "/v1/completions",
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    app: Any = None,
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "app": app if app is not None else SimpleNamespace(state=SimpleNamespace()),
    }


def body_message(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


class StreamingApp:
    """Reads its body, then streams one chunk per ``step`` the test allows (SSE-like).

    Records every request it saw (scope, body, messages received after the body).
    """

    def __init__(self, chunks: int = 3) -> None:
        self.chunks = chunks
        self.calls: list[dict[str, Any]] = []
        self.step = asyncio.Semaphore(0)
        self.started = asyncio.Event()
        self.after_body: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            m = await receive()
            assert m["type"] == "http.request"
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        call = {"scope": scope, "body": body}
        self.calls.append(call)
        self.started.set()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(self.chunks):
            await self.step.acquire()
            await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class EchoApp:
    """Answers at once with what it was given; counts calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            m = await receive()
            if m["type"] != "http.request":
                break
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.calls.append({"scope": scope, "body": body})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def settings(redis_url: str, namespace: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        namespace=namespace,
        heartbeat_interval_s=0.2,
        gate_hold_timeout_s=10.0,
        gate_retry_after_s=7,
    )


@pytest.fixture
async def client(redis_url: str, namespace: str) -> AsyncIterator[AsyncPauseClient]:
    async with AsyncPauseClient(redis_url, namespace=namespace, holder="trainer") as c:
        yield c


@pytest.fixture
async def gate_factory(settings: Settings) -> AsyncIterator[Any]:
    made: list[PauseGateMiddleware] = []

    async def make(app: Any, **overrides: Any) -> PauseGateMiddleware:
        s = settings.model_copy(update=overrides) if overrides else settings
        mw = PauseGateMiddleware(app, settings=s)
        made.append(mw)
        await mw.runtime.start()
        assert mw.runtime.watcher is not None
        assert await mw.runtime.watcher.wait_synced(5.0)
        return mw

    yield make
    for mw in made:
        await mw.runtime.aclose()
