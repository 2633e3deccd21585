"""The gate: pure ASGI middleware in front of vLLM's OpenAI server.

    python -m vllm.entrypoints.openai.api_server ... --middleware pausesvc_vllm.PauseGateMiddleware

For a POST to a generation path it reads the body (capped, with a deadline), takes the adapter
from the body's top-level ``"model"``, and asks the process's :class:`~pausesvc.PauseWatcher`
(memory only). Not paused: the request is admitted (recorded as in flight) and the buffered body
is handed to vLLM once; every later ``receive()`` goes to the real one and every response message
goes straight to the real ``send``. Paused: held until resume (or 503 ``adapter_paused`` at the
deadline, or at once with the ``reject`` policy); a client that leaves while held is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from pausesvc import GLOBAL, InvalidInputError, Settings, validate_name
from pausesvc_vllm._asgi import (
    ASGIApp,
    BodyError,
    Message,
    PathMatcher,
    Receive,
    Scope,
    Send,
    error_body,
    read_body,
    replaying_receive,
    route_path,
    send_json,
)
from pausesvc_vllm._endpoints import OWN_PREFIXES, handle_own
from pausesvc_vllm._runtime import GateRuntime

__all__ = ["PauseGateMiddleware"]

logger = logging.getLogger("pausesvc_vllm")

_REQUEST_ID = b"x-request-id"


class PauseGateMiddleware:
    """Per-adapter pause gate, in-flight drain and SkyRL endpoints for one vLLM API server.

    vLLM constructs it as ``cls(app)``: configuration comes from ``PAUSESVC_*`` variables
    (:class:`pausesvc.Settings`); ``settings=`` is for tests and embedding.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or Settings()
        if self.settings.redis_url is None:
            raise InvalidInputError(
                "the pausesvc gate needs PAUSESVC_REDIS_URL (the Redis holding the pause state)",
                field="redis_url",
            )
        self.matches = PathMatcher([*self.settings.gate_paths, *self.settings.gate_extra_paths])
        self.runtime = GateRuntime(self.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        self.runtime.bind(scope)
        path = route_path(scope)
        if path.startswith(OWN_PREFIXES):
            await self.runtime.start()
            if await handle_own(self.runtime, path, scope, receive, send):
                return
        if scope.get("method") != "POST" or not self.matches(scope):
            await self.app(scope, receive, send)
            return
        await self._gate(scope, receive, send)

    # -- lifespan: start with the server, leave the registry on shutdown ------------------------
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.runtime.bind(scope)

        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.runtime.start()
                except Exception:  # the gate then starts on the first request
                    logger.exception("pausesvc gate: start at lifespan startup failed")
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.runtime.aclose()
                except Exception:
                    logger.exception("pausesvc gate: shutdown failed")
            return message

        await self.app(scope, wrapped, send)

    # -- the gate ----------------------------------------------------------------------------------
    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt, s = self.runtime, self.settings
        await rt.start()
        try:
            body = await read_body(receive, scope, max_bytes=s.gate_max_body_bytes,
                                   timeout=s.gate_body_timeout_s)
        except BodyError as exc:
            if exc.status == 413:
                rt.stats.too_large += 1
            elif exc.status == 408:
                rt.stats.body_timeouts += 1
            if exc.status:
                await send_json(send, exc.status, error_body(exc.code, exc.message))
            return
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            # vLLM's own validation answers it (no engine request can come of it)
            await self.app(scope, replaying_receive(body, receive), send)
            return

        model = data.get("model")
        adapter = model if isinstance(model, str) else ""
        # what to check: the adapter, or only `*` for a request naming no (or no valid) model
        try:
            name = validate_name(adapter) if adapter else GLOBAL
        except InvalidInputError:
            name = GLOBAL

        held = _Held()
        if not rt.admissible(name):
            outcome = await self._hold(name, adapter, receive, held)
            if outcome == "gone":
                rt.stats.dropped += 1
                logger.info("pausesvc gate: client left while held for %r", adapter)
                return
            if outcome != "ok":
                rt.stats.rejections += 1
                if outcome == "timeout":
                    rt.stats.hold_timeouts += 1
                await self._paused_response(send, adapter or name, outcome)
                return
            rt.stats.released += 1

        # admitted: from here to the app call there is no await (a pause landing now sees it)
        base, scope = _ensure_request_id(scope, data)
        admission = rt.admit(adapter, base)
        try:
            await self.app(scope, replaying_receive(body, receive, held.pending, held.recv), send)
        finally:
            rt.finish(admission)
            if held.recv is not None:
                held.recv.cancel()  # the app is done: nobody reads what the client sends now

    async def _hold(self, name: str, adapter: str, receive: Receive,
                    held: _Held) -> str:
        """Wait until ``name`` may go on. Returns 'ok', 'timeout', 'reject' or 'gone'.

        One task per held request (``receive()``, to see the client leave) and one future from
        the runtime, resolved for every request held on ``name`` at once; the deadline is a
        timer handle. Messages ``receive()`` returned meanwhile (and a still-running
        ``receive()``) are kept in ``held`` for the app: nothing is dropped or cancelled.
        """
        rt, s = self.runtime, self.settings
        watcher = rt.watcher
        assert watcher is not None
        if s.gate_policy == "reject" and watcher.synced_once:
            return "reject"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.gate_hold_timeout_s
        rt.stats.holds += 1
        rt.stats.held[adapter] += 1
        woken: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        timer = loop.call_at(deadline, wake)
        try:
            while True:
                if rt.admissible(name):
                    return "ok"
                if s.gate_policy == "reject" and watcher.synced_once:
                    return "reject"  # held only until the first sync told us
                if loop.time() >= deadline:
                    return "timeout"
                recv = held.recv
                if recv is None:
                    recv = held.recv = asyncio.ensure_future(receive())
                    recv.add_done_callback(wake)
                elif recv.done():
                    held.recv = None
                    message = recv.result()
                    if message["type"] == "http.disconnect":
                        return "gone"
                    held.pending.append(message)  # not ours to drop: the app gets it
                    continue
                if s.gate_policy == "reject":  # only waiting for the first sync
                    synced = asyncio.ensure_future(watcher.wait_synced())
                    synced.add_done_callback(wake)
                    try:
                        await woken
                    finally:
                        synced.cancel()
                else:
                    release = rt.hold(name)
                    release.add_done_callback(wake)
                    try:
                        await woken
                    finally:
                        rt.unhold(name, release)
                woken = loop.create_future()
        finally:
            timer.cancel()
            if held.recv is not None:
                held.recv.remove_done_callback(wake)
            rt.stats.held[adapter] -= 1
            if rt.stats.held[adapter] <= 0:
                del rt.stats.held[adapter]

    async def _paused_response(self, send: Send, adapter: str, outcome: str) -> None:
        s = self.settings
        if outcome == "timeout":
            message = (f"adapter {adapter!r} is paused; the request was held "
                       f"{s.gate_hold_timeout_s:g}s without a resume")
        else:
            message = f"adapter {adapter!r} is paused; retry after it is resumed"
        await send_json(
            send, 503,
            error_body("adapter_paused", message, type="service_unavailable", adapter=adapter,
                       retry_after_s=s.gate_retry_after_s),
            headers=[(b"retry-after", str(s.gate_retry_after_s).encode())],
        )


class _Held:
    """What a held request took from ``receive()`` while it waited, for the app."""

    __slots__ = ("pending", "recv")

    def __init__(self) -> None:
        self.pending: list[Message] = []
        self.recv: asyncio.Future[Message] | None = None


def _ensure_request_id(scope: Scope, data: dict[str, object]) -> tuple[str, Scope]:
    """The base id vLLM will derive the request's external ids from; adds ``X-Request-Id``
    when the client sent none (the body's ``request_id``, else a fresh one)."""
    headers = list(scope.get("headers", ()))
    for k, v in headers:
        if k.lower() == _REQUEST_ID:
            return v.decode("latin-1"), scope
    rid = data.get("request_id")
    raw = (rid if isinstance(rid, str) and rid else uuid.uuid4().hex).encode("latin-1", "replace")
    scope = dict(scope)
    scope["headers"] = [*headers, (_REQUEST_ID, raw)]
    return raw.decode("latin-1"), scope
