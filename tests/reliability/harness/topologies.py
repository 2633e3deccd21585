"""Redis Sentinel (primary + replica + three sentinels) and Redis Cluster (three primaries) on
127.0.0.1. Data nodes are :class:`pausesvc.EmbeddedRedis`; sentinels are redis-server in
sentinel mode (they need a config file). Everything stops in :meth:`close`, pass or fail."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from pausesvc import EmbeddedRedis
from pausesvc.devtools.embedded import find_redis_server, free_port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class SentinelSet:
    SERVICE = "mymaster"

    def __init__(self, workdir: Path, *, down_after_ms: int = 1000) -> None:
        self.dir = workdir / "sentinel"
        self.dir.mkdir(exist_ok=True)
        self.down_after_ms = down_after_ms
        self.primary = EmbeddedRedis(dir=str(self.dir / "p"), extra_args=["--repl-diskless-sync-delay", "0"])
        self.replica: EmbeddedRedis | None = None
        self.sentinels: list[tuple[int, subprocess.Popen[bytes]]] = []

    def start(self) -> SentinelSet:
        (self.dir / "p").mkdir()
        (self.dir / "r").mkdir()
        self.primary.start()
        self.replica = EmbeddedRedis(
            dir=str(self.dir / "r"),
            extra_args=[
                "--replicaof",
                "127.0.0.1",
                str(self.primary.port),
                "--repl-diskless-sync-delay",
                "0",
            ],
        )
        self.replica.start()
        r = redis.Redis(port=self.replica.port)
        deadline = time.monotonic() + 20
        while r.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "replica never linked"
            time.sleep(0.05)
        r.close()
        for i in range(3):
            port = free_port()
            conf = self.dir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            with open(self.dir / f"sentinel-{i}.log", "ab") as log:
                proc = subprocess.Popen(
                    [find_redis_server(), str(conf), "--sentinel"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.sentinels.append((port, proc))
        for port, _ in self.sentinels:
            deadline = time.monotonic() + 10
            while not _ping(port):
                assert time.monotonic() < deadline, "sentinel did not start"
                time.sleep(0.05)
        # every sentinel must know the replica and the other sentinels before a failover
        deadline = time.monotonic() + 20
        while True:
            ok = True
            for port, _ in self.sentinels:
                s = redis.Redis(port=port, decode_responses=True)
                info = s.sentinel_master(self.SERVICE)
                s.close()
                ok &= int(info.get("num-slaves", 0)) >= 1 and int(info.get("num-other-sentinels", 0)) >= 2
            if ok:
                return self
            assert time.monotonic() < deadline, "sentinels never discovered each other"
            time.sleep(0.1)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p, _ in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}"

    def master_port(self) -> int | None:
        for port, _ in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                s = redis.Redis(port=port, decode_responses=True)
                addr = s.sentinel_get_master_addr_by_name(self.SERVICE)
                s.close()
                return int(addr[1]) if addr else None
        return None

    def close(self) -> None:
        for _, proc in self.sentinels:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for node in (self.replica, self.primary):
            if node is not None:
                node.cleanup()


class ClusterSet:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "cluster"
        self.dir.mkdir(exist_ok=True)
        self.nodes: list[EmbeddedRedis] = []

    def start(self) -> ClusterSet:
        for i in range(3):
            n = EmbeddedRedis(
                dir=str(self.dir),
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{i}.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            n.start()
            self.nodes.append(n)
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addrs, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while True:
            out = subprocess.run(
                ["redis-cli", "-p", str(self.nodes[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            if "cluster_state:ok" in out:
                return self
            assert time.monotonic() < deadline, out
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def close(self) -> None:
        for n in self.nodes:
            n.cleanup()
