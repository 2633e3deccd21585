"""The baseline controller: pause/resume = POST to every replica concurrently.

Three clients, same requests:

- ``skyrl``: SkyRL's ``RemoteInferenceClient`` shape, one shared ``httpx.AsyncClient`` and
  ``asyncio.gather`` over the replicas (its pool scan per request is encode/httpx#3215);
- ``httpx-per-replica``: one ``httpx.AsyncClient`` per replica;
- ``raw``: one lean keep-alive HTTP/1.1 connection per replica over asyncio streams.

A call fails on the first replica that fails (SkyRL raised on the first error of the gather).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from bench._http import RawConnection, build_post

__all__ = ["CLIENTS", "FanoutController", "FanoutError"]

CLIENTS = ("skyrl", "httpx-per-replica", "raw")
_ABORT = "/skyrl/v1/abort_lora_requests"
_RESUME = "/skyrl/v1/resume_lora_requests"


class FanoutError(Exception):
    """A replica failed the call (the others may or may not have applied it)."""


class FanoutController:
    def __init__(self, kind: str, ports: list[int], timeout: float = 30.0, host: str = "127.0.0.1") -> None:
        if kind not in CLIENTS:
            raise ValueError(kind)
        self.kind = kind
        self.ports = ports
        self.timeout = timeout
        self.urls = [f"http://{host}:{p}" for p in ports]
        self._shared: httpx.AsyncClient | None = None
        self._per: list[httpx.AsyncClient] = []
        self._raw: list[RawConnection] = []
        if kind == "skyrl":
            self._shared = httpx.AsyncClient(timeout=httpx.Timeout(timeout))
        elif kind == "httpx-per-replica":
            self._per = [httpx.AsyncClient(base_url=u, timeout=httpx.Timeout(timeout)) for u in self.urls]
        else:
            self._raw = [RawConnection(host, p) for p in ports]

    async def pause(self, name: str) -> None:
        await self._fanout(_ABORT, name)

    async def resume(self, name: str) -> None:
        await self._fanout(_RESUME, name)

    async def _fanout(self, path: str, name: str) -> None:
        payload = {"lora_name": name}
        if self.kind == "skyrl":
            assert self._shared is not None
            shared = self._shared

            async def one(url: str) -> Any:
                r = await shared.post(url + path, json=payload)
                r.raise_for_status()
                return r.json()

            coros = [one(u) for u in self.urls]
        elif self.kind == "httpx-per-replica":

            async def one_c(c: httpx.AsyncClient) -> Any:
                r = await c.post(path, json=payload)
                r.raise_for_status()
                return r.json()

            coros = [one_c(c) for c in self._per]
        else:
            body = json.dumps(payload).encode()

            async def one_r(conn: RawConnection) -> Any:
                async with asyncio.timeout(self.timeout):
                    status, data, _ = await conn.request(build_post(conn.host, conn.port, path, body))
                if status != 200:
                    raise FanoutError(f"{conn.port}: HTTP {status}")
                return data

            coros = [one_r(c) for c in self._raw]
        try:
            if self.kind == "raw":
                # the lean client waits for every replica (a connection left mid-request must not
                # be reused) and closes the ones that failed; then raises the first failure
                results = await asyncio.gather(*coros, return_exceptions=True)
                errors = [
                    (c, r) for c, r in zip(self._raw, results, strict=True) if isinstance(r, BaseException)
                ]
                for c, _ in errors:
                    await c.close()
                if errors:
                    raise errors[0][1]
            else:
                await asyncio.gather(*coros)
        except (httpx.HTTPError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise FanoutError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._shared is not None:
            await self._shared.aclose()
        for c in self._per:
            await c.aclose()
        for r in self._raw:
            await r.close()
