"""`bestmatch bench training`: the training-set builder beside Feast's get_historical_features."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bestmatch.bench import bench_app
from bestmatch.console import console, friendly, print_table


@bench_app.command("training")
@friendly
def bench_training(
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
    from bestmatch.cli import _last_backfill, _need_file, _settings
    from training.bench import bench_training_set

    settings = _settings()
    events = events or _last_backfill(settings)
    _need_file(events, "--events")
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
