"""Held requests: many wake together, one waiter task per adapter, nothing read is lost."""

from __future__ import annotations

import asyncio
from typing import Any

from pausesvc import AsyncPauseClient
from tests.plugin.conftest import EchoApp, Receiver, Recorder, body_message, http_scope
from tests.plugin.test_gate import req, seen


async def test_many_held_requests_wake_together(gate_factory: Any, client: AsyncPauseClient) -> None:
    app = EchoApp()
    # above the default per-adapter cap (256): an operator who expects this many raises it
    mw = await gate_factory(app, gate_max_held_requests_per_adapter=500)
    grant = await client.pause("lora-a")
    await seen(mw, grant)
    sends = [Recorder() for _ in range(500)]
    tasks = [asyncio.create_task(mw(http_scope(), Receiver(body_message(req("lora-a"))), s)) for s in sends]
    await asyncio.sleep(0.2)
    assert not app.calls and mw.runtime.stats.held["lora-a"] == 500
    # one task waits for the resume on behalf of every request held for lora-a
    assert list(mw.runtime._releasers) == ["lora-a"]
    await client.resume("lora-a")
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(app.calls) == 500 and all(s.status == 200 for s in sends)
    assert not mw.runtime._releasers and not mw.runtime._held
    assert not mw.runtime.stats.held


async def test_a_message_read_while_held_reaches_the_app(gate_factory: Any, client: AsyncPauseClient) -> None:
    """The receive() the hold started to see a disconnect is handed to the app, not dropped:
    a client that leaves after the release is seen leaving by the app."""
    got: list[Any] = []
    started = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        started.set()
        got.append(await receive())  # like vLLM's disconnect listener

    mw = await gate_factory(app)
    await seen(mw, await client.pause("lora-a"))
    receive, send = Receiver(body_message(req("lora-a"))), Recorder()
    task = asyncio.create_task(mw(http_scope(), receive, send))
    await asyncio.sleep(0.1)
    assert receive.calls == 2  # the body, then the hold's receive() watching for a disconnect
    await seen(mw, await client.resume("lora-a"))
    await asyncio.wait_for(started.wait(), 5)
    receive.disconnect()
    await asyncio.wait_for(task, 5)
    assert got == [{"type": "http.disconnect"}]
    assert receive.calls == 2  # the app got the hold's pending receive(), no second call
