"""The fan-out vs pausesvc comparison (scenarios 1 + 2 + 6a) over veths, not loopback.

Three network namespaces of the bench's own (``psb<pid>c``, ``psb<pid>r``, ``psb<pid>p``):

    controller  10.201.1.1 --veth-- 10.201.1.2  redis-server
    controller  10.201.3.1 --veth-- 10.201.3.2  replicas (pausesvc gates, SkyRL uvicorns, floor)
    replicas    10.201.2.1 --veth-- 10.201.2.2  redis-server

(the replicas reach 10.201.1.2 through 10.201.2.2, a local address of the Redis namespace), so a
pause crosses two hops (controller -> Redis -> replica) and a fan-out call one hop and back
per replica; nothing else is routed and nothing is reachable over loopback. redis-server runs
in the Redis namespace bound to its two veth addresses only; the controller (a child
``python -m bench._netns``) runs in the controller namespace; the replica processes enter the
replica namespace (setns) before they start. Reports go over an AF_UNIX datagram socket (a
path: not network-namespaced), off the veths being measured.

A delay per hop (``tc qdisc add dev <veth> root netem delay 0.25ms`` / ``1ms`` on both ends of
each veth) is added when the kernel has netem. When it does not, the run says why, measures the
veths without added delay, and then - if gcc is there - emulates the delay in user space with
``bench/delayrelay.c``: a relay in the Redis namespace in front of redis-server (which then
also listens on that namespace's own loopback) and one in the replica namespace in front of
each baseline replica (which then listens on the replica namespace's loopback), each holding
every chunk for the delay in each direction: one way per hop = the delay, as netem on both
veth ends. Unlike netem it does not delay TCP's handshake and ACKs, and it costs a little CPU
(ppoll, memcpy) on the same 2 cores. Namespaces, veths and the Redis process are removed on exit,
also on failure (``finally``); namespaces a dead earlier run left behind (its pid gone) are
removed first. Root only (``id -u`` 0), ``ip`` and ``tc`` from iproute2.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pausesvc.devtools.embedded import find_redis_server

__all__ = ["checks", "in_ns", "run"]

log = logging.getLogger("bench")
PREFIX = "psb"
REDIS_PORT = 7411  # inside the project's own namespace: nothing else listens there
RELAY_PORT = 7412  # the delay relay in front of it (netem missing)
CLONE_NEWNET = 0x40000000
ROOT = Path(__file__).resolve().parent.parent


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=check)


def checks() -> dict[str, Any]:
    """What this machine allows: root, ip, tc, network namespaces, netem."""
    out: dict[str, Any] = {
        "uid": os.geteuid(),
        "ip": shutil.which("ip"),
        "tc": shutil.which("tc"),
        "netem": False,
        "netem_error": None,
    }
    if out["uid"] != 0 or not out["ip"] or not out["tc"]:
        return out
    ns = f"{PREFIX}{os.getpid()}t"
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "-n", ns, "link", "add", "t0", "type", "veth", "peer", "name", "t1")
        res = _sh(
            "ip",
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            "t0",
            "root",
            "netem",
            "delay",
            "1ms",
            check=False,
        )
        out["netem"] = res.returncode == 0
        if not out["netem"]:
            out["netem_error"] = (res.stderr or res.stdout).strip()
            cfg = "unknown"
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                z = subprocess.run(
                    ["zcat", "/proc/config.gz"], capture_output=True, text=True, timeout=10
                ).stdout
                cfg = next((ln for ln in z.splitlines() if "NET_SCH_NETEM" in ln), "not in /proc/config.gz")
            out["kernel_config"] = cfg
            out["modules_dir"] = os.path.isdir(f"/lib/modules/{os.uname().release}")
    finally:
        _sh("ip", "netns", "del", ns, check=False)
    return out


def _stale() -> None:
    """Remove namespaces of this bench whose creating process is gone."""
    res = _sh("ip", "netns", "list", check=False)
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX) or len(name) < len(PREFIX) + 2:
            continue
        pid = name[len(PREFIX) : -1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            log.info("netns: removing %s left by a dead run", name)
            _sh("ip", "netns", "del", name, check=False)


class Topology:
    """The three namespaces and veths above; ``close()`` removes them (idempotent)."""

    LINKS = (  # (namespace a, ip a, namespace b, ip b, subnet id)
        ("c", "10.201.1.1", "r", "10.201.1.2"),
        ("p", "10.201.2.1", "r", "10.201.2.2"),
        ("c", "10.201.3.1", "p", "10.201.3.2"),
    )

    def __init__(self) -> None:
        base = f"{PREFIX}{os.getpid()}"
        self.ns = {k: base + k for k in "crp"}
        self.devs: list[tuple[str, str]] = []  # (namespace, device) of every veth end
        self.redis: subprocess.Popen[bytes] | None = None
        self.relay: subprocess.Popen[bytes] | None = None
        self.tmp = tempfile.TemporaryDirectory(prefix="pausesvc-netns-")
        self.relay_exe: str | None = None

    def up(self) -> Topology:
        try:
            _stale()
            for n in self.ns.values():
                _sh("ip", "netns", "add", n)
                _sh("ip", "-n", n, "link", "set", "lo", "up")
            for i, (a, ipa, b, ipb) in enumerate(self.LINKS):
                da, db = f"v{i}{a}", f"v{i}{b}"
                na, nb = self.ns[a], self.ns[b]
                _sh("ip", "-n", na, "link", "add", da, "type", "veth", "peer", "name", db, "netns", nb)
                for n, d, ip in ((na, da, ipa), (nb, db, ipb)):
                    _sh("ip", "-n", n, "addr", "add", f"{ip}/30", "dev", d)
                    _sh("ip", "-n", n, "link", "set", d, "up")
                    self.devs.append((n, d))
            # the replicas reach Redis by the controller's address too (one URL for every party):
            # via its other veth end - a local address of the Redis namespace, no forwarding
            _sh("ip", "-n", self.ns["p"], "route", "add", "10.201.1.2/32", "via", "10.201.2.2")
            self._start_redis()
        except BaseException:
            self.close()
            raise
        return self

    def _start_redis(self) -> None:
        log_path = Path(self.tmp.name) / "redis.log"
        with open(log_path, "ab") as out:
            self.redis = subprocess.Popen(
                [
                    "ip", "netns", "exec", self.ns["r"], find_redis_server(),
                    "--bind", "10.201.1.2 10.201.2.2 127.0.0.1", "--port", str(REDIS_PORT),
                    "--protected-mode", "no", "--save", "", "--appendonly", "no",
                    "--dir", self.tmp.name, "--daemonize", "no", "--loglevel", "warning",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.redis.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log_path.read_text()[-400:]}")
            ping = ("redis-cli", "-h", "10.201.1.2", "-p", str(REDIS_PORT), "ping")
            res = _sh("ip", "netns", "exec", self.ns["c"], *ping, check=False)
            if "PONG" in res.stdout:
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server in the namespace did not answer within 10 s")

    def set_delay(self, ms: float) -> None:
        """netem ``ms`` on every veth end (one way per hop = ``ms``); 0 removes it."""
        for n, d in self.devs:
            _sh("ip", "netns", "exec", n, "tc", "qdisc", "del", "dev", d, "root", check=False)
            if ms > 0:
                _sh(
                    "ip",
                    "netns",
                    "exec",
                    n,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    d,
                    "root",
                    "netem",
                    "delay",
                    f"{ms}ms",
                )

    def build_relay(self) -> str | None:
        """Compile bench/delayrelay.c (None: no gcc, or it failed - the reason is logged)."""
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            return None
        exe = f"{self.tmp.name}/delayrelay"
        res = _sh(gcc, "-O2", "-o", exe, str(ROOT / "bench" / "delayrelay.c"), check=False)
        if res.returncode != 0:
            log.warning("netns: could not build the delay relay: %s", res.stderr[-400:])
            return None
        self.relay_exe = exe
        return exe

    def set_relay(self, ms: float) -> None:
        """The delay relay in front of redis-server (RELAY_PORT on both veth addresses)."""
        stop_relay(self.relay)
        self.relay = None
        if ms > 0 and self.relay_exe:
            maps = [f"{ip}:{RELAY_PORT}=127.0.0.1:{REDIS_PORT}" for ip in ("10.201.1.2", "10.201.2.2")]
            self.relay = start_relay(self.relay_exe, self.ns["r"], ms, maps)

    def close(self) -> None:
        stop_relay(self.relay)
        self.relay = None
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait()
        self.redis = None
        for n in self.ns.values():
            _sh("ip", "netns", "del", n, check=False)
        self.tmp.cleanup()


def start_relay(exe: str, ns: str, ms: float, maps: list[str]) -> subprocess.Popen[bytes]:
    """``delayrelay`` in namespace ``ns``, holding every chunk ``ms`` per direction; returns
    once it listens."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, exe, str(ms * 1000.0), *maps],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"delay relay in {ns} did not start (exit {proc.wait()})")
    return proc


def stop_relay(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _setns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_ns(ns: str, bind: str, target: str, args: tuple[Any, ...]) -> None:
    """Child: enter namespace ``ns``, listen on ``bind``, run ``bench._procs.<target>(*args)``."""
    from bench import _procs

    _setns(ns)
    _procs.BIND = bind
    getattr(_procs, target)(*args)


def _child(params: dict[str, Any]) -> None:
    """``python -m bench._netns '<json>'`` inside the controller namespace."""
    from bench import _latency
    from bench._util import start_procs

    relay_ms = params["relay_ms"]
    # behind a relay the replicas listen on their namespace's loopback, the relay on the veth
    bind = "127.0.0.1" if relay_ms else "10.201.3.2"
    relays: list[subprocess.Popen[bytes]] = []

    def spawn(target: Any, argsets: list[tuple[Any, ...]]) -> list[Any]:
        return start_procs(in_ns, [(params["replica_ns"], bind, target.__name__, a) for a in argsets])

    async def on_ports(ports: list[int]) -> None:
        if relay_ms:
            maps = [f"10.201.3.2:{p}=127.0.0.1:{p}" for p in ports]
            relays.append(
                await asyncio.to_thread(
                    start_relay, params["relay_exe"], params["replica_ns"], relay_ms, maps
                )
            )

    async def main() -> list[dict[str, Any]]:
        rows = []
        for i, R in enumerate(params["rs"]):
            try:
                rows.append(
                    await _latency._at_r(
                        params["url"],
                        R,
                        params["trials"],
                        params["cpu_events"],
                        spawn=spawn,
                        host="10.201.3.2",
                        report_path=f"{params['tmp']}/reports-{relay_ms}-{i}.sock",
                        on_ports=on_ports,
                    )
                )
            finally:
                while relays:
                    stop_relay(relays.pop())
        return rows

    logging.basicConfig(level=logging.INFO, format="%(asctime)s netns %(message)s")
    for noisy in ("httpx", "pausesvc", "pausesvc_vllm", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    Path(params["out"]).write_text(json.dumps(asyncio.run(main())))


async def run(url: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Every delay this kernel allows (0, and 0.25 / 1 ms per hop with netem), R in
    ``cfg['netns_rs']``; each in a bounded child (``cfg['netns_timeout_s']``, default 900 s)."""
    ck = checks()
    out: dict[str, Any] = {"checks": ck, "runs": []}
    if ck["uid"] != 0 or not ck["ip"] or not ck["tc"]:
        out["error"] = f"needs root and iproute2 (uid {ck['uid']}, ip {ck['ip']}, tc {ck['tc']})"
        log.warning("netns: %s", out["error"])
        return out
    # (delay per hop in ms, how): netem when the kernel has it, else the user-space relay
    plan = [(0.0, "none")]
    if not ck["netem"]:
        out["netem_missing"] = (
            f"tc netem unavailable: `{ck['netem_error']}`; kernel {os.uname().release}: "
            f"{ck.get('kernel_config')}, /lib/modules/<release> present: {ck.get('modules_dir')} "
            "(no sch_netem module to load, and installing iproute2 cannot add one)"
        )
        log.warning("netns: %s", out["netem_missing"])
    topo = Topology()
    try:
        await asyncio.to_thread(topo.up)
        if ck["netem"]:
            plan += [(0.25, "netem"), (1.0, "netem")]
        elif await asyncio.to_thread(topo.build_relay):
            plan += [(0.25, "relay"), (1.0, "relay")]
        else:
            out["relay_missing"] = "no gcc to build bench/delayrelay.c: the veths only"
        for ms, how in plan:
            await asyncio.to_thread(topo.set_delay, ms if how == "netem" else 0.0)
            await asyncio.to_thread(topo.set_relay, ms if how == "relay" else 0.0)
            port = RELAY_PORT if how == "relay" else REDIS_PORT
            res_path = Path(topo.tmp.name) / f"result-{ms}.json"
            params = {
                "url": f"redis://10.201.1.2:{port}/0",
                "relay_ms": ms if how == "relay" else 0.0,
                "relay_exe": topo.relay_exe,
                "replica_ns": topo.ns["p"],
                "rs": cfg["netns_rs"],
                "trials": cfg["netns_trials"],
                "cpu_events": cfg.get("netns_cpu_events", cfg["cpu_events"]),
                "tmp": topo.tmp.name,
                "out": str(res_path),
            }
            t = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", topo.ns["c"], sys.executable, "-m", "bench._netns", json.dumps(params),
                cwd=str(ROOT),
            )  # fmt: skip
            try:
                async with asyncio.timeout(cfg.get("netns_timeout_s", 900)):
                    rc = await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise RuntimeError(f"netns run at {ms} ms timed out") from None
            if rc != 0:
                raise RuntimeError(f"netns child exited {rc} at delay {ms} ms")
            out["runs"].append(
                {
                    "delay_ms_per_hop": ms,
                    "delay_by": how,
                    "seconds": round(time.monotonic() - t, 1),
                    "rows": json.loads(res_path.read_text()),
                }
            )
            log.info("netns: delay %.2f ms/hop done in %.1fs", ms, time.monotonic() - t)
    finally:
        await asyncio.to_thread(topo.close)
    return out


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
