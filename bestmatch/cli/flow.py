"""The feature flow's commands: `backfill` a file, `publish` to the bus, `stream` from it, and
the lake's `snapshot` and `compact`."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from bestmatch.cli.options import (
    EventsFile,
    Processes,
    Workers,
    lake_settings,
    need_file,
    read_settings,
    register_feast,
    remember_backfill,
    time_option,
)
from bestmatch.console import console, friendly, print_table, progress


@friendly
def backfill(
    events: EventsFile,
    until: Annotated[
        str | None,
        typer.Option(
            help="Move the clock to this time at the end "
            "(RFC 3339; default: the newest event time)."
        ),
    ] = None,
    workers: Workers = 1,
    processes: Processes = 1,
) -> None:
    """Run the feature flow over a file (available-now), then stop."""
    from bestmatch.services import ensure_redis
    from features.lake import summarize_lake
    from flows.runner import run_backfill

    settings = lake_settings()
    need_file(events, "--events")
    until_us = time_option(until, "--until")
    note = ensure_redis(settings.redis_url, settings.local_root / "redis", settings.redis_cluster)
    if note:
        console.print(note)
    started = time.perf_counter()
    with progress(f"backfilling {events}", total=None):
        run_backfill(settings, events, until=until_us, workers=workers, processes=processes)
    elapsed = time.perf_counter() - started
    print_table(f"backfill done in {elapsed:.1f} s", summarize_lake(settings, elapsed))
    remember_backfill(settings, events)
    register_feast(settings)


@friendly
def publish(
    events: EventsFile,
    rate: Annotated[
        float | None,
        typer.Option(min=0.001, help="Events per second (default: as fast as possible)."),
    ] = None,
) -> None:
    """Append events to the event bus (a Redis Stream, or the Kafka topic of BESTMATCH_BUS)."""
    from features.bus import iter_lines, publish_events

    settings = read_settings()
    need_file(events, "--events")
    if settings.kafka is None:
        from bestmatch.services import ensure_redis

        ensure_redis(settings.redis_url, settings.local_root / "redis", settings.redis_cluster)
    started = time.perf_counter()
    with progress(f"publishing to {settings.bus_name}", total=None) as advance:
        sent = publish_events(settings, iter_lines(events), rate=rate, progress=advance)
    elapsed = time.perf_counter() - started
    console.print(f"published {sent:,} events in {elapsed:.1f} s ({sent / elapsed:,.0f}/s)")


@friendly
def stream(
    workers: Workers = 1,
    processes: Processes = 1,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (0: off).")] = 9108,
    trigger: Annotated[
        float, typer.Option(help="Change-log trigger in seconds (0: continuous, every batch).")
    ] = 1.0,
) -> None:
    """Run the feature flow on the event bus until stopped; resumes after a crash."""
    from flows.runner import run_stream

    settings = lake_settings()
    if metrics_port:
        from prometheus_client import start_http_server

        from flows.metrics import METRICS

        start_http_server(metrics_port, registry=METRICS.registry)
        console.print(f"metrics on http://127.0.0.1:{metrics_port}/metrics")
    if settings.redis_cluster:
        from features.redis_cluster import discover

        discover(settings.redis_url)  # one line, not a traceback, where the cluster is amiss
    register_feast(settings)
    console.print(f"streaming from {settings.bus_name}; Ctrl-C to stop")
    _stop_on_signals()
    run_stream(settings, workers=workers, processes=processes, trigger_s=trigger)


def _stop_on_signals() -> None:
    """Ctrl-C or SIGTERM stops the stream at once, as a crash would: every change is durable
    or replayed from the last checkpoint on the next start (exactly once either way), and the
    user gets one line instead of an engine's stack trace."""
    import os
    import signal

    def stop(signum: int, _frame: object) -> None:
        console.print(f"stopped ({signal.Signals(signum).name}); `bestmatch stream` resumes here")
        os._exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


@friendly
def snapshot() -> None:
    """Write every entity's current values as a new version of a Delta table (complete mode)."""
    from features.lake import write_snapshots

    settings = lake_settings()
    rows = write_snapshots(settings)
    print_table("snapshot written", rows)


@friendly
def compact() -> None:
    """Delta maintenance of the offline tables: compaction, then vacuum."""
    from features.lake import compact_tables

    settings = lake_settings()
    print_table("compacted", compact_tables(settings))
