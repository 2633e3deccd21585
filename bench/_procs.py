"""What runs inside the replica processes (imported once by the forkserver, then forked).

Every replica reports each change of its gate's view as a UDP datagram (see ``_util``):
``p`` a pausesvc replica (the gate runtime and its shared watcher), ``b`` a SkyRL replica
(uvicorn serving the baseline app), ``f`` a raw redis-py subscriber (the floor).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from typing import Any

import redis.asyncio as aredis
import uvicorn

from bench._util import send_report
from bench.baseline.app import SkyRLReplica
from bench.fakeapp import fake_openai_app
from pausesvc import PauseWatcher, Settings, shared_watcher

try:  # the vLLM plugin's gate (built alongside): the real gate path when importable
    from pausesvc_vllm import PauseGateMiddleware
except ImportError:  # pragma: no cover - reported as gate="watcher-only" in the results
    PauseGateMiddleware = None

__all__ = ["baseline_replica", "floor_subscriber", "loop_names", "pausesvc_replica", "run_on"]

ADDR = "127.0.0.1"
#: where uvicorn replicas listen: 127.0.0.1, or a veth address in the network-namespace runs
BIND = "127.0.0.1"


def _udp() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _reporter(to: int | str) -> tuple[socket.socket, Any]:
    """The report socket and address: a UDP port of 127.0.0.1, or an AF_UNIX datagram path
    (the namespace runs: reports then stay off the veths being measured)."""
    if isinstance(to, str):
        return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM), to
    return _udp(), (ADDR, to)


async def _until_term() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def gate_settings(url: str, ns: str, **extra: Any) -> Settings:
    return Settings(redis_url=url, namespace=ns, **extra)


async def start_gate(url: str, ns: str, app: Any = fake_openai_app) -> tuple[Any, PauseWatcher]:
    """The pausesvc side of a replica: the gate middleware's runtime (watcher, heartbeat,
    drain acks) when the plugin is importable, else the process's shared watcher."""
    if PauseGateMiddleware is not None:
        mw = PauseGateMiddleware(app, settings=gate_settings(url, ns))
        await mw.runtime.start()
        watcher = mw.runtime.watcher
        assert watcher is not None
    else:
        mw = None
        watcher = await shared_watcher(url, ns)
    await watcher.wait_synced(30)
    return mw, watcher


def run_on(loop: str, main: Any) -> Any:
    """Run the coroutine ``main`` on a new event loop: ``"asyncio"`` or ``"uvloop"`` (what vLLM's
    uvicorn runs)."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


def loop_names() -> tuple[str, ...]:
    """The event loops the bench compares: asyncio, and uvloop when it is installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ("asyncio",)
    return ("asyncio", "uvloop")


def pausesvc_replica(
    idx: int, url: str, udp_port: int | str, ns: str, loop: str = "asyncio", kind: str = "p"
) -> None:
    async def main() -> None:
        sock, addr = _reporter(udp_port)
        mw, watcher = await start_gate(url, ns)
        last: dict[str, bool] = {}

        def on_change(name: str, state: Any, ev: Any) -> None:
            paused = watcher.is_paused(name)
            if last.get(name, False) != paused:
                last[name] = paused
                send_report(sock, addr, kind, idx, "1" if paused else "0", name)

        watcher.add_listener(on_change)
        send_report(sock, addr, kind, idx, "ready", "gate" if mw is not None else "watcher")
        await _until_term()
        if mw is not None:
            await mw.runtime.aclose()

    run_on(loop, main())


def floor_subscriber(idx: int, url: str, udp_port: int | str, channel: str) -> None:
    """A bare redis-py subscriber: reports each message; a message starting with ``B`` (the
    barrier floor) it also answers with a bare PUBLISH of its index on ``<channel>:acks``."""

    async def main() -> None:
        sock, addr = _reporter(udp_port)
        r = aredis.Redis.from_url(url)
        back = aredis.Redis.from_url(url)
        await back.ping()
        ps = r.pubsub()
        await ps.subscribe(channel)
        acks = f"{channel}:acks"
        stop = asyncio.create_task(_until_term())
        async for msg in ps.listen():
            if msg["type"] == "subscribe":
                send_report(sock, addr, "f", idx, "ready")
            elif msg["type"] == "message":
                data = msg["data"].decode()
                send_report(sock, addr, "f", idx, data)
                if data.startswith("B"):
                    await back.publish(acks, str(idx))
            if stop.done():
                break

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(main())


async def start_uvicorn(app: Any) -> int:
    """Serve ``app`` with uvicorn (one worker, h11) on a free port of ``BIND``; return the port.

    The server runs until SIGTERM (uvicorn's own handler)."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then (a bare
    # socket.socket() gives proto 0, and Nagle + delayed ACK add 40 ms per keep-alive call)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    srv.bind((BIND, 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    _TASKS.add(asyncio.create_task(server.serve(sockets=[srv])))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.01)
    return int(srv.getsockname()[1])


_TASKS: set[asyncio.Task[None]] = set()


def baseline_replica(idx: int, udp_port: int | str, delay: float = 0.0) -> None:
    async def main() -> None:
        usock, addr = _reporter(udp_port)

        def on_change(name: str, paused: bool) -> None:
            send_report(usock, addr, "b", idx, "1" if paused else "0", name)

        app = SkyRLReplica(fake_openai_app, on_change=on_change, delay=delay)
        port = await start_uvicorn(app)
        send_report(usock, addr, "b", idx, "ready", str(port))
        await asyncio.gather(*_TASKS)

    asyncio.run(main())
