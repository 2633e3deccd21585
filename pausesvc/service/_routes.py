"""The /v1 API: pauses, waits, replicas; health and readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from pausesvc._exceptions import DrainTimeoutError
from pausesvc.protocol.codec import orphans_on
from pausesvc.service._auth import require_read, require_write
from pausesvc.service._errors import ApiError, responses
from pausesvc.service._paths import adapter_name, adapter_name_exact
from pausesvc.service._schemas import (
    MAX_WAIT_S,
    NAME_SCHEMA,
    TOKEN_PATTERN,
    AdapterStateOut,
    AdapterStatusOut,
    GrantOut,
    HealthOut,
    PauseRequest,
    ReadyOut,
    RenewRequest,
    ReplicasOut,
    ResumeOut,
    SnapshotOut,
    WaitOut,
)
from pausesvc.service._state import Svc

__all__ = ["router"]

logger = logging.getLogger("pausesvc.service")

router = APIRouter()

#: what DELETE /v1/pauses/{name} reads: its query string (the body is not read)
_RESUME_QUERY = frozenset({"holder", "token", "force"})


async def resume_query_only(request: Request) -> None:
    """DELETE takes ``holder``, ``token`` and ``force`` in the query string. A body (a token
    sent there would be silently ignored: an unfenced release), an unknown parameter or one
    given twice is a 422 naming it, and nothing is released."""
    params = request.query_params
    for key in params:
        if key not in _RESUME_QUERY:
            raise ApiError(422, "invalid_input", f"unknown query parameter {key!r}", field=key)
        if len(params.getlist(key)) > 1:
            raise ApiError(422, "invalid_input", f"query parameter {key!r} given more than once", field=key)
    if await request.body():
        raise ApiError(
            422,
            "invalid_input",
            "DELETE takes holder, token and force in the query string; send no body",
            field="body",
        )


Name = Annotated[str, Depends(adapter_name)]
ExactName = Annotated[str, Depends(adapter_name_exact)]
READ = [Depends(require_read)]
WRITE = [Depends(require_write)]
R_READ = responses(401, 403, 422, 503)
R_WRITE = responses(401, 403, 409, 422, 503)


@router.get(
    "/v1/pauses",
    response_model=SnapshotOut,
    dependencies=READ,
    responses=responses(401, 403, 503),
    tags=["pauses"],
    summary="Every paused adapter and the revision (read from Redis).",
)
async def list_pauses(s: Svc) -> dict[str, Any]:
    snap = await s.c.snapshot()
    return {**snap.to_dict(), "orphaned": await _orphaned(s)}


async def _orphaned(s: Svc) -> dict[str, list[str]]:
    """Who still holds each adapter Redis lost without a resume: this service's view
    ('service') and the live replicas (their registry records)."""
    out = orphans_on(await s.c.replicas())
    for name in s.w.orphans:
        out[name] = ["service", *out.get(name, [])]
    return dict(sorted(out.items()))


@router.get(
    "/v1/pauses/{name:path}/wait",
    response_model=WaitOut,
    dependencies=READ,
    responses=R_READ,
    tags=["pauses"],
    summary="Long-poll: answer as soon as NAME is not paused (200 either way).",
)
async def wait_unpaused(
    request: Request,
    s: Svc,
    name: Name,
    timeout_s: Annotated[
        float, Query(ge=0, le=MAX_WAIT_S, allow_inf_nan=False, description="Seconds to wait at most.")
    ] = 30.0,
) -> dict[str, Any]:
    t0 = time.monotonic()
    ok = await s.wait_or_disconnect(request, name, timeout_s)
    return {"paused": not ok, "revision": s.w.revision, "waited_s": time.monotonic() - t0}


@router.post(
    "/v1/pauses/{name:path}/renew",
    response_model=AdapterStateOut,
    dependencies=WRITE,
    responses=R_WRITE,
    tags=["pauses"],
    summary="Extend a holder's lease on NAME to ttl_s seconds from now.",
)
async def renew(s: Svc, name: Name, body: RenewRequest) -> dict[str, Any]:
    state = await s.c.renew(name, body.holder, body.ttl_s, token=body.token)
    logger.info(
        "renew %s",
        name,
        extra={"event": "api_renew", "adapter": name, "holder": body.holder, "revision": state.revision},
    )
    return state.to_dict()


@router.get(
    "/v1/pauses/{name:path}",
    response_model=AdapterStatusOut,
    dependencies=READ,
    responses=responses(401, 403, 405, 422, 503),
    tags=["pauses"],
    summary="One adapter's pause state.",
)
async def get_pause(s: Svc, name: ExactName) -> dict[str, Any]:
    snap = await s.c.snapshot()
    state = snap.paused.get(name)
    return {
        "name": name,
        "paused": state is not None,
        "paused_by_global": "*" in snap.paused,
        "revision": snap.revision,
        "state": state.to_dict() if state else None,
        "orphaned": (await _orphaned(s)).get(name, []),
    }


@router.post(
    "/v1/pauses/{name:path}",
    response_model=GrantOut,
    dependencies=WRITE,
    responses=responses(401, 403, 405, 409, 422, 503, 504),
    tags=["pauses"],
    summary="Pause NAME (`*`: everything). Returns the hold's fencing token.",
)
async def pause(
    s: Svc, name: ExactName, body: Annotated[PauseRequest | None, Body()] = None
) -> dict[str, Any]:
    b = body or PauseRequest()
    t0 = time.monotonic()
    try:
        grant = await s.c.pause(
            name, holder=b.holder, reason=b.reason, ttl=b.ttl_s, drain=b.drain, timeout=b.timeout_s
        )
    except DrainTimeoutError as exc:
        s.metrics.drain_timeouts.inc()
        logger.warning(
            "drain of %s timed out",
            name,
            extra={
                "event": "drain_timeout",
                "adapter": name,
                "holder": b.holder,
                "token": exc.token,
                "missing": exc.missing,
            },
        )
        raise
    out = grant.to_dict()
    if b.drain:
        s.metrics.drain.observe(time.monotonic() - t0)
        acked, aborted = await s.drained_replicas(name, grant)
        s.metrics.aborted.inc(len(aborted))
        out["drain"] = {"replicas": acked, "aborted": aborted, "count": len(aborted)}
    logger.info(
        "pause %s",
        name,
        extra={
            "event": "api_pause",
            "adapter": name,
            "holder": grant.holder,
            "token": grant.token,
            "revision": grant.revision,
            "new_hold": grant.created,
            "drain": b.drain,
        },
    )
    return out


@router.delete(
    "/v1/pauses/{name:path}",
    response_model=ResumeOut,
    dependencies=WRITE,
    responses=responses(401, 403, 405, 409, 422, 503),
    tags=["pauses"],
    summary="Release a hold on NAME (all holds with force=true).",
)
async def resume(
    s: Svc,
    name: ExactName,
    _query_only: Annotated[None, Depends(resume_query_only)],
    holder: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=256,
            json_schema_extra=NAME_SCHEMA,
            description="Whose hold (default holder if absent).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        Query(pattern=TOKEN_PATTERN, max_length=84, description="Fencing token; refused if stale."),
    ] = None,
    force: Annotated[bool, Query(description="Release every hold.")] = False,
) -> dict[str, Any]:
    res = await s.c.resume(name, holder=holder, token=token, force=force)
    logger.info(
        "resume %s",
        name,
        extra={
            "event": "api_resume",
            "adapter": name,
            "holder": res.holder,
            "token": token,
            "force": force,
            "revision": res.revision,
            "released": res.released,
            "still_paused": res.paused,
        },
    )
    return res.to_dict()


@router.get(
    "/v1/replicas",
    response_model=ReplicasOut,
    dependencies=READ,
    responses=responses(401, 403, 422, 503),
    tags=["replicas"],
    summary="Replica processes: heartbeat age, drain acknowledgements.",
)
async def replicas(
    s: Svc,
    all: Annotated[bool, Query(description="Include replicas that stopped heartbeating.")] = False,
) -> dict[str, Any]:
    recs = await s.c.replicas(include_dead=all)
    return {"replicas": recs, "live": sum(1 for r in recs if r.get("live"))}


@router.get(
    "/healthz",
    response_model=HealthOut,
    tags=["health"],
    summary="The process is up (no dependency checked).",
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyOut,
    tags=["health"],
    responses={503: {"model": ReadyOut, "description": "Not ready."}},
    summary="Redis reachable and the view in sync.",
)
async def readyz(s: Svc) -> Any:
    from fastapi.responses import JSONResponse

    w = s.w
    redis_ok = True
    try:
        async with asyncio.timeout(2.0):
            await s.c.redis.ping()
    except Exception as exc:  # any failure means "not ready"; say why
        redis_ok = False
        logger.warning("readyz: Redis ping failed: %s", exc, extra={"event": "not_ready"})
    ready = redis_ok and w.in_sync
    body = ReadyOut(
        status="ready" if ready else "not_ready",
        redis=redis_ok,
        in_sync=w.in_sync,
        revision=w.revision,
        staleness_s=w.staleness,
        last_error=w.last_error,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
