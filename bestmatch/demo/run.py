"""`bestmatch demo`: the whole platform end to end on this machine, ending in an HTML report.

1. simulate a marketplace (`--days`, `--jobs-per-day`, `--seed`);
2. backfill every day but the last into Redis and Delta (the flow in available-now mode);
3. start the ranking service, then stream the last day through the event bus (the same flow,
   continuous) at `--rate` events/s, timing how long sampled events take to reach Redis;
4. register the Feast objects, train the ranker on the point-in-time training set, register it
   in MLflow; the running service sees the `champion` alias move and loads it;
5. rank the open jobs of the last day through `POST /v1/rank` (a handful with explanations, then
   a timed loop over all of them), with every answer's feature vectors logged;
6. stop the service (the serving log is flushed) and run the consistency check on that log;
7. write the report (`<lake>/demo/report/index.html`, its figures as PNG, and `report.json`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bestmatch.consistency import check_consistency
from bestmatch.console import console, print_table, progress
from bestmatch.demo.live_day import stream_live_day
from bestmatch.demo.open_jobs import rank_open_jobs
from bestmatch.demo.prepare import reset_online, split_last_day
from bestmatch.demo.report import write_report
from bestmatch.demo.summary import summary_rows
from bestmatch.services import ServiceProcess, ensure_feast_registry, ensure_redis
from features.errors import ServiceError
from features.settings import Settings


@dataclass
class Steps:
    """Wall time of each step, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started


def run_demo(
    settings: Settings,
    *,
    days: int,
    jobs_per_day: int,
    seed: int,
    rate: float | None = 1000.0,
    showcase_jobs: int = 5,
    latency_requests: int = 300,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """The demo; returns the report's figures (also written to `report.json`)."""
    from bestmatch.simulator import simulate
    from features.lake import summarize_lake
    from flows.runner import run_backfill

    started = time.perf_counter()
    steps = Steps()
    figures: dict[str, Any] = {
        "config": {
            "days": days,
            "jobs_per_day": jobs_per_day,
            "seed": seed,
            "rate": rate,
            "redis": settings.redis_url.split("@")[-1],
            "lake": settings.lake,
        }
    }
    # The demo's own files (events, logs, the report) stay on this machine, whatever the lake.
    work = Path(settings.lake_path("demo") if settings.lake_is_local else "bestmatch-demo")
    work.mkdir(parents=True, exist_ok=True)
    note = ensure_redis(
        settings.redis_url, work.parent / "redis" if settings.lake_is_local else work / "redis"
    )
    if note:
        console.print(note)
    client = redis.Redis.from_url(settings.redis_url)
    cleared = reset_online(client, settings)
    if cleared:
        console.print(f"cleared {cleared:,} entities of an earlier run from Redis")
    report_dir = report_dir or work / "report"

    # 1. simulate
    events = work / f"events-{days}d-{jobs_per_day}jpd-s{seed}.jsonl"
    with steps.step("simulate"), progress(f"1/7 simulating {days} days") as advance:
        simulated = simulate(days, seed, events, jobs_per_day=jobs_per_day, progress=advance)
    print_table(f"simulated → {events}", simulated.rows())
    history, live = work / "history.jsonl", work / "live.jsonl"
    n_history, n_live = split_last_day(events, history, live)
    figures["simulated"] = {
        "events": simulated.events,
        "jobs": simulated.jobs,
        "freelancers": simulated.freelancers,
        "clients": simulated.clients,
        "share_25_in_24h": simulated.share_25_in_24h,
        "history_events": n_history,
        "live_events": n_live,
    }

    # 2. backfill the history
    with (
        steps.step("backfill"),
        progress(f"2/7 backfilling {n_history:,} events of history into Redis and Delta"),
    ):
        run_backfill(settings, history)
    backfill_s = steps.seconds["backfill"]
    figures["backfill"] = {
        "events": n_history,
        "seconds": backfill_s,
        "events_per_s": n_history / backfill_s,
    }
    console.print(f"backfill: {n_history / backfill_s:,.0f} events/s")

    served_since = time.time_ns() // 1000  # this run's answers, not an earlier demo's
    service = ServiceProcess(
        settings,
        work / "serve.log",
        {"LOG_RATE": "1", "LOG_FLUSH_S": "1", "MODEL_POLL_S": "0.5"},
    )
    try:
        # 3. stream the last day while the service is up
        with steps.step("stream"):
            figures["stream"] = stream_live_day(settings, client, live, rate, work)
            service.wait_alive()
        print_table("feature stores", summarize_lake(settings))

        # 4. train and register
        from training.pipeline import train

        with steps.step("train"):
            with progress("registering the Feast objects (feast apply)"):
                ensure_feast_registry(settings)
            with progress("4/7 training the ranker and registering it in MLflow", total=4) as adv:
                trained = train(settings, events=events, seed=seed, progress=adv)
        header, rows = trained.evaluation_rows()
        print_table(
            "ranker vs baselines (test days): " + " / ".join(header[1:]),
            [(row[0], " / ".join(row[1:])) for row in rows],
        )
        console.print(
            f"registered {trained.model_name} v{trained.version} → @{trained.alias}: "
            f"{trained.reason}"
        )
        figures["training"] = {
            "version": trained.version,
            "promoted": trained.promoted,
            "reason": trained.reason,
            "run_id": trained.run_id,
            "evaluation": trained.evaluation.to_dicts(),
            "summary": trained.summary,
        }

        # 5. serve and rank the open jobs
        with steps.step("serve"):
            champion = _champion(settings)
            with progress(f"5/7 waiting for the service to load v{champion}"):
                service.wait_ready(champion)
            figures["serving"] = rank_open_jobs(
                service.port, live, showcase_jobs, latency_requests, champion
            )
    finally:
        with steps.step("stop service"):
            service.stop()

    # 6. consistency
    with steps.step("consistency"), progress("6/7 checking serving against offline features"):
        consistency = check_consistency(settings, since_us=served_since)
    print_table(f"consistency: {consistency.verdict}", consistency.rows())
    figures["consistency"] = consistency.to_dict()

    # 7. the report
    figures["steps_s"] = steps.seconds
    figures["wall_s"] = time.perf_counter() - started
    with progress("7/7 writing the report"):
        index = write_report(figures, report_dir, consistency=consistency)
    print_table("demo summary", summary_rows(figures))
    console.print(
        f"[bold green]demo done[/] in {figures['wall_s']:.0f} s. Report: {index}\n"
        f"Features: Redis {figures['config']['redis']}, lake {settings.lake}"
    )
    return figures


def _champion(settings: Settings) -> str:
    from serving.model import champion_version, registry_client

    version = champion_version(registry_client(settings))
    if version is None:
        msg = "training registered no champion: nothing to serve"
        raise ServiceError(msg)
    return str(version)
