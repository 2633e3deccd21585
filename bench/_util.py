"""Shared helpers: summaries, machine/version description, the UDP report collector, processes.

Replica processes report every change of their gate's view as one UDP datagram carrying
``time.monotonic()`` (CLOCK_MONOTONIC is system-wide on Linux, so timestamps from different
processes compare directly) and the process's own CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "Collector",
    "ctx",
    "machine",
    "profile_top",
    "rss_bytes",
    "stop_procs",
    "summary",
    "versions",
]

_CTX: Any = None


def ctx() -> Any:
    """A forkserver context whose server has the replica code (uvicorn, redis-py, pausesvc)
    imported already, so starting 64 replica processes costs a fork each, not an import."""
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["bench._procs"])
    return _CTX


def summary(values: Iterable[float], scale: float = 1.0) -> dict[str, float]:
    """median, p99, max (and n) of ``values`` times ``scale``."""
    xs = sorted(v * scale for v in values)
    if not xs:
        return {"n": 0, "median": float("nan"), "p99": float("nan"), "max": float("nan")}
    p99 = xs[min(len(xs) - 1, max(0, round(0.99 * len(xs) + 0.5) - 1))]
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "p99": p99,
        "max": xs[-1],
        "mean": statistics.fmean(xs),
    }


def percentile(xs: list[float], q: float) -> float:
    """The q-quantile of a SORTED list (nearest rank)."""
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, round(q * len(xs) + 0.5) - 1))]


def profile_top(prof: Any, n: int = 20) -> str:
    """A cProfile's top ``n`` functions by own time, from pstats' column header on."""
    import io
    import pstats

    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(n)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.lstrip().startswith("ncalls"):
            return "\n".join(lines[max(0, i - 2) :])
    return "\n".join(lines)


def rss_bytes(pid: int | None = None) -> int:
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def proc_cpu(pid: int) -> float:
    """user+system CPU seconds of ``pid`` (clock ticks: 10 ms resolution, use over long runs)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "hostname": platform.node(),
        "loadavg_at_start": os.getloadavg(),
    }


def redis_parser() -> str:
    """The RESP parser class redis-py's asyncio connections use here (every design and the
    floor: none of them picks one): ``_AsyncHiredisParser`` when hiredis is installed."""
    from redis.asyncio.connection import DefaultParser

    return DefaultParser.__name__


def compile_bytecode() -> str:
    """Compile both packages to bytecode, as ``pip install`` of a wheel leaves them.

    An editable install has no ``.pyc`` (and this machine sets ``PYTHONDONTWRITEBYTECODE=1``),
    so every process would compile pausesvc's source at import: ~1.7 MB more RSS and ~0.1 s
    more start than a deployed replica or CLI pays. What was done goes in the report."""
    import compileall

    import pausesvc_vllm

    import pausesvc

    ok = all(
        compileall.compile_dir(Path(mod.__file__).parent, quiet=1)
        for mod in (pausesvc, pausesvc_vllm)
        if mod.__file__ is not None
    )
    return "compiled at start, as a wheel install leaves it" if ok else "compile failed: source"


def versions() -> dict[str, str]:
    from importlib import metadata

    import pausesvc
    from pausesvc.devtools.embedded import find_redis_server

    out = {"python": platform.python_version(), "pausesvc": pausesvc.__version__}
    out["redis-py parser"] = redis_parser()
    for dist in ("redis", "hiredis", "uvloop", "httpx", "uvicorn", "h11", "pausesvc-vllm"):
        try:
            out[dist if dist != "redis" else "redis-py"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "-"
    try:
        v = subprocess.run(
            [find_redis_server(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        out["redis-server"] = v.split("v=", 1)[1].split()[0] if "v=" in v else v.strip()
    except Exception as exc:  # reported, not fatal: the table says what is unknown
        out["redis-server"] = f"? ({exc})"
    return out


class Report:
    """One datagram: ``kind idx state t cpu extra``."""

    __slots__ = ("cpu", "extra", "idx", "kind", "state", "t")

    def __init__(self, raw: bytes) -> None:
        parts = raw.decode().split(" ", 5)
        self.kind, self.idx, self.state = parts[0], int(parts[1]), parts[2]
        self.t, self.cpu = float(parts[3]), float(parts[4])
        self.extra = parts[5] if len(parts) > 5 else ""


def send_report(
    sock: socket.socket, addr: tuple[str, int], kind: str, idx: int, state: str, extra: str = ""
) -> None:
    msg = f"{kind} {idx} {state} {time.monotonic():.9f} {time.process_time():.6f} {extra}"
    sock.sendto(msg.encode(), addr)


class Collector(asyncio.DatagramProtocol):
    """Receives reports; ``await expect(kind, state, n)`` returns the first n reports of
    (kind, state) that arrive after ``arm`` was called."""

    def __init__(self) -> None:
        self.port: Any = 0  # a UDP port of 127.0.0.1, or the AF_UNIX path of open(path=...)
        self._got: dict[tuple[str, str], list[Report]] = defaultdict(list)
        self._waiters: dict[tuple[str, str], tuple[int, asyncio.Future[list[Report]]]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, path: str | None = None) -> Collector:
        """Listen on a free UDP port of 127.0.0.1, or on the AF_UNIX datagram socket ``path``."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET if path is None else socket.AF_UNIX
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0) if path is None else path)
        _transport, proto = await loop.create_datagram_endpoint(cls, sock=sock)
        proto.port = sock.getsockname()[1] if path is None else path
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        r = Report(data)
        key = (r.kind, r.state)
        got = self._got[key]
        got.append(r)
        w = self._waiters.get(key)
        if w is not None and len(got) >= w[0] and not w[1].done():
            w[1].set_result(list(got[: w[0]]))

    def arm(self, kind: str, state: str) -> None:
        self._got[(kind, state)] = []

    async def expect(self, kind: str, state: str, n: int, timeout: float = 30.0) -> list[Report]:
        key = (kind, state)
        got = self._got[key]
        if len(got) >= n:
            return list(got[:n])
        fut: asyncio.Future[list[Report]] = asyncio.get_running_loop().create_future()
        self._waiters[key] = (n, fut)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise TimeoutError(f"only {len(self._got[key])}/{n} reports of {key}") from None
        finally:
            self._waiters.pop(key, None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if isinstance(self.port, str):
            with contextlib.suppress(OSError):
                os.unlink(self.port)


def start_procs(target: Callable[..., None], argsets: list[tuple[Any, ...]]) -> list[Any]:
    procs = []
    for args in argsets:
        p = ctx().Process(target=target, args=args, daemon=True)
        p.start()
        procs.append(p)
    return procs


def stop_procs(procs: list[Any], timeout: float = 5.0) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)
