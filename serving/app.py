"""The ranking service: `create_app(settings)` and `run(settings, host, port, workers=N)`.

Nothing happens at import. The lifespan reads `ServingSettings` (unless given), connects to Redis,
loads the champion model, and starts the alias watcher and the serving-log writer; shutdown stops
them, flushing the log. With several workers each process does all of that for itself.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from features.settings import Settings, environment
from serving.config import ServingSettings
from serving.errors import BodyLimit, install_error_handler
from serving.routes import health, metrics, rank
from serving.schemas import MAX_BODY_BYTES
from serving.state import open_state

API_VERSION = "1.0.0"


def create_app(
    settings: Settings,
    serving: ServingSettings | None = None,
    *,
    tune_gc: bool = False,
    metrics_dir: str | None = None,
) -> FastAPI:
    """The FastAPI app; `serving` defaults to `ServingSettings()` read in the lifespan.

    `metrics_dir` (what `run` gives its workers): the folder where the workers keep their
    Prometheus values; `/metrics` answers their sums.

    `tune_gc` (what `run` asks, for a process that only serves): once started, the objects
    built so far (modules, model, settings) are frozen out of the cyclic garbage collector's
    scans, and its first generation is collected every 10,000 allocations instead of 700.
    A request allocates a few thousand objects that reference counting frees; with the
    default, collections ran several times per request and cost about a tenth of its CPU.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = serving if serving is not None else ServingSettings()
        state = await run_in_threadpool(open_state, settings, config)
        state.metrics.store_up.set(1 if await state.reader.ping() else 0)
        app.state.serving = state
        if tune_gc:
            _tune_gc()
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(
        title="BestMatch ranking",
        version=API_VERSION,
        description="Ranks a job's proposals with the champion LightGBM model on live features.",
        lifespan=lifespan,
    )
    app.state.metrics_dir = metrics_dir
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    install_error_handler(app)
    app.include_router(rank.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    return app


GC_THRESHOLDS = (10_000, 50, 100)


def _tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    serving: ServingSettings | None = None,
    workers: int | None = None,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve with uvicorn until stopped, on uvloop with the httptools parser (`uvicorn[standard]`:
    named, not left to "auto", so a missing one fails loudly rather than quietly serving at half
    the speed).

    `workers` (default: `serving.workers`, 1 unless BESTMATCH_SERVE_WORKERS says otherwise):
    1 serves in this process; more run uvicorn's own workers, processes that answer on the one
    port, each with its own model, Redis connections and serving log writer, while this process
    only supervises them (it restarts one that dies; SIGINT or SIGTERM stops them all, each
    flushing its log). They are given `settings` and `serving` exactly, not read again.
    """
    import uvicorn

    config = serving if serving is not None else ServingSettings()
    if workers is not None:
        config = config.model_copy(update={"workers": workers})
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": log_level,
        "access_log": access_log,
    }
    if config.workers == 1:
        uvicorn.run(create_app(settings, config, tune_gc=True), **options)
        return
    _open_registry(settings)
    with _worker_environment(settings, config):
        uvicorn.run(
            f"{__name__}:{create_worker_app.__name__}",
            factory=True,
            workers=config.workers,
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
            **options,
        )


WORKER_HEALTHCHECK_S = 60
"""How long uvicorn's supervisor waits for a worker to answer its ping before it kills it as
hung. A new worker answers only once it has imported its parent's main module again (spawn;
`bestmatch`'s takes seconds): uvicorn's default, 5 s, killed them in a loop on a busy machine."""
WORKER_ENV = "_BESTMATCH_WORKER_APP"
"""What `run` hands its workers (not a setting): both settings and the metrics folder, as JSON."""
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
SINGLE_ACCEPT_ENV = "UV_TCP_SINGLE_ACCEPT"
"""libuv's (uvloop's) switch, set for the workers unless set already: a worker accepts one waiting
connection at a time, then yields, so a burst of new connections (a gateway opening its keep-alive
pool) is shared among the workers that listen on the port instead of mostly going to the first one
awake. Measured with 16 connections and 2 workers: without it, one worker took nearly all of them
in 3 runs of 4 (half the throughput)."""


def create_worker_app() -> FastAPI:
    """uvicorn's factory in each worker process of `run(..., workers=N)`."""
    given = json.loads(os.environ[WORKER_ENV])
    return create_app(
        Settings.model_validate(given["settings"]),
        ServingSettings.model_validate(given["serving"]),
        tune_gc=True,
        metrics_dir=given["metrics_dir"],
    )


def _open_registry(settings: Settings) -> None:
    """Open the model registry once before the workers do: on a fresh SQLite store, workers that
    start together each create its tables, and all but one fail (MLflow's migrations do not
    run concurrently)."""
    from serving.model import champion_version, registry_client

    champion_version(registry_client(settings))


@contextmanager
def _worker_environment(settings: Settings, config: ServingSettings) -> Iterator[None]:
    """The environment the workers start in: what `create_worker_app` reads, and a fresh folder
    for the metrics, which puts prometheus_client in its multiprocess mode as each worker imports
    it, and `SINGLE_ACCEPT_ENV`. This process's own prometheus_client chose its mode when it was
    imported, so it stays as it was; the folder and the variables go when the workers have
    stopped."""
    metrics_dir = tempfile.mkdtemp(prefix="bestmatch-metrics-")
    given = {
        "settings": settings.model_dump(mode="json"),
        "serving": config.model_dump(mode="json"),
        "metrics_dir": metrics_dir,
    }
    variables = {WORKER_ENV: json.dumps(given), METRICS_ENV: metrics_dir}
    variables[SINGLE_ACCEPT_ENV] = os.environ.get(SINGLE_ACCEPT_ENV, "1")
    try:
        with environment(variables):
            yield
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
