"""`bestmatch demo`: the whole platform end to end on a simulated market."""

from __future__ import annotations

from typing import Annotated

import typer

from bestmatch.cli.options import read_settings
from bestmatch.console import friendly


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
    from bestmatch.demo.run import run_demo

    run_demo(
        read_settings(),
        days=days,
        jobs_per_day=jobs_per_day,
        seed=seed,
        rate=rate or None,
        latency_requests=requests,
    )
