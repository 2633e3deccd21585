"""Least-privilege Redis ACL users for one pausesvc namespace (documented in docs/security.md).

Replica processes (the vLLM gate): read the state (through the read-only snapshot script),
subscribe to events, write their own registry entries (heartbeat, drain acks). They cannot run
the state scripts (pause/resume/renew/reap), so they cannot pause or resume anything.

Redis checks EVALSHA's declared KEYS as read-write, so read-only access to the state keys is
expressed with a *selector* that allows only ``EVALSHA`` + read commands on them: inside a
script every ``redis.call`` is checked again, and the state scripts declare keys (leases,
events) that the selector does not grant, so EVALSHA of them is refused outright.
"""

from __future__ import annotations


def replica_acl(ns: str, password: str) -> list[str]:
    t = f"pausesvc:{{{ns}}}"
    return [
        "on",
        f">{password}",
        "resetkeys",
        "resetchannels",
        "-@all",
        "+ping",
        "+hello",
        "+client|setname",
        "+evalsha",
        "+script|load",
        # the registry: heartbeat.lua, ack.lua (publishes on acks), leaving on shutdown
        "+zadd",
        "+zrange",
        "+zrem",
        "+zremrangebyscore",
        "+hset",
        "+hgetall",
        "+pexpire",
        "+del",
        "+publish",
        "+spublish",
        "+time",
        f"~{t}:replicas",
        f"~{t}:replica:*",
        f"~{t}:acks",
        f"&{t}:acks",
        # the state: only the read-only snapshot script and reads (the resync also reads the
        # resume and version-clear tombstones, and the snapshot the desired versions)
        f"(~{t}:paused ~{t}:rev ~{t}:epoch ~{t}:versions ~{t}:tombstones ~{t}:cleared_versions"
        " +evalsha +get +hget +hgetall +zmscore +time)",
        # events: subscribe only. Channel rules cover PUBLISH and SUBSCRIBE alike, so the
        # channel is granted in a selector without PUBLISH: a replica cannot forge an event
        f"(&{t}:events +subscribe +ssubscribe +unsubscribe +sunsubscribe +ping)",
    ]


def controller_acl(ns: str, password: str) -> list[str]:
    t = f"pausesvc:{{{ns}}}"
    return [
        "on",
        f">{password}",
        "resetkeys",
        "resetchannels",
        "-@all",
        "+@read",
        "+@write",
        "+@pubsub",
        "+evalsha",
        "+script|load",
        "+ping",
        "+hello",
        "+client|setname",
        "+wait",
        "+time",
        "-@dangerous",
        f"~{t}:*",
        f"&{t}:*",
    ]
