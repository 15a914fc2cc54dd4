"""The ranking service (docs/contract.md §4): FastAPI on the online store and the MLflow champion.

create_app(settings, serving=None)  the ASGI app (lifespan: model, Redis, watcher, log)
run(settings, host, port, workers)  uvicorn: one process, or N workers on one port
ServingSettings                     BESTMATCH_SERVE_* knobs (log rate, timeouts, ...)

Imported when first named: a process that needs one module of the package (the serving log's
writer) does not load FastAPI, MLflow and LightGBM for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.app import create_app, run
    from serving.config import ServingSettings

__all__ = ["ServingSettings", "create_app", "run"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "run"):
        from serving import app

        return getattr(app, name)
    if name == "ServingSettings":
        from serving.config import ServingSettings

        return ServingSettings
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
