"""Paths the gate answers itself: SkyRL's compatibility endpoints and the gate's own status.

    POST /skyrl/v1/abort_lora_requests  {"lora_name"}            pause fleet-wide (holder
         "skyrl", or "skyrl-anon" with no credential configured), wait until THIS process
         drained it -> {"status", "aborted", "count"}; not drained within drain_timeout_s:
         504 drain_timeout {"paused": true, "token", "in_flight"} and the pause STAYS
    POST /skyrl/v1/resume_lora_requests {"lora_name"}            release that hold -> {"status"}
    POST /skyrl/v1/wait_lora_unpaused   {"lora_name", "timeout_s"} long-poll -> {"paused"}
    GET  /pausesvc/status                                       this process's view, as JSON
    GET  /pausesvc/metrics                                      Prometheus text (optional dep)

The two mutating endpoints need the gate's credential when one is configured (401/403, see
``_guard``), can be switched off (404), and refuse cross-site calls (403); every SkyRL endpoint
needs ``Content-Type: application/json`` (415). Bad input is a 400 with a JSON body naming the
field; Redis being unreachable is a 503, Redis refusing this replica's user (ACL) a 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pausesvc import (
    DrainTimeoutError,
    InvalidInputError,
    NotHolderError,
    PauseError,
    RedisPermissionError,
    RedisUnavailableError,
    validate_name,
)
from pausesvc.replica import parse_wait_timeout
from pausesvc_vllm._asgi import (
    BodyError,
    Receive,
    Scope,
    Send,
    error_body,
    read_body,
    send_body_error,
    send_bytes,
    send_json,
    send_not_allowed,
)
from pausesvc_vllm._guard import (
    ANON_HOLDER,
    AUTH_HOLDER,
    authorize,
    control_token,
    cross_site,
    is_json,
)
from pausesvc_vllm._routes import OWN_PREFIXES
from pausesvc_vllm._runtime import GateRuntime
from pausesvc_vllm._stats import render_prometheus

__all__ = ["ANON_HOLDER", "OWN_PREFIXES", "SKYRL_HOLDER", "handle_own"]

logger = logging.getLogger("pausesvc_vllm")

SKYRL_HOLDER = AUTH_HOLDER
DEFAULT_WAIT_S = 60.0
MAX_WAIT_S = 24 * 3600.0
MAX_SKYRL_BODY = 64 * 1024

#: an answer refusing a call: (status, body, extra headers)
Refused = tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]
Handler = Callable[[GateRuntime, dict[str, Any], Receive, str], Awaitable[tuple[int, dict[str, Any]]]]


class _BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _lora_name(data: dict[str, Any]) -> str:
    value = data.get("lora_name")
    if value is None or value == "":
        raise _BadRequest("lora_name", "'lora_name' required")
    try:
        return validate_name(value, field="lora_name")
    except InvalidInputError as exc:
        raise _BadRequest("lora_name", str(exc)) from None


async def _abort(
    rt: GateRuntime, data: dict[str, Any], receive: Receive, holder: str
) -> tuple[int, dict[str, Any]]:
    name = _lora_name(data)
    assert rt.replica is not None
    # a hold that asks for a drain (every process aborts AND acknowledges it), but we wait for
    # THIS process's drain only, as SkyRL's endpoint answers for its own replica
    reason = "skyrl abort_lora_requests" + (
        f" (unauthenticated, via {rt.replica_id})" if holder == ANON_HOLDER else ""
    )
    grant = await rt.replica.pause_for_drain(name, holder=holder, reason=reason)
    try:
        aborted = await rt.wait_drained(
            name, grant.revision, rt.settings.drain_timeout_s, token=grant.token, epoch=grant.epoch
        )
    except TimeoutError:
        # never a 200 (SkyRL's caller would swap the weights under a live request) and never a
        # silent release: the pause stays, and the answer says so and how to go on
        return 504, error_body(
            "drain_timeout",
            f"{name!r} is paused and stays paused, but this replica did not drain it within "
            f"{rt.settings.drain_timeout_s:g}s: do not load new weights yet; call "
            "abort_lora_requests again (idempotent) until it answers 200, or release the pause "
            "with resume_lora_requests",
            adapter=name,
            paused=True,
            token=grant.token,
            in_flight=len(rt.in_flight(name)),
        )
    return 200, {"status": "ok", "aborted": aborted, "count": len(aborted)}


async def _resume(
    rt: GateRuntime, data: dict[str, Any], receive: Receive, holder: str
) -> tuple[int, dict[str, Any]]:
    name = _lora_name(data)
    assert rt.client is not None and rt.watcher is not None
    try:
        # only this source's hold: an anonymous caller can never release "skyrl"'s
        res = await rt.client.resume(name, holder=holder)
    except NotHolderError:  # paused by others only: SkyRL's hold is already gone
        return 200, {"status": "ok", "paused": True}
    # read-your-writes: a request sent to this replica right after us must not be held
    await rt.watcher.wait_revision(res.revision, timeout=2.0)
    return 200, {"status": "ok", "paused": res.paused}


async def _wait(
    rt: GateRuntime, data: dict[str, Any], receive: Receive, holder: str
) -> tuple[int, dict[str, Any]]:
    name = _lora_name(data)
    # a numeric string ("0.3") is a number, as it was for SkyRL's server (float(timeout_s))
    try:
        timeout = parse_wait_timeout(data.get("timeout_s", DEFAULT_WAIT_S), field="timeout_s")
    except InvalidInputError as exc:
        raise _BadRequest("timeout_s", str(exc)) from None
    if timeout > MAX_WAIT_S:
        raise _BadRequest("timeout_s", f"timeout_s must be <= {MAX_WAIT_S:g}")
    assert rt.watcher is not None
    waiter = asyncio.ensure_future(rt.watcher.wait_unpaused(name, timeout))
    left = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({waiter, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (waiter, left):
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fut
    if waiter not in done:
        return 0, {}  # the client left: nobody to answer
    return 200, {"paused": not waiter.result()}


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


_SKYRL: dict[str, Handler] = {
    "/skyrl/v1/abort_lora_requests": _abort,
    "/skyrl/v1/resume_lora_requests": _resume,
    "/skyrl/v1/wait_lora_unpaused": _wait,
}
#: the endpoints that change the pause state (credential, switch, cross-site check)
MUTATING = frozenset({"/skyrl/v1/abort_lora_requests", "/skyrl/v1/resume_lora_requests"})


async def _status(rt: GateRuntime, send: Send) -> None:
    """``GET /pausesvc/status``: this process's view, as JSON."""
    await send_json(send, 200, rt.status())


async def _metrics(rt: GateRuntime, send: Send) -> None:
    """``GET /pausesvc/metrics``: Prometheus text (404 without prometheus-client)."""
    w = rt.watcher
    rendered = render_prometheus(
        rt.stats,
        {"replica": rt.replica_id, "namespace": rt.settings.namespace},
        {
            "in_sync": float(bool(w and w.in_sync)),
            "fenced": float(rt.fenced),
            "staleness_seconds": w.staleness if w else 0.0,
            "paused_adapters": float(len(w.paused_names())) if w else 0.0,
        },
        rt.versions.status(),
    )
    if rendered is None:
        await send_json(
            send, 404, error_body("metrics_unavailable", "install prometheus-client for /pausesvc/metrics")
        )
        return
    text, ctype = rendered
    await send_bytes(send, 200, text, ctype.encode())


#: the gate's own read-only paths (GET or HEAD)
_READS: dict[str, Callable[[GateRuntime, Send], Awaitable[None]]] = {
    "/pausesvc/status": _status,
    "/pausesvc/metrics": _metrics,
}


async def handle_own(rt: GateRuntime, path: str, scope: Scope, receive: Receive, send: Send) -> bool:
    """Answer ``path`` if it is one of ours; False: not ours, pass it on."""
    read = _READS.get(path)
    if read is not None:
        if scope.get("method") not in ("GET", "HEAD"):
            await send_not_allowed(send, "GET")
        else:
            await read(rt, send)
        return True
    handler = _SKYRL.get(path)
    if handler is None:
        return False
    refused = _refusal(rt, path, scope)
    if refused is not None:
        status, answer, headers = refused
        await send_json(send, status, answer, headers=headers)
        return True
    data = await _read_object(rt, scope, receive, send)
    if data is None:
        return True
    holder = AUTH_HOLDER if control_token(rt.settings) is not None else ANON_HOLDER
    status, answer = await _call(handler, rt, path, data, receive, holder)
    if status:
        await send_json(send, status, answer)
    return True


def _refusal(rt: GateRuntime, path: str, scope: Scope) -> Refused | None:
    """(status, body, headers) refusing a SkyRL call before its body is read, or None."""
    s = rt.settings
    mutating = path in MUTATING
    if mutating and s.gate_control_endpoints == "off":
        message = (
            f"{path} is switched off on this replica "
            "(PAUSESVC_GATE_CONTROL_ENDPOINTS=off): pause through a controller"
        )
        return 404, error_body("not_found", message), []
    if scope.get("method") != "POST":
        return 405, error_body("method_not_allowed", "use POST"), [(b"allow", b"POST")]
    expected = control_token(s)
    refused = authorize(scope, expected) if expected is not None and (mutating or s.auth_reads) else None
    if refused is not None:
        status, code, message, headers = refused
        return status, error_body(code, message, field="Authorization"), headers
    why = cross_site(scope) if mutating else None
    if why is not None:
        return 403, error_body("cross_site", f"cross-site request refused ({why})", field="Origin"), []
    if not is_json(scope):
        message = "send the body as Content-Type: application/json"
        return 415, error_body("unsupported_media_type", message, field="Content-Type"), []
    return None


async def _read_object(rt: GateRuntime, scope: Scope, receive: Receive, send: Send) -> dict[str, Any] | None:
    """The body, a JSON object; None: it was not (answered, unless the client left)."""
    try:
        body = await read_body(
            receive, scope, max_bytes=MAX_SKYRL_BODY, timeout=rt.settings.gate_body_timeout_s
        )
    except BodyError as exc:
        await send_body_error(send, exc)
        return None
    try:
        data: Any = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        await send_json(send, 400, error_body("invalid_json", "the body must be a JSON object", field="body"))
        return None
    return data


async def _call(
    handler: Handler, rt: GateRuntime, path: str, data: dict[str, Any], receive: Receive, holder: str
) -> tuple[int, dict[str, Any]]:
    """Run a SkyRL handler; its errors as (status, body) - status 0: nobody to answer."""
    try:
        return await handler(rt, data, receive, holder)
    except _BadRequest as exc:
        return 400, error_body("invalid_input", exc.message, field=exc.field)
    except InvalidInputError as exc:
        return 400, error_body("invalid_input", str(exc), field=getattr(exc, "field", None))
    except DrainTimeoutError as exc:
        return 504, error_body("drain_timeout", str(exc))
    except RedisPermissionError as exc:  # a least-privilege replica user: configuration
        message = (
            f"{exc}; this replica's Redis user may not change the pause "
            "state: pause through the control service or a controller"
        )
        return 403, error_body("redis_forbidden", message)
    except RedisUnavailableError as exc:
        return 503, error_body("redis_unavailable", str(exc))
    except PauseError as exc:
        logger.exception("pausesvc gate: %s failed", path)
        return 500, error_body("internal", str(exc))
