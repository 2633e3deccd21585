"""Every path that can generate with an adapter is gated (issue 14, part 2).

Every non-GET path but the allow-list is gated; the adapter is read from the body (JSON or form)
and the SageMaker header; no model and every base-model name are one name; an unreadable body
could be for any adapter; websockets are refused or closed with 1013 while their model is paused.
Real Redis; the app is faked at the ASGI seam.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from pausesvc_vllm import PauseGateMiddleware
from pausesvc_vllm._adapters import BaseNames, Target, body_model, is_stepwise
from pausesvc_vllm._routes import GatedPaths, route_table

from pausesvc import AsyncPauseClient, Settings
from tests.plugin.conftest import EchoApp, Receiver, Recorder, body_message, http_scope
from tests.plugin.test_gate import FakeEngine, req, seen

SM = b"x-amzn-sagemaker-adapter-identifier"


async def held_or_served(
    mw: PauseGateMiddleware, scope: dict[str, Any], body: bytes, wait: float = 0.3
) -> tuple[bool, asyncio.Task[None], Recorder]:
    """Send one request; (was it still held after ``wait`` s?, its task, its send)."""
    send = Recorder()
    task = asyncio.create_task(mw(scope, Receiver(body_message(body)), send))
    await asyncio.sleep(wait)
    return not task.done(), task, send


async def finish(*tasks: asyncio.Task[None]) -> None:
    await asyncio.wait_for(asyncio.gather(*tasks), 5)


# -- paths -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/v1/messages",
        "/invocations",
        "/v1/embeddings",
        "/pooling",
        "/v1/audio/transcriptions",
        "/v2/rerank",
        "/classify",
        "/v1/chat/completions/batch",
        "/v1/next-release-path",
        "/v1/completions/render/x",
    ],
)
async def test_every_post_path_is_gated_by_default(
    gate_factory: Any, client: AsyncPauseClient, path: str
) -> None:
    app = EchoApp()
    mw = await gate_factory(app)
    await seen(mw, await client.pause("lora-a"))
    held, task, _ = await held_or_served(mw, http_scope(path), req("lora-a"))
    assert held and app.calls == []
    ok, other, send = await held_or_served(mw, http_scope(path), req("lora-b"))
    assert not ok and send.status == 200
    await client.resume("lora-a")
    await finish(task, other)
    assert len(app.calls) == 2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/v1/unload_lora_adapter"),
        ("POST", "/adapters"),
        ("DELETE", "/adapters/lora-a"),
        ("POST", "/ping"),
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/v1/responses/r1/cancel"),
        ("POST", "/update_weights"),
        ("GET", "/v1/anything"),
        ("POST", "/extra/ok"),
    ],
)
async def test_the_allow_list_passes_untouched_while_everything_is_paused(
    gate_factory: Any, client: AsyncPauseClient, method: str, path: str
) -> None:
    app = EchoApp()
    mw = await gate_factory(app, gate_extra_ungated_paths=["/extra/ok"])
    await seen(mw, await client.pause("*"))
    held, task, send = await held_or_served(mw, http_scope(path, method), req("lora-a"), 0.05)
    await finish(task)
    assert not held and send.status == 200 and len(app.calls) == 1


async def test_forced_paths_win_over_the_allow_list(gate_factory: Any, client: AsyncPauseClient) -> None:
    app = EchoApp()
    mw = await gate_factory(app, gate_extra_paths=["/tokenize"])
    await seen(mw, await client.pause("lora-a"))
    held, task, _ = await held_or_served(mw, http_scope("/tokenize"), req("lora-a"))
    assert held
    await client.resume("lora-a")
    await finish(task)


def test_allow_list_is_exact_with_one_segment_wildcards() -> None:
    p = GatedPaths(["/tokenize", "/adapters/*", "/v1/responses/{id}/cancel"])

    def gated(path: str, method: str = "POST") -> bool:
        return p.gated(http_scope(path, method))

    assert not gated("/tokenize") and not gated("//tokenize/") and gated("/tokenize/x")
    assert gated("/tokenizeX") and gated("/adapters") and not gated("/adapters/a", "DELETE")
    assert gated("/adapters/a/b") and not gated("/v1/responses/r9/cancel")
    for method in ("PUT", "PATCH", "DELETE", "WHATEVER"):
        assert gated("/v1/completions", method)
    assert not any(gated("/v1/completions", m) for m in ("GET", "HEAD", "OPTIONS"))
    # route templates: a {param} in the route matches only a wildcard entry
    assert not p.template_gated("DELETE", "/adapters/{adapter_name}")
    assert p.template_gated("POST", "/tokenize/{x}")


def test_route_table_of_a_starlette_app() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route, WebSocketRoute

    async def h(*_: Any) -> None:  # never called
        raise AssertionError

    app = Starlette(
        routes=[
            Route("/v1/completions", h, methods=["POST"]),
            Route("/v1/models", h, methods=["GET"]),
            Route("/tokenize", h, methods=["POST"]),
            Route("/ping", h, methods=["GET", "POST"]),
            Route("/adapters/{adapter_name}", h, methods=["DELETE"]),
            WebSocketRoute("/v1/realtime", h),
            Mount("/sub", routes=[Route("/gen", h, methods=["POST"])]),
        ]
    )
    table = {
        (r["method"], r["path"]): r["gated"]
        for r in route_table(app, GatedPaths(Settings().gate_ungated_paths))
    }
    assert table[("POST", "/v1/completions")] and table[("WEBSOCKET", "/v1/realtime")]
    assert table[("POST", "/sub/gen")]
    assert not table[("GET", "/v1/models")] and not table[("POST", "/tokenize")]
    assert not table[("POST", "/ping")] and not table[("DELETE", "/adapters/{adapter_name}")]


# -- where the adapter is read ------------------------------------------------------------------
async def test_sagemaker_header_names_the_adapter(gate_factory: Any, client: AsyncPauseClient) -> None:
    """vLLM writes the header into body["model"] on /invocations: held while either is paused."""
    app = EchoApp()
    mw = await gate_factory(app)
    await seen(mw, await client.pause("lora-a"))
    hdr = [(b"content-type", b"application/json"), (SM, b"lora-a")]
    held1, t1, _ = await held_or_served(mw, http_scope("/invocations", headers=hdr), req(None))
    held2, t2, _ = await held_or_served(mw, http_scope("/invocations", headers=hdr), req("lora-b"))
    assert held1 and held2 and app.calls == []
    other = [(b"content-type", b"application/json"), (SM, b"lora-b")]
    held3, t3, send = await held_or_served(mw, http_scope("/invocations", headers=other), req("lora-c"))
    assert not held3 and send.status == 200
    await client.resume("lora-a")
    await finish(t1, t2, t3)


async def test_every_sagemaker_header_value_is_checked(gate_factory: Any, client: AsyncPauseClient) -> None:
    """vLLM reads the FIRST value of a repeated adapter header (Starlette's Headers.get), a proxy
    may read another: held while any value names a paused adapter, in either order."""
    app = EchoApp()
    mw = await gate_factory(app)
    await seen(mw, await client.pause("lora-a"))
    tasks = []
    for values in ((b"lora-a", b"lora-b"), (b"lora-b", b"lora-a")):
        hdr = [(b"content-type", b"application/json"), *((SM, v) for v in values)]
        held, task, _ = await held_or_served(mw, http_scope("/invocations", headers=hdr), req("lora-b"))
        tasks.append(task)
        assert held, values
    two = [(b"content-type", b"application/json"), (SM, b"lora-b"), (SM, b"lora-c")]
    held, task, send = await held_or_served(mw, http_scope("/invocations", headers=two), req("lora-b"))
    assert not held and send.status == 200 and app.calls and len(app.calls) == 1
    await client.resume("lora-a")
    await finish(*tasks, task)


async def test_invocations_without_the_header_is_a_base_model_request(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    """On /invocations vLLM replaces the body's model with the header's value - null, the base
    model, when there is none (or it is empty): a pause of the base model holds it whatever the
    body names; elsewhere the body's model decides."""
    app = EchoApp()
    mw = await gate_factory(app, base_model_names=["tiny"])
    await seen(mw, await client.pause("tiny"))
    json_ct = [(b"content-type", b"application/json")]
    tasks = []
    for hdr in (json_ct, [*json_ct, (SM, b"")], [*json_ct, (SM, b"  ")]):
        held, task, _ = await held_or_served(mw, http_scope("/invocations", headers=hdr), req("lora-b"))
        tasks.append(task)
        assert held, hdr
    held, task, send = await held_or_served(mw, http_scope("/v1/completions", headers=json_ct), req("lora-b"))
    assert not held and send.status == 200
    named = [*json_ct, (SM, b"lora-b")]
    held2, task2, _ = await held_or_served(mw, http_scope("/invocations", headers=named), req(None))
    assert held2  # the body's model (none: the base model) counts too: held, the safe side
    await client.resume("tiny")
    await finish(*tasks, task, task2)


async def test_a_form_naming_two_models_is_held_while_anything_is_paused(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    """Starlette's form parser reads a repeated field's LAST value, others the first: a form
    whose ``model`` fields differ cannot be told, so it is held while anything is paused."""
    app = EchoApp()
    mw = await gate_factory(app)
    await seen(mw, await client.pause("lora-a"))
    form = [(b"content-type", b"application/x-www-form-urlencoded")]
    mp = [(b"content-type", b"multipart/form-data; boundary=B")]
    multipart = (
        b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nlora-b\r\n'
        b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nlora-a\r\n--B--\r\n'
    )
    held1, t1, _ = await held_or_served(
        mw, http_scope("/v1/audio/translations", headers=form), b"model=lora-b&model=lora-a"
    )
    held2, t2, _ = await held_or_served(mw, http_scope("/v1/audio/transcriptions", headers=mp), multipart)
    held3, t3, send = await held_or_served(
        mw, http_scope("/v1/audio/translations", headers=form), b"model=lora-b&model=lora-b"
    )
    assert held1 and held2 and not held3 and send.status == 200
    await client.resume("lora-a")
    await finish(t1, t2, t3)


def test_any_model_name_may_be_the_base_model_when_vllm_skips_name_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``VLLM_SKIP_MODEL_NAME_VALIDATION=1``: vLLM runs a request naming an unknown model on the
    base model, so a pause of the base model must hold (and drain) every request."""
    monkeypatch.setenv("VLLM_SKIP_MODEL_NAME_VALIDATION", "true")
    names = BaseNames(["tiny"])
    assert names.any_name
    t = Target(names, body=b'{"model": "whatever"}')
    assert t.matches("tiny") and t.matches("whatever") and not t.matches("lora-a")
    assert set(t.check() or ()) == {"tiny", "whatever"}
    assert t.display == "whatever"
    monkeypatch.setenv("VLLM_SKIP_MODEL_NAME_VALIDATION", "0")
    plain = Target(BaseNames(["tiny"]), body=b'{"model": "whatever"}')
    assert not plain.matches("tiny") and plain.check() == ["whatever"]


def test_a_base_model_request_may_run_on_a_default_multimodal_lora() -> None:
    """``--default-mm-loras``: vLLM may put a base-model chat request on the LoRA named after a
    modality of its content, so a pause of that LoRA holds base-model requests too."""
    app = SimpleNamespace(
        state=SimpleNamespace(
            args=SimpleNamespace(
                model="/m/tiny", served_model_name=["tiny"], default_mm_loras={"audio": "/l"}
            )
        )
    )
    names = BaseNames(any_name=False)
    assert names.learn(app) and names.mm_loras == ("audio",)
    base = Target(names, body=b'{"model": "tiny", "messages": []}')
    assert base.matches("audio") and base.matches("tiny") and base.display == "tiny"
    lora = Target(names, body=b'{"model": "lora-a"}')
    assert not lora.matches("audio")


async def test_a_base_model_drain_aborts_engine_requests_of_any_id_shape(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    """vLLM derives engine ids in shapes of its own per endpoint (Responses ``resp_<random>``,
    chat batch ``chatcmpl-<id>_<i>``, beam search ``cmpl-<id>-0-<uuid>-beam-<i>``): a drain of
    the base model aborts every request with no LoRA, whatever its id, and no LoRA's request."""
    engine = FakeEngine()
    ids = ["resp_0a1b2c", "chatcmpl-{rid}_0", "cmpl-{rid}-0-9f8e7d-beam-1", "unrelated-{rid}"]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        model = json.loads((await receive())["body"]).get("model")
        rid = next(v for k, v in scope["headers"] if k == b"x-request-id").decode()  # the first
        await send({"type": "http.response.start", "status": 200, "headers": []})
        shape = ids.pop(0) if model != "lora-a" else "cmpl-{rid}-0-x-beam-0"
        st = engine.add(shape.format(rid=rid), "lora-a" if model == "lora-a" else None)
        await st.done.wait()
        await send({"type": "http.response.body", "body": b"done"})

    vllm_app = SimpleNamespace(state=SimpleNamespace(engine_client=engine))
    mw = await gate_factory(app, base_model_names=["tiny"])
    await asyncio.sleep(0.3)  # registered
    dup = [(b"x-request-id", b"first"), (b"x-request-id", b"second")]
    base = [
        asyncio.create_task(mw(http_scope(app=vllm_app), Receiver(body_message(req(m))), Recorder()))
        for m in ("tiny", None, "tiny")
    ]
    base.append(
        asyncio.create_task(
            mw(http_scope(app=vllm_app, headers=dup), Receiver(body_message(req("tiny"))), Recorder())
        )
    )
    lora = asyncio.create_task(
        mw(http_scope(app=vllm_app), Receiver(body_message(req("lora-a"))), Recorder())
    )
    await asyncio.sleep(0.2)
    assert len(engine.output_processor.request_states) == 5
    await client.pause("tiny", drain=True, timeout=5)
    assert all(t.done() for t in base) and not lora.done()
    assert len(engine.aborted) == 4 and not any("beam-0" in a for a in engine.aborted)
    admitted = {a.base for a in mw.runtime._admitted}
    assert "second" not in admitted
    for st in list(engine.output_processor.request_states.values()):
        st.done.set()
    await finish(*base, lora)


async def test_a_drain_ends_a_beam_search_whole(gate_factory: Any, client: AsyncPauseClient) -> None:
    """vLLM runs a beam search as one engine request per step: aborting the engine's requests
    only ends a step, the next starts. The drain ends the request whole: its ``receive()``
    reports a disconnect (vLLM's ``with_cancellation`` then cancels the handler) and the client
    gets an aborted request's answer. A request without beam search keeps the plain abort."""
    engine = FakeEngine()
    cancelled: list[str] = []

    async def beam(rid: str, lora: str | None) -> None:
        try:
            for i in range(10_000):
                st = engine.add(f"cmpl-{rid}-0-5eed-beam-{i}", lora)
                await st.done.wait()  # an abort ends this step only
                await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            cancelled.append(rid)
            raise

    async def app(scope: Any, receive: Any, send: Any) -> None:  # like with_cancellation
        data = json.loads((await receive())["body"])
        rid = next(v for k, v in scope["headers"] if k == b"x-request-id").decode()
        handler = asyncio.create_task(beam(rid, data["model"] if data["model"] != "tiny" else None))
        listener = asyncio.ensure_future(receive())
        await asyncio.wait((handler, listener), return_when=asyncio.FIRST_COMPLETED)
        handler.cancel()
        listener.cancel()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"null"})  # FastAPI's None

    vllm_app = SimpleNamespace(state=SimpleNamespace(engine_client=engine))
    mw = await gate_factory(app, base_model_names=["tiny"])
    await asyncio.sleep(0.3)  # registered
    for model in ("lora-a", "tiny"):
        body = json.dumps({"model": model, "prompt": "x", "use_beam_search": True, "n": 2}).encode()
        send = Recorder()
        task = asyncio.create_task(mw(http_scope(app=vllm_app), Receiver(body_message(body)), send))
        await asyncio.sleep(0.2)
        grant = await client.pause(model, drain=True, timeout=5)
        await asyncio.wait_for(task, 5)
        assert send.status == 200, model
        assert [c["finish_reason"] for c in send.json()["choices"]] == ["abort", "abort"], send.body
        await client.resume(model, token=grant.token)
    assert len(cancelled) == 2 and mw.runtime.stats.stepwise_cuts == 2


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
async def test_a_drain_ends_a_request_whose_aborted_answer_looks_complete(
    gate_factory: Any, client: AsyncPauseClient, path: str
) -> None:
    """vLLM answers an aborted Responses request ``status: "completed"`` and a Messages one
    ``stop_reason: null``: a client would take the cut text for a whole sample. A drain ends
    such a request whole instead, and the client gets a 503 ``adapter_paused`` to retry."""
    engine = FakeEngine()

    async def app(scope: Any, receive: Any, send: Any) -> None:  # like with_cancellation
        await receive()
        st = engine.add("resp_0123abcd", "lora-a")
        handler = asyncio.ensure_future(st.done.wait())
        listener = asyncio.ensure_future(receive())
        await asyncio.wait((handler, listener), return_when=asyncio.FIRST_COMPLETED)
        handler.cancel()
        listener.cancel()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"status": "completed"}'})

    vllm_app = SimpleNamespace(state=SimpleNamespace(engine_client=engine))
    mw = await gate_factory(app)
    await asyncio.sleep(0.3)  # registered
    send = Recorder()
    body = json.dumps({"model": "lora-a", "input": "x"}).encode()
    task = asyncio.create_task(mw(http_scope(path, app=vllm_app), Receiver(body_message(body)), send))
    await asyncio.sleep(0.2)
    grant = await client.pause("lora-a", drain=True, timeout=5)
    await asyncio.wait_for(task, 5)
    assert send.status == 503 and send.json()["error"]["code"] == "adapter_paused", send.body
    await client.resume("lora-a", token=grant.token)


@pytest.mark.parametrize(
    ("body", "stepwise"),
    [
        (b'{"model": "a", "use_beam_search": true}', True),
        (b'{"model": "a", "use_beam_search": "yes"}', True),
        (b'{"model": "a", "use_beam_search": false}', False),
        (b'{"model": "a", "use_beam_search": "False"}', False),
        (b'{"model": "a", "prompt": "use_beam_search"}', False),
        (b'{"model": "a", "use\\u005fbeam_search": 1}', True),
        ('{"use_beam_search": true}'.encode("utf-16"), True),
        (b'{"model": "a"}', False),
        (b"not json use_beam_search", False),
    ],
)
def test_is_stepwise(body: bytes, stepwise: bool) -> None:
    assert is_stepwise(body) is stepwise


async def test_a_repeated_request_id_is_recorded_as_vllm_reads_it(gate_factory: Any) -> None:
    """vLLM takes the FIRST ``X-Request-Id`` (Starlette's Headers.get) and derives its engine
    ids from it: the gate records the same one."""
    seen_ids: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        seen_ids.extend(a.base for a in mw.runtime._admitted)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = await gate_factory(app)
    dup = [(b"x-request-id", b"first"), (b"x-request-id", b"second")]
    send = Recorder()
    await mw(http_scope(headers=dup), Receiver(body_message(req("lora-a"))), send)
    assert send.status == 200 and seen_ids == ["first"]


async def test_form_bodies_name_the_adapter(gate_factory: Any, client: AsyncPauseClient) -> None:
    app = EchoApp()
    mw = await gate_factory(app)
    await seen(mw, await client.pause("lora-a"))
    multipart = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\nRIFF....\r\n--XyZ\r\n"
        b'Content-Disposition: form-data; name="model"\r\n\r\nlora-a\r\n--XyZ--\r\n'
    )
    mp = [(b"content-type", b"multipart/form-data; boundary=XyZ")]
    held1, t1, _ = await held_or_served(mw, http_scope("/v1/audio/transcriptions", headers=mp), multipart)
    form = [(b"content-type", b"application/x-www-form-urlencoded")]
    held2, t2, _ = await held_or_served(
        mw, http_scope("/v1/audio/translations", headers=form), b"model=lora-a&language=en"
    )
    held3, t3, send = await held_or_served(
        mw, http_scope("/v1/audio/translations", headers=form), b"model=lora-b"
    )
    assert held1 and held2 and not held3 and send.status == 200
    await client.resume("lora-a")
    await finish(t1, t2, t3)


@pytest.mark.parametrize(
    ("body", "ctype", "model"),
    [
        (b'{"model": "a"}', b"application/json", "a"),
        (b'{"x": 1}', None, ""),
        (b'{"model": null}', None, ""),
        (b"", None, ""),
        (b"  ", b"text/plain", ""),
        (b'{"model": 3}', None, None),
        (b"[1]", None, None),
        (b"{bad", None, None),
        (b"\xff", None, None),
        (b"model=b", b"application/x-www-form-urlencoded", "b"),
        (b"x=1", b"application/x-www-form-urlencoded", ""),
        (
            b"--B\r\nContent-Disposition: form-data; name=model\r\n\r\nm1\r\n--B--",
            b"multipart/form-data; boundary=B",
            "m1",
        ),
        (
            b'--B\r\nContent-Disposition: form-data; name="modelx"\r\n\r\nm1\r\n--B--',
            b'multipart/form-data; boundary="B"',
            "",
        ),
        (b"no boundary here", b"multipart/form-data", None),
    ],
)
def test_body_model(body: bytes, ctype: bytes | None, model: str | None) -> None:
    assert body_model(body, ctype) == model


# -- the base model: one name ------------------------------------------------------------------
def test_base_names_are_learned_from_the_vllm_app() -> None:
    paths = [
        SimpleNamespace(name="tiny", model_path="/m/tiny"),
        SimpleNamespace(name="tiny-2", model_path="/m/tiny"),
    ]
    app = SimpleNamespace(
        state=SimpleNamespace(openai_serving_models=SimpleNamespace(base_model_paths=paths))
    )
    names = BaseNames(["alias"])
    assert names.canonical == "alias" and not names.learned
    assert names.learn(app) and names.learned
    assert names.names == {"tiny", "tiny-2", "/m/tiny", "alias"}
    assert names.canonical == "tiny"
    t = Target(names, body=b'{"prompt": "x"}')
    assert t.display == "tiny" and t.matches("/m/tiny") and t.matches("tiny-2")
    assert not t.matches("lora-a") and t.matches("*")
    assert not BaseNames().learn(SimpleNamespace(state=SimpleNamespace()))


async def test_no_model_and_every_base_name_are_one_name(gate_factory: Any, client: AsyncPauseClient) -> None:
    paths = [
        SimpleNamespace(name="tiny", model_path="/m/tiny"),
        SimpleNamespace(name="tiny-2", model_path="/m/tiny"),
    ]
    engine = FakeEngine()
    vllm_app = SimpleNamespace(
        state=SimpleNamespace(
            engine_client=engine, openai_serving_models=SimpleNamespace(base_model_paths=paths)
        )
    )
    app = EchoApp()
    mw = await gate_factory(app)
    await seen(mw, await client.pause("tiny-2"))
    tasks = []
    for model in (None, "", "tiny", "/m/tiny", "tiny-2"):
        held, task, _ = await held_or_served(mw, http_scope(app=vllm_app), req(model), 0.05)
        tasks.append(task)
        assert held, model
    await asyncio.sleep(0.2)
    assert app.calls == [] and mw.runtime.stats.held == {"tiny": 5}
    held, t, send = await held_or_served(mw, http_scope(app=vllm_app), req("lora-a"), 0.05)
    assert not held and send.status == 200
    await client.resume("tiny-2")
    await finish(*tasks, t)
    assert len(app.calls) == 6


async def test_a_pause_of_a_served_name_drains_requests_without_a_model(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    engine = FakeEngine()

    async def app(scope: Any, receive: Any, send: Any) -> None:  # reaches the engine, runs
        model = json.loads((await receive())["body"]).get("model")
        base = dict(scope["headers"])[b"x-request-id"].decode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        # vLLM: a LoRA's request carries its lora_name, the base model's None
        st = engine.add(f"cmpl-{base}-0", model if model == "lora-a" else None)
        await st.done.wait()
        await send({"type": "http.response.body", "body": b"aborted"})

    vllm_app = SimpleNamespace(state=SimpleNamespace(engine_client=engine))
    mw = await gate_factory(app, base_model_names=["tiny", "/m/tiny"])
    await asyncio.sleep(0.3)  # registered
    no_model = asyncio.create_task(
        mw(http_scope(app=vllm_app), Receiver(body_message(req(None))), Recorder())
    )
    by_path = asyncio.create_task(
        mw(http_scope(app=vllm_app), Receiver(body_message(req("/m/tiny"))), Recorder())
    )
    lora = asyncio.create_task(
        mw(http_scope(app=vllm_app), Receiver(body_message(req("lora-a"))), Recorder())
    )
    await asyncio.sleep(0.2)
    assert len(engine.output_processor.request_states) == 3
    await client.pause("tiny", drain=True, timeout=5)
    assert no_model.done() and by_path.done() and not lora.done()
    assert len(engine.aborted) == 2
    for st in list(engine.output_processor.request_states.values()):
        st.done.set()
    await finish(lora)


async def test_an_unreadable_body_in_flight_is_drained_by_any_pause(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    gate_open = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await gate_open.wait()
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"bad"})

    mw = await gate_factory(app)
    await asyncio.sleep(0.3)
    task = asyncio.create_task(mw(http_scope(), Receiver(body_message(b"{not json")), Recorder()))
    await asyncio.sleep(0.1)
    assert len(mw.runtime.in_flight("lora-q")) == 1
    pause = asyncio.create_task(client.pause("lora-q", drain=True, timeout=5))
    await asyncio.sleep(0.3)
    assert not pause.done()  # the drain waits for it: it could have been of lora-q
    gate_open.set()
    await asyncio.wait_for(pause, 5)
    await finish(task)


# -- websockets ----------------------------------------------------------------------------------
def ws_scope(path: str = "/v1/realtime", http_response: bool = True) -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "scheme": "ws",
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "extensions": {"websocket.http.response": {}} if http_response else {},
        "app": SimpleNamespace(state=SimpleNamespace()),
    }


class RealtimeApp:
    """Accepts, then forwards every text frame it gets to ``seen``; ends on disconnect."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.disconnect: dict[str, Any] | None = None
        self.accepted = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        self.accepted.set()
        while True:
            m = await receive()
            if m["type"] == "websocket.disconnect":
                self.disconnect = m
                return
            self.seen.append(m["text"])


def frame(event: dict[str, Any]) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": json.dumps(event)}


@pytest.mark.parametrize("http_response", [True, False])
async def test_websocket_connect_is_refused_while_anything_is_paused(
    gate_factory: Any, client: AsyncPauseClient, http_response: bool
) -> None:
    app = RealtimeApp()
    mw = await gate_factory(app)
    await seen(mw, await client.pause("lora-a"))
    send = Recorder()
    await asyncio.wait_for(
        mw(ws_scope(http_response=http_response), Receiver({"type": "websocket.connect"}), send), 5
    )
    assert not app.accepted.is_set()
    if http_response:
        assert send.messages[0]["type"] == "websocket.http.response.start"
        assert send.messages[0]["status"] == 503
        assert json.loads(send.messages[1]["body"])["error"]["code"] == "adapter_paused"
    else:
        assert send.messages == [
            {"type": "websocket.close", "code": 1013, "reason": send.messages[0]["reason"]}
        ]


async def test_open_websocket_is_closed_1013_when_its_model_is_paused(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    app = RealtimeApp()
    mw = await gate_factory(app)
    receive, send = Receiver({"type": "websocket.connect"}), Recorder()
    task = asyncio.create_task(mw(ws_scope(), receive, send))
    await asyncio.wait_for(app.accepted.wait(), 5)
    receive.push(frame({"type": "session.update", "model": "lora-a"}))
    receive.push(frame({"type": "input_audio_buffer.commit"}))
    await asyncio.sleep(0.1)
    assert len(app.seen) == 2 and len(mw.runtime.in_flight("lora-a")) == 1
    assert mw.runtime.in_flight("lora-b") == []  # its model is known now
    await client.pause("lora-b")  # another adapter: the socket stays open
    await asyncio.sleep(0.2)
    assert not task.done()
    pause = asyncio.create_task(client.pause("lora-a", drain=True, timeout=5))
    await asyncio.wait_for(task, 5)
    await asyncio.wait_for(pause, 5)  # the drain waited for the socket to be closed
    assert {"type": "websocket.close", "code": 1013, "reason": "adapter 'lora-a' is paused"} in send.messages
    assert app.disconnect == {"type": "websocket.disconnect", "code": 1013}
    assert mw.runtime.in_flight("lora-a") == []


async def test_session_update_naming_a_paused_model_closes_the_socket(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    app = RealtimeApp()
    mw = await gate_factory(app)
    receive, send = Receiver({"type": "websocket.connect"}), Recorder()
    task = asyncio.create_task(mw(ws_scope(), receive, send))
    await asyncio.wait_for(app.accepted.wait(), 5)
    receive.push(frame({"type": "session.update", "model": "lora-a"}))
    await asyncio.sleep(0.1)
    await seen(mw, await client.pause("lora-b"))
    await asyncio.sleep(0.1)
    assert not task.done()
    receive.push(frame({"type": "session.update", "model": "lora-b"}))
    await asyncio.wait_for(task, 5)
    assert len(app.seen) == 1  # the update naming lora-b never reached the app
    assert app.disconnect == {"type": "websocket.disconnect", "code": 1013}


async def test_websocket_with_no_model_yet_is_closed_by_any_pause(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    app = RealtimeApp()
    mw = await gate_factory(app)
    receive, send = Receiver({"type": "websocket.connect"}), Recorder()
    task = asyncio.create_task(mw(ws_scope(), receive, send))
    await asyncio.wait_for(app.accepted.wait(), 5)
    await client.pause("lora-x")  # could be its model: it names none yet
    await asyncio.wait_for(task, 5)
    assert app.disconnect is not None and app.seen == []
    assert send.messages[-1]["code"] == 1013


async def test_ungated_websocket_path_passes_through(gate_factory: Any, client: AsyncPauseClient) -> None:
    app = RealtimeApp()
    mw = await gate_factory(app, gate_extra_ungated_paths=["/ws/echo"])
    await seen(mw, await client.pause("*"))
    receive, send = Receiver({"type": "websocket.connect"}), Recorder()
    task = asyncio.create_task(mw(ws_scope("/ws/echo"), receive, send))
    await asyncio.wait_for(app.accepted.wait(), 5)
    receive.push({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(task, 5)


async def test_routes_endpoint(gate_factory: Any) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def h(*_: Any) -> None:
        raise AssertionError

    star = Starlette(routes=[Route("/v1/messages", h, methods=["POST"])])
    mw = await gate_factory(EchoApp(), base_model_names=["tiny"])
    send = Recorder()
    await mw(http_scope("/pausesvc/routes", "GET", app=star), Receiver(), send)
    data = send.json()
    assert send.status == 200
    assert data["routes"] == [{"method": "POST", "path": "/v1/messages", "gated": True}]
    assert "/tokenize" in data["ungated_paths"] and data["base_model"] == "tiny"
