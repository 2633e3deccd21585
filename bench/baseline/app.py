"""A SkyRL replica: per-adapter ``asyncio.Event`` flags, the submission gate, the endpoints.

Faithful to SkyRL PR #1666 (``vllm_server_actor.py``): the event is SET while the adapter runs
and CLEARED by ``abort_lora_requests``; the gate buffers the body, reads the top-level
``"model"``, and awaits the event if it exists and is clear. Two deliberate kindnesses so the
baseline is the strongest fan-out, not a strawman: the engine abort is a no-op (nothing is in
flight in these benchmarks) and there is no 5 s sleep anywhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

__all__ = ["SkyRLReplica"]

_GATED = ("/v1/completions", "/v1/chat/completions")
_OK = b'{"status": "ok"}'


class SkyRLReplica:
    """``SkyRLReplica(inner_app, on_change=cb)``: the ASGI app of one baseline replica.

    ``on_change(name, paused)`` is called the instant the flag changes (the benchmark's probe).
    """

    def __init__(
        self, app: Any, on_change: Callable[[str, bool], None] | None = None, delay: float = 0.0
    ) -> None:
        self.app = app
        self.paused_loras: dict[str, asyncio.Event] = {}
        self.on_change = on_change
        self.delay = delay  # a slow replica: answer control calls after this many seconds

    def _event(self, name: str) -> asyncio.Event:
        ev = self.paused_loras.get(name)
        if ev is None:
            ev = self.paused_loras[name] = asyncio.Event()
            ev.set()
        return ev

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith("/skyrl/v1/"):
            await self._endpoint(path, receive, send)
            return
        if scope["method"] != "POST" or path not in _GATED:
            await self.app(scope, receive, send)
            return
        # the submission gate (pure ASGI, body buffered whole, as in the PR)
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            model = None
        ev = self.paused_loras.get(model) if isinstance(model, str) else None
        if ev is not None and not ev.is_set():
            await ev.wait()
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # type: ignore[no-any-return]

        await self.app(scope, replay, send)

    async def _endpoint(self, path: str, receive: Any, send: Any) -> None:
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        try:
            body = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            await _json(send, 400, b'{"detail": "invalid JSON"}')
            return
        name = body.get("lora_name") if isinstance(body, dict) else None
        if not name:
            await _json(send, 400, b'{"detail": "\'lora_name\' required"}')
            return
        if self.delay:
            await asyncio.sleep(self.delay)
        if path == "/skyrl/v1/abort_lora_requests":
            ev = self._event(name)
            if ev.is_set():
                ev.clear()
                if self.on_change is not None:
                    self.on_change(name, True)
            await _json(send, 200, b'{"status": "ok", "aborted": [], "count": 0}')
        elif path == "/skyrl/v1/resume_lora_requests":
            ev = self._event(name)
            if not ev.is_set():
                ev.set()
                if self.on_change is not None:
                    self.on_change(name, False)
            await _json(send, 200, _OK)
        elif path == "/skyrl/v1/wait_lora_unpaused":
            ev = self._event(name)
            try:
                await asyncio.wait_for(ev.wait(), timeout=float(body.get("timeout_s", 60.0)))
                await _json(send, 200, b'{"paused": false}')
            except TimeoutError:
                await _json(send, 200, b'{"paused": true}')
        else:
            await _json(send, 404, b'{"detail": "not found"}')


async def _json(send: Any, status: int, data: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
