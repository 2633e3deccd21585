"""SkyRL's per-LoRA pause endpoints, served fleet-wide from one URL.

An existing SkyRL/Tinker trainer that POSTed these to every vLLM replica can POST them here once:

- ``abort_lora_requests`` pauses ``lora_name`` with drain under the holder ``skyrl`` and answers
  when every live replica acknowledged, with the request ids they aborted (``count`` of them).
  Idempotent: a second call while the hold exists changes nothing and reports no new aborts.
- ``resume_lora_requests`` releases that hold. Idempotent (a hold that is already gone is fine);
  other holders, if any, keep the LoRA paused.
- ``wait_lora_unpaused`` long-polls; ``{"paused": false}`` as soon as the LoRA is not paused.

Bad input is a 400 (SkyRL's status code), with SkyRL's exact body for a missing ``lora_name``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from pausesvc._exceptions import DrainTimeoutError, NotHolderError
from pausesvc.service._auth import require_read, require_write
from pausesvc.service._errors import responses
from pausesvc.service._schemas import (
    SkyRLAbortOut,
    SkyRLAbortRequest,
    SkyRLLoraRequest,
    SkyRLResumeOut,
    SkyRLWaitOut,
    SkyRLWaitRequest,
)
from pausesvc.service._state import Svc

__all__ = ["SKYRL_HOLDER", "router"]

logger = logging.getLogger("pausesvc.service")

SKYRL_HOLDER = "skyrl"

router = APIRouter(prefix="/skyrl/v1", tags=["skyrl"])


@router.post(
    "/abort_lora_requests",
    response_model=SkyRLAbortOut,
    dependencies=[Depends(require_write)],
    responses=responses(400, 401, 403, 503, 504),
    summary="Pause the LoRA on every replica and abort its in-flight requests.",
)
async def abort_lora_requests(body: SkyRLAbortRequest, s: Svc) -> dict[str, Any]:
    holder = body.holder or SKYRL_HOLDER
    t0 = time.monotonic()
    try:
        grant = await s.c.pause(
            body.lora_name,
            holder=holder,
            reason="skyrl abort_lora_requests",
            drain=True,
            timeout=body.timeout_s,
        )
    except DrainTimeoutError:
        s.metrics.drain_timeouts.inc()
        raise
    s.metrics.drain.observe(time.monotonic() - t0)
    aborted: list[str] = []
    if grant.created:  # an existing hold: nothing new was aborted (the gates held new requests)
        _, aborted = await s.drained_replicas(body.lora_name, grant)
    s.metrics.aborted.inc(len(aborted))
    logger.info(
        "skyrl abort %s",
        body.lora_name,
        extra={
            "event": "api_pause",
            "adapter": body.lora_name,
            "holder": holder,
            "token": grant.token,
            "revision": grant.revision,
            "new_hold": grant.created,
            "aborted": len(aborted),
        },
    )
    return {"status": "ok", "aborted": aborted, "count": len(aborted), "token": grant.token}


@router.post(
    "/resume_lora_requests",
    response_model=SkyRLResumeOut,
    dependencies=[Depends(require_write)],
    responses=responses(400, 401, 403, 503),
    summary="Release the `skyrl` hold on the LoRA (idempotent).",
)
async def resume_lora_requests(body: SkyRLLoraRequest, s: Svc) -> dict[str, Any]:
    holder = body.holder or SKYRL_HOLDER
    try:
        res = await s.c.resume(body.lora_name, holder=holder)
    except NotHolderError:  # paused, but not (any more) by us: idempotent success
        return {"status": "ok", "released": False, "paused": True}
    logger.info(
        "skyrl resume %s",
        body.lora_name,
        extra={
            "event": "api_resume",
            "adapter": body.lora_name,
            "holder": holder,
            "revision": res.revision,
            "released": res.released,
            "still_paused": res.paused,
        },
    )
    return {"status": "ok", "released": res.released, "paused": res.paused}


@router.post(
    "/wait_lora_unpaused",
    response_model=SkyRLWaitOut,
    dependencies=[Depends(require_read)],
    responses=responses(400, 401, 403, 503),
    summary="Long-poll until the LoRA is not paused (paused=true at the timeout).",
)
async def wait_lora_unpaused(request: Request, body: SkyRLWaitRequest, s: Svc) -> dict[str, Any]:
    ok = await s.wait_or_disconnect(request, body.lora_name, body.timeout_s)
    return {"paused": not ok}
