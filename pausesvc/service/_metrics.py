"""Prometheus metrics of the control service (one registry per app).

Request counters come from :class:`RequestMetrics` (pure ASGI, labels are route templates, so
adapter names never become label values there); the view's numbers are read from the watcher
at scrape time by :class:`WatcherCollector`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from pausesvc.watcher import PauseWatcher

__all__ = ["Metrics", "RequestMetrics", "VersionCollector", "WatcherCollector"]


class VersionCollector(Collector):
    """Weight versions per adapter, from the service's last read of the registry (a dict of
    ``{adapter: {"desired", "on": {version: n}, "off", "mixed"}}``)."""

    def __init__(self, get_fleet: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self._get = get_fleet

    def collect(self) -> Iterator[Metric]:
        fleet = self._get()
        info = GaugeMetricFamily(
            "pausesvc_adapter_desired_version_info",
            "1 for each adapter's desired weight version.",
            labels=["adapter", "version"],
        )
        on = GaugeMetricFamily(
            "pausesvc_adapter_replicas_on_version",
            "Live replicas that reported each version of each adapter loaded.",
            labels=["adapter", "version"],
        )
        off = GaugeMetricFamily(
            "pausesvc_adapter_replicas_off_desired_version",
            "Live replicas not (yet) on the adapter's desired version.",
            labels=["adapter"],
        )
        mixed = GaugeMetricFamily(
            "pausesvc_adapter_versions_mixed",
            "1 when the live replicas do not all serve the same version of the adapter.",
            labels=["adapter"],
        )
        for name, f in sorted(fleet.items()):
            if f["desired"] is not None:
                info.add_metric([name, f["desired"]], 1)
                off.add_metric([name], f["off"])
            for version, n in sorted(f["on"].items()):
                on.add_metric([name, version], n)
            mixed.add_metric([name], 1.0 if f["mixed"] else 0.0)
        yield info
        yield on
        yield off
        yield mixed


class WatcherCollector(Collector):
    """The shared watcher's view, read at scrape time: what is paused, for how long, and how
    healthy the view itself is (nothing while the watcher is not started)."""

    def __init__(self, get_watcher: object) -> None:
        self._get = get_watcher

    def collect(self) -> Iterator[Metric]:
        w: PauseWatcher | None = self._get()  # type: ignore[operator]
        if w is None:
            return
        names = w.paused_names()
        yield from _paused(names)
        yield from _pause_ages(w, names)
        yield from _view_health(w)
        yield from _view_counters(w)


def _paused(names: list[str]) -> Iterator[Metric]:
    g = GaugeMetricFamily(
        "pausesvc_paused_adapters", "Adapters paused in this process's view (`*` counts as one)."
    )
    g.add_metric([], len(names))
    yield g
    per = GaugeMetricFamily("pausesvc_adapter_paused", "1 for each paused adapter.", labels=["adapter"])
    for n in names:
        per.add_metric([n], 1)
    yield per


def _pause_ages(w: PauseWatcher, names: list[str]) -> Iterator[Metric]:
    """What a stuck-pause alert needs: how long each pause has lasted, and whether it ends
    by itself (every hold is a lease) or waits for someone to resume it."""
    now = w.server_time()
    age = GaugeMetricFamily(
        "pausesvc_adapter_paused_seconds",
        "Seconds since each paused adapter's pause began (Redis clock).",
        labels=["adapter"],
    )
    leased = GaugeMetricFamily(
        "pausesvc_adapter_leased",
        "1 when every hold on the paused "
        "adapter is a lease (the pause ends by itself), 0 when some "
        "hold has no lease.",
        labels=["adapter"],
    )
    for n in names:
        a = w.state(n)
        if a is None:
            continue
        age.add_metric([n], max(0.0, now - a.since))
        leased.add_metric([n], 0.0 if a.expires_at is None else 1.0)
    yield age
    yield leased


def _view_health(w: PauseWatcher) -> Iterator[Metric]:
    """Whether the view can be trusted: orphaned holds, sync, staleness, revision, event lag."""
    for name, help_, value in (
        (
            "pausesvc_orphaned_adapters",
            "Adapters held after a Redis data loss (policy hold).",
            len(w.orphans),
        ),
        ("pausesvc_watcher_in_sync", "1 while the view is in sync.", 1.0 if w.in_sync else 0.0),
        (
            "pausesvc_watcher_staleness_seconds",
            "Seconds since the view stopped being in sync (0 in sync).",
            w.staleness,
        ),
        ("pausesvc_revision", "Namespace revision the view has applied.", w.revision),
        (
            "pausesvc_watcher_event_lag_seconds",
            "Publish-to-apply lag of the last event (Redis clock).",
            w.stats.event_lag_s,
        ),
    ):
        g = GaugeMetricFamily(name, help_)
        g.add_metric([], value)
        yield g


def _view_counters(w: PauseWatcher) -> Iterator[Metric]:
    for attr, help_ in (
        ("events", "Events applied."),
        ("gaps", "Revision gaps seen."),
        ("resyncs", "Snapshot reads."),
        ("reconnects", "Reconnects."),
        ("data_losses", "Revision went backwards (Redis lost data)."),
        ("local_expiries", "Leases expired from the local clock."),
    ):
        c = CounterMetricFamily(f"pausesvc_watcher_{attr}", help_)
        c.add_metric([], getattr(w.stats, attr))
        yield c


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "pausesvc_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "pausesvc_http_request_duration_seconds",
            "Time to answer (long-polls and streams excluded).",
            ["method", "route"],
            registry=r,
        )
        self.changes = Counter(
            "pausesvc_state_changes", "State changes seen by the view.", ["op"], registry=r
        )
        self.drain = Histogram(
            "pausesvc_drain_seconds",
            "Time for a drained pause to be acknowledged by every live replica.",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.drain_timeouts = Counter(
            "pausesvc_drain_timeouts", "Drains not acknowledged in time.", registry=r
        )
        self.aborted = Counter(
            "pausesvc_aborted_requests",
            "Requests replicas reported aborted for drains made through this service.",
            registry=r,
        )
        self.sse_clients = Counter("pausesvc_sse_connections", "Event-stream connections.", registry=r)
        self.sse_open = Gauge("pausesvc_sse_open", "Open event streams.", registry=r)
        self.long_polls_open = Gauge("pausesvc_long_polls_open", "Open long-polls.", registry=r)
        self.refused = Counter(
            "pausesvc_http_refused",
            "Requests refused before any route (foreign Host, cross-site, not JSON, too many streams).",
            ["reason"],
            registry=r,
        )


class RequestMetrics:
    """Pure ASGI middleware counting requests by method, route template and status."""

    _UNTIMED = ("/v1/events", "/v1/pauses/{name:path}/wait", "/skyrl/v1/wait_lora_unpaused")

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, label, str(status[0])).inc()
            if label not in self._UNTIMED:
                self.metrics.latency.labels(method, label).observe(time.perf_counter() - start)
