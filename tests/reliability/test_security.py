"""Redis ACL least-privilege users (replica vs controller) and TLS (rediss://)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from pausesvc import (
    AsyncPauseClient,
    EmbeddedRedis,
    PauseClient,
    PauseWatcher,
    RedisUnavailableError,
)
from pausesvc.devtools.embedded import find_redis_server, free_port
from reliability.harness.acl import controller_acl, replica_acl
from reliability.harness.fleet import Fleet
from reliability.harness.probe import status, until

pytestmark = pytest.mark.reliability


def _setuser(url: str, name: str, rules: list[str]) -> None:
    r = redis.Redis.from_url(url)
    try:
        r.execute_command("ACL", "SETUSER", name, "reset", *rules)
    finally:
        r.close()


@pytest.mark.timeout(60)
async def test_replica_user_can_serve_but_cannot_pause(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    _setuser(redis_srv.url, "replica", replica_acl(ns, "rpw"))
    _setuser(redis_srv.url, "controller", controller_acl(ns, "cpw"))
    rep_url = f"redis://replica:rpw@127.0.0.1:{redis_srv.port}/0"
    ctl_url = f"redis://controller:cpw@127.0.0.1:{redis_srv.port}/0"
    # a real gate process running as the replica user
    fleet = make_fleet(rep_url, ns)
    (r1,) = fleet.start(1)
    async with (
        AsyncPauseClient(ctl_url, namespace=ns) as ctl,
        AsyncPauseClient(rep_url, namespace=ns) as rep,
        PauseWatcher(rep_url, namespace=ns) as w,
    ):
        # the controller user: pause with drain (reads the registry, hears acks), resume
        g = await ctl.pause("a", drain=True, timeout=10)
        await until(lambda: w.is_paused("a"), 5, "the replica user's watcher sees the pause")
        assert "a" in (await status(r1))["paused"]
        assert [x["id"] for x in await ctl.replicas()] == [(await status(r1))["replica_id"]]
        # the replica user cannot change the state, directly or through the scripts
        refused = []
        for call in (
            lambda: rep.pause("b"),
            lambda: rep.resume("a", force=True),
            lambda: rep.renew("a", "default", 5),
            lambda: rep.reap(),
        ):
            with pytest.raises(RedisUnavailableError, match="ACL"):
                await call()
            refused.append(True)
        raw = redis.Redis.from_url(rep_url)
        for cmd in (
            ("HSET", f"pausesvc:{{{ns}}}:paused", "b", "{}"),
            ("DEL", f"pausesvc:{{{ns}}}:paused"),
            ("FLUSHALL",),
            ("PUBLISH", f"pausesvc:{{{ns}}}:events", "{}"),
            ("GET", "other-key"),
            ("CONFIG", "GET", "*"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                raw.execute_command(*cmd)
            refused.append(True)
        raw.close()
        assert await ctl.is_paused("a") and not await ctl.is_paused("b")
        await ctl.resume("a", token=g.token)
        await until(lambda: not w.is_paused("a"), 5, "resume seen")
        # the controller user is confined to its namespace too
        raw = redis.Redis.from_url(ctl_url)
        for cmd in (
            ("FLUSHALL",),
            ("CONFIG", "GET", "*"),
            ("GET", "other-key"),
            ("SET", "pausesvc:{other}:rev", "1"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                raw.execute_command(*cmd)
            refused.append(True)
        raw.close()
        # weight versions: the controller swaps, the replica user's gate loads and reports it;
        # the replica user cannot set a desired version itself
        result = await ctl.swap("a", "v1", "fake://a/1", timeout=10)
        assert result.loaded == [(await status(r1))["replica_id"]]
        with pytest.raises(RedisUnavailableError, match="ACL"):
            await rep.set_version("a", "v9", "fake://a/9")
        refused.append(True)
    figures(refused_calls=len(refused), replica_gate_in_sync=True)


def _tls_supported() -> bool:
    """A TLS build accepts --tls-port (then refuses to start: 'not listen anywhere')."""
    try:
        out = subprocess.run(
            [find_redis_server(), "--tls-port", "0", "--port", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "not listen anywhere" in out.stdout + out.stderr


def _make_certs(d: Path) -> dict[str, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=pausesvc-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    )
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")
async def test_tls_rediss_with_ca_certs(
    workdir: Path, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    if not _tls_supported():
        pytest.skip("the packaged redis-server was built without TLS")
    certs = _make_certs(workdir)
    tls_port = free_port()
    srv = EmbeddedRedis(
        dir=str(workdir),
        extra_args=[
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(certs["cert"]),
            "--tls-key-file",
            str(certs["key"]),
            "--tls-ca-cert-file",
            str(certs["ca"]),
            "--tls-auth-clients",
            "no",
        ],
    )
    srv.start()
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs['ca']}&ssl_cert_reqs=required"
        fleet = make_fleet(url, ns)
        (r1,) = fleet.start(1)
        t0 = time.perf_counter()
        async with AsyncPauseClient(url, namespace=ns) as c, PauseWatcher(url, namespace=ns) as w:
            g = await c.pause("a", drain=True, timeout=10)
            drain_s = time.perf_counter() - t0
            await until(lambda: w.is_paused("a"), 5, "watcher over TLS")
            async with httpx.AsyncClient(timeout=10) as http:
                held = asyncio.create_task(
                    http.post(r1.url + "/v1/completions", json={"model": "a", "prompt": [1], "max_tokens": 2})
                )
                await asyncio.sleep(0.3)
                assert not held.done()
                await c.resume("a", token=g.token)
                assert (await held).status_code == 200
        with PauseClient(url, namespace=ns) as sc:
            assert sc.snapshot().revision == g.revision + 1
        # without the CA the server's certificate is refused
        bad = f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required"
        with pytest.raises(RedisUnavailableError), PauseClient(bad, namespace=ns) as sc:
            sc.snapshot()
        figures(tls=True, gate_over_tls=True, drained_pause_s=round(drain_s, 3))
    finally:
        srv.cleanup()
