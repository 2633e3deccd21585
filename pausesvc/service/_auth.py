"""Bearer-token auth: with ``PAUSESVC_API_TOKEN`` set, mutating calls need the token.

Missing or malformed header -> 401 (with ``WWW-Authenticate: Bearer``), wrong token -> 403.
The token is compared with :func:`hmac.compare_digest` (constant time). Reads are open unless
``PAUSESVC_AUTH_READS=true``. ``/healthz``, ``/readyz``, ``/metrics`` and the dashboard page
itself are always open (the page holds no data; it asks for the token to read or resume).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pausesvc.service._errors import ApiError

__all__ = ["require_read", "require_write"]

# Declares the scheme in the OpenAPI document; the checks below do the work.
_bearer = HTTPBearer(auto_error=False, description="PAUSESVC_API_TOKEN")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _check(request: Request) -> None:
    expected: str | None = request.app.state.svc.settings.api_token
    if not expected:
        return
    header = request.headers.get("authorization")
    challenge = {"WWW-Authenticate": 'Bearer realm="pausesvc"'}
    if not header:
        raise ApiError(
            401,
            "unauthorized",
            "missing Authorization: Bearer <token> header",
            field="Authorization",
            headers=challenge,
        )
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(
            401,
            "unauthorized",
            "the Authorization header must be 'Bearer <token>'",
            field="Authorization",
            headers=challenge,
        )
    if not hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    ):
        raise ApiError(403, "forbidden", "wrong API token", field="Authorization")


async def require_write(request: Request, _: Bearer) -> None:
    _check(request)


async def require_read(request: Request, _: Bearer) -> None:
    if request.app.state.svc.settings.auth_reads:
        _check(request)
