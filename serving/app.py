"""The ranking service: `create_app(settings)` and `run(settings, host, port)`.

Nothing happens at import. The lifespan reads `ServingSettings` (unless given), connects to Redis,
loads the champion model, and starts the alias watcher and the serving-log writer; shutdown stops
them, flushing the log.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from features.settings import Settings
from serving.config import ServingSettings
from serving.errors import BodyLimit, install_error_handler
from serving.routes import health, metrics, rank
from serving.schemas import MAX_BODY_BYTES
from serving.state import open_state

API_VERSION = "1.0.0"


class RankingApp(FastAPI):
    """FastAPI, with `POST /v1/rank` answered ahead of Starlette's middleware stack.

    Every request passes that stack: error, telemetry and body-limit middleware, each wrapping
    `receive` and `send`, then routing. Measured in the service, it cost about as much CPU as
    ranking a request of 50 proposals, so the hot path goes straight to `routes.rank.serve`,
    which does what the stack did for it (413, the one error handler). Everything else (the
    lifespan, health, metrics, OpenAPI, the declared `/v1/rank` route) is FastAPI's.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == rank.PATH and scope["method"] == "POST":
            state = getattr(self.state, "serving", None)
            if state is not None:
                scope["app"] = self
                await rank.serve(state, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings, serving: ServingSettings | None = None, *, tune_gc: bool = False
) -> FastAPI:
    """The FastAPI app; `serving` defaults to `ServingSettings()` read in the lifespan.

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
        app.state.serving = state
        if tune_gc:
            _tune_gc()
        try:
            yield
        finally:
            await run_in_threadpool(state.close)

    app = RankingApp(
        title="BestMatch ranking",
        version=API_VERSION,
        description="Ranks a job's proposals with the champion LightGBM model on live features.",
        lifespan=lifespan,
    )
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
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve with uvicorn (one process) until stopped, on uvloop with the httptools parser
    (`uvicorn[standard]`: named, not left to "auto", so a missing one fails loudly rather than
    quietly serving at half the speed)."""
    import uvicorn

    uvicorn.run(
        create_app(settings, serving, tune_gc=True),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level=log_level,
        access_log=access_log,
    )
