"""`GET /healthz` (the process lives) and `GET /readyz` (a model is loaded and Redis answers)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from serving.deps import State
from serving.errors import json_response

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    model: dict[str, str] | None
    online_store: bool
    reasons: list[str]


@router.get("/healthz", response_model=Health)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: `reasons` says why."}},
)
async def readyz(state: State) -> Response:
    """Ready when a model is loaded and the online store answers a ping (bounded timeout)."""
    store_up = await state.reader.ping()
    state.metrics.store_up.set(1 if store_up else 0)
    model = state.watcher.current
    reasons = []
    if model is None:
        reasons.append(f"no model: {state.watcher.last_error or 'loading'}")
    if not store_up:
        reasons.append("the online store (Redis) does not answer")
    body = {
        "ready": not reasons,
        "model": {"name": model.name, "version": model.version} if model else None,
        "online_store": store_up,
        "reasons": reasons,
    }
    return json_response(body, 200 if not reasons else 503)
