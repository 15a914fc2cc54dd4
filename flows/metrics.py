"""The flow's Prometheus metrics (exposed on a port by `bestmatch stream`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class FlowMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_in = Counter("bestmatch_flow_events_in", "Raw events read.", registry=r)
        self.dead_letters = Counter(
            "bestmatch_flow_dead_letters",
            "Events sent to the dead-letter table, by reason.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "bestmatch_flow_duplicates", "Repeated event ids dropped.", registry=r
        )
        self.changes = Counter("bestmatch_flow_changes", "Change-log rows written.", registry=r)
        self.online_writes = Counter(
            "bestmatch_flow_online_writes", "Entity values written to the online store.", registry=r
        )
        self.clock = Gauge(
            "bestmatch_flow_clock_seconds",
            "The flow's event-time clock (Unix seconds).",
            registry=r,
        )
        self.lag = Gauge(
            "bestmatch_flow_lag_seconds",
            "Wall-clock now minus the flow's event-time clock.",
            registry=r,
        )
        self.freshness = Histogram(
            "bestmatch_flow_freshness_seconds",
            "From an event's append to the event bus to its values being in the online store.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )


METRICS = FlowMetrics()
