"""A fleet of simulated replicas on one Redis (and on a 3-primary Redis Cluster, sharded pub/sub).

Each simulated replica is a real :class:`pausesvc.PauseWatcher` (configured from ``Settings()``
as :func:`pausesvc.shared_watcher` builds it), with its own client: one pub/sub connection, plus
the pooled command connection its snapshot reads use (subscribe, periodic resync every 10 s),
its own view, and a listener that notes the instant its view of adapter ``A`` changes. What is
NOT simulated: the gate middleware, the heartbeat (``Replica``) and the vLLM process around it -
so Redis sees the watchers' PINGs and resyncs but no heartbeats.

The floor: plain redis-py asyncio subscribers (same redis-py, same parser - hiredis is not
installed here, so both read with redis-py's pure-Python RESP parser - ``decode_responses`` as
the watcher's client), one connection each, SUBSCRIBE (SSUBSCRIBE on the cluster) to a channel
of the same hash slot; the controller PUBLISHes (SPUBLISHes) ``1`` / ``0``.

Both designs run side by side, R connections each, spread over ``workers`` processes per design
(2 cores here: one Python loop would be the bottleneck). A worker reports once per change, when
the last of its views applied it, with that view's CLOCK_MONOTONIC time; propagation is from
the start of the controller's call to the latest of those. Trials interleave the designs in a
rotating order.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aredis

from bench._util import Collector, profile_top, start_procs, stop_procs, summary
from pausesvc import AsyncPauseClient, EmbeddedRedis, Keys, PauseWatcher, Settings

__all__ = ["fleet_worker", "run", "run_cluster"]

log = logging.getLogger("bench")
ADAPTER = "A"
ADDR = "127.0.0.1"


def floor_channel(ns: str) -> str:
    """A channel in the namespace's hash slot (same shard as its events on a cluster)."""
    return f"{Keys(ns).tag}:floor"


def raise_nofile(needed: int) -> dict[str, Any]:
    """Raise this process's soft RLIMIT_NOFILE towards the hard limit if ``needed`` exceeds it
    (children - redis-server, workers - inherit it). Returns what was found and done."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out: dict[str, Any] = {"soft": soft, "hard": hard, "needed": needed, "raised_to": None}
    if needed > soft:
        new = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        out["raised_to"] = new
    return out


# -- the worker processes ---------------------------------------------------------------------------


def _watcher(url: str, ns: str) -> PauseWatcher:
    s = Settings()
    return PauseWatcher(
        url,
        namespace=ns,
        resync_interval=s.resync_interval_s,
        health_check_interval=s.health_check_interval_s,
        max_backoff=s.reconnect_max_backoff_s,
        on_data_loss=s.on_data_loss,
        sharded={"on": True, "off": False}.get(s.sharded_pubsub),
        fence_bound=s.fence_bound_s,
        command_timeout=s.command_timeout_s,
    )


class _Tally:
    """Counts the local views that applied the current change; reports when all did."""

    def __init__(self, kind: str, widx: int, n: int, udp_port: int) -> None:
        self.kind, self.widx, self.n = kind, widx, n
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addr = (ADDR, udp_port)
        self.count = {"1": 0, "0": 0}
        self.last = {"1": 0.0, "0": 0.0}

    def hit(self, state: str) -> None:
        t = time.monotonic()
        self.count[state] += 1
        if t > self.last[state]:
            self.last[state] = t
        if self.count[state] == self.n:
            self.send(state, f"{self.last[state]:.9f}")
            self.count[state] = 0
            self.last[state] = 0.0

    def send(self, state: str, extra: str = "") -> None:
        msg = f"{self.kind} {self.widx} {state} {time.monotonic():.9f} {time.process_time():.6f} {extra}"
        self.sock.sendto(msg.encode(), self.addr)


async def _pausesvc_views(
    url: str, ns: str, n: int, tally: _Tally, stack: Any, watchers: list[PauseWatcher]
) -> None:
    for _ in range(n):
        w = _watcher(url, ns)
        last = [False]

        def on_change(name: str, state: Any, ev: Any, w: PauseWatcher = w, last: list[bool] = last) -> None:
            paused = w.is_paused(ADAPTER)
            if paused != last[0]:
                last[0] = paused
                tally.hit("1" if paused else "0")

        w.add_listener(on_change)
        watchers.append(w)
        stack.push_async_callback(w.aclose)
    for i in range(0, n, 25):  # bounded concurrency: 25 subscribe + snapshot at a time
        await asyncio.gather(*(w.start(timeout=60) for w in watchers[i : i + 25]))


async def _floor_views(url: str, channel: str, sharded: bool, n: int, tally: _Tally, stack: Any) -> None:
    async def one(r: aredis.Redis, ready: asyncio.Event) -> None:
        ps = r.pubsub()
        try:
            if sharded:
                await ps.ssubscribe(channel)
            else:
                await ps.subscribe(channel)
            async for msg in ps.listen():
                kind = msg["type"]
                if kind in ("message", "smessage"):
                    tally.hit(msg["data"])
                elif kind in ("subscribe", "ssubscribe"):
                    ready.set()
        finally:
            await ps.aclose()

    tasks = []
    for i in range(0, n, 25):
        batch = []
        for _ in range(min(25, n - i)):
            r = aredis.Redis.from_url(url, decode_responses=True)
            stack.push_async_callback(r.aclose)
            ev = asyncio.Event()
            tasks.append(asyncio.create_task(one(r, ev)))
            batch.append(ev)
        async with asyncio.timeout(60):
            await asyncio.gather(*(e.wait() for e in batch))
    for t in tasks:
        stack.callback(t.cancel)


def fleet_worker(
    design: str, widx: int, url: str, ns: str, n: int, udp_port: int, sharded: bool, profile_to: str
) -> None:
    """Child: ``n`` views of one design. SIGUSR1 starts cProfile, SIGUSR2 writes its top
    functions to ``profile_to`` (the controller profiles a block of changes it does not time)."""

    async def main() -> None:
        kind = "fp" if design == "pausesvc" else "ff"
        tally = _Tally(kind, widx, n, udp_port)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        prof = cProfile.Profile(time.process_time)  # CPU time: idle epoll waits not counted

        def prof_start() -> None:
            prof.enable()

        def prof_stop() -> None:
            prof.disable()
            Path(profile_to).write_text(profile_top(prof, 22))
            tally.send("profiled")

        watchers: list[PauseWatcher] = []

        def stats() -> None:
            st = [w.stats for w in watchers]
            tally.send(
                "stats",
                f"{sum(x.reconnects for x in st)} {sum(x.resyncs for x in st)} {sum(x.events for x in st)}",
            )

        loop.add_signal_handler(signal.SIGUSR1, prof_start)
        loop.add_signal_handler(signal.SIGUSR2, prof_stop)
        loop.add_signal_handler(signal.SIGHUP, stats)
        async with contextlib.AsyncExitStack() as stack:
            if design == "pausesvc":
                await _pausesvc_views(url, ns, n, tally, stack, watchers)
            else:
                await _floor_views(url, floor_channel(ns), sharded, n, tally, stack)
            tally.send("ready")
            await stop.wait()

    asyncio.run(main())


# -- the controller ---------------------------------------------------------------------------------


class _Side:
    def __init__(self, name: str, kind: str, pause: Any, resume: Any, procs: list[Any]) -> None:
        self.name, self.kind, self.pause, self.resume = name, kind, pause, resume
        self.procs = procs
        self.workers = len(procs)
        self.ctl: dict[str, list[float]] = {"pause": [], "resume": []}
        self.prop: dict[str, list[float]] = {"pause": [], "resume": []}


async def _one(col: Collector, d: _Side, op: str, record: bool, timeout: float) -> list[Any]:
    state = "1" if op == "pause" else "0"
    col.arm(d.kind, state)
    t0 = time.monotonic()
    await (d.pause() if op == "pause" else d.resume())
    t1 = time.monotonic()
    reps = await col.expect(d.kind, state, d.workers, timeout=timeout)
    if record:
        d.ctl[op].append(t1 - t0)
        d.prop[op].append(max(float(r.extra) for r in reps) - t0)
    return reps


async def _redis_cpu(rs: list[aredis.Redis]) -> float:
    total = 0.0
    for r in rs:
        info = await r.info("cpu")
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


async def _workers_cpu(col: Collector, d: _Side) -> float:
    """The sum of the side's workers' CPU seconds now (each answers SIGHUP with a report)."""
    col.arm(d.kind, "stats")
    for p in d.procs:
        os.kill(p.pid, signal.SIGHUP)
    return sum(r.cpu for r in await col.expect(d.kind, "stats", len(d.procs), timeout=30))


async def _cpu_block(
    col: Collector, d: _Side, events: int, rs: list[aredis.Redis], settle: float, timeout: float
) -> dict[str, float]:
    """Redis, controller and workers' CPU over ``events`` pause+resume pairs, and the same over
    an equally long quiet spell right after (the views' PINGs and resyncs): 'net' = the
    difference, what the changes themselves cost."""
    w0 = await _workers_cpu(col, d)
    rc0 = await _redis_cpu(rs)
    c0 = time.process_time()
    t0 = time.monotonic()
    for _ in range(events):
        for op in ("pause", "resume"):
            await _one(col, d, op, False, timeout)
            await asyncio.sleep(settle)
    wall = time.monotonic() - t0
    ctl = time.process_time() - c0
    busy = await _redis_cpu(rs) - rc0
    w1 = await _workers_cpu(col, d)
    i0 = await _redis_cpu(rs)
    await asyncio.sleep(wall)
    idle = await _redis_cpu(rs) - i0
    w_idle = await _workers_cpu(col, d) - w1
    changes = 2 * events
    return {
        "changes": changes,
        "wall_s": wall,
        "redis_idle_cpu_fraction": idle / wall,
        "redis_ms": 1e3 * busy / changes,
        "redis_idle_ms": 1e3 * idle / changes,
        "redis_net_ms": 1e3 * (busy - idle) / changes,
        "controller_ms": 1e3 * ctl / changes,
        "workers_ms": 1e3 * (w1 - w0) / changes,
        "workers_idle_ms": 1e3 * w_idle / changes,
        "workers_net_ms": 1e3 * (w1 - w0 - w_idle) / changes,
    }


async def _profile(
    col: Collector, d: _Side, proc: Any, events: int, path: Path, settle: float, timeout: float
) -> str:
    col.arm(d.kind, "profiled")
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGUSR1)
    await asyncio.sleep(0.2)
    for _ in range(events):
        for op in ("pause", "resume"):
            await _one(col, d, op, False, timeout)
            await asyncio.sleep(settle)
    os.kill(proc.pid, signal.SIGUSR2)
    await col.expect(d.kind, "profiled", 1, timeout=30)
    return await asyncio.to_thread(path.read_text)


async def measure(
    url: str,
    ns: str,
    R: int,
    cfg: dict[str, Any],
    *,
    redis_urls: list[str],
    floor_url: str | None = None,
    sharded: bool = False,
) -> dict[str, Any]:
    """One R: R pausesvc views and R floor subscribers, interleaved trials, CPU blocks, profiles."""
    workers = max(1, min(cfg.get("fleet_workers", 4), R))
    per = [R // workers + (1 if i < R % workers else 0) for i in range(workers)]
    col = await Collector.open()
    tmp = tempfile.TemporaryDirectory(prefix="pausesvc-fleet-")
    procs: list[Any] = []
    admins = [aredis.Redis.from_url(u, decode_responses=True) for u in redis_urls]
    floor_url = floor_url or url
    pub = aredis.Redis.from_url(floor_url, decode_responses=True)
    client = AsyncPauseClient(url, namespace=ns, holder="bench")
    timeout = 30.0 + R / 20
    try:
        clients0 = sum([(await a.info("clients"))["connected_clients"] for a in admins])
        t_up = time.monotonic()
        p_procs = start_procs(
            fleet_worker,
            [
                ("pausesvc", i, url, ns, per[i], col.port, sharded, f"{tmp.name}/p{i}.prof")
                for i in range(workers)
            ],
        )
        procs += p_procs
        await col.expect("fp", "ready", workers, timeout=120 + R / 5)
        await asyncio.sleep(0.5)
        clients_p = sum([(await a.info("clients"))["connected_clients"] for a in admins])
        f_procs = start_procs(
            fleet_worker,
            [
                ("floor", i, floor_url, ns, per[i], col.port, sharded, f"{tmp.name}/f{i}.prof")
                for i in range(workers)
            ],
        )
        procs += f_procs
        await col.expect("ff", "ready", workers, timeout=120 + R / 5)
        startup = time.monotonic() - t_up
        await asyncio.sleep(1.0)
        by_node = [(await a.info("clients"))["connected_clients"] for a in admins]
        clients1 = sum(by_node)
        log.info("fleet R=%d: %d + %d views up in %.1fs (%d workers each)", R, R, R, startup, workers)

        grant: dict[str, str] = {}

        async def p_pause() -> None:
            grant["t"] = (await client.pause(ADAPTER)).token

        async def p_resume() -> None:
            await client.resume(ADAPTER, token=grant["t"])

        ch = floor_channel(ns)
        cmd = "SPUBLISH" if sharded else "PUBLISH"
        sides = [
            _Side("pausesvc", "fp", p_pause, p_resume, p_procs),
            _Side(
                "floor",
                "ff",
                lambda: pub.execute_command(cmd, ch, "1"),
                lambda: pub.execute_command(cmd, ch, "0"),
                f_procs,
            ),
        ]
        settle = 0.02 + 0.00005 * R
        for w in range(2):  # warm-up, not recorded
            for d in sides[w % 2 :] + sides[: w % 2]:
                for op in ("pause", "resume"):
                    await _one(col, d, op, False, timeout)
                    await asyncio.sleep(settle)
        for t in range(cfg["fleet_trials"]):
            for d in sides[t % 2 :] + sides[: t % 2]:
                for op in ("pause", "resume"):
                    await _one(col, d, op, True, timeout)
                    await asyncio.sleep(settle)
        cpu = {
            d.name: await _cpu_block(col, d, cfg["fleet_cpu_events"], admins, settle, timeout) for d in sides
        }
        profiles = {}
        if cfg.get("fleet_profile_events"):
            for d, plist in ((sides[0], p_procs), (sides[1], f_procs)):
                path = Path(tmp.name) / f"{'p' if d.kind == 'fp' else 'f'}0.prof"
                profiles[d.name] = await _profile(
                    col, d, plist[0], cfg["fleet_profile_events"], path, settle, timeout
                )
        col.arm("fp", "stats")
        for p in p_procs:
            os.kill(p.pid, signal.SIGHUP)
        st = await col.expect("fp", "stats", workers, timeout=30)
        tot = [sum(int(r.extra.split()[k]) for r in st) for k in range(3)]
        out: dict[str, Any] = {
            "R": R,
            "watcher_stats": {
                "seconds": time.monotonic() - t_up,
                "reconnects": tot[0],
                "resyncs": tot[1],
                "events": tot[2],
            },
            "workers_per_design": workers,
            "startup_s": startup,
            "connections_per_view": {
                "pausesvc": (clients_p - clients0) / R,
                "floor": (clients1 - clients_p) / R,
            },
            "clients_by_node": by_node,
            "cpu_per_event": cpu,
            "profiles": profiles,
        }
        for d in sides:
            out[d.name] = {
                f"{k}_{op}_ms": summary(v[op], 1e3)
                for k, v in (("controller", d.ctl), ("propagation", d.prop))
                for op in ("pause", "resume")
            }
        return out
    finally:
        stop_procs(procs, timeout=10.0)
        await client.aclose()
        await pub.aclose()
        for a in admins:
            await a.aclose()
        col.close()
        tmp.cleanup()


async def run(url: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """R in ``cfg['fleet_rs']`` on a redis-server of its own (not the bench's shared one)."""
    rs = cfg["fleet_rs"]
    nofile = raise_nofile(4 * max(rs) + 512)
    out: dict[str, Any] = {"nofile": nofile, "rows": []}
    maxclients = str(4 * max(rs) + 256)
    with EmbeddedRedis(extra_args=["--maxclients", maxclients]) as server:
        if server.port == 6379:  # never the machine's own Redis port
            raise RuntimeError("free_port returned 6379")
        out["redis_port"] = server.port
        for R in rs:
            t = time.monotonic()
            out["rows"].append(await measure(server.url, f"fleet{R}", R, cfg, redis_urls=[server.url]))
            log.info("fleet R=%d done in %.1fs", R, time.monotonic() - t)
    return out


# -- Redis Cluster ----------------------------------------------------------------------------------


class _Cluster:
    """A 3-primary Redis Cluster on loopback, free ports (each with its bus port free)."""

    def __init__(self, n: int = 3, maxclients: int = 2048) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="pausesvc-bench-cluster-")
        self.nodes = [
            EmbeddedRedis(
                dir=self.tmp.name,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{i}.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--maxclients",
                    str(maxclients),
                ],
            )
            for i in range(n)
        ]

    def start(self) -> _Cluster:
        try:
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError("redis-cli not found on PATH (needed for --cluster create)")
            for n in self.nodes:
                if n.port == 6379:
                    raise RuntimeError("free_port returned 6379")
                n.start()
            addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
            res = subprocess.run(
                [cli, "--cluster", "create", *addrs, "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if res.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed: {res.stdout[-500:]} {res.stderr[-500:]}"
                )
            deadline = time.monotonic() + 30
            while True:
                info = subprocess.run(
                    [cli, "-p", str(self.nodes[0].port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                if "cluster_state:ok" in info:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster not ok after 30 s: {info[:300]}")
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for n in self.nodes:
            n.stop()
        self.tmp.cleanup()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node_urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def owner_url(self, key: str) -> str:
        """The primary that owns ``key``'s slot."""
        from redis.cluster import ClusterNode, RedisCluster

        rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", self.nodes[0].port)])  # type: ignore[no-untyped-call]
        try:
            node = rc.get_node_from_key(key)
            return f"redis://127.0.0.1:{node.port}/0"
        finally:
            rc.close()


async def run_cluster(url: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The fleet measurement at R = ``cfg['cluster_r']`` on a 3-primary cluster, sharded pub/sub:
    the watchers SSUBSCRIBE through redis-py's cluster client (``redis+cluster://``), the floor
    SSUBSCRIBEs with plain clients to the primary that owns the namespace's slot."""
    R = cfg["cluster_r"]
    nofile = raise_nofile(6 * R + 512)
    ns = f"cluster{R}"
    out: dict[str, Any] = {"nofile": nofile, "R": R}
    cluster = _Cluster(maxclients=6 * R + 256)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log.warning("cluster: could not be built: %s", exc)
        return {**out, "error": f"{type(exc).__name__}: {exc}"}
    try:
        owner = cluster.owner_url(Keys(ns).events)
        out["primaries"] = [n.port for n in cluster.nodes]
        out["owner_port"] = int(owner.rsplit(":", 1)[1].split("/")[0])
        row = await measure(
            cluster.url, ns, R, cfg, redis_urls=cluster.node_urls(), floor_url=owner, sharded=True
        )
        out["row"] = row
    finally:
        cluster.close()
    return out
