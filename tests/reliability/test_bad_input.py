"""Bad input: properties of name validation, key building and the gate's body handling; a
hypothesis-driven fuzz of the gate's request path; injection names; huge and slow bodies to a
real replica process (clear errors, bounded memory, no effect on other adapters)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pausesvc_vllm import PauseGateMiddleware
from pausesvc_vllm._asgi import BodyError, read_body, replaying_receive

from pausesvc import (
    EmbeddedRedis,
    InvalidInputError,
    InvalidNameError,
    Keys,
    PauseClient,
    Settings,
    validate_name,
)
from pausesvc.protocol.keys import MAX_NAME_LENGTH
from reliability.conftest import FULL
from reliability.harness.fleet import Fleet, rss_kb

pytestmark = pytest.mark.reliability

FUZZ_EXAMPLES = 3000 if FULL else 300
INJECTION = [
    "a}b",
    "{x}",
    "}{",
    "a:b",
    "pausesvc:{default}:paused",
    "*x",
    "x*",
    "a{b}c",
    "名前",
    "ΑΒΓ",
    "a\\b",
    "'\"",
    "$(rm)",
    "%s%n",
    "ñ" * 256,
]
REJECTED = [
    "x\r\nPUBLISH pausesvc:{default}:events {}",
    "a\nb",
    "a b",
    "\x00",
    "a\tb",
    "x" * (MAX_NAME_LENGTH + 1),
    "x" * 1_000_000,
    "",
    "a\u2028b",
    "\ud800",
]


# -- names and keys --------------------------------------------------------------------------
@settings(max_examples=2000 if FULL else 400, deadline=None)
@given(st.text(max_size=300))
def test_validate_name_accepts_exactly_the_documented_names(name: str) -> None:
    ok = 0 < len(name) <= MAX_NAME_LENGTH and not any(
        c.isspace()
        or ord(c) < 32
        or 0x7F <= ord(c) <= 0x9F
        or 0xD800 <= ord(c) <= 0xDFFF
        or c in "\u2028\u2029\u200b\ufeff"
        for c in name
    )
    try:
        assert validate_name(name) == name
        assert ok, f"accepted {name!r}"
    except InvalidNameError as exc:
        assert isinstance(exc, ValueError)
        assert not ok, f"rejected {name!r}: {exc}"
        assert str(exc) and len(str(exc)) < 200  # one clear line, not the whole input echoed


@settings(max_examples=400, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_keys_keep_one_hash_tag_or_refuse_the_namespace(ns: str) -> None:
    try:
        k = Keys(ns)
    except InvalidInputError:
        return
    for key in (k.rev, k.epoch, k.paused, k.leases, k.events, k.replicas, k.acks, k.replica("r:1")):
        assert key.startswith(f"pausesvc:{{{ns}}}:")
        assert key.count("{") == 1 and key.count("}") == 1  # the slot is the namespace's


@pytest.mark.timeout(60)
def test_injection_names_are_inert_data(
    redis_srv: EmbeddedRedis, ns: str, figures: Callable[..., None]
) -> None:
    raw = redis.Redis.from_url(redis_srv.url, decode_responses=True)
    before = set(raw.keys("*"))
    with PauseClient(redis_srv.url, namespace=ns) as c:
        c.pause("bystander")
        for name in INJECTION:
            g = c.pause(name, holder="h")
            assert c.get(name) is not None and c.get(name).name == name  # type: ignore[union-attr]
            assert name in c.snapshot().paused
            c.resume(name, holder="h", token=g.token)
            assert c.get(name) is None
        t0 = time.perf_counter()
        for name in REJECTED:
            with pytest.raises(InvalidNameError):
                c.pause(name)
        reject_s = time.perf_counter() - t0
        assert set(c.snapshot().paused) == {"bystander"}
    after = set(raw.keys("*")) - before
    raw.close()
    # only this namespace's keys exist: no name leaked into a key or a channel
    assert all(k.startswith(f"pausesvc:{{{ns}}}:") for k in after), after
    figures(
        injection_names=len(INJECTION),
        rejected_names=len(REJECTED),
        reject_all_s=round(reject_s, 4),
        keys_created=sorted(after),
    )


@pytest.mark.timeout(60)
def test_cli_rejects_injection_with_exit_2(redis_srv: EmbeddedRedis, ns: str) -> None:
    import subprocess
    import sys

    for name in ("x\r\nPUBLISH a b", "a b", "x" * 300):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pausesvc",
                "--redis-url",
                redis_srv.url,
                "--namespace",
                ns,
                "pause",
                name,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2, out
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


# -- the gate's body handling ------------------------------------------------------------------
def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(len(data), c) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=3000),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
    cap=st.integers(1, 4000),
    declare=st.sampled_from(["none", "exact", "lie-small", "garbage"]),
)
def test_read_body_reassembles_any_chunking_within_the_cap(
    body: bytes, cuts: list[int], cap: int, declare: str
) -> None:
    parts = _chunks(body, cuts)
    msgs = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    headers = {
        "none": [],
        "exact": [(b"content-length", str(len(body)).encode())],
        "lie-small": [(b"content-length", b"1")],
        "garbage": [(b"content-length", b"12x")],
    }[declare]
    it = iter(msgs)

    async def receive() -> dict[str, Any]:
        return next(it)

    async def go() -> None:
        try:
            got = await read_body(receive, {"headers": headers}, max_bytes=cap, timeout=5)
        except BodyError as exc:
            assert (exc.status == 413 and len(body) > cap) or (declare == "exact" and len(body) > cap)
            return
        assert got == body and len(body) <= cap
        # handed over once, then the real receive
        later = [{"type": "http.disconnect"}]

        async def real() -> dict[str, Any]:
            return later.pop()

        rr = replaying_receive(got, real)
        assert (await rr())["body"] == body
        assert (await rr())["type"] == "http.disconnect"

    asyncio.run(go())


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=2000),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
    waits=st.lists(st.sampled_from(["now", "yield", "future", "plain-future"]), min_size=1, max_size=9),
)
def test_read_body_whether_or_not_each_receive_waits(body: bytes, cuts: list[int], waits: list[str]) -> None:
    """receive() may return at once (no deadline is armed then), or wait - a bare yield, a
    future resolved later, or a plain Future instead of a coroutine: the body is the same."""
    parts = _chunks(body, cuts)
    msgs = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def go() -> None:
        loop = asyncio.get_running_loop()
        it, modes = iter(msgs), iter(waits * (len(msgs) + 1))

        async def coro(mode: str) -> dict[str, Any]:
            if mode == "yield":
                await asyncio.sleep(0)
            elif mode == "future":
                fut = loop.create_future()
                loop.call_soon(fut.set_result, None)
                await fut
            return next(it)

        def receive() -> Any:
            mode = next(modes)
            if mode == "plain-future":
                fut = loop.create_future()
                loop.call_soon(fut.set_result, next(it))
                return fut
            return coro(mode)

        assert await read_body(receive, {"headers": []}, max_bytes=4000, timeout=5) == body

    asyncio.run(go())


async def test_read_body_deadline_reaches_a_receive_that_is_already_waiting() -> None:
    """The first receive() is started before any deadline exists; when it waits, the deadline
    still cancels it (inside it: its cleanup runs) and the read ends as 408."""
    cleaned: list[bool] = []

    async def receive() -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)
        raise AssertionError("never")

    with pytest.raises(BodyError) as info:
        await asyncio.wait_for(read_body(receive, {"headers": []}, max_bytes=10, timeout=0.05), 5)
    assert info.value.status == 408 and cleaned == [True]
    # and a cancellation that is not the deadline's is the caller's: it propagates
    task = asyncio.ensure_future(read_body(receive, {"headers": []}, max_bytes=10, timeout=30))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True, True]


# -- a fuzz of the gate's request path --------------------------------------------------------
PATHS = [
    "/v1/completions",
    "/v1/completions/",
    "//v1//completions",
    "/v1/chat/completions",
    "/v1/responses",
    "/inference/v1/generate",
    "/v1/completionsX",
    "/v1/models",
    "/",
    "/skyrl/v1/wait_lora_unpaused",
    "/pausesvc/status",
    "/v1/completions/../x",
    "/%00",
]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch, max_size=4),
    max_leaves=10,
)


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    model = draw(
        st.sampled_from(["free", "paused", None, 7, "", "x\r\nPUBLISH a b", "*", "}{", "m" * 300])
        | st.text(max_size=10)
    )
    shape = draw(st.sampled_from(["object", "json", "bytes", "empty"]))
    if shape == "object":
        obj = draw(st.dictionaries(st.text(max_size=8), JSON, max_size=4))
        if model is not None:
            obj["model"] = model
        body = json.dumps(obj).encode()
    elif shape == "json":
        body = json.dumps(draw(JSON)).encode()
    elif shape == "bytes":
        body = draw(st.binary(max_size=200))
    else:
        body = b""
    if draw(st.booleans()) and len(body) < 5000:
        body = body + b" " * draw(st.sampled_from([0, 5000]))  # sometimes over the 4 KiB cap
    headers = [(b"content-type", b"application/json")]
    cl = draw(st.sampled_from(["exact", "none", "small", "huge", "garbage"]))
    headers += {
        "exact": [(b"content-length", str(len(body)).encode())],
        "none": [],
        "small": [(b"content-length", b"1")],
        "huge": [(b"content-length", b"99999999999")],
        "garbage": [(b"content-length", b"-3")],
    }[cl]
    if draw(st.booleans()):
        headers.append((b"x-request-id", draw(st.binary(max_size=20))))
    extra = draw(st.lists(st.tuples(st.binary(min_size=1, max_size=10), st.binary(max_size=20)), max_size=3))
    return {
        "method": draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT"])),
        "path": draw(st.sampled_from(PATHS) | st.text(max_size=20).map(lambda t: "/" + t)),
        "root_path": draw(st.sampled_from(["", "", "/proxy"])),
        "headers": headers + extra,
        "body": body,
        "cuts": draw(st.lists(st.integers(0, max(1, len(body))), max_size=6)),
        "disconnect": draw(st.sampled_from(["never", "never", "mid-body", "after-body", "stall"])),
        "model": model,
    }


class EchoApp:
    """Behind the gate: reads the body and answers 200 with its length (or streams 2 chunks)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            try:
                async with asyncio.timeout(0.2):  # a server's own body deadline
                    m = await receive()
            except TimeoutError:
                await send({"type": "http.response.start", "status": 408, "headers": []})
                await send({"type": "http.response.body", "body": b"timeout"})
                return
            if m["type"] == "http.disconnect":
                return
            chunks.append(m.get("body", b""))
            if not m.get("more_body"):
                break
        body = b"".join(chunks)
        self.calls.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _well_formed(sent: list[dict[str, Any]]) -> str | None:
    if not sent:
        return None
    if sent[0]["type"] != "http.response.start" or not 100 <= int(sent[0]["status"]) <= 599:
        return f"bad start {sent[0]}"
    if not all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in sent[0].get("headers", [])):
        return "bad headers"
    rest = sent[1:]
    if not rest or any(m["type"] != "http.response.body" for m in rest):
        return f"bad body messages {rest}"
    if any(m.get("more_body") for m in rest[-1:]) or any(not m.get("more_body") for m in rest[:-1]):
        return "more_body sequence broken"
    return None


@pytest.mark.timeout(600 if FULL else 150)
def test_fuzz_the_gate_request_path(redis_srv: EmbeddedRedis, ns: str, figures: Callable[..., None]) -> None:
    s = Settings(
        redis_url=redis_srv.url,
        namespace=ns,
        gate_hold_timeout_s=0.05,
        gate_body_timeout_s=0.05,
        gate_max_body_bytes=4096,
        heartbeat_interval_s=0.5,
    )
    app = EchoApp()
    gate = PauseGateMiddleware(app, settings=s)
    tally = {
        "inputs": 0,
        "crashes": 0,
        "5xx": 0,
        "malformed": 0,
        "statuses": {},
        "leaked_to_paused": 0,
        "bystander_affected": 0,
    }
    problems: list[str] = []
    with asyncio.Runner() as runner, PauseClient(redis_srv.url, namespace=ns) as c:
        c.pause("paused")
        runner.run(gate.runtime.start())
        runner.run(gate.runtime.watcher.wait_synced(10))  # type: ignore[union-attr]

        async def one(req: dict[str, Any]) -> None:
            parts = _chunks(req["body"], req["cuts"])
            msgs: list[dict[str, Any]] = [
                {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
                for i, p in enumerate(parts)
            ]
            if req["disconnect"] == "mid-body" and len(msgs) > 1:
                msgs = [*msgs[: len(msgs) // 2], {"type": "http.disconnect"}]
            elif req["disconnect"] == "after-body":
                msgs.append({"type": "http.disconnect"})
            elif req["disconnect"] == "stall":
                msgs = msgs[:-1] or []
            queue = list(msgs)

            async def receive() -> dict[str, Any]:
                if queue:
                    return queue.pop(0)
                await asyncio.sleep(3600)  # the client says nothing more
                raise AssertionError("unreachable")

            sent: list[dict[str, Any]] = []

            async def send(m: dict[str, Any]) -> None:
                sent.append(m)

            scope = {
                "type": "http",
                "method": req["method"],
                "path": req["path"],
                "root_path": req["root_path"],
                "headers": req["headers"],
                "query_string": b"",
                "scheme": "http",
                "server": ("127.0.0.1", 1),
                "http_version": "1.1",
            }
            before = len(app.calls)
            try:
                async with asyncio.timeout(5):
                    await gate(scope, receive, send)
            except Exception as exc:
                tally["crashes"] += 1
                problems.append(f"{type(exc).__name__}: {exc} for {req!r:.300}")
                return
            tally["inputs"] += 1
            bad = _well_formed(sent)
            if bad:
                tally["malformed"] += 1
                problems.append(f"{bad} for {req!r:.200}")
            if sent:
                code = int(sent[0]["status"])
                tally["statuses"][code] = tally["statuses"].get(code, 0) + 1
                if code >= 500:
                    body = b"".join(m.get("body", b"") for m in sent[1:])
                    if not (code == 503 and b"adapter_paused" in body):
                        tally["5xx"] += 1
                        problems.append(f"{code} {body[:200]!r} for {req!r:.200}")
            if (
                len(app.calls) > before
                and req["model"] == "paused"
                and req["path"] in PATHS[:6]
                and req["method"] == "POST"
            ):
                try:
                    data = json.loads(app.calls[-1][1])
                except ValueError:
                    data = None
                if isinstance(data, dict) and data.get("model") == "paused":
                    tally["leaked_to_paused"] += 1
                    problems.append(f"a request of the paused adapter reached the app: {req!r:.200}")
            rt = gate.runtime
            if not rt.admissible("free") or rt.stats.held.get("free") or rt.in_flight("free"):
                tally["bystander_affected"] += 1

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(requests())
        def fuzz(req: dict[str, Any]) -> None:
            runner.run(one(req))

        t0 = time.monotonic()
        fuzz()
        elapsed = time.monotonic() - t0
        runner.run(gate.runtime.aclose())
    figures(elapsed_s=round(elapsed, 1), **tally)
    assert not problems, problems[:5]
    assert tally["crashes"] == 0 and tally["5xx"] == 0 and tally["bystander_affected"] == 0


# -- huge and slow bodies against a real replica process ---------------------------------------
def _raw_request(port: int, head: bytes, body_iter: Any) -> bytes:
    """Send ``head`` then the body pieces (with pauses); return the response (headers + body,
    read up to its Content-Length: the server may keep the connection open)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(head)
        try:
            for chunk, pause in body_iter:
                s.sendall(chunk)
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
                data += chunk
            head_end = data.index(b"\r\n\r\n") + 4
            length = 0
            for line in data[:head_end].split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(data) < head_end + length and (chunk := s.recv(65536)):
                data += chunk
        except (ConnectionResetError, TimeoutError, ValueError):
            pass
        return data


@pytest.mark.timeout(120)
async def test_huge_and_slow_bodies_to_a_replica(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    fleet = make_fleet(
        redis_srv.url,
        ns,
        env={"PAUSESVC_GATE_MAX_BODY_BYTES": str(1 << 20), "PAUSESVC_GATE_BODY_TIMEOUT_S": "1"},
    )
    (r1,) = fleet.start(1)
    rss0 = rss_kb(r1.pid)
    m: dict[str, Any] = {}
    path = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    # 1. declared 10 GB: refused before reading
    t0 = time.monotonic()
    out = await asyncio.to_thread(_raw_request, r1.port, path + b"Content-Length: 10000000000\r\n\r\n", [])
    m["declared_10GB"] = out.split(b"\r\n")[0].decode()
    m["declared_10GB_s"] = round(time.monotonic() - t0, 3)
    assert b" 413 " in out.split(b"\r\n")[0] and b"body_too_large" in out
    # 2. 64 MB chunked with no length: cut at the 1 MiB cap
    big = [(b"%x\r\n" % (1 << 20) + b"a" * (1 << 20) + b"\r\n", 0)] * 64 + [(b"0\r\n\r\n", 0)]
    out = await asyncio.to_thread(_raw_request, r1.port, path + b"Transfer-Encoding: chunked\r\n\r\n", big)
    m["chunked_64MB"] = out.split(b"\r\n")[0].decode()
    assert b" 413 " in out.split(b"\r\n")[0]
    # 3. slow loris: 30 connections dribbling bytes; meanwhile another adapter is served
    pool = ThreadPoolExecutor(max_workers=32)
    loop = asyncio.get_running_loop()
    dribble = [(b"{", 0.2)] * 10
    lorises = [
        loop.run_in_executor(pool, _raw_request, r1.port, path + b"Content-Length: 100\r\n\r\n", dribble)
        for _ in range(30)
    ]
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as c:
        ok = await c.post(
            r1.url + "/v1/completions", json={"model": "bystander", "prompt": [1], "max_tokens": 3}
        )
    m["bystander_during_loris_s"] = round(time.monotonic() - t0, 3)
    assert ok.status_code == 200
    outs = await asyncio.gather(*lorises)
    pool.shutdown()
    m["loris_answers"] = sorted({o.split(b"\r\n")[0].decode() for o in outs})
    assert all(b" 408 " in o.split(b"\r\n")[0] for o in outs), m["loris_answers"]
    m["rss_growth_mb"] = round((rss_kb(r1.pid) - rss0) / 1024, 1)
    async with httpx.AsyncClient(timeout=5) as c:
        st = (await c.get(r1.url + "/pausesvc/status")).json()["stats"]
    m["too_large"], m["body_timeouts"] = st["too_large"], st["body_timeouts"]
    figures(**m)
    assert m["rss_growth_mb"] < 40
