"""Weight versions on one replica: every adapter converges on its desired version by itself.

The watcher knows each adapter's desired version (``pausesvc:{ns}:versions``, set by
``swap``). For every adapter whose desired version this process has not loaded, the keeper:

1. parks the adapter LOCALLY (``blocks(name)``: the gate holds its new requests exactly as for
   a pause) and aborts its in-flight requests (the runtime's drain loop);
2. loads the weights into its own engine, in process (``_engine.load_adapter``: a fresh LoRA id
   under a path string no earlier load used, so no prefix-cache block computed with the old
   weights can match a request under the new ones);
3. admits the adapter again and reports ``name@version`` loaded in its registry record
   (``version:<name>``), which is what ``swap``'s barrier waits for.

A load that fails keeps the adapter parked on this replica, is reported (reason, attempts) and
is retried with backoff; the old weights are never served under a version the fleet left. A
replica that starts learns the desired versions with its first sync and loads them before it
admits those adapters (the startup ``--lora-modules`` path is never trusted to be current).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pausesvc import GLOBAL, DesiredVersion, Replica
from pausesvc_vllm._engine import LoadError, NotReady, is_base_model, load_adapter

__all__ = ["VERSION_HEADER", "VersionKeeper"]

logger = logging.getLogger("pausesvc_vllm")


def honour_cancellation() -> None:
    """Raise CancelledError if this task is being cancelled. redis-py can turn a cancellation
    that lands mid-command into a connection error: a retry loop that goes on after it would
    outlive the runtime's shutdown (it retries while Redis is "away")."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


#: The response header naming the adapter version that produced a gated response.
VERSION_HEADER = b"x-pausesvc-adapter-version"
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
REPORT_RETRY_MAX_S = 2.0
NOT_READY_WAIT_S = 10.0  # how long a load waits for vLLM's engine to appear on the app
NOT_READY_RETRY_S = 0.1
REASON_MAX = 500  # characters of a load failure's message that go into the registry record


class VersionKeeper:
    """The adapters' loaded and wanted versions in this process, and one task per adapter
    converging on its desired version."""

    def __init__(
        self,
        app: Callable[[], Any],
        replica: Callable[[], Replica | None],
        drain: Callable[[str, Callable[[], bool]], Awaitable[object]],
        spawn: Callable[[Any, str], asyncio.Task[None]],
    ) -> None:
        self._app = app
        self._replica = replica
        self._drain = drain
        self._spawn = spawn
        #: name -> version label this process serves it at (only what a load here made true)
        self.loaded: dict[str, str] = {}
        #: name -> the desired version not loaded yet: the adapter is parked here meanwhile
        self.pending: dict[str, DesiredVersion] = {}
        #: name -> (reason, attempts) of the last failed load of its pending version
        self.errors: dict[str, tuple[str, int]] = {}
        self._used: dict[str, set[str]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self.loads = 0
        self.load_failures = 0

    # -- what the gate asks ------------------------------------------------------------------------
    def blocks(self, name: str) -> bool:
        """Is ``name`` parked here until its desired version is loaded?"""
        return name in self.pending

    def version(self, name: str | None) -> str | None:
        return None if name is None else self.loaded.get(name)

    async def wait_ready(self, name: str) -> None:
        """Return once ``name`` is not parked for a version (at once if it is not)."""
        while name in self.pending:
            ev = self._ready.setdefault(name, asyncio.Event())
            await ev.wait()

    # -- what the watcher tells ------------------------------------------------------------------
    def on_desired(self, name: str, desired: DesiredVersion | None) -> None:
        """Version listener (sync, on the loop): ``name``'s desired version is now ``desired``."""
        if desired is None:  # cleared: whatever is loaded stays, nothing is parked for it
            if self.pending.pop(name, None) is not None:
                self._cancel(name)
                self._wake(name)
            return
        if name == GLOBAL or is_base_model(self._app(), name):
            # not a LoRA adapter: there are no weights to load, and parking the base model (or
            # everything) until an impossible load succeeds would stop this replica serving it
            reason = f"{name!r} is not a LoRA adapter (the base model or '*'): nothing to load"
            logger.error("pausesvc gate: desired version %r of %s ignored", desired.version, reason)
            self.errors[name] = (reason, 1)
            self._tasks[name] = self._spawn(
                self._report(name, desired, "failed", reason, 1, lambda: name in self.errors),
                f"pausesvc-version-{name}",
            )
            return
        current = self.pending.get(name)
        if current is not None and _same(current, desired):
            return
        if current is None and self.loaded.get(name) == desired.version and name not in self.errors:
            return  # already on it (a resync re-reading what was loaded)
        self.pending[name] = desired
        self.errors.pop(name, None)
        self._cancel(name)
        logger.info(
            "pausesvc gate: %r wants version %r (%s): parked here until it is loaded",
            name,
            desired.version,
            desired.path,
            extra={"event": "version_wanted", "adapter": name, "version": desired.version},
        )
        self._tasks[name] = self._spawn(self._converge(name, desired), f"pausesvc-version-{name}")

    def _cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _wake(self, name: str) -> None:
        ev = self._ready.pop(name, None)
        if ev is not None:
            ev.set()

    # -- converging ----------------------------------------------------------------------------------
    async def _converge(self, name: str, desired: DesiredVersion) -> None:
        def current() -> bool:
            return self.pending.get(name) is desired

        attempts = 0
        delay = RETRY_FIRST_S
        ready_by = time.monotonic() + NOT_READY_WAIT_S
        try:
            while current():
                await self._drain(name, current)  # nothing of `name` in flight any more
                if not current():
                    return
                t0 = time.monotonic()
                try:
                    used = self._used.setdefault(name, set())
                    await load_adapter(self._app(), name, desired.path, desired.load, used)
                except LoadError as exc:
                    if isinstance(exc, NotReady) and time.monotonic() < ready_by:
                        await asyncio.sleep(NOT_READY_RETRY_S)  # vLLM sets its state before serving
                        continue
                    attempts += 1
                    await self._failed(name, desired, str(exc), attempts, delay, current)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                self._loaded(name, desired, time.monotonic() - t0)
                await self._report(
                    name, desired, "loaded", None, attempts, lambda: self.loaded.get(name) == desired.version
                )
                return
        finally:
            if self._tasks.get(name) is asyncio.current_task():
                del self._tasks[name]

    async def _failed(
        self,
        name: str,
        desired: DesiredVersion,
        reason: str,
        attempts: int,
        delay: float,
        current: Callable[[], bool],
    ) -> None:
        self.load_failures += 1
        self.errors[name] = (reason, attempts)
        logger.error(
            "pausesvc gate: loading %r version %r from %s failed (attempt %d): %s; "
            "it stays parked on this replica, retrying in %.1fs",
            name,
            desired.version,
            desired.path,
            attempts,
            reason,
            delay,
            extra={"event": "version_failed", "adapter": name, "version": desired.version},
        )
        await self._report(name, desired, "failed", reason, attempts, current)

    def _loaded(self, name: str, desired: DesiredVersion, seconds: float) -> None:
        self.loaded[name] = desired.version
        self.loads += 1
        self.errors.pop(name, None)
        del self.pending[name]
        self._wake(name)
        logger.info(
            "pausesvc gate: loaded %r version %r in %.3fs; admitting it again",
            name,
            desired.version,
            seconds,
            extra={"event": "version_loaded", "adapter": name, "version": desired.version},
        )

    async def _report(
        self,
        name: str,
        desired: DesiredVersion,
        status: str,
        reason: str | None,
        attempts: int,
        still: Callable[[], bool],
    ) -> None:
        """Write ``version:<name>`` in the registry record; retry while Redis is away and the
        report is still true."""
        delay = 0.05
        while still():
            replica = self._replica()
            if replica is None:
                return
            try:
                await replica.report_version(
                    name,
                    desired.version,
                    status=status,  # type: ignore[arg-type]
                    revision=desired.revision,
                    reason=None if reason is None else reason[:REASON_MAX],
                    attempts=attempts,
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                honour_cancellation()
                logger.warning(
                    "pausesvc gate: reporting %r@%s %s failed: %s", name, desired.version, status, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, REPORT_RETRY_MAX_S)

    def note_direct_load(self, name: str, version: str | None) -> None:
        """A ``/v1/load_lora_adapter`` call (an old-style trainer) loaded ``name`` here."""
        if version:
            self.loaded[name] = version
        else:
            self.loaded.pop(name, None)

    def note_unload(self, name: str) -> None:
        """``name`` was unloaded here (no desired version: the trainer's business)."""
        self.loaded.pop(name, None)

    def status(self) -> dict[str, Any]:
        return {
            "loaded": dict(self.loaded),
            "pending": {n: d.version for n, d in self.pending.items()},
            "errors": {n: {"reason": r, "attempts": a} for n, (r, a) in self.errors.items()},
        }

    async def aclose(self) -> None:
        for name in list(self._tasks):
            self._cancel(name)
        for name in list(self._ready):
            self._wake(name)
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)


def _same(a: DesiredVersion, b: DesiredVersion) -> bool:
    return a.version == b.version and a.path == b.path and dict(a.load) == dict(b.load)
