"""POST/GET/DELETE /v1/adapters/{name}/version and the weight-version metrics, against a real
uvicorn server, a real redis-server and replica stand-ins that load what is desired."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx
import pytest

from pausesvc import AsyncPauseClient, PauseClient, Replica

from ._version_fleet import version_fleet
from .conftest import Live


def enc(name: str) -> str:
    return quote(name, safe="")


def test_swap_200_read_and_clear(live: Live, http: httpx.Client) -> None:
    with version_fleet(live.redis_url, live.namespace, "load", "load"):
        r = http.post(
            f"/v1/adapters/{enc('org/lora')}/version",
            json={"version": "v1", "path": "/w/1", "load": {"load_inplace": True}, "timeout": 10},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == "org/lora" and body["version"] == "v1" and body["loaded"] == ["r0", "r1"]
        assert body["revision"] > 0 and body["seconds"] >= 0
        got = http.get(f"/v1/adapters/{enc('org/lora')}/version").json()
        assert got["desired"]["version"] == "v1" and got["desired"]["load"] == {"load_inplace": True}
        assert [x["id"] for x in got["replicas"]] == ["r0", "r1"] and got["mixed"] is False
        assert all(x["on_desired"] and x["loaded"]["status"] == "loaded" for x in got["replicas"])
        assert http.get("/v1/pauses").json()["versions"]["org/lora"]["version"] == "v1"
        assert http.get("/v1/pauses").json()["paused"] == {}  # the swap's pause is released
    d = http.delete(f"/v1/adapters/{enc('org/lora')}/version")
    assert d.status_code == 200 and d.json() == {"name": "org/lora", "cleared": True}
    assert http.get(f"/v1/adapters/{enc('org/lora')}/version").json()["desired"] is None
    assert http.delete(f"/v1/adapters/{enc('org/lora')}/version").json()["cleared"] is False


def test_no_barrier_answers_at_once(http: httpx.Client) -> None:
    r = http.post("/v1/adapters/a/version", json={"version": "v1", "path": "/w", "barrier": False})
    assert r.status_code == 200 and r.json()["loaded"] == []


def test_swap_timeout_is_504_naming_the_replica(live: Live, http: httpx.Client) -> None:
    with version_fleet(live.redis_url, live.namespace, "load", "silent"):
        r = http.post("/v1/adapters/a/version", json={"version": "v1", "path": "/w", "timeout_s": 1})
        assert r.status_code == 504, r.text
        body = r.json()
        assert body["error"] == "swap_timeout" and body["missing"] == {"r1": "http://r1:8000"}
        assert body["loaded"] == ["r0"] and body["version"] == "v1" and "r1" in body["detail"]
        assert http.get("/v1/pauses").json()["paused"] == {}


def test_failed_load_is_409_with_the_reason(live: Live, http: httpx.Client) -> None:
    with version_fleet(live.redis_url, live.namespace, "fail", "load"):
        r = http.post("/v1/adapters/a/version", json={"version": "v1", "path": "/bad", "timeout_s": 5})
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["error"] == "swap_failed" and "cannot read /bad" in body["failed"]["r0"]
        assert body["missing"] == {} and body["loaded"] == ["r1"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"path": "/w"}, "version"),
        ({"version": "v1"}, "path"),
        ({"version": "", "path": "/w"}, "version"),
        ({"version": "a b", "path": "/w"}, "version"),
        ({"version": "v1", "path": ""}, "path"),
        ({"version": "v1", "path": "/w\n"}, "path"),
        ({"version": "v1", "path": "/w", "load": {"lora_path": "/x"}}, "load"),
        ({"version": "v1", "path": "/w", "load": {"a": {"b": 1}}}, "load.a"),
        ({"version": "v1", "path": "/w", "load": []}, "load"),
        ({"version": "v1", "path": "/w", "barrier": "yes"}, "barrier"),
        ({"version": "v1", "path": "/w", "timeout_s": -1}, "timeout_s"),
        ({"version": "v1", "path": "/w", "typo": 1}, "typo"),
        ({"version": 1, "path": "/w"}, "version"),
    ],
)
def test_bad_input_is_4xx_naming_the_field(http: httpx.Client, body: dict[str, object], field: str) -> None:
    r = http.post("/v1/adapters/a/version", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_input"
    assert r.json()["field"].startswith(field), r.json()
    assert http.get("/v1/adapters/a/version").json()["desired"] is None


def test_bad_name_and_not_json(http: httpx.Client) -> None:
    r = http.post("/v1/adapters/a%20b/version", json={"version": "v1", "path": "/w"})
    assert r.status_code == 422 and r.json()["field"] == "name"
    r = http.post("/v1/adapters/a/version", content=b"version=v1", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_auth_like_every_mutation(make_live: Callable[..., Live]) -> None:
    live = make_live(api_token="s3cret")
    with live.client() as c:
        body = {"version": "v1", "path": "/w", "barrier": False}
        assert c.post("/v1/adapters/a/version", json=body).status_code == 401
        assert c.delete("/v1/adapters/a/version").status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert c.post("/v1/adapters/a/version", json=body, headers=bad).status_code == 403
        ok = c.post("/v1/adapters/a/version", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/v1/adapters/a/version").status_code == 200  # reads are open by default


def _metric(text: str, line: str) -> float | None:
    m = re.search(re.escape(line) + r" (\S+)", text)
    return float(m.group(1)) if m else None


def test_mixed_version_metrics(live: Live, http: httpx.Client) -> None:
    async def report(rid: str, version: str, rev: int) -> None:
        async with AsyncPauseClient(live.redis_url, namespace=live.namespace) as c:
            r = Replica(c, rid)
            await r.heartbeat({"url": f"http://{rid}"})
            await r.report_version("a", version, status="loaded", revision=rev)

    with PauseClient(live.redis_url, namespace=live.namespace) as c:
        dv = c.set_version("a", "v2", "/w2")
    asyncio.run(report("r0", "v2", dv.revision))
    asyncio.run(report("r1", "v1", 1))
    deadline = time.monotonic() + 10
    while True:
        text = http.get("/metrics").text
        if _metric(text, 'pausesvc_adapter_versions_mixed{adapter="a"}') == 1.0:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.5)
    assert _metric(text, 'pausesvc_adapter_desired_version_info{adapter="a",version="v2"}') == 1.0
    assert _metric(text, 'pausesvc_adapter_replicas_on_version{adapter="a",version="v2"}') == 1.0
    assert _metric(text, 'pausesvc_adapter_replicas_on_version{adapter="a",version="v1"}') == 1.0
    assert _metric(text, 'pausesvc_adapter_replicas_off_desired_version{adapter="a"}') == 1.0
    assert http.get("/v1/adapters/a/version").json()["mixed"] is True
    asyncio.run(report("r1", "v2", dv.revision))
    deadline = time.monotonic() + 10
    while _metric(http.get("/metrics").text, 'pausesvc_adapter_versions_mixed{adapter="a"}') != 0.0:
        assert time.monotonic() < deadline
        time.sleep(0.5)
