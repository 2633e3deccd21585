"""Who may call the gate's own endpoints, and which requests are worth holding.

The gate is the outermost middleware: vLLM's ``--api-key`` check runs behind it and guards only
``/v1...``, so the gate checks its own credential on its own paths:

- **Credential**: ``replica_control_token``, else ``api_token`` (the control service's token).
  Sent as ``Authorization: Bearer <token>``, compared with :func:`hmac.compare_digest`. Missing
  or malformed: 401; wrong: 403. No credential configured: the mutating endpoints are open, a
  WARNING says so at start, and they act as the holder ``skyrl-anon`` - never ``skyrl``, the
  holder the control service and authenticated gates use - so an anonymous resume can never
  release a hold an authenticated caller made.
- **Browsers**: a mutating call needs ``Content-Type: application/json`` (415 otherwise, which
  a page cannot send cross-origin without a CORS preflight, and the gate answers no preflight)
  and is refused (403) when ``Origin`` names another host or ``Sec-Fetch-Site`` says
  ``cross-site`` / ``same-site``.
- **vLLM's API key** (:func:`lacks_vllm_key`): a request for a paused adapter that vLLM would
  refuse anyway (401) is handed to vLLM at once instead of being held.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from pausesvc import Settings
from pausesvc_vllm._asgi import Scope, header_value

__all__ = [
    "ANON_HOLDER",
    "AUTH_HOLDER",
    "Refusal",
    "authorize",
    "control_token",
    "cross_site",
    "is_json",
    "lacks_vllm_key",
    "warn_if_open",
]

logger = logging.getLogger("pausesvc_vllm")

AUTH_HOLDER = "skyrl"
ANON_HOLDER = "skyrl-anon"

#: (status, error code, message, extra headers)
Refusal = tuple[int, str, str, list[tuple[bytes, bytes]]]


def control_token(settings: Settings) -> str | None:
    """The credential the gate's mutating endpoints require (None: they are open)."""
    return settings.replica_control_token or settings.api_token or None


def authorize(scope: Scope, expected: str) -> Refusal | None:
    """None when the request carries ``Authorization: Bearer <expected>``."""
    header = header_value(scope, b"authorization")
    challenge = [(b"www-authenticate", b'Bearer realm="pausesvc-gate"')]
    if not header:
        return 401, "unauthorized", "missing Authorization: Bearer <token> header", challenge
    scheme, _, presented = header.partition(b" ")
    presented = presented.strip()
    if scheme.lower() != b"bearer" or not presented:
        return (401, "unauthorized", "the Authorization header must be 'Bearer <token>'", challenge)
    if not hmac.compare_digest(presented, expected.encode("utf-8", "surrogateescape")):
        return 403, "forbidden", "wrong token", []
    return None


def is_json(scope: Scope) -> bool:
    """Is the declared media type ``application/json`` (parameters such as charset allowed)?"""
    value = header_value(scope, b"content-type")
    if value is None:
        return False
    media = value.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


def cross_site(scope: Scope) -> str | None:
    """Why a browser sent this from another site, or None (no browser evidence, or same origin).

    ``Sec-Fetch-Site`` other than ``same-origin``/``none``, or an ``Origin`` whose host and port
    differ from the ``Host`` header's (``Origin: null`` included)."""
    fetch_site = header_value(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() not in (b"same-origin", b"none"):
        return f"Sec-Fetch-Site: {fetch_site.decode('latin-1')}"
    origin = header_value(scope, b"origin")
    if origin is None:
        return None
    host = (header_value(scope, b"host") or b"").decode("latin-1").strip().lower()
    text = origin.decode("latin-1").strip().lower()
    parts = urlsplit(text)
    if not parts.scheme or not parts.netloc or parts.netloc != host:
        return f"Origin {text!r} is not this host ({host!r})"
    return None


def warn_if_open(settings: Settings) -> None:
    """One WARNING at start when the mutating endpoints answer anyone."""
    if settings.gate_control_endpoints == "on" and control_token(settings) is None:
        logger.warning(
            "pausesvc gate: /skyrl/v1/abort_lora_requests and /skyrl/v1/resume_lora_requests "
            "need no credential: anyone who reaches this replica can pause adapters fleet-wide "
            "(as holder %r). Set PAUSESVC_REPLICA_CONTROL_TOKEN (or PAUSESVC_API_TOKEN), or "
            "PAUSESVC_GATE_CONTROL_ENDPOINTS=off.",
            ANON_HOLDER,
        )


def _vllm_tokens(app: Any) -> list[str] | None:
    """The keys vLLM's own AuthenticationMiddleware checks, as vLLM computes them
    (``args.api_key or [VLLM_API_KEY]``), or None when the app does not say (not vLLM, or not
    built yet): then nothing is known and the caller must not guess."""
    state = getattr(app, "state", None)
    args = getattr(state, "args", None) if state is not None else None
    if args is None or not hasattr(args, "api_key"):
        return None
    keys: Any = args.api_key or [os.environ.get("VLLM_API_KEY")]
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, Iterable):
        return None
    return [k for k in keys if isinstance(k, str) and k]


def lacks_vllm_key(scope: Scope, app: Any) -> bool:
    """True only when vLLM is known to answer this request 401 itself: vLLM has API keys, the
    path is one its check guards (``/v1...``, no ``root_path``) and the request's bearer token
    is none of them (vLLM's own comparison: the text after ``Bearer `` exactly)."""
    root = scope.get("root_path") or ""
    path = scope.get("path") or ""
    if root or not path.startswith("/v1"):
        return False
    tokens = _vllm_tokens(app)
    if not tokens:
        return False
    header = header_value(scope, b"authorization")
    if header is not None:
        scheme, _, param = header.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer":
            presented = param.encode("utf-8")
            for t in tokens:
                if hmac.compare_digest(presented, t.encode("utf-8")):
                    return False
    return True
