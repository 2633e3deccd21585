"""End-to-end weight versions (issue 10) on the package's two real CPU vLLM replicas.

The trainer makes NO HTTP call to any replica: ``pausesvc swap`` (CLI) and ``client.swap``
set the desired version in Redis; each replica's gate loads it into its own engine. The
prefix cache is on (``--enable-prefix-caching``, 32-token blocks) and the shared prompt spans
ten blocks, so a replica that reused blocks computed with the old weights would answer with
the old weights' continuation. The reference for "B's weights from scratch" is the same
weights loaded under a name no request used before (a cold cache).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from pausesvc import AsyncPauseClient, SwapError
from pausesvc.sampling import sample_with_retry

from ._fleet import PY, VENV, Fleet, until

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not PY.exists(), reason=f"no vLLM venv at {VENV} (tests/e2e/vllm_venv.sh)"),
]

#: 320 tokens: ten 32-token KV blocks of shared prefix
LONG = [(i * 7919 + 13) % 2000 + 5 for i in range(320)]
N = 24
HEADER = "x-pausesvc-adapter-version"


async def _greedy(http: httpx.AsyncClient, url: str, model: str, prompt: list[int] = LONG) -> httpx.Response:
    return await http.post(
        url + "/v1/completions",
        json={
            "model": model,
            "prompt": prompt,
            "max_tokens": N,
            "temperature": 0,
            "ignore_eos": True,
            "return_token_ids": True,
        },
    )


def _ids(r: httpx.Response) -> list[int]:
    assert r.status_code == 200, r.text
    ids: list[int] = r.json()["choices"][0]["token_ids"]
    return ids


async def _metric(http: httpx.AsyncClient, url: str, name: str) -> float:
    text = (await http.get(url + "/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def _reference(http: httpx.AsyncClient, url: str, name: str, path: str) -> list[int]:
    """What ``path``'s weights produce from scratch: loaded under a fresh name (no desired
    version: an old-style direct load, which the gate passes on)."""
    r = await http.post(url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
    assert r.status_code == 200, r.text
    return _ids(await _greedy(http, url, name))


def _cli(fleet: Fleet, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PAUSESVC_REDIS_URL": fleet.redis_url, "PAUSESVC_NAMESPACE": fleet.namespace}
    return subprocess.run(
        [sys.executable, "-m", "pausesvc", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def refs() -> dict[str, list[int]]:
    return {}


async def _loaded_everywhere(pc: AsyncPauseClient, name: str, version: str) -> bool:
    replicas = await pc.replicas()
    return len(replicas) == 2 and all(
        (r.get("versions") or {}).get(name, {}).get("version") == version
        and (r.get("versions") or {}).get(name, {}).get("status") == "loaded"
        for r in replicas
    )


# -- 1. swap moves every replica, no call to any replica, no stale prefix-cache block ----------
async def test_swap_moves_every_replica_and_no_old_block_is_reused(
    fleet: Fleet, pc: AsyncPauseClient, http: httpx.AsyncClient, refs: dict[str, Any]
) -> None:
    tiny = fleet.tiny
    await until(lambda: _n_live(pc, 2), timeout=60)
    for u in fleet.urls:
        refs[u] = await _reference(http, u, "ref-b", str(tiny / "lora-a2"))
    # lora-t exists on no replica at startup: the first swap creates it everywhere
    first = await pc.swap("lora-t", "A", str(tiny / "lora-a"), timeout=120)
    assert sorted(first.loaded) == sorted(r["id"] for r in await pc.replicas())
    old = {}
    for u in fleet.urls:
        hits = await _metric(http, u, "vllm:prefix_cache_hits_total")
        r1, r2 = await _greedy(http, u, "lora-t"), await _greedy(http, u, "lora-t")
        assert r1.headers.get(HEADER) == "A" and _ids(r1) == _ids(r2)
        # the shared prompt's blocks are cached under the A weights and reused
        assert await _metric(http, u, "vllm:prefix_cache_hits_total") > hits
        old[u] = _ids(r1)
        assert old[u] != refs[u], "A's and B's weights must answer differently for the test to mean anything"

    b = str(tiny / "lora-a2")
    done = _cli(fleet, "swap", "lora-t", "--version", "B", "--path", b, "--timeout", "120")
    assert done.returncode == 0, (done.stdout, done.stderr)

    for u in fleet.urls:
        r = await _greedy(http, u, "lora-t")
        assert r.headers.get(HEADER) == "B", r.headers
        assert _ids(r) == refs[u], "a replica served lora-t with blocks (or weights) of version A"
    assert await _loaded_everywhere(pc, "lora-t", "B")
    assert (await pc.get_version("lora-t")).version == "B"  # type: ignore[union-attr]
    assert await pc.get("lora-t") is None, "the swap's pause was released"
    listing = _cli(fleet, "replicas")
    assert listing.returncode == 0 and "lora-t" in listing.stdout and "B" in listing.stdout, listing


# -- 2. a load that fails keeps the adapter held on the replica, and names it ----------------------
async def test_a_failed_load_holds_the_adapter_and_is_named(
    fleet: Fleet, pc: AsyncPauseClient, http: httpx.AsyncClient, refs: dict[str, Any]
) -> None:
    if not refs:
        pytest.skip("needs test 1's references")
    with pytest.raises(SwapError) as info:
        await pc.swap("lora-t", "C", "/nonexistent/lora-c", timeout=20)
    named = {**info.value.failed, **info.value.missing}
    assert sorted(named) == sorted(r["id"] for r in await pc.replicas()), info.value
    assert await pc.get("lora-t") is None, "the fleet-wide pause is released; replicas hold lora-t locally"
    u = fleet.urls[0]
    task = asyncio.create_task(_greedy(http, u, "lora-t"))
    await until(lambda: _held(http, u, "lora-t"), timeout=30)
    assert not task.done(), "a replica served lora-t although it could not load its desired version"
    st = (await http.get(u + "/pausesvc/status")).json()["versions"]
    assert st["pending"] == {"lora-t": "C"} and st["errors"]["lora-t"]["attempts"] >= 1, st
    # the trainer fixes it: the held request goes on with the new weights, never with B's
    await pc.swap("lora-t", "B2", str(fleet.tiny / "lora-a2"), timeout=120)
    r = await asyncio.wait_for(task, 120)
    assert r.headers.get(HEADER) == "B2" and _ids(r) == refs[u]


# -- 3. direct loads of a managed adapter are refused; unmanaged ones pass --------------------------
async def test_a_direct_load_of_a_managed_adapter_is_refused(fleet: Fleet, http: httpx.AsyncClient) -> None:
    u = fleet.urls[0]
    r = await http.post(
        u + "/v1/load_lora_adapter",
        json={"lora_name": "lora-t", "lora_path": str(fleet.tiny / "lora-a"), "load_inplace": True},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_managed", r.text


# -- 4. a replica restarted after a swap serves the swapped weights, not its startup path -----------
async def test_a_restarted_replica_loads_the_desired_version_first(
    fleet: Fleet, pc: AsyncPauseClient, http: httpx.AsyncClient, refs: dict[str, Any]
) -> None:
    if not refs:
        pytest.skip("needs test 1's references")
    # lora-a's startup path (--lora-modules lora-a=.../lora-a) holds A's weights
    await pc.swap("lora-a", "a2", str(fleet.tiny / "lora-a2"), timeout=120)
    srv = fleet.servers[1]
    await asyncio.to_thread(srv.restart, 400)
    for model, version in (("lora-a", "a2"), ("lora-t", "B2")):
        r = await _greedy(http, srv.url, model)
        assert r.headers.get(HEADER) == version, (model, r.headers)
        assert _ids(r) == refs[srv.url], f"the restarted replica served {model} from its startup weights"
    await until(lambda: _n_live(pc, 2), timeout=60)


async def _n_live(pc: AsyncPauseClient, n: int) -> bool:
    return len(await pc.replicas()) == n


async def _held(http: httpx.AsyncClient, url: str, adapter: str) -> bool:
    st = (await http.get(url + "/pausesvc/status")).json()
    return int(st["stats"]["held"].get(adapter, 0)) >= 1


# -- 5. a sample resumed across a swap says which weights produced which tokens ---------------------
async def test_a_sample_resumed_across_a_swap_reports_its_version_spans(
    fleet: Fleet, pc: AsyncPauseClient, http: httpx.AsyncClient, refs: dict[str, Any]
) -> None:
    if not refs:
        pytest.skip("needs test 1's references")
    u = fleet.urls[0]
    request = {
        "model": "lora-t",
        "prompt": LONG[:7],
        "max_tokens": 400,
        "temperature": 0,
        "ignore_eos": True,
    }
    before = await _metric(http, u, "vllm:generation_tokens_total")
    task = asyncio.create_task(sample_with_retry(http, u, request, waiter=pc, timeout=300))
    async with asyncio.timeout(60):  # the sample is being decoded with B2's weights
        while await _metric(http, u, "vllm:generation_tokens_total") < before + 8:
            assert not task.done(), "the sample finished before the swap could land"
            await asyncio.sleep(0.005)
    await pc.swap("lora-t", "A3", str(fleet.tiny / "lora-a"), timeout=120)
    result = await asyncio.wait_for(task, 120)
    assert len(result.tokens) == 400 and len(result.boundaries) == 1, result.boundaries
    assert [s.version for s in result.versions] == ["B2", "A3"], result.versions
    assert result.versions[1].start == result.boundaries[0].index
    assert (result.versions[0].start, result.versions[-1].end) == (0, 400)
