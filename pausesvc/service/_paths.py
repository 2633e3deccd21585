"""Adapter names in URLs: ``/v1/pauses/{name}`` where a name may contain ``/``, ``%``, ``?``...

Routing runs on the percent-DECODED path, which would make ``org%2Flora/wait`` and
``org/lora/wait`` indistinguishable and turn an encoded ``%`` into an escape. This pure ASGI
middleware rebuilds the path of ``/v1/pauses/...`` requests from ``raw_path`` segment by segment,
keeping ``/``, ``%`` (and everything but unreserved characters) inside a segment encoded
(``%2F``, ``%25``); :func:`adapter_name` decodes them again. So both spellings work:

- ``/v1/pauses/org%2Flora`` - always exact (recommended: encode the name as one segment);
- ``/v1/pauses/org/lora`` - also works, except for names whose last segment is ``renew`` or
  ``wait``, which must be sent encoded.
"""

from __future__ import annotations

import json
from urllib.parse import quote, unquote, unquote_to_bytes

from fastapi import Path
from starlette.types import ASGIApp, Receive, Scope, Send

from pausesvc._exceptions import InvalidNameError
from pausesvc.protocol.keys import validate_name
from pausesvc.service._errors import ApiError
from pausesvc.service._schemas import NAME_PATTERN

__all__ = ["AdapterPathMiddleware", "adapter_name", "adapter_name_exact"]

#: the routes whose path carries an adapter name
PREFIXES = (b"/v1/pauses/", b"/v1/adapters/")


def rebuild_path(raw_path: bytes) -> str:
    """The routing path for ``raw_path``: one percent-encoded segment per raw segment."""
    out = []
    for seg in raw_path.split(b"/"):
        text = unquote_to_bytes(seg).decode("utf-8")  # UnicodeDecodeError: not UTF-8
        # re-encode everything but unreserved characters: '/' and '%' stay inside the segment,
        # and control characters cannot stop the route from matching (it then answers 422)
        out.append(quote(text, safe="-._~!$&'()*+,;=:@"))
    return "/".join(out)


class AdapterPathMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            if raw is None:
                raw = quote(scope["path"], safe="/").encode("ascii")
            if raw.startswith(PREFIXES):
                try:
                    path = rebuild_path(raw)
                except UnicodeDecodeError:
                    body = json.dumps(
                        {
                            "detail": "name: the URL path is not valid UTF-8 once percent-decoded",
                            "error": "invalid_input",
                            "field": "name",
                        }
                    ).encode()
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 422,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
                scope = dict(scope)
                scope["path"] = path
        await self.app(scope, receive, send)


_NAME_DOC = (
    "Adapter name (`*` = everything). Percent-encode it as ONE path segment (`/` as `%2F`, "
    "`%` as `%25`, `?` as `%3F`, `#` as `%23`); unencoded `/` also works unless the name's last "
    "segment is `renew` or `wait`."
)


NamePath = Path(description=_NAME_DOC, min_length=1, json_schema_extra={"pattern": NAME_PATTERN})


def adapter_name(name: str = NamePath) -> str:
    """FastAPI dependency: the path's adapter name, decoded and validated (422 otherwise)."""
    decoded = unquote(name, errors="strict")
    try:
        return validate_name(decoded)
    except InvalidNameError as exc:
        raise ApiError(422, "invalid_input", str(exc), field="name") from None


_SUB = {"wait": "GET", "renew": "POST"}


def adapter_name_exact(name: str = NamePath) -> str:
    """Like :func:`adapter_name` for ``/v1/pauses/{name}`` itself: an UNENCODED name ending in
    ``/wait`` or ``/renew`` is a sub-resource called with the wrong method (405), not a name."""
    head, sep, last = name.rpartition("/")
    if sep and head and last in ("wait", "renew"):
        raise ApiError(
            405,
            "method_not_allowed",
            f"/{last} does not accept this method (to address an adapter whose name ends in "
            f"'/{last}', percent-encode the name: '/' as %2F)",
            field="name",
            headers={"Allow": _SUB[last]},
        )
    return adapter_name(name)
