"""The workload the checker judges: a controller, samplers and waiters, all in this process.

- the controller loops ``pause(A, drain=True)`` -> swap A's weights on every live replica ->
  ``resume(A)`` over random adapters, and records each window (see checker.Window);
- non-streaming samplers use ``pausesvc.sampling.sample_with_retry`` (the real retry library);
- streaming samplers run a plain retry loop over SSE (sample_with_retry does not stream);
- waiters loop on ``wait_unpaused``.
Requests go to a random live replica (a load-balancing transport), like behind a router.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from pausesvc import AsyncPauseClient, DrainTimeoutError, PauseError, Settings
from pausesvc.sampling import RetryPolicy, SampleError, sample_with_retry
from reliability.harness.checker import Findings, SampleRecord, Window, check, read_logs
from reliability.harness.fleet import FAST_ENV, Fleet

logger = logging.getLogger("reliability")


class LBTransport(httpx.AsyncBaseTransport):
    """Send each request to a random live replica of the fleet."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        live = self.fleet.live
        if not live:
            raise httpx.ConnectError("no live replica", request=request)
        rep = random.choice(live)
        request.url = request.url.copy_with(host="127.0.0.1", port=rep.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def fast_settings(**kw: Any) -> Settings:
    base = {k.removeprefix("PAUSESVC_").lower(): v for k, v in FAST_ENV.items()}
    base.update(kw)
    return Settings(**base)


@dataclass
class Report:
    cycles: int = 0
    drain_s: list[float] = field(default_factory=list)
    drain_timeouts: int = 0
    controller_errors: list[str] = field(default_factory=list)
    swap_failures: list[str] = field(default_factory=list)
    samples: list[SampleRecord] = field(default_factory=list)
    sample_errors: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    waits: int = 0
    wait_timeouts: int = 0
    leftovers: list[str] = field(default_factory=list)
    findings: Findings | None = None

    @property
    def resumed_samples(self) -> int:
        return sum(1 for s in self.samples if s.boundaries)

    @property
    def five_xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if code >= 500 and code != 503)

    def figures(self) -> dict[str, Any]:
        d = sorted(self.drain_s)
        return {
            "cycles": self.cycles,
            "tokens": self.findings.tokens if self.findings else 0,
            "samples": len(self.samples),
            "resumed_samples": self.resumed_samples,
            "boundaries": sum(len(s.boundaries) for s in self.samples),
            "sample_errors": len(self.sample_errors),
            "waits": self.waits,
            "wait_timeouts": self.wait_timeouts,
            "drain_timeouts": self.drain_timeouts,
            "drain_p50_ms": round(1000 * statistics.median(d), 1) if d else None,
            "drain_max_ms": round(1000 * d[-1], 1) if d else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "controller_errors": len(self.controller_errors),
            "leftovers": len(self.leftovers),
            "first_problems": (self.leftovers + self.sample_errors + self.controller_errors)[:4],
            "violations": 0
            if self.findings is None
            else (
                len(self.findings.window)
                + len(self.findings.version)
                + len(self.findings.swap_while_decoding)
                + len(self.findings.samples)
            ),
        }

    def assert_green(self) -> None:
        assert self.findings is not None
        problems = []
        if not self.findings.green:
            problems.append("checker: " + self.findings.summary())
        if self.sample_errors:
            problems.append(f"{len(self.sample_errors)} sample(s) failed: {self.sample_errors[:3]}")
        if self.five_xx:
            problems.append(f"5xx answers: {self.statuses}")
        if self.leftovers:
            problems.append(f"left behind: {self.leftovers}")
        if self.wait_timeouts:
            problems.append(f"{self.wait_timeouts} waiter(s) timed out")
        assert not problems, "\n".join(problems)


class Workload:
    def __init__(
        self,
        fleet: Fleet,
        *,
        adapters: list[str] | None = None,
        max_tokens: int = 12,
        settings: Settings | None = None,
        hold_s: tuple[float, float] = (0.0, 0.05),
        gap_s: tuple[float, float] = (0.02, 0.12),
    ) -> None:
        self.fleet = fleet
        self.adapters = adapters or [f"a{i}" for i in range(4)]
        self.max_tokens = max_tokens
        self.settings = settings or fast_settings()
        self.hold_s, self.gap_s = hold_s, gap_s
        self.versions = dict.fromkeys(self.adapters, 0)
        self.initial_versions = dict(self.versions)
        self.windows: list[Window] = []
        self.report = Report()
        self.stop = asyncio.Event()
        self.exempt: dict[str, int] = {}
        self.client: AsyncPauseClient | None = None
        self.http: httpx.AsyncClient | None = None
        self.paused_now: set[str] = set()
        self.adapters_for_controller: list[str] | None = None

    async def __aenter__(self) -> Workload:
        self.client = AsyncPauseClient(
            self.fleet.redis_url, namespace=self.fleet.namespace, settings=self.settings, holder="controller"
        )
        self.http = httpx.AsyncClient(
            transport=LBTransport(self.fleet), base_url="http://fleet", timeout=httpx.Timeout(60, connect=3)
        )
        await (await self.client.watcher()).wait_synced(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.client is not None:
            await self.client.aclose()

    # -- the controller ----------------------------------------------------------------------------
    async def swap(self, adapter: str, version: int) -> frozenset[str]:
        assert self.http is not None
        done = set()

        # direct, not through the LB transport
        async with httpx.AsyncClient(timeout=2.0) as direct:

            async def one_direct(rep: Any) -> None:
                try:
                    r = await direct.post(
                        f"{rep.url}/fake/swap", json={"adapter": adapter, "version": version}
                    )
                    r.raise_for_status()
                    done.add(rep.name)
                except httpx.HTTPError as exc:
                    self.report.swap_failures.append(f"{rep.name}: {type(exc).__name__}")

            await asyncio.gather(*(one_direct(r) for r in self.fleet.live))
        return frozenset(done)

    async def cycle(
        self, adapter: str | None = None, *, during: Callable[[], Awaitable[None]] | None = None
    ) -> Window | None:
        """One pause(drain) -> swap -> resume. Returns the window, or None if it did not drain."""
        assert self.client is not None
        a = adapter or random.choice(self.adapters_for_controller or self.adapters)
        t0 = time.monotonic()
        try:
            grant = await self.client.pause(
                a, drain=True, timeout=self.settings.drain_timeout_s, reason="weight swap"
            )
        except DrainTimeoutError as exc:
            self.report.drain_timeouts += 1
            self.report.controller_errors.append(str(exc))
            await self._resume(a, exc.token)
            return None
        except PauseError as exc:
            # Redis went away mid-call: the pause may or may not be in place; a careful
            # controller releases its hold (resume is announced even if nothing was held)
            self.report.controller_errors.append(f"pause {a}: {type(exc).__name__}: {exc}")
            await self._resume(a, None)
            return None
        t_ret = time.monotonic_ns()
        self.paused_now.add(a)
        self.report.drain_s.append(time.monotonic() - t0)
        version = self.versions[a] + 1
        swapped = await self.swap(a, version)
        self.versions[a] = version
        if during is not None:
            await during()
        await asyncio.sleep(random.uniform(*self.hold_s))
        t_res = time.monotonic_ns()
        w = Window(a, t_ret, t_res, version, swapped)
        self.windows.append(w)
        await self._resume(a, grant.token)
        self.paused_now.discard(a)
        self.report.cycles += 1
        return w

    async def _resume(self, a: str, token: str | None, holder: str | None = None) -> None:
        assert self.client is not None
        for attempt in range(100):
            try:
                await self.client.resume(a, token=token, holder=holder)
                return
            except PauseError as exc:  # Redis away (failover, restart): keep trying
                self.report.controller_errors.append(f"resume {a}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(min(0.5, 0.05 * (attempt + 1)))
        raise AssertionError(f"could not resume {a}")

    async def controller(self, cycles: int) -> None:
        for _ in range(cycles):
            if self.stop.is_set():
                return
            try:
                await self.cycle()
            except PauseError as exc:
                self.report.controller_errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.2)
            await asyncio.sleep(random.uniform(*self.gap_s))

    # -- samplers and waiters -------------------------------------------------------------------------
    def _count(self, status: int) -> None:
        self.report.statuses[status] = self.report.statuses.get(status, 0) + 1

    async def sampler(self) -> None:
        """Non-streaming samples through pausesvc.sampling.sample_with_retry."""
        assert self.client is not None and self.http is not None
        policy = RetryPolicy(max_failures=20, max_zero_progress_aborts=50)
        while not self.stop.is_set():
            a = random.choice(self.adapters)
            prompt = [random.randrange(1, 50) for _ in range(random.randint(1, 4))]
            try:
                res = await sample_with_retry(
                    self.http,
                    "",
                    {"model": a, "prompt": prompt, "max_tokens": self.max_tokens},
                    waiter=self.client,
                    timeout=90,
                    policy=policy,
                )
            except SampleError as exc:
                self.report.sample_errors.append(f"{type(exc).__name__}: {exc}")
                continue
            self._count(200)
            self.report.samples.append(
                SampleRecord(
                    a,
                    "sample_with_retry",
                    len(prompt),
                    res.tokens,
                    [b.index for b in res.boundaries],
                    res.finish_reason,
                )
            )
            if len(res.tokens) != self.max_tokens:
                self.report.sample_errors.append(f"short sample: {len(res.tokens)} tokens")

    async def streamer(self) -> None:
        """Streaming samples with a plain retry loop: abort -> wait_unpaused -> continue."""
        assert self.client is not None and self.http is not None
        while not self.stop.is_set():
            a = random.choice(self.adapters)
            prompt = [random.randrange(1, 50) for _ in range(random.randint(1, 4))]
            tokens: list[int] = []
            bounds: list[int] = []
            deadline = time.monotonic() + 90
            failed = None
            while len(tokens) < self.max_tokens and time.monotonic() < deadline:
                finish = None
                try:
                    async with self.http.stream(
                        "POST",
                        "/v1/completions",
                        json={
                            "model": a,
                            "prompt": prompt + tokens,
                            "stream": True,
                            "max_tokens": self.max_tokens - len(tokens),
                        },
                    ) as resp:
                        self._count(resp.status_code)
                        if resp.status_code != 200:
                            await resp.aread()
                            if resp.status_code != 503:
                                failed = f"HTTP {resp.status_code}: {resp.text[:200]}"
                                break
                        else:
                            async for line in resp.aiter_lines():
                                if not line.startswith("data: ") or line == "data: [DONE]":
                                    continue
                                ch = json.loads(line[6:])["choices"][0]
                                tokens.extend(ch.get("token_ids") or [])
                                finish = ch.get("finish_reason") or finish
                except httpx.TransportError:
                    finish = "transport"
                if finish in ("length", "stop") and len(tokens) >= self.max_tokens:
                    break
                # aborted, cut off or refused: wait for the adapter, continue from here
                await self.client.wait_unpaused(a, timeout=30)
                if len(tokens) not in bounds:
                    bounds.append(len(tokens))
                await asyncio.sleep(0.01)
            if failed or len(tokens) != self.max_tokens:
                self.report.sample_errors.append(f"stream of {a}: {failed or len(tokens)}")
                continue
            self.report.samples.append(SampleRecord(a, "stream", len(prompt), tokens, bounds, "length"))

    async def waiter(self) -> None:
        assert self.client is not None
        while not self.stop.is_set():
            a = random.choice(self.adapters)
            ok = await self.client.wait_unpaused(a, timeout=30)
            self.report.waits += 1
            if not ok:
                self.report.wait_timeouts += 1
            await asyncio.sleep(random.uniform(0.005, 0.03))

    # -- a whole run ------------------------------------------------------------------------------------
    async def run(
        self,
        cycles: int,
        *,
        samplers: int = 3,
        streamers: int = 3,
        waiters: int = 20,
        fault: Callable[[Workload], Awaitable[None]] | None = None,
        settle_s: float = 10.0,
    ) -> Report:
        tasks = [asyncio.create_task(self.sampler()) for _ in range(samplers)]
        tasks += [asyncio.create_task(self.streamer()) for _ in range(streamers)]
        tasks += [asyncio.create_task(self.waiter()) for _ in range(waiters)]
        ctl = asyncio.create_task(self.controller(cycles))
        flt = asyncio.create_task(fault(self)) if fault is not None else None
        try:
            await ctl
            if flt is not None:
                await flt
            self.stop.set()
            # nothing may be left behind: every sampler and waiter finishes its current work
            done, pending = await asyncio.wait(tasks, timeout=settle_s + 60)
            for t in pending:
                self.report.leftovers.append(f"task still running: {t.get_coro()}")
            for t in done:
                if t.exception() is not None:
                    self.report.leftovers.append(f"task failed: {t.exception()!r}")
        finally:
            self.stop.set()
            for t in [*tasks, ctl, *([flt] if flt else [])]:
                t.cancel()
            for t in [*tasks, ctl, *([flt] if flt else [])]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        await self.check_gates(settle_s)
        tokens, engine_v = read_logs(r.log for r in self.fleet.replicas)
        self.report.findings = check(
            tokens, engine_v, self.windows, self.report.samples, self.initial_versions, self.exempt
        )
        return self.report

    async def check_gates(self, settle_s: float = 10.0) -> None:
        """Every live gate: nothing held, nothing in flight, engine idle (within settle_s)."""
        deadline = time.monotonic() + settle_s
        async with httpx.AsyncClient(timeout=3.0) as direct:
            for rep in self.fleet.live:
                while True:
                    st = (await direct.get(rep.url + "/pausesvc/status")).json()
                    fake = (await direct.get(rep.url + "/fake/state")).json()
                    stats = st["stats"]
                    left = []
                    if stats["held_total"]:
                        left.append(f"{rep.name}: {stats['held']} held")
                    if stats["in_flight"]:
                        left.append(f"{rep.name}: {stats['in_flight']} in flight")
                    if fake["live_count"]:
                        left.append(f"{rep.name}: {fake['live_count']} engine requests")
                    if not left:
                        break
                    if time.monotonic() > deadline:
                        self.report.leftovers.extend(left)
                        break
                    await asyncio.sleep(0.1)
