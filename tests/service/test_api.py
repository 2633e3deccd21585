"""The /v1 endpoints against a real uvicorn server and a real redis-server."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx
import pytest

from pausesvc import PauseClient
from pausesvc.service._logging import JsonFormatter

from .conftest import Live


def enc(name: str) -> str:
    return quote(name, safe="")


@pytest.mark.parametrize("name", ["lora-a", "org/lora", "50%off", "lora?x#y", "été/🦙", "*"])
def test_pause_read_resume_roundtrip(http: httpx.Client, name: str) -> None:
    r = http.post(f"/v1/pauses/{enc(name)}", json={"holder": "trainer", "reason": "swap"})
    assert r.status_code == 200, r.text
    grant = r.json()
    assert grant["name"] == name and grant["holder"] == "trainer" and grant["created"] is True
    assert grant["token"].split("-")[0] == str(grant["revision"])  # opaque: '<rev>-<nonce>'
    assert grant["state"]["reason"] == "swap"

    listing = http.get("/v1/pauses").json()
    assert list(listing["paused"]) == [name]
    assert listing["revision"] == grant["revision"]
    one = http.get(f"/v1/pauses/{enc(name)}").json()
    assert one["paused"] is True and one["state"]["holders"]["trainer"]["token"] == grant["token"]

    r = http.delete(f"/v1/pauses/{enc(name)}", params={"holder": "trainer", "token": grant["token"]})
    assert r.status_code == 200, r.text
    assert r.json()["released"] is True and r.json()["paused"] is False
    assert http.get("/v1/pauses").json()["paused"] == {}
    assert http.get(f"/v1/pauses/{enc(name)}").json()["paused"] is False


def test_empty_body_and_defaults(http: httpx.Client) -> None:
    r = http.post("/v1/pauses/a")  # no body at all
    assert r.status_code == 200 and r.json()["holder"] == "default"
    again = http.post("/v1/pauses/a", json={})
    assert again.json()["created"] is False and again.json()["token"] == r.json()["token"]
    assert http.delete("/v1/pauses/a").json()["released"] is True


def test_unencoded_slashes_address_the_same_adapter(http: httpx.Client) -> None:
    http.post("/v1/pauses/org%2Flora")
    assert http.get("/v1/pauses/org/lora").json()["paused"] is True
    assert http.get("/v1/pauses/org/lora/wait", params={"timeout_s": 0}).json()["paused"] is True
    # a name whose last segment is "wait" must be encoded; unencoded it is the sub-resource
    r = http.delete("/v1/pauses/org/wait")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert http.post("/v1/pauses/org%2Fwait").json()["name"] == "org/wait"
    assert sorted(http.get("/v1/pauses").json()["paused"]) == ["org/lora", "org/wait"]


def test_holders_and_fencing(http: httpx.Client) -> None:
    a = http.post("/v1/pauses/x", json={"holder": "a"}).json()
    b = http.post("/v1/pauses/x", json={"holder": "b"}).json()
    assert b["state"]["holders"].keys() == {"a", "b"}

    # the same revision, another nonce: a token of another incarnation (a restart, a failover)
    forged = a["token"].split("-")[0] + "-000000000000"
    stale = http.delete("/v1/pauses/x", params={"holder": "a", "token": forged})
    assert stale.status_code == 409
    assert stale.json() | {"detail": ""} == {
        "detail": "",
        "error": "stale_token",
        "field": "token",
        "presented": forged,
        "current": a["token"],
    }
    not_holder = http.delete("/v1/pauses/x", params={"holder": "c"})
    assert not_holder.status_code == 409 and not_holder.json()["error"] == "not_holder"
    assert not_holder.json()["holders"] == ["a", "b"]

    r = http.delete("/v1/pauses/x", params={"holder": "a", "token": a["token"]}).json()
    assert r["released"] is True and r["paused"] is True  # b still holds it
    assert http.get("/v1/pauses/x").json()["paused"] is True
    forced = http.delete("/v1/pauses/x", params={"force": "true"}).json()
    assert forced["released"] is True and forced["paused"] is False


def test_renew_extends_the_lease(http: httpx.Client) -> None:
    g = http.post("/v1/pauses/x", json={"holder": "t", "ttl_s": 2}).json()
    before = g["state"]["expires_at"]
    r = http.post("/v1/pauses/x/renew", json={"holder": "t", "ttl_s": 60, "token": g["token"]})
    assert r.status_code == 200, r.text
    assert r.json()["expires_at"] > before + 50
    r = http.post("/v1/pauses/x/renew", json={"holder": "t", "ttl_s": 60, "token": 999999})
    assert r.status_code == 409 and r.json()["error"] == "stale_token"
    r = http.post("/v1/pauses/x/renew", json={"holder": "nobody", "ttl_s": 60})
    assert r.status_code == 409 and r.json()["error"] == "not_holder"


def test_wait_long_poll(live: Live, http: httpx.Client) -> None:
    assert http.get("/v1/pauses/x/wait").json()["paused"] is False  # never paused: at once
    g = http.post("/v1/pauses/x").json()
    t0 = time.monotonic()
    r = http.get("/v1/pauses/x/wait", params={"timeout_s": 0.3}).json()
    assert r["paused"] is True and 0.25 < time.monotonic() - t0 < 3

    result: dict[str, object] = {}

    def waiter() -> None:
        with live.client() as c:
            result.update(c.get("/v1/pauses/x/wait", params={"timeout_s": 20}).json())
            result["at"] = time.monotonic()

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.3)
    live.cli("resume", "x", "--token", str(g["token"]))
    resumed_at = time.monotonic()
    th.join(10)
    assert result["paused"] is False
    assert float(result["at"]) - resumed_at < 2.0  # type: ignore[arg-type]


def test_wait_never_misses_a_pause_that_returned(live: Live, http: httpx.Client) -> None:
    """A pause made by ANOTHER process that returned before the wait starts is always seen."""
    with PauseClient(live.redis_url, namespace=live.namespace) as c:
        for i in range(25):
            c.pause(f"a{i}")
            assert http.get(f"/v1/pauses/a{i}/wait", params={"timeout_s": 0}).json()["paused"]


def test_global_pause_covers_every_adapter(http: httpx.Client) -> None:
    http.post("/v1/pauses/*", json={"holder": "ops"})
    assert http.get("/v1/pauses/anything/wait", params={"timeout_s": 0.1}).json()["paused"]
    one = http.get("/v1/pauses/anything").json()
    assert one["paused"] is False and one["paused_by_global"] is True
    http.delete("/v1/pauses/*", params={"holder": "ops"})
    assert http.get("/v1/pauses/anything/wait", params={"timeout_s": 5}).json()["paused"] is False


def test_expired_lease_wakes_the_long_poll(http: httpx.Client) -> None:
    http.post("/v1/pauses/x", json={"ttl_s": 0.5})
    t0 = time.monotonic()
    r = http.get("/v1/pauses/x/wait", params={"timeout_s": 10}).json()
    assert r["paused"] is False and 0.3 < time.monotonic() - t0 < 3
    assert http.get("/v1/pauses").json()["paused"] == {}


def test_health_ready_and_replicas(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["in_sync"] is True
    assert http.get("/v1/replicas").json() == {"replicas": [], "live": 0}


def test_redis_unreachable_is_503(make_live: Callable[..., Live]) -> None:
    from pausesvc import Settings
    from pausesvc.devtools.embedded import free_port

    from .conftest import run_server

    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", namespace="gone")
    with run_server(settings, wait_ready=False) as url, httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
        for r in (
            c.get("/v1/pauses"),
            c.post("/v1/pauses/a"),
            c.delete("/v1/pauses/a"),
            c.get("/v1/replicas"),
            c.get("/v1/events"),
        ):
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "redis_unavailable" and r.headers["retry-after"] == "1"
        # the long-poll fails closed: unknown state counts as paused, 200 with paused=true
        w = c.get("/v1/pauses/a/wait", params={"timeout_s": 0.2})
        assert w.status_code == 200 and w.json()["paused"] is True


def test_metrics(http: httpx.Client) -> None:
    http.post("/v1/pauses/m1")
    http.post("/v1/pauses/m2", json={"ttl_s": "x"})
    deadline = time.monotonic() + 5
    while "pausesvc_paused_adapters 1.0" not in (text := http.get("/metrics").text):
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert 'pausesvc_adapter_paused{adapter="m1"} 1.0' in text
    assert (
        'pausesvc_http_requests_total{method="POST",route="/v1/pauses/{name:path}",status="422"} 1.0'
    ) in text
    for metric in (
        "pausesvc_watcher_in_sync 1.0",
        "pausesvc_watcher_resyncs_total",
        "pausesvc_watcher_reconnects_total",
        "pausesvc_watcher_staleness_seconds",
        "pausesvc_watcher_event_lag_seconds",
        'pausesvc_state_changes_total{op="pause"}',
    ):
        assert metric in text


def test_one_structured_log_line_per_change(http: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pausesvc.service")
    g = http.post("/v1/pauses/logged", json={"holder": "h1"}).json()
    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if getattr(r, "event", None) == "change"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    rec = next(r for r in caplog.records if getattr(r, "event", None) == "change")
    line = json.loads(JsonFormatter().format(rec))
    assert line["adapter"] == "logged" and line["holder"] == "h1"
    assert line["revision"] == g["revision"] and line["op"] == "pause"


def test_what_redis_lost_but_the_fleet_holds_is_listed(live: Live, http: httpx.Client) -> None:
    """After a data loss the pause is gone from Redis while processes hold it (orphans):
    ``GET /v1/pauses`` and ``pausesvc status`` name it and who holds it - the operator must
    see what ``resume --force`` would release."""
    import asyncio

    import redis as redis_py

    from pausesvc import AsyncPauseClient

    assert http.post("/v1/pauses/lora-a").status_code == 200
    assert http.get("/v1/pauses/lora-a/wait", params={"timeout_s": 0}).json()["paused"] is True
    raw = redis_py.Redis.from_url(live.redis_url)
    for key in raw.keys(f"pausesvc:{{{live.namespace}}}:*"):
        raw.delete(key)  # the namespace's data is gone
    raw.close()

    async def replica_reports_its_orphan() -> None:
        async with AsyncPauseClient(live.redis_url, namespace=live.namespace) as c:
            await c._heartbeat("vllm-0:1:abc", {"url": "-", "orphans": "lora-a"})

    asyncio.run(replica_reports_its_orphan())
    assert http.post("/v1/pauses/other").status_code == 200  # the service's view learns the loss
    deadline = time.monotonic() + 10
    while http.get("/v1/pauses").json()["orphaned"].get("lora-a") != ["service", "vllm-0:1:abc"]:
        assert time.monotonic() < deadline, http.get("/v1/pauses").json()
        time.sleep(0.05)
    one = http.get("/v1/pauses/lora-a").json()
    assert one["paused"] is False and one["orphaned"] == ["service", "vllm-0:1:abc"]
    out = live.cli("status").stdout
    assert "lora-a  HELD AS AN ORPHAN by 1 live replica(s)" in out and "--force" in out, out
    assert json.loads(live.cli("status", "lora-a", "--json").stdout)["orphaned"] == ["vllm-0:1:abc"]
