"""`pausesvc demo`: a readable timeline of pauses, leases and waiting samplers (no setup needed)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import click

from pausesvc._exceptions import StaleTokenError
from pausesvc._settings import Settings
from pausesvc.client._async import AsyncPauseClient
from pausesvc.devtools.embedded import EmbeddedRedis

if TYPE_CHECKING:
    from pausesvc.protocol.models import Grant
    from pausesvc.watcher import PauseWatcher

__all__ = ["run_demo"]


class _Timeline:
    """Prints each step stamped with the milliseconds since the demo began; naps scale with
    ``speed`` so a faster demo keeps the same story."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.t0 = time.monotonic()

    def say(self, who: str, text: str) -> None:
        click.echo(f"{(time.monotonic() - self.t0) * 1000:8.1f} ms  {who:<12} {text}")

    async def nap(self, s: float) -> None:
        await asyncio.sleep(s / self.speed)


async def run_demo(settings: Settings, *, speed: float = 1.0) -> None:
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis().start()
        url = embedded.url
    tl = _Timeline(speed)
    tl.say(
        "demo",
        f"Redis at {url} (namespace {settings.namespace!r})"
        + (" - embedded, stops on exit" if embedded else ""),
    )
    try:
        async with (
            AsyncPauseClient(url, settings=settings) as ctl,
            AsyncPauseClient(url, settings=settings) as smp,
        ):
            await _story(tl, ctl, smp)
            await _summary(tl, ctl, url, settings.namespace)
    finally:
        if embedded is not None:
            embedded.cleanup()


async def _story(tl: _Timeline, ctl: AsyncPauseClient, smp: AsyncPauseClient) -> None:
    """Three samplers share one watcher while a controller pauses and resumes under them."""
    watcher = await smp.watcher()
    await watcher.wait_synced(5)
    tl.say("sampler", f"one subscription, in sync at revision {watcher.revision}")
    tasks = [
        asyncio.create_task(_sampler(tl, smp, watcher, i, a))
        for i, a in enumerate(["lora-a", "lora-a", "lora-b"])
    ]
    await tl.nap(0.2)
    await _two_holders(tl, ctl)
    await tl.nap(0.2)
    g3 = await ctl.pause("lora-b", holder="crashy-trainer", ttl=1.0 / tl.speed)
    tl.say("crashy", f"paused lora-b with a {1.0 / tl.speed:.1f}s lease, then 'crashed'")
    await asyncio.gather(*tasks)
    await _lease_expiry(tl, ctl, smp, g3)


async def _sampler(tl: _Timeline, smp: AsyncPauseClient, watcher: PauseWatcher, i: int, adapter: str) -> None:
    """Samples twice, each time first waiting (on the watcher, no polling) while paused."""
    for _ in range(2):
        if watcher.is_paused(adapter):
            tl.say(f"sampler-{i}", f"{adapter} is paused: waiting (no polling)")
            t = time.monotonic()
            await smp.wait_unpaused(adapter, timeout=30)
            tl.say(
                f"sampler-{i}",
                f"{adapter} resumed: woke {1000 * (time.monotonic() - t):.1f} ms later",
            )
        tl.say(f"sampler-{i}", f"sampling from {adapter}")
        await tl.nap(0.6)


async def _two_holders(tl: _Timeline, ctl: AsyncPauseClient) -> None:
    """Two holders pause lora-a; it resumes only when both let go, and a stale token is fenced."""
    g1 = await ctl.pause("lora-a", holder="trainer-1", reason="weight sync")
    tl.say("trainer-1", f"paused lora-a (token {g1.token})")
    g2 = await ctl.pause("lora-a", holder="evaluator", reason="eval snapshot")
    tl.say("evaluator", f"paused lora-a too (token {g2.token}): two holders now")
    await tl.nap(0.5)
    await ctl.resume("lora-a", holder="trainer-1", token=g1.token)
    tl.say("trainer-1", "released its hold: lora-a stays paused (evaluator still holds)")
    with contextlib.suppress(StaleTokenError):
        await ctl.resume("lora-a", holder="evaluator", token=g1.token)
    tl.say("stale-ctl", f"tried to resume with old token {g1.token}: refused (fencing)")
    await tl.nap(0.3)
    await ctl.resume("lora-a", holder="evaluator", token=g2.token)
    tl.say("evaluator", "released: lora-a resumes, waiters wake")


async def _lease_expiry(tl: _Timeline, ctl: AsyncPauseClient, smp: AsyncPauseClient, grant: Grant) -> None:
    """Nobody resumes the crashed trainer's pause: its lease running out does."""
    tl.say("sampler-2", "lora-b is paused: waiting for the lease to run out")
    t = time.monotonic()
    await smp.wait_unpaused("lora-b", timeout=30)
    tl.say("sampler-2", f"lora-b resumed by lease expiry: woke after {time.monotonic() - t:.2f}s")
    state = await ctl.get("lora-b")
    tl.say(
        "demo",
        f"lora-b after the lease: {'paused' if state else 'not paused'} "
        f"(token {grant.token} expired exactly like a resume)",
    )


async def _summary(tl: _Timeline, ctl: AsyncPauseClient, url: str, namespace: str) -> None:
    snap = await ctl.snapshot()
    tl.say("demo", f"final revision {snap.revision}; paused: {sorted(snap.paused) or 'none'}")
    tl.say(
        "demo",
        f"read it yourself: redis-cli -u {url} HGETALL 'pausesvc:{{{namespace}}}:paused'",
    )
