"""`bestmatch demo`: the whole platform end to end on this machine."""

from __future__ import annotations

import time
from pathlib import Path

from bestmatch.console import console, print_table, progress
from bestmatch.services import ensure_redis
from features.settings import Settings


def run_demo(settings: Settings, *, days: int, jobs_per_day: int, seed: int) -> None:
    from bestmatch.marketplace import simulate
    from features.lake import summarize_lake
    from flows.runner import run_backfill

    started = time.perf_counter()
    note = ensure_redis(settings.redis_url, Path(settings.lake_path("redis")))
    if note:
        console.print(note)
    events = Path(settings.lake_path("demo", f"events-{days}d-{jobs_per_day}jpd-s{seed}.jsonl"))
    events.parent.mkdir(parents=True, exist_ok=True)
    with progress(f"1/2 simulating {days} days at {jobs_per_day} jobs/day") as advance:
        report = simulate(days, seed, events, jobs_per_day=jobs_per_day, progress=advance)
    print_table(f"simulated → {events}", report.rows())
    flow_started = time.perf_counter()
    with progress("2/2 backfilling features into Redis and Delta"):
        run_backfill(settings, events)
    print_table("feature stores", summarize_lake(settings, time.perf_counter() - flow_started))
    console.print(
        f"[bold green]demo done[/] in {time.perf_counter() - started:.0f} s. "
        f"Features: Redis {settings.redis_url.split('@')[-1]}, lake {settings.lake}"
    )
