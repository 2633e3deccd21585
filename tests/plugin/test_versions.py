"""Weight versions in the gate (issue 10), against a fake engine at the seam the gate uses
(``engine_client.add_lora/remove_lora/reset_prefix_cache``, ``openai_serving_models``) and a
real Redis: parked until loaded, in-flight aborted first, a fresh LoRA id and path string per
load, failures held and reported, the version header, direct loads of managed adapters refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from pausesvc_vllm import PauseGateMiddleware

from pausesvc import AsyncPauseClient
from tests.plugin.conftest import Receiver, Recorder, body_message, http_scope
from tests.plugin.test_gate import FakeEngine, req

HEADER = "x-pausesvc-adapter-version"


class LoRARequest:
    def __init__(self, **kw: Any) -> None:
        self.base_model_name: str | None = None
        self.__dict__.update(kw)


@pytest.fixture(autouse=True)
def fake_vllm_lora(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = ModuleType("vllm.lora.request")
    mod.LoRARequest = LoRARequest  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.lora.request", mod)


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self, k: int) -> int:
        self.n += k
        return self.n


class LoraEngine(FakeEngine):
    """A FakeEngine that loads adapters: ``gate`` lets a test hold a load; ``fail`` paths fail."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[LoRARequest] = []
        self.removed: list[int] = []
        self.resets = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: set[str] = set()

    async def add_lora(self, request: LoRARequest) -> bool:
        await self.gate.wait()
        if _real(request.lora_path) in self.fail or request.lora_path in self.fail:
            raise ValueError(
                f"Loading lora {request.lora_name} failed: No adapter found for {request.lora_path}"
            )
        self.added.append(request)
        return True

    async def remove_lora(self, lora_id: int) -> bool:
        self.removed.append(lora_id)
        return True

    async def reset_prefix_cache(self) -> bool:
        self.resets += 1
        return True


class ServingApp:
    """Answers like vLLM's completions route, naming the LoRA id it served with."""

    def __init__(self, engine: LoraEngine) -> None:
        self.engine = engine
        self.models = SimpleNamespace(
            lora_requests={},
            lora_id_counter=Counter(),
            lora_resolver_lock=defaultdict(asyncio.Lock),
            is_base_model=lambda name: name == "tiny",
        )
        self.app = SimpleNamespace(
            state=SimpleNamespace(engine_client=engine, openai_serving_models=self.models)
        )
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        data = json.loads((await receive())["body"])
        self.calls.append(data)
        lora = self.models.lora_requests.get(data.get("model"))
        body = json.dumps({"lora_int_id": None if lora is None else lora.lora_int_id}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def _start(mw: PauseGateMiddleware, app: ServingApp, model: str) -> tuple[asyncio.Task[None], Recorder]:
    send = Recorder()
    task = asyncio.create_task(mw(http_scope(app=app.app), Receiver(body_message(req(model))), send))
    return task, send


async def _versions_of(client: AsyncPauseClient, name: str) -> list[dict[str, Any]]:
    return [(r.get("versions") or {}).get(name, {}) for r in await client.replicas()]


def _real(path: str) -> str:
    return os.path.realpath(path)


async def _until(pred: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await pred():  # noqa: ASYNC110 - polling Redis and the gate's state
            await asyncio.sleep(0.02)


async def _started(gate_factory: Any, app: ServingApp) -> PauseGateMiddleware:
    mw: PauseGateMiddleware = await gate_factory(app)
    mw.runtime.app = app.app  # what the lifespan startup binds in a real server
    await mw.runtime.start()
    assert mw.runtime.watcher is not None
    await mw.runtime.watcher.wait_synced(5)
    return mw


async def test_parked_until_loaded_then_served_with_the_header(
    gate_factory: Any, client: AsyncPauseClient, tmp_path: Path
) -> None:
    engine = LoraEngine()
    app = ServingApp(engine)
    mw = await _started(gate_factory, app)
    (tmp_path / "v1").mkdir()
    engine.gate.clear()  # the load takes until the test lets it finish
    await client.set_version("lora-t", "v1", str(tmp_path / "v1"))
    await _until(lambda: _true(mw.runtime.versions.blocks("lora-t")))
    task, send = _start(mw, app, "lora-t")
    other, other_send = _start(mw, app, "lora-b")
    await asyncio.wait_for(other, 5)  # other adapters do not notice
    assert other_send.status == 200 and HEADER not in other_send.headers
    await asyncio.sleep(0.2)
    assert not task.done() and app.calls[-1]["model"] == "lora-b", "served before its version was loaded"
    engine.gate.set()
    await asyncio.wait_for(task, 5)
    assert send.status == 200 and send.headers[HEADER] == "v1"
    loaded = engine.added[-1]
    assert send.json() == {"lora_int_id": loaded.lora_int_id}
    # a path string no earlier load used (a fresh link to the weights), not the directory itself
    assert loaded.lora_path != str(tmp_path / "v1")
    assert _real(loaded.lora_path) == _real(str(tmp_path / "v1"))
    await _until(lambda: _has(client, "lora-t", "v1", "loaded"))


async def test_a_new_version_aborts_in_flight_and_loads_under_a_fresh_id_and_path(
    gate_factory: Any, client: AsyncPauseClient, tmp_path: Path
) -> None:
    engine = LoraEngine()
    app = ServingApp(engine)
    mw = await _started(gate_factory, app)
    weights = tmp_path / "w"
    weights.mkdir()
    await client.set_version("lora-t", "v1", str(weights))
    await _until(lambda: _true(mw.runtime.versions.loaded.get("lora-t") == "v1"))
    first = engine.added[-1]
    # a request in the engine when the next version is wanted: aborted before the load
    st = engine.add("cmpl-x-0", "lora-t")
    held = asyncio.create_task(_hold_in_flight(mw, st))
    await asyncio.sleep(0.05)
    await client.set_version("lora-t", "v2", str(weights))  # same directory, new weights in it
    await _until(lambda: _true(mw.runtime.versions.loaded.get("lora-t") == "v2"))
    assert "cmpl-x-0" in engine.aborted
    second = engine.added[-1]
    assert second.lora_int_id != first.lora_int_id and second.lora_path != first.lora_path
    assert first.lora_int_id in engine.removed
    assert engine.resets == 0  # a fresh path string: no prefix-cache block can match
    held.cancel()


async def _hold_in_flight(mw: PauseGateMiddleware, st: Any) -> None:
    """Count one admitted request of lora-t until the engine aborts it."""
    from pausesvc_vllm._adapters import Target

    rt = mw.runtime
    adm = rt.admit(
        Target(mw.base_names, body=req("lora-t"), content_type=b"application/json", header=None), "x"
    )
    try:
        await st.done.wait()
    finally:
        rt.finish(adm)


async def test_a_path_that_is_not_a_directory_resets_the_prefix_cache_when_reused(
    gate_factory: Any, client: AsyncPauseClient
) -> None:
    engine = LoraEngine()
    app = ServingApp(engine)
    mw = await _started(gate_factory, app)
    await client.set_version("lora-t", "v1", "org/repo")
    await _until(lambda: _true(mw.runtime.versions.loaded.get("lora-t") == "v1"))
    assert engine.resets == 0 and engine.added[-1].lora_path == "org/repo"
    await client.set_version("lora-t", "v2", "org/repo")
    await _until(lambda: _true(mw.runtime.versions.loaded.get("lora-t") == "v2"))
    assert engine.resets == 1


async def test_a_failed_load_keeps_the_adapter_held_and_is_reported(
    gate_factory: Any, client: AsyncPauseClient, tmp_path: Path
) -> None:
    engine = LoraEngine()
    app = ServingApp(engine)
    mw = await _started(gate_factory, app)
    engine.fail.add("/nonexistent/v9")
    await client.set_version("lora-t", "v9", "/nonexistent/v9")
    await _until(lambda: _has(client, "lora-t", "v9", "failed"))
    rec = (await _versions_of(client, "lora-t"))[0]
    assert "No adapter found" in rec["reason"] and rec["attempts"] >= 1, rec
    task, send = _start(mw, app, "lora-t")
    await asyncio.sleep(0.3)
    assert not task.done(), "served with weights other than its desired version"
    st = mw.runtime.status()["versions"]
    assert st["pending"] == {"lora-t": "v9"} and st["errors"]["lora-t"]["attempts"] >= 1
    (tmp_path / "ok").mkdir()
    await client.set_version("lora-t", "v10", str(tmp_path / "ok"))
    await asyncio.wait_for(task, 5)
    assert send.status == 200 and send.headers[HEADER] == "v10"


async def test_a_replica_starting_loads_desired_versions_before_it_admits(
    gate_factory: Any, client: AsyncPauseClient, tmp_path: Path
) -> None:
    (tmp_path / "v3").mkdir()
    await client.set_version("lora-t", "v3", str(tmp_path / "v3"))
    engine = LoraEngine()
    engine.gate.clear()
    app = ServingApp(engine)
    app.models.lora_requests["lora-t"] = LoRARequest(lora_name="lora-t", lora_int_id=99, lora_path="/startup")
    mw: PauseGateMiddleware = await gate_factory(app)
    task, send = _start(mw, app, "lora-t")  # the first request starts the gate
    await asyncio.sleep(0.3)
    assert not task.done(), "served lora-t from its startup path before loading its desired version"
    engine.gate.set()
    await asyncio.wait_for(task, 5)
    assert send.headers[HEADER] == "v3" and send.json()["lora_int_id"] != 99
    assert 99 in engine.removed


async def test_direct_loads(gate_factory: Any, client: AsyncPauseClient, tmp_path: Path) -> None:
    engine = LoraEngine()
    app = ServingApp(engine)
    mw = await _started(gate_factory, app)

    async def load(body: dict[str, Any]) -> Recorder:
        send = Recorder()
        scope = http_scope("/v1/load_lora_adapter", app=app.app)
        await asyncio.wait_for(mw(scope, Receiver(body_message(json.dumps(body).encode())), send), 5)
        return send

    # not managed: vLLM's own route gets it, unchanged, and a named version is recorded
    r = await load({"lora_name": "lora-x", "lora_path": "/p", "version": "old-style-1"})
    assert r.status == 200 and app.calls[-1]["lora_name"] == "lora-x"
    assert mw.runtime.versions.loaded["lora-x"] == "old-style-1"
    # managed: refused, naming the desired version
    (tmp_path / "v1").mkdir()
    await client.set_version("lora-t", "v1", str(tmp_path / "v1"))
    await _until(lambda: _true(mw.runtime.versions.loaded.get("lora-t") == "v1"))
    calls = len(app.calls)
    r = await load({"lora_name": "lora-t", "lora_path": "/elsewhere", "load_inplace": True})
    assert r.status == 409 and r.json()["error"]["code"] == "version_managed" and len(app.calls) == calls
    assert r.json()["error"]["desired"] == "v1"
    r = await load({"lora_name": "lora-t", "lora_path": str(tmp_path / "v1"), "version": "v1"})
    assert r.status == 200 and len(app.calls) == calls


async def test_sagemaker_register_is_a_direct_load(
    gate_factory: Any, client: AsyncPauseClient, tmp_path: Path
) -> None:
    """SageMaker's ``POST /adapters`` loads weights as ``/v1/load_lora_adapter`` does (the name
    in the body, or in the query when the body is not JSON): refused for a managed adapter."""
    engine = LoraEngine()
    app = ServingApp(engine)
    mw = await _started(gate_factory, app)
    (tmp_path / "v1").mkdir()
    await client.set_version("lora-t", "v1", str(tmp_path / "v1"))
    await _until(lambda: _true(mw.runtime.versions.loaded.get("lora-t") == "v1"))
    calls = len(app.calls)
    for body, query in ((b'{"name": "lora-t", "src": "/elsewhere"}', b""), (b"", b"name=lora-t&src=/x")):
        send = Recorder()
        scope = {**http_scope("//adapters/", app=app.app), "query_string": query}
        await asyncio.wait_for(mw(scope, Receiver(body_message(body)), send), 5)
        assert send.status == 409 and send.json()["error"]["code"] == "version_managed", (body, query)
    assert len(app.calls) == calls


async def test_an_unload_of_a_managed_adapter_is_refused(
    gate_factory: Any, client: AsyncPauseClient, tmp_path: Path
) -> None:
    """Unloading an adapter with a desired version would stop this replica serving it while it
    still reports it loaded - or, with a LoRA resolver, let vLLM load whatever weights it finds
    under the name (old ones) on the next request: 409 ``version_managed`` on vLLM's route and
    SageMaker's ``DELETE /adapters/{name}``; an unmanaged adapter's unload goes to vLLM."""
    engine = LoraEngine()
    app = ServingApp(engine)
    mw = await _started(gate_factory, app)
    (tmp_path / "v1").mkdir()
    await client.set_version("lora-t", "v1", str(tmp_path / "v1"))
    await _until(lambda: _true(mw.runtime.versions.loaded.get("lora-t") == "v1"))
    calls = len(app.calls)
    for scope, body in (
        (http_scope("/v1/unload_lora_adapter", app=app.app), b'{"lora_name": "lora-t"}'),
        (http_scope("/adapters/lora-t", method="DELETE", app=app.app), b""),
    ):
        send = Recorder()
        await asyncio.wait_for(mw(scope, Receiver(body_message(body)), send), 5)
        assert send.status == 409 and send.json()["error"]["code"] == "version_managed", scope["path"]
    assert len(app.calls) == calls and mw.runtime.versions.loaded["lora-t"] == "v1"
    mw.runtime.versions.note_direct_load("lora-x", "old-1")
    send = Recorder()
    scope = http_scope("/v1/unload_lora_adapter", app=app.app)
    await asyncio.wait_for(mw(scope, Receiver(body_message(b'{"lora_name": "lora-x"}')), send), 5)
    assert len(app.calls) == calls + 1 and "lora-x" not in mw.runtime.versions.loaded


async def _true(value: bool) -> bool:
    return value


async def _has(client: AsyncPauseClient, name: str, version: str, status: str) -> bool:
    return any(
        r.get("version") == version and r.get("status") == status for r in await _versions_of(client, name)
    )


async def test_a_desired_version_of_the_base_model_parks_nothing(
    gate_factory: Any, client: AsyncPauseClient, tmp_path: Path
) -> None:
    engine = LoraEngine()
    app = ServingApp(engine)
    mw = await _started(gate_factory, app)
    (tmp_path / "b").mkdir()
    await client.set_version("tiny", "v1", str(tmp_path / "b"))
    await _until(lambda: _has(client, "tiny", "v1", "failed"))
    assert not mw.runtime.versions.blocks("tiny") and not engine.added
    task, send = _start(mw, app, "tiny")
    await asyncio.wait_for(task, 5)
    assert send.status == 200


@pytest.mark.parametrize(
    ("body", "ctype", "named"),
    [
        (b'{"model": "lora-a", "prompt": "x"}', b"application/json", True),
        (b'{"model": "lora-b", "prompt": "lora-a is mentioned\\n"}', b"application/json", True),
        (b'{"model": "lora-b", "prompt": "x"}', b"application/json", False),
        (b'{"model": "lora-b", "prompt": "a\\nb\\tc"}', b"application/json", False),
        (b'{"model": "lora\\u002da"}', b"application/json", True),  # an escape: parsed
        (b'{"model": "lora\\/a"}', b"application/json", True),
        (b"model=lora%2Da", b"application/x-www-form-urlencoded", True),
        ('{"model": "lora-a"}'.encode("utf-16"), None, True),
        (b'{"prompt": "x"}', b"application/json", False),  # the base model, not loaded
    ],
)
def test_version_prescan_never_misses_a_loaded_adapter(body: bytes, ctype: bytes | None, named: bool) -> None:
    """``Target.may_name`` (the version header's pre-scan of the raw body) is False only when
    parsing the body would not name a loaded adapter; the target stays unparsed then."""
    from pausesvc_vllm._adapters import BaseNames, Target

    base = BaseNames(["base-model"])
    loaded = {"lora-a": "v1"}
    t = Target(base, body=body, content_type=ctype, lazy=True)
    assert t.may_name(loaded) is named
    # it may say "maybe" for a body that names none, never "no" for one that names one
    assert not (Target(base, body=body, content_type=ctype).display in loaded and not named)
    assert Target(base, body=b'{"model": "base-model"}', lazy=True).may_name({"base-model": "v1"})
