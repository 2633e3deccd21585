"""``POST /v1/load_lora_adapter`` (and SageMaker's ``POST /adapters``, the same load under
another shape: ``{"name", "src"}`` in the body or the query) through the gate: old-style
trainers next to weight versions.

An adapter with NO desired version in Redis is the trainer's business, as before: the load
goes to vLLM unchanged, and a load that names a version (body field ``version``, or the
``x-pausesvc-adapter-version`` request header) is recorded as this replica's loaded version
(response headers, ``/pausesvc/status``, the registry record).

An adapter WITH a desired version is kept on it by the replicas themselves: a direct load of
other weights would make this replica serve what the fleet left behind, so it is refused
(409 ``version_managed``, naming the desired version and ``pausesvc swap``). A load naming the
desired version that this replica has already loaded is answered 200 and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import parse_qs

from pausesvc_vllm._asgi import (
    ASGIApp,
    BodyError,
    Message,
    Receive,
    Scope,
    Send,
    error_body,
    read_body,
    replaying_receive,
    route_path,
    send_json,
)
from pausesvc_vllm._routes import LOAD_PATH, REGISTER_PATH
from pausesvc_vllm._runtime import GateRuntime
from pausesvc_vllm._versions import VERSION_HEADER

__all__ = ["LOAD_PATH", "REGISTER_PATH", "UNLOAD_PATH", "direct_load", "direct_unload", "unload_target"]

#: vLLM's direct adapter unload (``{"lora_name"}``); SageMaker's is ``DELETE /adapters/{name}``
UNLOAD_PATH = "/v1/unload_lora_adapter"

logger = logging.getLogger("pausesvc_vllm")


async def direct_load(app: ASGIApp, rt: GateRuntime, scope: Scope, receive: Receive, send: Send) -> None:
    body = await _read(rt, scope, receive, send)
    if body is None:
        return
    name, named = _names(scope, body)
    if name is None:  # vLLM answers what is wrong with it
        await app(scope, replaying_receive(body, receive), send)
        return
    await rt.start()
    desired = rt.watcher.desired(name) if rt.watcher is not None else None
    if desired is not None:
        if named == desired.version and rt.versions.version(name) == desired.version:
            await send_json(send, 200, {"status": "ok", "version": desired.version, "changed": False})
            return
        await _refuse_managed(
            rt,
            send,
            name,
            desired.version,
            "every replica loads it by itself, and a direct load of other weights would serve a "
            "version the fleet left; change it with `pausesvc swap` (POST /v1/adapters/{name}/version)",
        )
        return
    if await _forward(app, scope, body, receive, send):
        rt.versions.note_direct_load(name, named)
        logger.info("pausesvc gate: %r loaded directly (version %s)", name, named or "not named")
        if named and rt.replica is not None:
            rt._spawn(_report(rt, name, named), f"pausesvc-direct-load-{name}")


async def _read(rt: GateRuntime, scope: Scope, receive: Receive, send: Send) -> bytes | None:
    """The request's body; None when it could not be read (answered, unless the client left)."""
    s = rt.settings
    try:
        return await read_body(receive, scope, max_bytes=s.gate_max_body_bytes, timeout=s.gate_body_timeout_s)
    except BodyError as exc:
        if exc.status:
            await send_json(send, exc.status, error_body(exc.code, exc.message))
        return None


async def _refuse_managed(rt: GateRuntime, send: Send, name: str, desired: str, why: str) -> None:
    """409 ``version_managed``: ``name`` has a desired version, the replicas keep it on it."""
    message = f"{name!r} has the desired version {desired!r} in Redis: {why}"
    await send_json(
        send, 409, error_body("version_managed", message, desired=desired, loaded=rt.versions.version(name))
    )


async def _forward(app: ASGIApp, scope: Scope, body: bytes, receive: Receive, send: Send) -> bool:
    """Hand the request to vLLM; True when it answered 200."""
    status: list[int] = []

    async def watch(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))
        await send(message)

    await app(scope, replaying_receive(body, receive), watch)
    return bool(status) and status[0] == 200


async def _report(rt: GateRuntime, name: str, version: str) -> None:
    if rt.replica is None:
        return
    try:
        await rt.replica.report_version(name, version, status="loaded", revision=0)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.warning("pausesvc gate: could not report the direct load of %r: %s", name, exc)


def _names(scope: Scope, body: bytes) -> tuple[str | None, str | None]:
    """(the adapter's name, the version the load names) from the request: ``lora_name`` of
    the body on ``/v1/load_lora_adapter``; on SageMaker's ``/adapters`` ``name`` of the body,
    or of the query string when the body is not JSON (as its handler reads it)."""
    key = "lora_name" if route_path(scope) == LOAD_PATH else "name"
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
        if key == "name":
            query = parse_qs(bytes(scope.get("query_string") or b"").decode("latin-1"))
            data = {k: v[-1] for k, v in query.items()}  # Starlette's QueryParams: the last
    if not isinstance(data, dict) or not isinstance(data.get(key), str):
        return None, None
    named = data.get("version")
    for k, v in scope.get("headers") or ():
        if k.lower() == VERSION_HEADER:
            named = v.decode("latin-1").strip()
    return data[key], named if isinstance(named, str) and named else None


def unload_target(method: str, path: str) -> bool:
    """Is this request an adapter unload (vLLM's, or SageMaker's ``DELETE /adapters/{name}``)?"""
    if method == "POST":
        return path == UNLOAD_PATH
    return method == "DELETE" and path.startswith(REGISTER_PATH + "/") and path.count("/") == 2


async def direct_unload(app: ASGIApp, rt: GateRuntime, scope: Scope, receive: Receive, send: Send) -> None:
    """An unload of an adapter WITH a desired version is refused (409 ``version_managed``): the
    replica would stop serving the version the fleet is on - or, with a LoRA resolver, vLLM
    would load whatever weights the resolver finds under that name on the next request, old
    ones included, while this replica still reports the desired version. Without one, vLLM
    gets it unchanged (and the replica forgets what it had loaded under that name)."""
    body = await _read(rt, scope, receive, send)
    if body is None:
        return
    path = route_path(scope)
    if path == UNLOAD_PATH:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        name = data.get("lora_name") if isinstance(data, dict) else None
    else:
        from urllib.parse import unquote

        name = unquote(path.rsplit("/", 1)[1])
    if not isinstance(name, str) or not name:  # vLLM answers what is wrong with it
        await app(scope, replaying_receive(body, receive), send)
        return
    await rt.start()
    desired = rt.watcher.desired(name) if rt.watcher is not None else None
    if desired is not None:
        await _refuse_managed(
            rt,
            send,
            name,
            desired.version,
            "every replica keeps it loaded; unloading it would stop this replica serving it (or "
            "let a LoRA resolver load other weights under its name); clear the desired version "
            "first (DELETE /v1/adapters/{name}/version, pausesvc swap to another version)",
        )
        return
    if await _forward(app, scope, body, receive, send):
        rt.versions.note_unload(name)
