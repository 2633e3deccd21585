"""The examples of docs/sampling.md run, against a fake vLLM on a real HTTP server and Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from _sampling_fake import FakeVLLM, Gen

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def vllm_url() -> Iterator[tuple[str, FakeVLLM]]:
    # aborted on v1, continued on v2: a swap between the attempts, the header over real HTTP
    fake = FakeVLLM([Gen([1, 2], "abort", version="v1"), Gen([3], "stop", version="v2")] * 20)
    server = uvicorn.Server(
        uvicorn.Config(
            fake.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", interface="asgi3"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", fake
    server.should_exit = True
    thread.join(5)


def test_sampling_doc_examples_run(
    vllm_url: tuple[str, FakeVLLM],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, fake = vllm_url
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "sampling.md").read_text(), flags=re.S)
    scope: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block, "docs/sampling.md", "exec"), scope)

    asyncio.run(scope["sample_once"](url, redis_url))
    out = capsys.readouterr().out
    assert "stop [1, 2, 3]" in out and "resumed at token 2" in out
    assert "tokens [0, 2) by version v1" in out and "tokens [2, 3) by version v2" in out
    assert asyncio.run(scope["chat_once"](url, redis_url)) == "<1><2><3>"
    asyncio.run(scope["sample_without_redis_access"](url, redis_url, "http://127.0.0.1:1"))
    assert "watcher [1, 2, 3]" in capsys.readouterr().out
    assert scope["sample_blocking"](url, redis_url) == [1, 2, 3]
    partial = [r for r in fake.requests if r.path == "/v1/completions"]
    assert len(partial) == 6
    from pausesvc.sampling import Boundary, SampleResult

    result = SampleResult(
        "completion",
        [1, 2, 3, 4],
        "",
        "stop",
        None,
        None,
        None,
        None,
        None,
        (Boundary(2, 5, 9, "abort", 2),),
        2,
        {},
    )
    assert scope["on_policy_mask"](result) == [1, 1, 0, 0]
    swapped = dataclasses.replace(result, versions=scope["SWAPPED"])
    assert scope["tokens_by"](swapped, "v1") == [1, 1, 0, 0]
    assert scope["tokens_by"](swapped, "v2") == [0, 0, 1, 1]
    pytest.importorskip("tinker")
    resp = asyncio.run(scope["tinker_sample"](url, redis_url))
    assert len(resp.sequences) == 2
    assert all(s.stop_reason in ("stop", "length") for s in resp.sequences)
    for seq in resp.sequences:  # each one whole on v2, or resumed across the swap (inflight)
        assert [s.version for s in seq.versions] in (["v2"], ["v1", "v2"])


def test_the_version_header_over_real_http_blocking_and_async(vllm_url: tuple[str, FakeVLLM]) -> None:
    """The header as a real server sends it, read by the blocking sampler (its deadline path
    streams the body in a worker thread) and the async one."""
    from _sampling_fake import NeverPaused, SyncNeverPaused

    from pausesvc.sampling import VersionSpan, sample_with_retry, sample_with_retry_sync

    url, _ = vllm_url
    body = {"model": "lora-a", "prompt": [1, 2, 3], "max_tokens": 8}
    expected = (VersionSpan(0, 2, "v1"), VersionSpan(2, 3, "v2"))
    with httpx.Client(timeout=10) as http:
        result = sample_with_retry_sync(http, url, body, waiter=SyncNeverPaused(), timeout=30)
    assert result.versions == expected

    async def run() -> tuple[VersionSpan, ...]:
        async with httpx.AsyncClient(timeout=10) as http:
            return (await sample_with_retry(http, url, body, waiter=NeverPaused())).versions

    assert asyncio.run(run()) == expected
