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

from pausesvc import AdapterState, PauseEvent, PauseWatcher
from pausesvc_vllm._adapters import BaseNames, Target
from pausesvc_vllm._asgi import ASGIApp, Message, Receive, Scope, Send, send_unavailable
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
    """Serve one websocket through the gate: refused at connect while anything is paused, then
    closed (1013) as soon as its model is paused."""
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
    await _Socket(rt, base_names, blocked, first, receive, send, target).serve(app, scope, watcher)


class _Socket:
    """One admitted websocket: in flight until the app returns, revoked when its model is
    paused (then the app sees a disconnect and what it still sends is dropped)."""

    def __init__(
        self,
        rt: GateRuntime,
        base_names: BaseNames,
        blocked: Callable[[Target], str | None],
        first: Message,
        receive: Receive,
        send: Send,
        target: Target,
    ) -> None:
        self.rt = rt
        self.base_names = base_names
        self.blocked = blocked
        self.first: Message | None = first  # the connect event, for the app's first receive()
        self.real_receive = receive
        self.real_send = send
        #: resolved with the paused name that revokes the socket
        self.revoked: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.admission = rt.admit(target, f"ws-{rt.next_request_id().decode()}")
        self.accepted = False
        self.closed = False

    async def serve(self, app: ASGIApp, scope: Scope, watcher: PauseWatcher) -> None:
        """Run the app on this socket; close it (1013) and give the app :data:`CLOSE_GRACE_S`
        to return once it is revoked."""
        listener = self.on_change
        watcher.add_listener(listener)
        task = asyncio.ensure_future(app(scope, self.receive, self.send))
        try:
            await asyncio.wait((task, self.revoked), return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await self._close(task)
            await task
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        finally:
            watcher.remove_listener(listener)
            self.rt.finish(self.admission)
            if not self.revoked.done():
                self.revoked.cancel()

    async def _close(self, task: asyncio.Future[None]) -> None:
        """Revoked while the app runs: close the socket if it is open, cancel the app if it
        does not return within the grace period."""
        why = self.revoked.result()
        if self.accepted and not self.closed:
            self.closed = True
            self.rt.stats.rejections += 1
            with contextlib.suppress(OSError, RuntimeError):
                await self.real_send(
                    {
                        "type": "websocket.close",
                        "code": TRY_AGAIN_LATER,
                        "reason": f"adapter {why!r} is paused"[:120],
                    }
                )
        done, _ = await asyncio.wait({task}, timeout=CLOSE_GRACE_S)
        if not done:
            task.cancel()

    def revoke(self, why: str) -> None:
        if not self.revoked.done():
            self.revoked.set_result(why)

    def on_change(self, name: str, state: AdapterState | None, ev: PauseEvent | None) -> None:
        """Watcher listener: a pause of the socket's model revokes it."""
        if state is not None and self.admission.matches(name):
            now = self.blocked(self.admission.target)
            if now is not None:
                self.revoke(now)

    async def send(self, message: Message) -> None:
        """The app's ``send``."""
        if self.closed:
            return  # the gate closed the socket: what the app still sends goes nowhere
        kind = message.get("type")
        if kind == "websocket.accept":
            self.accepted = True
        elif kind in ("websocket.close", "websocket.http.response.start"):
            self.closed = True
        await self.real_send(message)

    async def receive(self) -> Message:
        """The app's ``receive``: the connect event, then the client's messages until the
        socket is revoked (then a disconnect with code 1013)."""
        if self.first is not None:
            first, self.first = self.first, None
            return first
        if self.revoked.done():
            return _revoked()
        recv = asyncio.ensure_future(self.real_receive())
        try:
            await asyncio.wait((recv, self.revoked), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not recv.done():
                recv.cancel()
        if not recv.done() or recv.cancelled():
            return _revoked()
        return self._admit(recv.result())

    def _admit(self, message: Message) -> Message:
        """A client message, or a disconnect if its model is paused (it must not reach vLLM);
        a ``session.update`` naming a model moves the socket to that model."""
        if message.get("type") == "websocket.receive":
            model = _session_model(message)
            if model is not None:
                self.admission.target = Target(self.base_names, names=(model,))
            now = self.blocked(self.admission.target)
            if now is not None:
                self.revoke(now)
                return _revoked()
        return message


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


def _revoked() -> Message:
    """What the app receives once the gate closed its socket."""
    return {"type": "websocket.disconnect", "code": TRY_AGAIN_LATER}


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
        await send_unavailable(send, "adapter_paused", message, retry_after, websocket=True, adapter=name)
        return
    await send({"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": message[:120]})
