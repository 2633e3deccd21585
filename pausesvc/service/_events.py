"""``GET /v1/events``: server-sent events, written by hand on a StreamingResponse.

Each stream starts with ``retry:`` and one ``snapshot`` event (the whole paused set at the
view's revision), then one ``change`` event per change with the revision as the event ``id``.
A ``Last-Event-ID`` header is accepted but nothing is replayed from it: the snapshot that
starts every stream IS the replay (nothing that happened while disconnected is lost, because
the snapshot reflects it). Comment lines (``: keepalive``) are sent every heartbeat interval so
proxies keep the connection open and dead clients are noticed.

The listener is registered on the watcher and the snapshot taken in the same synchronous step,
so no change falls between them. A client too slow to keep up gets a fresh snapshot instead of
an unbounded queue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from pausesvc.protocol.models import AdapterState, PauseEvent
from pausesvc.service._auth import require_read
from pausesvc.service._errors import ApiError, responses
from pausesvc.service._state import ServiceState

__all__ = ["router"]

router = APIRouter()

QUEUE_MAX = 1000
SYNC_WAIT_S = 2.0

_SSE_DOC = """\
`text/event-stream`. First `event: snapshot` (data: `{"revision", "epoch", "in_sync",
"paused": {name: state}, "versions": {name: desired version}}`, id: the revision), then one
`event: change` per change (data: a PauseEvent: `{"revision", "epoch", "name", "op", "paused",
"holder", "ts", "state"}`, id: its revision). `op` is pause, release, resume, force, renew,
expire, version (a desired weight version set or cleared: `version` is the record or null;
`paused`/`state` unchanged), or resync (a difference found by a resync). `: keepalive` comments
are sent when idle."""


def _frame(event: str, rev: int, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {rev}\nevent: {event}\ndata: {payload}\n\n".encode()


def _snapshot(s: ServiceState) -> dict[str, Any]:
    w = s.w
    paused = {**w.orphans, **w.paused}
    return {
        "revision": w.revision,
        "epoch": w.epoch,
        "in_sync": w.in_sync,
        "server_time": w.server_time(),
        "paused": {n: st.to_dict() for n, st in sorted(paused.items())},
        "versions": {n: dv.to_dict() for n, dv in sorted(w.desired_versions.items())},
    }


async def _stream(s: ServiceState) -> AsyncIterator[bytes]:
    w = s.w
    queue: asyncio.Queue[PauseEvent] = asyncio.Queue(maxsize=QUEUE_MAX)
    overflow = False

    def listener(name: str, state: AdapterState | None, ev: PauseEvent | None) -> None:
        nonlocal overflow
        if ev is None:
            return
        try:
            queue.put_nowait(ev)
        except asyncio.QueueFull:
            overflow = True

    # listener + snapshot in one synchronous step: nothing can fall between them
    w.add_listener(listener)
    first = _snapshot(s)
    s.metrics.sse_clients.inc()
    s.metrics.sse_open.inc()
    closing = asyncio.ensure_future(s.closing.wait())  # the server is stopping: end cleanly
    getter: asyncio.Future[PauseEvent] | None = None
    try:
        yield b"retry: 2000\n\n"
        yield _frame("snapshot", first["revision"], first)
        while not closing.done():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, closing}, timeout=s.heartbeat_s, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()  # an item that raced in stays queued (asyncio.Queue semantics)
                if not closing.done():
                    yield b": keepalive\n\n"
                continue
            ev = getter.result()
            if overflow:
                overflow = False
                while not queue.empty():
                    queue.get_nowait()
                snap = _snapshot(s)
                yield _frame("snapshot", snap["revision"], snap)
                continue
            yield _frame("change", ev.revision, ev.to_dict())
    finally:
        closing.cancel()
        if getter is not None:
            getter.cancel()  # the client left mid-wait: no pending get() outlives the stream
        w.remove_listener(listener)
        s.metrics.sse_open.dec()


@router.get(
    "/v1/events",
    dependencies=[Depends(require_read)],
    tags=["events"],
    summary="Server-sent events: a snapshot, then one event per change.",
    description=_SSE_DOC,
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "An endless event stream.",
        },
        **responses(401, 403, 503),
    },
)
async def events(request: Request) -> StreamingResponse:
    s: ServiceState = request.app.state.svc
    if not await s.w.wait_synced(SYNC_WAIT_S):
        raise ApiError(
            503,
            "redis_unavailable",
            f"the pause state could not be read within {SYNC_WAIT_S:g}s: {s.w.last_error}",
            headers={"Retry-After": "1"},
        )
    return StreamingResponse(
        _stream(s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
