"""Small pure-ASGI helpers: types, JSON answers, path matching, a capped body reader.

No vLLM and no Starlette here: the gate must import (and be tested) without either.
"""

from __future__ import annotations

import asyncio
import json
import types
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, MutableMapping
from typing import Any

__all__ = [
    "ASGIApp",
    "BodyDeadlines",
    "BodyError",
    "Message",
    "PathMatcher",
    "Receive",
    "Scope",
    "Send",
    "error_body",
    "header_value",
    "normalize_path",
    "read_body",
    "replaying_receive",
    "route_path",
    "send_body_error",
    "send_bytes",
    "send_json",
    "send_not_allowed",
    "send_unavailable",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def normalize_path(path: str) -> str:
    """Collapse repeated slashes and drop trailing ones: ``//v1//completions/`` -> ``/v1/completions``."""
    parts = [p for p in path.split("/") if p]
    return "/" + "/".join(parts)


def route_path(scope: Scope) -> str:
    """The request path, normalized, with the ``root_path`` it is mounted under stripped."""
    path = normalize_path(scope.get("path", ""))
    root = normalize_path(scope.get("root_path", "") or "")
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"
    return path


class PathMatcher:
    """Does a request path fall under one of the configured paths?

    ``/v1/completions`` matches ``/v1/completions``, ``/v1/completions/``, ``//v1/completions``
    and sub-paths such as ``/v1/completions/x``; a ``root_path`` the server is mounted under
    (a proxy prefix) is stripped first. ``/v1/completionsX`` does not match.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = tuple(sorted({normalize_path(p) for p in paths if p.strip("/")}))

    def __call__(self, scope: Scope) -> bool:
        path = route_path(scope)
        return any(path == p or path.startswith(p + "/") for p in self.paths)


#: the message types of a whole response: over HTTP, and as the refusal of a websocket handshake
#: (the ``websocket.http.response`` extension)
_HTTP_RESPONSE = ("http.response.start", "http.response.body")
_WEBSOCKET_RESPONSE = ("websocket.http.response.start", "websocket.http.response.body")


async def send_bytes(
    send: Send,
    status: int,
    data: bytes,
    content_type: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    websocket: bool = False,
) -> None:
    """Answer ``data`` in one body message, with its Content-Type and Content-Length
    (``websocket``: as the refusal of a websocket handshake)."""
    start, body = _WEBSOCKET_RESPONSE if websocket else _HTTP_RESPONSE
    await send(
        {
            "type": start,
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": body, "body": data})


async def send_json(
    send: Send,
    status: int,
    body: object,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    websocket: bool = False,
) -> None:
    await send_bytes(
        send, status, json.dumps(body).encode(), b"application/json", headers, websocket=websocket
    )


async def send_unavailable(
    send: Send, code: str, message: str, retry_after_s: int, *, websocket: bool = False, **extra: object
) -> None:
    """503 with ``Retry-After``: not now (an adapter paused, the replica fenced, the hold caps)."""
    await send_json(
        send,
        503,
        error_body(code, message, type="service_unavailable", **extra, retry_after_s=retry_after_s),
        headers=[(b"retry-after", str(retry_after_s).encode())],
        websocket=websocket,
    )


async def send_not_allowed(send: Send, allow: str) -> None:
    """405 naming the one method the path answers."""
    await send_json(
        send, 405, error_body("method_not_allowed", f"use {allow}"), headers=[(b"allow", allow.encode())]
    )


def error_body(code: str, message: str, **extra: object) -> dict[str, Any]:
    """The gate's error shape (OpenAI-like, plus ``detail`` for SkyRL's callers)."""
    return {"error": {"code": code, "message": message, **extra}, "detail": message}


class BodyError(Exception):
    """The body could not be read: ``status`` says how to answer (0: the client left)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def header_value(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for k, v in scope.get("headers") or ():
        if k.lower() == name:
            return bytes(v)
    return None


def _content_length(scope: Scope) -> int | None:
    value = header_value(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


async def send_body_error(send: Send, exc: BodyError) -> None:
    """Answer a body that could not be read (nothing when the client left)."""
    if exc.status:
        await send_json(send, exc.status, error_body(exc.code, exc.message))


class _Deadline:
    """Cancels the current task at ``when`` (loop time) unless disarmed first: by its own timer
    handle, or by the one timer of a :class:`BodyDeadlines` it is queued in."""

    __slots__ = ("fired", "handle", "live", "owner", "task", "when")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, when: float, owner: BodyDeadlines | None = None
    ) -> None:
        self.task = asyncio.current_task(loop)
        self.when = when
        self.fired = False
        self.live = True
        self.owner = owner
        self.handle: asyncio.TimerHandle | None = None

    def fire(self) -> None:
        self.fired = True
        if self.task is not None:
            self.task.cancel()

    def expired(self) -> bool:
        """After a CancelledError: was it ours (then it is consumed), not the caller's?"""
        return self.fired and self.task is not None and self.task.uncancel() == 0

    def disarm(self) -> None:
        """The read is over (call once, after :meth:`expired`): the timer must not fire."""
        if not self.live:
            return
        self.live = False
        self.task = None
        if self.handle is not None:
            self.handle.cancel()
        elif self.owner is not None:
            self.owner.disarmed()


class BodyDeadlines:
    """The deadlines of one event loop's body reads behind ONE timer handle (instead of one
    ``call_at`` and its cancel per request). Deadlines arm in time order (one timeout for
    all), so the timer always waits for the oldest live one; a read that ends is only
    marked, and dropped from the queue's head later (or when the queue is compacted)."""

    __slots__ = ("_handle", "_live", "_loop", "_queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: deque[_Deadline] = deque()
        self._live = 0
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, when: float) -> _Deadline | None:
        """A deadline at ``when``; None when this queue cannot take it (another loop, or an
        earlier deadline than the last one queued): the caller then uses its own timer."""
        q = self._queue
        while q and not q[0].live:
            q.popleft()
        if loop is not self._loop or (q and when < q[-1].when):
            return None
        if len(q) > 64 and len(q) > 4 * self._live:  # a slow read at the head keeps the rest
            self._queue = q = deque(d for d in q if d.live)
        d = _Deadline(loop, when, self)
        q.append(d)
        self._live += 1
        if self._handle is None:
            self._handle = loop.call_at(when, self._fire)
        return d

    def disarmed(self) -> None:
        self._live -= 1

    def _fire(self) -> None:
        self._handle = None
        q, now = self._queue, self._loop.time()
        while q:
            d = q[0]
            if not d.live:
                q.popleft()
            elif d.when > now:
                self._handle = self._loop.call_at(d.when, self._fire)
                return
            else:
                q.popleft()
                d.live = False
                self._live -= 1
                d.fire()


async def read_body(
    receive: Receive,
    scope: Scope,
    *,
    max_bytes: int,
    timeout: float,
    declared: int | None = -1,
    deadlines: BodyDeadlines | None = None,
) -> bytes:
    """Read the whole request body, at most ``max_bytes``, within ``timeout`` seconds.

    Raises :class:`BodyError`: 413 over the cap (checked against Content-Length first),
    408 past the deadline, status 0 when the client disconnected. ``declared``: the
    Content-Length if the caller already looked (None: none), -1 to look here.
    ``deadlines``: the loop's shared deadline queue (else one timer handle for this read).
    """
    if declared == -1:
        declared = _content_length(scope)
    if declared is not None and declared > max_bytes:
        raise BodyError(
            413, "body_too_large", f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes"
        )
    # the usual case: the server has the whole body already and receive() returns it without
    # waiting - then no deadline is armed at all (nothing can be slow)
    message, pending = _receive_now(receive)
    if message is not None and message["type"] == "http.request" and not message.get("more_body", False):
        body = bytes(message.get("body", b""))
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
        return body
    return await _read_timed(receive, message, pending, max_bytes, timeout, deadlines)


def _too_large(max_bytes: int) -> BodyError:
    return BodyError(413, "body_too_large", f"request body exceeds the limit of {max_bytes} bytes")


async def _read_timed(
    receive: Receive,
    message: Message | None,
    pending: Awaitable[Message] | None,
    max_bytes: int,
    timeout: float,
    deadlines: BodyDeadlines | None,
) -> bytes:
    """:func:`read_body` once it has to wait: the first message (or the call still waiting for
    it), then the rest, all within ``timeout``."""
    loop = asyncio.get_running_loop()
    when = loop.time() + timeout
    deadline = deadlines.arm(loop, when) if deadlines is not None else None
    if deadline is None:
        deadline = _Deadline(loop, when)
        deadline.handle = loop.call_at(when, deadline.fire)
    try:
        chunks: list[bytes] = []
        size = 0
        while True:
            if pending is not None:
                message, pending = await pending, None
            elif message is None:
                message = await receive()
            kind, chunk, more = message["type"], message.get("body", b""), message.get("more_body", False)
            message = None
            if kind == "http.disconnect":
                raise BodyError(0, "disconnected", "client disconnected while sending the body")
            if kind != "http.request":
                continue
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            if chunk:
                chunks.append(chunk)
            if not more:
                return b"".join(chunks)
    except asyncio.CancelledError:
        if deadline.expired():
            raise BodyError(408, "body_timeout", f"request body not received within {timeout:g}s") from None
        raise
    finally:
        deadline.disarm()


def _receive_now(receive: Receive) -> tuple[Message, None] | tuple[None, Awaitable[Message]]:
    """Start ``receive()``: (its message, None) when it finished without waiting, else (None, an
    awaitable that goes on with that same call - await it once)."""
    call = receive()
    if type(call) is not types.CoroutineType:  # a Future or another awaitable: await it
        return None, call
    try:
        waits_on = call.send(None)
    except StopIteration as done:
        return done.value, None
    return None, _Resumed(call, waits_on)


class _Resumed:
    """A coroutine that already ran up to its first wait, as an awaitable: awaiting it hands
    what it waits on to the task and passes everything back, exactly as ``await call`` would
    have from the start (so a cancellation reaches it)."""

    __slots__ = ("_call", "_waits_on")

    def __init__(self, call: types.CoroutineType[Any, Any, Message], waits_on: Any) -> None:
        self._call = call
        self._waits_on = waits_on

    def __await__(self) -> Generator[Any, Any, Message]:
        call, value = self._call, self._waits_on
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # thrown in by the task: a cancellation (or close)
                try:
                    value = call.throw(exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
            else:
                try:
                    value = call.send(sent)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]


def cuttable_receive(receive: Receive, cut: asyncio.Future[None]) -> Receive:
    """``receive`` (a :func:`replaying_receive`) whose calls after the first - the body - also
    end with an ``http.disconnect`` once ``cut`` is done: vLLM cancels a request's handler on
    a disconnect (``with_cancellation``, a streaming response's listener), which is how a drain
    ends a request that aborting its engine requests does not end (beam search)."""
    first = True

    async def wrapped() -> Message:
        nonlocal first
        if first:
            first = False
            return await receive()
        if cut.done():
            return {"type": "http.disconnect"}
        real = asyncio.ensure_future(receive())
        try:
            await asyncio.wait((real, cut), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not real.done():
                real.cancel()
        if real.done() and not real.cancelled():
            return real.result()
        return {"type": "http.disconnect"}

    return wrapped


def replaying_receive(
    body: bytes,
    receive: Receive,
    pending: list[Message] | None = None,
    next_message: asyncio.Future[Message] | None = None,
) -> Receive:
    """Hand ``body`` over once (then any ``pending`` messages already taken from the real
    ``receive``, then the result of ``next_message``, a ``receive()`` already running), then
    delegate every later call to the real ``receive``.

    So a client disconnect still reaches the app (vLLM cancels the request on it), and no
    synthetic ``http.disconnect`` is ever made up here.
    """
    sent = False
    running = next_message

    async def wrapped() -> Message:
        nonlocal sent, running
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if pending:
            return pending.pop(0)
        if running is not None:
            fut, running = running, None
            return await fut
        return await receive()

    return wrapped
