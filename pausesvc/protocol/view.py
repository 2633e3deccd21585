"""The view of a namespace's pause state that a reader keeps, and the rules that keep it equal
to Redis. No I/O: the async watcher (:mod:`pausesvc.watcher`) and the blocking client's
``events()`` both drive one :class:`View`, so the rules exist once.

- :meth:`View.classify` an event: apply it, skip it (already in the snapshot), or re-read the
  snapshot (a gap, another epoch, a revision gone back).
- :meth:`View.apply` it: in revision order, one adapter at a time.
- :meth:`View.reset` to a snapshot, given the tombstones of the names :meth:`View.wanted` lists:
  what changed, and what Redis LOST. An adapter the view holds paused that is absent from the
  snapshot is released only on proof (a resume tombstone at or after its state's revision in
  the same epoch, any in a new epoch); otherwise it is an *orphan* and stays paused (policy
  ``hold``). A desired version Redis lost is kept until an explicit clear.
- :meth:`View.expire` leases against a clock that never runs ahead of Redis's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pausesvc.protocol.keys import GLOBAL
from pausesvc.protocol.models import AdapterState, DesiredVersion, PauseEvent, Snapshot

__all__ = [
    "BEHIND_GRACE_S",
    "Change",
    "Reset",
    "View",
    "classify_event",
    "fenced_tombstone",
    "reconcile_versions",
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


@dataclass(frozen=True, slots=True)
class Change:
    """The view of ``name`` was set to ``state`` (None: not paused). ``event`` is what did it:
    the applied event, a ``resync`` or ``expire`` event made here, or None for a resync that
    only re-confirmed the state. ``orphan_released``: this change ended an orphan's hold."""

    name: str
    state: AdapterState | None
    event: PauseEvent | None
    orphan_released: bool = False


@dataclass(slots=True)
class Reset:
    """What :meth:`View.reset` did."""

    #: every adapter paused before or after, in name order (re-confirmations have event None;
    #: an adapter Redis lost that the view holds has op ``orphaned``), then released orphans
    changes: list[Change] = field(default_factory=list)
    #: (name, desired version or None) for each desired version that changed
    versions: list[tuple[str, DesiredVersion | None]] = field(default_factory=list)
    #: Redis lost data: the epoch changed, the revision went back, or a pause vanished unresumed
    lost: bool = False
    backwards: bool = False
    #: adapters that vanished from Redis without a resume (held as orphans under policy hold)
    orphaned: list[str] = field(default_factory=list)
    #: orphans a resume tombstone released
    released: list[str] = field(default_factory=list)
    #: desired versions Redis lost that the view keeps
    kept_versions: list[str] = field(default_factory=list)
    #: (epoch, revision) of the view before the reset
    was: tuple[str | None, int] = (None, 0)

    @property
    def changed(self) -> bool:
        """Did any adapter's pause state change?"""
        return any(c.event is not None for c in self.changes) or bool(self.released)


class View:
    """One namespace as a reader sees it: the paused adapters, the orphans of a data loss, the
    desired versions, at (``epoch``, ``revision``)."""

    __slots__ = (
        "desired",
        "epoch",
        "gone_epochs",
        "on_data_loss",
        "orphaned_at",
        "orphans",
        "paused",
        "read_at",
        "revision",
    )

    def __init__(self, *, on_data_loss: Literal["hold", "release"] = "hold") -> None:
        self.on_data_loss = on_data_loss
        self.paused: dict[str, AdapterState] = {}
        self.orphans: dict[str, AdapterState] = {}
        #: name -> the (epoch, revision) of the snapshot that orphaned it
        self.orphaned_at: dict[str, tuple[str | None, int]] = {}
        self.desired: dict[str, DesiredVersion] = {}
        self.revision = 0
        self.epoch: str | None = None
        #: epochs this view saw replaced (their writes are gone)
        self.gone_epochs: set[str] = set()
        #: when the last snapshot was taken (the caller's monotonic clock); None: never
        self.read_at: float | None = None

    # -- queries -----------------------------------------------------------------------------------
    def is_paused(self, name: str) -> bool:
        """``name`` (or everything, via ``*``) is paused or orphaned."""
        paused, orphans = self.paused, self.orphans
        if not paused and not orphans:
            return False
        return name in paused or GLOBAL in paused or name in orphans or GLOBAL in orphans

    def state(self, name: str) -> AdapterState | None:
        return self.paused.get(name) or self.orphans.get(name)

    def next_expiry(self) -> float | None:
        """The earliest lease end among paused adapters and orphans (server clock)."""
        ends = [
            s.next_expiry
            for s in (*self.paused.values(), *self.orphans.values())
            if s.next_expiry is not None
        ]
        return min(ends) if ends else None

    # -- events ------------------------------------------------------------------------------------
    def classify(self, ev: PauseEvent, now: float) -> str:
        """:func:`classify_event` for this view; ``now`` on the clock of :attr:`read_at`."""
        since = None if self.read_at is None else now - self.read_at
        return classify_event(ev, self.revision, self.epoch, since)

    def apply(self, ev: PauseEvent, now: float) -> Change:
        """Apply an event :meth:`classify` said to apply; ``now``: the server clock's lower
        bound, against which the event's leases are judged."""
        self.revision = ev.revision
        if self.epoch is None:
            self.epoch = ev.epoch
        state = ev.state
        if state is not None:
            state = state.without_expired(now)
        if ev.op == "version":
            if ev.version is None:
                self.desired.pop(ev.name, None)
            else:
                self.desired[ev.name] = ev.version
        return self._set(ev.name, state, ev)

    def _set(self, name: str, state: AdapterState | None, ev: PauseEvent | None) -> Change:
        if state is None:
            self.paused.pop(name, None)
        else:
            self.paused[name] = state
        released = False
        reasserted = ev is not None and ev.op not in ("resync", "version") and name in self.orphans
        if reasserted and ev is not None and (not ev.not_paused or self.names_orphan(name, ev)):
            # a controller re-asserted this adapter after the data loss (or its holder released
            # the very hold this view keeps): Redis is the truth again
            released = self.release_orphan(name)
        return Change(name, state, ev, released)

    def names_orphan(self, name: str, ev: PauseEvent) -> bool:
        """May a resume that found nothing in Redis (``ev.not_paused``) release the orphan
        ``name``? Without a token it is unfenced (a re-assertion, as its tombstone says); with
        one, only if it is the token of the holder's hold this view keeps: Redis cannot check
        a token it lost, and a stale controller's resume releases nothing."""
        if ev.token is None:
            return True
        orphan = self.orphans.get(name)
        hold = orphan.holders.get(ev.holder or "") if orphan is not None else None
        return hold is not None and ev.token == hold.token

    def settle(self, ev: PauseEvent) -> Change | None:
        """After a re-read that ``ev`` caused (another epoch, a revision gone back: the event
        itself was not applied), release the orphan a resume that found nothing names - if the
        snapshot covers the event (same epoch, at or after its revision). None: nothing."""
        name = ev.name
        if not ev.not_paused or ev.epoch != self.epoch or ev.revision > self.revision:
            return None
        if name not in self.orphans or not self.names_orphan(name, ev):
            return None
        self.release_orphan(name)
        return Change(name, self.paused.get(name), ev, True)

    def release_orphan(self, name: str) -> bool:
        """Stop holding an orphan (an operator's confirmation, a resume, its lease's end)."""
        if self.orphans.pop(name, None) is None:
            return False
        self.orphaned_at.pop(name, None)
        return True

    def expire(self, now: float) -> tuple[list[Change], list[str]]:
        """End the leases due at ``now`` (the server clock's lower bound): the changes (op
        ``expire``), and the names of the orphans released because their lease ran out (nobody
        can renew a hold Redis lost, so it ends when it would have ended)."""
        released = []
        changes = []
        for name, st in list(self.orphans.items()):
            left = st.without_expired(now)
            if left is None:
                self.release_orphan(name)
                released.append(name)
                kept = self.paused.get(name)
                ev = PauseEvent(self.revision, self.epoch, name, "expire", kept is not None, None, kept, now)
                changes.append(Change(name, kept, ev))
            elif left is not st:
                self.orphans[name] = left
        for name, st in list(self.paused.items()):
            nxt = st.next_expiry
            if nxt is not None and nxt <= now:
                new = st.without_expired(now)
                ev = PauseEvent(self.revision, self.epoch, name, "expire", new is not None, None, new, now)
                changes.append(self._set(name, new, ev))
        return changes, released

    # -- snapshots ---------------------------------------------------------------------------------
    def wanted(self, snap: Snapshot) -> tuple[list[str], list[str]]:
        """What :meth:`reset` needs read first: the members of ``tombstones`` that decide it -
        each name, and the fenced tombstone of each hold the view keeps for it (a resume with
        that hold's token of an adapter Redis did not know) - and the names whose clear
        tombstones (``cleared_versions``) do."""
        names = [n for n in self.paused if n not in snap.paused] if self.epoch is not None else []
        names += [n for n in self.orphans if n not in names]
        tombs = list(names)
        for n in names:
            st = self.paused.get(n) or self.orphans.get(n)
            if st is not None:
                tombs += [fenced_tombstone(n, h, hold.token) for h, hold in st.holders.items()]
        cleared = [n for n in self.desired if n not in snap.versions]
        return sorted(tombs), sorted(cleared)

    def reset(
        self, snap: Snapshot, tombstones: Mapping[str, int], cleared: Mapping[str, int], now: float
    ) -> Reset:
        """Take ``snap`` (read at ``now``, the clock of :attr:`read_at`); ``tombstones`` and
        ``cleared`` hold the revisions found for the names :meth:`wanted` listed."""
        out = Reset(was=(self.epoch, self.revision))
        new_epoch = snap.epoch != self.epoch
        out.backwards = self.epoch is not None and (new_epoch or snap.revision < self.revision)
        orphaned = self._vanished(snap, tombstones, new_epoch)
        out.lost = out.backwards or bool(orphaned)
        if out.lost and new_epoch and self.epoch is not None:
            self.gone_epochs.add(self.epoch)
        out.orphaned = sorted(orphaned)
        if self.on_data_loss == "hold":
            # an orphan resumed since it was orphaned (a re-assertion whose event this reader
            # missed still left a tombstone - a fenced one only for the hold's own token)
            for n, st in sorted(self.orphans.items()):
                t = _proof(tombstones, n, st)
                epoch, at = self.orphaned_at.get(n, (None, 0))
                if t is not None and n not in orphaned and (epoch != snap.epoch or t > at):
                    self.release_orphan(n)
                    out.released.append(n)
            for n, st in orphaned.items():
                self.orphans[n] = st
                self.orphaned_at[n] = (snap.epoch, snap.revision)
        versions, changed, out.kept_versions = reconcile_versions(
            self.desired, snap.versions, cleared, new_epoch=new_epoch and self.epoch is not None
        )
        self.revision, self.epoch, self.read_at = snap.revision, snap.epoch, now
        for name in sorted(set(self.paused) | set(snap.paused)):
            new, old = snap.paused.get(name), self.paused.get(name)
            if name in orphaned and self.on_data_loss == "hold":
                # gone from Redis, held here: said so (op 'orphaned'), never as a resume
                self.paused.pop(name, None)
                ev = _made(snap, name, "orphaned", old)
                out.changes.append(Change(name, old, ev))
            elif old != new or new is not None:
                out.changes.append(
                    self._set(name, new, None if old == new else _made(snap, name, "resync", new))
                )
        for name in out.released:
            out.changes.append(
                Change(name, self.paused.get(name), _made(snap, name, "resync", self.paused.get(name)))
            )
        self.desired = versions
        out.versions = [(n, versions.get(n)) for n in changed]
        return out

    def _vanished(
        self, snap: Snapshot, tombstones: Mapping[str, int], new_epoch: bool
    ) -> dict[str, AdapterState]:
        """The adapters this view holds paused that ``snap`` lacks with no proof of a resume."""
        if self.epoch is None:
            return {}
        orphaned = {}
        for n, st in self.paused.items():
            if n in snap.paused:
                continue
            t = _proof(tombstones, n, st)
            if t is not None and ((new_epoch and snap.epoch is not None) or t >= st.revision):
                continue  # resumed: an event missed (a gap, a reconnect) or a re-assertion
            if st.without_expired(snap.server_time) is None:
                continue  # its lease ran out anyway
            orphaned[n] = st
        return orphaned


def fenced_tombstone(name: str, holder: str, token: str) -> str:
    """The ``tombstones`` member a resume with ``holder``'s ``token`` leaves for an adapter Redis
    did not know (resume.lua): names, holders and tokens hold no whitespace."""
    return f"{name}\n{holder}\n{token}"


def _proof(tombstones: Mapping[str, int], name: str, st: AdapterState) -> int | None:
    """The newest revision at which ``name`` was resumed in a way that releases ``st``: its
    tombstone, or the fenced tombstone of one of ``st``'s holds."""
    found = [tombstones.get(name)]
    found += [tombstones.get(fenced_tombstone(name, h, hold.token)) for h, hold in st.holders.items()]
    revs = [t for t in found if t is not None]
    return max(revs) if revs else None


def _made(snap: Snapshot, name: str, op: str, state: AdapterState | None) -> PauseEvent:
    """An event a reset makes (``resync``, ``orphaned``), at the snapshot's revision."""
    return PauseEvent(snap.revision, snap.epoch, name, op, state is not None, None, state, snap.server_time)
