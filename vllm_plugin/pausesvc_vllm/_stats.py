"""Counters of one gate, and their Prometheus exposition (prometheus-client is optional)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["GateStats", "render_prometheus"]


class GateStats:
    """Plain counters; read by ``/pausesvc/status`` and ``/pausesvc/metrics``."""

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()  # gauge: requests held right now, per adapter
        self.held_bytes: Counter[str] = Counter()  # gauge: body bytes held right now, per adapter
        self.held_now = 0  # gauge: requests held right now, in this process
        self.held_bytes_now = 0  # gauge: body bytes held right now, in this process
        #: gauge source: admitted and not finished, per adapter (computed when read: the
        #: gate learns a request's adapter only when something asks, see GateRuntime.admit)
        self.in_flight_source: Callable[[], Counter[str]] = Counter
        self.holds = 0  # requests that had to wait
        self.released = 0  # held requests that went on after a resume
        self.rejections = 0  # answered 503 (policy reject or hold deadline)
        self.hold_timeouts = 0
        self.dropped = 0  # clients that left while held (never reached the engine)
        self.over_capacity = 0  # answered 503 hold_capacity: the hold caps were reached
        self.unauthenticated = 0  # paused, but without vLLM's API key: passed on to its 401
        self.too_large = 0
        self.body_timeouts = 0
        self.aborts = 0  # engine requests aborted by drains
        self.drains = 0  # drains acknowledged
        self.drain_seconds_total = 0.0
        self.last_drain_s: float | None = None
        self.ack_errors = 0
        self.heartbeat_errors = 0
        self.fences = 0  # times this process fenced itself (no proven round trip to Redis)
        self.fenced_cuts = 0  # admitted responses cut because the process was fenced
        self.stepwise_cuts = 0  # beam searches a drain ended whole (one engine request per step)

    @property
    def in_flight(self) -> Counter[str]:
        return self.in_flight_source()

    def hold_began(self, adapter: str, size: int) -> None:
        """A request of ``adapter`` with ``size`` body bytes is held from now on."""
        self.holds += 1
        self.held[adapter] += 1
        self.held_bytes[adapter] += size
        self.held_now += 1
        self.held_bytes_now += size

    def hold_ended(self, adapter: str, size: int) -> None:
        """The hold counted by :meth:`hold_began` is over (whatever its outcome)."""
        self.held_now -= 1
        self.held_bytes_now -= size
        self.held[adapter] -= 1
        if self.held[adapter] <= 0:
            del self.held[adapter]
        self.held_bytes[adapter] -= size
        if self.held_bytes[adapter] <= 0:
            del self.held_bytes[adapter]

    def record_drain(self, seconds: float) -> None:
        self.drains += 1
        self.drain_seconds_total += seconds
        self.last_drain_s = seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "held": dict(+self.held),
            "held_total": self.held_now,
            "held_bytes": dict(+self.held_bytes),
            "held_bytes_total": self.held_bytes_now,
            "in_flight": dict(+self.in_flight),
            "holds": self.holds,
            "released": self.released,
            "rejections": self.rejections,
            "hold_timeouts": self.hold_timeouts,
            "dropped": self.dropped,
            "over_capacity": self.over_capacity,
            "fences": self.fences,
            "fenced_cuts": self.fenced_cuts,
            "stepwise_cuts": self.stepwise_cuts,
            "unauthenticated": self.unauthenticated,
            "too_large": self.too_large,
            "body_timeouts": self.body_timeouts,
            "aborts": self.aborts,
            "drains": self.drains,
            "drain_seconds_total": self.drain_seconds_total,
            "last_drain_s": self.last_drain_s,
            "ack_errors": self.ack_errors,
            "heartbeat_errors": self.heartbeat_errors,
        }


_COUNTERS = {
    "holds": "Requests that were held because their adapter was paused",
    "released": "Held requests that proceeded after a resume",
    "rejections": "Requests answered 503 (adapter_paused or hold_capacity)",
    "hold_timeouts": "Held requests that reached the hold deadline",
    "dropped": "Clients that disconnected while held",
    "over_capacity": "Requests answered 503 hold_capacity (hold caps reached)",
    "unauthenticated": "Requests for a paused adapter passed on to vLLM without its API key",
    "too_large": "Requests refused with 413",
    "body_timeouts": "Requests whose body did not arrive in time",
    "aborts": "Engine requests aborted by drains",
    "drains": "Drains acknowledged in Redis",
    "drain_seconds_total": "Seconds spent draining",
    "ack_errors": "Drain acknowledgements that failed",
    "heartbeat_errors": "Registry heartbeats that failed",
    "fences": "Times this process fenced itself (no recent proof of a round trip to Redis)",
    "fenced_cuts": "Admitted responses cut because the process was fenced",
    "stepwise_cuts": "Beam searches a drain ended as a whole (their steps are engine requests of their own)",
}


#: per-adapter gauges: (GateStats attribute, help)
_PER_ADAPTER = (
    ("held", "Requests held right now"),
    ("held_bytes", "Body bytes of the requests held right now"),
    ("in_flight", "Admitted requests not finished yet"),
)
#: per-process gauges read from the ``watcher`` values: (metric, help, key)
_PROCESS = (
    (
        "pausesvc_gate_fenced",
        "1 while this process is fenced (it holds every request and sends no response bytes)",
        "fenced",
    ),
    ("pausesvc_gate_in_sync", "1 while this gate's view is in sync with Redis", "in_sync"),
    ("pausesvc_watcher_in_sync", "1 when the watcher's view is in sync", "in_sync"),
    ("pausesvc_watcher_staleness_seconds", "Seconds the view has been out of sync", "staleness_seconds"),
    ("pausesvc_watcher_paused_adapters", "Adapters paused in this process's view", "paused_adapters"),
)
#: per-adapter, per-version gauges read from the ``versions`` status: (metric, help, key)
_VERSIONS = (
    ("pausesvc_gate_adapter_version", "1 for the version of each adapter this process serves", "loaded"),
    (
        "pausesvc_gate_adapter_parked_for_version",
        "1 while an adapter is held here until its desired version is loaded",
        "pending",
    ),
)


def render_prometheus(
    stats: GateStats,
    labels: dict[str, str],
    watcher: dict[str, Any],
    versions: dict[str, Any] | None = None,
) -> tuple[bytes, str] | None:
    """The text exposition of ``stats`` or None when prometheus-client is not installed."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
    except ImportError:
        return None
    keys = sorted(labels)
    values = [labels[k] for k in keys]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(lambda: _version_families(keys, values, versions or {})))
    registry.register(_Collector(lambda: _gate_families(stats, keys, values, watcher)))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Collector:
    """A prometheus-client collector: what ``families()`` yields, at every collection."""

    def __init__(self, families: Callable[[], Iterator[Any]]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        return self.families()


def _gate_families(
    stats: GateStats, keys: list[str], values: list[str], watcher: dict[str, Any]
) -> Iterator[Any]:
    """The counters, the per-adapter gauges and the per-process gauges."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for name, doc in _COUNTERS.items():
        c = CounterMetricFamily(f"pausesvc_gate_{name}", doc, labels=keys)
        c.add_metric(values, float(getattr(stats, name)))
        yield c
    for name, doc in _PER_ADAPTER:
        g = GaugeMetricFamily(f"pausesvc_gate_{name}", doc, labels=[*keys, "adapter"])
        for adapter, n in sorted(getattr(stats, name).items()):
            if n:
                g.add_metric([*values, adapter], float(n))
        yield g
    for metric, doc, key in _PROCESS:
        g = GaugeMetricFamily(metric, doc, labels=keys)
        g.add_metric(values, float(watcher.get(key, 0.0)))
        yield g


def _version_families(keys: list[str], values: list[str], versions: dict[str, Any]) -> Iterator[Any]:
    """The loaded and the parked-for versions of each adapter, and the failed loads."""
    from prometheus_client.core import GaugeMetricFamily

    for metric, doc, key in _VERSIONS:
        g = GaugeMetricFamily(metric, doc, labels=[*keys, "adapter", "version"])
        for adapter, version in sorted(versions.get(key, {}).items()):
            g.add_metric([*values, adapter, str(version)], 1.0)
        yield g
    g = GaugeMetricFamily(
        "pausesvc_gate_version_load_attempts_failed",
        "Failed attempts to load the pending desired version of an adapter",
        labels=[*keys, "adapter"],
    )
    for adapter, err in sorted(versions.get("errors", {}).items()):
        g.add_metric([*values, adapter], float(err["attempts"]))
    yield g
