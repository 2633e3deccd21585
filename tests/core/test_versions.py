"""Weight versions: the desired version in Redis, its event, the watcher's view, the swap barrier
(fake replicas through the public Replica API and their own watchers), the blocking client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from _wait import until

from pausesvc import (
    AdapterState,
    AsyncPauseClient,
    DesiredVersion,
    InvalidInputError,
    PauseClient,
    PauseEvent,
    PauseWatcher,
    Replica,
    SwapError,
    SwapResult,
)
from pausesvc.protocol.view import reconcile_versions


class FakeReplica:
    """A serving process at the registry seam: learns desired versions from ITS OWN watcher
    and reports them through the public Replica API (loaded, failed, or never)."""

    def __init__(self, redis_url: str, namespace: str, rid: str, *, mode: str = "load") -> None:
        self.client = AsyncPauseClient(redis_url, namespace=namespace)
        self.replica = Replica(self.client, rid)
        self.watcher = PauseWatcher(redis_url, namespace=namespace)
        self.mode = mode
        self.loaded: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def _on_version(self, name: str, desired: DesiredVersion | None) -> None:
        if desired is not None and self.mode != "silent":
            t = asyncio.create_task(self._load(name, desired))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    def _on_pause(self, name: str, st: AdapterState | None, ev: PauseEvent | None) -> None:
        if ev is not None and st is not None and st.drain_requested and self.mode != "silent":
            t = asyncio.create_task(
                self.replica.acknowledge(name, ev.revision, [], epoch=ev.epoch, tokens=sorted(st.tokens))
            )
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _load(self, name: str, dv: DesiredVersion) -> None:
        await asyncio.sleep(0.02)
        if self.mode == "fail":
            await self.replica.report_version(
                name, dv.version, status="failed", revision=dv.revision, reason="bad path", attempts=3
            )
            return
        self.loaded[name] = dv.version
        await self.replica.report_version(name, dv.version, status="loaded", revision=dv.revision)

    async def __aenter__(self) -> FakeReplica:
        await self.replica.heartbeat({"url": f"http://{self.replica.id}:8000", "pid": "1"})
        self.watcher.add_version_listener(self._on_version)
        self.watcher.add_listener(self._on_pause)
        await self.watcher.start()
        self._tasks.add(asyncio.create_task(self._beat()))
        return self

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            await self.replica.heartbeat({})

    async def __aexit__(self, *exc: object) -> None:
        for t in list(self._tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.watcher.aclose()
        await self.replica.leave()
        await self.client.aclose()


@contextlib.asynccontextmanager
async def fleet(redis_url: str, namespace: str, *modes: str) -> AsyncIterator[list[FakeReplica]]:
    async with contextlib.AsyncExitStack() as stack:
        reps = [
            await stack.enter_async_context(FakeReplica(redis_url, namespace, f"r{i}", mode=m))
            for i, m in enumerate(modes)
        ]
        yield reps


# -- the record, the script, the event ------------------------------------------------------------
async def test_set_get_clear_and_idempotent(redis_url: str, namespace: str, raw_redis: redis.Redis) -> None:
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        assert await c.get_version("a") is None and await c.versions() == {}
        dv = await c.set_version("a", "v1", "/w/a1", load={"load_inplace": True})
        assert (dv.name, dv.version, dv.path, dict(dv.load)) == ("a", "v1", "/w/a1", {"load_inplace": True})
        assert dv.revision == int(raw_redis.get(c.keys.rev) or 0) and dv.at > 1e9
        stored = json.loads(raw_redis.hget(f"pausesvc:{{{namespace}}}:versions", "a"))  # type: ignore[arg-type]
        assert set(stored) == {"name", "version", "path", "load", "rev", "at"}
        again = await c.set_version("a", "v1", "/w/a1", load={"load_inplace": True})
        assert again == dv  # no new revision
        assert int(raw_redis.get(c.keys.rev) or 0) == dv.revision
        assert await c.get_version("a") == dv and await c.versions() == {"a": dv}
        assert (await c.snapshot()).versions == {"a": dv}
        v2 = await c.set_version("a", "v1", "/w/a1", load={"load_inplace": False})
        assert v2.revision == dv.revision + 1
        assert await c.clear_version("a") is True
        assert await c.get_version("a") is None
        assert await c.clear_version("a") is False  # still announced (a new revision)
        assert int(raw_redis.get(c.keys.rev) or 0) == v2.revision + 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"version": ""}, "version"),
        ({"version": "v 1"}, "version"),
        ({"version": "x" * 300}, "version"),
        ({"version": 3}, "version"),
        ({"path": ""}, "path"),
        ({"path": "/a\nb"}, "path"),
        ({"load": []}, "load"),
        ({"load": {"lora_name": "x"}}, "load"),
        ({"load": {"lora_path": "x"}}, "load"),
        ({"load": {"nested": {"a": 1}}}, "load"),
        ({"load": {"f": float("nan")}}, "load"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_input_is_refused_by_field(
    redis_url: str, namespace: str, kwargs: dict[str, Any], field: str
) -> None:
    args: dict[str, Any] = {"name": "a", "version": "v1", "path": "/w", "load": None, **kwargs}
    with PauseClient(redis_url, namespace=namespace) as c:
        with pytest.raises(InvalidInputError) as ei:
            c.set_version(args["name"], args["version"], args["path"], load=args["load"])
        assert ei.value.field == field
        assert c.versions() == {}


async def test_event_is_shaped_like_a_pause_event(
    redis_url: str, namespace: str, raw_redis: redis.Redis
) -> None:
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        g = await c.pause("a", holder="t", reason="r")
        ps = raw_redis.pubsub()
        ps.subscribe(c.keys.events)
        assert ps.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]
        dv = await c.set_version("a", "v1", "/w")
        await c.clear_version("a")
        await c.clear_version("b")
        msgs = []
        while len(msgs) < 3:
            m = ps.get_message(timeout=2)
            assert m is not None
            if m["type"] == "message":
                msgs.append(json.loads(m["data"]))
        ps.close()
        ev1, ev2, ev3 = msgs
        assert ev1["op"] == "version" and ev1["rev"] == dv.revision and ev1["paused"] is True
        assert ev1["holder"] is None and ev1["state"]["holders"]["t"]["token"] == g.token
        assert ev1["version"] == {
            "name": "a",
            "version": "v1",
            "path": "/w",
            "load": {},
            "rev": dv.revision,
            "at": ev1["version"]["at"],
        }
        assert {"v", "rev", "epoch", "name", "ts"} <= set(ev1)
        assert ev2["version"] is None and ev2["paused"] is True and ev2["rev"] == dv.revision + 1
        assert ev3["name"] == "b" and ev3["paused"] is False and ev3["state"] is None
        parsed = PauseEvent.from_json(json.dumps(ev1))
        assert (
            parsed.version == dv
            and parsed.state is not None
            and parsed.to_dict()["version"]["version"] == "v1"
        )
        # an old-style consumer: positional construction still works
        assert PauseEvent(1, "e", "a", "pause", True, None, None, 0.0).version is None


async def test_old_style_watcher_applies_it_as_a_no_op(redis_url: str, namespace: str) -> None:
    seen: list[tuple[str, bool]] = []
    async with (
        PauseWatcher(redis_url, namespace=namespace) as w,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        w.add_listener(lambda n, st, ev: seen.append((ev.op, st is not None)) if ev else None)
        g = await c.pause("a")
        await until(lambda: w.is_paused("a"))
        state = w.state("a")
        dv = await c.set_version("a", "v1", "/w")
        await until(lambda: w.revision == dv.revision)
        assert w.is_paused("a") and w.state("a") == state and w.stats.gaps == 0
        assert w.desired("a") == dv and w.desired_versions == {"a": dv}
        await c.resume("a", token=g.token)
        await c.set_version("b", "v1", "/w")
        await until(lambda: w.desired("b") is not None)
        assert not w.is_paused("a") and not w.is_paused("b")
        assert seen == [("pause", True), ("version", True), ("resume", False), ("version", False)]


# -- the watcher's view ----------------------------------------------------------------------------
async def test_first_sync_resync_and_gap_fire_the_version_listener(redis_url: str, namespace: str) -> None:
    calls: list[tuple[str, str | None]] = []
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        a = await c.set_version("a", "v1", "/w")
        b = await c.set_version("b", "v7", "/w")
        w = PauseWatcher(redis_url, namespace=namespace, resync_interval=3600)
        w.add_version_listener(lambda n, d: calls.append((n, d.version if d else None)))
        async with w:
            assert sorted(calls) == [("a", "v1"), ("b", "v7")]  # once each, at the first sync
            assert w.desired_versions == {"a": a, "b": b}
            calls.clear()
            await w._resync("periodic")
            assert calls == []  # nothing changed
            # a gap: the watcher misses an event (published while it is not listening)
            w._view.revision -= 1
            await c.set_version("a", "v2", "/w2")
            await until(lambda: ("a", "v2") in calls)
            assert w.stats.gaps >= 1 and w.desired("a").version == "v2"  # type: ignore[union-attr]
            calls.clear()
            await c.clear_version("b")
            await until(lambda: calls == [("b", None)])
            assert w.desired("b") is None


async def test_a_missed_clear_is_honoured_at_resync(redis_url: str, namespace: str) -> None:
    calls: list[tuple[str, str | None]] = []
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        await c.set_version("a", "v1", "/w")
        async with PauseWatcher(redis_url, namespace=namespace, resync_interval=3600) as w:
            w.add_version_listener(lambda n, d: calls.append((n, d.version if d else None)))
            w._view.revision -= 1  # the clear's event will look like a gap: the view resyncs instead
            await c.clear_version("a")
            await until(lambda: w.desired("a") is None)
            # the snapshot lacks "a"; the clear's tombstone proves it was cleared, not lost
            assert w.stats.gaps >= 1 and calls == [("a", None)]
            assert int(await c.redis.zscore(c.keys.cleared_versions, "a") or 0) == w.revision
            await c.set_version("a", "v2", "/w")  # a set removes the tombstone
            assert await c.redis.zscore(c.keys.cleared_versions, "a") is None


async def test_data_loss_keeps_the_last_desired_version(
    redis_url: str, namespace: str, raw_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, str | None]] = []
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        dv = await c.set_version("a", "v2", "/w2")
        async with PauseWatcher(redis_url, namespace=namespace, resync_interval=3600) as w:
            w.add_version_listener(lambda n, d: calls.append((n, d.version if d else None)))
            # Redis loses everything (a restart without persistence): a new epoch, no versions
            for key in raw_redis.scan_iter(f"pausesvc:{{{namespace}}}:*"):
                raw_redis.delete(key)
            await c.pause("other")  # the first write of the new incarnation
            with caplog.at_level(logging.ERROR, logger="pausesvc.watcher"):
                await until(lambda: w.is_paused("other"))
                await w._resync("periodic")
            assert w.desired("a") == dv and calls == []
            assert any("lost desired weight versions" in r.getMessage() for r in caplog.records)
            # a version set in the new incarnation is taken; an explicit clear removes it
            new = await c.set_version("a", "v3", "/w3")
            await until(lambda: w.desired("a") == new)
            await c.clear_version("a")
            await until(lambda: w.desired("a") is None)
            assert calls == [("a", "v3"), ("a", None)]


def test_reconcile_rule_table() -> None:
    def dv(rev: int, at: float = 0.0, v: str = "v") -> DesiredVersion:
        return DesiredVersion("a", v, "/p", {}, rev, at or float(rev))

    # (known, found, cleared, new_epoch) -> (view, changed, kept)
    assert reconcile_versions({}, {"a": dv(3)}, {}, new_epoch=False) == ({"a": dv(3)}, ["a"], [])
    assert reconcile_versions({"a": dv(3)}, {"a": dv(3)}, {}, new_epoch=False) == ({"a": dv(3)}, [], [])
    assert reconcile_versions({"a": dv(3)}, {"a": dv(5)}, {}, new_epoch=False)[1] == ["a"]
    older = reconcile_versions({"a": dv(5)}, {"a": dv(3)}, {}, new_epoch=False)
    assert older == ({"a": dv(5)}, [], ["a"])  # a lagging replica's older record
    assert reconcile_versions({"a": dv(5)}, {"a": dv(3)}, {}, new_epoch=True)[0] == {"a": dv(3)}
    assert reconcile_versions({"a": dv(5)}, {}, {}, new_epoch=False) == ({"a": dv(5)}, [], ["a"])
    assert reconcile_versions({"a": dv(5)}, {}, {"a": 4}, new_epoch=False) == ({"a": dv(5)}, [], ["a"])
    assert reconcile_versions({"a": dv(5)}, {}, {"a": 6}, new_epoch=False) == ({}, ["a"], [])
    assert reconcile_versions({"a": dv(5)}, {}, {"a": 1}, new_epoch=True) == ({}, ["a"], [])


# -- the public Replica API -------------------------------------------------------------------------
async def test_replica_reports_are_stored_and_published(redis_url: str, namespace: str) -> None:
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        r = Replica(c, "rep-1")
        await r.heartbeat({"url": "http://rep-1:8000"})
        await r.report_version("a", "v1", status="failed", revision=7, reason="no such file", attempts=2)
        (rec,) = await c.replicas()
        got = rec["versions"]["a"]
        assert {k: got[k] for k in ("replica", "name", "version", "status", "reason", "attempts", "rev")} == {
            "replica": "rep-1",
            "name": "a",
            "version": "v1",
            "status": "failed",
            "reason": "no such file",
            "attempts": 2,
            "rev": 7,
        }
        assert got["type"] == "version" and got["at"] > 1e12 and rec["url"] == "http://rep-1:8000"
        with pytest.raises(InvalidInputError):
            await r.report_version("a", "v1", status="done", revision=7)  # type: ignore[arg-type]
        g = await r.pause_for_drain("a", holder="h", reason="x")
        assert g.state.drain_requested and g.created
        await r.acknowledge("a", g.revision, ["req-1"], epoch=g.epoch, tokens=[g.token])
        assert (await c.replicas())[0]["drains"]["a"]["aborted"] == ["req-1"]
        await r.leave()
        assert await c.replicas() == []


# -- swap ----------------------------------------------------------------------------------------------
async def test_swap_with_two_replicas(redis_url: str, namespace: str) -> None:
    async with (
        fleet(redis_url, namespace, "load", "load") as reps,
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        res = await c.swap("a", "v1", "/w/a1", timeout=10)
        assert isinstance(res, SwapResult) and res.loaded == ["r0", "r1"] and res.version == "v1"
        assert all(r.loaded == {"a": "v1"} for r in reps)
        assert (await c.get_version("a")).revision == res.revision  # type: ignore[union-attr]
        assert await c.get("a") is None  # the swap's pause is released
        again = await c.swap("a", "v1", "/w/a1", timeout=10)  # idempotent: already there
        assert again.revision == res.revision and again.loaded == ["r0", "r1"]


async def test_swap_names_a_replica_that_never_reports(redis_url: str, namespace: str) -> None:
    async with (
        fleet(redis_url, namespace, "load", "silent"),
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        t0 = time.monotonic()
        with pytest.raises(SwapError) as ei:
            await c.swap("a", "v1", "/w", timeout=1.0)
        assert time.monotonic() - t0 < 5
        err = ei.value
        assert err.missing == {"r1": "http://r1:8000"} and err.failed == {} and err.timed_out
        assert err.result.loaded == ["r0"] and "r1" in str(err) and "http://r1:8000" in str(err)
        assert await c.get("a") is None  # released: the gate holds it on r1 only
        assert (await c.get_version("a")).version == "v1"  # type: ignore[union-attr]


async def test_swap_names_a_failed_load_with_its_reason(redis_url: str, namespace: str) -> None:
    async with (
        fleet(redis_url, namespace, "fail", "load"),
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        with pytest.raises(SwapError) as ei:
            await c.swap("a", "v1", "/bad", timeout=5.0)
        assert ei.value.failed == {"r0": "bad path (attempts: 3)"} and ei.value.missing == {}
        assert not ei.value.timed_out and "bad path" in str(ei.value)
        assert await c.get("a") is None


async def test_swap_without_barrier_and_without_replicas(redis_url: str, namespace: str) -> None:
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        res = await c.swap("a", "v1", "/w", barrier=False)
        assert res.loaded == [] and (await c.get_version("a")).version == "v1"  # type: ignore[union-attr]
        res2 = await c.swap("a", "v2", "/w2", timeout=5)  # barrier, nobody live: returns at once
        assert res2.loaded == [] and res2.seconds < 2 and await c.get("a") is None


async def test_a_cancelled_swap_leaves_no_pause_and_its_pause_is_a_lease(
    redis_url: str, namespace: str
) -> None:
    async with (
        fleet(redis_url, namespace, "silent"),
        AsyncPauseClient(redis_url, namespace=namespace) as c,
    ):
        task = asyncio.create_task(c.swap("a", "v1", "/w", timeout=30))
        await until(lambda: task.done() or c._last_write[0] > 0)
        st = None
        for _ in range(100):
            st = await c.get("a")
            if st is not None:
                break
            await asyncio.sleep(0.01)
        assert st is not None and st.holders["default/swap"].expires_at is not None  # a lease
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await c.get("a") is None


async def test_swap_keeps_the_callers_own_pause(redis_url: str, namespace: str) -> None:
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        g = await c.pause("a")  # the default holder
        await c.swap("a", "v1", "/w", timeout=2)
        st = await c.get("a")
        assert st is not None and st.holders["default"].token == g.token


@contextlib.contextmanager
def threaded_fleet(redis_url: str, namespace: str, *modes: str) -> Iterator[None]:
    """:func:`fleet` on its own event loop in a thread (for blocking callers: client, CLI)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with fleet(redis_url, namespace, *modes):
            ready.set()
            await stop.wait()

    th = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    th.start()
    try:
        assert ready.wait(10)
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        th.join(10)
        loop.close()


def test_blocking_swap_and_events(redis_url: str, namespace: str) -> None:
    with (
        threaded_fleet(redis_url, namespace, "load", "load"),
        PauseClient(redis_url, namespace=namespace) as c,
    ):
        res = c.swap("a", "v1", "/w", timeout=10)
        assert res.loaded == ["r0", "r1"] and c.get("a") is None
        dv = c.get_version("a")
        assert dv is not None and dv == c.versions()["a"] and dv.version == "v1"
        with pytest.raises(SwapError):
            c.swap("a", "v2", "/w2", timeout=0)  # nobody can load it that fast
        assert c.get("a") is None
    got: list[PauseEvent] = []
    with PauseClient(redis_url, namespace=namespace) as c:
        events = c.events(timeout=2)

        def writer() -> None:
            time.sleep(0.3)
            with PauseClient(redis_url, namespace=namespace) as w:
                w.set_version("b", "v9", "/w9")

        threading.Thread(target=writer, daemon=True).start()
        for ev in events:
            got.append(ev)
            if ev.op == "version":
                break
    assert got[-1].version is not None and got[-1].version.version == "v9"


# -- the CLI ------------------------------------------------------------------------------------------
def cli(args: list[str], redis_url: str, namespace: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAUSESVC_")}
    env.update({"PAUSESVC_REDIS_URL": redis_url, "PAUSESVC_NAMESPACE": namespace})
    return subprocess.run(
        [sys.executable, "-m", "pausesvc", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_cli_swap_versions_status_replicas(redis_url: str, namespace: str) -> None:
    with threaded_fleet(redis_url, namespace, "load", "silent"):
        ok = cli(
            ["swap", "a", "--version", "v1", "--path", "/w", "--no-barrier", "--load", "x=1"],
            redis_url,
            namespace,
        )
        assert ok.returncode == 0, ok.stderr
        assert "v1 set" in ok.stdout
        bad = cli(["swap", "a", "--version", "v2", "--path", "/w2", "--timeout", "1"], redis_url, namespace)
        assert bad.returncode == 6, bad.stderr
        (line,) = bad.stderr.strip().splitlines()
        assert "r1" in line and "http://r1:8000" in line and "v2" in line
        listing = cli(["versions"], redis_url, namespace)
        assert listing.returncode == 0 and "a  desired version v2  path /w2" in listing.stdout
        status = cli(["status"], redis_url, namespace)
        assert "desired version v2" in status.stdout
        one = json.loads(cli(["status", "a", "--json"], redis_url, namespace).stdout)
        assert one["version"]["version"] == "v2"
        reps = cli(["replicas"], redis_url, namespace).stdout
        # a mixed fleet is visible: r0 on v2, r1 (silent) on nothing it reported
        assert re.search(r"^r0 .*versions: a@v2$", reps, re.M) and re.search(
            r"^r1 .*versions: -$", reps, re.M
        )
    with threaded_fleet(redis_url, namespace, "load", "load"):
        ok = cli(["swap", "a", "--version", "v3", "--path", "/w3", "--timeout", "10"], redis_url, namespace)
        assert ok.returncode == 0, ok.stderr
        assert "loaded by r0, r1" in ok.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["swap", "a", "--version", "v1"],
        ["swap", "a", "--version", "", "--path", "/w"],
        ["swap", "a", "--version", "v1", "--path", "/w", "--load", "novalue"],
        ["swap", "a", "--version", "v1", "--path", "/w", "--load", "lora_path=/x"],
        ["swap", "a b", "--version", "v1", "--path", "/w"],
    ],
)
def test_cli_swap_bad_input_exit_2_one_line(redis_url: str, namespace: str, args: list[str]) -> None:
    p = cli(args, redis_url, namespace)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("pausesvc: error:")


async def test_a_desired_version_of_star_is_refused(redis_url: str, namespace: str) -> None:
    from pausesvc import AsyncPauseClient, InvalidNameError

    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        with pytest.raises(InvalidNameError, match="'\\*'"):
            await c.set_version("*", "v1", "/p")
        assert await c.versions() == {}
