"""Bearer-token auth on a real server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .conftest import Live

TOKEN = "s3cret-token"
GOOD = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic czNjcmV0"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
        ({"Authorization": "Bearer sécret".encode()}, 403),
    ],
)
def test_mutations_need_the_token(
    make_live: Callable[..., Live], headers: dict[str, Any], status: int
) -> None:
    live = make_live(api_token=TOKEN)
    with live.client() as c:
        for method, path, kw in (
            ("POST", "/v1/pauses/a", {}),
            ("DELETE", "/v1/pauses/a", {}),
            ("POST", "/v1/pauses/a/renew", {"json": {"ttl_s": 5}}),
            ("POST", "/skyrl/v1/abort_lora_requests", {"json": {"lora_name": "a"}}),
            ("POST", "/skyrl/v1/resume_lora_requests", {"json": {"lora_name": "a"}}),
        ):
            r = c.request(method, path, headers=headers, **kw)
            assert r.status_code == status, (method, path, r.text)
            assert r.json()["error"] == ("unauthorized" if status == 401 else "forbidden")
            if status == 401:
                assert r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/v1/pauses").json()["paused"] == {}  # nothing happened


def test_right_token_and_open_reads(make_live: Callable[..., Live]) -> None:
    live = make_live(api_token=TOKEN)
    with live.client() as c:
        g = c.post("/v1/pauses/a", headers=GOOD)
        assert g.status_code == 200
        assert c.get("/v1/pauses").json()["paused"].keys() == {"a"}  # reads are open
        assert c.get("/v1/pauses/a/wait", params={"timeout_s": 0}).status_code == 200
        assert c.post("/skyrl/v1/wait_lora_unpaused", json={"lora_name": "a", "timeout_s": 0}).json() == {
            "paused": True
        }
        assert c.delete("/v1/pauses/a", headers=GOOD).json()["released"] is True
        doc = c.get("/openapi.json").json()
        assert "security" in doc["paths"]["/v1/pauses/{name}"]["post"]
        assert "security" not in doc["paths"]["/v1/pauses"]["get"]


def test_auth_reads_closes_reads(make_live: Callable[..., Live]) -> None:
    live = make_live(api_token=TOKEN, auth_reads=True)
    with live.client() as c:
        for path in ("/v1/pauses", "/v1/pauses/a", "/v1/pauses/a/wait", "/v1/replicas", "/v1/events"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": "Bearer nope"}).status_code == 403
        assert c.get("/v1/pauses", headers=GOOD).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            assert c.get(path).status_code == 200, path
        doc = c.get("/openapi.json").json()
        assert "security" in doc["paths"]["/v1/pauses"]["get"]


def test_no_token_configured_means_open_and_documented_so(live: Live) -> None:
    with live.client() as c:
        assert c.post("/v1/pauses/a").status_code == 200
        doc = c.get("/openapi.json").json()
        assert "securitySchemes" not in doc.get("components", {})
        assert "401" not in doc["paths"]["/v1/pauses/{name}"]["post"]["responses"]
