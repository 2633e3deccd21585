"""Schemathesis against the live server's OpenAPI document: no 5xx, no schema violations.

Runs the `st` CLI (all phases: examples, coverage, fuzzing, stateful) with every check except
``use_after_free``: ``GET /v1/pauses/{name}`` deliberately answers 200 ``{"paused": false}``
for an adapter that is not paused (a pause is state, not a resource that stops existing).
``/v1/events`` is excluded because it never ends; it has its own streaming tests. One long-poll
is capped at 1 s here (``max_wait_s``) so a fuzzed ``timeout_s=3000`` on a paused adapter
cannot stall the run; the cap answers ``paused: true`` exactly like a timeout.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Live

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run_st(url: str, *extra: str, examples: int, cwd: str) -> tuple[int, int, str]:
    # next to this interpreter first: the venv's bin is not on PATH under `.venv/bin/python`
    here = Path(sys.executable).parent / "st"
    st = str(here) if here.exists() else shutil.which("st")
    if st is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    proc = subprocess.run(
        [
            st,
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "use_after_free",
            "--exclude-path",
            "/v1/events",
            "--max-examples",
            str(examples),
            "--request-timeout",
            "10",
            "--seed",
            "1234",
            "--no-color",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=800,
        cwd=cwd,
    )
    out = proc.stdout + proc.stderr
    m = re.search(r"(\d+) generated", out)
    assert m, out[-3000:]
    return proc.returncode, int(m.group(1)), out


def test_schemathesis_open(make_live: Callable[..., Live], tmp_path: Path) -> None:
    live = make_live(max_wait_s=1.0)
    rc, cases, out = _run_st(live.url, examples=25, cwd=str(tmp_path))
    print(f"schemathesis (no auth): {cases} test cases")
    assert rc == 0, out[-8000:]
    assert cases > 300


def test_schemathesis_with_auth(make_live: Callable[..., Live], tmp_path: Path) -> None:
    live = make_live(max_wait_s=1.0, api_token="st-token", auth_reads=True)
    rc, cases, out = _run_st(live.url, "-H", "Authorization: Bearer st-token", examples=8, cwd=str(tmp_path))
    print(f"schemathesis (auth on): {cases} test cases")
    assert rc == 0, out[-8000:]
