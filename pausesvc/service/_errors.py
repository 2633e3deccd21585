"""Every failure becomes one JSON shape (:class:`ErrorOut`) with the right status code.

422 invalid_input       malformed JSON, wrong types, unknown fields, bad names/timeouts
400 invalid_input       the same, on the SkyRL endpoints (SkyRL's own status code)
401 unauthorized        no / malformed ``Authorization: Bearer`` header
403 forbidden           wrong token
403 redis_forbidden     Redis refused the command for the service's user (ACL)
404 not_found / 405 method_not_allowed
409 not_holder, stale_token
409 swap_failed         the version is set, but some live replicas reported that loading it failed
503 redis_unavailable   Redis cannot be reached (``Retry-After: 1``)
504 drain_timeout       the pause is in place, but not every live replica acknowledged
504 swap_timeout        the version is set, but some live replicas did not report it loaded
500 internal            a bug (logged with its traceback)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pausesvc._exceptions import (
    DrainTimeoutError,
    InvalidInputError,
    NotHolderError,
    PauseError,
    PauseTimeoutError,
    RedisPermissionError,
    RedisUnavailableError,
    StaleTokenError,
    SwapError,
)
from pausesvc.service._schemas import ErrorOut

__all__ = ["ApiError", "install_error_handlers", "responses"]

logger = logging.getLogger("pausesvc.service")

#: core argument names -> the API's field names
_FIELDS = {"ttl": "ttl_s", "timeout": "timeout_s"}

_DESCRIPTIONS = {
    400: "Invalid input (SkyRL endpoints): the body names the field.",
    401: "Authorization: Bearer <token> is required (PAUSESVC_API_TOKEN is set).",
    403: "The bearer token is wrong (forbidden), a cross-site browser request (cross_site), "
    "or Redis refused the service's user (redis_forbidden).",
    404: "No such route.",
    405: "Method not allowed on this sub-resource (e.g. DELETE .../wait).",
    409: "Refused: not_holder (this holder holds no pause of it) or stale_token; swap_failed "
    "(some live replicas failed to load the version; `failed` names them).",
    422: "Invalid input: malformed JSON, a wrong type, an unknown field, a bad name or timeout.",
    503: "Redis is unreachable.",
    504: "drain_timeout: the pause is in place, but some live replicas did not acknowledge it; "
    "swap_timeout: the version is set, but some live replicas did not load it (`missing`).",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the given error codes."""
    return {c: {"model": ErrorOut, "description": _DESCRIPTIONS[c]} for c in codes}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field
        self.headers = headers
        self.extra = extra


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    out = ErrorOut.model_validate(body).model_dump(exclude_none=True)
    return JSONResponse(out, status_code=status, headers=headers)


def _loc_field(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts)


def _describe(err: dict[str, Any]) -> str:
    field = _loc_field(err.get("loc", ()))
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "json_invalid":
        ctx = err.get("ctx") or {}
        return f"body is not valid JSON: {ctx.get('error', msg)} at position {field}"
    if err.get("type") == "missing" and field == "body":
        return "a JSON body is required"
    if err.get("type") in ("model_attributes_type", "dict_type", "model_type") and field in ("body", ""):
        return "body must be a JSON object (Content-Type: application/json)"
    msg = msg.removeprefix("Value error, ")
    return f"{field}: {msg}" if field else msg


def pause_error_response(exc: PauseError) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """Status, body and headers for an exception of the core's tree."""
    if isinstance(exc, InvalidInputError):
        field = _FIELDS.get(exc.field or "", exc.field)
        return 422, {"detail": str(exc), "error": "invalid_input", "field": field}, None
    if isinstance(exc, StaleTokenError):
        return (
            409,
            {
                "detail": str(exc),
                "error": "stale_token",
                "field": "token",
                "presented": exc.presented,
                "current": exc.current,
            },
            None,
        )
    if isinstance(exc, NotHolderError):
        return (
            409,
            {"detail": str(exc), "error": "not_holder", "field": "holder", "holders": exc.holders},
            None,
        )
    if isinstance(exc, DrainTimeoutError):
        return (
            504,
            {"detail": str(exc), "error": "drain_timeout", "token": exc.token, "missing": exc.missing},
            None,
        )
    if isinstance(exc, SwapError):
        body = {
            "detail": str(exc),
            "error": "swap_timeout" if exc.timed_out else "swap_failed",
            "missing": exc.missing,
            "failed": exc.failed,
            "loaded": exc.result.loaded,
            "version": exc.result.version,
            "revision": exc.result.revision,
        }
        return (504 if exc.timed_out else 409), body, None
    if isinstance(exc, PauseTimeoutError):
        return 504, {"detail": str(exc), "error": "timeout"}, None
    if isinstance(exc, RedisPermissionError):  # configuration, not an outage: no retry helps
        return 403, {"detail": str(exc), "error": "redis_forbidden"}, None
    if isinstance(exc, RedisUnavailableError):
        return 503, {"detail": str(exc), "error": "redis_unavailable"}, {"Retry-After": "1"}
    logger.error("pausesvc service: %s", exc, exc_info=exc, extra={"event": "error"})
    return 500, {"detail": str(exc), "error": "internal"}, None


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path (for ``Allow``)."""
    routes = getattr(request.app.state, "api_routes", None) or request.app.router.routes
    matching = [r for r in routes if isinstance(r, APIRoute) and r.matches(request.scope)[0] != Match.NONE]
    # /v1/pauses/x/wait also matches /v1/pauses/{name:path}; the sub-resource is what is meant
    sub = [r for r in matching if r.path.endswith(("}/wait", "}/renew"))]
    methods: set[str] = set()
    for r in sub or matching:
        methods |= r.methods or set()
    if not methods:  # a page of its own (the dashboard's /), not among the API's routes
        for route in request.app.router.routes:
            if isinstance(route, APIRoute) and route.matches(request.scope)[0] != Match.NONE:
                methods |= route.methods or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        body = {"detail": exc.detail, "error": exc.error, "field": exc.field, **exc.extra}
        return _json(exc.status, body, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        items = [
            {
                "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in errors
        ]
        first = errors[0] if errors else {"msg": "invalid request"}
        field = _loc_field(first.get("loc", ())) or None
        if first.get("type") == "json_invalid":
            field = "body"
        detail = "; ".join(_describe(e) for e in errors[:5]) or "invalid request"
        status = 422
        if request.url.path.startswith("/skyrl/"):
            status = 400  # SkyRL's status code for bad input
            if any(
                _loc_field(e.get("loc", ())) in ("lora_name", "body")
                and e.get("type") in ("missing", "string_too_short")
                for e in errors
            ):
                detail, field = "'lora_name' required", "lora_name"
        return _json(status, {"detail": detail, "error": "invalid_input", "field": field, "errors": items})

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        headers = dict(exc.headers) if exc.headers else {}
        body: dict[str, Any] = {"detail": str(exc.detail)}
        if status == 400:  # FastAPI could not read the body (e.g. not UTF-8)
            status = 400 if request.url.path.startswith("/skyrl/") else 422
            body.update(error="invalid_input", field="body", detail=f"body: {exc.detail} (send UTF-8 JSON)")
        elif status == 405:
            body["error"] = "method_not_allowed"
            headers["Allow"] = ", ".join(allowed_methods(request))
        else:
            body["error"] = {404: "not_found", 413: "too_large"}.get(status, "http_error")
        return _json(status, body, headers or None)

    async def on_pause_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PauseError)
        status, body, headers = pause_error_response(exc)
        if status == 422 and request.url.path.startswith("/skyrl/"):
            status = 400  # SkyRL's status code for bad input
        return _json(status, body, headers)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(PauseError, on_pause_error)
