"""`bestmatch bench ...`: benchmarks that print figures and ratios side by side. The commands
read their options here; the measuring is in `bestmatch.benchmarks`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from bestmatch.cli.options import last_backfill, need_file, read_settings
from bestmatch.console import console, friendly, print_table

bench_app = typer.Typer(
    help="Benchmarks: figures and ratios against a baseline, side by side.", no_args_is_help=True
)


@bench_app.command("flow")
@friendly
def flow(
    events: Annotated[int, typer.Option(min=100, help="Events for the backfill figures.")] = (
        1_000_000
    ),
    rate: Annotated[
        list[float] | None,
        typer.Option(min=1, help="Events/s published for freshness (repeat for several rates)."),
    ] = None,
    duration: Annotated[
        float, typer.Option(min=0.5, help="Seconds of timed publishing, per rate.")
    ] = 10.0,
    trigger: Annotated[
        float, typer.Option(min=0, help="The stream's change-log trigger, s (0: every batch).")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 1,
    redis_db: Annotated[int, typer.Option(min=0, help="The bench's own Redis database.")] = 15,
    repeat: Annotated[
        int,
        typer.Option(min=1, help="Most runs per backfill stage (while a stage takes < 2 min)."),
    ] = 3,
    scaling: Annotated[
        bool, typer.Option(help="Also time the flow with 2 workers and with 2 processes.")
    ] = True,
    skip_backfill: Annotated[bool, typer.Option(help="Skip the throughput figures.")] = False,
    skip_freshness: Annotated[bool, typer.Option(help="Skip the freshness figures.")] = False,
    force: Annotated[
        bool, typer.Option(help="Use the Redis database even if it holds other keys (flushes it).")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
    large_events: Annotated[
        int, typer.Option(min=0, help="Also the backfill figures at this size (0: not).")
    ] = 0,
    recovery_entities: Annotated[
        int, typer.Option(min=0, help="Entities for the checkpoint cost (0: skip it).")
    ] = 1_000_000,
) -> None:
    """Backfill throughput (with its steps and ceilings), recovery cost and stream freshness."""
    from bestmatch.benchmarks.flow import bench_flow

    bench_flow(
        read_settings(),
        events=events,
        rates=rate or [1000.0, 5000.0, 20000.0],
        duration=duration,
        trigger=trigger,
        seed=seed,
        redis_db=redis_db,
        repeat=repeat,
        scaling=scaling,
        skip_backfill=skip_backfill,
        skip_freshness=skip_freshness,
        force=force,
        json_out=json_out,
        large_events=large_events,
        recovery_entities=recovery_entities,
    )


@bench_app.command("serve")
@friendly
def serve(
    proposals: Annotated[int, typer.Option(min=1, max=500, help="Proposals per request.")] = 50,
    requests: Annotated[int, typer.Option(min=1, help="Distinct requests to cycle.")] = 500,
    duration: Annotated[float, typer.Option(help="Seconds per client count.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the requests.")] = 1,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Service processes (`bestmatch serve --workers`). [default: one per core]",
            show_default=False,
        ),
    ] = None,
    log_rate: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of requests the service logs. [default: BESTMATCH_SERVE_LOG_RATE, 0.1]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Ranking latency at 1 and 16 clients, beside a bare endpoint and the Feast client path."""
    from bestmatch.benchmarks.serving import bench_serve
    from serving.config import ServingSettings

    # the model is downloaded three times (service, steps, floor): no progress bar each time
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    report = bench_serve(
        read_settings(),
        proposals=proposals,
        requests=requests,
        duration_s=duration,
        seed=seed,
        workers=workers or os.cpu_count() or 1,
        log_rate=ServingSettings().log_rate if log_rate is None else log_rate,
        progress=console.print,
    )
    print_table("POST /v1/rank vs Feast get_online_features + model", report.rows())


@bench_app.command("cluster")
@friendly
def cluster(
    proposals: Annotated[int, typer.Option(min=1, max=500, help="Proposals per request.")] = 50,
    requests: Annotated[int, typer.Option(min=1, help="Distinct requests to cycle.")] = 500,
    duration: Annotated[float, typer.Option(help="Seconds per client count and side.")] = 5.0,
    rounds: Annotated[int, typer.Option(min=1, help="Turns of each side.")] = 3,
    masters: Annotated[int, typer.Option(min=3, help="Masters of the local cluster.")] = 3,
    workers: Annotated[int, typer.Option(min=1, help="Processes of each service.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the requests.")] = 1,
) -> None:
    """The ranking service on a local Redis Cluster beside the same service on one Redis."""
    from bestmatch.benchmarks.cluster import bench_cluster

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    report = bench_cluster(
        read_settings(),
        proposals=proposals,
        requests=requests,
        duration_s=duration,
        rounds=rounds,
        masters=masters,
        workers=workers,
        seed=seed,
        progress=console.print,
    )
    print_table("POST /v1/rank: a Redis Cluster vs one Redis", report.rows())


@bench_app.command("training")
@friendly
def training(
    events: Annotated[
        Path | None,
        typer.Option(help="Events file (default: the file of the last `bestmatch backfill`)."),
    ] = None,
    rows: Annotated[
        int | None, typer.Option(help="Entity rows (proposals resampled to this many).")
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, help="Runs of the fast path (median).")] = 3,
    feast_repeat: Annotated[int, typer.Option(min=1, help="Runs of Feast's path.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the resampling.")] = 1,
) -> None:
    """Point-in-time training set: Feast's get_historical_features vs the fast path."""
    from bestmatch.benchmarks.training_set import bench_training_set

    settings = read_settings()
    events = events or last_backfill(settings)
    need_file(events, "--events")
    report = bench_training_set(
        settings,
        events=events,
        rows=rows,
        repeat=repeat,
        feast_repeat=feast_repeat,
        seed=seed,
        progress=console.print,
    )
    print_table("training set: Feast get_historical_features vs fast path", report.rows())


@bench_app.command("kafka")
@friendly
def kafka(
    events: Annotated[
        int, typer.Option(min=1000, help="Events for the replay (the mock keeps ~60,000).")
    ] = 50_000,
    rate: Annotated[float, typer.Option(min=1, help="Events/s published for freshness.")] = 5000.0,
    duration: Annotated[
        float,
        typer.Option(
            min=0.5,
            help="Seconds of timed publishing (the mock keeps ~60,000 events: rate x duration "
            "+ the warm-up must stay below that).",
        ),
    ] = 8.0,
    repeat: Annotated[int, typer.Option(min=1, help="Runs of each replay stage.")] = 3,
    rounds: Annotated[int, typer.Option(min=1, help="Freshness rounds (Redis, then Kafka).")] = 3,
    bootstrap: Annotated[
        str | None,
        typer.Option(help="A Kafka cluster's HOST:PORT[,...] (default: librdkafka's mock)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 1,
    redis_db: Annotated[int, typer.Option(min=0, help="The bench's own Redis database.")] = 15,
    skip_replay: Annotated[bool, typer.Option(help="Skip the replay figures.")] = False,
    skip_freshness: Annotated[bool, typer.Option(help="Skip the freshness figures.")] = False,
    force: Annotated[
        bool, typer.Option(help="Use the Redis database even if it holds other keys (flushes it).")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
) -> None:
    """Kafka bus: replay vs backfill, and freshness vs the Redis Stream, in the same run."""
    from bestmatch.benchmarks.kafka import bench_kafka

    bench_kafka(
        read_settings(),
        events=events,
        rate=rate,
        duration=duration,
        repeat=repeat,
        rounds=rounds,
        bootstrap=bootstrap,
        seed=seed,
        redis_db=redis_db,
        skip_replay=skip_replay,
        skip_freshness=skip_freshness,
        force=force,
        json_out=json_out,
    )


@bench_app.command("lake")
@friendly
def lake(
    days: Annotated[
        int, typer.Option(min=10, help="Simulated days (train's horizon and window need 10+).")
    ] = 14,
    jobs_per_day: Annotated[int, typer.Option(min=1, help="Simulated jobs a day.")] = 60,
    repeat: Annotated[int, typer.Option(min=1, help="Runs of train on each lake.")] = 3,
    seed: Annotated[int, typer.Option(help="Simulator and training seed.")] = 1,
    redis_db: Annotated[int, typer.Option(min=0, help="The bench's own Redis database.")] = 15,
    force: Annotated[
        bool, typer.Option(help="Use the Redis database even if it holds other keys (flushes it).")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
) -> None:
    """`bestmatch train` on a local lake vs an S3 lake (a local S3 server), in the same run."""
    from bestmatch.benchmarks.lake import bench_lake

    report = bench_lake(
        read_settings(),
        days=days,
        jobs_per_day=jobs_per_day,
        repeat=repeat,
        seed=seed,
        redis_db=redis_db,
        force=force,
        json_out=json_out,
        progress=console.print,
    )
    print_table("bestmatch train: local lake vs S3 lake", report.rows())
