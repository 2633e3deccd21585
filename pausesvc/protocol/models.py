"""Plain data returned by the clients and the watcher (no I/O here).

Times are Unix seconds (floats) computed from the Redis server's clock; Redis stores milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

__all__ = [
    "AdapterState",
    "DesiredVersion",
    "Grant",
    "Hold",
    "PauseEvent",
    "ResumeResult",
    "Snapshot",
    "SwapResult",
    "token_revision",
]


#: the C scanner ``json.loads`` ends in: an event is decoded once per view (1,000 views: 1,000
#: times), so its decoding skips ``json.loads``' encoding detection and whitespace passes
_scan: Any = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set in __init__, untyped


def _loads_object(raw: str | bytes) -> Any:
    """``json.loads(raw)`` for the usual event - compact UTF-8 JSON, one object, nothing after
    it - through the scanner directly; anything else through ``json.loads`` itself (its
    result, or its error)."""
    try:
        text = raw.decode() if isinstance(raw, bytes | bytearray) else raw
        data, end = _scan(text, 0)
    except (StopIteration, UnicodeDecodeError):
        return json.loads(raw)
    if end != len(text) or type(data) is not dict:
        return json.loads(raw)
    return data


_T = TypeVar("_T")


def _builder(cls: type[_T]) -> Callable[..., _T]:
    """A positional constructor of the frozen slots dataclass ``cls`` for the decoders: it sets
    each slot through its descriptor instead of the generated ``__init__``'s
    ``object.__setattr__`` per field (a Hold 0.4 us, was 1.0 with keywords; an event is
    decoded once per view, so 1,000 times in a process of 1,000 views). Every field is
    passed, in declaration order; ``cls`` has no ``__post_init__``: the result equals (and
    hashes as) what ``cls(...)`` makes. Generated once per class, as dataclasses does."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]  # a dataclass
    assert not hasattr(cls, "__post_init__"), cls
    bound = ", ".join(f"_set_{n}=_set_{n}" for n in names)
    src = (
        f"def build({', '.join(names)}, *, _new=_new, _cls=_cls, {bound}):\n"
        "    obj = _new(_cls)\n" + "".join(f"    _set_{n}(obj, {n})\n" for n in names) + "    return obj\n"
    )
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    namespace.update({f"_set_{n}": cls.__dict__[n].__set__ for n in names})
    exec(src, namespace)  # our own field names only, as dataclasses builds __init__
    build: Callable[..., _T] = namespace["build"]
    build.__qualname__ = f"{cls.__qualname__}.<build>"
    return build


def _ms(value: Any) -> float:
    return float(value) / 1000.0


def token_revision(token: str) -> int:
    """The revision a fencing token was issued at (tokens are ``"<revision>-<nonce>"``)."""
    head = token.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _token(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a hold written before tokens carried a nonce
    return str(value)


@dataclass(frozen=True, slots=True)
class Hold:
    """One holder's claim on a pause."""

    holder: str
    token: str
    since: float
    reason: str | None = None
    expires_at: float | None = None
    drain: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "token": self.token,
            "since": self.since,
            "reason": self.reason,
            "expires_at": self.expires_at,
            "drain": self.drain,
        }


@dataclass(frozen=True, slots=True)
class AdapterState:
    """A paused adapter: who holds it and since when. Unpaused adapters have no state."""

    name: str
    holders: Mapping[str, Hold]
    since: float
    revision: int
    pause_revision: int

    @property
    def paused(self) -> bool:
        return bool(self.holders)

    @property
    def token(self) -> str:
        """The newest hold's fencing token."""
        return max(self.holders.values(), key=lambda h: token_revision(h.token)).token

    @property
    def tokens(self) -> frozenset[str]:
        """Every hold's token: what identifies this pause across incarnations."""
        return frozenset(h.token for h in self.holders.values())

    @property
    def expires_at(self) -> float | None:
        """When the pause ends by itself (every hold is a lease), else None."""
        ends = [h.expires_at for h in self.holders.values()]
        if not ends or any(e is None for e in ends):
            return None
        return max(e for e in ends if e is not None)

    @property
    def next_expiry(self) -> float | None:
        """The earliest lease expiry among the holds (a change happens then), else None."""
        ends = [h.expires_at for h in self.holders.values() if h.expires_at is not None]
        return min(ends) if ends else None

    @property
    def drain_requested(self) -> bool:
        """True when some holder waits for replicas to acknowledge a drain of this pause."""
        return any(h.drain for h in self.holders.values())

    @property
    def reason(self) -> str | None:
        for h in sorted(self.holders.values(), key=lambda h: token_revision(h.token)):
            if h.reason:
                return h.reason
        return None

    def without_expired(self, now: float) -> AdapterState | None:
        """This state as a reader must see it at ``now``: expired holds are gone."""
        live = {k: h for k, h in self.holders.items() if h.expires_at is None or h.expires_at > now}
        if len(live) == len(self.holders):
            return self
        if not live:
            return None
        return AdapterState(self.name, live, self.since, self.revision, self.pause_revision)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> AdapterState:
        holders: dict[str, Hold] = {}
        raw_holders = data.get("holders") or {}
        if type(raw_holders) is dict or isinstance(raw_holders, Mapping):  # dict: no ABC check
            for holder, h in raw_holders.items():
                expires = h.get("expires")
                holders[holder] = _build_hold(
                    holder,
                    _token(h["token"]),
                    _ms(h["since"]),
                    h.get("reason") or None,
                    None if expires is None else _ms(expires),
                    bool(h.get("drain", False)),
                )
        build = _build_state if cls is AdapterState else cls
        return build(
            str(data["name"]),
            holders,
            _ms(data["since"]),
            int(data["rev"]),
            int(data.get("pause_rev", data["rev"])),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> AdapterState:
        return cls.from_wire(json.loads(raw))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paused": self.paused,
            "since": self.since,
            "revision": self.revision,
            "pause_revision": self.pause_revision,
            "token": self.token,
            "reason": self.reason,
            "expires_at": self.expires_at,
            "holders": {k: h.to_dict() for k, h in sorted(self.holders.items())},
        }


@dataclass(frozen=True, slots=True)
class Grant:
    """What ``pause`` returns. ``token`` fences this hold's resume and renew."""

    name: str
    holder: str
    token: str
    revision: int
    created: bool
    state: AdapterState
    epoch: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "holder": self.holder,
            "token": self.token,
            "revision": self.revision,
            "epoch": self.epoch,
            "created": self.created,
            "state": self.state.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class ResumeResult:
    """What ``resume`` returns. ``paused`` is True when other holders keep the adapter paused."""

    name: str
    holder: str
    released: bool
    paused: bool
    revision: int
    state: AdapterState | None = None
    epoch: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "holder": self.holder,
            "released": self.released,
            "paused": self.paused,
            "revision": self.revision,
            "epoch": self.epoch,
            "state": self.state.to_dict() if self.state else None,
        }


@dataclass(frozen=True, slots=True)
class DesiredVersion:
    """The weight version every replica must serve adapter ``name`` with (``versions`` hash).

    ``version`` is an opaque label, ``path`` where the weights are, ``load`` the extra
    ``load_lora_adapter`` fields; ``revision`` is the namespace revision that set it and ``at``
    when (Unix seconds, Redis clock)."""

    name: str
    version: str
    path: str
    load: Mapping[str, Any]
    revision: int
    at: float

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> DesiredVersion:
        load = data.get("load")
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            path=str(data["path"]),
            load=dict(load) if isinstance(load, Mapping) else {},
            revision=int(data["rev"]),
            at=_ms(data.get("at", 0)),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> DesiredVersion:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("desired version is not a JSON object")
        return cls.from_wire(data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "path": self.path,
            "load": dict(self.load),
            "revision": self.revision,
            "at": self.at,
        }


@dataclass(frozen=True, slots=True)
class SwapResult:
    """What ``swap`` returns: ``name`` is on ``version`` (set at ``revision``) on every replica in
    ``loaded`` (the live replicas when the barrier was passed; empty without the barrier)."""

    name: str
    version: str
    revision: int
    loaded: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "revision": self.revision,
            "loaded": list(self.loaded),
            "seconds": self.seconds,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole paused set of a namespace at one revision (one round trip)."""

    revision: int
    epoch: str | None
    server_time: float
    paused: dict[str, AdapterState] = field(default_factory=dict)
    #: Expired holds still stored (not yet reaped); readers already ignore them.
    expired: int = 0
    #: adapter name -> its desired weight version (only adapters that have one)
    versions: dict[str, DesiredVersion] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "epoch": self.epoch,
            "server_time": self.server_time,
            "paused": {k: v.to_dict() for k, v in sorted(self.paused.items())},
            "versions": {k: v.to_dict() for k, v in sorted(self.versions.items())},
        }


@dataclass(frozen=True, slots=True)
class PauseEvent:
    """One change of one adapter, as published (or as synthesized by a resync: op 'resync').

    Op ``version`` sets (``version``) or clears (``version`` None) the adapter's desired weight
    version; its ``paused`` and ``state`` are the adapter's pause state, unchanged.

    ``not_paused``: a ``resume`` that found nothing to release in Redis; ``token`` is the token
    it presented (None: none). It releases an orphan only if it names the orphan's hold."""

    revision: int
    epoch: str | None
    name: str
    op: str
    paused: bool
    holder: str | None
    state: AdapterState | None
    ts: float
    version: DesiredVersion | None = None
    not_paused: bool = False
    token: str | None = None

    @classmethod
    def from_json(cls, raw: str | bytes) -> PauseEvent:
        data = _loads_object(raw)
        if not isinstance(data, dict):
            raise ValueError("event is not a JSON object")
        state = data.get("state")
        version = data.get("version")
        epoch = data.get("epoch")
        build = _build_event if cls is PauseEvent else cls
        return build(
            int(data["rev"]),
            None if epoch is None else str(epoch),
            str(data["name"]),
            str(data["op"]),
            bool(data["paused"]),
            data.get("holder"),
            AdapterState.from_wire(state) if isinstance(state, dict) else None,
            _ms(data.get("ts", 0)),
            DesiredVersion.from_wire(version) if isinstance(version, dict) else None,
            data.get("not_paused") is True,
            None if (token := data.get("token")) is None else str(token),
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "revision": self.revision,
            "epoch": self.epoch,
            "name": self.name,
            "op": self.op,
            "paused": self.paused,
            "holder": self.holder,
            "ts": self.ts,
            "state": self.state.to_dict() if self.state else None,
        }
        if self.op == "version":
            out["version"] = self.version.to_dict() if self.version else None
        if self.not_paused:
            out["not_paused"] = True
            out["token"] = self.token
        return out


_build_hold = _builder(Hold)
_build_state = _builder(AdapterState)
_build_event = _builder(PauseEvent)
