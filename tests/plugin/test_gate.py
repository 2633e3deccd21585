"""The gate in front of a fake ASGI app, with a recording send, a scripted receive, real Redis."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import pytest
from pausesvc_vllm import PauseGateMiddleware

from pausesvc import AsyncPauseClient, Grant, InvalidInputError, Settings
from tests.plugin.conftest import (
    EchoApp,
    Receiver,
    Recorder,
    StreamingApp,
    body_message,
    http_scope,
)


def req(model: str | None = "lora-a", **extra: Any) -> bytes:
    data: dict[str, Any] = {"prompt": "hi", "max_tokens": 4, **extra}
    if model is not None:
        data["model"] = model
    return json.dumps(data).encode()


async def seen(mw: PauseGateMiddleware, grant: Any) -> None:
    """Wait until the gate's watcher has applied a change (read-your-writes for the test)."""
    assert mw.runtime.watcher is not None
    assert await mw.runtime.watcher.wait_revision(grant.revision, timeout=5.0)


def test_import_does_not_import_vllm() -> None:
    assert "vllm" not in sys.modules


def test_constructed_with_app_only_from_environment(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("PAUSESVC_REDIS_URL", redis_url)
    monkeypatch.setenv("PAUSESVC_NAMESPACE", "envns")
    monkeypatch.setenv("PAUSESVC_GATE_EXTRA_UNGATED_PATHS", '["/v2/status"]')
    mw = PauseGateMiddleware(EchoApp())
    assert mw.settings.namespace == "envns"
    assert not mw.matches(http_scope("/v2/status/"))
    assert mw.matches(http_scope("/v2/generate/"))


def test_missing_redis_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAUSESVC_REDIS_URL", raising=False)
    with pytest.raises(InvalidInputError, match="PAUSESVC_REDIS_URL"):
        PauseGateMiddleware(EchoApp())


@pytest.mark.parametrize(
    ("path", "gated"),
    [
        ("/v1/completions", True),
        ("/v1/completions/", True),
        ("//v1//completions", True),
        ("/v1/chat/completions", True),
        ("/v1/responses", True),
        ("/inference/v1/generate", True),
        ("/v1/completionsX", True),
        ("/v1/embeddings", True),
        ("/v1/messages", True),
        ("/invocations", True),
        ("/v9/next-release", True),
        ("/v1/models", False),
        ("/health", False),
        ("/v1/load_lora_adapter", False),
        ("/tokenize", False),
    ],
)
def test_path_matching(settings: Settings, path: str, gated: bool) -> None:
    assert PauseGateMiddleware(EchoApp(), settings=settings).matches(http_scope(path)) is gated


def test_root_path_prefix_is_stripped(settings: Settings) -> None:
    mw = PauseGateMiddleware(EchoApp(), settings=settings)
    scope = http_scope("/api/v1/chat/completions")
    scope["root_path"] = "/api"
    assert mw.matches(scope)


async def test_stream_is_forwarded_message_by_message(gate_factory: Any) -> None:
    app = StreamingApp(chunks=3)
    mw = await gate_factory(app)
    send, receive = Recorder(), Receiver(body_message(req()))
    task = asyncio.create_task(mw(http_scope(), receive, send))
    await send.wait_for(1)  # response start
    for i in range(3):
        app.step.release()
        await send.wait_for(2 + i)
        # the chunk reached the client before the app was allowed to produce the next one
        assert send.messages[1 + i]["body"] == f"data: {i}\n\n".encode()
        if i < 2:
            await asyncio.sleep(0.02)
            assert len(send.messages) == 2 + i
    await task
    assert send.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_body_in_chunks_is_replayed_once_then_real_receive(gate_factory: Any) -> None:
    received: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        received.append(await receive())  # must be the client's disconnect, not a made-up one
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = await gate_factory(app)
    body = req()
    receive = Receiver(body_message(body[:5], more=True), body_message(body[5:]))
    task = asyncio.create_task(mw(http_scope(), receive, Recorder()))
    await asyncio.sleep(0.1)
    assert len(received) == 1 and received[0]["body"] == body  # second receive still waiting
    receive.disconnect()
    await asyncio.wait_for(task, 5)
    assert received[1] == {"type": "http.disconnect"}


async def test_disconnect_reaches_a_streaming_app(gate_factory: Any) -> None:
    """vLLM's with_cancellation races the handler against receive(): the disconnect must come."""
    cancelled = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})

        async def stream() -> None:
            while True:
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await asyncio.sleep(0.01)

        streamer = asyncio.create_task(stream())
        msg = await receive()
        assert msg["type"] == "http.disconnect"
        streamer.cancel()
        cancelled.set()

    mw = await gate_factory(app)
    send, receive = Recorder(), Receiver(body_message(req()))
    task = asyncio.create_task(mw(http_scope(), receive, send))
    await send.wait_for(5)
    receive.disconnect()
    await asyncio.wait_for(task, 5)
    assert cancelled.is_set()
    assert mw.runtime.stats.in_flight == {}


async def test_not_paused_passes_and_sets_a_request_id(gate_factory: Any) -> None:
    app = EchoApp()
    mw = await gate_factory(app)
    send = Recorder()
    await mw(http_scope(), Receiver(body_message(req())), send)
    assert send.status == 200 and send.body == req()
    headers = dict(app.calls[0]["scope"]["headers"])
    assert len(headers[b"x-request-id"]) == 32
    # a client's own id is kept; the body's request_id is used when there is no header
    await mw(http_scope(headers=[(b"x-request-id", b"mine")]), Receiver(body_message(req())), Recorder())
    assert dict(app.calls[1]["scope"]["headers"])[b"x-request-id"] == b"mine"
    await mw(http_scope(), Receiver(body_message(req(request_id="fromBody"))), Recorder())
    assert dict(app.calls[2]["scope"]["headers"])[b"x-request-id"] == b"fromBody"


async def test_held_request_is_released_on_resume(gate_factory: Any, client: AsyncPauseClient) -> None:
    app = EchoApp()
    mw = await gate_factory(app)
    await seen(mw, await client.pause("lora-a"))
    send = Recorder()
    task = asyncio.create_task(mw(http_scope(), Receiver(body_message(req())), send))
    await asyncio.sleep(0.3)
    assert not task.done() and app.calls == [] and send.messages == []
    assert mw.runtime.stats.held == {"lora-a": 1}
    # other adapters and the base model are not held meanwhile
    other = Recorder()
    await asyncio.wait_for(mw(http_scope(), Receiver(body_message(req("lora-b"))), other), 5)
    assert other.status == 200
    await client.resume("lora-a")
    await asyncio.wait_for(task, 5)
    assert send.status == 200 and send.body == req()
    assert mw.runtime.stats.held == {} and mw.runtime.stats.released == 1


async def test_global_pause_holds_every_model_and_requests_without_one(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    app = EchoApp()
    mw = await gate_factory(app)
    await seen(mw, await client.pause("*"))
    tasks = [
        asyncio.create_task(mw(http_scope(), Receiver(body_message(req(m))), Recorder()))
        for m in ("lora-a", "tiny", None)
    ]
    await asyncio.sleep(0.3)
    assert app.calls == [] and not any(t.done() for t in tasks)
    await client.resume("*")
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(app.calls) == 3


async def test_hold_deadline_answers_503_with_retry_after(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    app = EchoApp()
    mw = await gate_factory(app, gate_hold_timeout_s=0.3, gate_deadline_response="503")
    await seen(mw, await client.pause("lora-a"))
    send = Recorder()
    t0 = time.monotonic()
    await asyncio.wait_for(mw(http_scope(), Receiver(body_message(req())), send), 5)
    assert time.monotonic() - t0 >= 0.25
    assert send.status == 503
    assert send.headers["retry-after"] == "7"
    assert send.json()["error"]["code"] == "adapter_paused"
    assert send.json()["error"]["adapter"] == "lora-a"
    assert app.calls == [] and mw.runtime.stats.hold_timeouts == 1


async def _held_past_the_deadline(mw: PauseGateMiddleware, path: str, body: dict[str, Any]) -> Recorder:
    send = Recorder()
    t0 = time.monotonic()
    await asyncio.wait_for(mw(http_scope(path), Receiver(body_message(json.dumps(body).encode())), send), 5)
    assert time.monotonic() - t0 >= 0.25
    return send


async def test_hold_deadline_answers_abort_by_default(gate_factory: Any, client: AsyncPauseClient) -> None:
    """The default: what a request the drain aborted gets - zero tokens, finish_reason "abort"
    - which SkyRL's and Tinker's retry loops wait out and resubmit (a 503 makes them raise)."""
    app = EchoApp()
    mw = await gate_factory(app, gate_hold_timeout_s=0.3)
    assert mw.settings.gate_deadline_response == "abort"
    await seen(mw, await client.pause("lora-a"))
    send = await _held_past_the_deadline(
        mw, "/v1/completions", {"model": "lora-a", "prompt": [1, 2], "max_tokens": 8}
    )
    assert send.status == 200 and send.headers["content-type"] == "application/json"
    body = send.json()
    assert body["object"] == "text_completion" and body["model"] == "lora-a"
    assert body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["finish_reason"] == "abort" and choice["text"] == ""
    assert choice["token_ids"] == [] and body["usage"]["completion_tokens"] == 0

    send = await _held_past_the_deadline(
        mw,
        "/v1/chat/completions",
        {"model": "lora-a", "messages": [{"role": "user", "content": "hi"}], "n": 2, "logprobs": True},
    )
    body = send.json()
    assert send.status == 200 and body["object"] == "chat.completion"
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for c in body["choices"]:
        assert c["finish_reason"] == "abort" and c["message"]["content"] == ""
        assert c["logprobs"] == {"content": []}
    # paths with no OpenAI abort shape keep the 503
    send = await _held_past_the_deadline(mw, "/v1/embeddings", {"model": "lora-a", "input": "x"})
    assert send.status == 503 and send.json()["error"]["code"] == "adapter_paused"
    assert app.calls == [] and mw.runtime.stats.hold_timeouts == 3


@pytest.mark.parametrize(
    ("path", "obj", "include_usage"),
    [
        ("/v1/completions", "text_completion", False),
        ("/v1/chat/completions", "chat.completion.chunk", True),
    ],
)
async def test_hold_deadline_abort_streams_one_chunk_then_done(
    gate_factory: Any, client: AsyncPauseClient, path: str, obj: str, include_usage: bool
) -> None:
    app = EchoApp()
    mw = await gate_factory(app, gate_hold_timeout_s=0.3)
    await seen(mw, await client.pause("lora-a"))
    body: dict[str, Any] = {"model": "lora-a", "prompt": "x", "messages": [], "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    send = await _held_past_the_deadline(mw, path, body)
    assert send.status == 200 and send.headers["content-type"] == "text/event-stream"
    events = [e for e in send.body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["object"] == obj
    assert [c["finish_reason"] for c in chunks[0]["choices"]] == ["abort"]
    if include_usage:
        assert len(chunks) == 2 and chunks[1]["usage"]["completion_tokens"] == 0
    else:
        assert len(chunks) == 1
    assert not send.messages[-1].get("more_body") and app.calls == []


async def test_reject_policy_answers_at_once(gate_factory: Any, client: AsyncPauseClient) -> None:
    app = EchoApp()
    mw = await gate_factory(app, gate_policy="reject")
    await seen(mw, await client.pause("lora-a"))
    send = Recorder()
    await asyncio.wait_for(mw(http_scope(), Receiver(body_message(req())), send), 1)
    assert send.status == 503 and send.json()["error"]["code"] == "adapter_paused"
    ok = Recorder()
    await mw(http_scope(), Receiver(body_message(req("lora-b"))), ok)
    assert ok.status == 200 and len(app.calls) == 1


async def test_disconnect_while_held_never_reaches_the_app(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    app = EchoApp()
    mw = await gate_factory(app)
    await seen(mw, await client.pause("lora-a"))
    receive, send = Receiver(body_message(req())), Recorder()
    task = asyncio.create_task(mw(http_scope(), receive, send))
    await asyncio.sleep(0.2)
    receive.disconnect()
    await asyncio.wait_for(task, 5)
    await client.resume("lora-a")
    await asyncio.sleep(0.2)
    assert app.calls == [] and send.messages == []
    assert mw.runtime.stats.dropped == 1 and mw.runtime.stats.held == {}


async def test_over_the_cap_is_413(gate_factory: Any) -> None:
    app = EchoApp()
    mw = await gate_factory(app, gate_max_body_bytes=100)
    big = req(prompt="x" * 200)
    # announced by Content-Length: refused before reading
    send = Recorder()
    scope = http_scope(headers=[(b"content-length", str(len(big)).encode())])
    await mw(scope, Receiver(), send)
    assert send.status == 413 and send.json()["error"]["code"] == "body_too_large"
    # chunked, no length: refused once the cap is passed
    send = Recorder()
    await mw(
        http_scope(), Receiver(body_message(big[:80], more=True), body_message(big[80:], more=True)), send
    )
    assert send.status == 413
    assert app.calls == [] and mw.runtime.stats.too_large == 2


async def test_slow_body_gets_408(gate_factory: Any) -> None:
    app = EchoApp()
    mw = await gate_factory(app, gate_body_timeout_s=0.2)
    send = Recorder()
    await asyncio.wait_for(mw(http_scope(), Receiver(body_message(b'{"mo', more=True)), send), 5)
    assert send.status == 408 and app.calls == []


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b'"str"', b'{"model": 7}'])
async def test_unreadable_bodies_are_held_while_anything_is_paused(
    gate_factory: Any, client: AsyncPauseClient, body: bytes
) -> None:
    """A body the gate cannot read a model from could be for any adapter (fail closed)."""
    app = EchoApp()
    mw = await gate_factory(app)
    send = Recorder()  # nothing paused: vLLM answers it (400, in real life)
    await asyncio.wait_for(mw(http_scope(), Receiver(body_message(body)), send), 5)
    assert send.status == 200 and app.calls[0]["body"] == body
    grant = await client.pause("lora-z")  # any adapter at all
    await seen(mw, grant)
    send = Recorder()
    task = asyncio.create_task(mw(http_scope(), Receiver(body_message(body)), send))
    await asyncio.sleep(0.3)
    assert not task.done() and len(app.calls) == 1
    await client.resume("lora-z")
    await asyncio.wait_for(task, 5)
    assert send.status == 200 and len(app.calls) == 2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("POST", "/tokenize"),
        ("GET", "/v1/completions"),
        ("POST", "/ping"),
        # (unloads are read for the version guard: tests/plugin/test_versions.py)
    ],
)
async def test_other_paths_pass_through_untouched(
    gate_factory: Any, client: AsyncPauseClient, method: str, path: str
) -> None:
    calls: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append((scope, receive, send))

    mw = await gate_factory(app)
    await seen(mw, await client.pause("*"))
    scope, receive, send = http_scope(path, method), Receiver(), Recorder()
    await asyncio.wait_for(mw(scope, receive, send), 1)
    assert calls == [(scope, receive, send)]  # the very same objects: nothing read or wrapped
    assert receive.calls == 0


async def test_held_before_the_first_sync(settings: Settings, redis_url: str) -> None:
    """Fail closed: until the watcher has read the state once, gated requests wait."""
    app = EchoApp()
    mw = PauseGateMiddleware(
        app,
        settings=settings.model_copy(
            update={
                "redis_url": "redis://127.0.0.1:1/0",
                "gate_hold_timeout_s": 0.5,
                "gate_deadline_response": "503",
            }
        ),
    )
    try:
        send = Recorder()
        await asyncio.wait_for(mw(http_scope(), Receiver(body_message(req())), send), 5)
        assert send.status == 503 and app.calls == []
        # non-generation paths are not affected
        ok = Recorder()
        await mw(http_scope("/v1/models", "GET"), Receiver(body_message(b"")), ok)
        assert ok.status == 200
    finally:
        await mw.runtime.aclose()


async def test_lifespan_starts_and_deregisters(settings: Settings, client: AsyncPauseClient) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})

    mw = PauseGateMiddleware(app, settings=settings)
    receive, send = Receiver({"type": "lifespan.startup"}), Recorder()
    task = asyncio.create_task(mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    await send.wait_for(1)
    for _ in range(50):
        reps = await client.replicas()
        if reps:
            break
        await asyncio.sleep(0.05)
    assert [r["id"] for r in reps] == [mw.runtime.replica_id]
    assert reps[0]["pid"] and reps[0]["held"] == "0"
    receive.push({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 5)
    assert await client.replicas() == []


# -- drains, with the engine faked at the seam the gate reads ------------------------------------
class FakeState:
    def __init__(self, external: str, lora: str | None) -> None:
        self.external_req_id = external
        self.lora_name = lora
        self.done = asyncio.Event()


class FakeEngine:
    """``output_processor.request_states`` + ``abort(ids, internal=True)`` like AsyncLLM."""

    def __init__(self) -> None:
        self.output_processor = type("OP", (), {})()
        self.output_processor.request_states = {}
        self.aborted: list[str] = []
        self.n = 0

    def add(self, external: str, lora: str | None) -> FakeState:
        self.n += 1
        st = FakeState(external, lora)
        self.output_processor.request_states[f"{external}-int{self.n}"] = st
        return st

    async def abort(self, ids: list[str], internal: bool = False) -> None:
        assert internal
        for i in ids:
            st = self.output_processor.request_states.pop(i, None)
            if st is not None:
                self.aborted.append(st.external_req_id)
                st.done.set()


class EngineApp:
    """Like vLLM's completions route: the request reaches the engine after ``delay`` s and runs
    until aborted (or ``finish`` is set)."""

    def __init__(self, engine: FakeEngine, delay: float = 0.0) -> None:
        self.engine = engine
        self.delay = delay
        self.finished: list[str] = []
        from types import SimpleNamespace

        self.app = SimpleNamespace(state=SimpleNamespace(engine_client=engine))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        data = json.loads((await receive())["body"])
        base = dict(scope["headers"])[b"x-request-id"].decode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(self.delay)
        lora = data["model"] if data["model"].startswith("lora") else None
        st = self.engine.add(f"cmpl-{base}-0", lora)
        await st.done.wait()
        self.finished.append(st.external_req_id)
        await send({"type": "http.response.body", "body": b'{"finish_reason": "abort"}'})


async def _start(mw: PauseGateMiddleware, app: EngineApp, model: str) -> asyncio.Task[None]:
    scope = http_scope(app=app.app)
    return asyncio.create_task(mw(scope, Receiver(body_message(req(model))), Recorder()))


async def test_pause_with_drain_aborts_in_flight_and_returns_once_drained(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    engine = FakeEngine()
    app = EngineApp(engine)
    mw = await gate_factory(app)
    await asyncio.sleep(0.3)  # a heartbeat registered the replica
    a = [await _start(mw, app, "lora-a") for _ in range(2)]
    b = await _start(mw, app, "lora-b")
    base = await _start(mw, app, "tiny")
    await asyncio.sleep(0.1)
    grant = await client.pause("lora-a", drain=True, timeout=5)
    assert all(t.done() for t in a)  # drain returned only once both A requests were gone
    assert len(engine.aborted) == 2 and all(x.startswith("cmpl-") for x in engine.aborted)
    assert not b.done() and not base.done()
    reps = await client.replicas()
    assert reps[0]["drains"]["lora-a"]["rev"] >= grant.revision
    assert sorted(reps[0]["drains"]["lora-a"]["aborted"]) == sorted(engine.aborted)
    assert mw.runtime.stats.aborts == 2 and mw.runtime.stats.drains >= 1
    # the base model is drained by its served name too (no LoRA: found by its request id)
    await client.pause("tiny", drain=True, timeout=5)
    assert base.done() and not b.done()
    await client.pause("*", drain=True, timeout=5)
    assert b.done()


async def test_drain_waits_for_a_request_admitted_just_before_the_pause(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    """Admitted, not yet in the engine when the pause lands: aborted once it gets there."""
    engine = FakeEngine()
    app = EngineApp(engine, delay=0.5)
    mw = await gate_factory(app)
    await asyncio.sleep(0.3)
    task = await _start(mw, app, "lora-a")
    await asyncio.sleep(0.05)
    assert engine.output_processor.request_states == {}
    t0 = time.monotonic()
    await client.pause("lora-a", drain=True, timeout=5)
    assert time.monotonic() - t0 >= 0.4
    assert task.done() and len(engine.aborted) == 1


async def test_drain_times_out_naming_the_replica(gate_factory: Any, client: AsyncPauseClient) -> None:
    """A request that cannot be aborted (never reaches the engine) keeps the drain open."""
    from pausesvc import DrainTimeoutError

    engine = FakeEngine()
    app = EngineApp(engine, delay=30)
    mw = await gate_factory(app)
    await asyncio.sleep(0.3)
    task = await _start(mw, app, "lora-a")
    await asyncio.sleep(0.05)
    with pytest.raises(DrainTimeoutError) as info:
        await client.pause("lora-a", drain=True, timeout=0.5)
    assert info.value.missing == [mw.runtime.replica_id]
    task.cancel()


async def test_replica_that_starts_while_paused_acks_and_holds(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    grant: Grant = await client.pause("lora-a")
    app = EchoApp()
    mw = await gate_factory(app)
    assert mw.runtime.admissible("lora-b") and not mw.runtime.admissible("lora-a")
    # a drain by another holder counts this (new) process in and returns
    await client.pause("lora-a", holder="other", drain=True, timeout=5)
    assert (await client.replicas())[0]["drains"]["lora-a"]["rev"] >= grant.revision


# -- SkyRL endpoints and the gate's own paths ------------------------------------------------------
async def call(
    mw: PauseGateMiddleware,
    path: str,
    body: bytes | None,
    method: str = "POST",
    app: Any = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Recorder:
    send = Recorder()
    receive = Receiver(body_message(body or b""))
    await asyncio.wait_for(mw(http_scope(path, method, headers=headers, app=app), receive, send), 10)
    return send


#: what an authenticated SkyRL trainer sends to a gate configured with a credential
AUTH = [(b"content-type", b"application/json"), (b"authorization", b"Bearer s3cret")]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/skyrl/v1/abort_lora_requests", b"{}", "lora_name"),
        ("/skyrl/v1/abort_lora_requests", b'{"lora_name": ""}', "lora_name"),
        ("/skyrl/v1/abort_lora_requests", b'{"lora_name": 3}', "lora_name"),
        ("/skyrl/v1/abort_lora_requests", b'{"lora_name": "a b"}', "lora_name"),
        ("/skyrl/v1/resume_lora_requests", b"not json", "body"),
        ("/skyrl/v1/resume_lora_requests", b"[]", "body"),
        ("/skyrl/v1/wait_lora_unpaused", b"", "body"),
        ("/skyrl/v1/wait_lora_unpaused", b'{"lora_name": "a", "timeout_s": "soon"}', "timeout_s"),
        ("/skyrl/v1/wait_lora_unpaused", b'{"lora_name": "a", "timeout_s": -1}', "timeout_s"),
        ("/skyrl/v1/wait_lora_unpaused", b'{"lora_name": "a", "timeout_s": true}', "timeout_s"),
        ("/skyrl/v1/wait_lora_unpaused", b'{"lora_name": "a", "timeout_s": 1e400}', "timeout_s"),
        *[
            (
                "/skyrl/v1/wait_lora_unpaused",
                json.dumps({"lora_name": "a", "timeout_s": bad}).encode(),
                "timeout_s",
            )
            for bad in ("-1", "nan", "inf", "1e400", "1_0", "", "0x1")
        ],
    ],
)
async def test_skyrl_bad_input_is_400(gate_factory: Any, path: str, body: bytes, field: str) -> None:
    mw = await gate_factory(EchoApp())
    send = await call(mw, path, body)
    assert send.status == 400, send.body
    assert send.json()["error"]["field"] == field
    assert send.json()["detail"]


async def test_skyrl_wait_takes_a_numeric_string(gate_factory: Any, client: AsyncPauseClient) -> None:
    """SkyRL's server did ``float(timeout_s)``: ``"0.3"`` waits 0.3 s, as a number would."""
    mw = await gate_factory(EchoApp())
    await seen(mw, await client.pause("lora-a"))
    t0 = time.monotonic()
    send = await call(mw, "/skyrl/v1/wait_lora_unpaused", b'{"lora_name": "lora-a", "timeout_s": "0.3"}')
    assert send.status == 200 and send.json() == {"paused": True}
    assert 0.25 <= time.monotonic() - t0 < 5
    send = await call(mw, "/skyrl/v1/wait_lora_unpaused", b'{"lora_name": "b", "timeout_s": "5"}')
    assert send.json() == {"paused": False}


async def test_skyrl_wrong_method_is_405(gate_factory: Any) -> None:
    mw = await gate_factory(EchoApp())
    send = await call(mw, "/skyrl/v1/abort_lora_requests", None, method="GET")
    assert send.status == 405 and send.headers["allow"] == "POST"


async def test_skyrl_abort_resume_wait(gate_factory: Any, client: AsyncPauseClient) -> None:
    engine = FakeEngine()
    app = EngineApp(engine)
    mw = await gate_factory(app, replica_control_token="s3cret")
    await asyncio.sleep(0.3)
    running = await _start(mw, app, "lora-a")
    await asyncio.sleep(0.1)
    # not paused: wait answers at once
    send = await call(mw, "/skyrl/v1/wait_lora_unpaused", b'{"lora_name": "lora-a"}')
    assert send.json() == {"paused": False}
    send = await call(
        mw, "/skyrl/v1/abort_lora_requests", b'{"lora_name": "lora-a"}', app=app.app, headers=AUTH
    )
    assert send.status == 200
    assert send.json() == {"status": "ok", "aborted": engine.aborted, "count": 1}
    assert running.done()
    state = await client.get("lora-a")  # paused in Redis, for the whole fleet
    assert state is not None and "skyrl" in state.holders
    again = await call(mw, "/skyrl/v1/abort_lora_requests", b'{"lora_name": "lora-a"}', headers=AUTH)
    assert again.status == 200  # idempotent
    t0 = time.monotonic()
    send = await call(mw, "/skyrl/v1/wait_lora_unpaused", b'{"lora_name": "lora-a", "timeout_s": 0.3}')
    assert send.json() == {"paused": True} and time.monotonic() - t0 >= 0.25
    waiter = asyncio.create_task(
        call(mw, "/skyrl/v1/wait_lora_unpaused", b'{"lora_name": "lora-a", "timeout_s": 30}')
    )
    await asyncio.sleep(0.1)
    send = await call(mw, "/skyrl/v1/resume_lora_requests", b'{"lora_name": "lora-a"}', headers=AUTH)
    assert send.json() == {"status": "ok", "paused": False}
    assert (await asyncio.wait_for(waiter, 5)).json() == {"paused": False}
    assert await client.get("lora-a") is None
    # idempotent: resuming what is not paused is still ok
    send = await call(mw, "/skyrl/v1/resume_lora_requests", b'{"lora_name": "lora-a"}', headers=AUTH)
    assert send.status == 200 and send.json()["status"] == "ok"


async def test_status_and_metrics(gate_factory: Any, client: AsyncPauseClient) -> None:
    mw = await gate_factory(EchoApp())
    await seen(mw, await client.pause("lora-a"))
    send = await call(mw, "/pausesvc/status", None, method="GET")
    st = send.json()
    assert st["paused"] == ["lora-a"] and st["in_sync"] and st["replica_id"]
    pytest.importorskip("prometheus_client")
    send = await call(mw, "/pausesvc/metrics", None, method="GET")
    assert send.status == 200 and b"pausesvc_gate_holds_total" in send.body


class StuckEngine(FakeEngine):
    """An engine whose abort never takes effect: the request stays in flight."""

    async def abort(self, ids: list[str], internal: bool = False) -> None:
        return None


async def test_skyrl_abort_drain_timeout_keeps_the_pause(gate_factory: Any, client: AsyncPauseClient) -> None:
    """A caller that knows only SkyRL's contract gets a non-2xx (it must not swap the weights),
    and the pause is never released by the failure: new requests stay held, a retry is
    idempotent, and only resume_lora_requests releases it."""
    engine = StuckEngine()
    app = EngineApp(engine)
    mw = await gate_factory(app, drain_timeout_s=0.3)
    await asyncio.sleep(0.3)
    stuck = await _start(mw, app, "lora-a")
    await asyncio.sleep(0.1)
    send = await call(mw, "/skyrl/v1/abort_lora_requests", b'{"lora_name": "lora-a"}', app=app.app)
    assert send.status == 504
    err = send.json()["error"]
    assert err["code"] == "drain_timeout" and err["paused"] is True and err["in_flight"] == 1
    assert "stays paused" in send.json()["detail"]
    state = await client.get("lora-a")
    assert state is not None and "skyrl-anon" in state.holders
    assert err["token"] in state.tokens
    held = await _start(mw, app, "lora-a")
    again = await call(mw, "/skyrl/v1/abort_lora_requests", b'{"lora_name": "lora-a"}', app=app.app)
    assert again.status == 504 and not held.done()
    send = await call(mw, "/skyrl/v1/resume_lora_requests", b'{"lora_name": "lora-a"}')
    assert send.json() == {"status": "ok", "paused": False}
    await asyncio.sleep(0.2)
    assert not stuck.done() and len(engine.output_processor.request_states) == 2  # held ran
    for st in list(engine.output_processor.request_states.values()):
        st.done.set()
    await asyncio.wait_for(asyncio.gather(stuck, held), 5)
