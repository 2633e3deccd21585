"""The headline and the sections of scenarios 3, 5, 6, 7 of ``docs/benchmarks.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["intro", "sections"]

NOTES = Path(__file__).resolve().parent / "notes.md"


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def intro(results: dict[str, Any]) -> list[str]:
    from bench._report import _f, _table

    out = ["## Headline", ""]
    lat = results.get("latency")
    if lat:
        rows = []
        for x in lat:
            fl = x["floor"]["propagation_pause_ms"]["median"]
            rows.append(
                [
                    str(x["R"]),
                    _f(x["pausesvc"]["controller_pause_ms"]["median"]),
                    _f(x["raw"]["controller_pause_ms"]["median"]),
                    _f(x["skyrl"]["controller_pause_ms"]["median"]),
                    _f(
                        x["raw"]["controller_pause_ms"]["median"]
                        / x["pausesvc"]["controller_pause_ms"]["median"],
                        1,
                    )
                    + "x",
                    _f(x["pausesvc"]["propagation_pause_ms"]["median"]),
                    _f(fl),
                    _f(x["pausesvc"]["propagation_pause_ms"]["median"] / fl) + "x",
                ]
            )
        out += [
            "Pause, medians in ms (p99 and max in the sections below):",
            "",
            *_table(
                [
                    "R",
                    "pausesvc call",
                    "best fan-out call",
                    "SkyRL fan-out call",
                    "best fan-out / pausesvc",
                    "pausesvc propagation",
                    "floor",
                    "propagation / floor",
                ],
                rows,
            ),
            "",
        ]
    wk = results.get("wakeup")
    if wk:
        rows = []
        for w in wk.get("one_process", []):
            rows.append(
                [
                    w["design"],
                    str(w["W"]),
                    _f(w["after_event_ms"]["p50"]["median"]),
                    _f(w["after_event_ms"]["p99"]["median"]),
                    _f(w["after_resume_ms"]["p99"]["median"]),
                ]
            )
        out += [
            "Wake-up of W waiters in one process (ms; median over trials of each trial's p50 / p99):",
            "",
            *_table(
                [
                    "design",
                    "W",
                    "p50 after the event arrived",
                    "p99 after the event",
                    "p99 after resume() started",
                ],
                rows,
            ),
            "",
        ]
    g = results.get("gate")
    if g:
        rows = [
            [
                r["variant"],
                r.get("loop", "asyncio"),
                _f(r["round_ratio"]["median"] if "round_ratio" in r else r["ratio"], 3),
                _f(r["added_cpu_us"], 1),
                _f(r["ttfb_ms"]["median"], 3),
            ]
            for r in g.get("by_loop") or g["summary"]
        ]
        out += [
            "Gate overhead on unpaused traffic (uvicorn, fake streaming endpoint):",
            "",
            *_table(
                ["gate", "loop", "throughput vs no gate (same loop)", "added CPU us/request", "TTFB ms"],
                rows,
            ),
            "",
        ]
    if NOTES.exists():
        out += [NOTES.read_text().strip(), ""]
    return out


def sections(results: dict[str, Any], img: Path, plot: Any, table: Any, s: Any, f: Any) -> list[str]:
    out: list[str] = []
    wk = results.get("wakeup")
    if wk:
        out += [
            "## 3. Wake-up",
            "",
            "W waiters are paused on adapter A; the controller resumes A. For each waiter: the "
            "time from the instant the process learned of the resume (its watcher's listener "
            "for pausesvc, the resume handler for the baseline) and from the start of "
            "`resume()`, until the waiter runs again. Per trial: p50, p99, max over the "
            "waiters; the table shows median / p99 / max of those over the trials (ms).",
            "",
        ]
        rows = []
        for w in wk.get("one_process", []):
            rows.append(
                [
                    w["design"],
                    str(w["W"]),
                    s(w["after_event_ms"]["p50"]),
                    s(w["after_event_ms"]["p99"]),
                    s(w["after_resume_ms"]["p99"]),
                    s(w["after_resume_ms"]["max"]),
                ]
            )
        out += [
            "One process:",
            "",
            *table(
                [
                    "design",
                    "W",
                    "p50 after event",
                    "p99 after event",
                    "p99 after resume start",
                    "last waiter after resume start",
                ],
                rows,
            ),
            "",
        ]
        rows = []
        for w in wk.get("spread", []):
            rows.append(
                [
                    w["design"],
                    str(w["W"]),
                    str(w["R"]),
                    s(w["after_resume_ms"]["p50"]),
                    s(w["after_resume_ms"]["p99"]),
                    s(w["after_resume_ms"]["max"]),
                ]
            )
        if rows:
            out += [
                "Spread over R processes (W in total):",
                "",
                *table(
                    ["design", "W", "R", "p50 after resume start", "p99 after resume start", "last waiter"],
                    rows,
                ),
                "",
            ]
        series = {}
        for design in sorted({w["design"] for w in wk.get("one_process", [])}):
            ws = [w for w in wk["one_process"] if w["design"] == design]
            series[design] = (
                [w["W"] for w in ws],
                [w["after_event_ms"]["p50"]["median"] for w in ws],
                [w["after_event_ms"]["p99"]["median"] for w in ws],
            )
        if series:
            plot(
                img / "bench-wakeup.png",
                "Wake-up after the event arrived, one process",
                "waiters W",
                "ms",
                series,
            )
            out += ["![wake-up](img/bench-wakeup.png)", ""]
    g = results.get("gate")
    if g:
        out += [
            "## 5. Gate overhead on unpaused traffic",
            "",
            f"uvicorn (one worker, h11) serving a fake OpenAI streaming `/v1/completions` "
            f"({g['chunks']} SSE chunks + `[DONE]`), driven by a lean keep-alive client process "
            f"with {g['concurrency']} connections, {g['seconds']} s per round, "
            f"{g.get('rounds', '?')} rounds after a warm-up one, every server once per round "
            "(the order rotating). One set of four servers (bare, pausesvc, SkyRL, a layer "
            "that only wraps receive and send) per event loop "
            f"({', '.join(g.get('loops', ['asyncio']))}; vLLM's uvicorn runs uvloop). Ratio: a "
            "gate's requests/s over the bare server's on the same loop in the same round; "
            "median and range over the rounds. Server CPU from /proc per request. Real-vLLM "
            "tokens/s: `bench/vllm_overhead.py` (goals table).",
            "",
        ]
        rows = [
            [
                r["variant"],
                r.get("loop", "asyncio"),
                s(r["rps"], 0),
                s(r["cpu_us"], 1),
                s(r["ttfb_ms"], 3),
                f(r["round_ratio"]["median"], 3) if "round_ratio" in r else "-",
                (
                    f"{f(r['round_ratio']['min'], 3)}-{f(r['round_ratio']['max'], 3)}"
                    if "round_ratio" in r
                    else "-"
                ),
                f(r["ratio"], 3),
                f(r["added_cpu_us"], 1),
            ]
            for r in g.get("by_loop") or g["summary"]
        ]
        out += [
            *table(
                [
                    "gate",
                    "loop",
                    "requests/s",
                    "server CPU us/request",
                    "TTFB ms",
                    "per-round ratio (median)",
                    "per-round range",
                    "ratio of medians",
                    "added CPU us/request",
                ],
                rows,
            ),
            "",
        ]
    mem = results.get("memory")
    if mem:
        out += ["## 6b. Memory and connections", ""]
        rows = [
            [
                r["design"],
                str(r["held"]),
                f(r["rss_mb_before"], 1),
                f(r["rss_mb_after"], 1),
                f(r["bytes_per_held"], 0),
            ]
            for r in mem.get("held", [])
        ]
        out += [
            "RSS per held request (gated requests held in one replica process, driven "
            "through the gate's ASGI interface):",
            "",
            *table(["design", "held", "RSS before MB", "RSS held MB", "bytes / held request"], rows),
            "",
        ]
        if mem.get("added_rss_mb") is not None:
            out += [
                f"RSS the pausesvc gate adds to a replica process (imports, watcher, "
                f"runtime, synced): {f(mem['added_rss_mb'], 1)} MB "
                f"({mem.get('added_rss_detail', '')}). The baseline process imports what a vLLM "
                "API server has imported before it loads the middleware (FastAPI, Starlette, "
                "pydantic, uvicorn): their RSS is not the gate's.",
                "",
            ]
            if mem.get("rss_steps"):
                out += [
                    "Import steps, in order (RSS each adds; a step already imported by an earlier "
                    "one adds 0):",
                    "",
                    *table(
                        ["import", "RSS MB", "modules"],
                        [[x["module"], f(x["mb"], 2), str(x["new_modules"])] for x in mem["rss_steps"]],
                    ),
                    "",
                ]
            if mem.get("rss_by_module"):
                out += [
                    "The largest modules of that import by their own RSS (each module's exec minus "
                    "the imports it made, like `-X importtime` splits time; RSS grows in pages and "
                    "allocator arenas, so single figures are lumpy):",
                    "",
                    *table(
                        ["module", "own RSS MB"],
                        [[x["module"], f(x["mb"], 2)] for x in mem["rss_by_module"][:20]],
                    ),
                    "",
                ]
        rows = [
            [str(r["adapters"]), str(r["waiters"]), str(r["connections"]), str(r["pubsub"])]
            for r in mem.get("connections", [])
        ]
        if rows:
            out += [
                "Redis connections of one pausesvc replica process as adapters and waiters grow:",
                "",
                *table(["paused adapters", "waiters", "connections", "pub/sub connections"], rows),
                "",
            ]
    fl = results.get("faults")
    if fl:
        out += [
            "## 7. A slow or dead replica",
            "",
            "One of R replicas answers after 2 s (baseline: the endpoint sleeps 2 s; pausesvc: "
            "the process is SIGSTOPped for 2 s) or is dead (SIGKILL) during pause/resume.",
            "",
        ]
        rows = [[r["design"], str(r["R"]), r["fault"], r["op"], f(r["ms"], 1), r["outcome"]] for r in fl]
        out += [*table(["design", "R", "fault", "call", "call took ms", "controller sees"], rows), ""]
    return out
