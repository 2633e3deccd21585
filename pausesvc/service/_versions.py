"""The weight-version API: swap an adapter to a version, read where the fleet stands, clear it.

    POST   /v1/adapters/{name}/version  {"version", "path", "load"?, "barrier"?, "timeout_s"?}
           -> 200 SwapResult; 504 swap_timeout / 409 swap_failed naming the replicas
    GET    /v1/adapters/{name}/version  -> the desired version and each live replica's report
    DELETE /v1/adapters/{name}/version  -> {"name", "cleared"}

Names go in the path as for ``/v1/pauses`` (one percent-encoded segment; see ``_paths``).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from pausesvc._exceptions import SwapError
from pausesvc.service._auth import require_read, require_write
from pausesvc.service._errors import responses
from pausesvc.service._paths import adapter_name
from pausesvc.service._schemas import AdapterVersionOut, ClearVersionOut, SwapOut, VersionRequest
from pausesvc.service._state import Svc, fleet_versions, replica_versions

__all__ = ["router"]

logger = logging.getLogger("pausesvc.service")

router = APIRouter()

Name = Annotated[str, Depends(adapter_name)]
PATH = "/v1/adapters/{name:path}/version"


@router.post(
    PATH,
    response_model=SwapOut,
    dependencies=[Depends(require_write)],
    responses=responses(401, 403, 409, 422, 503, 504),
    tags=["versions"],
    summary="Swap NAME to a weight version on every replica (pause, set, wait for loads, resume).",
)
async def swap(s: Svc, name: Name, body: VersionRequest) -> dict[str, Any]:
    try:
        res = await s.c.swap(
            name,
            body.version,
            body.path,
            load=body.load,
            barrier=body.barrier,
            timeout=body.timeout_s,
            holder=body.holder,
            reason=body.reason,
        )
    except SwapError as exc:
        logger.warning(
            "swap of %s to %s incomplete",
            name,
            body.version,
            extra={
                "event": "swap_incomplete",
                "adapter": name,
                "version": body.version,
                "missing": sorted(exc.missing),
                "failed": exc.failed,
            },
        )
        raise
    logger.info(
        "swap %s -> %s",
        name,
        res.version,
        extra={
            "event": "api_swap",
            "adapter": name,
            "version": res.version,
            "revision": res.revision,
            "loaded": res.loaded,
            "barrier": body.barrier,
            "seconds": res.seconds,
        },
    )
    return res.to_dict()


@router.get(
    PATH,
    response_model=AdapterVersionOut,
    dependencies=[Depends(require_read)],
    responses=responses(401, 403, 422, 503),
    tags=["versions"],
    summary="NAME's desired weight version and what each live replica has loaded.",
)
async def get_version(s: Svc, name: Name) -> dict[str, Any]:
    desired = await s.c.get_version(name)
    replicas = await s.c.replicas()
    fleet = fleet_versions({name: desired} if desired else {}, replicas).get(name)
    return {
        "name": name,
        "desired": desired.to_dict() if desired else None,
        "replicas": replica_versions(replicas, name, desired),
        "mixed": bool(fleet and fleet["mixed"]),
    }


@router.delete(
    PATH,
    response_model=ClearVersionOut,
    dependencies=[Depends(require_write)],
    responses=responses(401, 403, 422, 503),
    tags=["versions"],
    summary="Forget NAME's desired version (replicas keep what they loaded).",
)
async def clear_version(s: Svc, name: Name) -> dict[str, Any]:
    cleared = await s.c.clear_version(name)
    logger.info("clear version %s", name, extra={"event": "api_clear_version", "adapter": name})
    return {"name": name, "cleared": cleared}
