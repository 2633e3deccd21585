"""Script and command replies -> records (:mod:`pausesvc.protocol.models`). No I/O."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pausesvc.protocol.models import AdapterState, DesiredVersion, Snapshot

__all__ = [
    "orphans_on",
    "parse_snapshot",
    "parse_snapshot_reply",
    "parse_versions",
    "replica_record",
    "scores",
    "text",
]

logger = logging.getLogger("pausesvc.client")


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_versions(flat: Sequence[Any]) -> dict[str, DesiredVersion]:
    """``{name: DesiredVersion}`` from a flat ``HGETALL versions`` reply (bad records skipped)."""
    out: dict[str, DesiredVersion] = {}
    for i in range(0, len(flat) - 1, 2):
        try:
            out[text(flat[i])] = DesiredVersion.from_json(flat[i + 1])
        except (ValueError, KeyError, TypeError):
            logger.warning("pausesvc: ignoring a malformed desired version of %r", text(flat[i]))
    return out


def parse_snapshot_reply(res: Sequence[Any]) -> Snapshot:
    """Build a snapshot from the reply of ``snapshot.lua`` (with or without the versions)."""
    rev, epoch, flat, now = res[:4]
    raw = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    snap = parse_snapshot(rev or None, epoch or None, raw, now)
    if len(res) > 4 and res[4]:
        snap.versions.update(parse_versions(res[4]))
    return snap


def parse_snapshot(rev: Any, epoch: Any, raw: Mapping[Any, Any], server_time: Sequence[Any]) -> Snapshot:
    """Build a snapshot from ``GET rev``, ``GET epoch``, ``HGETALL paused``, ``TIME``.

    Expired holds are dropped here, so no reader ever sees an expired lease as paused.
    """
    now = int(server_time[0]) + int(server_time[1]) / 1e6
    paused: dict[str, AdapterState] = {}
    expired = 0
    for name, value in raw.items():
        full = AdapterState.from_json(value)
        state = full.without_expired(now)
        expired += len(full.holders) - (len(state.holders) if state is not None else 0)
        if state is not None:
            paused[text(name)] = state
    return Snapshot(
        revision=int(rev or 0),
        epoch=text(epoch) if epoch is not None else None,
        server_time=now,
        paused=paused,
        expired=expired,
    )


def replica_record(
    raw: Mapping[Any, Any], heartbeat_ms: float, now_ms: float, replica_id: str
) -> dict[str, Any]:
    """A replica's registry hash -> its record: ``drains`` and ``versions`` (per adapter, from
    the ``drain:<name>`` and ``version:<name>`` fields), ``info`` merged in, the heartbeat age."""
    rec: dict[str, Any] = {"id": replica_id, "drains": {}, "versions": {}}
    for k, v in raw.items():
        key, val = text(k), text(v)
        group = "drains" if key.startswith("drain:") else "versions" if key.startswith("version:") else ""
        if group:
            sub = key.split(":", 1)[1]
            try:
                rec[group][sub] = json.loads(val)
            except ValueError:
                rec[group][sub] = {"raw": val}
        elif key == "info":
            try:
                rec.update(json.loads(val))
            except ValueError:
                rec["info"] = val
        else:
            rec[key] = val
    rec["id"] = replica_id
    rec["heartbeat_age_s"] = max(0.0, (now_ms - heartbeat_ms) / 1000.0)
    return rec


def orphans_on(replicas: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Adapter -> the live replicas that hold it as an orphan (a pause Redis lost without a
    resume, kept paused there), from their registry records' ``orphans`` field."""
    out: dict[str, list[str]] = {}
    for rec in replicas:
        for name in str(rec.get("orphans") or "").split(","):
            if name:
                out.setdefault(name, []).append(str(rec.get("id")))
    return {n: sorted(ids) for n, ids in sorted(out.items())}


def scores(names: Sequence[str], values: Sequence[Any]) -> dict[str, int]:
    """``ZMSCORE key *names`` -> the score of each name that has one (a tombstone's revision)."""
    return {n: int(v) for n, v in zip(names, values, strict=True) if v is not None}
