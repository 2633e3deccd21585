"""`pausesvc serve` with no Redis configured keeps its state: a pause survives a restart.

Every test runs the real command as a subprocess with ``XDG_DATA_HOME`` in a temporary
directory (never the user's own data directory) and no ``PAUSESVC_*`` variable.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from pausesvc import EmbeddedRedis
from pausesvc.devtools.embedded import DataDirLock, default_data_dir, running_embedded_url

pytestmark = pytest.mark.timeout(90)


class Serve:
    """One ``pausesvc serve --port 0`` process and what it printed."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pausesvc.cli", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.redis_url = self._line(r"export PAUSESVC_REDIS_URL=(\S+)").group(1)
        self.base = self._line(r"control service on (http://\S+)").group(1)
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{self.base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.lines
            time.sleep(0.05)

    def _line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"{pattern!r} not printed; got {self.lines}")

    @property
    def banner(self) -> str:
        return "".join(self.lines)

    def redis_pid(self) -> int:
        r = redis.Redis.from_url(self.redis_url)
        try:
            return int(r.info("server")["process_id"])
        finally:
            r.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(20)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _gone(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running")


def _paused(env: dict[str, str], url: str) -> list[str]:
    """What the real CLI says is paused, pointed at ``url`` as serve told us."""
    out = subprocess.run(
        [sys.executable, "-m", "pausesvc.cli", "status", "--json"],
        env={**env, "PAUSESVC_REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return sorted(json.loads(out.stdout)["paused"])


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAUSESVC_")}
    yield {**clean, "XDG_DATA_HOME": str(tmp_path / "xdg")}


@pytest.fixture
def started() -> Iterator[list[Serve]]:
    servers: list[Serve] = []
    yield servers
    for s in servers:
        s.stop(signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_pause_survives_a_restart(env: dict[str, str], started: list[Serve], sig: signal.Signals) -> None:
    first = Serve(env)
    started.append(first)
    data_dir = Path(env["XDG_DATA_HOME"]) / "pausesvc" / "redis"
    assert f"its state is kept in {data_dir}" in first.banner
    r = httpx.post(f"{first.base}/v1/pauses/lora-a", json={"holder": "trainer", "reason": "swap"})
    assert r.status_code == 200, r.text
    assert _paused(env, first.redis_url) == ["lora-a"]
    redis_pid = first.redis_pid()
    first.stop(sig)
    _gone(redis_pid)  # SIGKILL too: its redis-server does not outlive it (and flushed the AOF)

    second = Serve(env)
    started.append(second)
    assert second.redis_url == first.redis_url  # the URL given to replicas and the CLI holds
    assert _paused(env, second.redis_url) == ["lora-a"]
    state = httpx.get(f"{second.base}/v1/pauses/lora-a").json()
    assert state["paused"] is True and "trainer" in json.dumps(state) and "swap" in json.dumps(state)
    # and it is the same hold: its holder resumes it
    assert httpx.delete(f"{second.base}/v1/pauses/lora-a", params={"holder": "trainer"}).status_code == 200
    assert _paused(env, second.redis_url) == []


def test_a_pause_survives_redis_itself_being_killed(env: dict[str, str], started: list[Serve]) -> None:
    """SIGKILL of the redis-server, then of serve: an acknowledged pause was already written
    to the append-only file (appendfsync everysec writes before it answers)."""
    first = Serve(env)
    started.append(first)
    assert httpx.post(f"{first.base}/v1/pauses/lora-b").status_code == 200
    redis_pid = first.redis_pid()
    os.kill(redis_pid, signal.SIGKILL)
    first.stop(signal.SIGKILL)
    _gone(redis_pid)
    second = Serve(env)
    started.append(second)
    assert _paused(env, second.redis_url) == ["lora-b"]


def test_two_servers_on_one_data_dir_refuse_cleanly(
    env: dict[str, str], tmp_path: Path, started: list[Serve]
) -> None:
    data = tmp_path / "state"
    first = Serve(env, "--data-dir", str(data))
    started.append(first)
    assert f"its state is kept in {data}" in first.banner
    assert httpx.post(f"{first.base}/v1/pauses/lora-c").status_code == 200
    assert running_embedded_url(data) == first.redis_url
    aof = sorted((data / "appendonlydir").iterdir())
    before = {p.name: p.read_bytes() for p in aof}

    second = subprocess.run(
        [sys.executable, "-m", "pausesvc.cli", "serve", "--port", "0", "--data-dir", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1, second.stdout + second.stderr
    assert "in use by another pausesvc serve" in second.stderr
    assert f"pid {first.proc.pid}" in second.stderr and first.redis_url in second.stderr
    assert "Traceback" not in second.stderr
    # the first server and its files are untouched
    assert {p.name: p.read_bytes() for p in sorted((data / "appendonlydir").iterdir())} == before
    assert _paused(env, first.redis_url) == ["lora-c"]
    first.stop()
    assert running_embedded_url(data) is None


def test_the_data_dir_setting_and_ephemeral(
    env: dict[str, str], tmp_path: Path, started: list[Serve]
) -> None:
    data = tmp_path / "from-env"
    s = Serve({**env, "PAUSESVC_DATA_DIR": str(data)})
    started.append(s)
    assert f"its state is kept in {data}" in s.banner
    assert (data / "appendonlydir").is_dir()
    s.stop()

    eph = Serve(env, "--ephemeral")
    started.append(eph)
    assert "nothing is kept when it stops" in eph.banner
    assert httpx.post(f"{eph.base}/v1/pauses/lora-d").status_code == 200
    eph.stop()
    assert not (Path(env["XDG_DATA_HOME"]) / "pausesvc").exists()
    again = Serve(env, "--ephemeral")
    started.append(again)
    assert _paused(env, again.redis_url) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--ephemeral", "--data-dir", "/tmp/x"],
        ["--redis-url", "redis://127.0.0.1:1/0", "--data-dir", "/tmp/x"],
        ["--redis-url", "redis://127.0.0.1:1/0", "--ephemeral"],
    ],
)
def test_conflicting_embedded_flags_are_refused(env: dict[str, str], args: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pausesvc.cli", "serve", "--port", "0", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "data_dir" in r.stderr and "Traceback" not in r.stderr


def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "pausesvc" / "redis"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # the XDG spec: only absolute paths
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "pausesvc" / "redis"


def test_the_lock_is_held_while_its_redis_runs(tmp_path: Path) -> None:
    """The redis-server inherits the lock: a new serve cannot start on the directory while the
    old one's Redis is still running, even when that serve is gone."""
    lock = DataDirLock(tmp_path).acquire()
    server = EmbeddedRedis(appendonly=True, dir=str(tmp_path), pass_fds=(lock.fileno(),)).start()
    try:
        lock.record(url=server.url, port=server.port, redis_pid=server.pid)
        lock.release()  # as if serve had died: only redis-server holds it now
        assert running_embedded_url(tmp_path) == server.url
        with pytest.raises(Exception, match="in use by another pausesvc serve"):
            DataDirLock(tmp_path).acquire(wait_for_dead_holder=0.3)
    finally:
        server.stop()
    with DataDirLock(tmp_path) as again:
        assert again.previous_port() == server.port


def test_the_test_sessions_redis_stays_ephemeral(redis_server: EmbeddedRedis) -> None:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert r.config_get("appendonly")["appendonly"] == "no"
        assert r.config_get("save")["save"] == ""
    finally:
        r.close()
