"""The dashboard in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._replica import FakeReplica
from .conftest import Live

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("PAUSESVC_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class ReplicaThread:
    """FakeReplicas running on their own event loop, for a synchronous browser test."""

    def __init__(self, live: Live, ids: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self._main(live, ids),), daemon=True
        )

    async def _main(self, live: Live, ids: list[str]) -> None:
        self.stop = asyncio.Event()
        reps = [
            FakeReplica(live.redis_url, live.namespace, i, aborted={"org/lora-b": [f"{i}-req"]}) for i in ids
        ]
        for r in reps:
            await r.__aenter__()
        self.ready.set()
        await self.stop.wait()
        for r in reps:
            await r.__aexit__(None, None, None)

    def __enter__(self) -> ReplicaThread:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.loop.close()


def _wait_row(page: Any, name: str, present: bool, timeout_s: float) -> float:
    t0 = time.monotonic()
    sel = f'#paused tr[data-name="{name}"]'
    page.wait_for_selector(sel, state="attached" if present else "detached", timeout=timeout_s * 1000)
    return time.monotonic() - t0


def test_page_follows_the_cli_and_resumes(browser: Any, live: Live) -> None:
    page = browser.new_page()
    page.goto(live.url + "/")
    page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=10_000)
    live.cli("pause", "lora-x", "--holder", "cli", "--reason", "weight swap", "--ttl", "120")
    took = _wait_row(page, "lora-x", True, 1.0)  # within a second of the CLI returning
    row = page.locator('#paused tr[data-name="lora-x"]')
    assert "cli" in row.inner_text() and "weight swap" in row.inner_text()
    assert page.locator("#events li").first.inner_text().endswith("lora-x by cli → paused")

    row.locator("button.resume").click()
    _wait_row(page, "lora-x", False, 2.0)
    with live.client() as c:
        assert c.get("/v1/pauses").json()["paused"] == {}
    assert took < 1.0
    page.close()


def test_resume_button_needs_the_token_when_auth_is_on(browser: Any, make_live: Callable[..., Live]) -> None:
    live = make_live(api_token="tok-123")
    live.cli("pause", "guarded")
    page = browser.new_page()
    page.goto(live.url + "/")
    _wait_row(page, "guarded", True, 5.0)
    page.locator('#paused tr[data-name="guarded"] button.resume').click()
    page.wait_for_function("document.getElementById('msg').textContent.includes('token')", timeout=5_000)
    assert page.locator('#paused tr[data-name="guarded"]').count() == 1  # still paused
    page.fill("#token", "tok-123")
    page.click("#save-token")
    page.locator('#paused tr[data-name="guarded"] button.resume').click()
    _wait_row(page, "guarded", False, 3.0)
    page.close()


def test_screenshot_for_the_docs(browser: Any, live: Live) -> None:
    with (
        ReplicaThread(live, ["vllm-0:pid-4242", "vllm-1:pid-4243"]),
        httpx.Client(base_url=live.url, timeout=10) as c,
    ):
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(live.url + "/")
        page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=10_000)
        c.post(
            "/v1/pauses/org%2Flora-b",
            json={"holder": "trainer-7", "reason": "weight swap", "ttl_s": 90, "drain": True},
        )
        c.post("/v1/pauses/lora-a", json={"holder": "trainer-3", "reason": "eval", "ttl_s": 300})
        c.post("/v1/pauses/lora-a", json={"holder": "ops", "reason": "investigating"})
        c.post("/v1/pauses/lora-c", json={"holder": "trainer-3"})
        c.delete("/v1/pauses/lora-c", params={"holder": "trainer-3"})
        _wait_row(page, "lora-a", True, 3.0)
        page.wait_for_selector('#replicas tr[data-replica="vllm-1:pid-4243"]', timeout=5_000)
        page.wait_for_function(
            "document.getElementById('replicas').innerText.includes('(1 aborted)')", timeout=5_000
        )
        page.wait_for_timeout(300)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert "2 live" in page.inner_text("#nrep")
        assert "(1 aborted)" in page.inner_text("#replicas")
        page.close()
