"""The gate: pure ASGI middleware in front of vLLM's OpenAI server.

    python -m vllm.entrypoints.openai.api_server ... --middleware pausesvc_vllm.PauseGateMiddleware

Every POST (PUT, PATCH, DELETE) to a path not on the allow-list, and every websocket, is gated
(``_routes.py``: fail closed, a path vLLM adds next release included). It reads the body (capped,
with a deadline), takes the adapter(s) from every place vLLM reads one (``_adapters.py``: the
body's ``"model"``, JSON or form; the SageMaker adapter header; no model and every served name
of the base model are one name; a body it cannot read could be for any adapter), and asks the
process's :class:`~pausesvc.PauseWatcher` (memory only). When nothing at all is paused (the
usual case) the body is not parsed: the request is admitted with its body and the adapter is
parsed from it only if a drain asks. Not paused: the request is admitted (recorded as in flight)
and the buffered body is handed to vLLM once; every later ``receive()`` goes to the real one and
every response message goes straight to the real ``send``. Paused: held until resume (at the deadline:
zero tokens with ``finish_reason: "abort"``, or a 503 ``adapter_paused``, per
``gate_deadline_response``, ``_deadline.py``; at once 503 with the ``reject`` policy); a client
that leaves while held is dropped.
Holding is capped (requests and body bytes, per adapter and per process: 503 ``hold_capacity``
beyond), and a request vLLM will refuse for its API key is handed to vLLM (401) unheld.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pausesvc import GLOBAL, InvalidInputError, Settings
from pausesvc_vllm._adapters import (
    SAGEMAKER_ADAPTER_HEADER,
    SAGEMAKER_INVOCATIONS_PATH,
    BaseNames,
    Target,
    is_stepwise,
)
from pausesvc_vllm._asgi import (
    ASGIApp,
    BodyError,
    Message,
    Receive,
    Scope,
    Send,
    cuttable_receive,
    read_body,
    replaying_receive,
    route_path,
    send_body_error,
    send_json,
    send_not_allowed,
    send_unavailable,
)
from pausesvc_vllm._guard import lacks_vllm_key, warn_if_open
from pausesvc_vllm._routes import (
    LOAD_PATH,
    OWN_PREFIXES,
    REGISTER_PATH,
    SAFE_METHODS,
    GatedPaths,
    route_table,
)
from pausesvc_vllm._runtime import Admission, GateRuntime
from pausesvc_vllm._versions import VERSION_HEADER

__all__ = ["PauseGateMiddleware"]

logger = logging.getLogger("pausesvc_vllm")

_REQUEST_ID = b"x-request-id"
_CONTENT_LENGTH = b"content-length"
_CONTENT_TYPE = b"content-type"
#: The gate's route table (the wrapped app's routes and the decision for each), as JSON.
ROUTES_PATH = "/pausesvc/routes"
_ROUTE_CACHE = 1024


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
        s = self.settings
        self.paths = GatedPaths(
            [*s.gate_ungated_paths, *s.gate_extra_ungated_paths], forced=s.gate_extra_paths
        )
        #: the wrapped app's routes with the decision for each (read at lifespan startup)
        self.route_table: list[dict[str, Any]] = []
        self.runtime = GateRuntime(self.settings)
        self.base_names: BaseNames = self.runtime.base_names
        warn_if_open(self.settings)
        self._routes: dict[tuple[str, str], tuple[str | None, bool, str]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind == "websocket":
            self.runtime.bind(scope)
            if self.paths.path_gated(route_path(scope), scope):
                from pausesvc_vllm._websocket import serve_websocket  # on first use: few serve one

                await serve_websocket(
                    self.app, self.runtime, self.base_names, self._blocked, scope, receive, send
                )
            else:
                await self.app(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        rt = self.runtime
        if not rt.bound:
            rt.bind(scope)
        key = (scope.get("path", ""), scope.get("root_path", ""))
        route = self._routes.get(key)
        if route is None:
            route = self._route(scope, key)
        own, gated, kind = route
        if own is not None:
            await rt.start()
            if own == ROUTES_PATH:
                await self._answer_routes(scope, send)
                return
            from pausesvc_vllm._endpoints import handle_own  # imported on first use

            if await handle_own(rt, own, scope, receive, send):
                return
        if not gated or scope.get("method") in SAFE_METHODS:
            method = scope.get("method")
            if method in ("POST", "DELETE") and await self._adapter_change(scope, receive, send):
                return
            await self.app(scope, receive, send)
            return
        await self._gate(scope, receive, send, kind)

    async def _adapter_change(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """A direct load or unload of an adapter (vLLM's and SageMaker's routes): through the
        version guard (``_loads.py``). False: not one of those, nothing done."""
        path, method = route_path(scope), scope.get("method", "")
        if method == "POST" and path in (LOAD_PATH, REGISTER_PATH):
            from pausesvc_vllm._loads import direct_load  # imported on first use

            await direct_load(self.app, self.runtime, scope, receive, send)
            return True
        from pausesvc_vllm._loads import direct_unload, unload_target

        if unload_target(method, path):
            await direct_unload(self.app, self.runtime, scope, receive, send)
            return True
        return False

    def matches(self, scope: Scope) -> bool:
        """Is this ``http`` request gated (its method and path)?"""
        return self.paths.gated(scope)

    def _route(self, scope: Scope, key: tuple[str, str]) -> tuple[str | None, bool, str]:
        """(our own path, normalized, or None; is the path gated for a non-GET method?; its
        kind: ``invocations`` for SageMaker's, ``whole`` for one a drain ends whole, else
        ``""``), cached per raw path."""
        path = route_path(scope)
        own = path if path.startswith(OWN_PREFIXES) else None
        kind = "invocations" if path == SAGEMAKER_INVOCATIONS_PATH else "whole" if path in ENDED_WHOLE else ""
        route = (own, self.paths.path_gated(path, scope), kind)
        if len(self._routes) >= _ROUTE_CACHE:  # a client sending endless distinct paths
            self._routes.clear()
        self._routes[key] = route
        return route

    # -- lifespan: start with the server, leave the registry on shutdown ------------------------
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.runtime.bind(scope)

        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._learn_app(scope.get("app"))
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

    def _learn_app(self, app: Any) -> None:
        """At startup: the base model's names and the route table of the app we wrap."""
        if app is None:
            return
        if self.base_names.learn(app):
            logger.info(
                "pausesvc gate: base model names %s (canonical %r)",
                sorted(self.base_names.names),
                self.base_names.canonical,
            )
        table = route_table(app, self.paths)
        if table:
            self.route_table = table
            ungated = [
                f"{r['method']} {r['path']}"
                for r in table
                if not r["gated"] and r["method"] not in SAFE_METHODS
            ]
            gated = [f"{r['method']} {r['path']}" for r in table if r["gated"]]
            logger.info(
                "pausesvc gate: %d route(s) gated: %s; allow-listed: %s",
                len(gated),
                ", ".join(gated),
                ", ".join(ungated) or "-",
            )

    async def _answer_routes(self, scope: Scope, send: Send) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            await send_not_allowed(send, "GET")
            return
        if not self.route_table:
            self._learn_app(self.runtime.app)
        await send_json(
            send,
            200,
            {
                "routes": self.route_table,
                "ungated_paths": sorted(
                    {*self.settings.gate_ungated_paths, *self.settings.gate_extra_ungated_paths}
                ),
                "forced_paths": list(self.settings.gate_extra_paths),
                "base_model_names": sorted(self.base_names.names),
                "base_model": self.base_names.canonical,
            },
        )

    def _blocked(self, target: Target) -> str | None:
        """The first paused name that holds a request of ``target`` (None: it may go on).

        A target that cannot be told is held while anything at all is paused.
        """
        rt = self.runtime
        names = target.check()
        if names is None:
            if not rt.admissible(GLOBAL):
                return GLOBAL
            names = [*(rt.watcher.paused_names() if rt.watcher is not None else []), *rt.versions.pending]
        for name in names:
            if not rt.admissible(name):
                return name
        return None

    # -- the gate ----------------------------------------------------------------------------------
    async def _gate(self, scope: Scope, receive: Receive, send: Send, kind: str = "") -> None:
        """Read the body; admit the request at once when nothing is paused (the fast path: no
        body parse, nothing allocated for the hold), else park it until it may go on.
        ``kind`` (:meth:`_route`): ``invocations``, SageMaker's (vLLM runs it on the adapter
        header's adapter, or on the base model when there is none); ``whole``, a path whose
        aborted answer looks complete, so a drain ends it whole."""
        rt, s = self.runtime, self.settings
        if rt.watcher is None:
            await rt.start()
        if not self.base_names.learned and rt.app is not None and rt.may_retry_learning():
            self.base_names.learn(rt.app)  # (no app in the scope: nothing to learn from)
        headers = scope.get("headers") or ()
        declared, rid, ctype, header_adapters = _scan_headers(headers)
        try:
            body = await read_body(
                receive,
                scope,
                max_bytes=s.gate_max_body_bytes,
                timeout=s.gate_body_timeout_s,
                declared=declared,
                deadlines=rt.body_deadlines,
            )
        except BodyError as exc:
            await self._refuse_body(send, exc)
            return
        # it may carry a request_id to use as the request's id
        data = _as_object(body) if rid is None and b'"request_id"' in body else None
        # the fast path: nothing is paused, so the adapter does not matter now; the body is
        # parsed only if a drain (or a status) asks which adapter it was for
        fast = rt.open_to_all()
        target = Target(
            self.base_names,
            body=body,
            content_type=ctype,
            header=header_adapters,
            invocations=kind == "invocations",
            lazy=fast,
        )
        held = None if fast else _Held(scope, len(body))
        if held is not None and not await self._park(target, held, scope, receive, send, body, rid, data):
            return
        # admitted: from the last check (above, or the last one in _park, which returns with no
        # await after it) to rt.admit() there is no await (a pause landing now sees it)
        if rid is None:
            rid = (_request_id(data) if data is not None else None) or rt.next_request_id()
            scope = {**scope, "headers": [*headers, (_REQUEST_ID, rid)]}
        admission = rt.admit(target, rid.decode("latin-1"))
        replay = replaying_receive(body, receive) if held is None else held.replay(body, receive)
        guard = _FenceGuard(rt, send, admission)
        if kind == "whole" or is_stepwise(body):
            replay = self._cuttable(admission, guard, replay, scope, send, body, rid)
        try:
            await self.app(scope, replay, guard)
        finally:
            rt.finish(admission)
            if held is not None and held.recv is not None:
                held.recv.cancel()  # the app is done: nobody reads what the client sends now

    def _cuttable(
        self,
        admission: Admission,
        guard: _FenceGuard,
        replay: Receive,
        scope: Scope,
        send: Send,
        body: bytes,
        rid: bytes,
    ) -> Receive:
        """A beam search: one engine request per step, which no abort of engine requests ends.
        A drain ends it whole through ``admission.cut``: its ``receive()`` then reports a
        disconnect (vLLM cancels the handler) and the client gets :meth:`_cut_reply`."""
        admission.cut = asyncio.get_running_loop().create_future()
        guard.cut_reply = lambda: self._cut_reply(send, scope, body, rid, admission.adapter)
        return cuttable_receive(replay, admission.cut)

    async def _refuse_body(self, send: Send, exc: BodyError) -> None:
        """Answer a body that could not be read (nothing when the client left), and count it."""
        if exc.status == 413:
            self.runtime.stats.too_large += 1
        elif exc.status == 408:
            self.runtime.stats.body_timeouts += 1
        await send_body_error(send, exc)

    async def _park(
        self,
        target: Target,
        held: _Held,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        rid: bytes | None,
        data: dict[str, Any] | None,
    ) -> bool:
        """Hold the request until no name it may run on is paused. True: admit it now (returned
        right after the check that let it go, with no await since); False: it was answered
        (deadline, policy, caps), handed to vLLM unheld, or the client left."""
        waited = False
        # each wait ends on a resume of the name it waited for; then every name is checked again
        while (name := self._blocked(target)) is not None:
            adapter = target.display or name
            waited = True
            outcome = await self._hold(name, adapter, receive, held)
            if outcome != "ok":
                await self._end_hold(outcome, adapter, scope, receive, send, body, rid, data)
                return False
        if waited:
            self.runtime.stats.released += 1
        return True

    async def _end_hold(
        self,
        outcome: str,
        adapter: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        rid: bytes | None,
        data: dict[str, Any] | None,
    ) -> None:
        """Finish a request whose hold ended without a resume (``outcome`` of :meth:`_hold`)."""
        rt = self.runtime
        if outcome == "pass":  # vLLM refuses it (API key): not worth holding
            await self.app(scope, replaying_receive(body, receive), send)
            return
        if outcome == "gone":
            rt.stats.dropped += 1
            logger.info("pausesvc gate: client left while held for %r", adapter)
            return
        rt.stats.rejections += 1
        if outcome == "timeout":
            rt.stats.hold_timeouts += 1
            if await self._abort_reply(send, scope, body, rid, data, adapter):
                return
        await self._paused_response(send, adapter, outcome)

    async def _abort_reply(
        self,
        send: Send,
        scope: Scope,
        body: bytes,
        rid: bytes | None,
        data: dict[str, Any] | None,
        adapter: str,
    ) -> bool:
        """Answer as vLLM answers an aborted request - zero tokens, finish_reason "abort", what
        retry loops resubmit - where the path has such an answer and ``gate_deadline_response``
        is ``abort``; False: nothing sent."""
        from pausesvc_vllm._deadline import abort_kind, send_abort  # imported on first use

        kind = abort_kind(route_path(scope)) if self.settings.gate_deadline_response == "abort" else None
        if kind is None:
            return False
        await send_abort(
            send,
            kind,
            data if data is not None else _as_object(body),
            (rid or self.runtime.next_request_id()).decode("latin-1"),
            adapter,
        )
        return True

    async def _cut_reply(
        self, send: Send, scope: Scope, body: bytes, rid: bytes, adapter: str | None
    ) -> None:
        """What a client gets for a request a drain ended whole (a beam search): an aborted
        request's answer, else a 503 ``adapter_paused``."""
        name = adapter or GLOBAL
        if not await self._abort_reply(send, scope, body, rid, None, name):
            await send_unavailable(
                send,
                "adapter_paused",
                f"adapter {name!r} was paused while this request ran, and it was ended whole (a "
                "beam search cannot be aborted step by step; this path's aborted answer would "
                "look complete); retry after the resume",
                self.settings.gate_retry_after_s,
                adapter=name,
            )

    async def _hold(self, name: str, adapter: str, receive: Receive, held: _Held) -> str:
        """Wait until ``name`` may go on. Returns 'ok', 'timeout', 'reject', 'gone', 'full'
        (the hold caps are reached) or 'pass' (vLLM answers it 401: hand it over unheld).

        One task per held request (``receive()``, to see the client leave) and one future from
        the runtime, resolved for every request held on ``name`` at once; the deadline is a
        timer handle. Messages ``receive()`` returned meanwhile (and a still-running
        ``receive()``) are kept in ``held`` for the app: nothing is dropped or cancelled.
        """
        refused = self._refuse_hold(adapter, held)
        if refused is not None:
            return refused
        stats = self.runtime.stats
        stats.hold_began(adapter, held.size)
        try:
            return await self._wait(name, receive, held)
        finally:
            stats.hold_ended(adapter, held.size)

    def _refuse_hold(self, adapter: str, held: _Held) -> str | None:
        """Why the request is not held at all ('pass', 'reject', 'full'), or None: hold it."""
        rt, s = self.runtime, self.settings
        stats, size = rt.stats, held.size
        if s.gate_check_api_key and lacks_vllm_key(held.scope, rt.app):
            stats.unauthenticated += 1
            return "pass"
        watcher = rt.watcher
        assert watcher is not None
        if s.gate_policy == "reject" and watcher.synced_once:
            return "reject"
        # memory caps: what an anonymous client can pin here is bounded
        if (
            stats.held_now >= s.gate_max_held_requests
            or stats.held_bytes_now + size > s.gate_max_held_bytes
            or stats.held[adapter] >= s.gate_max_held_requests_per_adapter
            or stats.held_bytes[adapter] + size > s.gate_max_held_bytes_per_adapter
        ):
            stats.over_capacity += 1
            return "full"
        return None

    async def _wait(self, name: str, receive: Receive, held: _Held) -> str:
        """The wait of :meth:`_hold`: 'ok', 'reject', 'timeout' or 'gone'."""
        rt, s = self.runtime, self.settings
        watcher = rt.watcher
        assert watcher is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.gate_hold_timeout_s
        # the future this request waits on: resolved by the runtime on resume, by the client's
        # next message, or by the deadline timer - whichever comes first
        wake = _Waker()
        timer = loop.call_at(deadline, wake)
        try:
            while True:
                if rt.admissible(name):
                    return "ok"
                if s.gate_policy == "reject" and watcher.synced_once:
                    return "reject"  # held only until the first sync told us
                if loop.time() >= deadline:
                    return "timeout"
                message = held.collect()
                if message is not None:
                    if message["type"] == "http.disconnect":
                        return "gone"
                    continue
                await self._sleep(name, receive, held, wake)
        finally:
            timer.cancel()
            if held.recv is not None:
                held.recv.remove_done_callback(wake)

    async def _sleep(self, name: str, receive: Receive, held: _Held, wake: _Waker) -> None:
        """One wait of a held request, until ``wake`` is called: by the runtime on a resume of
        ``name`` (the ``reject`` policy: the first sync), the client's next message, the timer."""
        rt = self.runtime
        watcher = rt.watcher
        assert watcher is not None
        synced: asyncio.Future[bool] | None = None
        if self.settings.gate_policy == "reject":  # only waiting for the first sync
            woken = wake.future = asyncio.get_running_loop().create_future()
            synced = asyncio.ensure_future(watcher.wait_synced())
            synced.add_done_callback(wake)
        else:
            woken = wake.future = rt.hold(name)
        if held.recv is None:
            held.recv = asyncio.ensure_future(receive())
            held.recv.add_done_callback(wake)
        try:
            await woken
        finally:
            if synced is not None:
                synced.cancel()
            else:
                rt.unhold(name, woken)

    async def _paused_response(self, send: Send, adapter: str, outcome: str) -> None:
        s = self.settings
        code = "adapter_paused"
        if outcome == "timeout":
            message = (
                f"adapter {adapter!r} is paused; the request was held "
                f"{s.gate_hold_timeout_s:g}s without a resume"
            )
        elif outcome == "full":
            code = "hold_capacity"
            message = (
                f"adapter {adapter!r} is paused and this replica holds as many requests "
                "as it may; retry after it is resumed"
            )
        else:
            message = f"adapter {adapter!r} is paused; retry after it is resumed"
        await send_unavailable(send, code, message, s.gate_retry_after_s, adapter=adapter)


def _scan_headers(headers: Any) -> tuple[int | None, bytes | None, bytes | None, list[str] | None]:
    """(Content-Length, X-Request-Id, Content-Type, the SageMaker adapter header's values)."""
    declared: int | None = None
    rid: bytes | None = None
    ctype: bytes | None = None
    adapters: list[str] | None = None
    for k, v in headers:
        k = k.lower()
        if k == _CONTENT_LENGTH:
            declared = _int_or_none(v)
        elif k == _REQUEST_ID:
            if rid is None:  # vLLM reads the first (Starlette's Headers.get), so do we
                rid = v
        elif k == _CONTENT_TYPE:
            ctype = v
        elif k == SAGEMAKER_ADAPTER_HEADER:
            # every value: vLLM takes the first, a proxy in front may take another
            adapters = [*(adapters or ()), v.decode("latin-1").strip()]
    return declared, rid, ctype, adapters


#: Paths whose answer to an aborted request looks like a complete one (vLLM 0.32: the Responses
#: API says ``status: "completed"``, Anthropic's ``/v1/messages`` ``stop_reason: null``): a drain
#: ends such a request whole, as a beam search, so the client gets an answer it retries.
ENDED_WHOLE = frozenset({"/v1/responses", "/v1/messages"})


class _FenceGuard:
    """The ``send`` of an admitted request: forwards nothing while the process is fenced.

    A fenced process may have been dropped by the drain barrier (and its adapter swapped), so
    no token it decodes may reach a client: the first message sent while fenced ends the
    response (a 503 ``replica_fenced`` if it had not started, else an empty final body), and
    everything the app sends after that is dropped. A process resumed from SIGSTOP checks its
    proofs' age here before anything goes out.
    """

    __slots__ = ("admission", "cut", "cut_reply", "rt", "send", "started")

    def __init__(self, rt: GateRuntime, send: Send, admission: Admission) -> None:
        self.rt = rt
        self.send = send
        self.admission = admission
        self.started = False
        self.cut = False
        #: the answer to a request a drain ended whole, before its response started
        self.cut_reply: Callable[[], Awaitable[None]] | None = None

    def __call__(self, message: Message) -> Awaitable[None]:
        # a plain function on the fast path: it returns the real send's awaitable (no frame of
        # its own per message: a streamed response sends one message per token)
        rt = self.rt
        if self.cut or (time.monotonic() > rt.unfenced_until and rt.fenced):
            return self._cut(message)
        if self.admission.cut is not None and self.admission.cut.done():
            return self._cut_by_drain(message)
        if not self.started and message.get("type") == "http.response.start":
            self.started = True
            if rt.versions.loaded:  # some adapter was loaded at a version: which one made this?
                message = self._with_version(message)
        return self.send(message)

    def _with_version(self, message: Message) -> Message:
        """Which weights produced it (no header: not known); the body is parsed for its
        adapter only when a loaded adapter's name occurs in it."""
        loaded = self.rt.versions.loaded
        if self.admission.target.may_name(loaded):
            version = self.rt.versions.version(self.admission.adapter)
            if version is not None:
                headers = [*message.get("headers", ()), (VERSION_HEADER, version.encode())]
                return {**message, "headers": headers}
        return message

    async def _cut(self, message: Message) -> None:
        if self.cut:
            return
        self.cut = True
        self.rt.stats.fenced_cuts += 1
        self.rt.note_fenced()
        logger.warning(
            "pausesvc gate: fenced (no proven round trip to Redis): response "
            "cut before it could carry more output"
        )
        if not self.started:
            await send_unavailable(
                self.send,
                "replica_fenced",
                "this replica cannot prove it is in sync with the pause state; retry",
                self.rt.settings.gate_retry_after_s,
            )
        elif message.get("type") == "http.response.body":
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _cut_by_drain(self, message: Message) -> None:
        """A drain ended this request whole (a beam search): what the app still sends is
        replaced by a 503 ``adapter_paused`` (retry after the resume), or ends the response."""
        if self.cut:
            return
        self.cut = True
        if not self.started and self.cut_reply is not None:
            await self.cut_reply()
        elif message.get("type") == "http.response.body":
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})


class _Held:
    """What a held request took from ``receive()`` while it waited, for the app."""

    __slots__ = ("pending", "recv", "scope", "size")

    def __init__(self, scope: Scope, size: int) -> None:
        self.scope = scope  # the request's, for the API-key check
        self.size = size  # body bytes held, counted against the caps
        self.pending: list[Message] = []
        self.recv: asyncio.Future[Message] | None = None

    def replay(self, body: bytes, receive: Receive) -> Receive:
        """The app's ``receive``: the body, what was taken while held, then the real one."""
        return replaying_receive(body, receive, self.pending, self.recv)

    def collect(self) -> Message | None:
        """The message the running ``receive()`` returned, if it did (None: nothing yet). Kept
        for the app unless it is a disconnect; the next wait reads the next one."""
        recv = self.recv
        if recv is None or not recv.done():
            return None
        self.recv = None
        message = recv.result()
        if message["type"] != "http.disconnect":
            self.pending.append(message)  # not ours to drop: the app gets it
        return message


class _Waker:
    """Resolves the future a held request waits on now (a timer and done-callbacks call it)."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[None] | None = None

    def __call__(self, _: object = None) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(None)


def _int_or_none(value: bytes) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _request_id(data: dict[str, Any] | None) -> bytes | None:
    """The body's own ``request_id`` (a non-empty string), to use as the request's id."""
    given = data.get("request_id") if data is not None else None
    return given.encode("latin-1", "replace") if isinstance(given, str) and given else None


def _as_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None (unparseable or not an object)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
