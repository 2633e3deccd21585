"""What the end-to-end modules share: where the vLLM venv is, the fleet, and small helpers
(streams, completions, the gate's status, polling)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
from _wait import until as _until

from .vllm_server import VllmServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = Path(os.environ.get("PAUSESVC_VLLM_VENV", Path.home() / ".cache/pausesvc/vllm-venv-0.32.0"))
PY = VENV / "bin" / "python"
GATE = "pausesvc_vllm.PauseGateMiddleware"
HOLDER = "e2e"
PROMPT = "def parse(self, data):"


class Fleet:
    def __init__(self, servers: list[VllmServer], redis_url: str, namespace: str, tiny: Path) -> None:
        self.servers = servers
        self.redis_url = redis_url
        self.namespace = namespace
        self.tiny = tiny

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]


class Stream:
    """One streaming completion; remembers every token and how it ended."""

    def __init__(
        self, http: httpx.AsyncClient, url: str, model: str, max_tokens: int = 480, **extra: Any
    ) -> None:
        self.model = model
        self.url = url
        self.tokens: list[int] = []
        self.finish: str | None = None
        self.ended_at: float | None = None
        self.status: int | None = None
        self.first = asyncio.Event()
        body = {
            "model": model,
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "stream": True,
            "ignore_eos": True,
            "return_token_ids": True,
            "temperature": 0,
            **extra,
        }
        self.task = asyncio.create_task(self._run(http, body))

    async def _run(self, http: httpx.AsyncClient, body: dict[str, Any]) -> None:
        async with http.stream("POST", self.url + "/v1/completions", json=body) as r:
            self.status = r.status_code
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choice = json.loads(line[6:])["choices"][0]
                self.tokens += choice.get("token_ids") or []
                if len(self.tokens) >= 3:
                    self.first.set()
                self.finish = choice.get("finish_reason") or self.finish
        self.ended_at = time.monotonic()


def warm_up(url: str) -> None:
    """The first requests of a cold CPU server are slow (one server of two, just restarted,
    produced 3 tokens while the warm one produced 480): make them before measuring anything."""
    with httpx.Client(timeout=300) as c:
        for model in ("lora-a", "lora-b", "tiny"):
            r = c.post(url + "/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 16})
            assert r.status_code == 200, r.text


async def complete(http: httpx.AsyncClient, url: str, model: str, **body: Any) -> dict[str, Any]:
    r = await http.post(
        url + "/v1/completions",
        json={"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **body},
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def status(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    return (await http.get(url + "/pausesvc/status")).json()  # type: ignore[no-any-return]


async def engine_loras(http: httpx.AsyncClient, url: str) -> list[str | None]:
    """The LoRA of every request the engine has in flight right now."""
    states = (await http.get(url + "/_test/requests")).json()
    return [v["lora_name"] for k, v in states.items() if not k.startswith("_")]


async def until(pred: Any, timeout: float = 30.0, every: float = 0.05) -> None:
    await _until(pred, timeout, every)


async def held(http: httpx.AsyncClient, url: str, adapter: str) -> int:
    return int((await status(http, url))["stats"]["held"].get(adapter, 0))
