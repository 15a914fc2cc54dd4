"""The `bestmatch` command: one Typer app, each command from the module of its group.

Settings are read once per command (`bestmatch.cli.options.read_settings`) and passed down.
"""

from __future__ import annotations

import typer

from bestmatch.cli.bench import bench_app
from bestmatch.cli.consistency import consistency
from bestmatch.cli.demo import demo
from bestmatch.cli.flow import backfill, compact, publish, snapshot, stream
from bestmatch.cli.serve import serve
from bestmatch.cli.simulate import simulate
from bestmatch.cli.train import train

app = typer.Typer(
    name="bestmatch",
    help="BestMatch: streaming features and real-time ranking for a freelance marketplace.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

COMMANDS = (simulate, backfill, publish, stream, snapshot, compact, train, consistency, serve, demo)
for command in COMMANDS:
    app.command()(command)
app.add_typer(bench_app, name="bench")
