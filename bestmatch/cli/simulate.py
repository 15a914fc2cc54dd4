"""`bestmatch simulate`: the marketplace simulator's event stream, written to a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bestmatch.console import friendly, print_table, progress


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
    from bestmatch.simulator import simulate as run

    out.parent.mkdir(parents=True, exist_ok=True)
    with progress(f"simulating {days} days", total=None) as advance:
        report = run(days, seed, out, jobs_per_day=jobs_per_day, dirty=dirty, progress=advance)
    print_table(f"wrote {out}", report.rows())
