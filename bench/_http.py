"""A lean HTTP/1.1 client over asyncio streams: one keep-alive connection, requests in series.

Used as the best fan-out controller (one connection per replica) and as the load generator of
the gate-overhead scenario. Reads Content-Length and chunked bodies; nothing else.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["RawConnection", "build_post"]


def build_post(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


class RawConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, raw: bytes) -> tuple[int, bytes, float]:
        """Send one request; return (status, body, seconds to the first body byte).

        A kept-alive connection the server closed meanwhile is reopened once (as every HTTP
        client does); a fresh connection's failure is raised.
        """
        fresh = self.writer is None or self.writer.is_closing()
        if fresh:
            await self.connect()
        try:
            return await self._request(raw)
        except (asyncio.IncompleteReadError, ConnectionError):
            if fresh:
                raise
            await self.close()
            await self.connect()
            return await self._request(raw)

    async def _request(self, raw: bytes) -> tuple[int, bytes, float]:
        assert self.reader is not None and self.writer is not None
        t0 = time.monotonic()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
        ttfb = 0.0
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if not ttfb:
                    ttfb = time.monotonic() - t0
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size + 2))
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await self.reader.readexactly(length) if length > 0 else b""
            ttfb = time.monotonic() - t0
        if head.lower().find(b"connection: close") >= 0:
            await self.close()
        return status, body, ttfb

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = None
