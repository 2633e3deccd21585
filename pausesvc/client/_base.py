"""What the async and the sync client share: argument checks, script arguments, result parsing.

No I/O happens in this module (the httpx ``BaseClient`` pattern).
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pausesvc._exceptions import (
    InvalidInputError,
    InvalidNameError,
    NotHolderError,
    PauseTimeoutError,
    ReplicationTimeoutError,
    StaleTokenError,
)
from pausesvc.protocol.keys import GLOBAL, Keys, validate_holder, validate_name, validate_version
from pausesvc.protocol.models import (
    AdapterState,
    DesiredVersion,
    Grant,
    PauseEvent,
    ResumeResult,
    Snapshot,
    SwapResult,
)

logger = logging.getLogger("pausesvc.client")

__all__ = [
    "BaseClient",
    "SwapError",
    "classify_event",
    "parse_snapshot",
    "parse_snapshot_reply",
    "parse_versions",
    "reconcile_versions",
    "validate_load",
    "validate_path",
    "validate_timeout",
]

#: An event at or below the view's revision this long after the view's last snapshot is not a
#: late duplicate (those arrive right after a snapshot): the revision went back in the same
#: epoch - a failover to a lagging replica. Resync.
BEHIND_GRACE_S = 1.0


def classify_event(ev: PauseEvent, revision: int, epoch: str | None, since_snapshot: float | None) -> str:
    """The one rule for applying an event to a view at (``revision``, ``epoch``), whose last
    snapshot was read ``since_snapshot`` seconds ago: ``"apply"``, ``"skip"`` (already in the
    snapshot), or the reason to re-read the snapshot instead (``"epoch-changed"``, ``"gap"``,
    ``"epoch-unknown"``, ``"revision-behind"``). The watcher and the blocking client's
    ``events()`` both follow it."""
    if epoch is not None and ev.epoch != epoch:
        return "epoch-changed"
    if ev.revision <= revision:
        if epoch is None:
            return "epoch-unknown"
        if since_snapshot is not None and since_snapshot > BEHIND_GRACE_S:
            return "revision-behind"
        return "skip"
    if ev.revision != revision + 1:
        return "gap"
    return "apply"


MAX_REASON_LENGTH = 1024
MAX_TTL_S = 7 * 24 * 3600.0
#: a swap's pause is a lease this much longer than its barrier's budget (see _swap_pause_args)
SWAP_LEASE_MARGIN_S = 60.0


#: a number written as JSON would write it, in a string ("0.3", "5", "1e-2"); nothing else
_NUMBER_TEXT = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")


def number_from_text(value: object) -> object:
    """``"0.3"`` -> ``0.3`` (SkyRL's server did ``float(timeout_s)``); anything else unchanged,
    so the validator after it refuses ``"soon"``, ``"nan"``, ``"inf"`` and ``"1_0"`` by name."""
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        return float(value)
    return value


def validate_timeout(value: object, *, field: str = "timeout", allow_none: bool = True) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise InvalidInputError(f"{field} is required", field=field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{field} must be a number of seconds", field=field)
    v = float(value)
    if math.isnan(v) or v < 0 or math.isinf(v):
        raise InvalidInputError(f"{field} must be a finite number >= 0, got {value!r}", field=field)
    return v


def validate_ttl(value: object, *, field: str = "ttl") -> int:
    """A lease length in seconds -> milliseconds (> 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{field} must be a number of seconds", field=field)
    v = float(value)
    if math.isnan(v) or v <= 0 or v > MAX_TTL_S:
        raise InvalidInputError(
            f"{field} must be > 0 and <= {int(MAX_TTL_S)} seconds, got {value!r}", field=field
        )
    return max(1, round(v * 1000))


_TOKEN = re.compile(r"[1-9][0-9]{0,18}(-[0-9A-Za-z]{1,64})?")


def validate_token(value: object) -> str:
    """A fencing token as ``pause`` returned it (``"<revision>-<nonce>"``), as a string.

    A bare positive integer is accepted too (holds written before tokens carried a nonce); it
    never matches a hold that has one."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and _TOKEN.fullmatch(value.strip()):
        return value.strip()
    raise InvalidInputError(
        f"token must be a fencing token as pause returned it (like '57-3f9a1c2b7d4e'), got {value!r}",
        field="token",
    )


def validate_reason(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError("reason must be a string", field="reason")
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidInputError(f"reason is longer than {MAX_REASON_LENGTH} characters", field="reason")
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise InvalidInputError("reason must not contain control characters", field="reason")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidInputError("reason must be valid Unicode (no lone surrogates)", field="reason")
    return value


MAX_PATH_LENGTH = 4096
MAX_LOAD_BYTES = 16 * 1024
MAX_LOAD_FIELDS = 64
#: load_lora_adapter fields a desired version sets itself (the adapter's name and ``path``)
RESERVED_LOAD_KEYS = frozenset({"lora_name", "lora_path"})


def validate_path(value: object) -> str:
    """Where a version's weights are: a non-empty string without control characters."""
    if not isinstance(value, str) or not value:
        raise InvalidInputError("path must be a non-empty string", field="path")
    if len(value) > MAX_PATH_LENGTH:
        raise InvalidInputError(f"path is longer than {MAX_PATH_LENGTH} characters", field="path")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidInputError("path must not contain control characters", field="path")
    return value


def _scalar(key: str, value: object) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float) and math.isfinite(value):
        return
    raise InvalidInputError(
        f"load.{key} must be a string, number, boolean or null, not {type(value).__name__}", field="load"
    )


def validate_load(value: object) -> dict[str, Any]:
    """Extra ``load_lora_adapter`` fields: a JSON object of scalar values; ``lora_name`` and
    ``lora_path`` are not allowed (the adapter's name and ``path`` are)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError("load must be a JSON object", field="load")
    if len(value) > MAX_LOAD_FIELDS:
        raise InvalidInputError(f"load has more than {MAX_LOAD_FIELDS} fields", field="load")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError("load keys must be non-empty strings", field="load")
        if key in RESERVED_LOAD_KEYS:
            raise InvalidInputError(
                f"load must not set {key!r} (the adapter's name and path are used)", field="load"
            )
        _scalar(key, v)
        out[key] = v
    if len(json.dumps(out)) > MAX_LOAD_BYTES:
        raise InvalidInputError(f"load is larger than {MAX_LOAD_BYTES} bytes as JSON", field="load")
    return out


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_versions(flat: Sequence[Any]) -> dict[str, DesiredVersion]:
    """``{name: DesiredVersion}`` from a flat ``HGETALL versions`` reply (bad records skipped)."""
    out: dict[str, DesiredVersion] = {}
    for i in range(0, len(flat) - 1, 2):
        try:
            out[_s(flat[i])] = DesiredVersion.from_json(flat[i + 1])
        except (ValueError, KeyError, TypeError):
            logger.warning("pausesvc: ignoring a malformed desired version of %r", _s(flat[i]))
    return out


def reconcile_versions(
    known: Mapping[str, DesiredVersion],
    found: Mapping[str, DesiredVersion],
    cleared: Mapping[str, int],
    *,
    new_epoch: bool,
) -> tuple[dict[str, DesiredVersion], list[str], list[str]]:
    """The desired versions a view keeps after reading a snapshot: ``(view, changed, kept)``.

    ``found`` is the snapshot's versions, ``cleared`` the clear tombstones
    (``cleared_versions``) of the names the view knows and the snapshot lacks. A name is dropped
    only on proof of a clear (a tombstone at or after the view's record, or any in a new epoch);
    a record older than the view's in the same epoch is not taken either. Everything else that
    is missing or older is KEPT (``kept``: Redis lost it): a replica never goes back to weights
    the fleet has left. Pure: the watcher and the blocking client both follow it."""
    view = dict(known)
    changed: list[str] = []
    kept: list[str] = []
    for name, dv in found.items():
        old = known.get(name)
        if old == dv:
            continue
        if old is not None and not new_epoch and dv.revision < old.revision and dv.at <= old.at:
            kept.append(name)
            continue
        view[name] = dv
        changed.append(name)
    for name, old in known.items():
        if name in found:
            continue
        t = cleared.get(name)
        if t is not None and (new_epoch or t >= old.revision):
            del view[name]
            changed.append(name)
        else:
            kept.append(name)
    return view, sorted(changed), sorted(kept)


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
            paused[_s(name)] = state
    return Snapshot(
        revision=int(rev or 0),
        epoch=_s(epoch) if epoch is not None else None,
        server_time=now,
        paused=paused,
        expired=expired,
    )


def _refuse(
    status: str,
    name: str,
    holder: str,
    token: str | None,
    state: AdapterState | None,
    current: str,
    not_holder: str,
) -> None:
    """Raise what a script's 'not_holder' / 'stale' answer means (nothing was changed)."""
    if status == "not_holder":
        raise NotHolderError(f"{holder!r} {not_holder}", holders=sorted(state.holders) if state else [])
    if status == "stale":
        raise StaleTokenError(
            f"token {token} is stale: {holder!r}'s current pause of {name!r} has token {current}",
            presented=token or "",
            current=current,
        )


class SwapError(PauseTimeoutError):
    """A swap's barrier was not passed: some live replicas did not report the new version loaded
    before the deadline (``missing``: replica id -> url) or reported that loading it failed
    (``failed``: replica id -> reason). The desired version IS set and the swap's pause was
    released: each replica holds the adapter locally until it has loaded the desired version,
    so the adapter stays paused on those replicas only. ``result`` lists who did load it."""

    def __init__(
        self, message: str, *, missing: Mapping[str, str], failed: Mapping[str, str], result: SwapResult
    ) -> None:
        super().__init__(message)
        self.missing = dict(missing)
        self.failed = dict(failed)
        self.result = result

    @property
    def timed_out(self) -> bool:
        """True when some replica never reported (a timeout), False when all that did not
        load it reported a failure."""
        return bool(self.missing)


def swap_outcome(
    name: str,
    version: str,
    revision: int,
    barrier: tuple[list[str], dict[str, str], dict[str, str]],
    seconds: float,
) -> SwapResult:
    """The result of a swap whose barrier ended with ``(loaded, missing, failed)``; raises
    :class:`SwapError` naming the replicas when some are missing or failed."""
    loaded, missing, failed = barrier
    result = SwapResult(name, version, revision, sorted(loaded), seconds)
    if not missing and not failed:
        return result
    parts = []
    if failed:
        parts.append("failed to load it: " + "; ".join(f"{r} ({why})" for r, why in sorted(failed.items())))
    if missing:
        parts.append(
            f"did not report it within {seconds:.3g}s: "
            + ", ".join(f"{r} ({url})" for r, url in sorted(missing.items()))
        )
    raise SwapError(
        f"{name!r} is set to version {version!r} (revision {revision}), but "
        f"{len(missing) + len(failed)} live replica(s) are not on it: {'; '.join(parts)}. "
        f"{name!r} stays held on those replicas only until they load it",
        missing=missing,
        failed=failed,
        result=result,
    )


class BaseClient:
    """Configuration and the pure parts of every operation."""

    def __init__(
        self,
        *,
        namespace: str = "default",
        default_holder: str = "default",
        sharded: bool = False,
        replication_wait: int = 0,
        replication_wait_timeout_ms: int = 1000,
    ) -> None:
        self.keys = Keys(namespace)
        self.namespace = namespace
        self.default_holder = validate_holder(default_holder)
        self.sharded = sharded
        self.replication_wait = replication_wait
        self.replication_wait_timeout_ms = replication_wait_timeout_ms
        self.strict_replication = False
        self.replication_shortfalls = 0

    def _snapshot_keys(self) -> list[str]:
        return self.keys.snapshot_keys()

    @property
    def publish_command(self) -> str:
        return "SPUBLISH" if self.sharded else "PUBLISH"

    def _check_replication(self, acked: Any) -> None:
        """WAIT saw fewer replicas than ``replication_wait``: the change is applied on the
        primary (and stays applied: raising would make an idempotent retry loop forever while
        no replica is attached, e.g. right after a failover), but a failover now could lose it.
        Logged as a warning and counted in ``replication_shortfalls``; with
        ``strict_replication`` it raises :class:`ReplicationTimeoutError` instead."""
        if int(acked) >= self.replication_wait:
            return
        self.replication_shortfalls += 1
        message = (
            f"the change is written, but only {int(acked)} of {self.replication_wait} "
            f"Redis replica(s) confirmed it within {self.replication_wait_timeout_ms} ms "
            "(WAIT): a failover now could lose it"
        )
        if self.strict_replication:
            raise ReplicationTimeoutError(message, acked=int(acked), wanted=self.replication_wait)
        logger.warning(
            "pausesvc: %s", message, extra={"event": "replication_shortfall", "namespace": self.namespace}
        )

    # -- arguments -------------------------------------------------------------------------------
    def _holder(self, holder: str | None) -> str:
        return self.default_holder if holder is None else validate_holder(holder)

    def _pause_args(
        self, name: str, holder: str | None, reason: str | None, ttl: float | None, drain: bool = False
    ) -> tuple[str, list[str]]:
        name = validate_name(name)
        h = self._holder(holder)
        ttl_ms = 0 if ttl is None else validate_ttl(ttl)
        if not isinstance(drain, bool):
            raise InvalidInputError("drain must be a boolean", field="drain")
        return h, [
            self.publish_command,
            name,
            h,
            validate_reason(reason),
            str(ttl_ms),
            "1" if drain else "0",
            secrets.token_hex(6),
        ]

    def _resume_args(
        self, name: str, holder: str | None, token: str | int | None, force: bool
    ) -> tuple[str, list[str]]:
        name = validate_name(name)
        h = self._holder(holder)
        tok = "" if token is None else validate_token(token)
        if not isinstance(force, bool):
            raise InvalidInputError("force must be a boolean", field="force")
        return h, [self.publish_command, name, h, tok, "1" if force else "0"]

    def _renew_args(
        self, name: str, holder: str | None, ttl: float, token: str | int | None
    ) -> tuple[str, list[str]]:
        name = validate_name(name)
        h = self._holder(holder)
        tok = "" if token is None else validate_token(token)
        return h, [self.publish_command, name, h, str(validate_ttl(ttl)), tok]

    def _set_version_args(self, name: str, version: str, path: str, load: object) -> list[str]:
        name = validate_name(name)
        if name == GLOBAL:
            raise InvalidNameError(
                "a desired version belongs to one LoRA adapter; '*' is not one", field="name"
            )
        ld = validate_load(load)
        return [
            self.publish_command,
            name,
            "set",
            validate_version(version),
            validate_path(path),
            json.dumps(ld, sort_keys=True),
        ]

    def _clear_version_args(self, name: str) -> list[str]:
        return [self.publish_command, validate_name(name), "clear", "", "", "{}"]

    def _swap_pause_args(
        self, name: str, holder: str | None, reason: str | None, version: str, budget: float
    ) -> tuple[str, list[str]]:
        """The swap's pause: holder given, or ``<default holder>/swap`` (never the caller's own
        default hold, which the swap's resume would release); a drain; a lease of the barrier's
        budget + SWAP_LEASE_MARGIN_S, so a controller that dies mid-swap leaves no pause behind
        (each replica still holds the adapter until it has loaded the desired version)."""
        h = f"{self.default_holder}/swap" if holder is None else validate_holder(holder)
        ttl = min(MAX_TTL_S, budget + SWAP_LEASE_MARGIN_S)
        return self._pause_args(name, h, reason or f"swap to {version}", ttl, True)

    # -- results ----------------------------------------------------------------------------------
    @staticmethod
    def _parse_set_version(res: Sequence[Any]) -> DesiredVersion:
        return DesiredVersion.from_json(_s(res[2]))

    @staticmethod
    def _parse_grant(name: str, holder: str, res: Sequence[Any]) -> Grant:
        status, token, rev, state = _s(res[0]), _s(res[1]), int(res[2]), _s(res[3])
        return Grant(
            name=name,
            holder=holder,
            token=token,
            revision=rev,
            created=status == "created",
            state=AdapterState.from_json(state),
            epoch=_s(res[4]) if len(res) > 4 and res[4] else None,
        )

    @staticmethod
    def _parse_resume(name: str, holder: str, token: str | int | None, res: Sequence[Any]) -> ResumeResult:
        token = None if token is None else str(token)
        status, rev, state_raw, current = _s(res[0]), int(res[1]), _s(res[2]), _s(res[3])
        state = AdapterState.from_json(state_raw) if state_raw else None
        _refuse(
            status,
            name,
            holder,
            token,
            state,
            current,
            f"holds no pause of {name!r} (held by: "
            f"{', '.join(sorted(state.holders)) if state else 'nobody'})",
        )
        return ResumeResult(
            name=name,
            holder=holder,
            released=status.startswith("released"),
            paused=state is not None,
            revision=rev,
            state=state,
            epoch=_s(res[4]) if len(res) > 4 and res[4] else None,
        )

    @staticmethod
    def _parse_renew(name: str, holder: str, token: str | int | None, res: Sequence[Any]) -> AdapterState:
        token = None if token is None else str(token)
        status, state_raw, current = _s(res[0]), _s(res[2]), _s(res[3])
        state = AdapterState.from_json(state_raw) if state_raw else None
        _refuse(
            status,
            name,
            holder,
            token,
            state,
            current,
            f"holds no live pause of {name!r} (expired or released)",
        )
        assert state is not None  # 'renewed' always carries the state
        return state

    @staticmethod
    def _replica_record(
        raw: Mapping[Any, Any], heartbeat_ms: float, now_ms: float, replica_id: str
    ) -> dict[str, Any]:
        rec: dict[str, Any] = {"id": replica_id, "drains": {}, "versions": {}}
        for k, v in raw.items():
            key, val = _s(k), _s(v)
            group = "drains" if key.startswith("drain:") else "versions" if key.startswith("version:") else ""
            if group:
                sub = key.split(":", 1)[1]
                try:
                    rec[group][sub] = json.loads(val)
                except ValueError:
                    rec[group][sub] = {"raw": val}
            elif key in ("info",):
                try:
                    rec.update(json.loads(val))
                except ValueError:
                    rec["info"] = val
            else:
                rec[key] = val
        rec["id"] = replica_id
        rec["heartbeat_age_s"] = max(0.0, (now_ms - heartbeat_ms) / 1000.0)
        return rec

    @staticmethod
    def _now() -> float:
        return time.time()
