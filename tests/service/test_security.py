"""Attacks on the control service over real HTTP: web pages (cross-site, text/plain, empty
bodies), DNS rebinding (a foreign Host), and floods of event streams and long-polls."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.service.conftest import Live

CROSS = {"Origin": "https://evil.example"}


def _port(live: Live) -> int:
    return int(live.url.rsplit(":", 1)[1])


def _nothing_paused(live: Live) -> None:
    assert httpx.get(live.url + "/v1/pauses").json()["paused"] == {}


# -- browsers -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/v1/pauses/%2A", {}),  # the attack: text/plain, empty body, no preflight
        ("POST", "/v1/pauses/%2A", {"content": b"", "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/v1/pauses/lora-a", {"json": {"holder": "x"}}),
        ("POST", "/skyrl/v1/abort_lora_requests", {"json": {"lora_name": "lora-a"}}),
        ("DELETE", "/v1/pauses/lora-a", {"params": {"force": "true"}}),
        ("POST", "/v1/pauses/lora-a/renew", {"json": {"holder": "x", "ttl_s": 5}}),
    ],
)
@pytest.mark.parametrize(
    "browser",
    [
        CROSS,
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:3000"},
    ],
)
def test_cross_site_mutations_are_refused(
    live: Live, method: str, path: str, kwargs: dict[str, Any], browser: dict[str, str]
) -> None:
    kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), **browser}}
    r = httpx.request(method, live.url + path, **kwargs)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "cross_site" and r.json()["field"] == "Origin"
    _nothing_paused(live)


def test_same_origin_requests_work_like_the_dashboards(live: Live) -> None:
    same = {"Origin": live.url, "Sec-Fetch-Site": "same-origin"}
    r = httpx.post(live.url + "/v1/pauses/lora-a", json={"holder": "ops"}, headers=same)
    assert r.status_code == 200, r.text
    r = httpx.delete(live.url + "/v1/pauses/lora-a", params={"force": "true"}, headers=same)
    assert r.status_code == 200, r.text
    _nothing_paused(live)


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
@pytest.mark.parametrize(
    "path", ["/v1/pauses/lora-a", "/skyrl/v1/abort_lora_requests", "/skyrl/v1/wait_lora_unpaused"]
)
def test_non_json_bodies_are_415(live: Live, path: str, ctype: str | None) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    r = httpx.post(live.url + path, content=b'{"lora_name": "lora-a"}', headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_media_type"
    _nothing_paused(live)


def test_an_empty_body_still_needs_no_content_type(live: Live) -> None:
    """``curl -X POST`` with no body: still a pause (same-origin programs are unaffected)."""
    assert httpx.post(live.url + "/v1/pauses/lora-a").status_code == 200


def test_with_a_token_cross_site_is_refused_before_auth(make_live: Callable[..., Live]) -> None:
    live = make_live(api_token="svc-token")
    r = httpx.post(live.url + "/v1/pauses/lora-a", headers={**CROSS, "Authorization": "Bearer svc-token"})
    assert r.status_code == 403
    _nothing_paused(live)


# -- DNS rebinding -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "127.0.0.1:1", "10.0.0.7:{port}", ""],
)
def test_foreign_host_is_refused(live: Live, host: str) -> None:
    host = host.format(port=_port(live))
    for method, path in (("POST", "/v1/pauses/%2A"), ("GET", "/v1/pauses"), ("GET", "/v1/events")):
        r = httpx.request(method, live.url + path, headers={"Host": host})
        assert r.status_code == 400, (method, path, r.text)
        assert r.json()["error"] == "host_not_allowed"
    _nothing_paused(live)


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LOCALHOST:{port}", "localhost"]
)
def test_loopback_hosts_are_served(live: Live, host: str) -> None:
    r = httpx.get(live.url + "/v1/pauses", headers={"Host": host.format(port=_port(live))})
    assert r.status_code == 200, r.text


def test_allowed_hosts_extends_the_list(make_live: Callable[..., Live]) -> None:
    live = make_live(allowed_hosts=["pausesvc.internal"])
    ok = httpx.get(live.url + "/v1/pauses", headers={"Host": "pausesvc.internal:8443"})
    assert ok.status_code == 200
    assert httpx.get(live.url + "/v1/pauses", headers={"Host": "evil.example"}).status_code == 400


def test_a_non_loopback_bind_accepts_any_host(make_live: Callable[..., Live]) -> None:
    """Documented: bound to a network interface with allowed_hosts empty, the Host check is
    off (the token is the protection); the cross-site check still applies."""
    live = make_live(host="0.0.0.0")
    assert httpx.get(live.url + "/v1/pauses", headers={"Host": "10.0.0.7:80"}).status_code == 200
    assert httpx.post(live.url + "/v1/pauses/a", headers=CROSS).status_code == 403


# -- floods ------------------------------------------------------------------------------------------
def test_event_stream_flood_is_capped(make_live: Callable[..., Live]) -> None:
    live = make_live(max_event_streams=3, heartbeat_s=0.2)
    with ExitStack() as stack:
        client = stack.enter_context(httpx.Client(base_url=live.url, timeout=10))
        streams = []
        for _ in range(3):
            resp = stack.enter_context(client.stream("GET", "/v1/events"))
            assert resp.status_code == 200
            streams.append(resp)
        refused = [client.get("/v1/events") for _ in range(20)]
        for r in refused:
            assert r.status_code == 503 and r.json()["error"] == "too_many_streams"
            assert int(r.headers["retry-after"]) > 0
        # the open ones still stream
        assert next(streams[0].iter_lines()).startswith("retry:")
        streams[0].close()
        deadline = time.monotonic() + 5
        while True:  # the slot frees once the server sees the stream end (next keepalive)
            with client.stream("GET", "/v1/events") as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "a closed stream's slot was never freed"
            time.sleep(0.1)
    metrics = httpx.get(live.url + "/metrics").text
    counted = re.search(r'pausesvc_http_refused_total\{reason="too_many_streams"\} (\S+)', metrics)
    assert counted is not None and float(counted.group(1)) >= 20


def test_long_poll_flood_is_capped(make_live: Callable[..., Live]) -> None:
    live = make_live(max_long_polls=2)
    assert httpx.post(live.url + "/v1/pauses/lora-a").status_code == 200
    answers: list[int] = []

    def wait() -> None:
        r = httpx.get(live.url + "/v1/pauses/lora-a/wait", params={"timeout_s": 3}, timeout=10)
        answers.append(r.status_code)

    threads = [threading.Thread(target=wait) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    for path, kw in (
        ("/v1/pauses/lora-a/wait", {"params": {"timeout_s": 3}}),
        ("/skyrl/v1/wait_lora_unpaused", {"json": {"lora_name": "lora-a", "timeout_s": 3}}),
    ):
        r = httpx.request("POST" if "skyrl" in path else "GET", live.url + path, **kw)
        assert r.status_code == 503 and r.json()["error"] == "too_many_waits", r.text
        assert r.headers["retry-after"]
    for t in threads:
        t.join(10)
    assert answers == [200, 200]
    # freed again
    r = httpx.get(live.url + "/v1/pauses/lora-a/wait", params={"timeout_s": 0})
    assert r.status_code == 200


# -- bodies, framing, a DELETE's parameters ------------------------------------------------------------
def test_a_body_over_the_cap_is_refused_before_auth_and_before_it_is_read(
    make_live: Callable[..., Live],
) -> None:
    """Anyone who reaches the port could make the service buffer a body of any size (the token
    is checked by the routes, after the body is read): a declared length over
    ``max_body_bytes`` is 413 at once, a chunked body as soon as it grows over it."""
    live = make_live(api_token="svc-token", max_body_bytes=4096)
    big = b'{"holder": "' + b"x" * 8192 + b'"}'
    r = httpx.post(live.url + "/v1/pauses/lora-a", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large" and r.json()["field"] == "body"

    def chunks() -> Iterator[bytes]:
        yield b'{"holder": "'
        for _ in range(64):
            yield b"x" * 1024

    r = httpx.post(
        live.url + "/v1/pauses/lora-a",
        content=chunks(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer svc-token"},
    )
    assert r.status_code == 413, r.text
    ok = httpx.post(
        live.url + "/v1/pauses/lora-a", json={"holder": "ops"}, headers={"Authorization": "Bearer svc-token"}
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("path", ["/", "/v1/pauses", "/healthz", "/v1/pauses/lora-a"])
def test_no_response_may_be_framed(live: Live, path: str) -> None:
    """A page on another origin must not put the dashboard - its Resume buttons - in a frame
    (clickjacking: the click is then same-origin, past the cross-site guard)."""
    r = httpx.get(live.url + path)
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"json": {"token": "1-00000000stale"}}, "body"),  # a token there would be ignored
        ({"params": {"tokn": "1-00000000stale"}}, "tokn"),
        ({"params": [("holder", "a"), ("holder", "b")]}, "holder"),
    ],
)
def test_a_resume_takes_its_parameters_in_the_query_only(
    live: Live, kwargs: dict[str, Any], field: str
) -> None:
    """DELETE /v1/pauses/{name}: a token in the body (or a misspelt parameter) would be
    ignored and the default holder's pause released unfenced - a 422 naming it instead."""
    assert httpx.post(live.url + "/v1/pauses/lora-a").status_code == 200
    r = httpx.request("DELETE", live.url + "/v1/pauses/lora-a", **kwargs)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert httpx.get(live.url + "/v1/pauses/lora-a").json()["paused"] is True


def test_a_query_string_that_is_not_utf8_is_refused(live: Live) -> None:
    """``?holder=%FF`` would reach the route as U+FFFD - a holder nobody named."""
    assert httpx.post(live.url + "/v1/pauses/lora-a").status_code == 200
    r = httpx.delete(live.url + "/v1/pauses/lora-a?holder=%FF")
    assert r.status_code == 422 and r.json()["field"] == "query", r.text
    assert httpx.get(live.url + "/v1/pauses/lora-a").json()["paused"] is True
    assert httpx.get(live.url + "/v1/pauses?x=%C3%A9").status_code == 200  # UTF-8 is fine


def test_a_method_the_dashboard_does_not_answer_names_the_one_it_does(live: Live) -> None:
    r = httpx.request("HEAD", live.url + "/")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
