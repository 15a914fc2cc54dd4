"""`bestmatch train`: a point-in-time training set, the ranker, its MLflow registration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bestmatch.cli.options import lake_settings, last_backfill, need_file
from bestmatch.console import console, friendly, print_table, progress


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

    settings = lake_settings()
    events = events or last_backfill(settings)
    need_file(events, "--events")
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
