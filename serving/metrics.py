"""The service's Prometheus metrics, in a registry of its own (one per app: no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from features.specs import ENTITIES

_FAST = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_AGES = (1, 10, 60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400, 30 * 86_400)


class ServingMetrics:
    """Every metric the service exports (`GET /metrics`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rank_seconds = Histogram(
            "bestmatch_rank_seconds",
            "Time to answer POST /v1/rank, from validated request to encoded answer.",
            buckets=_FAST,
            registry=r,
        )
        self.rank_proposals = Histogram(
            "bestmatch_rank_proposals",
            "Proposals per ranking request.",
            buckets=(1, 5, 10, 25, 50, 100, 200, 500),
            registry=r,
        )
        self.fetch_seconds = Histogram(
            "bestmatch_feature_fetch_seconds",
            "Time to read a request's entities from the online store (one round trip).",
            buckets=_FAST,
            registry=r,
        )
        self.errors = Counter(
            "bestmatch_http_errors", "Error answers, by HTTP status.", ["status"], registry=r
        )
        self.degraded = Counter(
            "bestmatch_degraded_answers",
            "Answers scored without the online store (unreachable or too slow).",
            registry=r,
        )
        self.store_up = Gauge(
            "bestmatch_online_store_up", "1 while the last store read or ping worked.", registry=r
        )
        missing = Counter(
            "bestmatch_missing_entities",
            "Entities of a request the online store does not know.",
            ["entity"],
            registry=r,
        )
        self.missing = {e.name: missing.labels(e.name) for e in ENTITIES}
        ages = Histogram(
            "bestmatch_feature_age_seconds",
            "Age of the features served: now minus the time of the entity's last change "
            "(per answer: the job, the client, the oldest freelancer).",
            ["entity"],
            buckets=_AGES,
            registry=r,
        )
        self.feature_age = {e.name: ages.labels(e.name) for e in ENTITIES}
        self.model_info = Gauge(
            "bestmatch_model_info",
            "The model being served (value 1), by name and version.",
            ["name", "version"],
            registry=r,
        )
        self.model_loads = Counter(
            "bestmatch_model_loads",
            "Models put in service: the first one, then one per move of the alias.",
            registry=r,
        )
        self.model_load_failures = Counter(
            "bestmatch_model_load_failures",
            "Failed loads of the champion (the previous model stays).",
            registry=r,
        )
        self.log_rows = Counter(
            "bestmatch_serving_log_rows", "Rows written to the serving log.", registry=r
        )
        self.log_dropped = Counter(
            "bestmatch_serving_log_dropped",
            "Sampled requests not logged (writer queue full or write failed).",
            registry=r,
        )

    def serving_model(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version).set(1)
