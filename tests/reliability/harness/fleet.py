"""Replica processes (uvicorn + gate + fake engine) on 127.0.0.1, each in its own process group.

Every process started here is stopped by :meth:`Fleet.close` (SIGKILL to the group if SIGTERM is
not enough), which the fixtures call from a finalizer, so a failing test leaks nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pausesvc.devtools.embedded import free_port

TESTS_DIR = Path(__file__).resolve().parents[2]
REPO = TESTS_DIR.parent

#: Fast failure detection for fault tests (the defaults are 1 s / 5 s).
FAST_ENV = {
    "PAUSESVC_HEARTBEAT_INTERVAL_S": "0.2",
    "PAUSESVC_REPLICA_TIMEOUT_S": "1.5",
    "PAUSESVC_RESYNC_INTERVAL_S": "2",
    "PAUSESVC_HEALTH_CHECK_INTERVAL_S": "0.4",
    # a replica fences itself after 0.8 s without a proven round trip; the barrier drops it
    # only after 1.5 s (>= 0.8 + 0.3): the inequality Settings enforces
    "PAUSESVC_FENCE_BOUND_S": "0.8",
    "PAUSESVC_FENCE_MARGIN_S": "0.3",
    "PAUSESVC_RECONNECT_MAX_BACKOFF_S": "0.5",
    "PAUSESVC_DRAIN_TIMEOUT_S": "20",
}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    stderr: Path
    alive: bool = True
    stopped: bool = False  # SIGSTOPped

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Fleet:
    redis_url: str
    namespace: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    interval: float = 0.01
    replicas: list[Replica] = field(default_factory=list)

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAUSESVC_")}
        env.update(FAST_ENV)
        env.update(self.env)
        env.update(extra or {})
        env["PAUSESVC_REDIS_URL"] = self.redis_url
        env["PAUSESVC_NAMESPACE"] = self.namespace
        env["PYTHONPATH"] = os.pathsep.join(
            [str(TESTS_DIR), str(REPO), str(REPO / "vllm_plugin"), env.get("PYTHONPATH", "")]
        )
        return env

    def start(
        self,
        n: int = 1,
        *,
        versions: dict[str, int] | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> list[Replica]:
        new = []
        for _ in range(n):
            name = f"r{len(self.replicas) + 1}"
            port = free_port()
            log = self.workdir / f"tokens-{name}.log"
            err = self.workdir / f"replica-{name}.err"
            with open(err, "ab") as errf:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "reliability.harness.replica",
                        "--port",
                        str(port),
                        "--name",
                        name,
                        "--log",
                        str(log),
                        "--interval",
                        str(self.interval),
                        "--versions",
                        json.dumps(versions or {}),
                    ],
                    env=self._env(env),
                    stdout=errf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=str(REPO),
                )
            rep = Replica(name, port, proc, log, err)
            self.replicas.append(rep)
            new.append(rep)
        if wait:
            for rep in new:
                self.wait_ready(rep)
        return new

    def wait_ready(self, rep: Replica, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if rep.proc.poll() is not None:
                raise RuntimeError(f"replica {rep.name} exited: {rep.stderr.read_text()[-2000:]}")
            try:
                st = httpx.get(rep.url + "/pausesvc/status", timeout=1.0).json()
                if st.get("synced_once"):
                    return st  # type: ignore[no-any-return]
                last = st
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"replica {rep.name} not ready in {timeout}s: {last}")

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive and not r.stopped]

    def signal(self, rep: Replica, sig: int) -> None:
        with _suppress_missing():
            os.killpg(rep.proc.pid, sig)
        if sig == signal.SIGKILL:
            rep.proc.wait(timeout=10)
            rep.alive = False
        elif sig == signal.SIGSTOP:
            rep.stopped = True
        elif sig == signal.SIGCONT:
            rep.stopped = False

    def kill(self, rep: Replica) -> None:
        self.signal(rep, signal.SIGKILL)

    def stop(self, rep: Replica) -> None:
        """Graceful stop (SIGTERM: lifespan shutdown leaves the registry), else SIGKILL."""
        if rep.proc.poll() is None:
            with _suppress_missing():
                os.killpg(rep.proc.pid, signal.SIGCONT)
                os.killpg(rep.proc.pid, signal.SIGTERM)
            try:
                rep.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                with _suppress_missing():
                    os.killpg(rep.proc.pid, signal.SIGKILL)
                rep.proc.wait(timeout=10)
        rep.alive = False

    def close(self) -> None:
        for rep in self.replicas:
            self.stop(rep)

    def stderr_tail(self) -> str:
        return "\n".join(
            f"--- {r.name}\n{r.stderr.read_text(errors='replace')[-3000:]}"
            for r in self.replicas
            if r.stderr.exists()
        )


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, e: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, ProcessLookupError)
