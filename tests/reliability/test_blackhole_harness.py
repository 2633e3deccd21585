# mypy: disable-error-code="no-untyped-call"
"""The partition harness itself (harness/blackhole.py), against the session's redis-server.

Seconds long, so they run in the default suite too (not behind PAUSESVC_RELIABILITY_FULL).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from pausesvc import EmbeddedRedis
from reliability.harness.blackhole import BlackholeProxy

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(30)]


@pytest.fixture
def proxy(redis_server: EmbeddedRedis) -> Iterator[BlackholeProxy]:
    with BlackholeProxy(redis_server.port) as p:
        yield p


def _conn(proxy: BlackholeProxy) -> redis.Connection:
    """One raw connection: what happens to THIS connection, with no pool reconnecting."""
    conn = redis.Connection(port=proxy.port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=None)
    conn.connect()
    conn.send_command("PING")
    assert conn.read_response() == b"PONG"
    return conn


def _client(url: str, timeout: float = 0.5) -> redis.Redis:
    # no retries: each test sees exactly what one command through the proxy does
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        retry=None,
        decode_responses=True,
    )


def test_forward_relays_commands_both_ways(proxy: BlackholeProxy) -> None:
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    key = f"bh:{uuid.uuid4().hex}"
    big = "x" * (4 * 1024 * 1024)  # larger than the socket buffers: backpressure both ways
    with _client(proxy.url, timeout=10) as c:
        assert c.ping()
        c.set(key, big)
        assert c.get(key) == big
        c.delete(key)
    assert proxy.accepted == 1


def test_blackhole_times_out_then_forward_serves_new_clients(
    proxy: BlackholeProxy, redis_server: EmbeddedRedis
) -> None:
    old = _client(proxy.url)
    assert old.ping()
    raw = _client(redis_server.url, timeout=5)
    name = f"bh-{uuid.uuid4().hex[:8]}"
    old.client_setname(name)

    proxy.blackhole()
    t0 = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        old.ping()
    assert 0.4 < time.monotonic() - t0 < 3
    # TCP stays up: Redis still lists the proxied connection, and the proxy still holds it
    assert name in {c["name"] for c in raw.client_list()}
    assert proxy.connections >= 1
    # a new connection is accepted but nothing is forwarded
    fresh = _client(proxy.url)
    with pytest.raises(redis.TimeoutError):
        fresh.ping()
    fresh.close()

    proxy.forward()
    with _client(proxy.url) as new:
        assert new.ping()
    # the black-holed connections were closed: Redis forgot them, the old client reconnects
    assert name not in {c["name"] for c in raw.client_list()}
    assert old.ping()
    old.close()
    raw.close()


def test_forward_resets_black_holed_connections(proxy: BlackholeProxy) -> None:
    conn = _conn(proxy)
    proxy.blackhole()
    proxy.forward()
    with pytest.raises(redis.ConnectionError):
        conn.send_command("PING")
        conn.read_response()
    conn.disconnect()


def test_forward_can_leave_old_connections_black_holed(proxy: BlackholeProxy) -> None:
    conn = _conn(proxy)
    proxy.blackhole()
    proxy.forward(close_blackholed=False)
    conn.send_command("PING")
    with pytest.raises(redis.TimeoutError):
        conn.read_response()
    conn.disconnect()
    with _client(proxy.url) as new:
        assert new.ping()


def test_pubsub_messages_do_not_cross_a_blackhole(proxy: BlackholeProxy, redis_server: EmbeddedRedis) -> None:
    channel = f"bh:{uuid.uuid4().hex}"
    sub = _client(proxy.url, timeout=2).pubsub()
    sub.subscribe(channel)
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    with _client(redis_server.url) as pub:
        assert pub.publish(channel, "before") == 1
        assert sub.get_message(timeout=2)["data"] == "before"
        proxy.blackhole()
        assert pub.publish(channel, "during") == 1  # Redis still has the subscriber
        assert sub.get_message(timeout=1) is None
    sub.close()


def test_reset_closes_every_connection_until_forward(proxy: BlackholeProxy) -> None:
    c = _client(proxy.url)
    assert c.ping()
    proxy.reset()
    with pytest.raises(redis.ConnectionError):
        c.ping()
    with pytest.raises(redis.ConnectionError):
        _client(proxy.url).ping()  # new connections are reset too
    proxy.forward()
    assert c.ping()  # the client's next connection goes through
    c.close()


def test_upstream_down_looks_like_a_reset(redis_server: EmbeddedRedis) -> None:
    with EmbeddedRedis() as doomed, BlackholeProxy(doomed.port) as p:
        port = doomed.port
        doomed.stop()
        assert p.upstream_port == port
        with pytest.raises(redis.ConnectionError):
            _client(p.url).ping()


def test_close_is_idempotent_and_stops_listening(redis_server: EmbeddedRedis) -> None:
    p = BlackholeProxy(redis_server.port).start()
    c = _client(p.url)
    assert c.ping()
    p.close()
    p.close()
    with pytest.raises(redis.ConnectionError):
        c.ping()
    c.close()
