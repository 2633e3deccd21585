"""`pausesvc serve` exactly as the README runs it: no Redis configured -> embedded Redis."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _line(proc: subprocess.Popen[str], pattern: str, timeout: float = 15.0) -> re.Match[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{pattern!r} not printed; got {seen}")


def test_serve_starts_embedded_redis_and_prints_the_urls(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAUSESVC_")}
    env["XDG_DATA_HOME"] = str(tmp_path)  # its state goes here, not into the user's own
    proc = subprocess.Popen(
        [sys.executable, "-m", "pausesvc.cli", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        redis_url = _line(proc, r"export PAUSESVC_REDIS_URL=(\S+)").group(1)
        base = _line(proc, r"control service on (http://\S+)").group(1)
        assert _line(proc, r"dashboard: (http://\S+/)").group(1) == base + "/"
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.post(f"{base}/v1/pauses/lora-a").status_code == 200
        assert "<title>pausesvc" in httpx.get(base + "/").text
        # the printed URL is the one replicas and the CLI use
        out = subprocess.run(
            [sys.executable, "-m", "pausesvc.cli", "status", "--json"],
            env={**env, "PAUSESVC_REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert '"lora-a"' in out.stdout, out.stderr
        # an open event stream does not hold the shutdown up: it ends cleanly
        with httpx.stream("GET", f"{base}/v1/events", timeout=10) as stream:
            lines = stream.iter_lines()
            assert next(lines) == "retry: 2000"
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)  # the server closes the stream
            assert time.monotonic() - t0 < 2.5 and any("snapshot" in x for x in rest)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    assert proc.returncode == 0
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:  # the embedded Redis stopped with it
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_serve_rejects_bad_flags(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pausesvc.cli", "serve", "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
    )
    assert r.returncode == 2 and "port" in r.stderr and "Traceback" not in r.stderr
