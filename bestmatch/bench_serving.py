"""`bestmatch bench serve`: /v1/rank beside Feast's get_online_features + the model."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from bestmatch.bench import bench_app
from bestmatch.console import console, friendly, print_table


@bench_app.command("serve")
@friendly
def bench_serving(
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
    from bestmatch.cli import _settings
    from bestmatch.serve_bench import bench_serve
    from serving.config import ServingSettings

    # the model is downloaded three times (service, steps, floor): no progress bar each time
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    report = bench_serve(
        _settings(),
        proposals=proposals,
        requests=requests,
        duration_s=duration,
        seed=seed,
        workers=workers or os.cpu_count() or 1,
        log_rate=ServingSettings().log_rate if log_rate is None else log_rate,
        progress=console.print,
    )
    print_table("POST /v1/rank vs Feast get_online_features + model", report.rows())
