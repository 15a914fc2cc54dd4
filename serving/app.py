"""The ranking service: `create_app(settings)` and `run(settings, host, port)`.

Nothing happens at import. The lifespan reads `ServingSettings` (unless given), connects to Redis,
loads the champion model, and starts the alias watcher and the serving-log writer; shutdown stops
them, flushing the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from features.settings import Settings
from serving.config import ServingSettings
from serving.errors import BodyLimit, install_error_handler
from serving.routes import health, metrics, rank
from serving.schemas import MAX_BODY_BYTES
from serving.state import open_state

API_VERSION = "1.0.0"


def create_app(settings: Settings, serving: ServingSettings | None = None) -> FastAPI:
    """The FastAPI app; `serving` defaults to `ServingSettings()` read in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = serving if serving is not None else ServingSettings()
        state = await run_in_threadpool(open_state, settings, config)
        app.state.serving = state
        try:
            yield
        finally:
            await run_in_threadpool(state.close)

    app = FastAPI(
        title="BestMatch ranking",
        version=API_VERSION,
        description="Ranks a job's proposals with the champion LightGBM model on live features.",
        lifespan=lifespan,
    )
    app.add_middleware(rank.RankEndpoint)  # inside BodyLimit: added first
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    install_error_handler(app)
    app.include_router(rank.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    return app


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
        create_app(settings, serving),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level=log_level,
        access_log=access_log,
    )
