"""An event is decoded through the JSON scanner directly (the watcher's hot path): for any
input it gives what ``json.loads`` gives - the same object, or an error of the same type; its
records are built by positional constructors that make exactly what the dataclasses' own
``__init__`` makes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pausesvc.protocol.models import (
    AdapterState,
    Hold,
    PauseEvent,
    _build_event,
    _build_hold,
    _build_state,
    _loads_object,
)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _outcome(f: Any, raw: Any) -> tuple[str, Any]:
    try:
        return "ok", f(raw)
    except Exception as exc:  # the type is what must match
        return "error", type(exc)


def _same(raw: Any) -> None:
    assert _outcome(_loads_object, raw) == _outcome(json.loads, raw)


@settings(max_examples=300, deadline=None)
@given(value=_json, compact=st.booleans(), pad=st.sampled_from(["", " ", "\n", "x", "}", "{}"]))
def test_decoding_any_json_as_json_loads_does(value: Any, compact: bool, pad: str) -> None:
    text = json.dumps(value, separators=(",", ":") if compact else None)
    for raw in (text, text + pad, pad + text, text.encode(), (text + pad).encode()):
        _same(raw)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64))
def test_decoding_any_bytes_as_json_loads_does(raw: bytes | str) -> None:
    _same(raw)


def test_other_encodings_and_shapes_fall_back_to_json_loads() -> None:
    ev = {"v": 1, "rev": 3, "epoch": "e", "name": "a", "op": "pause", "paused": True, "holder": "h", "ts": 5}
    for raw in (
        json.dumps(ev).encode("utf-16"),
        json.dumps(ev).encode("utf-32"),
        b"\xef\xbb\xbf" + json.dumps(ev).encode(),
    ):
        _same(raw)
    assert PauseEvent.from_json(json.dumps(ev).encode("utf-16")).revision == 3
    for bad in (b"[1, 2]", b'"str"', b"", b'{"rev": 1} trailing'):
        try:
            PauseEvent.from_json(bad)
        except (ValueError, KeyError, TypeError):
            pass  # what the watcher treats as a malformed event
        else:
            raise AssertionError(bad)


# -- the decoders' constructors: what the dataclasses' own __init__ would make ----------------
_opt_text = st.none() | st.text(max_size=6)
_num = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    holder=st.text(max_size=6),
    token=st.text(max_size=6),
    since=_num,
    reason=_opt_text,
    expires=st.none() | _num,
    drain=st.booleans(),
    rev=st.integers(),
    epoch=_opt_text,
)
def test_built_records_equal_and_hash_as_constructed_ones(
    holder: str,
    token: str,
    since: float,
    reason: str | None,
    expires: float | None,
    drain: bool,
    rev: int,
    epoch: str | None,
) -> None:
    hold_args = (holder, token, since, reason, expires, drain)
    built_hold, hold = _build_hold(*hold_args), Hold(*hold_args)
    assert (built_hold, hash(built_hold), repr(built_hold)) == (hold, hash(hold), repr(hold))
    state_args = ("a", {holder: hold}, since, rev, rev)
    built_state, state = _build_state(*state_args), AdapterState(*state_args)
    assert (built_state, repr(built_state)) == (state, repr(state))
    ev_args = (rev, epoch, "a", "pause", True, holder, state, since, None, False, token or None)
    built_ev, ev = _build_event(*ev_args), PauseEvent(*ev_args)
    assert (built_ev, repr(built_ev)) == (ev, repr(ev))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built_hold.token = "x"  # type: ignore[misc]  # still frozen


def test_a_builder_takes_every_field_and_no_more() -> None:
    for build, cls in ((_build_hold, Hold), (_build_state, AdapterState), (_build_event, PauseEvent)):
        n = len(dataclasses.fields(cls))
        with pytest.raises(TypeError):
            build(*range(n - 1))
        with pytest.raises(TypeError):
            build(*range(n + 1))


def test_decoded_events_equal_their_keyword_construction() -> None:
    raw = {
        "v": 1,
        "rev": 7,
        "epoch": "e",
        "name": "a",
        "op": "pause",
        "paused": True,
        "holder": "h",
        "ts": 1500,
        "state": {
            "name": "a",
            "since": 1000,
            "rev": 7,
            "pause_rev": 6,
            "holders": {
                "h": {"token": "6-n", "since": 1000, "reason": "r", "expires": 9000, "drain": True},
                "g": {"token": 5.0, "since": 2000},
            },
        },
    }
    ev = PauseEvent.from_json(json.dumps(raw))
    assert ev == PauseEvent(
        revision=7,
        epoch="e",
        name="a",
        op="pause",
        paused=True,
        holder="h",
        state=AdapterState(
            name="a",
            holders={
                "h": Hold(holder="h", token="6-n", since=1.0, reason="r", expires_at=9.0, drain=True),
                "g": Hold(holder="g", token="5", since=2.0),
            },
            since=1.0,
            revision=7,
            pause_revision=6,
        ),
        ts=1.5,
    )
    bare = PauseEvent.from_json(json.dumps({**raw, "state": None, "epoch": None, "op": "resume"}))
    assert (bare.state, bare.epoch, bare.version) == (None, None, None)
