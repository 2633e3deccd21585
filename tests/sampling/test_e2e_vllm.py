"""End to end through a real CPU vLLM with the pausesvc gate: pause, in-place weight swap, resume.

Greedy decoding makes it token-exact: before the boundary the sample must equal the
uninterrupted run of the old weights; from the boundary on, what the NEW weights produce from
the same prefix. Needs the vLLM venv (``tests/e2e/vllm_venv.sh --install-project .``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _wait import ATTEMPTS, attempts

from pausesvc import AsyncPauseClient, EmbeddedRedis
from pausesvc.sampling import sample_with_retry

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("PAUSESVC_VLLM_VENV", Path.home() / ".cache" / "pausesvc" / "vllm-venv-0.32.0"))
PY = VENV / "bin" / "python"
TINY = Path(os.environ.get("PAUSESVC_TINY_DIR", Path.home() / ".cache" / "pausesvc" / "tiny"))
N = 320
PROMPT = [5, 17, 42, 99, 123, 7, 300]


def _have_vllm() -> bool:
    if not PY.exists():
        return False
    probe = subprocess.run([str(PY), "-c", "import vllm, pausesvc_vllm"], capture_output=True, timeout=300)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def fleet(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not _have_vllm():
        why = f"no vLLM venv with pausesvc_vllm at {VENV} (tests/e2e/vllm_venv.sh)"
        if os.environ.get("PAUSESVC_REQUIRE_VLLM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    subprocess.run(
        [str(PY), str(ROOT / "tests" / "e2e" / "build_tiny.py"), str(TINY)],
        check=True,
        timeout=900,
        capture_output=True,
    )
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from vllm_server import VllmServer, free_port

    ns = f"e2e{uuid.uuid4().hex[:8]}"
    # the engine's threads on core 0 only: a CPU engine spinning on both cores starves this
    # test process (its watcher once missed PONGs for 2 s) while the sample decodes
    env = {"PAUSESVC_REDIS_URL": redis_server.url, "PAUSESVC_NAMESPACE": ns, "VLLM_CPU_OMP_THREADS_BIND": "0"}
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with VllmServer(
        PY,
        TINY / "model",
        {"lora-a": TINY / "lora-a"},
        port=free_port(),
        env_extra=env,
        middleware=["pausesvc_vllm.PauseGateMiddleware"],
        log_path=log,
    ) as srv:
        srv.wait_healthy()
        yield {"url": srv.url, "redis_url": redis_server.url, "namespace": ns}


async def _generated(http: httpx.AsyncClient, url: str) -> float:
    """The engine's generation-token counter (updated every engine step)."""
    text = (await http.get(url + "/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:generation_tokens_total")
    )


async def _greedy(http: httpx.AsyncClient, url: str, prompt: list[int], n: int) -> list[int]:
    r = await http.post(
        url + "/v1/completions",
        json={
            "model": "lora-a",
            "prompt": prompt,
            "max_tokens": n,
            "temperature": 0,
            "ignore_eos": True,
            "return_token_ids": True,
            "logprobs": 0,
        },
    )
    assert r.status_code == 200, r.text
    ids: list[int] = r.json()["choices"][0]["token_ids"]
    return ids


async def _aborted(http: httpx.AsyncClient, url: str, revision: int) -> list[str]:
    """What the gate aborted for the pause at ``revision`` (it records the drain just after
    acknowledging it)."""
    async with asyncio.timeout(10):
        while True:
            drained = (await http.get(url + "/pausesvc/status")).json()["drained"].get("lora-a")
            if drained is not None and drained["revision"] >= revision:
                return list(drained["aborted"])
            await asyncio.sleep(0.02)


async def _pause_mid_sample(
    http: httpx.AsyncClient, url: str, request: dict[str, Any], pauses: AsyncPauseClient
) -> tuple[asyncio.Task[Any], Any]:
    """Start the sample; pause (with drain) once the engine has decoded a few of its tokens (a
    fixed sleep raced a fast machine, where 320 tokens took < 0.8 s)."""
    before = await _generated(http, url)
    task = asyncio.create_task(sample_with_retry(http, url, request, waiter=pauses, timeout=300))
    async with asyncio.timeout(60):
        while await _generated(http, url) < before + 8 and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    grant = await pauses.pause("lora-a", reason="weight sync", drain=True, timeout=30)
    return task, grant


async def test_a_sample_survives_pause_swap_resume(fleet: dict[str, Any]) -> None:
    url = fleet["url"]
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(300, connect=5)) as http,
        AsyncPauseClient(fleet["redis_url"], namespace=fleet["namespace"], holder="trainer") as pauses,
    ):
        old = await _greedy(http, url, PROMPT, N)  # also warms up the logprobs path
        assert len(old) == N
        request = {
            "model": "lora-a",
            "prompt": PROMPT,
            "max_tokens": N,
            "temperature": 0,
            "ignore_eos": True,
            "logprobs": 0,
        }
        async for _attempt in attempts():
            task, grant = await _pause_mid_sample(http, url, request, pauses)
            aborted = await _aborted(http, url, grant.revision)
            if not task.done() or aborted:
                break
            # the whole sample was decoded before the pause reached the gate (a test process
            # starved of CPU for a moment): nothing to judge, try again
            await pauses.resume("lora-a", token=grant.token)
        assert aborted, f"the pause never landed mid-sample in {ATTEMPTS} tries"
        swap = await http.post(
            url + "/v1/load_lora_adapter",
            json={"lora_name": "lora-a", "lora_path": str(TINY / "lora-a2"), "load_inplace": True},
        )
        assert swap.status_code == 200, swap.text
        await asyncio.sleep(0.3)
        if task.done():  # the gate aborted it: it must wait for the resume
            res = task.result()
            pytest.fail(
                f"the sample finished while its adapter was paused: attempts {res.attempts}, "
                f"finish {res.finish_reason}, boundaries {res.boundaries}; the gate aborted {aborted}"
            )
        await pauses.resume("lora-a", token=grant.token)
        result = await task
        assert result.finish_reason == "length" and len(result.tokens) == N
        assert len(result.boundaries) == 1, result.boundaries
        b = result.boundaries[0]
        k = b.index
        assert 0 < k < N, k
        assert b.pause_revision == grant.state.pause_revision
        assert result.tokens[:k] == old[:k]
        new = await _greedy(http, url, PROMPT + result.tokens[:k], N - k)
        assert result.tokens[k:] == new
        assert result.tokens[k:] != old[k:], "the swap did not change the output"
        assert result.logprobs is not None and len(result.logprobs) == N
