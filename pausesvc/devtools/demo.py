"""`pausesvc demo`: a readable timeline of pauses, leases and waiting samplers (no setup needed)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import click

from pausesvc._exceptions import StaleTokenError
from pausesvc._settings import Settings
from pausesvc.client._async import AsyncPauseClient
from pausesvc.devtools.embedded import EmbeddedRedis

__all__ = ["run_demo"]


async def run_demo(settings: Settings, *, speed: float = 1.0) -> None:
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis().start()
        url = embedded.url
    t0 = time.monotonic()

    def say(who: str, text: str) -> None:
        click.echo(f"{(time.monotonic() - t0) * 1000:8.1f} ms  {who:<12} {text}")

    async def nap(s: float) -> None:
        await asyncio.sleep(s / speed)

    say(
        "demo",
        f"Redis at {url} (namespace {settings.namespace!r})"
        + (" - embedded, stops on exit" if embedded else ""),
    )
    try:
        async with (
            AsyncPauseClient(url, settings=settings) as ctl,
            AsyncPauseClient(url, settings=settings) as smp,
        ):
            watcher = await smp.watcher()
            await watcher.wait_synced(5)
            say("sampler", f"one subscription, in sync at revision {watcher.revision}")

            async def sampler(i: int, adapter: str) -> None:
                for _ in range(2):
                    if watcher.is_paused(adapter):
                        say(f"sampler-{i}", f"{adapter} is paused: waiting (no polling)")
                        t = time.monotonic()
                        await smp.wait_unpaused(adapter, timeout=30)
                        say(
                            f"sampler-{i}",
                            f"{adapter} resumed: woke {1000 * (time.monotonic() - t):.1f} ms later",
                        )
                    say(f"sampler-{i}", f"sampling from {adapter}")
                    await nap(0.6)

            tasks = [asyncio.create_task(sampler(i, a)) for i, a in enumerate(["lora-a", "lora-a", "lora-b"])]
            await nap(0.2)
            g1 = await ctl.pause("lora-a", holder="trainer-1", reason="weight sync")
            say("trainer-1", f"paused lora-a (token {g1.token})")
            g2 = await ctl.pause("lora-a", holder="evaluator", reason="eval snapshot")
            say("evaluator", f"paused lora-a too (token {g2.token}): two holders now")
            await nap(0.5)
            await ctl.resume("lora-a", holder="trainer-1", token=g1.token)
            say("trainer-1", "released its hold: lora-a stays paused (evaluator still holds)")
            with contextlib.suppress(StaleTokenError):
                await ctl.resume("lora-a", holder="evaluator", token=g1.token)
            say("stale-ctl", f"tried to resume with old token {g1.token}: refused (fencing)")
            await nap(0.3)
            await ctl.resume("lora-a", holder="evaluator", token=g2.token)
            say("evaluator", "released: lora-a resumes, waiters wake")
            await nap(0.2)
            g3 = await ctl.pause("lora-b", holder="crashy-trainer", ttl=1.0 / speed)
            say("crashy", f"paused lora-b with a {1.0 / speed:.1f}s lease, then 'crashed'")
            await asyncio.gather(*tasks)
            say("sampler-2", "lora-b is paused: waiting for the lease to run out")
            t = time.monotonic()
            await smp.wait_unpaused("lora-b", timeout=30)
            say("sampler-2", f"lora-b resumed by lease expiry: woke after {time.monotonic() - t:.2f}s")
            state = await ctl.get("lora-b")
            say(
                "demo",
                f"lora-b after the lease: {'paused' if state else 'not paused'} "
                f"(token {g3.token} expired exactly like a resume)",
            )
            snap = await ctl.snapshot()
            say("demo", f"final revision {snap.revision}; paused: {sorted(snap.paused) or 'none'}")
            say(
                "demo",
                f"read it yourself: redis-cli -u {url} HGETALL 'pausesvc:{{{settings.namespace}}}:paused'",
            )
    finally:
        if embedded is not None:
            embedded.cleanup()
