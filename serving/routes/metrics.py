"""`GET /metrics`: Prometheus's text format (summed over the workers when there are several)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from serving.deps import State

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics."}},
)
async def metrics(state: State, request: Request) -> Response:
    text = state.metrics.exposition(request.app.state.metrics_dir)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
