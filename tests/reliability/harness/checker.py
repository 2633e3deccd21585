"""The invariant checker: pure functions over what the replicas logged and the controller did.

Invariants (issue 6):
1. no token of A is produced between the return of a drained pause of A and its resume
   (``window`` violations), and no replica decodes a request of A while A's weights are swapped
   (``VIOLATION`` lines the fake engine logs itself);
2. every token of A carries the weight version installed by the last completed swap of A
   (``version`` violations: a replica decoding on weights it should not have);
3. no sample mixes weight versions except at a recorded resume boundary, and no token of a
   sample is lost or duplicated (positions are consecutive);
4. nothing is left behind: no held request, no in-flight request, no waiter (checked by the
   workload against the live gates and its own tasks).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from reliability.harness.fake_engine import VERSION_BASE


@dataclass(frozen=True)
class Token:
    adapter: str
    replica: str
    version: int
    t_ns: int
    request: str
    pos: int


@dataclass(frozen=True)
class Window:
    """A drained pause of ``adapter``: returned at ``t_ret``, resume sent at ``t_res``;
    ``version`` was installed in between on ``swapped`` replicas."""

    adapter: str
    t_ret: int
    t_res: int
    version: int
    swapped: frozenset[str]


@dataclass
class SampleRecord:
    adapter: str
    kind: str
    prompt_len: int
    tokens: list[int]
    boundaries: list[int]
    finish: str


@dataclass
class Findings:
    tokens: int = 0
    window: list[str] = field(default_factory=list)
    swap_while_decoding: list[str] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    @property
    def green(self) -> bool:
        return not (self.window or self.swap_while_decoding or self.version or self.samples)

    def summary(self) -> str:
        return (
            f"tokens={self.tokens} window={len(self.window)} "
            f"swap_while_decoding={len(self.swap_while_decoding)} version={len(self.version)} "
            f"samples={len(self.samples)}; first: "
            + "; ".join((self.window + self.swap_while_decoding + self.version + self.samples)[:5])
        )


def read_logs(paths: Iterable[Path]) -> tuple[list[Token], list[str]]:
    tokens, violations = [], []
    for p in paths:
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) != 6:
                continue  # a replica killed mid-write
            if parts[0] == "VIOLATION":
                violations.append(f"{parts[1]}: {parts[4]}")
            elif parts[0] != "SWAP":
                tokens.append(
                    Token(parts[0], parts[1], int(parts[2]), int(parts[3]), parts[4], int(parts[5]))
                )
    return tokens, violations


def check(
    tokens: list[Token],
    engine_violations: list[str],
    windows: list[Window],
    samples: list[SampleRecord],
    initial_versions: dict[str, int] | None = None,
    exempt: dict[str, int] | None = None,
) -> Findings:
    """``exempt``: replica -> monotonic ns after which its tokens are not judged by the window
    rule (a replica the drain barrier legitimately gave up on: SIGSTOPped past the timeout)."""
    f = Findings(tokens=len(tokens), swap_while_decoding=list(engine_violations))
    exempt = exempt or {}
    by_adapter: dict[str, list[Window]] = defaultdict(list)
    for w in windows:
        by_adapter[w.adapter].append(w)
    for ws in by_adapter.values():
        ws.sort(key=lambda w: w.t_ret)
    starts = {a: [w.t_ret for w in ws] for a, ws in by_adapter.items()}
    init = initial_versions or {}
    for t in tokens:
        ws = by_adapter.get(t.adapter, [])
        i = bisect.bisect_right(starts.get(t.adapter, []), t.t_ns) - 1
        if i >= 0 and t.t_ns < ws[i].t_res:
            if t.replica in exempt and t.t_ns >= exempt[t.replica]:
                continue
            f.window.append(
                f"token of {t.adapter} v{t.version} on {t.replica} at +{(t.t_ns - ws[i].t_ret) / 1e6:.1f}ms "
                f"after the drained pause returned (resume {(ws[i].t_res - ws[i].t_ret) / 1e6:.1f}ms)"
            )
            continue
        # the version installed by the last window that ended before this token, on this replica
        expected = init.get(t.adapter, 0)
        for w in ws[: i + 1]:
            if t.replica in w.swapped:
                expected = w.version
        if i >= 0 and any(t.replica not in w.swapped for w in ws[: i + 1]):
            continue  # this replica missed a swap (dead, stopped or new): no expectation
        if t.version != expected:
            f.version.append(f"token of {t.adapter} on {t.replica} has v{t.version}, expected v{expected}")
    for s in samples:
        f.samples.extend(check_sample(s))
    return f


def check_sample(s: SampleRecord) -> list[str]:
    out = []
    bounds = set(s.boundaries)
    for i, tok in enumerate(s.tokens):
        if tok % VERSION_BASE != s.prompt_len + i:
            out.append(
                f"{s.kind} sample of {s.adapter}: token {i} has position "
                f"{tok % VERSION_BASE}, expected {s.prompt_len + i} (lost or duplicated)"
            )
            break
        if i and tok // VERSION_BASE != s.tokens[i - 1] // VERSION_BASE and i not in bounds:
            out.append(
                f"{s.kind} sample of {s.adapter}: weight version changes at token {i} "
                f"(v{s.tokens[i - 1] // VERSION_BASE} -> v{tok // VERSION_BASE}) "
                f"without a recorded boundary (boundaries {sorted(bounds)})"
            )
    return out
