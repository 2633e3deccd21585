"""Every class of malformed input is a 4xx JSON error that names the problem and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

JSON = {"content-type": "application/json"}

# (method, path, kwargs, status, field)
CASES: list[tuple[str, str, dict[str, Any], int, str | None]] = [
    # bad JSON / not an object / not UTF-8
    ("POST", "/v1/pauses/a", {"content": b"{bad", "headers": JSON}, 422, "body"),
    ("POST", "/v1/pauses/a", {"content": b"[1, 2]", "headers": JSON}, 422, "body"),
    ("POST", "/v1/pauses/a", {"content": b'"x"', "headers": JSON}, 422, "body"),
    # (a body that is not Content-Type: application/json is a 415: tests/service/test_security.py)
    ("POST", "/v1/pauses/a", {"content": b'{"reason": "\xff\xfe"}', "headers": JSON}, 422, "body"),
    # wrong types
    ("POST", "/v1/pauses/a", {"json": {"ttl_s": "5"}}, 422, "ttl_s"),
    ("POST", "/v1/pauses/a", {"json": {"drain": 1}}, 422, "drain"),
    ("POST", "/v1/pauses/a", {"json": {"drain": "yes"}}, 422, "drain"),
    ("POST", "/v1/pauses/a", {"json": {"holder": 5}}, 422, "holder"),
    ("POST", "/v1/pauses/a", {"json": {"reason": ["x"]}}, 422, "reason"),
    ("POST", "/v1/pauses/a/renew", {"json": {"ttl_s": 5, "token": "7 x"}}, 422, "token"),
    ("POST", "/v1/pauses/a/renew", {"json": {"ttl_s": 5, "token": 7.5}}, 422, "token"),
    # unknown fields (a typo must not silently drop the lease)
    ("POST", "/v1/pauses/a", {"json": {"ttl": 5}}, 422, "ttl"),
    ("POST", "/v1/pauses/a/renew", {"json": {"ttl_s": 5, "holders": "x"}}, 422, "holders"),
    # missing required
    ("POST", "/v1/pauses/a/renew", {"json": {}}, 422, "ttl_s"),
    ("POST", "/v1/pauses/a/renew", {}, 422, "body"),
    # negative / zero / NaN / infinite / too large numbers
    ("POST", "/v1/pauses/a", {"json": {"ttl_s": -1}}, 422, "ttl_s"),
    ("POST", "/v1/pauses/a", {"json": {"ttl_s": 0}}, 422, "ttl_s"),
    ("POST", "/v1/pauses/a", {"content": b'{"ttl_s": NaN}', "headers": JSON}, 422, "ttl_s"),
    ("POST", "/v1/pauses/a", {"content": b'{"ttl_s": Infinity}', "headers": JSON}, 422, "ttl_s"),
    ("POST", "/v1/pauses/a", {"json": {"ttl_s": 10**9}}, 422, "ttl_s"),
    ("POST", "/v1/pauses/a", {"json": {"drain": True, "timeout_s": -0.5}}, 422, "timeout_s"),
    ("POST", "/v1/pauses/a", {"content": b'{"timeout_s": NaN}', "headers": JSON}, 422, "timeout_s"),
    # a timeout without drain would be ignored: refused
    ("POST", "/v1/pauses/a", {"json": {"timeout_s": 5}}, 422, "timeout_s"),
    ("POST", "/v1/pauses/a", {"json": {"drain": False, "timeout_s": 5}}, 422, "timeout_s"),
    ("GET", "/v1/pauses/a/wait", {"params": {"timeout_s": "abc"}}, 422, "timeout_s"),
    ("GET", "/v1/pauses/a/wait", {"params": {"timeout_s": "nan"}}, 422, "timeout_s"),
    ("GET", "/v1/pauses/a/wait", {"params": {"timeout_s": "inf"}}, 422, "timeout_s"),
    ("GET", "/v1/pauses/a/wait", {"params": {"timeout_s": "-1"}}, 422, "timeout_s"),
    ("DELETE", "/v1/pauses/a", {"params": {"token": "abc"}}, 422, "token"),
    ("DELETE", "/v1/pauses/a", {"params": {"token": "0"}}, 422, "token"),
    ("DELETE", "/v1/pauses/a", {"params": {"force": "maybe"}}, 422, "force"),
    # bad names and holders
    ("POST", "/v1/pauses/a%20b", {}, 422, "name"),
    ("POST", "/v1/pauses/a%0Ab", {}, 422, "name"),
    ("POST", "/v1/pauses/a%09", {}, 422, "name"),
    ("POST", "/v1/pauses/" + "x" * 257, {}, 422, "name"),
    ("POST", "/v1/pauses/", {}, 422, "name"),
    ("POST", "/v1/pauses/%FF%FE", {}, 422, "name"),
    ("GET", "/v1/pauses/a%00", {}, 422, "name"),
    ("POST", "/v1/pauses/a", {"json": {"holder": "two words"}}, 422, "holder"),
    ("POST", "/v1/pauses/a", {"json": {"holder": ""}}, 422, "holder"),
    ("POST", "/v1/pauses/a", {"content": b'{"holder": "\\ud800"}', "headers": JSON}, 422, "holder"),
    ("POST", "/v1/pauses/a", {"json": {"reason": "a\x07b"}}, 422, "reason"),
    ("POST", "/v1/pauses/a", {"json": {"reason": "x" * 1025}}, 422, "reason"),
    ("DELETE", "/v1/pauses/a", {"params": {"holder": "a b"}}, 422, "holder"),
    # SkyRL endpoints answer 400, with SkyRL's body for a missing lora_name
    ("POST", "/skyrl/v1/abort_lora_requests", {"json": {}}, 400, "lora_name"),
    ("POST", "/skyrl/v1/abort_lora_requests", {"json": {"lora_name": ""}}, 400, "lora_name"),
    ("POST", "/skyrl/v1/abort_lora_requests", {"content": b"nope", "headers": JSON}, 400, "body"),
    ("POST", "/skyrl/v1/abort_lora_requests", {"json": {"lora_name": "a b"}}, 400, "lora_name"),
    ("POST", "/skyrl/v1/resume_lora_requests", {"json": {"lora_name": 3}}, 400, "lora_name"),
    (
        "POST",
        "/skyrl/v1/wait_lora_unpaused",
        {"json": {"lora_name": "A", "timeout_s": "x"}},
        400,
        "timeout_s",
    ),
    ("POST", "/skyrl/v1/wait_lora_unpaused", {"json": {"lora_name": "A", "timeout_s": -1}}, 400, "timeout_s"),
    (
        "POST",
        "/skyrl/v1/wait_lora_unpaused",
        {"content": b'{"lora_name": "A", "timeout_s": NaN}', "headers": JSON},
        400,
        "timeout_s",
    ),
    # a numeric string is a number (SkyRL's server did float(timeout_s)); these are not
    *[
        ("POST", path, {"json": {"lora_name": "A", "timeout_s": bad}}, 400, "timeout_s")
        for path in ("/skyrl/v1/wait_lora_unpaused", "/skyrl/v1/abort_lora_requests")
        for bad in ("soon", "-1", "-0.5", "nan", "inf", "1e400", "1_0", "", True)
    ],
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "field"),
    CASES,
    ids=[f"{c[0]} {c[1][:40]} {str(c[2])[:40]}" for c in CASES],
)
def test_malformed_input_is_a_named_4xx(
    http: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int, field: str | None
) -> None:
    before = http.get("/v1/pauses").json()["revision"]
    r = http.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == "invalid_input" and body["detail"]
    assert body["field"] == field, body
    assert http.get("/v1/pauses").json()["revision"] == before  # nothing changed


def test_skyrl_missing_lora_name_keeps_skyrl_body(http: httpx.Client) -> None:
    r = http.post("/skyrl/v1/abort_lora_requests", json={})
    assert r.status_code == 400 and r.json()["detail"] == "'lora_name' required"


def test_wrong_method_and_unknown_route(http: httpx.Client) -> None:
    r = http.put("/v1/pauses/a")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert set(r.headers["allow"].split(", ")) == {"GET", "POST", "DELETE"}
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
