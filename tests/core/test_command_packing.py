"""The asyncio clients pack commands with hiredis (redis-py packs them in Python there): for any
arguments the bytes are redis-py's own, or the error is; other encodings keep redis-py's packer."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio.connection as rconn
from hypothesis import given, settings
from hypothesis import strategies as st

from pausesvc import AsyncPauseClient
from pausesvc._redis import async_client

_arg = (
    st.text(max_size=30)
    | st.sampled_from(["\udc80", "x\ud800", "a\x00b", "\U0001f600"])  # lone surrogates: UnicodeEncodeError
    | st.binary(max_size=30)
    | st.binary(max_size=30).map(memoryview)
    | st.binary(max_size=30).map(bytearray)
    | st.integers()
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.none()
)


def _packed(conn: Any, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return "ok", b"".join(bytes(x) for x in conn.pack_command(*args))
    except Exception as exc:  # the type is what must match
        return "error", type(exc)


@pytest.fixture(scope="module")
def conns() -> tuple[Any, Any]:
    client = async_client("redis://127.0.0.1:1/0")
    fast = client.connection_pool.make_connection()
    assert getattr(type(fast), "_pausesvc_hiredis", False)
    assert isinstance(fast, rconn.Connection)
    return fast, rconn.Connection()


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["EVALSHA", "SET", "CONFIG GET", "CONFIG\tGET", "PUBLISH", b"CLIENT X", b"GET", ""]),
    args=st.lists(_arg, max_size=16),
)
def test_any_command_packs_to_redis_pys_bytes(conns: tuple[Any, Any], name: Any, args: list[Any]) -> None:
    fast, plain = conns
    assert _packed(fast, (name, *args)) == _packed(plain, (name, *args))


def test_other_encodings_and_schemes_keep_their_connection_class() -> None:
    latin = async_client("redis://127.0.0.1:1/0?encoding=latin-1")
    assert not getattr(latin.connection_pool.connection_class, "_pausesvc_hiredis", False)
    lax = async_client("redis://127.0.0.1:1/0", encoding_errors="replace")
    assert not getattr(lax.connection_pool.connection_class, "_pausesvc_hiredis", False)
    tls = async_client("rediss://127.0.0.1:1/0")
    assert issubclass(tls.connection_pool.connection_class, rconn.SSLConnection)
    unix = async_client("unix:///tmp/nothing.sock")
    assert issubclass(unix.connection_pool.connection_class, rconn.UnixDomainSocketConnection)
    assert getattr(unix.connection_pool.connection_class, "_pausesvc_hiredis", False)
    sentinel = async_client("redis+sentinel://127.0.0.1:1/svc")
    assert getattr(sentinel.connection_pool.connection_class, "_pausesvc_hiredis", False)


async def test_state_round_trips_through_hiredis_packing(redis_url: str) -> None:
    async with AsyncPauseClient(redis_url, namespace="packing", holder="h") as c:
        reason = "swap \u00e9\u4e2d \U0001f600 " + "x" * 70_000  # past redis-py's buffer cutoff
        g = await c.pause("lora-\u00e9", reason=reason[:256], ttl=30.5)
        got = await c.get("lora-\u00e9")
        assert got is not None and got.holders["h"].reason == reason[:256]
        await c.resume("lora-\u00e9", token=g.token)
        assert await c.get("lora-\u00e9") is None
        await c.redis.set("packing:big", reason)
        assert await c.redis.get("packing:big") == reason
        async with c.redis.pipeline(transaction=True) as p:
            await p.set("packing:a", b"\x00\xff").incrbyfloat("packing:f", 1.25).execute()
        assert await c.redis.get("packing:f") == "1.25"
