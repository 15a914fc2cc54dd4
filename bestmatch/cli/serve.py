"""`bestmatch serve`: the ranking API."""

from __future__ import annotations

from typing import Annotated

import typer

from bestmatch.cli.options import read_settings
from bestmatch.console import console, friendly


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
    from bestmatch.services.redis_server import check_redis_kind
    from serving import run

    settings = read_settings()
    check_redis_kind(settings.redis_url, settings.redis_cluster)
    console.print(f"serving on http://{host}:{port} (OpenAPI at /docs)")
    run(settings, host, port, workers=workers)
