"""The request guards of the control service, in one pure ASGI middleware (outermost).

Before any route runs, in this order:

1. **Host allow-list** (DNS rebinding): bound to a loopback host (the default), only
   ``127.0.0.1``, ``localhost`` and ``[::1]`` with this server's port, plus
   ``PAUSESVC_ALLOWED_HOSTS``, are accepted; anything else is 400 ``host_not_allowed``. Bound to
   a non-loopback host with ``allowed_hosts`` empty, any Host is accepted (the service is
   reachable over the network anyway: the API token is the protection there).
2. **Cross-site mutations** (CSRF): a POST/PUT/PATCH/DELETE whose ``Sec-Fetch-Site`` is not
   ``same-origin``/``none``, or whose ``Origin`` (``null`` included) is not this Host, is 403
   ``cross_site``. Programs (curl, httpx, the CLI) send neither header and are not affected;
   the dashboard is same-origin.
3. **JSON only**: a mutating call that sends a body must say ``Content-Type: application/json``
   (415 ``unsupported_media_type``): a page cannot send that cross-origin without a preflight.
4. **Bodies are capped** at ``max_body_bytes`` before anything reads them (413
   ``body_too_large``): a declared ``Content-Length`` over it is refused at once, a chunked body
   when it grows over it - the API token is checked later, by the routes, and must not be a
   way to make the service buffer a body of any size.
5. **Long-lived requests are capped**: at most ``max_event_streams`` concurrent ``/v1/events``
   streams and ``max_long_polls`` concurrent long-polls; beyond, 503 ``too_many_streams`` /
   ``too_many_waits`` with ``Retry-After``.

Every response says it may not be framed (``X-Frame-Options: DENY``, ``Content-Security-Policy:
frame-ancestors 'none'``): a page on another origin cannot put the dashboard's buttons under
its own (clickjacking), and ``X-Content-Type-Options: nosniff``.

Each refusal is counted in ``pausesvc_http_refused_total{reason}``.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import unquote_to_bytes, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pausesvc._settings import Settings
from pausesvc.service._metrics import Metrics

__all__ = ["GuardMiddleware", "HostPolicy"]

logger = logging.getLogger("pausesvc.service")

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRY_AFTER_S = 5


def _is_loopback(host: str) -> bool:
    h = host.strip("[]").lower()
    return h in LOOPBACK_NAMES or h.startswith("127.")


class HostPolicy:
    """Which ``Host`` header values this service answers."""

    def __init__(self, settings: Settings) -> None:
        extra = [h.strip().lower() for h in settings.allowed_hosts if h.strip()]
        self.any_host = "*" in extra or (not _is_loopback(settings.host) and not extra)
        #: names accepted on this server's port only (a loopback bind's own names)
        self.loopback = LOOPBACK_NAMES | (
            {settings.host.strip("[]").lower()} if _is_loopback(settings.host) else set()
        )
        #: configured values: "name" (any port) or "name:port"
        self.extra = frozenset(extra)

    def allows(self, host: str | None, server_port: int | None) -> bool:
        if self.any_host:
            return True
        if not host:
            return False
        host = host.strip().lower()
        parts = urlsplit(f"//{host}")
        try:
            port = parts.port
        except ValueError:
            return False
        name = parts.hostname or ""
        if host in self.extra or name in self.extra:
            return True
        if name in self.loopback:
            return port is None or server_port is None or port == server_port
        return False


def _long_lived(scope: Scope) -> str | None:
    """'stream', 'poll' or None for this request."""
    method, path = scope.get("method"), scope.get("path", "")
    if method == "GET":
        if path == "/v1/events":
            return "stream"
        raw = scope.get("raw_path") or path.encode()
        if raw.startswith(b"/v1/pauses/") and raw.rstrip(b"/").endswith(b"/wait"):
            return "poll"
    elif method == "POST" and path == "/skyrl/v1/wait_lora_unpaused":
        return "poll"
    return None


#: on every response: no framing (clickjacking), no content sniffing
SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
)


def _declared_length(headers: Headers) -> int | None:
    try:
        return int(headers.get("content-length", ""))
    except ValueError:
        return None


def _utf8_query(query: bytes) -> bool:
    """Does the (percent-decoded) query string decode as UTF-8?"""
    try:
        unquote_to_bytes(query.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _has_body(headers: Headers) -> bool:
    if "transfer-encoding" in headers:
        return True
    try:
        return int(headers.get("content-length", "0")) > 0
    except ValueError:
        return True


def _is_json(headers: Headers) -> bool:
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json"


def cross_site(headers: Headers) -> str | None:
    """Why a browser sent this from another site, or None."""
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    if origin is None:
        return None
    host = headers.get("host", "").strip().lower()
    parts = urlsplit(origin.strip().lower())
    if not parts.scheme or parts.netloc != host:
        return f"Origin {origin!r} is not this host ({host!r})"
    return None


class GuardMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.hosts = HostPolicy(settings)
        if self.hosts.any_host and "*" not in settings.allowed_hosts:
            logger.warning(
                "bound to %s: any Host header is accepted (set PAUSESVC_ALLOWED_HOSTS "
                "to the names clients use, to refuse DNS-rebound requests)",
                settings.host,
                extra={"event": "any_host"},
            )
        # process-wide counts of open long-lived requests (not per-request state)
        self.open = {"stream": 0, "poll": 0}
        self.limits = {"stream": settings.max_event_streams, "poll": settings.max_long_polls}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = refused = False

        async def secured_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # answered 413 already: what the app says after that goes nowhere
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()), *SECURITY_HEADERS]}
            await send(message)

        cap, seen = self.settings.max_body_bytes, 0

        async def capped_receive() -> Message:
            """The body, until it passes ``max_body_bytes``: then 413 (if nothing was sent
            yet) and, for the app, the client is gone."""
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > cap:
                    if not started:
                        await self._too_large(secured_send)
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        await self._guarded(scope, capped_receive, secured_send)

    async def _too_large(self, send: Send) -> None:
        await self._refuse(
            send,
            413,
            "body_too_large",
            f"the request body is over {self.settings.max_body_bytes} bytes (max_body_bytes)",
            "body",
        )

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        declared = _declared_length(headers)
        if declared is not None and declared > self.settings.max_body_bytes:
            await self._too_large(send)
            return
        if not _utf8_query(scope.get("query_string") or b""):
            # Starlette would turn each bad byte into U+FFFD: a holder nobody named
            await self._refuse(send, 422, "invalid_input", "the query string is not UTF-8", "query")
            return
        server = scope.get("server")
        if not self.hosts.allows(headers.get("host"), server[1] if server else None):
            await self._refuse(
                send,
                400,
                "host_not_allowed",
                f"Host {headers.get('host')!r} is not allowed here (set PAUSESVC_ALLOWED_HOSTS to serve it)",
                "Host",
            )
            return
        if scope.get("method") in MUTATING:
            why = cross_site(headers)
            if why is not None:
                await self._refuse(send, 403, "cross_site", f"cross-site request refused ({why})", "Origin")
                return
            if _has_body(headers) and not _is_json(headers):
                await self._refuse(
                    send,
                    415,
                    "unsupported_media_type",
                    "send the body as Content-Type: application/json",
                    "Content-Type",
                )
                return
        kind = _long_lived(scope)
        if kind is None:
            await self.app(scope, receive, send)
            return
        if self.open[kind] >= self.limits[kind]:
            what = "event streams" if kind == "stream" else "long-polls"
            await self._refuse(
                send,
                503,
                f"too_many_{'streams' if kind == 'stream' else 'waits'}",
                f"this service already serves {self.limits[kind]} {what}; retry later",
                None,
                retry_after=True,
            )
            return
        self.open[kind] += 1
        if kind == "poll":
            self.metrics.long_polls_open.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.open[kind] -= 1
            if kind == "poll":
                self.metrics.long_polls_open.dec()

    async def _refuse(
        self,
        send: Send,
        status: int,
        error: str,
        detail: str,
        field: str | None,
        *,
        retry_after: bool = False,
    ) -> None:
        self.metrics.refused.labels(error).inc()
        body: dict[str, str] = {"detail": detail, "error": error}
        if field is not None:
            body["field"] = field
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        if retry_after:
            headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})
