"""`bestmatch bench lake`: `bestmatch train` on a local lake and on an S3 lake, in one run.

The same simulated events are backfilled once into a local lake (under the bench's folder) and
once into `s3://<bucket>/lake` on a local S3 server (moto's server mode, a process of its own:
`bestmatch.services.LocalS3`, from the dev group). Then `bestmatch train`'s work
(`training.pipeline.train`: the point-in-time training set read from the change logs, the
ranker, its evaluation, the MLflow run and registration) runs on each lake in turn, `repeat`
times, alternating so that a busy machine slows both alike (after one untimed warm-up run:
imports and caches). MLflow is on SQLite in the bench's
folder for both, so the difference is the lake. Reported: the medians of the whole run and of
the training set (where the lake is read), and the ratio S3 / local; the two lakes' runs must
give the same training set summary and evaluation.

A local S3 server has no network latency: the figure is the cost of the object-store path
(HTTP, the S3 API, delta-rs's object store), not of a remote region.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bestmatch.benchmarks.flow import _open_stores
from bestmatch.services import LocalS3
from features.settings import Settings, environment

GOAL_RATIO = 2.0


@dataclass
class LakeBench:
    events: int
    changelog_rows: int
    local_s: list[float] = field(default_factory=list)
    s3_s: list[float] = field(default_factory=list)
    local_set_s: list[float] = field(default_factory=list)
    s3_set_s: list[float] = field(default_factory=list)
    backfill_local_s: float = 0.0
    backfill_s3_s: float = 0.0
    same_result: bool = True

    @property
    def ratio(self) -> float:
        return statistics.median(self.s3_s) / statistics.median(self.local_s)

    @property
    def set_ratio(self) -> float:
        return statistics.median(self.s3_set_s) / statistics.median(self.local_set_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "changelog_rows": self.changelog_rows,
            "train": {
                "local_s": self.local_s,
                "s3_s": self.s3_s,
                "local_median_s": statistics.median(self.local_s),
                "s3_median_s": statistics.median(self.s3_s),
                "ratio": self.ratio,
            },
            "training_set": {
                "local_s": self.local_set_s,
                "s3_s": self.s3_set_s,
                "ratio": self.set_ratio,
            },
            "backfill": {"local_s": self.backfill_local_s, "s3_s": self.backfill_s3_s},
            "same_result": self.same_result,
            "goal_ratio": GOAL_RATIO,
        }

    def rows(self) -> list[tuple[str, str]]:
        def times(values: list[float]) -> str:
            runs = ", ".join(f"{v:.2f}" for v in values)
            return f"{statistics.median(values):.2f} s (runs: {runs})"

        return [
            ("events", f"{self.events:,}"),
            ("change-log rows", f"{self.changelog_rows:,}"),
            (
                "backfill: local lake / S3 lake",
                f"{self.backfill_local_s:.1f} s / {self.backfill_s3_s:.1f} s (once each)",
            ),
            ("train, local lake", times(self.local_s)),
            ("train, S3 lake (local server)", times(self.s3_s)),
            ("ratio (S3 / local)", f"{self.ratio:.2f}x (goal <= {GOAL_RATIO:g}x)"),
            ("  training set, local", times(self.local_set_s)),
            ("  training set, S3", times(self.s3_set_s)),
            ("  training set ratio", f"{self.set_ratio:.2f}x"),
            ("same training set and evaluation", "yes" if self.same_result else "NO"),
        ]


def bench_lake(
    settings: Settings,
    *,
    days: int,
    jobs_per_day: int,
    repeat: int,
    seed: int,
    redis_db: int,
    force: bool,
    json_out: Path | None = None,
    progress: Callable[[str], None] = print,
) -> LakeBench:
    from bestmatch.simulator import simulate
    from features.lake import summarize_lake
    from flows.runner import run_backfill
    from training.pipeline import train

    server = LocalS3()  # before anything else: no moto, one line
    stores = _open_stores(settings, redis_db, force)
    stores.reset()
    try:
        events = stores.root / f"lake-events-{days}d-{jobs_per_day}j-seed{seed}.jsonl"
        if not events.is_file():
            progress(f"simulating {days} days at {jobs_per_day} jobs a day")
            simulate(days, seed, events, jobs_per_day=jobs_per_day)
        count = sum(1 for _ in events.open("rb"))
        local = stores.settings.model_copy(
            update={"mlflow_tracking_uri": f"sqlite:///{stores.lake / 'mlflow-local.db'}"}
        )
        with server, environment(server.env):  # started once, stopped at the end
            bucket = server.create_bucket("bestmatch-bench")
            on_s3 = local.model_copy(
                update={
                    "lake": f"s3://{bucket}/lake",
                    "checkpoints": str(stores.lake / "checkpoints-s3"),
                    "mlflow_tracking_uri": f"sqlite:///{stores.lake / 'mlflow-s3.db'}",
                }
            )
            bench = LakeBench(count, 0)
            for name, target in (("local", local), ("s3", on_s3)):
                progress(f"backfilling {count:,} events into the {name} lake")
                started = time.perf_counter()
                run_backfill(target, events, checkpoint=False)
                took = time.perf_counter() - started
                if name == "local":
                    bench.backfill_local_s = took
                else:
                    bench.backfill_s3_s = took
            bench.changelog_rows = sum(
                int(value.replace(",", ""))
                for label, value in summarize_lake(local)
                if label.endswith(" rows") and not label.startswith("dead_letters")
            )
            progress("warm-up: train once on the local lake (imports, caches; not timed)")
            train(local, events=events, seed=seed)
            results: dict[str, Any] = {}
            for run in range(repeat):
                for name, target in (("local", local), ("s3", on_s3)):
                    progress(f"train {run + 1}/{repeat} on the {name} lake")
                    report = train(target, events=events, seed=seed)
                    total, joined = report.timings["total_s"], _set_s(report.timings)
                    if name == "local":
                        bench.local_s.append(total)
                        bench.local_set_s.append(joined)
                    else:
                        bench.s3_s.append(total)
                        bench.s3_set_s.append(joined)
                    outcome = (report.summary, report.evaluation.to_dicts())
                    bench.same_result &= results.setdefault(name, outcome) == outcome
            bench.same_result &= results["local"] == results["s3"]
    finally:
        stores.close()
    if json_out is not None:
        json_out.write_text(json.dumps(bench.to_dict(), indent=2, default=str))
    return bench


def _set_s(timings: dict[str, float]) -> float:
    """The training set's stages (the entity rows, the point-in-time join over the lake)."""
    return timings.get("entity_rows_s", 0.0) + timings.get("point_in_time_s", 0.0)
