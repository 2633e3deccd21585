"""Trivial pure-ASGI passthrough middleware for the end-to-end vLLM tests.

Loaded by the server with ``--middleware _passthrough_mw.Passthrough`` (tests/e2e on
PYTHONPATH). It forwards everything unchanged, except one debug path used to test aborts:

    POST /_test/abort?id=EXTERNAL_ID[&internal=1]
        -> await scope["app"].state.engine_client.abort(EXTERNAL_ID, internal=...)
    GET  /_test/requests
        -> {internal_id: {"external_req_id": ..., "lora_name": ...}} from
           engine_client.output_processor.request_states
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]


class Passthrough:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/_test/"):
            await self._debug(scope, send)
            return
        await self.app(scope, receive, send)

    async def _debug(self, scope: Scope, send: Any) -> None:
        # engine_client is set on app.state after the middleware stack is built: read per call.
        engine = scope["app"].state.engine_client
        q = parse_qs(scope.get("query_string", b"").decode())
        body: Any
        if scope["path"] == "/_test/abort":
            ids = q.get("id", [])
            internal = q.get("internal", ["0"])[0] == "1"
            await engine.abort(ids, internal=internal)
            body = {"aborted": ids, "internal": internal}
        elif scope["path"] == "/_test/requests":
            states = engine.output_processor.request_states
            body = {
                rid: {
                    "type": type(st).__name__,
                    "external_req_id": getattr(st, "external_req_id", None),
                    "lora_name": getattr(st, "lora_name", None),
                }
                for rid, st in states.items()
            }
            body["_engine_type"] = type(engine).__module__ + "." + type(engine).__qualname__
        else:
            body = {"error": "unknown test path"}
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})
