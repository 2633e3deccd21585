"""The blocking sampler keeps its overall deadline against a real server that trickles its body.

httpx's timeouts apply per read: a 200 whose body arrives one byte every 100 ms never trips a
2 s read timeout. ``sample_with_retry_sync(timeout=2)`` must still give up after about 2 s, as
the async helper does.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from pausesvc.sampling import SampleTimeoutError, sample_with_retry, sample_with_retry_sync


class NeverPaused:
    def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        return True


class AsyncNeverPaused:
    async def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        return True


BODY = json.dumps(
    {"id": "x", "choices": [{"index": 0, "text": "hi", "token_ids": [1, 2], "finish_reason": "length"}]}
).encode()


@pytest.fixture
def trickle() -> Iterator[str]:
    """A server answering every request with a 200 whose body comes one byte per 100 ms
    (at once under ``/fast``)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            delay = 0.0 if data.split(b"\r\n", 1)[0].split(b" ")[1].startswith(b"/fast") else 0.1
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
            ).encode()
            try:
                conn.sendall(head)
                for i in range(len(BODY)):
                    if stop.wait(delay):
                        return
                    conn.sendall(BODY[i : i + 1])
            except OSError:
                return  # the client gave up: what we want

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        srv.close()


def _req() -> dict[str, object]:
    return {"model": "lora-a", "prompt": [1, 2, 3], "max_tokens": 2}


def test_sync_sampler_keeps_its_deadline_against_a_trickling_body(trickle: str) -> None:
    # the body takes ~len(BODY) * 100 ms (10 s) to arrive; every single read is quick
    assert len(BODY) * 0.1 > 6
    with httpx.Client(timeout=httpx.Timeout(30, connect=5)) as http:
        t0 = time.monotonic()
        with pytest.raises(SampleTimeoutError):
            sample_with_retry_sync(http, trickle, _req(), waiter=NeverPaused(), timeout=2)
        elapsed = time.monotonic() - t0
    assert 1.9 <= elapsed < 3.0, elapsed


async def test_async_sampler_keeps_the_same_deadline(trickle: str) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=5)) as http:
        t0 = time.monotonic()
        with pytest.raises(SampleTimeoutError):
            await sample_with_retry(http, trickle, _req(), waiter=AsyncNeverPaused(), timeout=2)
        assert time.monotonic() - t0 < 3.0


def test_sync_sampler_still_returns_a_quick_answer(trickle: str) -> None:
    """Within the deadline the answer is the server's, decoded as http.post would."""
    with httpx.Client(timeout=httpx.Timeout(30, connect=5)) as http:
        result = sample_with_retry_sync(http, trickle + "/fast", _req(), waiter=NeverPaused(), timeout=30)
    assert result.tokens == [1, 2] and result.finish_reason == "length"
