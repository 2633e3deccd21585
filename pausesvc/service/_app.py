"""The FastAPI application: lifespan (one client, one shared watcher), middleware, routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pausesvc._settings import Settings
from pausesvc.service import _events, _routes, _skyrl, _versions
from pausesvc.service._errors import install_error_handlers
from pausesvc.service._guard import GuardMiddleware
from pausesvc.service._metrics import RequestMetrics, VersionCollector, WatcherCollector
from pausesvc.service._paths import AdapterPathMiddleware
from pausesvc.service._state import ServiceState

__all__ = ["create_app"]

DESCRIPTION = """\
HTTP control plane for pausesvc: pause, resume and wait on LoRA adapters across a vLLM fleet.

Adapter names go in the path percent-encoded as one segment (`org/lora` -> `org%2Flora`); `*`
is the global pause. Every error is a JSON `Error` with a machine-readable `error` code and,
for bad input, the offending `field`. With `PAUSESVC_API_TOKEN` set, mutating calls need
`Authorization: Bearer <token>` (401 without, 403 wrong); reads too with
`PAUSESVC_AUTH_READS=true`. Mutating calls with a body need `Content-Type: application/json`
(415); cross-site browser requests (`Origin`, `Sec-Fetch-Site`) are refused (403), and so is a
foreign `Host` on a loopback-bound service (400). Concurrent event streams and long-polls are
capped (503 with `Retry-After`).
"""


def _dashboard() -> str:
    return resources.files("pausesvc.service").joinpath("static/index.html").read_text("utf-8")


_READS = {("get", p) for p in ("*",)} | {("post", "/skyrl/v1/wait_lora_unpaused")}


def _describe_auth(schema: dict[str, Any], s: Settings) -> dict[str, Any]:
    """The document describes THIS deployment: operations that need no token (no API token
    configured, or reads while auth_reads is off) carry no security requirement and no 401/403."""
    secured_any = False
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            if "security" not in op:
                continue
            is_read = method == "get" or (method, path) in _READS
            if s.api_token and (s.auth_reads or not is_read):
                secured_any = True
                continue
            del op["security"]
            op.get("responses", {}).pop("401", None)
            op.get("responses", {}).pop("403", None)
    if not secured_any:
        schema.get("components", {}).pop("securitySchemes", None)
    return schema


def create_app(
    settings: Settings | None = None, *, heartbeat_s: float = 15.0, max_wait_s: float | None = None
) -> FastAPI:
    """The control service for ``settings`` (default: from the environment).

    ``settings.redis_url`` must be set (``pausesvc serve`` starts an embedded Redis when not).
    ``heartbeat_s``: idle time between ``: keepalive`` comments on ``/v1/events``.
    ``max_wait_s``: cap on one long-poll (it then answers ``paused: true``; clients loop).
    """
    s = settings or Settings()
    state = ServiceState(s, heartbeat_s=heartbeat_s, max_wait_s=max_wait_s)

    from pausesvc import __version__

    app = FastAPI(
        title="pausesvc control service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan(state),
    )
    app.state.svc = state
    state.metrics.registry.register(WatcherCollector(lambda: state.watcher))
    state.metrics.registry.register(VersionCollector(lambda: state.fleet_versions))
    install_error_handlers(app)
    _add_middleware(app, state)
    _include_routers(app)
    _describe_openapi(app, s)
    _add_pages(app, state)
    return app


def _lifespan(state: ServiceState) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app owns the service state: started with the app, closed when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.aclose()

    return lifespan


def _add_middleware(app: FastAPI, state: ServiceState) -> None:
    # Starlette runs the middleware added last outermost: guard, then path rebuild, then counters
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    app.add_middleware(AdapterPathMiddleware)
    # outermost: Host allow-list, cross-site and content-type checks, stream caps (one place)
    app.add_middleware(GuardMiddleware, settings=state.settings, metrics=state.metrics)


def _include_routers(app: FastAPI) -> None:
    routers = (_routes.router, _events.router, _skyrl.router, _versions.router)
    for router in routers:
        app.include_router(router)
    app.state.api_routes = [r for router in routers for r in router.routes]


def _describe_openapi(app: FastAPI, s: Settings) -> None:
    """Serve the OpenAPI document of this deployment's auth (see ``_describe_auth``), built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _describe_auth(FastAPI.openapi(app), s)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_pages(app: FastAPI, state: ServiceState) -> None:
    """The dashboard and /metrics: outside the API (no schema, no auth)."""
    page = _dashboard()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        await state.refresh_versions()
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
