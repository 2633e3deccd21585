"""What a held request gets at the gate's hold deadline (``gate_deadline_response``).

``"abort"``: the answer vLLM itself gives a request aborted before its first token - an
OpenAI-shaped completion (or chat completion) with zero new tokens and ``finish_reason:
"abort"``; a streaming request gets an SSE stream of one chunk with that finish reason, then
``data: [DONE]``. Clients that already loop on ``"abort"`` (SkyRL's ``sample_with_retry``, the
Tinker forwarding client) wait until the adapter is unpaused and resubmit with their tokens kept,
exactly as they do for a request the drain aborted. Only ``/v1/completions`` and
``/v1/chat/completions`` have such a shape; every other path gets the 503 ``adapter_paused``.

``"503"``: the 503 ``adapter_paused`` with ``Retry-After`` (``_gate._paused_response``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pausesvc_vllm._asgi import Send, send_json

__all__ = ["abort_kind", "send_abort"]

_COMPLETIONS = ("v1", "completions")
_CHAT = ("v1", "chat", "completions")
#: choices answered for ``n`` (vLLM caps ``n`` itself; a bogus n gets one choice)
_MAX_CHOICES = 128


def abort_kind(path: str) -> str | None:
    """``"completion"``, ``"chat"`` or None (no OpenAI abort shape for this path)."""
    segs = tuple(p for p in path.split("/") if p)
    if segs[-3:] == _CHAT:
        return "chat"
    if segs[-2:] == _COMPLETIONS:
        return "completion"
    return None


def _choices(data: dict[str, Any]) -> int:
    n = data.get("n", 1)
    if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= _MAX_CHOICES:
        return n
    return 1


def _logprobs(kind: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """Empty logprobs when they were asked for (a client reading them finds empty lists)."""
    if kind == "chat":
        return {"content": []} if data.get("logprobs") else None
    if data.get("logprobs") is None:
        return None
    return {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}


def _choice(kind: str, index: int, data: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index}
    if kind == "chat":
        key = "delta" if stream else "message"
        choice[key] = {"role": "assistant", "content": ""}
    else:
        choice["text"] = ""
    choice.update(logprobs=_logprobs(kind, data), finish_reason="abort", stop_reason=None)
    if not stream:
        choice["token_ids"] = []  # vLLM's return_token_ids field: nothing was decoded
    return choice


async def send_abort(send: Send, kind: str, data: dict[str, Any] | None, request_id: str, model: str) -> None:
    """Answer zero tokens with ``finish_reason: "abort"`` in the shape ``kind`` and the
    request's ``stream`` flag ask for."""
    data = data or {}
    stream = data.get("stream") is True
    created = int(time.time())
    chat = kind == "chat"
    obj = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
    head = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{request_id}",
        "object": obj,
        "created": created,
        "model": model,
    }
    choices = [_choice(kind, i, data, stream=stream) for i in range(_choices(data))]
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if not stream:
        await send_json(send, 200, {**head, "choices": choices, "usage": usage})
        return
    chunk = {**head, "choices": choices}
    opts = data.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage")
    if include_usage:
        chunk["usage"] = None
    events = [b"data: " + json.dumps(chunk).encode() + b"\n\n"]
    if include_usage:
        events.append(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    for ev in events:
        await send({"type": "http.response.body", "body": ev, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
