"""`bestmatch bench ...`: benchmarks that print figures and ratios side by side."""

from __future__ import annotations

import typer

bench_app = typer.Typer(
    help="Benchmarks: figures and ratios against a baseline, side by side.", no_args_is_help=True
)
