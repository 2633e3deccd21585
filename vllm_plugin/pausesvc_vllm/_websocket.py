"""Websockets through the gate (vLLM 0.32: ``/v1/realtime``, realtime transcription).

vLLM's realtime endpoint learns its model from a ``session.update`` event *after* the connect,
so at connect time the adapter cannot be told:

- **Connect**: refused while anything at all is paused (or before the gate's first sync): HTTP
  503 ``adapter_paused`` when the server supports the ``websocket.http.response`` extension
  (uvicorn does), else a ``websocket.close`` with code 1013 (try again later).
- **Open**: the socket counts as in flight, for every adapter until a ``session.update`` names
  its model, then for that model (the base model under any of its names). A ``session.update``
  naming a paused model, any client message while its model is paused, or a pause of its model
  landing (learned from the watcher) closes it with code 1013: the app gets a
  ``websocket.disconnect`` and its later messages are dropped. A drain of its model waits for the
  socket to be closed; an app that does not return within :data:`CLOSE_GRACE_S` is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from pausesvc import AdapterState, PauseEvent
from pausesvc_vllm._adapters import BaseNames, Target
from pausesvc_vllm._asgi import ASGIApp, Message, Receive, Scope, Send, error_body
from pausesvc_vllm._runtime import GateRuntime

__all__ = ["CLOSE_GRACE_S", "TRY_AGAIN_LATER", "serve_websocket"]

#: RFC 6455 close code 1013 "Try Again Later".
TRY_AGAIN_LATER = 1013
#: After the gate closed a socket, how long the app may take to return before it is cancelled.
CLOSE_GRACE_S = 5.0


async def serve_websocket(
    app: ASGIApp,
    rt: GateRuntime,
    base_names: BaseNames,
    blocked: Callable[[Target], str | None],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    if rt.watcher is None:
        await rt.start()
    watcher = rt.watcher
    assert watcher is not None
    first = await receive()
    if first.get("type") != "websocket.connect":  # not a handshake we know: let the app see it
        await app(scope, _replay(first, receive), send)
        return
    target = Target(base_names)  # the model comes later, in a session.update
    name = blocked(target)
    if name is not None:
        rt.stats.rejections += 1
        await _deny(scope, send, name, rt.settings.gate_retry_after_s)
        return
    loop = asyncio.get_running_loop()
    revoked: asyncio.Future[str] = loop.create_future()
    admission = rt.admit(target, f"ws-{rt.next_request_id().decode()}")
    accepted = closed = False

    def revoke(why: str) -> None:
        if not revoked.done():
            revoked.set_result(why)

    def on_change(name: str, state: AdapterState | None, ev: PauseEvent | None) -> None:
        if state is not None and admission.matches(name):
            now = blocked(admission.target)
            if now is not None:
                revoke(now)

    async def wrapped_send(message: Message) -> None:
        nonlocal accepted, closed
        if closed:
            return  # the gate closed the socket: what the app still sends goes nowhere
        kind = message.get("type")
        if kind == "websocket.accept":
            accepted = True
        elif kind in ("websocket.close", "websocket.http.response.start"):
            closed = True
        await send(message)

    sent_first = False

    async def wrapped_receive() -> Message:
        nonlocal sent_first
        if not sent_first:
            sent_first = True
            return first
        if revoked.done():
            return {"type": "websocket.disconnect", "code": TRY_AGAIN_LATER}
        recv = asyncio.ensure_future(receive())
        try:
            await asyncio.wait((recv, revoked), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not recv.done():
                recv.cancel()
        if not recv.done() or recv.cancelled():
            return {"type": "websocket.disconnect", "code": TRY_AGAIN_LATER}
        message = recv.result()
        if message.get("type") == "websocket.receive":
            model = _session_model(message)
            if model is not None:
                admission.target = Target(base_names, names=(model,))
            now = blocked(admission.target)
            if now is not None:  # its model is paused: this message must not reach vLLM
                revoke(now)
                return {"type": "websocket.disconnect", "code": TRY_AGAIN_LATER}
        return message

    watcher.add_listener(on_change)
    task = asyncio.ensure_future(app(scope, wrapped_receive, wrapped_send))
    try:
        await asyncio.wait((task, revoked), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            why = revoked.result()
            if accepted and not closed:
                closed = True
                rt.stats.rejections += 1
                with contextlib.suppress(OSError, RuntimeError):
                    await send(
                        {
                            "type": "websocket.close",
                            "code": TRY_AGAIN_LATER,
                            "reason": f"adapter {why!r} is paused"[:120],
                        }
                    )
            done, _ = await asyncio.wait({task}, timeout=CLOSE_GRACE_S)
            if not done:
                task.cancel()
        await task
    except asyncio.CancelledError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    finally:
        watcher.remove_listener(on_change)
        rt.finish(admission)
        if not revoked.done():
            revoked.cancel()


def _session_model(message: Message) -> str | None:
    """The model a realtime ``session.update`` event names ('' is the base model), or None
    (not such an event, or no string model: vLLM refuses it and the socket keeps its model)."""
    text = message.get("text")
    if text is None:
        raw = message.get("bytes")
        if not raw or b"session.update" not in raw:
            return None
        text = raw.decode("utf-8", "replace")
    elif "session.update" not in text:
        return None
    try:
        event: Any = json.loads(text)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("type") != "session.update":
        return None
    model = event.get("model")
    if model is None and isinstance(event.get("session"), dict):
        model = event["session"].get("model")
    return model if isinstance(model, str) else None  # vLLM refuses the event without one


def _replay(first: Message, receive: Receive) -> Receive:
    sent = False

    async def wrapped() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return first
        return await receive()

    return wrapped


async def _deny(scope: Scope, send: Send, name: str, retry_after: int) -> None:
    """Refuse a websocket handshake: 503 where the server can answer HTTP, else close 1013."""
    message = f"adapter {name!r} is paused; retry after it is resumed"
    if "websocket.http.response" in (scope.get("extensions") or {}):
        data = json.dumps(
            error_body(
                "adapter_paused", message, type="service_unavailable", adapter=name, retry_after_s=retry_after
            )
        ).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": data})
        return
    await send({"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": message[:120]})
