"""`bestmatch demo`: the whole platform end to end on this machine."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import redis

from bestmatch.console import console, print_table, progress
from bestmatch.services import ensure_redis
from features.events import parse_time
from features.settings import Settings

DAY_US = 86_400 * 1_000_000


def split_last_day(events: Path, history: Path, live: Path) -> tuple[int, int]:
    """Split a time-ordered events file: everything before its last day, and the last day."""
    lines = events.read_bytes().splitlines(keepends=True)
    last = parse_time(orjson.loads(lines[-1])["event_time"])
    cut = last - last % DAY_US
    index = len(lines)
    while index > 0 and parse_time(orjson.loads(lines[index - 1])["event_time"]) >= cut:
        index -= 1
    history.write_bytes(b"".join(lines[:index]))
    live.write_bytes(b"".join(lines[index:]))
    return index, len(lines) - index


def run_demo(
    settings: Settings, *, days: int, jobs_per_day: int, seed: int, rate: float | None = None
) -> None:
    from bestmatch.marketplace import simulate
    from bestmatch.streaming import StreamProcess
    from features.bus import iter_lines, publish
    from features.lake import summarize_lake
    from flows.runner import run_backfill

    started = time.perf_counter()
    note = ensure_redis(settings.redis_url, Path(settings.lake_path("redis")))
    if note:
        console.print(note)
    work = Path(settings.lake_path("demo"))
    work.mkdir(parents=True, exist_ok=True)
    events = work / f"events-{days}d-{jobs_per_day}jpd-s{seed}.jsonl"
    with progress(f"1/4 simulating {days} days at {jobs_per_day} jobs/day") as advance:
        report = simulate(days, seed, events, jobs_per_day=jobs_per_day, progress=advance)
    print_table(f"simulated → {events}", report.rows())
    history, live = work / "history.jsonl", work / "live.jsonl"
    n_history, n_live = split_last_day(events, history, live)

    flow_started = time.perf_counter()
    with progress(f"2/4 backfilling {n_history:,} events of history into Redis and Delta"):
        run_backfill(settings, history)
    backfill_s = time.perf_counter() - flow_started
    console.print(f"backfill: {n_history / backfill_s:,.0f} events/s")

    client = redis.Redis.from_url(settings.redis_url)
    client.delete(settings.stream_key)
    with (
        StreamProcess(settings, work / "stream.log") as stream,
        progress(
            f"3/4 streaming the last day ({n_live:,} events) through the event bus", total=n_live
        ) as advance,
    ):
        stream.wait_ready()
        publish(client, settings.stream_key, iter_lines(live), rate=rate, progress=advance)
        stream.wait_for(n_live)
    print_table("feature stores", summarize_lake(settings))
    from bestmatch.services import ensure_feast_registry

    with progress("registering the Feast objects (feast apply)"):
        ensure_feast_registry(settings)

    from training.pipeline import train

    with progress("4/4 training the ranker and registering it in MLflow", total=4) as advance:
        trained = train(settings, events=events, seed=seed, progress=advance)
    header, rows = trained.evaluation_rows()
    print_table(
        "ranker vs baselines (test days): " + " / ".join(header[1:]),
        [(row[0], " / ".join(row[1:])) for row in rows],
    )
    console.print(
        f"registered {trained.model_name} v{trained.version} → @{trained.alias}: {trained.reason}"
    )
    console.print(
        f"[bold green]demo done[/] in {time.perf_counter() - started:.0f} s. "
        f"Features: Redis {settings.redis_url.split('@')[-1]}, lake {settings.lake}"
    )
