"""The `bestmatch` command line. Settings are read once here and passed down."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from bestmatch.bench import bench_app
from bestmatch.console import console, friendly, print_table, progress
from features.errors import ConfigError, InvalidEventError
from features.settings import Settings

app = typer.Typer(
    name="bestmatch",
    help="BestMatch: streaming features and real-time ranking for a freelance marketplace.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.add_typer(bench_app, name="bench")

EventsFile = Annotated[
    Path, typer.Option("--events", help="JSON Lines file (.jsonl or .jsonl.gz).")
]
Workers = Annotated[
    int, typer.Option("--workers", "-w", min=1, help="Bytewax worker threads per process.")
]
Processes = Annotated[
    int, typer.Option("--processes", "-p", min=1, help="Local processes (a Bytewax cluster).")
]


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).splitlines()
        msg = f"bad configuration: {first[-1].strip() if first else exc}"
        raise ConfigError(msg) from None


def _time(text: str | None, option: str) -> int | None:
    """An RFC 3339 option value as µs since the epoch, or one clear error."""
    if text is None:
        return None
    from features.events import parse_time

    try:
        return parse_time(text)
    except Exception:  # the parser's own rule error; the message below says what is expected
        msg = f"{option}: must be RFC 3339 with an offset (like 2026-03-01T12:00:00Z), got {text!r}"
        raise InvalidEventError(msg, option) from None


def _register_feast(settings: Settings) -> None:
    """Keep Feast's registry in step, so `FeatureStore(repo_path="features")` reads the stores."""
    from bestmatch.services import ensure_feast_registry

    with progress("registering the Feast objects (feast apply)"):
        applied = ensure_feast_registry(settings)
    if applied:
        console.print("Feast registry updated: FeatureStore(repo_path='features') is ready")


def _need_file(path: Path, option: str) -> None:
    if not path.is_file():
        msg = f"{option}: no such file: {path}"
        raise ConfigError(msg)


@app.command()
@friendly
def simulate(
    days: Annotated[int, typer.Option(min=1, help="Days of marketplace activity.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 1,
    out: Annotated[Path, typer.Option(help="Output file (.jsonl or .jsonl.gz).")] = Path(
        "events.jsonl"
    ),
    jobs_per_day: Annotated[int, typer.Option(min=1, help="Jobs posted per day.")] = 1000,
    dirty: Annotated[bool, typer.Option(help="Mix in duplicates and invalid events.")] = False,
) -> None:
    """Write a realistic, deterministic marketplace event stream."""
    from bestmatch.marketplace import simulate as run

    out.parent.mkdir(parents=True, exist_ok=True)
    with progress(f"simulating {days} days", total=None) as advance:
        report = run(days, seed, out, jobs_per_day=jobs_per_day, dirty=dirty, progress=advance)
    print_table(f"wrote {out}", report.rows())


@app.command()
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
    from features.lake import summarize_lake
    from flows.runner import run_backfill

    settings = _settings()
    _need_file(events, "--events")
    until_us = _time(until, "--until")
    from bestmatch.services import ensure_redis

    note = ensure_redis(settings.redis_url, Path(settings.lake_path("redis")))
    if note:
        console.print(note)
    started = time.perf_counter()
    with progress(f"backfilling {events}", total=None):
        run_backfill(settings, events, until=until_us, workers=workers, processes=processes)
    elapsed = time.perf_counter() - started
    print_table(f"backfill done in {elapsed:.1f} s", summarize_lake(settings, elapsed))
    _remember_backfill(settings, events)
    _register_feast(settings)


@app.command()
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

    settings = _settings()
    _need_file(events, "--events")
    if settings.kafka is None:
        from bestmatch.services import ensure_redis

        ensure_redis(settings.redis_url, Path(settings.lake_path("redis")))
    started = time.perf_counter()
    with progress(f"publishing to {settings.bus_name}", total=None) as advance:
        sent = publish_events(settings, iter_lines(events), rate=rate, progress=advance)
    elapsed = time.perf_counter() - started
    console.print(f"published {sent:,} events in {elapsed:.1f} s ({sent / elapsed:,.0f}/s)")


@app.command()
@friendly
def stream(
    workers: Workers = 1,
    processes: Processes = 1,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (0: off).")] = 9108,
    trigger: Annotated[
        float, typer.Option(help="Change-log trigger in seconds (0: continuous, every batch).")
    ] = 0.0,
) -> None:
    """Run the feature flow on the event bus until stopped; resumes after a crash."""
    from flows.runner import run_stream

    settings = _settings()
    if not settings.lake_is_local:
        msg = "bestmatch stream keeps its checkpoints in a local BESTMATCH_LAKE"
        raise ConfigError(msg)
    if metrics_port:
        from prometheus_client import start_http_server

        from flows.metrics import METRICS

        start_http_server(metrics_port, registry=METRICS.registry)
        console.print(f"metrics on http://127.0.0.1:{metrics_port}/metrics")
    _register_feast(settings)
    console.print(f"streaming from {settings.bus_name}; Ctrl-C to stop")
    _stop_on_signals()
    run_stream(settings, workers=workers, processes=processes, trigger_s=trigger)


@app.command()
@friendly
def snapshot() -> None:
    """Write every entity's current values as a new version of a Delta table (complete mode)."""
    from features.lake import write_snapshots

    settings = _settings()
    rows = write_snapshots(settings)
    print_table("snapshot written", rows)


@app.command()
@friendly
def compact() -> None:
    """Delta maintenance of the offline tables: compaction, then vacuum."""
    from features.lake import compact_tables

    settings = _settings()
    print_table("compacted", compact_tables(settings))


@app.command()
@friendly
def train(
    events: Annotated[
        Path | None,
        typer.Option(
            help="Events with the proposals and client actions to learn from "
            "(default: the file of the last `bestmatch backfill`)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed: same data and seed, same model.")] = 1,
) -> None:
    """Build a point-in-time training set, train the ranker, register it in MLflow."""
    from rich.table import Table

    from training.pipeline import train as run

    settings = _settings()
    events = events or _last_backfill(settings)
    _need_file(events, "--events")
    with progress("training: set → ranker → evaluation → MLflow", total=4) as advance:
        report = run(settings, events=events, seed=seed, progress=advance)
    header, rows = report.evaluation_rows()
    table = Table(title="ranker vs baselines on the test days", title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print_table("training run", report.rows())


@app.command()
@friendly
def consistency(
    since: Annotated[
        str | None,
        typer.Option(help="Only requests served at or after this time (RFC 3339)."),
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the full report as JSON here.")
    ] = None,
    fail_on_mismatch: Annotated[
        bool, typer.Option(help="Exit 1 unless the verdict is healthy (for CI).")
    ] = False,
) -> None:
    """Recompute logged serving-time features point in time offline; report every difference."""
    import orjson
    from rich.table import Table

    from bestmatch.consistency import check_consistency

    settings = _settings()
    since_us = _time(since, "--since")
    with progress("recomputing served features from the offline change log"):
        report = check_consistency(settings, since_us=since_us)
    header, rows = report.feature_table()
    table = Table(title="served vs offline, per feature", title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for example in report.examples[:10]:
        console.print(
            f"  {example.kind}: {example.feature} of {example.entity} {example.entity_id} "
            f"at {example.served_at}: served {example.served!r}, offline {example.offline!r}",
            highlight=False,
        )
    if len(report.examples) > 10:
        console.print(f"  ... {len(report.examples) - 10} more examples in the --json report")
    print_table("consistency", report.rows())
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_bytes(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
        console.print(f"report written to {json_file}")
    if fail_on_mismatch and report.verdict == "inconsistent":
        raise typer.Exit(1)


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


def _remember_backfill(settings: Settings, events: Path) -> None:
    if settings.lake_is_local:
        meta = Path(settings.lake_path("_meta"))
        meta.mkdir(parents=True, exist_ok=True)
        (meta / "last_backfill.txt").write_text(str(events.resolve()))


def _last_backfill(settings: Settings) -> Path:
    record = Path(settings.lake_path("_meta", "last_backfill.txt"))
    if not settings.lake_is_local or not record.exists():
        msg = "--events: no events file given and no `bestmatch backfill` has run on this lake"
        raise ConfigError(msg)
    return Path(record.read_text().strip())


@app.command()
@friendly
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes answering on the port, each with its own model and Redis "
            "connections (default: BESTMATCH_SERVE_WORKERS, else 1).",
        ),
    ] = None,
) -> None:
    """Serve the ranking API (POST /v1/rank, /healthz, /readyz, /metrics, /openapi.json)."""
    from serving import run

    settings = _settings()
    console.print(f"serving on http://{host}:{port} (OpenAPI at /docs)")
    run(settings, host, port, workers=workers)


@app.command()
@friendly
def demo(
    days: Annotated[int, typer.Option(min=9, help="Days to simulate.")] = 12,
    jobs_per_day: Annotated[int, typer.Option(min=1, help="Jobs posted per day.")] = 120,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 1,
    rate: Annotated[
        float, typer.Option(min=0, help="Events/s when streaming the last day (0: full speed).")
    ] = 1000.0,
    requests: Annotated[
        int, typer.Option(min=1, help="Timed ranking requests over the open jobs.")
    ] = 300,
) -> None:
    """End to end: simulate, backfill, stream the last day with the service up, train, serve,
    rank the open jobs, check consistency, and write the HTML report."""
    from bestmatch.demo import run_demo

    run_demo(
        _settings(),
        days=days,
        jobs_per_day=jobs_per_day,
        seed=seed,
        rate=rate or None,
        latency_requests=requests,
    )


import bestmatch.bench_kafka  # noqa: E402, F401  (registers `bestmatch bench kafka`)
import bestmatch.bench_serving  # noqa: E402, F401  (registers `bestmatch bench serve`)
import bestmatch.bench_training  # noqa: E402, F401  (registers `bestmatch bench training`)

if __name__ == "__main__":
    app()
