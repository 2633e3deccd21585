"""Write ``docs/benchmarks.md`` and ``docs/img/bench-*.png`` from a results dict."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["write_docs"]

FANOUTS = ("raw", "httpx-per-replica", "skyrl")
LABEL = {
    "pausesvc": "pausesvc",
    "pausesvc-drain": "pausesvc drain=True",
    "raw": "fan-out, raw HTTP/1.1 (best)",
    "httpx-per-replica": "fan-out, httpx per replica",
    "skyrl": "fan-out, shared httpx (SkyRL)",
    "floor": "raw PUBLISH (floor)",
    "floor-barrier": "barrier floor: raw PUBLISH out, each subscriber's raw PUBLISH back",
    "floor-durable": "durable floor: raw EVALSHA of HSET + INCR + PUBLISH",
}


def _f(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _s(d: dict[str, float], nd: int = 2) -> str:
    """median / p99 / max"""
    return f"{_f(d['median'], nd)} / {_f(d['p99'], nd)} / {_f(d['max'], nd)}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _plot(
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    series: dict[str, tuple[list[float], list[float], list[float]]],
    logy: bool = True,
    logx: bool = True,
) -> None:
    try:
        import matplotlib
    except ImportError:  # not installed in this venv: the docs say so, the images are not redrawn
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, (xs, med, p99) in series.items():
        (line,) = ax.plot(xs, med, marker="o", label=f"{name} (median)")
        ax.plot(xs, p99, marker="x", linestyle=":", color=line.get_color(), alpha=0.6)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title + "  (solid: median, dotted: p99)", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency_section(lat: list[dict[str, Any]], img: Path, out: list[str]) -> None:
    rs = [x["R"] for x in lat]
    out += [
        "## 1. Controller latency: time for pause / resume to return",
        "",
        "Median / p99 / max in ms over the trials, R replica processes.",
        "",
    ]
    for op in ("pause", "resume"):
        head = ["design"] + [f"R={r}" for r in rs]
        rows = []
        for d in ("pausesvc", "pausesvc-drain", *FANOUTS, "floor", "floor-barrier"):
            if (op == "resume" and d == "pausesvc-drain") or d not in lat[0]:
                continue
            rows.append([LABEL[d]] + [_s(x[d][f"controller_{op}_ms"]) for x in lat])
        out += [f"**{op}**", "", *_table(head, rows), ""]
    rows = []
    for x in lat:
        p = x["pausesvc"]["controller_pause_ms"]["median"]
        rows.append([str(x["R"])] + [_f(x[d]["controller_pause_ms"]["median"] / p, 1) for d in FANOUTS])
    out += [
        "Fan-out pause latency as a multiple of pausesvc's (medians):",
        "",
        *_table(["R", *[LABEL[d] for d in FANOUTS]], rows),
        "",
        "![controller latency](img/bench-controller.png)",
        "",
    ]
    _plot(
        img / "bench-controller.png",
        "Controller pause latency",
        "replica processes R",
        "ms",
        {
            LABEL[d]: (
                rs,
                [x[d]["controller_pause_ms"]["median"] for x in lat],
                [x[d]["controller_pause_ms"]["p99"] for x in lat],
            )
            for d in ("pausesvc", "pausesvc-drain", *FANOUTS)
        },
    )

    out += [
        "## 2 + 4. Propagation, and the Redis floor",
        "",
        "From the start of `pause` (`resume`) until the LAST of the R replica processes' gate "
        "holds (admits) - each process reports the instant its view changed with its "
        "CLOCK_MONOTONIC time over UDP. The floor: a raw redis-py `PUBLISH` from the same "
        "controller to R raw redis-py subscriber processes, in the same run, interleaved. "
        "The durable floor: the same subscribers, and from the same controller one raw "
        "`EVALSHA` of a script that stores the state (HSET), bumps a revision (INCR) and "
        "PUBLISHes - the least a pause that survives a restart or a data loss writes before "
        "it is announced. Median / p99 / max, ms.",
        "",
    ]
    for op in ("pause", "resume"):
        head = ["design"] + [f"R={r}" for r in rs]
        rows = [
            [LABEL[d]] + [_s(x[d][f"propagation_{op}_ms"]) for x in lat]
            for d in ("pausesvc", *FANOUTS, "floor", "floor-durable")
            if d in lat[0]
        ]
        rows.append(["Redis PING round trip"] + [_s(x["ping_ms"], 3) for x in lat])
        out += [f"**{op}**", "", *_table(head, rows), ""]
    rows = []
    for x in lat:
        f = x["floor"]["propagation_pause_ms"]["median"]
        fr = x["floor"]["propagation_resume_ms"]["median"]
        rows.append(
            [
                str(x["R"]),
                _f(x["pausesvc"]["propagation_pause_ms"]["median"] / f),
                _f(x["pausesvc"]["propagation_resume_ms"]["median"] / fr),
                _f(x["pausesvc-drain"]["controller_pause_ms"]["median"] / f),
                _f(
                    x["pausesvc-drain"]["controller_pause_ms"]["median"]
                    / x["floor-barrier"]["controller_pause_ms"]["median"]
                )
                if "floor-barrier" in x
                else "-",
                _f(x["raw"]["propagation_pause_ms"]["median"] / f),
                _f(x["floor-durable"]["propagation_pause_ms"]["median"] / f) if "floor-durable" in x else "-",
            ]
        )
    out += [
        "As a multiple of the floor (medians; goal: pause propagation <= 1.3x, "
        "`pause(drain=True)` return <= 2x):",
        "",
        *_table(
            [
                "R",
                "pausesvc pause propagation",
                "pausesvc resume propagation",
                "pausesvc drain=True return",
                "drain=True / barrier floor",
                "best fan-out pause propagation",
                "durable floor pause propagation",
            ],
            rows,
        ),
        "",
        "![propagation](img/bench-propagation.png)",
        "",
    ]
    _plot(
        img / "bench-propagation.png",
        "Propagation of a pause to the last replica",
        "replica processes R",
        "ms",
        {
            LABEL[d]: (
                rs,
                [x[d]["propagation_pause_ms"]["median"] for x in lat],
                [x[d]["propagation_pause_ms"]["p99"] for x in lat],
            )
            for d in ("pausesvc", *FANOUTS, "floor")
        },
    )

    out += [
        "## 6a. CPU per pause event, all parties",
        "",
        "Back-to-back pause/resume blocks per design: controller CPU (`process_time`), the "
        "sum over replica processes (each reports its own `process_time`), and redis-server "
        "(`INFO cpu` delta; includes the replicas' background heartbeats). ms per change.",
        "",
    ]
    rows = []
    for x in lat:
        for d in ("pausesvc", *FANOUTS, "floor"):
            c = x["cpu_per_event"][d]
            rows.append(
                [
                    str(x["R"]),
                    LABEL[d],
                    _f(c["controller_ms"]),
                    _f(c["replicas_ms"]),
                    _f(c["redis_ms"]),
                    _f(c["total_ms"]),
                ]
            )
    out += [*_table(["R", "design", "controller", "replicas (sum)", "redis-server", "total"], rows), ""]
    rows = [
        [
            str(x["R"]),
            _f(x["connections"]["per_replica_total"], 1),
            _f(x["connections"]["per_replica_pubsub"], 1),
            x["gate"],
        ]
        for x in lat
    ]
    out += [
        "Redis connections per pausesvc replica process (INFO clients / CLIENT LIST TYPE "
        "pubsub deltas when the R processes start):",
        "",
        *_table(["R", "connections / process", "pub/sub connections / process", "replica side"], rows),
        "",
    ]


def write_docs(results: dict[str, Any], docs: Path) -> None:
    from bench import _report_more

    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    m, v = meta["machine"], meta["versions"]
    out = [
        "# Benchmarks",
        "",
        "<!-- generated by `python -m bench` (bench/_report.py); do not edit by hand -->",
        "",
        f"Command: `{meta['command']}` (from the repository root; {meta['seconds']} s). "
        f"Results: `bench/results/bench-{meta['mode']}.json`. Started {meta['started']}.",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']} GB RAM, Linux {m['kernel']}, "
        f"load average at start {', '.join(_f(x) for x in m['loadavg_at_start'])}. "
        "Shared with other engineers' tests and vLLM servers: absolute numbers are noisy; "
        "the ratios between designs measured side by side in the same run are what count.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in sorted(v.items())) + ".",
        "",
        f"Bytecode of pausesvc and pausesvc_vllm: {meta.get('bytecode', 'as found')} (an "
        "editable install has no .pyc and this machine sets PYTHONDONTWRITEBYTECODE=1, so "
        "without this every replica and CLI process of the run would compile the source at "
        "import, which a deployed one does not).",
        "",
        "Every figure is median / p99 / max over repeated trials. Designs are interleaved "
        "within each run (the order rotates every trial; in the latency scenario no design "
        "follows one that ran on its own processes, which would leave them warm for it).",
        "",
    ]
    from bench import _report_fleet

    out += _report_fleet.goals(results)
    out += _report_more.intro(results)
    if "latency" in results:
        _latency_section(results["latency"], img, out)
    out += _report_more.sections(results, img, _plot, _table, _s, _f)
    out += _report_fleet.sections(results)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        note = "(plot not redrawn: matplotlib is not installed in this venv)"
        out = [note if line.startswith("![") else line for line in out]
    (docs / "benchmarks.md").write_text("\n".join(out) + "\n")
