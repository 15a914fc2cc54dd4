"""`bestmatch consistency`: served features against the offline change log, point in time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bestmatch.cli.options import lake_settings, time_option
from bestmatch.console import console, friendly, print_table, progress


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

    settings = lake_settings()
    since_us = time_option(since, "--since")
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
