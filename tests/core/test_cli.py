"""The CLI as a user runs it: real processes, real Redis, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from pausesvc import PauseClient


def run(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PAUSESVC_")}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pausesvc", *args], capture_output=True, text=True, env=e, timeout=timeout
    )


@pytest.fixture
def env(redis_url: str, namespace: str) -> dict[str, str]:
    return {"PAUSESVC_REDIS_URL": redis_url, "PAUSESVC_NAMESPACE": namespace}


def test_pause_status_resume(env: dict[str, str]) -> None:
    p = run(["pause", "lora-a", "--holder", "trainer", "--reason", "weight sync", "--ttl", "60"], env=env)
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    assert re.fullmatch(r"[0-9]+-[0-9a-f]+", token), token  # opaque: '<revision>-<nonce>'
    s = run(["status"], env=env)
    assert "lora-a" in s.stdout and "trainer" in s.stdout and "weight sync" in s.stdout
    s = run(["status", "lora-a", "--json"], env=env)
    data = json.loads(s.stdout)
    assert data["paused"] and data["state"]["holders"]["trainer"]["token"] == token
    forged = f"{token.split('-')[0]}-000000000000"  # same revision, another incarnation
    stale = run(["resume", "lora-a", "--holder", "trainer", "--token", forged], env=env)
    assert stale.returncode == 4 and "stale" in stale.stderr
    assert len(stale.stderr.strip().splitlines()) == 1 and "Traceback" not in stale.stderr
    notholder = run(["resume", "lora-a", "--holder", "other"], env=env)
    assert notholder.returncode == 4 and "holds no pause" in notholder.stderr
    r = run(["resume", "lora-a", "--holder", "trainer", "--token", token, "--json"], env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["released"] is True
    assert "not paused" in run(["status", "lora-a"], env=env).stdout


def test_flags_override_environment(redis_url: str, namespace: str) -> None:
    p = run(["--redis-url", redis_url, "--namespace", namespace, "pause", "x", "--json"])
    assert p.returncode == 0 and json.loads(p.stdout)["name"] == "x"
    with PauseClient(redis_url, namespace=namespace) as c:
        assert c.is_paused("x")


def test_wait_returns_on_resume_and_times_out(env: dict[str, str], redis_url: str, namespace: str) -> None:
    assert run(["pause", "a"], env=env).returncode == 0
    t = run(["wait", "a", "--timeout", "0.3"], env=env)
    assert t.returncode == 3 and "still paused" in t.stderr
    e = {k: v for k, v in os.environ.items() if not k.startswith("PAUSESVC_")} | env
    proc = subprocess.Popen(
        [sys.executable, "-m", "pausesvc", "wait", "a", "--timeout", "20"],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    assert proc.poll() is None
    with PauseClient(redis_url, namespace=namespace) as c:
        c.resume("a")
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


def test_watch_prints_changes(env: dict[str, str], redis_url: str, namespace: str) -> None:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PAUSESVC_")} | env
    proc = subprocess.Popen(
        [sys.executable, "-m", "pausesvc", "watch", "--json", "--count", "2"],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with PauseClient(redis_url, namespace=namespace) as c:
        channel = c.keys.events
        deadline = time.monotonic() + 30
        while c.redis.pubsub_numsub(channel)[0][1] < 1:  # the watcher has subscribed
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.2)  # ... and read its snapshot
        c.pause("w")
        c.resume("w")
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [(x["op"], x["paused"]) for x in lines] == [("pause", True), ("resume", False)]


@pytest.mark.parametrize(
    "args",
    [
        ["pause", "bad name"],
        ["pause", ""],
        ["pause", "a", "--ttl", "abc"],
        ["pause", "a", "--ttl", "-3"],
        ["pause", "a", "--holder", "has space"],
        ["pause", "a", "--timeout", "5"],  # a timeout without --drain would be ignored
        ["resume", "a", "--token", "x"],
        ["resume", "a", "--token", "0"],
        ["wait", "a", "--timeout", "-1"],
        ["status", "bad\tname"],
        ["watch", "--count", "0"],
        ["nosuchcommand"],
        ["pause"],
    ],
)
def test_invalid_input_exit_2_one_line_and_nothing_changes(
    env: dict[str, str], redis_url: str, namespace: str, args: list[str]
) -> None:
    with PauseClient(redis_url, namespace=namespace) as c:
        before = c.snapshot().revision
    p = run(args, env=env)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith("pausesvc: error:")
    with PauseClient(redis_url, namespace=namespace) as c:
        assert c.snapshot().revision == before


def test_redis_unreachable_exit_5() -> None:
    from pausesvc.devtools.embedded import free_port

    p = run(["--redis-url", f"redis://127.0.0.1:{free_port()}/0", "status"])
    assert p.returncode == 5 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_no_url_and_bad_url_exit_2() -> None:
    p = run(["status"])
    assert p.returncode == 2 and "PAUSESVC_REDIS_URL" in p.stderr
    p = run(["--redis-url", "http://x", "status"])
    assert p.returncode == 2 and "redis_url" in p.stderr
    p = run(["--namespace", "a b", "status"])
    assert p.returncode == 2 and "namespace" in p.stderr


def test_help_documents_exit_codes() -> None:
    p = run(["--help"])
    assert p.returncode == 0
    for code in ("0", "2", "3", "4", "5"):
        assert f"  {code}  " in p.stdout


def test_demo_runs_with_nothing_configured() -> None:
    p = run(["demo", "--speed", "4"], timeout=60)
    assert p.returncode == 0, p.stderr
    assert "refused (fencing)" in p.stdout and "lease expiry" in p.stdout


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://127.0.0.1:99999/0", "Port out of range"),
        ("redis://[::1", "Invalid IPv6 URL"),
        ("redis://127.0.0.1:6390/abc", "the database must be a number"),
        ("redis://:secret@127.0.0.1:0/0", "port 0"),
    ],
)
@pytest.mark.parametrize("command", [["status"], ["serve", "--port", "0"]])
def test_a_malformed_redis_url_is_one_line_and_exit_2(url: str, says: str, command: list[str]) -> None:
    """Not redis-py's ValueError traceback (exit 1), nor a quiet database 0; the password
    never shows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAUSESVC_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pausesvc", "--redis-url", url, *command]
        if command[0] == "status"
        else [sys.executable, "-m", "pausesvc", *command, "--redis-url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert says in proc.stderr and "Traceback" not in proc.stderr and "secret" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
