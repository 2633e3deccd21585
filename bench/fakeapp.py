"""The fake replica app both designs gate: an OpenAI-style ``/v1/completions`` that streams.

Pure ASGI and deliberately cheap (no model, no sleep): what it costs is what the server costs,
so the gate's share of a request is as visible as it can be.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CHUNKS", "fake_openai_app", "noop_request"]

CHUNKS = 4
_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _chunk(i: int, model: str) -> bytes:
    return (
        b"data: "
        + json.dumps(
            {
                "id": "cmpl-bench",
                "object": "text_completion",
                "model": model,
                "choices": [
                    {"index": 0, "text": f"tok{i}", "finish_reason": None if i < CHUNKS - 1 else "stop"}
                ],
            }
        ).encode()
        + b"\n\n"
    )


_BODIES = [_chunk(i, "bench") for i in range(CHUNKS)]


async def fake_openai_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Streams CHUNKS server-sent events, then ``[DONE]``; 404 for anything but a POST to a
    generation path; answers lifespan."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # read (and drop) the body, as vLLM would parse it
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        more = msg.get("more_body", False)
    if scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    for body in _BODIES:
        await send({"type": "http.response.body", "body": body, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def noop_request(prompt: str = "x") -> tuple[Any, Any, Any, dict[str, Any]]:
    """The unpaused request the in-process gate measurements send: ``(app, receive, send,
    scope)`` - a no-op app, a ``receive`` that hands over the whole body at once, a ``send``
    that drops everything, and a ``/v1/completions`` scope (pass a copy per call). Nothing in
    it waits, so a loop of such calls runs no other task."""
    body = json.dumps({"model": "lora-a", "prompt": prompt, "max_tokens": 8}).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        return None

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "server": ("h", 1),
    }
    return app, receive, send, scope
