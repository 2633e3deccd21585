"""Sampling clients that survive a pause: resume an aborted sample without corrupting it.

A pause aborts an adapter's in-flight requests (vLLM answers them with
``finish_reason: "abort"`` and the tokens generated so far). :func:`sample_with_retry` turns
such an abort into a continuation::

    async with httpx.AsyncClient(base_url=VLLM, timeout=httpx.Timeout(600, connect=5)) as http, \\
            pausesvc.AsyncPauseClient(REDIS) as pauses:
        result = await sample_with_retry(http, "", {"model": "lora-a", "prompt": [10, 20, 30],
                                                    "max_tokens": 16, "logprobs": 0},
                                         waiter=pauses)

Semantics (``/v1/completions``, token in / token out):

- One call when nothing aborts, and the result is that call's (``result.response`` is the
  server's JSON). ``return_token_ids`` is always turned on: the tokens are the truth.
- On ``finish_reason == "abort"`` (a missing finish_reason counts as an abort): wait until the
  adapter is not paused (the waiter: Redis through the watcher, else a control service), then
  resubmit ``prompt + accumulated tokens`` with ``max_tokens - accumulated`` (and
  ``min_tokens - accumulated``). When nothing remains the result is ``length``, with no call.
- Tokens, logprobs and top logprobs accumulate in order. Prompt logprobs are those of the
  original prompt: the newest attempt's, cut back to the original prompt's length.
- Zero-progress aborts are resubmitted at once when a pause explains them, else after a
  jittered exponential backoff; either way at most ``RetryPolicy.max_zero_progress_aborts`` in a
  row. Transport errors and retryable statuses (429, 5xx) keep the accumulated tokens and resume
  from them, at most ``RetryPolicy.max_failures`` in a row. Everything fits in ``timeout``.
- An abort is never reported as ``stop`` or ``length``: what cannot be finished raises a
  :class:`SampleError` whose ``partial`` holds the tokens so far (``finish_reason == "abort"``).
  A missing logprob raises :class:`MissingLogprobError`; it is never filled with a zero.
- ``result.boundaries``: for every resume, the token index where the continuation starts and the
  pause revision the weights came from, so an RL trainer can mask or correct the tokens after it.
- ``result.versions``: which adapter version produced which tokens - contiguous
  :class:`VersionSpan` runs over ``result.tokens``, from the ``x-pausesvc-adapter-version``
  header of every attempt's response (``version=None`` where a response named none).

Seeds: a resubmission does NOT reuse the request's ``seed``. vLLM seeds a fresh generator per
request, so resending the same seed would replay, for the continuation's tokens, the random
draws already spent on the first tokens of the sample - the continuation would be correlated
with its own beginning. Each continuation instead gets ``derive_seed(seed, k)`` (a hash of the
seed and the number ``k`` of tokens already generated; recorded in ``Boundary.seed``). A sample
that never aborts is exactly the seeded plain call; a resumed one is reproducible given the same
boundaries, but is not the uninterrupted run (no server can resume an RNG stream mid-way, and
after a weight swap the distribution itself changed). With ``temperature: 0`` the seed is moot.

Limits: a stop *string* that spans a boundary is not seen (vLLM matches stop strings in the
generated text of one request); presence/frequency penalties count only each attempt's own
output. Chat continuations are sent as text and re-tokenized by the server (see ChatState).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from pausesvc._exceptions import InvalidInputError, PauseError
from pausesvc.protocol.validate import validate_timeout
from pausesvc.sampling.continuation import (
    ADAPTER_VERSION_HEADER,
    Boundary,
    MissingLogprobError,
    MixedVersionsError,
    ResumeReason,
    RetryPolicy,
    SampleError,
    SampleResponseError,
    SampleResult,
    SampleRetryError,
    SampleTimeoutError,
    UnresumableAbortError,
    VersionSpan,
    _State,
    derive_seed,
    version_of,
)
from pausesvc.sampling.continuation import ChatState as _ChatState
from pausesvc.sampling.continuation import CompletionState as _CompletionState
from pausesvc.sampling.waiters import (
    AsyncWaiter,
    AutoWaiter,
    ServiceWaiter,
    SyncAutoWaiter,
    SyncClientWaiter,
    SyncServiceWaiter,
    SyncWaiter,
    WaitResult,
    WatcherWaiter,
)
from pausesvc.sampling.waiters import resolve_async_waiter as _resolve_async_waiter
from pausesvc.sampling.waiters import resolve_sync_waiter as _resolve_sync_waiter

__all__ = [
    "ADAPTER_VERSION_HEADER",
    "AsyncWaiter",
    "AutoWaiter",
    "Boundary",
    "MissingLogprobError",
    "MixedVersionsError",
    "RetryPolicy",
    "SampleError",
    "SampleResponseError",
    "SampleResult",
    "SampleRetryError",
    "SampleTimeoutError",
    "ServiceWaiter",
    "SyncAutoWaiter",
    "SyncClientWaiter",
    "SyncServiceWaiter",
    "SyncWaiter",
    "UnresumableAbortError",
    "VersionSpan",
    "WaitResult",
    "WatcherWaiter",
    "chat_with_retry",
    "chat_with_retry_sync",
    "derive_seed",
    "sample_with_retry",
    "sample_with_retry_sync",
    "version_of",
]

logger = logging.getLogger("pausesvc.sampling")

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
DEFAULT_TIMEOUT_S = 600.0


def _endpoint(base_url: str, path: str) -> str:
    if not isinstance(base_url, str):
        raise InvalidInputError("base_url must be a string", field="base_url")
    base = base_url.rstrip("/")
    return base if base.endswith(path) else base + path


def _bounded(client_timeout: httpx.Timeout, remaining: float | None) -> httpx.Timeout:
    """The client's timeouts, each cut to what is left of the deadline."""
    if remaining is None:
        return client_timeout

    def cut(v: float | None) -> float:
        return max(0.001, remaining if v is None else min(v, remaining))

    return httpx.Timeout(
        connect=cut(client_timeout.connect),
        read=cut(client_timeout.read),
        write=cut(client_timeout.write),
        pool=cut(client_timeout.pool),
    )


class _Driver:
    """The decisions of one sample's retry loop (no I/O): deadline, streaks, delays."""

    def __init__(self, state: _State, policy: RetryPolicy | None, timeout: float | None) -> None:
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise InvalidInputError("policy must be a RetryPolicy", field="policy")
        self.state = state
        self.policy = policy or RetryPolicy()
        t = validate_timeout(timeout, field="timeout")
        self.deadline = None if t is None else time.monotonic() + t
        self.timeout = t
        self.zero_streak = 0
        self.fail_streak = 0

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def timed_out(self) -> SampleTimeoutError:
        return SampleTimeoutError(
            f"the sample of {self.state.adapter!r} did not finish within {self.timeout}s "
            f"({len(self.state.tokens)} token(s) accumulated)",
            partial=self.state.result(),
        )

    def failed(self, what: str) -> ResumeReason:
        """A transport error or a retryable status: resume, unless too many in a row."""
        self.fail_streak += 1
        if self.fail_streak > self.policy.max_failures:
            raise SampleRetryError(
                f"giving up on the sample of {self.state.adapter!r} after {self.fail_streak} "
                f"failures in a row (last: {what})",
                partial=self.state.result(),
            )
        logger.info(
            "pausesvc sampling: %s for %r; resuming after %d token(s)",
            what,
            self.state.adapter,
            len(self.state.tokens),
        )
        return "transport"

    def response(self, resp: httpx.Response) -> ResumeReason | None:
        """None when the sample is finished; else why it must be resumed."""
        if resp.status_code in self.policy.retry_statuses:
            self.failed(f"HTTP {resp.status_code}")
            return "status"
        if resp.status_code != 200:
            raise SampleResponseError(
                f"the server answered {resp.status_code}: {resp.text[:500]}",
                partial=self.state.result(),
                status_code=resp.status_code,
            )
        try:
            data = resp.json()
        except ValueError as exc:
            raise SampleResponseError(
                "the server answered with a body that is not JSON",
                partial=self.state.result(),
                status_code=200,
            ) from exc
        done = self.state.absorb(data, version_of(resp.headers))
        self.fail_streak = 0
        if done:
            return None
        if self.state.last_progress:
            self.zero_streak = 0
        else:
            self.zero_streak += 1
            if self.zero_streak > self.policy.max_zero_progress_aborts:
                raise SampleRetryError(
                    f"giving up on the sample of {self.state.adapter!r}: {self.zero_streak} "
                    "aborts in a row without a token",
                    partial=self.state.result(),
                )
        return "abort"

    def delay(self, reason: ResumeReason, waited: WaitResult) -> float:
        if reason == "abort":
            if self.state.last_progress or waited.paused_seen:
                return 0.0
            streak = self.zero_streak
        else:
            streak = self.fail_streak
        d = self.policy.delay(streak, random.random())
        rem = self.remaining()
        return d if rem is None else min(d, rem)

    def waited(self, reason: ResumeReason, res: WaitResult, waited_s: float) -> None:
        if not res.unpaused:
            raise self.timed_out()
        self.state.add_boundary(
            pause_revision=res.pause_revision, revision=res.revision, reason=reason, waited_s=waited_s
        )


def _waiter_failed(state: _State, exc: PauseError) -> UnresumableAbortError:
    return UnresumableAbortError(
        f"cannot wait for {state.adapter!r} to be resumed: {exc}", partial=state.result()
    )


@dataclass(frozen=True, slots=True)
class _Post:
    """Send this body (the runner bounds the call by the deadline)."""

    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Wait:
    """Wait until the adapter may be resumed (``wait_resumable``)."""

    name: str
    timeout: float | None
    mark: int


@dataclass(frozen=True, slots=True)
class _Sleep:
    """Back off this long before the next attempt."""

    seconds: float


_Step = _Post | _Wait | _Sleep


class _Plan:
    """One sample's retry loop as steps, without I/O (the h11 pattern): iterate it, perform each
    step, and hand back what it gave (``reply``) or what it raised (``error``, for the
    exceptions in :attr:`HANDLED`); ``result`` is set once the iteration ends. The async and the
    blocking runner drive the same loop."""

    #: what a step may raise that the loop turns into a retry or a SampleError
    HANDLED = (TimeoutError, httpx.TransportError, PauseError)

    def __init__(self, drv: _Driver, mark: Callable[[str], int]) -> None:
        self.drv = drv
        self.mark = mark
        self.reply: Any = None
        self.error: BaseException | None = None
        self.result: SampleResult | None = None

    def __iter__(self) -> Iterator[_Step]:
        steps = self._steps()
        while True:
            reply, error, self.reply, self.error = self.reply, self.error, None, None
            try:
                step = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as stop:
                self.result = stop.value
                return
            yield step

    def _steps(self) -> Generator[_Step, Any, SampleResult]:
        drv, state = self.drv, self.drv.state
        name = state.adapter
        while True:  # each pass makes one request; the loop ends by returning or raising
            body = state.next_body()
            if body is None:
                return state.length_result()
            mark = self.mark(name)
            reason: ResumeReason | None
            try:
                resp = yield _Post(body)
            except TimeoutError:
                raise drv.timed_out() from None
            except httpx.TransportError as exc:
                if drv.expired():
                    raise drv.timed_out() from exc
                reason = drv.failed(f"{type(exc).__name__}: {exc}")
            else:
                reason = drv.response(resp)
                if reason is None:
                    return state.result()
            t0 = time.monotonic()
            try:
                res = yield _Wait(name, drv.remaining(), mark)
            except PauseError as exc:
                raise _waiter_failed(state, exc) from exc
            pause = drv.delay(reason, res)
            if pause > 0:
                yield _Sleep(pause)
            drv.waited(reason, res, time.monotonic() - t0)

    def outcome(self) -> SampleResult:
        assert self.result is not None  # the iteration ends only with a result (or raises)
        return self.result


def _prepared(
    state: _State, base_url: str, path: str, policy: RetryPolicy | None, timeout: float | None
) -> tuple[str, _Driver]:
    """The endpoint and the loop's decisions, checked in this order (after the request)."""
    return _endpoint(base_url, path), _Driver(state, policy, timeout)


async def _run_async(
    http: httpx.AsyncClient, url: str, drv: _Driver, waiter: object, headers: dict[str, str] | None
) -> SampleResult:
    w = await _resolve_async_waiter(waiter)
    plan = _Plan(drv, w.mark)
    for step in plan:
        try:
            if isinstance(step, _Post):
                async with asyncio.timeout(drv.remaining()):
                    plan.reply = await http.post(
                        url, json=step.body, headers=headers, timeout=_bounded(http.timeout, drv.remaining())
                    )
            elif isinstance(step, _Wait):
                plan.reply = await w.wait_resumable(step.name, step.timeout, step.mark)
            else:
                await asyncio.sleep(step.seconds)
        except _Plan.HANDLED as exc:
            plan.error = exc
    return plan.outcome()


class _Overrun(Exception):
    """The worker of :func:`_post_within` read past the deadline."""


def _post_within(
    http: httpx.Client,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str] | None,
    remaining: float | None,
) -> httpx.Response:
    """``http.post`` that returns (or raises TimeoutError) within ``remaining`` seconds.

    httpx's timeouts apply to each network operation: a server that sends its body one byte at
    a time never trips them. So the request runs in a worker thread (the caller waits at most
    ``remaining``, as ``asyncio.timeout`` bounds the async helper), streaming the body and
    giving up at the deadline between chunks, so the worker ends soon after too (each read is
    also bounded by what was left when it started).
    """
    if remaining is None:
        return http.post(url, json=body, headers=headers)
    deadline = time.monotonic() + remaining
    done = threading.Event()
    box: list[httpx.Response | BaseException] = []

    def work() -> None:
        try:
            with http.stream(
                "POST", url, json=body, headers=headers, timeout=_bounded(http.timeout, remaining)
            ) as resp:
                if resp.is_stream_consumed:  # a transport that answered with the whole body
                    box.append(resp)
                    return
                chunks = []
                for chunk in resp.iter_raw():
                    if time.monotonic() >= deadline:
                        raise _Overrun
                    chunks.append(chunk)
                # the raw bytes with the server's headers: decoded once, as http.post would
                box.append(
                    httpx.Response(
                        resp.status_code, headers=resp.headers, content=b"".join(chunks), request=resp.request
                    )
                )
        except BaseException as exc:  # handed to the caller (or dropped once it left)
            box.append(exc)
        finally:
            done.set()

    ctx = contextvars.copy_context()
    threading.Thread(target=ctx.run, args=(work,), name="pausesvc-sample", daemon=True).start()
    if not done.wait(remaining) or isinstance(box[0], _Overrun):
        raise TimeoutError
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _run_sync(
    http: httpx.Client, url: str, drv: _Driver, waiter: object, headers: dict[str, str] | None
) -> SampleResult:
    w = _resolve_sync_waiter(waiter)
    plan = _Plan(drv, w.mark)
    for step in plan:  # as _run_async, blocking
        try:
            if isinstance(step, _Post):
                plan.reply = _post_within(http, url, step.body, headers, drv.remaining())
            elif isinstance(step, _Wait):
                plan.reply = w.wait_resumable(step.name, step.timeout, step.mark)
            else:
                time.sleep(step.seconds)
        except _Plan.HANDLED as exc:
            plan.error = exc
    return plan.outcome()


async def sample_with_retry(
    http: httpx.AsyncClient,
    base_url: str,
    request: dict[str, Any],
    *,
    waiter: object,
    adapter: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    policy: RetryPolicy | None = None,
    headers: dict[str, str] | None = None,
) -> SampleResult:
    """Sample ``request`` (a ``/v1/completions`` body, n=1) through pauses; see the module docs.

    ``base_url``: the server (``"http://host:8000"``), the full endpoint, or ``""`` for the
    client's own ``base_url``. ``waiter``: a PauseWatcher, an AsyncPauseClient, a ServiceWaiter,
    an AutoWaiter, or anything with ``async wait_unpaused(name, timeout)``. ``adapter``: the name
    to wait on (default: ``request["model"]``). ``timeout``: the overall deadline in seconds
    (None: no deadline; each request still has the client's timeouts - make the read timeout
    longer than a whole generation, httpx's default is 5 s).

    Raises :class:`InvalidInputError` before any call for a request it cannot resume safely
    (n > 1, missing or non-positive max_tokens, stream, echo, ...), and a :class:`SampleError`
    carrying the partial result when a sample cannot be finished.
    """
    url, drv = _prepared(_CompletionState(request, adapter), base_url, COMPLETIONS, policy, timeout)
    return await _run_async(http, url, drv, waiter, headers)


async def chat_with_retry(
    http: httpx.AsyncClient,
    base_url: str,
    request: dict[str, Any],
    *,
    waiter: object,
    adapter: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    policy: RetryPolicy | None = None,
    headers: dict[str, str] | None = None,
) -> SampleResult:
    """:func:`sample_with_retry` for ``/v1/chat/completions``: an aborted answer is continued as
    the final assistant message (``continue_final_message: true``, ``add_generation_prompt:
    false``, reduced ``max_completion_tokens``/``max_tokens``)."""
    url, drv = _prepared(_ChatState(request, adapter), base_url, CHAT, policy, timeout)
    return await _run_async(http, url, drv, waiter, headers)


def sample_with_retry_sync(
    http: httpx.Client,
    base_url: str,
    request: dict[str, Any],
    *,
    waiter: object,
    adapter: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    policy: RetryPolicy | None = None,
    headers: dict[str, str] | None = None,
) -> SampleResult:
    """Blocking :func:`sample_with_retry` (an ``httpx.Client``; ``waiter``: a PauseClient, a
    SyncServiceWaiter, a SyncAutoWaiter or anything with a blocking ``wait_unpaused``)."""
    url, drv = _prepared(_CompletionState(request, adapter), base_url, COMPLETIONS, policy, timeout)
    return _run_sync(http, url, drv, waiter, headers)


def chat_with_retry_sync(
    http: httpx.Client,
    base_url: str,
    request: dict[str, Any],
    *,
    waiter: object,
    adapter: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    policy: RetryPolicy | None = None,
    headers: dict[str, str] | None = None,
) -> SampleResult:
    """Blocking :func:`chat_with_retry`."""
    url, drv = _prepared(_ChatState(request, adapter), base_url, CHAT, policy, timeout)
    return _run_sync(http, url, drv, waiter, headers)
