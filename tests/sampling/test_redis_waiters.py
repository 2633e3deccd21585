"""Pauses driven through a real Redis: a paused sample blocks without polling and continues
promptly after the resume, through the watcher, the blocking client or a control service."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from _sampling_fake import FakeVLLM, Gen, Hold

from pausesvc import AsyncPauseClient, PauseClient, PauseError
from pausesvc.sampling import (
    AutoWaiter,
    ServiceWaiter,
    SyncAutoWaiter,
    SyncServiceWaiter,
    sample_with_retry,
    sample_with_retry_sync,
)

REQ = {"model": "lora-a", "prompt": [10, 20, 30], "max_tokens": 16, "logprobs": 0}
FIRST, SECOND = list(range(100, 105)), list(range(200, 204))


async def paused_sample(pauses: AsyncPauseClient, waiter: object, counted: list[Any]) -> None:
    """Start a sample, pause while it runs, abort it, check it waits, resume, time the resend."""
    release = asyncio.Event()
    fake = FakeVLLM([Hold(release, Gen(FIRST, "abort")), Gen(SECOND, "stop")])
    fake.arrived = asyncio.Event()
    async with fake.async_client() as http:
        task = asyncio.create_task(sample_with_retry(http, "", REQ, waiter=waiter, timeout=30))
        await fake.arrived.wait()
        grant = await pauses.pause("lora-a", reason="weight sync")
        fake.arrived.clear()
        release.set()  # the replica aborts the in-flight request
        await asyncio.sleep(0.6)
        assert len(fake.requests) == 1, "resubmitted while paused"
        assert not task.done()
        n_before = len(counted)
        t0 = time.monotonic()
        await pauses.resume("lora-a", token=grant.token)
        await asyncio.wait_for(fake.arrived.wait(), 5)
        latency = time.monotonic() - t0
        result = await task
    assert latency < 1.0, latency
    assert result.tokens == FIRST + SECOND and result.finish_reason == "stop"
    assert result.logprobs == [-t / 1000 for t in FIRST + SECOND]
    assert fake.bodies[1]["prompt"] == [10, 20, 30, *FIRST] and fake.bodies[1]["max_tokens"] == 11
    (b,) = result.boundaries
    assert (b.index, b.reason) == (5, "abort")
    assert b.pause_revision == grant.state.pause_revision
    assert b.waited_s >= 0.5
    counted.append(len(counted) - n_before)


async def test_watcher_blocks_without_polling_and_continues_promptly(redis_url: str, namespace: str) -> None:
    async with AsyncPauseClient(redis_url, namespace=namespace) as pauses:
        watcher = await pauses.watcher()
        assert await watcher.wait_synced(5)
        await paused_sample(pauses, pauses, [])
        await paused_sample(pauses, watcher, [])  # a PauseWatcher works as well
        assert watcher.stats.resyncs <= 3  # no polling of Redis either: events only


def _control_service(pauses: AsyncPauseClient, calls: list[float]) -> Any:
    """Stands in for the control service's long-poll (the real one is tested below)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        name = scope["path"].split("/")[3]
        timeout = float(parse_qs(scope["query_string"].decode())["timeout_s"][0])
        calls.append(timeout)
        ok = await pauses.wait_unpaused(name, timeout)
        w = await pauses.watcher()
        st = w.state(name)
        body = {"paused": not ok, "revision": w.revision}
        if st is not None:
            body["pause_revision"] = st.pause_revision
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return app


async def test_service_waiter_long_polls(redis_url: str, namespace: str) -> None:
    calls: list[float] = []
    async with AsyncPauseClient(redis_url, namespace=namespace) as pauses:
        assert await (await pauses.watcher()).wait_synced(5)
        svc_http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=_control_service(pauses, calls)), base_url="http://svc"
        )
        async with ServiceWaiter("http://svc", http=svc_http, poll_s=0.4) as waiter:
            await paused_sample(pauses, waiter, [])
        await svc_http.aclose()
    # long polls of at most poll_s each over ~0.6 s of pause: a handful, not a busy loop
    assert 1 <= len(calls) <= 4 and all(0 < c <= 0.4 for c in calls)


async def test_service_waiter_fails_closed_and_rejects_4xx() -> None:
    answers = [503, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        status = answers.pop(0) if answers else 404
        return httpx.Response(status, json={"paused": False, "revision": 4})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        waiter = ServiceWaiter("http://svc/", http=http, max_backoff_s=0.01)
        res = await waiter.wait_resumable("a", 2.0, 0)
        assert res.unpaused and res.revision == 4 and not res.paused_seen
        with pytest.raises(PauseError):
            await waiter.wait_unpaused("a", 1.0)
        await waiter.aclose()  # not ours: leaves http open
        assert not http.is_closed


async def test_auto_waiter_prefers_redis_and_falls_back_to_the_service(
    redis_url: str, namespace: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/pauses/lora-a/wait"
        return httpx.Response(200, json={"paused": False, "revision": 1})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as svc:
        async with AutoWaiter(
            redis_url=redis_url, service_url="http://svc", http=svc, namespace=namespace
        ) as auto:
            assert auto.using == "watcher"
            assert await auto.wait_unpaused("lora-a", 1.0)
        async with AutoWaiter(
            redis_url="redis://127.0.0.1:1", service_url="http://svc", http=svc, connect_timeout=0.2
        ) as auto:
            assert auto.using == "service"
            assert await auto.wait_unpaused("lora-a", 1.0)
    with pytest.raises(PauseError):
        AutoWaiter()


def test_sync_client_blocks_and_continues(redis_url: str, namespace: str) -> None:
    arrived, release = threading.Event(), threading.Event()
    seen: list[tuple[dict[str, Any], float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((body, time.monotonic()))
        arrived.set()
        if len(seen) == 1:
            release.wait(10)
            return httpx.Response(
                200,
                json={
                    "choices": [
                        {
                            "index": 0,
                            "text": "x",
                            "finish_reason": "abort",
                            "token_ids": FIRST,
                            "prompt_token_ids": body["prompt"],
                            "logprobs": {"token_logprobs": [-1.0] * 5, "tokens": ["x"] * 5},
                        }
                    ]
                },
            )
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "index": 0,
                        "text": "y",
                        "finish_reason": "stop",
                        "token_ids": SECOND,
                        "prompt_token_ids": body["prompt"],
                        "logprobs": {"token_logprobs": [-2.0] * 4, "tokens": ["y"] * 4},
                    }
                ]
            },
        )

    out: list[Any] = []
    with (
        PauseClient(redis_url, namespace=namespace) as pauses,
        httpx.Client(transport=httpx.MockTransport(handler), base_url="http://v") as http,
    ):
        t = threading.Thread(
            target=lambda: out.append(sample_with_retry_sync(http, "", REQ, waiter=pauses, timeout=30))
        )
        t.start()
        assert arrived.wait(5)
        grant = pauses.pause("lora-a")
        release.set()
        time.sleep(0.5)
        assert len(seen) == 1
        t0 = time.monotonic()
        pauses.resume("lora-a")
        t.join(10)
    (result,) = out
    assert seen[1][1] - t0 < 1.5
    assert result.tokens == FIRST + SECOND and result.logprobs == [-1.0] * 5 + [-2.0] * 4
    assert [(b.index, b.pause_revision) for b in result.boundaries] == [(5, grant.state.pause_revision)]


def test_sync_auto_waiter_falls_back(redis_url: str, namespace: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"paused": False, "revision": 2})

    with httpx.Client(transport=httpx.MockTransport(handler)) as svc:
        with SyncAutoWaiter(
            redis_url=redis_url, service_url="http://svc", http=svc, namespace=namespace
        ) as auto:
            res = auto.wait_resumable("lora-a", 1.0, 0)
            assert res.unpaused and res.revision is None  # answered by Redis
        with SyncAutoWaiter(redis_url="redis://127.0.0.1:1", service_url="http://svc", http=svc) as auto:
            res = auto.wait_resumable("lora-a", 1.0, 0)
            assert res.unpaused and res.revision == 2  # answered by the service
        with SyncServiceWaiter("http://svc", http=svc) as waiter:
            assert waiter.wait_unpaused("lora-a", 1.0)
