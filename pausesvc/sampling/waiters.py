"""Waiting until an adapter may be sampled again: through Redis (the watcher) or a control service.

A sampler hands its waiter to :func:`pausesvc.sampling.sample_with_retry`. Accepted:

- a :class:`~pausesvc.PauseWatcher` or an :class:`~pausesvc.AsyncPauseClient` (its shared
  watcher): wakes on the resume event itself, no polling;
- :class:`ServiceWaiter`: long-polls ``GET {service}/v1/pauses/{name}/wait?timeout_s=`` of a
  control service (answers ``{"paused": bool, "revision": n}``), for processes without Redis;
- :class:`AutoWaiter`: the watcher while Redis is reachable, else the service;
- anything with ``async wait_unpaused(name, timeout) -> bool`` (and optionally
  ``state(name)`` returning an object with ``pause_revision``).

Blocking twins: :class:`SyncClientWaiter` (a :class:`~pausesvc.PauseClient`),
:class:`SyncServiceWaiter`, :class:`SyncAutoWaiter`.

Every waiter fails closed: when it cannot learn the state it keeps waiting (until the timeout).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx

from pausesvc._exceptions import PauseError, RedisUnavailableError
from pausesvc.client._async import AsyncPauseClient, release_watcher, shared_watcher
from pausesvc.client._blocking import PauseClient
from pausesvc.protocol.keys import GLOBAL
from pausesvc.protocol.models import AdapterState
from pausesvc.watcher import PauseWatcher

__all__ = [
    "AsyncWaiter",
    "AutoWaiter",
    "ResumeWaiter",
    "ServiceWaiter",
    "SyncAutoWaiter",
    "SyncClientWaiter",
    "SyncResumeWaiter",
    "SyncServiceWaiter",
    "SyncWaiter",
    "WaitResult",
    "WatcherWaiter",
    "resolve_async_waiter",
    "resolve_sync_waiter",
]

logger = logging.getLogger("pausesvc.sampling")

#: How long an abort that no known pause explains waits for this process's view to catch up.
CATCH_UP_S = 1.0
#: Longest single long-poll against a control service.
SERVICE_POLL_S = 30.0


@dataclass(frozen=True, slots=True)
class WaitResult:
    """``unpaused``: may resubmit (False: still paused at the timeout). ``paused_seen``: a pause
    of the adapter explains the abort. Revisions are None when the waiter cannot know them."""

    unpaused: bool
    paused_seen: bool
    pause_revision: int | None
    revision: int | None


@runtime_checkable
class AsyncWaiter(Protocol):
    async def wait_unpaused(self, name: str, timeout: float | None = None) -> bool: ...


@runtime_checkable
class SyncWaiter(Protocol):
    def wait_unpaused(self, name: str, timeout: float | None = None) -> bool: ...


class ResumeWaiter(Protocol):
    """What the sampler calls. ``mark`` is taken before each attempt and handed back."""

    def mark(self, name: str) -> int: ...
    async def wait_resumable(self, name: str, timeout: float | None, mark: int) -> WaitResult: ...


class SyncResumeWaiter(Protocol):
    def mark(self, name: str) -> int: ...
    def wait_resumable(self, name: str, timeout: float | None, mark: int) -> WaitResult: ...


def _pause_rev(state: object) -> int | None:
    rev = getattr(state, "pause_revision", None)
    return rev if isinstance(rev, int) else None


# -- Redis: the watcher ----------------------------------------------------------------------------
class _PauseTracker:
    """The newest pause revision this process saw per adapter (one listener per watcher)."""

    def __init__(self, watcher: PauseWatcher) -> None:
        self.latest: dict[str, int] = {}
        for name in watcher.paused_names():
            self._note(name, watcher.state(name))
        watcher.add_listener(self._listener)

    def _note(self, name: str, state: AdapterState | None) -> None:
        rev = _pause_rev(state)
        if rev is not None and rev > self.latest.get(name, 0):
            self.latest[name] = rev

    def _listener(self, name: str, state: AdapterState | None, _ev: object) -> None:
        self._note(name, state)

    def get(self, name: str) -> int:
        return max(self.latest.get(name, 0), self.latest.get(GLOBAL, 0))


_TRACKERS: weakref.WeakKeyDictionary[PauseWatcher, _PauseTracker] = weakref.WeakKeyDictionary()


class WatcherWaiter:
    """Waits on a :class:`PauseWatcher` (pub/sub: the resume event wakes it)."""

    def __init__(self, watcher: PauseWatcher) -> None:
        self.watcher = watcher
        tracker = _TRACKERS.get(watcher)
        if tracker is None:
            tracker = _TRACKERS[watcher] = _PauseTracker(watcher)
        self._tracker = tracker

    def mark(self, name: str) -> int:
        return self._tracker.get(name)

    async def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        return await self.watcher.wait_unpaused(name, timeout)

    async def wait_resumable(self, name: str, timeout: float | None, mark: int) -> WaitResult:
        w = self.watcher
        if w.synced_once and not w.is_paused(name) and self._tracker.get(name) <= mark:
            # The abort may have overtaken the pause event on its way to this process: read
            # Redis once and let the view apply everything up to that revision.
            try:
                async with asyncio.timeout(CATCH_UP_S):
                    snap = await w.read_snapshot()
                    await w.wait_revision(snap.revision, snap.epoch)
            except (TimeoutError, PauseError) as exc:
                logger.debug("pausesvc sampling: could not catch up with Redis: %s", exc)
        paused = w.is_paused(name)
        ok = await w.wait_unpaused(name, timeout)
        latest = self._tracker.get(name)
        return WaitResult(ok, paused or latest > mark, latest or None, w.revision or None)


# -- HTTP: a control service -----------------------------------------------------------------------
class _ServiceBase:
    """Request building and parsing of ``GET /v1/pauses/{name}/wait`` (no I/O)."""

    def __init__(
        self, service_url: str, *, poll_s: float = SERVICE_POLL_S, max_backoff_s: float = 2.0
    ) -> None:
        self.service_url = service_url.rstrip("/")
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self.latest: dict[str, int] = {}

    def mark(self, name: str) -> int:
        return max(self.latest.get(name, 0), self.latest.get(GLOBAL, 0))

    def _url(self, name: str) -> str:
        return f"{self.service_url}/v1/pauses/{quote(name, safe='')}/wait"

    def _parse(self, name: str, resp: httpx.Response) -> tuple[bool, int | None, int | None]:
        if resp.status_code >= 500:
            raise httpx.HTTPStatusError(
                f"control service answered {resp.status_code}", request=resp.request, response=resp
            )
        if resp.status_code != 200:
            raise PauseError(
                f"control service refused to wait on {name!r}: {resp.status_code} {resp.text[:200]}"
            )
        data = resp.json()
        if not isinstance(data, Mapping) or not isinstance(data.get("paused"), bool):
            raise PauseError(f"control service answered a malformed wait: {resp.text[:200]}")
        rev = data.get("revision")
        prev = data.get("pause_revision")
        if isinstance(prev, int) and prev > self.latest.get(name, 0):
            self.latest[name] = prev
        return data["paused"], rev if isinstance(rev, int) else None, prev if isinstance(prev, int) else None

    def _chunk(self, deadline: float | None) -> float:
        if deadline is None:
            return self.poll_s
        return max(0.0, min(self.poll_s, deadline - time.monotonic()))

    def _backoff(self, attempt: int, deadline: float | None) -> float:
        d = min(self.max_backoff_s, 0.05 * 2.0 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
        return d if deadline is None else max(0.0, min(d, deadline - time.monotonic()))


class _LongPoll:
    """One ``wait_resumable`` of a service waiter, without I/O: what to ask for next, what an
    answer or a failure means, and when the wait is over (both waiters drive it)."""

    def __init__(self, waiter: _ServiceBase, name: str, timeout: float | None, mark: int) -> None:
        self.waiter = waiter
        self.name = name
        self.mark = mark
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.seen = False
        self.paused = True
        self.rev: int | None = None
        self.failures = 0

    def request(self) -> dict[str, Any]:
        """The long poll's query and timeouts: at most a chunk of what is left."""
        chunk = self.waiter._chunk(self.deadline)
        return {"params": {"timeout_s": f"{chunk:.3f}"}, "timeout": httpx.Timeout(chunk + 10, connect=5)}

    def answered(self, resp: httpx.Response) -> None:
        self.paused, self.rev, _ = self.waiter._parse(self.name, resp)
        self.failures = 0

    def failed(self, exc: Exception) -> float:
        """A transport error or a 5xx counts as paused (fail closed); returns the backoff."""
        self.failures += 1
        logger.warning("pausesvc sampling: control service wait failed (%s); retrying", exc)
        self.paused = True
        return self.waiter._backoff(self.failures, self.deadline)

    def result(self) -> WaitResult | None:
        """The answer once not paused or at the deadline; None: poll again."""
        self.seen = self.seen or (self.paused and self.failures == 0)
        if not self.paused:
            latest = self.waiter.mark(self.name)
            return WaitResult(True, self.seen or latest > self.mark, latest or None, self.rev)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return WaitResult(False, self.seen, self.waiter.mark(self.name) or None, self.rev)
        return None


class ServiceWaiter(_ServiceBase):
    """Long-polls a control service. ``async with ServiceWaiter(url) as w:`` (owns its client
    unless ``http`` is given). Transport errors and 5xx are retried: it fails closed."""

    def __init__(
        self,
        service_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        poll_s: float = SERVICE_POLL_S,
        max_backoff_s: float = 2.0,
    ) -> None:
        super().__init__(service_url, poll_s=poll_s, max_backoff_s=max_backoff_s)
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(poll_s + 10, connect=5))
        self._owns_http = http is None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> ServiceWaiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        return (await self.wait_resumable(name, timeout, 0)).unpaused

    async def wait_resumable(self, name: str, timeout: float | None, mark: int) -> WaitResult:
        poll = _LongPoll(self, name, timeout, mark)
        while True:  # every pass long-polls or backs off; ends at the deadline
            try:
                poll.answered(await self._http.get(self._url(name), **poll.request()))
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                await asyncio.sleep(poll.failed(exc))
            if (res := poll.result()) is not None:
                return res


class SyncServiceWaiter(_ServiceBase):
    """Blocking twin of :class:`ServiceWaiter` (an ``httpx.Client``)."""

    def __init__(
        self,
        service_url: str,
        *,
        http: httpx.Client | None = None,
        poll_s: float = SERVICE_POLL_S,
        max_backoff_s: float = 2.0,
    ) -> None:
        super().__init__(service_url, poll_s=poll_s, max_backoff_s=max_backoff_s)
        self._http = http or httpx.Client(timeout=httpx.Timeout(poll_s + 10, connect=5))
        self._owns_http = http is None

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> SyncServiceWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        return self.wait_resumable(name, timeout, 0).unpaused

    def wait_resumable(self, name: str, timeout: float | None, mark: int) -> WaitResult:
        poll = _LongPoll(self, name, timeout, mark)
        while True:  # as ServiceWaiter.wait_resumable, blocking
            try:
                poll.answered(self._http.get(self._url(name), **poll.request()))
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                time.sleep(poll.failed(exc))
            if (res := poll.result()) is not None:
                return res


# -- Redis first, the service as the fallback -------------------------------------------------------
class AutoWaiter:
    """The process's shared watcher while Redis is reachable (in sync), else the service.

    ``async with AutoWaiter(redis_url=..., service_url=...) as w:``. Either URL may be None.
    While Redis is unreachable the watcher keeps reconnecting in the background and takes over
    again once it is in sync.
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        service_url: str | None = None,
        namespace: str = "default",
        connect_timeout: float = 2.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if redis_url is None and service_url is None:
            raise PauseError("AutoWaiter needs a redis_url, a service_url or both")
        self.redis_url, self.namespace = redis_url, namespace
        self.connect_timeout = connect_timeout
        self.service = None if service_url is None else ServiceWaiter(service_url, http=http)
        self._watcher: WatcherWaiter | None = None

    async def start(self) -> None:
        if self.redis_url is not None and self._watcher is None:
            w = await shared_watcher(self.redis_url, self.namespace)
            self._watcher = WatcherWaiter(w)
            if not await w.wait_synced(self.connect_timeout):
                logger.warning(
                    "pausesvc sampling: Redis unreachable (%s); waiting through %s",
                    w.last_error,
                    "the service" if self.service else "the watcher",
                )

    async def aclose(self) -> None:
        if self._watcher is not None and self.redis_url is not None:
            self._watcher = None
            await release_watcher(self.redis_url, self.namespace)
        if self.service is not None:
            await self.service.aclose()

    async def __aenter__(self) -> AutoWaiter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _pick(self) -> WatcherWaiter | ServiceWaiter:
        w = self._watcher
        if w is not None and (w.watcher.in_sync or self.service is None):
            return w
        if self.service is None:
            raise PauseError("AutoWaiter is not started")
        return self.service

    @property
    def using(self) -> str:
        return "watcher" if isinstance(self._pick(), WatcherWaiter) else "service"

    def mark(self, name: str) -> int:
        return self._pick().mark(name)

    async def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        return (await self.wait_resumable(name, timeout, 0)).unpaused

    async def wait_resumable(self, name: str, timeout: float | None, mark: int) -> WaitResult:
        return await self._pick().wait_resumable(name, timeout, mark)


class SyncClientWaiter:
    """Waits through a blocking :class:`PauseClient` (one subscription per wait)."""

    def __init__(self, client: PauseClient) -> None:
        self.client = client

    def mark(self, name: str) -> int:
        return 0

    def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        return self.client.wait_unpaused(name, timeout)

    def wait_resumable(self, name: str, timeout: float | None, mark: int) -> WaitResult:
        states = [self.client.get(name)] + ([self.client.get(GLOBAL)] if name != GLOBAL else [])
        revs = [r for r in (_pause_rev(s) for s in states) if r is not None]
        ok = self.client.wait_unpaused(name, timeout)
        return WaitResult(ok, bool(revs), max(revs) if revs else None, None)


class SyncAutoWaiter:
    """Blocking :class:`AutoWaiter`: Redis through a :class:`PauseClient`, else the service."""

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        service_url: str | None = None,
        namespace: str = "default",
        http: httpx.Client | None = None,
    ) -> None:
        if redis_url is None and service_url is None:
            raise PauseError("SyncAutoWaiter needs a redis_url, a service_url or both")
        self.client = None if redis_url is None else PauseClient(redis_url, namespace=namespace)
        self.service = None if service_url is None else SyncServiceWaiter(service_url, http=http)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.service is not None:
            self.service.close()

    def __enter__(self) -> SyncAutoWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mark(self, name: str) -> int:
        return 0

    def wait_unpaused(self, name: str, timeout: float | None = None) -> bool:
        return self.wait_resumable(name, timeout, 0).unpaused

    def wait_resumable(self, name: str, timeout: float | None, mark: int) -> WaitResult:
        if self.client is not None:
            try:
                return SyncClientWaiter(self.client).wait_resumable(name, timeout, mark)
            except RedisUnavailableError:
                if self.service is None:
                    raise
                logger.warning("pausesvc sampling: Redis unreachable; waiting through the service")
        assert self.service is not None
        return self.service.wait_resumable(name, timeout, mark)


# -- anything else with wait_unpaused ---------------------------------------------------------------
class _DuckWaiter:
    def __init__(self, waiter: Any) -> None:
        self.waiter = waiter

    def mark(self, name: str) -> int:
        return 0

    def _before(self, name: str) -> int | None:
        state = getattr(self.waiter, "state", None)
        return _pause_rev(state(name)) if callable(state) else None

    async def wait_resumable(self, name: str, timeout: float | None, mark: int) -> WaitResult:
        rev = self._before(name)
        ok = await self.waiter.wait_unpaused(name, timeout)
        return WaitResult(bool(ok), rev is not None, rev, getattr(self.waiter, "revision", None))

    def wait_resumable_sync(self, name: str, timeout: float | None, mark: int) -> WaitResult:
        rev = self._before(name)
        ok = self.waiter.wait_unpaused(name, timeout)
        return WaitResult(bool(ok), rev is not None, rev, getattr(self.waiter, "revision", None))


class _SyncDuck:
    def __init__(self, duck: _DuckWaiter) -> None:
        self.duck = duck

    def mark(self, name: str) -> int:
        return 0

    def wait_resumable(self, name: str, timeout: float | None, mark: int) -> WaitResult:
        return self.duck.wait_resumable_sync(name, timeout, mark)


async def resolve_async_waiter(waiter: object) -> ResumeWaiter:
    """Turn what the caller passed into a :class:`ResumeWaiter`."""
    if isinstance(waiter, PauseWatcher):
        return WatcherWaiter(waiter)
    if isinstance(waiter, AsyncPauseClient):
        return WatcherWaiter(await waiter.watcher())
    if isinstance(waiter, (WatcherWaiter, ServiceWaiter, AutoWaiter)):
        return waiter
    if callable(getattr(waiter, "wait_resumable", None)) and callable(getattr(waiter, "mark", None)):
        return waiter  # type: ignore[return-value]
    if callable(getattr(waiter, "wait_unpaused", None)):
        return _DuckWaiter(waiter)
    raise PauseError(f"not a waiter: {type(waiter).__name__} (needs async wait_unpaused)")


def resolve_sync_waiter(waiter: object) -> SyncResumeWaiter:
    if isinstance(waiter, PauseClient):
        return SyncClientWaiter(waiter)
    if isinstance(waiter, (PauseWatcher, AsyncPauseClient, ServiceWaiter, AutoWaiter)):
        raise PauseError(f"{type(waiter).__name__} is asynchronous: use sample_with_retry")
    if isinstance(waiter, (SyncClientWaiter, SyncServiceWaiter, SyncAutoWaiter)):
        return waiter
    if callable(getattr(waiter, "wait_resumable", None)) and callable(getattr(waiter, "mark", None)):
        return waiter  # type: ignore[return-value]
    if callable(getattr(waiter, "wait_unpaused", None)):
        return _SyncDuck(_DuckWaiter(waiter))
    raise PauseError(f"not a waiter: {type(waiter).__name__} (needs wait_unpaused)")
