"""A fake vLLM engine (pure ASGI) that the real PauseGateMiddleware sits in front of.

It exposes exactly the surface the gate's drain uses (``_engine.py`` in the plugin):
``app.state.engine_client.output_processor.request_states`` (internal id -> object with
``lora_name`` and ``external_req_id``) and ``await engine_client.abort(ids, internal=True)``.

``POST /v1/completions`` generates one token every ``interval`` seconds. A token encodes the
adapter's weight version on this replica and its position: ``version * VERSION_BASE + pos``, so
a sample's tokens alone say which weights produced each one. EVERY emitted token is appended to
the token log as one line ``adapter<TAB>replica<TAB>version<TAB>monotonic_ns<TAB>request<TAB>pos``
(CLOCK_MONOTONIC is system wide on Linux, so the checker compares it with the controller's).

``POST /fake/swap {"adapter", "version"}`` installs new weights (sets the version) and logs a
``SWAP`` line, plus a ``VIOLATION`` line when a request of that adapter is still decoding.
``GET /fake/state``: versions, live requests. ``POST /fake/config``: ``abort_delay_s`` (a slow
engine: aborts take effect only after that delay), ``fail_loads`` (every load fails),
``load_delay_s`` (how long a load takes, 0.05 s by default).

The gate's weight-version loads use ``engine_client.add_lora`` (path ``fake://<adapter>/<n>``
installs version n, logged like ``/fake/swap``), ``remove_lora``, ``reset_prefix_cache`` and
``app.state.openai_serving_models`` (:class:`FakeModels`); :func:`install_fake_lora_request`
provides the ``vllm.lora.request.LoRARequest`` the loader imports.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import types
import uuid
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

VERSION_BASE = 100_000

Scope = dict[str, Any]


class RequestState:
    """What vLLM's output processor keeps per request (the fields the gate reads)."""

    __slots__ = ("aborted", "external_req_id", "lora_name", "wake")

    def __init__(self, lora_name: str | None, external_req_id: str) -> None:
        self.lora_name = lora_name
        self.external_req_id = external_req_id
        self.aborted = False
        self.wake = asyncio.Event()


class FakeEngine:
    """``engine_client``: request_states + abort(ids, internal=True)."""

    def __init__(
        self, replica: str, log_path: str | None, interval: float, versions: dict[str, int] | None = None
    ) -> None:
        self.replica = replica
        self.interval = interval
        self.versions: dict[str, int] = dict(versions or {})
        self.output_processor = SimpleNamespace(request_states={})
        self.abort_delay_s = 0.0
        self.load_delay_s = 0.05
        self.fail_loads = False
        self.tokens = 0
        self.aborts = 0
        self._log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115

    @property
    def request_states(self) -> dict[str, RequestState]:
        return self.output_processor.request_states  # type: ignore[no-any-return]

    async def abort(self, ids: list[str], internal: bool = False) -> None:
        if self.abort_delay_s:
            await asyncio.sleep(self.abort_delay_s)
        for rid in ids:
            st = self.request_states.get(rid)
            if st is not None:
                st.aborted = True
                st.wake.set()
                self.aborts += 1

    # -- the weight-version surface (vLLM's add_lora / remove_lora / reset_prefix_cache) ---------
    async def add_lora(self, request: Any) -> bool:
        """Load "weights" ``fake://<adapter>/<version>``: from now on the adapter's tokens encode
        that version. A live, unaborted request of the adapter at that moment is a VIOLATION."""
        await asyncio.sleep(self.load_delay_s)
        prefix = f"fake://{request.lora_name}/"
        path = str(request.lora_path)
        if self.fail_loads or not path.startswith(prefix) or not path[len(prefix) :].isdigit():
            raise ValueError(f"No adapter found for {path}")
        self._install(request.lora_name, int(path[len(prefix) :]))
        return True

    async def remove_lora(self, lora_id: int) -> bool:
        return True

    async def reset_prefix_cache(self) -> bool:
        return True

    def _install(self, adapter: str, version: int) -> list[str]:
        live = [rid for rid, st in self.request_states.items() if st.lora_name == adapter and not st.aborted]
        self.versions[adapter] = version
        self.log(f"SWAP\t{self.replica}\t{version}\t{time.monotonic_ns()}\t{adapter}\t0")
        for rid in live:
            self.log(
                f"VIOLATION\t{self.replica}\t{version}\t{time.monotonic_ns()}\tswap-while-decoding:{adapter}:{rid}\t0"
            )
        return live

    def log(self, line: str) -> None:
        if self._log is not None:
            self._log.write(line + "\n")

    def emit(self, adapter: str, version: int, request: str, pos: int) -> None:
        self.tokens += 1
        self.log(f"{adapter}\t{self.replica}\t{version}\t{time.monotonic_ns()}\t{request}\t{pos}")

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


async def _read_all(receive: Any) -> tuple[bytes, bool]:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(chunks), False


async def _json(send: Any, status: int, body: object) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return str(v.decode("latin-1"))
    return None


class EngineApp:
    """The OpenAI-ish server the gate wraps (lifespan aware, like vLLM's FastAPI app)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    self.engine.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        method = scope.get("method")
        if path == "/fake/state":
            await _json(
                send,
                200,
                {
                    "replica": self.engine.replica,
                    "versions": self.engine.versions,
                    "live": sorted({str(s.lora_name) for s in self.engine.request_states.values()}),
                    "live_count": len(self.engine.request_states),
                    "tokens": self.engine.tokens,
                    "pid": os.getpid(),
                },
            )
            return
        body, gone = await _read_all(receive)
        if gone:
            return
        if path == "/fake/swap" and method == "POST":
            await self._swap(json.loads(body), send)
        elif path == "/fake/config" and method == "POST":
            cfg = json.loads(body)
            self.engine.abort_delay_s = float(cfg.get("abort_delay_s", 0.0))
            self.engine.fail_loads = bool(cfg.get("fail_loads", False))
            self.engine.load_delay_s = float(cfg.get("load_delay_s", 0.05))
            await _json(send, 200, {"ok": True})
        elif path.rstrip("/").endswith("/v1/completions") and method == "POST":
            await self._complete(scope, body, receive, send)
        elif method == "POST" and path.rstrip("/").endswith(("/chat/completions", "/responses", "/generate")):
            await _json(send, 200, {"ok": True, "echo_bytes": len(body)})
        else:
            await _json(send, 404, {"error": {"message": f"no route {path}"}})

    async def _swap(self, cfg: dict[str, Any], send: Any) -> None:
        live = self.engine._install(str(cfg["adapter"]), int(cfg["version"]))
        await _json(send, 200, {"ok": True, "live": live})

    async def _complete(self, scope: Scope, raw: bytes, receive: Any, send: Any) -> None:
        try:
            body = json.loads(raw)
            model = body["model"]
            prompt = body.get("prompt", [1])
            if isinstance(prompt, str):
                prompt = [ord(c) % 1000 for c in prompt] or [1]
            if (
                not isinstance(model, str)
                or not isinstance(prompt, list)
                or not all(isinstance(t, int) for t in prompt)
            ):
                raise ValueError("bad model or prompt")
            max_tokens = int(body.get("max_tokens", 16))
            stream = bool(body.get("stream", False))
        except (ValueError, KeyError, TypeError) as exc:  # vLLM's own validation: a 400
            await _json(
                send, 400, {"error": {"message": f"invalid request: {exc}", "type": "BadRequestError"}}
            )
            return
        engine = self.engine
        base = _header(scope, b"x-request-id") or uuid.uuid4().hex
        external = f"cmpl-{base}-0"
        # "tokenization": the request reaches the engine a little after the gate admitted it
        await asyncio.sleep(random.uniform(0, 0.005))
        internal = uuid.uuid4().hex
        st = RequestState(None if model == "base" else model, external)
        engine.request_states[internal] = st

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            st.aborted = True  # vLLM aborts a request whose client left
            st.wake.set()

        watcher = asyncio.create_task(watch_disconnect())
        out: list[int] = []
        finish = "length"
        try:
            if stream:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")],
                    }
                )
            while len(out) < max_tokens:
                try:
                    await asyncio.wait_for(st.wake.wait(), engine.interval)
                except TimeoutError:
                    pass
                if st.aborted:  # checked with no await before the token is made
                    finish = "abort"
                    break
                version = engine.versions.get(model, 0)
                pos = len(prompt) + len(out)
                tok = version * VERSION_BASE + pos
                engine.emit(model, version, external, pos)
                out.append(tok)
                if stream:
                    await self._chunk(send, external, model, [tok], None)
            if stream:
                await self._chunk(send, external, model, [], finish)
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            else:
                await _json(
                    send,
                    200,
                    {
                        "id": external,
                        "object": "text_completion",
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "text": "".join(f"<{t}>" for t in out),
                                "token_ids": out,
                                "finish_reason": finish,
                                "stop_reason": None,
                                "logprobs": None,
                                "prompt_token_ids": prompt,
                            }
                        ],
                        "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(out)},
                    },
                )
        finally:
            engine.request_states.pop(internal, None)
            watcher.cancel()

    @staticmethod
    async def _chunk(send: Any, rid: str, model: str, toks: list[int], finish: str | None) -> None:
        data = {
            "id": rid,
            "object": "text_completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "text": "".join(f"<{t}>" for t in toks),
                    "token_ids": toks,
                    "finish_reason": finish,
                }
            ],
        }
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + json.dumps(data).encode() + b"\n\n",
                "more_body": True,
            }
        )


class ReplicaApp:
    """What Starlette does for vLLM: ``scope["app"]`` is the app, whose ``state.engine_client``
    the gate reads; the gate wraps the engine app like ``--middleware`` does."""

    def __init__(self, engine: FakeEngine, gate_factory: Any) -> None:
        self.state = SimpleNamespace(engine_client=engine, openai_serving_models=FakeModels())
        self.stack = gate_factory(EngineApp(engine))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        scope["app"] = self
        await self.stack(scope, receive, send)


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self, k: int) -> int:
        self.n += k
        return self.n


class FakeModels:
    """``app.state.openai_serving_models``: the registry the gate's in-process load updates."""

    def __init__(self) -> None:
        self.lora_requests: dict[str, Any] = {}
        self.lora_id_counter = _Counter()
        self.lora_resolver_lock: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def is_base_model(self, name: str) -> bool:
        return name == "base"


class LoRARequest:
    """Stands in for ``vllm.lora.request.LoRARequest`` (keyword fields, as the gate builds it)."""

    def __init__(self, **fields: Any) -> None:
        self.base_model_name: str | None = None
        self.__dict__.update(fields)


def install_fake_lora_request() -> None:
    """Make ``importlib.import_module("vllm.lora.request")`` find :class:`LoRARequest` (no vLLM
    in this process: the gate's loader imports it at load time)."""
    mod = types.ModuleType("vllm.lora.request")
    mod.LoRARequest = LoRARequest  # type: ignore[attr-defined]
    sys.modules.setdefault("vllm.lora.request", mod)
