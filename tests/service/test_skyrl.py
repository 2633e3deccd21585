"""SkyRL's endpoints and drains with replica processes registered in the real registry."""

from __future__ import annotations

import asyncio
import time

import httpx

from ._replica import FakeReplica
from .conftest import Live


async def test_drained_pause_collects_aborted_ids_across_the_fleet(live: Live) -> None:
    async with (
        FakeReplica(live.redis_url, live.namespace, "r1", aborted={"A": ["req-1", "req-2"]}),
        FakeReplica(live.redis_url, live.namespace, "r2", aborted={"A": ["req-3"]}),
        httpx.AsyncClient(base_url=live.url, timeout=10) as c,
    ):
        reps = (await c.get("/v1/replicas")).json()
        assert reps["live"] == 2 and {r["id"] for r in reps["replicas"]} == {"r1", "r2"}
        assert all(r["heartbeat_age_s"] < 3 for r in reps["replicas"])

        r = await c.post("/v1/pauses/A", json={"holder": "trainer", "drain": True})
        assert r.status_code == 200, r.text
        drain = r.json()["drain"]
        assert drain["replicas"] == ["r1", "r2"]
        assert sorted(drain["aborted"]) == ["req-1", "req-2", "req-3"] and drain["count"] == 3

        reps = (await c.get("/v1/replicas")).json()["replicas"]
        assert all(rec["drains"]["A"]["tokens"] == [r.json()["token"]] for rec in reps)


async def test_skyrl_abort_resume_wait(live: Live) -> None:
    async with (
        FakeReplica(live.redis_url, live.namespace, "r1", aborted={"lora-A": ["a1"]}),
        FakeReplica(live.redis_url, live.namespace, "r2", aborted={"lora-A": ["b1", "b2"]}),
        httpx.AsyncClient(base_url=live.url, timeout=10) as c,
    ):
        r = await c.post("/skyrl/v1/abort_lora_requests", json={"lora_name": "lora-A"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ok" and body["count"] == 3
        assert sorted(body["aborted"]) == ["a1", "b1", "b2"]
        # idempotent: the hold exists, nothing new was aborted
        again = (await c.post("/skyrl/v1/abort_lora_requests", json={"lora_name": "lora-A"})).json()
        assert again == {"status": "ok", "aborted": [], "count": 0, "token": body["token"]}
        state = (await c.get("/v1/pauses/lora-A")).json()
        assert state["paused"] and list(state["state"]["holders"]) == ["skyrl"]

        w = await c.post("/skyrl/v1/wait_lora_unpaused", json={"lora_name": "lora-A", "timeout_s": 0.2})
        assert w.json() == {"paused": True}
        waiter = asyncio.create_task(
            c.post("/skyrl/v1/wait_lora_unpaused", json={"lora_name": "lora-A", "timeout_s": 20})
        )
        await asyncio.sleep(0.3)
        assert not waiter.done()
        t0 = time.monotonic()
        r = await c.post("/skyrl/v1/resume_lora_requests", json={"lora_name": "lora-A"})
        assert r.json() == {"status": "ok", "released": True, "paused": False}
        assert (await waiter).json() == {"paused": False}
        assert time.monotonic() - t0 < 3
        # idempotent resume
        r = await c.post("/skyrl/v1/resume_lora_requests", json={"lora_name": "lora-A"})
        assert r.status_code == 200 and r.json()["status"] == "ok"
        # never paused: at once
        assert (await c.post("/skyrl/v1/wait_lora_unpaused", json={"lora_name": "other"})).json() == {
            "paused": False
        }


async def test_skyrl_resume_leaves_other_holders_alone(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as c:
        await c.post("/skyrl/v1/abort_lora_requests", json={"lora_name": "L"})
        await c.post("/v1/pauses/L", json={"holder": "ops"})
        r = (await c.post("/skyrl/v1/resume_lora_requests", json={"lora_name": "L"})).json()
        assert r == {"status": "ok", "released": True, "paused": True}
        assert (await c.get("/v1/pauses/L")).json()["paused"] is True


async def test_drain_timeout_is_504_and_the_pause_stays(live: Live) -> None:
    async with (
        FakeReplica(live.redis_url, live.namespace, "silent", ack=False),
        httpx.AsyncClient(base_url=live.url, timeout=10) as c,
    ):
        r = await c.post("/v1/pauses/B", json={"drain": True, "timeout_s": 0.3})
        assert r.status_code == 504, r.text
        body = r.json()
        assert body["error"] == "drain_timeout" and body["missing"] == ["silent"]
        assert body["token"].split("-")[0].isdigit()
        assert (await c.get("/v1/pauses/B")).json()["paused"] is True
        r = await c.post("/skyrl/v1/abort_lora_requests", json={"lora_name": "C", "timeout_s": 0.3})
        assert r.status_code == 504 and r.json()["missing"] == ["silent"]


async def test_numeric_string_timeouts_are_numbers(live: Live) -> None:
    """SkyRL's server did ``float(timeout_s)``: ``"0.3"`` is 0.3 s here too."""
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as c:
        r = await c.post("/skyrl/v1/abort_lora_requests", json={"lora_name": "S", "timeout_s": "5"})
        assert r.status_code == 200, r.text
        t0 = time.monotonic()
        w = await c.post("/skyrl/v1/wait_lora_unpaused", json={"lora_name": "S", "timeout_s": "0.3"})
        assert w.status_code == 200 and w.json() == {"paused": True}
        assert time.monotonic() - t0 >= 0.25
        await c.post("/skyrl/v1/resume_lora_requests", json={"lora_name": "S"})
        w = await c.post("/skyrl/v1/wait_lora_unpaused", json={"lora_name": "S", "timeout_s": " 1e1 "})
        assert w.json() == {"paused": False}
