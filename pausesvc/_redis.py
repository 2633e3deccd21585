"""Building redis-py clients from URLs (the only place that does).

Supported: ``redis://``, ``rediss://`` (TLS; ``ssl_*`` query parameters as redis-py reads them),
``unix://``, and ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` which
follows Sentinel failovers (``rediss+sentinel://`` for TLS to the data nodes).
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from pausesvc._exceptions import InvalidInputError

__all__ = [
    "aclose_client",
    "async_client",
    "check_url",
    "close_client",
    "is_cluster",
    "redact",
    "retry_stale",
    "sync_client",
]

T = TypeVar("T")

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")


def _check(url: object) -> str:
    if not isinstance(url, str) or not url:
        raise InvalidInputError("redis_url must be a non-empty string", field="redis_url")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise InvalidInputError(
            f"redis_url {redact(url)!r} must start with one of " + ", ".join(s + "://" for s in _SCHEMES),
            field="redis_url",
        )
    if scheme in ("redis", "rediss"):  # (cluster and sentinel URLs list several addresses)
        _check_address(url)
    return url


def check_url(url: object) -> str:
    """``url`` if it is a Redis URL pausesvc can use, else :class:`InvalidInputError` naming
    ``redis_url`` (the scheme; a one-address URL's host, port and database)."""
    return _check(url)


def _check_address(url: str) -> None:
    """The host, port and database of a one-address URL: what redis-py would otherwise refuse
    with a ValueError (a traceback) or quietly read as database 0."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL"
        raise InvalidInputError(f"redis_url {redact(url)!r}: {exc}", field="redis_url") from None
    if port == 0:
        raise InvalidInputError(f"redis_url {redact(url)!r}: port 0", field="redis_url")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise InvalidInputError(
            f"redis_url {redact(url)!r}: the database must be a number (redis://host:port/0), not {db!r}",
            field="redis_url",
        )


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any], bool]:
    parts = urlsplit(url)
    ssl = parts.scheme.lower().startswith("rediss")
    hostlist = parts.netloc.rsplit("@", 1)[-1]
    nodes: list[tuple[str, int]] = []
    for hp in hostlist.split(","):
        host, _, port = hp.rpartition(":")
        if not host:
            host, port = port, "26379"
        try:
            nodes.append((host.strip("[]"), int(port)))
        except ValueError as exc:
            raise InvalidInputError(f"bad sentinel address {hp!r} in redis_url", field="redis_url") from exc
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise InvalidInputError(
            "redis+sentinel:// URL needs the service name: redis+sentinel://host:port/mymaster",
            field="redis_url",
        )
    kwargs: dict[str, Any] = {}
    if len(path) > 1:
        kwargs["db"] = int(path[1])
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    query = parse_qs(parts.query)
    if "sentinel_password" in query:
        kwargs["sentinel_password"] = query["sentinel_password"][0]
    return nodes, path[0], kwargs, ssl


def _cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    parts = urlsplit(url)
    kw: dict[str, Any] = {"ssl": parts.scheme.lower().startswith("rediss")}
    if parts.password:
        kw["password"] = unquote(parts.password)
    if parts.username:
        kw["username"] = unquote(parts.username)
    nodes = []
    for hp in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = hp.rpartition(":")
        try:
            nodes.append((host.strip("[]") or "127.0.0.1", int(port)))
        except ValueError as exc:
            raise InvalidInputError(f"bad cluster node {hp!r} in redis_url", field="redis_url") from exc
    return nodes, kw


def _sentinel_master(sentinel_class: Any, url: str, options: dict[str, Any]) -> Any:
    """The master client of a ``redis+sentinel://`` URL, from ``sentinel_class`` (redis-py's
    blocking or asyncio ``Sentinel``); its sentinel connections are closed with it (see
    close_client / aclose_client)."""
    nodes, service, kw, ssl = _sentinel_parts(url)
    sentinel_password = kw.pop("sentinel_password", None)
    sentinel = sentinel_class(
        nodes,
        sentinel_kwargs={"password": sentinel_password} if sentinel_password else None,
        socket_timeout=options.get("socket_timeout", 5.0),
    )
    client = sentinel.master_for(service, ssl=ssl, **kw, **options)
    client._pausesvc_sentinels = sentinel.sentinels
    return client


def async_client(url: str, **options: Any) -> Any:
    """An asyncio client (``decode_responses=True``) for ``url``.

    ``redis+cluster://h1:p1,h2:p2`` gives a Redis Cluster client (sharded pub/sub is used).
    """
    url = _check(url)
    options.setdefault("decode_responses", True)
    if "+cluster" in url.split("://", 1)[0].lower():
        from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

        nodes, kw = _cluster_nodes(url)
        options.pop("health_check_interval", None)
        options.pop("retry", None)
        return AsyncRedisCluster(startup_nodes=[AsyncClusterNode(h, p) for h, p in nodes], **kw, **options)
    if "+sentinel" in url.split("://", 1)[0].lower():
        return packed_by_hiredis(_sentinel_master(AsyncSentinel, url, options))
    return packed_by_hiredis(aredis.Redis.from_url(url, **options))


def packed_by_hiredis(client: Any) -> Any:
    """Let ``client``'s connections pack commands with ``hiredis.pack_command``.

    redis-py's blocking connections do so when hiredis is installed; its asyncio connections
    pack in Python, or (8.2.0) encode every argument in Python before hiredis packs them: 9.0
    us for a state script's 15 arguments here with 8.2.0 (12 with 8.1.0), against 1.3 straight
    to hiredis, on the path of every pause and resume. The bytes are the same:
    only where the arguments are encoded as redis-py's default encoder does (UTF-8, strict)."""
    from redis.utils import HIREDIS_AVAILABLE

    pool = getattr(client, "connection_pool", None)
    kw = getattr(pool, "connection_kwargs", {})
    if (
        HIREDIS_AVAILABLE
        and pool is not None
        and _is_utf8(kw.get("encoding", "utf-8"))
        and kw.get("encoding_errors", "strict") == "strict"
    ):
        pool.connection_class = _hiredis_packing(pool.connection_class)
    return client


def _is_utf8(encoding: object) -> bool:
    try:
        return codecs.lookup(str(encoding)).name == "utf-8"
    except LookupError:
        return False


@functools.cache
def _hiredis_packing(cls: type) -> type:
    try:
        from redis.connection import HiredisRespSerializer
    except ImportError:  # pragma: no cover - a redis-py without it: its own packer
        return cls
    if getattr(cls, "_pausesvc_hiredis", False):
        return cls
    import hiredis

    # with no arguments: no memoryview fallback and no encoder, as its pack was before redis-py
    # 8.2.0 gave it both (its __init__ is untyped there; the class had none before)
    serializer: Any = HiredisRespSerializer
    fallback = serializer().pack
    pack = hiredis.pack_command

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        # the usual command - a one-word name, arguments hiredis takes as they are - straight
        # to hiredis; anything else (a name to split, a memoryview, a bad type: its DataError)
        # as redis-py's serializer does it (3 us of Python per command more)
        first = args[0]
        if type(first) is str and first.isalpha():
            try:
                return [pack(args)]
            except TypeError:
                pass
        packed: list[bytes] = fallback(*args)
        return packed

    return type(
        cls.__name__,
        (cls,),
        {"pack_command": pack_command, "_pausesvc_hiredis": True, "__module__": cls.__module__},
    )


def sync_client(url: str, **options: Any) -> Any:
    """A blocking client (``decode_responses=True``) for ``url``."""
    url = _check(url)
    options.setdefault("decode_responses", True)
    if "+cluster" in url.split("://", 1)[0].lower():
        from redis.cluster import ClusterNode, RedisCluster

        nodes, kw = _cluster_nodes(url)
        options.pop("health_check_interval", None)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes],  # type: ignore[no-untyped-call]
            **kw,
            **options,
        )
    if "+sentinel" in url.split("://", 1)[0].lower():
        return _sentinel_master(Sentinel, url, options)
    return redis.Redis.from_url(url, **options)


def is_cluster(client: object) -> bool:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    return isinstance(client, (RedisCluster, AsyncRedisCluster))


async def ensure_initialized(client: Any) -> None:
    """An asyncio cluster client must learn the slot map before a pub/sub can route."""
    if is_cluster(client) and hasattr(client, "initialize"):
        await client.initialize()


async def retry_stale(client: Any, call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``; once more on a fresh connection if it failed on a pooled connection the
    server had closed (a Redis restart or failover).

    redis-py 8.1's asyncio client raises ``ConnectionError: Connection closed by server`` for
    the first command on each such connection instead of retrying it (redis/redis-py#4252, a
    regression from 8.0). Only for idempotent calls: every pausesvc script is.
    """
    try:
        return await call()
    except redis.ConnectionError:
        pool = getattr(client, "connection_pool", None)
        if pool is None:
            raise
        await pool.disconnect(inuse_connections=False)  # drop every idle stale connection
        return await call()


async def aclose_client(client: Any) -> None:
    """Close a client from :func:`async_client`, with the connections to the sentinels that a
    ``redis+sentinel://`` client opened (redis-py leaves those open when the client closes)."""
    await client.aclose()
    for sentinel in getattr(client, "_pausesvc_sentinels", ()):
        await sentinel.aclose()


def close_client(client: Any) -> None:
    """:func:`aclose_client` for a client from :func:`sync_client`."""
    client.close()
    for sentinel in getattr(client, "_pausesvc_sentinels", ()):
        sentinel.close()


_CONFIRMATIONS = ("subscribe", "ssubscribe")


def honour_cancellation(task: asyncio.Task[Any] | None = None) -> None:
    """Raise CancelledError if the current task (or ``task``) is being cancelled: redis-py can
    turn a cancellation that lands mid-command into "no message" or a connection error, and a
    loop that goes on after it makes ``aclose()`` wait for ever."""
    task = task or asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def pubsub_connected(pubsub: Any) -> bool:
    """Does ``pubsub`` hold an open connection (without making one)?"""
    conn = getattr(pubsub, "connection", None)
    return conn is not None and bool(getattr(conn, "is_connected", False))


def is_cluster_pubsub(pubsub: object) -> bool:
    """Is ``pubsub`` Redis Cluster's (one connection per node, read by polling them) rather
    than one connection's? Told by its class: redis-py 8.2 gave the standalone asyncio
    PubSub a ``get_sharded_message`` too (an alias of ``get_message``), so that method's
    presence no longer tells them apart."""
    from redis.asyncio.cluster import ClusterPubSub

    return isinstance(pubsub, ClusterPubSub)


async def next_message(pubsub: Any, sharded: bool, timeout: float | None) -> Any:
    """The next pub/sub message within ``timeout`` seconds (None if none; ``timeout=None``:
    block until one comes, the way a bare subscriber reads), from a plain or sharded
    subscription."""
    if sharded and is_cluster_pubsub(pubsub):
        return await pubsub.get_sharded_message(timeout=timeout)
    # one connection's PubSub reads 'smessage's with get_message (redis-py before 8.2 had
    # no get_sharded_message on its standalone asyncio PubSub)
    return await pubsub.get_message(timeout=timeout)


def next_message_sync(pubsub: Any, sharded: bool, timeout: float) -> Any:
    """Blocking :func:`next_message`."""
    if sharded:
        return pubsub.get_sharded_message(timeout=timeout)
    return pubsub.get_message(timeout=timeout)


async def subscribe_confirmed(pubsub: Any, channel: str, sharded: bool, timeout: float = 5.0) -> None:
    """(S)SUBSCRIBE and return once Redis confirmed it: only then may the key be read
    (reading first loses what changes in between). Messages before the confirmation are
    dropped: the read that follows covers them. Raises TimeoutError."""
    if sharded:
        await pubsub.ssubscribe(channel)
    else:
        await pubsub.subscribe(channel)
    async with asyncio.timeout(timeout):
        while True:
            msg = await next_message(pubsub, sharded, 1.0)
            if msg is not None and msg["type"] in _CONFIRMATIONS:
                return


def subscribe_confirmed_sync(pubsub: Any, channel: str, sharded: bool, timeout: float = 5.0) -> None:
    """Blocking :func:`subscribe_confirmed`."""
    if sharded:
        pubsub.ssubscribe(channel)
    else:
        pubsub.subscribe(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = next_message_sync(pubsub, sharded, 1.0)
        if msg is not None and msg["type"] in _CONFIRMATIONS:
            return
    raise TimeoutError(f"no subscribe confirmation from Redis within {timeout:g} s")
