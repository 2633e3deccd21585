"""A scripted fake vLLM: replays a script of results, records every request.

Script steps (one per request, the last one repeats):
- ``Gen(tokens, finish)``: a 200 in vLLM's shape for the endpoint (completions or chat);
  logprobs are ``-token/1000`` (override with ``logprobs=[...]``), prompt logprobs
  ``-(position+1)/100`` per prompt position after the first; ``version="v2"`` sends the gate's
  ``x-pausesvc-adapter-version: v2`` header with it (as the gate does for an adapter whose
  loaded version the replica knows; no header otherwise);
- ``Status(code)``: that status with a JSON error body;
- ``Drop()``: the connection breaks (``httpx.ReadError``) after the request was recorded;
- ``Hold(event, then)``: wait for ``event`` (an asyncio.Event) before answering ``then``.

Served through ``httpx.ASGITransport`` (async) or ``httpx.MockTransport`` (sync), or a real
uvicorn server for the latency benchmark.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Gen:
    tokens: list[int]
    finish: str | None = "stop"
    logprobs: list[float | None] | None = None
    no_token_ids: bool = False
    text: str | None = None
    omit_finish: bool = False
    version: str | None = None


@dataclass
class Status:
    code: int


@dataclass
class Drop:
    pass


@dataclass
class Hold:
    event: asyncio.Event
    then: Any


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    at: float


def text_of(tokens: list[int]) -> str:
    return "".join(f"<{t}>" for t in tokens)


@dataclass
class FakeVLLM:
    script: list[Any]
    requests: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event | None = None

    def _step(self) -> Any:
        i = len(self.requests) - 1
        return self.script[min(i, len(self.script) - 1)]

    def record(self, path: str, body: dict[str, Any]) -> Any:
        self.requests.append(Seen(path, body, time.monotonic()))
        if self.arrived is not None:
            self.arrived.set()
        return self._step()

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests]

    @staticmethod
    def headers(step: Any) -> list[tuple[bytes, bytes]]:
        """The response headers of a step: the gate's version header when it names one."""
        headers = [(b"content-type", b"application/json")]
        version = getattr(step, "version", None)
        if version is not None:
            headers.append((b"x-pausesvc-adapter-version", version.encode()))
        return headers

    def answer(self, path: str, body: dict[str, Any], step: Any) -> tuple[int, dict[str, Any]]:
        if isinstance(step, Status):
            return step.code, {"error": {"message": f"scripted {step.code}"}}
        assert isinstance(step, Gen), step
        return 200, (
            self._chat(body, step) if path.endswith("chat/completions") else self._completion(body, step)
        )

    @staticmethod
    def _lps(step: Gen) -> list[float | None]:
        if step.logprobs is not None:
            return step.logprobs
        return [-t / 1000 for t in step.tokens]

    def _completion(self, body: dict[str, Any], step: Gen) -> dict[str, Any]:
        prompt = body["prompt"] if isinstance(body["prompt"], list) else [1, 2, 3]
        text = step.text if step.text is not None else text_of(step.tokens)
        choice: dict[str, Any] = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": step.finish,
            "stop_reason": None,
            "token_ids": None if step.no_token_ids else step.tokens,
            "prompt_logprobs": None,
            "prompt_token_ids": prompt,
        }
        if step.omit_finish:
            del choice["finish_reason"]
        if body.get("logprobs") is not None:
            offs, o = [], 0
            for t in step.tokens:
                offs.append(o)
                o += len(text_of([t]))
            choice["logprobs"] = {
                "text_offset": offs,
                "token_logprobs": self._lps(step),
                "tokens": [text_of([t]) for t in step.tokens],
                "top_logprobs": [{text_of([t]): -t / 1000} for t in step.tokens],
            }
        if body.get("prompt_logprobs") is not None:
            choice["prompt_logprobs"] = [None] + [
                {str(t): {"logprob": -(i + 1) / 100, "rank": 1, "decoded_token": f"<{t}>"}}
                for i, t in enumerate(prompt[1:])
            ]
        return {
            "id": f"cmpl-{len(self.requests)}",
            "object": "text_completion",
            "created": 1,
            "model": body.get("model"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(step.tokens),
                "total_tokens": len(prompt) + len(step.tokens),
            },
        }

    def _chat(self, body: dict[str, Any], step: Gen) -> dict[str, Any]:
        text = step.text if step.text is not None else text_of(step.tokens)
        # the "template": one token per character of every message, then the partial answer
        rendered = [ord(c) % 2000 for m in body["messages"] for c in m["content"]]
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": step.finish,
            "stop_reason": None,
            "token_ids": None if step.no_token_ids else step.tokens,
        }
        if body.get("logprobs"):
            choice["logprobs"] = {
                "content": [
                    {"token": text_of([t]), "logprob": lp, "bytes": None, "top_logprobs": []}
                    for t, lp in zip(step.tokens, self._lps(step), strict=True)
                ]
            }
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": 1,
            "model": body.get("model"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(rendered),
                "completion_tokens": len(step.tokens),
                "total_tokens": len(rendered) + len(step.tokens),
            },
            "prompt_token_ids": rendered,
            "prompt_logprobs": None,
        }

    # -- serving ------------------------------------------------------------------------------
    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = json.loads(b"".join(chunks) or b"{}")
        step = self.record(scope["path"], body)
        while isinstance(step, Hold):
            await step.event.wait()
            step = step.then
        if isinstance(step, Drop):
            raise _DropError
        status, payload = self.answer(scope["path"], body, step)
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": self.headers(step),
            }
        )
        await send({"type": "http.response.body", "body": data})

    def async_client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=_Dropping(httpx.ASGITransport(app=self.app)), base_url="http://vllm", **kw
        )

    def sync_client(self, **kw: Any) -> httpx.Client:
        def handler(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content or b"{}")
            step = self.record(request.url.path, body)
            if isinstance(step, Drop):
                raise httpx.ReadError("scripted drop", request=request)
            status, payload = self.answer(request.url.path, body, step)
            return httpx.Response(status, headers=self.headers(step), content=json.dumps(payload).encode())

        return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://vllm", **kw)


class _DropError(Exception):
    pass


class _Dropping(httpx.AsyncBaseTransport):
    """Turns a scripted Drop into what a broken connection looks like to httpx."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.inner.handle_async_request(request)
        except _DropError:
            raise httpx.ReadError("scripted drop", request=request) from None

    async def aclose(self) -> None:
        await self.inner.aclose()


class NeverPaused:
    """A waiter for tests without Redis: never paused; optionally reports a pause revision."""

    def __init__(self, pause_revision: int | None = None) -> None:
        self.pause_revision = pause_revision
        self.waits = 0

    def state(self, name: str) -> Any:
        if self.pause_revision is None:
            return None
        return type("S", (), {"pause_revision": self.pause_revision})()

    async def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        self.waits += 1
        return True


class SyncNeverPaused(NeverPaused):
    def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:  # type: ignore[override]
        self.waits += 1
        return True


class AlwaysPaused:
    async def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        await asyncio.sleep(timeout if timeout is not None else 3600)
        return False
