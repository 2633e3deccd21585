"""Counting fencings: once per fencing, whoever notices it first (the fence monitor or a
response the fence cut), and never for a process that was not yet unfenced (starting up).

Driven through the runtime's own ``fenced`` check with a fake clock and fake proofs, no
Redis: the counter is what the reliability suite reads after a SIGSTOP (``stats.fences``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pausesvc_vllm._runtime import GateRuntime

from pausesvc import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> tuple[GateRuntime, Clock]:
    clock = Clock()
    monkeypatch.setattr("pausesvc_vllm._runtime.time", clock)
    runtime = GateRuntime(Settings())
    return runtime, clock


def _prove(runtime: GateRuntime, clock: Clock) -> None:
    """A heartbeat and a view proof, both fresh now."""
    runtime._hb_proof = clock.now
    runtime.watcher = SimpleNamespace(proof_age=0.0)  # type: ignore[assignment]


def test_a_process_starting_up_counts_no_fencing(rt: tuple[GateRuntime, Clock]) -> None:
    runtime, _clock = rt
    assert runtime.fenced
    runtime.note_fenced()
    runtime.note_fenced()
    assert runtime.stats.fences == 0


def test_a_cut_before_the_monitor_ever_saw_the_process_unfenced_is_counted(
    rt: tuple[GateRuntime, Clock],
) -> None:
    """The CI failure: admitted (so seen unfenced by admission), SIGSTOPped before the
    monitor's first tick, woken fenced: the response is cut and that is the first notice."""
    runtime, clock = rt
    _prove(runtime, clock)
    assert not runtime.fenced  # admission saw it unfenced; the monitor never ticked
    clock.now += 5.0  # stopped
    runtime.watcher = SimpleNamespace(proof_age=5.0)  # type: ignore[assignment]
    assert runtime.fenced
    runtime.note_fenced()  # the cut
    runtime.note_fenced()  # then the monitor: the same fencing
    assert runtime.stats.fences == 1


def test_a_late_old_proof_while_fenced_is_not_a_second_fencing(rt: tuple[GateRuntime, Clock]) -> None:
    runtime, clock = rt
    _prove(runtime, clock)
    assert not runtime.fenced
    clock.now += 5.0
    runtime.watcher = SimpleNamespace(proof_age=5.0)  # type: ignore[assignment]
    runtime.note_fenced()
    runtime._hb_proof = clock.now - 3.0  # a PONG for a PING sent before the stop
    assert runtime.fenced
    runtime.note_fenced()
    assert runtime.stats.fences == 1


def test_every_fencing_after_an_unfenced_period_is_counted(rt: tuple[GateRuntime, Clock]) -> None:
    runtime, clock = rt
    for n in (1, 2, 3):
        _prove(runtime, clock)
        assert not runtime.fenced
        clock.now += 5.0
        runtime.watcher = SimpleNamespace(proof_age=5.0)  # type: ignore[assignment]
        assert runtime.fenced
        runtime.note_fenced()
        runtime.note_fenced()
        assert runtime.stats.fences == n
