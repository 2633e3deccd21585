"""Attacks on a replica over real HTTP: the gate (uvicorn, in a thread) in front of a fake vLLM.

What an attacker who merely reaches a replica can try: pause or resume without a credential or
with a wrong one, from a web page (text/plain, cross-site Origin), release a trainer's hold,
and pin the replica's memory with large requests for a paused adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from pausesvc_vllm import PauseGateMiddleware

from pausesvc import PauseClient, Settings

TOKEN = "replica-s3cret"
SKYRL = ("/skyrl/v1/abort_lora_requests", "/skyrl/v1/resume_lora_requests")


class FakeVLLM:
    """Stands in for vLLM's app: lifespan, ``state.args.api_key``, its ``/v1`` key check
    (401), and a generation endpoint that answers with the size of what it got."""

    def __init__(self, api_key: str | None = None) -> None:
        self.state = SimpleNamespace(args=SimpleNamespace(api_key=[api_key] if api_key else None))
        self.api_key = api_key
        self.served: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif m["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        size = 0
        while True:
            m = await receive()
            if m["type"] != "http.request":
                return
            size += len(m.get("body", b""))
            if not m.get("more_body"):
                break
        auth = dict(scope["headers"]).get(b"authorization")
        if self.api_key and scope["path"].startswith("/v1") and auth != f"Bearer {self.api_key}".encode():
            status, body = 401, b'{"error": "Unauthorized"}'
        else:
            self.served.append(size)
            status, body = 200, b'{"received": %d}' % size
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class AsStarlette:
    """What Starlette does before its middleware stack: ``scope["app"]`` is the app."""

    def __init__(self, app: FakeVLLM, **settings: Any) -> None:
        self.fake = app
        self.gate = PauseGateMiddleware(app, settings=Settings(**settings))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope["app"] = self.fake
        await self.gate(scope, receive, send)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", timeout_graceful_shutdown=2)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    while not httpx.get(f"{url}/pausesvc/status").json()["synced_once"]:
        assert time.monotonic() < deadline, "gate did not sync"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture
def replica(redis_url: str, namespace: str) -> Iterator[Callable[..., tuple[str, FakeVLLM]]]:
    stack = contextlib.ExitStack()

    def make(api_key: str | None = None, **settings: Any) -> tuple[str, FakeVLLM]:
        fake = FakeVLLM(api_key)
        app = AsStarlette(
            fake,
            redis_url=redis_url,
            namespace=namespace,
            heartbeat_interval_s=0.2,
            drain_timeout_s=5.0,
            **settings,
        )
        return stack.enter_context(serve(app)), fake

    with stack:
        yield make


@pytest.fixture
def pauses(redis_url: str, namespace: str) -> Iterator[PauseClient]:
    with PauseClient(redis_url, namespace=namespace, holder="trainer") as c:
        yield c


def _lora(name: str = "lora-a") -> dict[str, str]:
    return {"lora_name": name}


# -- credentials ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SKYRL)
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer nope"}, 403),
        ({"Authorization": "Basic " + TOKEN}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
    ],
)
def test_mutating_endpoints_refuse_without_the_credential(
    replica: Any, pauses: PauseClient, path: str, headers: dict[str, str], status: int
) -> None:
    url, _ = replica(replica_control_token=TOKEN)
    pauses.pause("lora-a")  # so a resume would have something to release
    r = httpx.post(url + path, json=_lora(), headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] in ("unauthorized", "forbidden")
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    state = pauses.get("lora-a")
    assert state is not None and set(state.holders) == {"trainer"}  # nothing changed


def test_api_token_is_the_fallback_credential(replica: Any, pauses: PauseClient) -> None:
    url, _ = replica(api_token="svc-token")
    assert httpx.post(url + SKYRL[0], json=_lora()).status_code == 401
    r = httpx.post(url + SKYRL[0], json=_lora(), headers={"Authorization": "Bearer svc-token"})
    assert r.status_code == 200, r.text
    state = pauses.get("lora-a")
    assert state is not None and set(state.holders) == {"skyrl"}


def test_the_right_token_pauses_and_resumes(replica: Any, pauses: PauseClient) -> None:
    url, _ = replica(replica_control_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(url + SKYRL[0], json=_lora(), headers=auth).status_code == 200
    assert pauses.get("lora-a") is not None
    r = httpx.post(url + SKYRL[1], json=_lora(), headers=auth)
    assert r.status_code == 200 and r.json() == {"status": "ok", "paused": False}
    assert pauses.get("lora-a") is None


def test_switched_off_endpoints_are_404(replica: Any, pauses: PauseClient) -> None:
    url, _ = replica(gate_control_endpoints="off")
    for path in SKYRL:
        r = httpx.post(url + path, json=_lora())
        assert r.status_code == 404, r.text
    assert pauses.get("lora-a") is None
    # the read-only long-poll still answers
    r = httpx.post(url + "/skyrl/v1/wait_lora_unpaused", json={"lora_name": "x", "timeout_s": 0})
    assert r.status_code == 200


def test_open_endpoints_log_one_warning(caplog: pytest.LogCaptureFixture, redis_url: str) -> None:
    with caplog.at_level(logging.WARNING, logger="pausesvc_vllm"):
        PauseGateMiddleware(FakeVLLM(), settings=Settings(redis_url=redis_url))
        PauseGateMiddleware(FakeVLLM(), settings=Settings(redis_url=redis_url, replica_control_token=TOKEN))
        PauseGateMiddleware(FakeVLLM(), settings=Settings(redis_url=redis_url, gate_control_endpoints="off"))
    warnings = [r for r in caplog.records if "need no credential" in r.getMessage()]
    assert len(warnings) == 1
    assert TOKEN not in caplog.text


# -- holders per source -------------------------------------------------------------------------------
def test_anonymous_resume_cannot_release_an_authenticated_hold(replica: Any, pauses: PauseClient) -> None:
    """The trainer paused lora-b as `skyrl` through an authenticated path (here: directly, as
    the control service does); this replica has no credential configured."""
    url, _ = replica()
    pauses.pause("lora-b", holder="skyrl", reason="trainer via the control service")
    for _ in range(3):
        r = httpx.post(url + SKYRL[1], json=_lora("lora-b"))
        assert r.status_code == 200 and r.json()["paused"] is True
    state = pauses.get("lora-b")
    assert state is not None and set(state.holders) == {"skyrl"}
    # an anonymous abort pauses as its own holder, which is all an anonymous resume releases
    assert httpx.post(url + SKYRL[0], json=_lora("lora-b")).status_code == 200
    state = pauses.get("lora-b")
    assert state is not None and set(state.holders) == {"skyrl", "skyrl-anon"}
    httpx.post(url + SKYRL[1], json=_lora("lora-b"))
    state = pauses.get("lora-b")
    assert state is not None and set(state.holders) == {"skyrl"}


# -- browsers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [*SKYRL, "/skyrl/v1/wait_lora_unpaused"])
@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
def test_non_json_bodies_are_415(replica: Any, pauses: PauseClient, path: str, ctype: str | None) -> None:
    url, _ = replica()
    headers = {"Content-Type": ctype} if ctype else {}
    r = httpx.post(url + path, content=b'{"lora_name": "lora-a"}', headers=headers)
    assert r.status_code == 415, r.text
    assert pauses.get("lora-a") is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:3000"},
    ],
)
def test_cross_site_calls_are_403(replica: Any, pauses: PauseClient, headers: dict[str, str]) -> None:
    url, _ = replica()
    r = httpx.post(url + SKYRL[0], json=_lora(), headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site"
    assert pauses.get("lora-a") is None


def test_acl_refusal_is_403_not_503(replica: Any, redis_url: str, namespace: str, raw_redis: Any) -> None:
    """A least-privilege replica user (docs/security.md) may not pause: say so, 403."""
    user = f"ro-{namespace}"
    raw_redis.execute_command(
        "ACL", "SETUSER", user, "reset", "on", ">pw", "+@all", "-evalsha", "-eval", "~*", "&*"
    )
    try:
        url = redis_url.replace("redis://", f"redis://{user}:pw@")
        # the watcher and the registry cannot run their scripts either: only the endpoint matters
        fake = FakeVLLM()
        app = AsStarlette(fake, redis_url=url, namespace=namespace)

        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                try:
                    return await c.post(SKYRL[0], json=_lora())
                finally:
                    await app.gate.runtime.aclose()

        r = asyncio.run(call())
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "redis_forbidden"
        assert "ACL" in r.json()["error"]["message"]
    finally:
        raw_redis.execute_command("ACL", "DELUSER", user)


# -- memory ------------------------------------------------------------------------------------------
def _flood(url: str, models: list[str], size: int, timeout: float = 60) -> list[httpx.Response]:
    pad = "x" * size

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None)) as c:
            return list(
                await asyncio.gather(
                    *(
                        c.post(url + "/v1/completions", json={"model": m, "prompt": pad, "max_tokens": 1})
                        for m in models
                    )
                )
            )

    return asyncio.run(run())


def _status(url: str) -> dict[str, Any]:
    st: dict[str, Any] = httpx.get(url + "/pausesvc/status").json()["stats"]
    return st


def test_sixty_2mib_requests_for_a_paused_adapter_are_bounded(replica: Any, pauses: PauseClient) -> None:
    url, fake = replica()
    pauses.pause("lora-a")
    time.sleep(0.3)
    result: list[list[httpx.Response]] = []
    flood = threading.Thread(target=lambda: result.append(_flood(url, ["lora-a"] * 60, 2 << 20)))
    flood.start()
    deadline = time.monotonic() + 30
    while _status(url)["over_capacity"] < 60 - 7 and time.monotonic() < deadline:
        time.sleep(0.1)
    st = _status(url)
    # default caps: 16 MiB per adapter -> 7 bodies of 2 MiB (+ JSON) held, the rest refused
    assert st["held_bytes_total"] <= 16 << 20 and st["held_total"] <= 8
    assert st["over_capacity"] >= 52
    pauses.resume("lora-a")
    flood.join(30)
    responses = result[0]
    refused = [r for r in responses if r.status_code == 503]
    assert len(refused) == 60 - len(fake.served)
    for r in refused:
        assert r.json()["error"]["code"] == "hold_capacity" and int(r.headers["retry-after"]) > 0
    assert all(r.status_code == 200 for r in responses if r.status_code != 503)
    assert _status(url)["held_total"] == 0 and _status(url)["held_bytes_total"] == 0


def test_the_process_cap_holds_across_adapters(replica: Any, pauses: PauseClient) -> None:
    """60 distinct adapters (all paused by `*`): only the per-process cap applies."""
    url, fake = replica(gate_max_held_bytes=8 << 20, gate_max_held_requests=10)
    pauses.pause("*")
    time.sleep(0.3)
    result: list[list[httpx.Response]] = []
    models = [f"lora-{i}" for i in range(60)]
    flood = threading.Thread(target=lambda: result.append(_flood(url, models, 1 << 20)))
    flood.start()
    deadline = time.monotonic() + 30
    while _status(url)["over_capacity"] < 60 - 7 and time.monotonic() < deadline:
        time.sleep(0.1)
    st = _status(url)
    assert st["held_bytes_total"] <= 8 << 20 and st["held_total"] <= 7
    pauses.resume("*")
    flood.join(30)
    assert sum(r.status_code == 503 for r in result[0]) >= 53
    assert len(fake.served) + sum(r.status_code == 503 for r in result[0]) == 60


def test_requests_without_vllms_api_key_are_not_held(replica: Any, pauses: PauseClient) -> None:
    url, fake = replica(api_key="vllm-key", gate_hold_timeout_s=1.0, gate_deadline_response="503")
    pauses.pause("lora-a")
    time.sleep(0.3)
    t0 = time.monotonic()
    r = httpx.post(
        url + "/v1/completions",
        json={"model": "lora-a", "prompt": "x"},
        headers={"Authorization": "Bearer wrong"},
    )
    assert r.status_code == 401 and time.monotonic() - t0 < 2  # vLLM's answer, at once
    st = _status(url)
    assert st["unauthenticated"] == 1 and st["holds"] == 0 and not fake.served
    # with the key: held as before (answered 503 at the deadline here)
    r = httpx.post(
        url + "/v1/completions",
        json={"model": "lora-a", "prompt": "x"},
        headers={"Authorization": "Bearer vllm-key"},
        timeout=10,
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "adapter_paused"
    assert _status(url)["holds"] == 1
