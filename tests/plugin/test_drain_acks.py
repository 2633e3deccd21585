"""Acknowledgements: only for pauses that ask for a drain; bounded; nothing left at shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aredis
from pausesvc_vllm import PauseGateMiddleware

from pausesvc import AsyncPauseClient, Settings
from tests.plugin.test_gate import EngineApp, FakeEngine, _start, call, seen


async def test_plain_pause_aborts_but_writes_no_ack(gate_factory: Any, client: AsyncPauseClient) -> None:
    engine = FakeEngine()
    app = EngineApp(engine)
    mw = await gate_factory(app)
    await asyncio.sleep(0.3)  # registered
    running = await _start(mw, app, "lora-a")
    await asyncio.sleep(0.1)
    grant = await client.pause("lora-a")  # no drain asked: abort, but no write to Redis
    await seen(mw, grant)
    await asyncio.wait_for(running, 5)
    assert len(engine.aborted) == 1
    for _ in range(20):
        if mw.runtime.drain_results().get("lora-a"):
            break
        await asyncio.sleep(0.05)
    assert mw.runtime.drain_results()["lora-a"]["revision"] == grant.revision
    assert "lora-a" not in (await client.replicas())[0]["drains"]
    # the same pause, now with a drain request by another holder: acknowledged
    await client.pause("lora-a", holder="other", drain=True, timeout=5)
    assert "lora-a" in (await client.replicas())[0]["drains"]


async def test_skyrl_abort_is_acknowledged(gate_factory: Any, client: AsyncPauseClient) -> None:
    engine = FakeEngine()
    app = EngineApp(engine)
    mw = await gate_factory(app)
    await asyncio.sleep(0.3)
    send = await call(mw, "/skyrl/v1/abort_lora_requests", b'{"lora_name": "lora-a"}', app=app.app)
    assert send.status == 200
    state = await client.get("lora-a")
    assert state is not None and state.drain_requested
    assert (await client.replicas())[0]["drains"]["lora-a"]["rev"] >= state.revision


async def _connections(redis_url: str) -> int:
    r = aredis.Redis.from_url(redis_url)
    try:
        return int((await r.info("clients"))["connected_clients"])
    finally:
        await r.aclose()


async def test_start_with_many_drain_requests_is_bounded_and_closes(
    settings: Settings, client: AsyncPauseClient, redis_url: str
) -> None:
    """A process that starts while 300 adapters wait for acks: a few connections, all acked,
    and shutdown leaves no task of ours behind."""
    names = [f"lora-{i}" for i in range(300)]
    for n in names:  # no replica is registered yet: returns at once
        await client.pause(n, drain=True, timeout=1)
    before = await _connections(redis_url)
    mw = PauseGateMiddleware(EngineApp(FakeEngine()), settings=settings)
    await mw.runtime.start()
    peak = 0
    try:
        for _ in range(200):
            peak = max(peak, await _connections(redis_url) - before)
            if len(mw.runtime.drain_results()) == len(names):
                break
            await asyncio.sleep(0.02)
        assert len(mw.runtime.drain_results()) == len(names)
        assert peak <= 10
        drains = (await client.replicas())[0]["drains"]
        assert set(names) <= set(drains)
    finally:
        tasks_before = {t for t in asyncio.all_tasks() if t.get_name().startswith("pausesvc-")}
        await asyncio.wait_for(mw.runtime.aclose(), 10)
    assert all(t.done() for t in tasks_before if "watcher" not in t.get_name())
    assert not mw.runtime._tasks
