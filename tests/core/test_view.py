"""The view's rules, without Redis (pausesvc.protocol.view): every event order, gap, epoch
change, vanished pause, tombstone, orphan and lease the watcher and ``events()`` both rely on."""

from __future__ import annotations

import pytest

from pausesvc import GLOBAL
from pausesvc.protocol.models import AdapterState, DesiredVersion, Hold, PauseEvent, Snapshot
from pausesvc.protocol.view import BEHIND_GRACE_S, View, fenced_tombstone

T = 1000.0  # the server clock


def state(name: str, rev: int, *, expires: float | None = None) -> AdapterState:
    hold = Hold("h", f"{rev}-ab", T, expires_at=expires)
    return AdapterState(name, {"h": hold}, T, rev, rev)


def ev(rev: int, name: str, paused: bool, *, epoch: str = "e1", op: str | None = None) -> PauseEvent:
    st = state(name, rev) if paused else None
    return PauseEvent(rev, epoch, name, op or ("pause" if paused else "resume"), paused, "h", st, T)


def snap(
    rev: int, *names: str, epoch: str | None = "e1", versions: dict[str, DesiredVersion] | None = None
) -> Snapshot:
    return Snapshot(rev, epoch, T, {n: state(n, rev) for n in names}, 0, dict(versions or {}))


def dv(name: str, version: str, rev: int) -> DesiredVersion:
    return DesiredVersion(name, version, f"/w/{version}", {}, rev, T + rev)


def synced(rev: int = 5, *names: str, epoch: str = "e1") -> View:
    v = View()
    v.reset(snap(rev, *names, epoch=epoch), {}, {}, now=0.0)
    return v


@pytest.mark.parametrize(
    ("view_rev", "event_rev", "event_epoch", "since", "verdict"),
    [
        (5, 6, "e1", 0.0, "apply"),
        (5, 5, "e1", 0.0, "skip"),  # already in the snapshot (a late duplicate)
        (5, 4, "e1", 0.0, "skip"),
        (5, 7, "e1", 0.0, "gap"),
        (5, 6, "e2", 0.0, "epoch-changed"),  # Redis lost its data, a new incarnation
        (5, 1, "e2", 0.0, "epoch-changed"),
        (5, 5, "e1", BEHIND_GRACE_S + 1, "revision-behind"),  # a failover to a lagging replica
    ],
)
def test_classify(view_rev: int, event_rev: int, event_epoch: str, since: float, verdict: str) -> None:
    v = synced(view_rev)
    assert v.classify(ev(event_rev, "a", True, epoch=event_epoch), now=since) == verdict


def test_an_unknown_epoch_is_learned_from_the_first_applied_event() -> None:
    v = synced(0, epoch=None)  # type: ignore[arg-type]
    assert v.epoch is None
    assert v.classify(ev(1, "a", True), now=0.0) == "apply"
    v.apply(ev(1, "a", True), now=T)
    assert v.epoch == "e1" and v.is_paused("a")
    assert v.classify(ev(1, "a", True), now=0.0) == "skip"


def test_events_apply_in_order() -> None:
    v = synced(5)
    for e in (ev(6, "a", True), ev(7, "b", True), ev(8, "a", False)):
        assert v.classify(e, now=0.0) == "apply"
        v.apply(e, now=T)
    assert v.revision == 8 and not v.is_paused("a") and v.is_paused("b")


def test_global_pauses_every_adapter() -> None:
    v = synced(5, GLOBAL)
    assert v.is_paused("anything") and v.is_paused(GLOBAL)


def test_an_event_with_an_expired_lease_is_applied_unpaused() -> None:
    v = synced(5)
    e = PauseEvent(6, "e1", "a", "pause", True, "h", state("a", 6, expires=T + 1), T)
    assert v.apply(e, now=T + 2).state is None
    assert not v.is_paused("a")


# -- resets: what vanished, what was resumed, what Redis lost ---------------------------------------
@pytest.mark.parametrize(
    ("snapshot", "tombstone", "orphaned"),
    [
        (snap(9), 7, False),  # resumed at or after the pause's revision: a missed resume
        (snap(9), 6, False),
        (snap(9), 5, True),  # a tombstone older than the pause: not its resume
        (snap(9), None, True),  # no resume at all: Redis lost it (same epoch: lagging failover)
        (snap(2), None, True),  # the revision went back
        (snap(1, epoch="e2"), None, True),  # a new incarnation without a resume
        (snap(1, epoch="e2"), 1, False),  # any resume in a new epoch counts
    ],
)
def test_a_vanished_pause_is_released_only_on_proof(
    snapshot: Snapshot, tombstone: int | None, orphaned: bool
) -> None:
    v = synced(5)
    v.apply(ev(6, "a", True), now=T)
    tombs, _ = v.wanted(snapshot)
    assert tombs == ["a", fenced_tombstone("a", "h", "6-ab")]  # the name, and its hold's fenced one
    done = v.reset(snapshot, {} if tombstone is None else {"a": tombstone}, {}, now=10.0)
    assert v.is_paused("a") is orphaned
    assert done.orphaned == (["a"] if orphaned else [])
    assert done.lost is (orphaned or snapshot.revision < 6 or snapshot.epoch != "e1")
    change = next(c for c in done.changes if c.name == "a")
    assert change.event is not None
    # never said to be resumed when it is held
    assert (change.event.op, change.event.paused) == (("orphaned", True) if orphaned else ("resync", False))


def test_a_vanished_pause_whose_lease_ran_out_is_not_an_orphan() -> None:
    v = synced(5)
    v.apply(PauseEvent(6, "e1", "a", "pause", True, "h", state("a", 6, expires=T + 1), T), now=T)
    later = Snapshot(9, "e1", T + 5, {}, 0)
    done = v.reset(later, {}, {}, now=10.0)
    assert not v.is_paused("a") and not done.orphaned and not done.lost


def test_policy_release_drops_what_redis_lost() -> None:
    v = View(on_data_loss="release")
    v.reset(snap(5, "a"), {}, {}, now=0.0)
    done = v.reset(snap(1, epoch="e2"), {}, {}, now=1.0)
    assert done.lost and done.orphaned == ["a"] and not v.is_paused("a") and not v.orphans


def test_an_epoch_change_marks_the_old_epoch_gone() -> None:
    v = synced(5, "a")
    v.reset(snap(1, epoch="e2"), {}, {}, now=1.0)
    assert "e1" in v.gone_epochs and v.epoch == "e2" and v.revision == 1


def test_a_reconfirmation_is_a_change_without_an_event() -> None:
    v = synced(5, "a")
    done = v.reset(snap(5, "a"), {}, {}, now=1.0)
    assert [(c.name, c.event) for c in done.changes] == [("a", None)]
    assert not done.changed and not done.lost


# -- orphans --------------------------------------------------------------------------------------
def orphaned_view() -> View:
    v = synced(5)
    v.apply(ev(6, "a", True), now=T)
    v.reset(snap(6), {}, {}, now=1.0)  # "a" vanished at revision 6 without a resume
    assert v.orphans.keys() == {"a"} and v.orphaned_at["a"] == ("e1", 6)
    return v


def test_an_orphan_is_released_by_a_later_resume_tombstone() -> None:
    v = orphaned_view()
    assert v.wanted(snap(8))[0][0] == "a"
    done = v.reset(snap(8), {"a": 6}, {}, now=2.0)  # not after it was orphaned
    assert v.is_paused("a") and not done.released
    done = v.reset(snap(8), {"a": 7}, {}, now=3.0)
    assert not v.is_paused("a") and done.released == ["a"]
    assert [(c.event.op, c.event.paused) for c in done.changes if c.name == "a" and c.event] == [
        ("resync", False)
    ]


def test_a_fenced_tombstone_releases_an_orphan_only_with_its_holds_token() -> None:
    """A resume with a token, of an adapter Redis lost, leaves the tombstone
    ``<name>\n<holder>\n<token>``: a reader that missed its event releases the orphan only if
    that is the token of the hold it keeps (a stale controller's resume releases nothing)."""
    v = orphaned_view()
    (hold,) = v.orphans["a"].holders.values()
    stale = fenced_tombstone("a", hold.holder, "1-0000stale")
    done = v.reset(snap(8), {stale: 8}, {}, now=2.0)
    assert v.is_paused("a") and not done.released
    done = v.reset(snap(9), {fenced_tombstone("a", hold.holder, hold.token): 9}, {}, now=3.0)
    assert not v.is_paused("a") and done.released == ["a"]


def test_an_orphan_is_released_by_a_new_change_of_it_not_by_a_resync() -> None:
    v = orphaned_view()
    v.apply(ev(7, "a", False, op="version"), now=T)
    assert v.is_paused("a")
    change = v.apply(ev(8, "a", True), now=T)  # a controller re-asserted it
    assert change.orphan_released and v.is_paused("a") and not v.orphans
    v.apply(ev(9, "a", False), now=T)
    assert not v.is_paused("a")


def test_an_orphans_lease_ends_when_it_would_have_ended() -> None:
    v = synced(5)
    v.apply(PauseEvent(6, "e1", "a", "pause", True, "h", state("a", 6, expires=T + 10), T), now=T)
    v.reset(Snapshot(6, "e1", T + 1, {}, 0), {}, {}, now=1.0)
    assert v.orphans and v.next_expiry() == T + 10
    changes, released = v.expire(T + 5)
    assert not changes and not released and v.is_paused("a")
    changes, released = v.expire(T + 11)
    assert released == ["a"] and not v.is_paused("a")
    assert [(c.event.op, c.event.paused) for c in changes if c.event] == [("expire", False)]


def test_release_orphan_is_an_operators_confirmation() -> None:
    v = orphaned_view()
    assert v.release_orphan("a") and not v.is_paused("a")
    assert not v.release_orphan("a")


# -- desired versions -----------------------------------------------------------------------------
def test_a_desired_version_redis_lost_is_kept_until_a_clear() -> None:
    v = synced(5)
    v.apply(PauseEvent(6, "e1", "a", "version", False, None, None, T, dv("a", "v2", 6)), now=T)
    assert v.wanted(snap(6))[1] == ["a"]
    done = v.reset(snap(6), {}, {}, now=1.0)  # lost: no clear tombstone
    assert v.desired["a"].version == "v2" and done.kept_versions == ["a"] and not done.versions
    done = v.reset(snap(7), {}, {"a": 7}, now=2.0)  # cleared at 7
    assert "a" not in v.desired and done.versions == [("a", None)]


def test_an_older_desired_version_in_the_same_epoch_is_not_taken() -> None:
    v = synced(5)
    v.apply(PauseEvent(6, "e1", "a", "version", False, None, None, T, dv("a", "v2", 6)), now=T)
    done = v.reset(snap(6, versions={"a": dv("a", "v1", 3)}), {}, {}, now=1.0)
    assert v.desired["a"].version == "v2" and done.kept_versions == ["a"]
    done = v.reset(snap(8, versions={"a": dv("a", "v3", 8)}), {}, {}, now=2.0)
    assert v.desired["a"].version == "v3" and [n for n, _ in done.versions] == ["a"]
