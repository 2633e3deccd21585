"""A TCP proxy on 127.0.0.1 that can partition its clients from a Redis: the fencing tests' network.

``with BlackholeProxy(redis_port) as proxy:`` starts it on its own thread and event loop; point
clients at ``proxy.url`` and switch modes from any thread (sync or async tests alike; do not call
the methods from a callback running on the proxy's own loop):

``forward()``
    Normal: every byte is relayed, both ways, with backpressure.
``blackhole()``
    A partition with TCP still up: every open connection stays open but nothing crosses it in
    either direction, not even a close (a FIN or an RST from one side never reaches the other).
    The proxy stops reading, so bytes a peer sends sit unread and are never delivered; a peer
    that writes a lot eventually blocks, as one whose packets get no ACKs would. New connections
    are accepted (the handshake completes) but never connected upstream. A client notices only
    by its own timeouts: a command with ``socket_timeout=0.5`` raises ``redis.TimeoutError``.
``reset()``
    Every connection is aborted with an RST (``ConnectionResetError`` on the next read or
    write), and new connections are reset as soon as they are accepted, until the next mode.
``forward()`` again
    New connections work at once. Connections black-holed before are closed (RST) by default:
    some of their bytes were dropped, so the stream cannot resume where it stopped; this is
    what a peer sees when a partition heals after the other side gave up. With
    ``forward(close_blackholed=False)`` they stay black-holed until their client closes them
    or the proxy stops (a partition that never heals for those connections).

``connections`` counts the relayed pairs still open; ``accepted`` counts every accepted one.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar

__all__ = ["BlackholeProxy", "Mode"]

Mode = Literal["forward", "blackhole", "reset"]
T = TypeVar("T")


def _abort(transport: asyncio.Transport | None) -> None:
    """Close with an RST (SO_LINGER 0) rather than a FIN."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already shut down: abort() below closes it either way
    transport.abort()


class _Pair:
    """One client connection and, once connected, its upstream connection."""

    def __init__(self, proxy: BlackholeProxy) -> None:
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.blackholed = False
        self.pending: list[bytes] = []  # client bytes that arrived before upstream connected
        self.closed = False

    def blackhole(self) -> None:
        self.blackholed = True
        self.pending.clear()
        for t in (self.client, self.upstream):
            if t is not None and not t.is_closing():
                t.pause_reading()

    def abort(self) -> None:
        self.closed = True
        _abort(self.client)
        _abort(self.upstream)
        self.proxy._pairs.discard(self)

    def relay(self, data: bytes, to_upstream: bool) -> None:
        if self.blackholed or self.closed:
            return  # dropped
        peer = self.upstream if to_upstream else self.client
        if peer is None:
            self.pending.append(data)
        elif not peer.is_closing():
            peer.write(data)

    def lost(self, from_upstream: bool) -> None:
        """One side closed: pass the close on, unless the pair is black-holed (dropped too)."""
        if self.blackholed:
            return
        self.closed = True
        peer = self.client if from_upstream else self.upstream
        if peer is not None and not peer.is_closing():
            peer.close()
        self.proxy._pairs.discard(self)


class _Side(asyncio.Protocol):
    def __init__(self, pair: _Pair, upstream: bool) -> None:
        self.pair = pair
        self.upstream = upstream

    def _peer(self) -> asyncio.Transport | None:
        return self.pair.client if self.upstream else self.pair.upstream

    def data_received(self, data: bytes) -> None:
        self.pair.relay(data, to_upstream=not self.upstream)

    def pause_writing(self) -> None:  # our transport's buffer is full: stop reading the peer
        peer = self._peer()
        if peer is not None and not peer.is_closing():
            peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self._peer()
        if peer is not None and not peer.is_closing() and not self.pair.blackholed:
            peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.lost(from_upstream=self.upstream)


class _ClientSide(_Side):
    def __init__(self, pair: _Pair) -> None:
        super().__init__(pair, upstream=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        pair = self.pair
        pair.client = transport
        proxy = pair.proxy
        proxy.accepted += 1
        if proxy.mode == "reset":
            pair.abort()
            return
        proxy._pairs.add(pair)
        if proxy.mode == "blackhole":
            pair.blackhole()  # accepted, never forwarded
            return
        task = asyncio.get_running_loop().create_task(self._connect_upstream())
        proxy._tasks.add(task)
        task.add_done_callback(proxy._tasks.discard)

    async def _connect_upstream(self) -> None:
        pair = self.pair
        proxy = pair.proxy
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: _Side(pair, upstream=True), proxy.upstream_host, proxy.upstream_port
            )
        except OSError:
            pair.abort()  # upstream down: the client sees a reset, as it would without a proxy
            return
        if pair.closed or pair.blackholed:
            if pair.closed:
                transport.close()
            else:  # black-holed while connecting: keep it open and silent
                pair.upstream = transport
                transport.pause_reading()
            return
        pair.upstream = transport
        for chunk in pair.pending:
            transport.write(chunk)
        pair.pending.clear()


class BlackholeProxy:
    """A TCP proxy in front of ``upstream_host:upstream_port``, listening on 127.0.0.1."""

    def __init__(
        self, upstream_port: int, upstream_host: str = "127.0.0.1", *, port: int = 0, db: int = 0
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = port
        self.db = db
        self.mode: Mode = "forward"
        self.accepted = 0
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    @property
    def connections(self) -> int:
        return self._call(self._count())

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> BlackholeProxy:
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"blackhole-{self.upstream_port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("the proxy's event loop did not start")
        self._call(self._listen(), timeout)
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening, abort every connection, stop the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown(), timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> BlackholeProxy:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- modes --------------------------------------------------------------------------------
    def forward(self, *, close_blackholed: bool = True) -> None:
        self._call(self._set("forward", close_blackholed=close_blackholed))

    def blackhole(self) -> None:
        self._call(self._set("blackhole"))

    def reset(self) -> None:
        self._call(self._set("reset"))

    # --- on the proxy's loop ------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the proxy is not running (use it as a context manager)")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ClientSide(_Pair(self)), "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _count(self) -> int:
        return sum(1 for p in self._pairs if not p.closed)

    async def _set(self, mode: Mode, *, close_blackholed: bool = True) -> None:
        self.mode = mode
        for pair in list(self._pairs):
            if mode == "blackhole":
                pair.blackhole()
            elif mode == "reset" or (close_blackholed and pair.blackholed):
                pair.abort()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
