"""An event is decoded through the JSON scanner directly (the watcher's hot path): for any
input it gives what ``json.loads`` gives - the same object, or an error of the same type."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pausesvc.protocol.models import PauseEvent, _loads_object

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
