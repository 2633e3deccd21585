"""The fake replica app both designs gate: an OpenAI-style ``/v1/completions`` that streams.

Pure ASGI and deliberately cheap (no model, no sleep): what it costs is what the server costs,
so the gate's share of a request is as visible as it can be.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CHUNKS", "fake_openai_app"]

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
