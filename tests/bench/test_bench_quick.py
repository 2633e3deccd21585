"""The benchmark's smoke run (``python -m bench --quick``) works and covers every scenario."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_run_writes_every_scenario(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-docs", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "bench-quick.json").read_text())
    for key in ("meta", "latency", "wakeup", "gate", "memory", "faults"):
        assert key in data, key
    assert {x["R"] for x in data["latency"]} == {1, 4}
    for x in data["latency"]:
        for design in (
            "pausesvc",
            "pausesvc-drain",
            "skyrl",
            "httpx-per-replica",
            "raw",
            "floor",
            "floor-durable",
        ):
            assert x[design]["controller_pause_ms"]["n"] > 0
            assert x[design]["propagation_pause_ms"]["median"] > 0
    assert {w["design"] for w in data["wakeup"]["one_process"]} == {
        "pausesvc-wait",
        "pausesvc-gate",
        "baseline-gate",
    }
    assert {g["variant"] for g in data["gate"]["summary"]} == {"none", "pausesvc", "skyrl", "wrap-only"}
    assert data["memory"]["held"] and data["memory"]["connections"]
    # a slow or dead replica never fails pausesvc's (non-drain) controller calls
    for row in data["faults"]:
        if row["design"] == "pausesvc":
            assert row["outcome"] == "ok", row
    # the report renders from a quick run's results (matplotlib or not)
    from bench._report import write_docs

    write_docs(data, tmp_path / "docs")
    report = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "## Goals of issue 11" in report
    assert "x the durable floor" in report  # the propagation rows set it beside the floor


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_fleet_cluster_netns_and_profiles_run_small(tmp_path: Path) -> None:
    """The sections left out of --quick, at their --quick sizes, selected by name."""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "fleet,cluster,netns,profiles",
            "--no-docs",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=190,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "bench-quick.json").read_text())
    row = data["fleet"]["rows"][-1]
    for design in ("pausesvc", "floor"):
        assert row[design]["propagation_pause_ms"]["n"] > 0
        assert row["cpu_per_event"][design]["redis_ms"] > 0
    assert row["connections_per_view"]["floor"] >= 0.9
    cluster = data["cluster"]
    assert "error" in cluster or cluster["row"]["pausesvc"]["propagation_pause_ms"]["n"] > 0
    netns = data["netns"]
    assert "error" in netns or netns["runs"][0]["rows"][0]["pausesvc"]["propagation_pause_ms"]["n"] > 0
    assert data["profiles"]["gate_micro"]["cost_us"]
    assert "ncalls" in data["profiles"]["gate_process"]

    from bench._report import write_docs

    write_docs({**data, "meta": data["meta"]}, tmp_path / "docs")
    text = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "## F. A fleet of 1,000" in text and "## I. Projection to 10,000 replicas" in text
