"""The service's Prometheus metrics, in a registry of its own (one per app: no global state).

With several worker processes (`run(..., workers=N)`), prometheus_client keeps every value in
files under one folder (its multiprocess mode, chosen when a worker first imports it: `run` sets
PROMETHEUS_MULTIPROC_DIR before it starts them), and `/metrics` sums those files over the workers
instead of reading this process's registry. The gauges say how (`multiprocess_mode`).
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

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
            "bestmatch_online_store_up",
            "1 while the last store read or ping worked.",
            multiprocess_mode="livemostrecent",  # the last read of any live worker
            registry=r,
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
            "The model being served (value 1; 0: one served before), by name and version.",
            ["name", "version"],
            multiprocess_mode="livemax",  # 1 while any live worker serves it
            registry=r,
        )
        self._served: tuple[str, str] | None = None
        self.model_compiled = Gauge(
            "bestmatch_model_compiled",
            "1 where the model's scores come from its compiled trees, 0 from LightGBM "
            "(see the log for why).",
            multiprocess_mode="livemin",  # 1 only while every live worker scores compiled
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
        # The previous model goes to 0 rather than away: removing labels is not possible in
        # prometheus_client's multiprocess mode (the worker's file keeps them).
        if self._served is not None:
            self.model_info.labels(*self._served).set(0)
        self._served = (name, version)
        self.model_info.labels(name, version).set(1)

    def exposition(self, shared_dir: str | None = None) -> bytes:
        """The text `/metrics` answers: this registry's, or with `shared_dir` (the folder the
        workers of one `run` share) the sums over every worker, live or gone."""
        if shared_dir is None:
            return generate_latest(self.registry)
        forget_dead_workers(shared_dir)
        every = CollectorRegistry()
        MultiProcessCollector(every, path=shared_dir)
        return generate_latest(every)


def forget_dead_workers(shared_dir: str) -> None:
    """Drop the live gauges of workers that are gone (uvicorn replaces a worker that dies; its
    counters and histograms stay in the sums, its "live" gauges must not). What
    `prometheus_client.multiprocess.mark_process_dead` does, for any pid, by any worker."""
    for path in Path(shared_dir).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        if not _alive(pid):
            path.unlink(missing_ok=True)  # a sibling worker may be dropping it too


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
