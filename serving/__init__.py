"""The ranking service (CONTRACT §4): FastAPI on the online store and the MLflow champion.

create_app(settings, serving=None)  the ASGI app (lifespan: model, Redis, watcher, log)
run(settings, host, port, workers)  uvicorn: one process, or N workers on one port
ServingSettings                     BESTMATCH_SERVE_* knobs (log rate, timeouts, ...)
"""

from serving.app import create_app, run
from serving.config import ServingSettings

__all__ = ["ServingSettings", "create_app", "run"]
