"""`POST /v1/rank` (docs/contract.md §4), an ordinary FastAPI route.

FastAPI reads the body (with orjson: `JsonRoute`) and validates it as `RankRequest` (the same
model its OpenAPI schema shows); one dependency checks the API key and gives the service's state
and the model; every middleware of the app applies (the body limit's 413 among them), and every
error goes through the one handler (`serving.errors`). The route runs on the event loop, not in
the threadpool: its work is a millisecond or two of CPU and one Redis round trip, awaited
(`redis.asyncio`), so the loop serves other requests while Redis answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from serving.deps import Ranked
from serving.metrics import ServingMetrics
from serving.model import LoadedRanker
from serving.ranker import freelancer_values, rank_proposals
from serving.schemas import ErrorAnswer, RankAnswer, RankRequest
from serving.serving_log import ServedRequest, entity_stamps
from serving.state import ServingState
from serving.store import RequestFeatures


class JsonRequest(Request):
    """A request whose JSON body is read by orjson (a third of the standard library's time for
    a request of 50 proposals). A body orjson refuses is read by `json` after all, so what it
    accepts beyond JSON (NaN, Infinity) reaches validation, which names the field; and where
    neither can read it, FastAPI's own error (`json_invalid`) follows."""

    async def json(self) -> Any:
        body = await self.body()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return json.loads(body)


class JsonRoute(APIRoute):
    """FastAPI's route, handing its handler a `JsonRequest` (FastAPI's documented way to change
    how a route reads its body: a custom `APIRoute` and `Request`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(JsonRequest(request.scope, request.receive))

        return handle


router = APIRouter(prefix="/v1", tags=["ranking"], route_class=JsonRoute)

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorAnswer, "description": "The body is not UTF-8 JSON."},
    401: {"model": ErrorAnswer, "description": "An API key is configured and was not given."},
    413: {"model": ErrorAnswer, "description": "The body is too large."},
    422: {"model": ErrorAnswer, "description": "A field is invalid; `detail` names it."},
    503: {"model": ErrorAnswer, "description": "No model loaded yet."},
}


@router.post(
    "/rank",
    response_model=RankAnswer,
    responses=_ERRORS,  # type: ignore[arg-type]
    summary="Rank a job's proposals, best first",
)
async def rank(body: RankRequest, ranking: Ranked) -> Response:
    """Scores every proposal with the champion model on the online store's features.

    Entities the store does not know are scored with missing values and listed in `missing`.
    When the store cannot be read in time the answer is `degraded`: every proposal is scored
    without store features, and still ranked.
    """
    payload = await answer(ranking.state, ranking.model, body)
    return Response(payload, media_type="application/json")


async def answer(state: ServingState, model: LoadedRanker, body: RankRequest) -> bytes:
    """Read the store, score, log a sample, observe: the answer's JSON."""
    started = time.perf_counter()
    config = state.config
    found = await state.reader.read(
        body.job_id, body.client_id, [p.freelancer_id for p in body.proposals]
    )
    ranking = rank_proposals(
        model,
        body,
        found,
        best_share=config.best_match_share,
        best_max=config.best_match_max,
        explain_top=config.explain_top,
    )
    if state.log is not None and state.sampler.random() < config.log_rate:
        state.log.offer(
            ServedRequest(
                time.time_ns() // 1000,
                body,
                model.version,
                found.degraded,
                ranking.job,
                freelancer_values(found),
                ranking.scores,
                ranking.ranks,
                entity_stamps(found),
            )
        )
    observe(state.metrics, body, found, time.perf_counter() - started)
    return ranking.body


def observe(m: ServingMetrics, body: RankRequest, found: RequestFeatures, seconds: float) -> None:
    m.rank_seconds.observe(seconds)
    m.rank_proposals.observe(len(body.proposals))
    if found.degraded:
        m.degraded.inc()
        m.store_up.set(0)
        return
    m.store_up.set(1)
    m.fetch_seconds.observe(found.fetch_s)
    # Ages: the job's, the client's and the oldest freelancer's of each answer (three
    # observations, not one per entity: each costs a lock).
    now_us = time.time_ns() // 1000
    freelancers = [s for s in found.freelancers.values() if s is not None]
    unknown = len(found.freelancers) - len(freelancers)
    if unknown:
        m.missing["freelancer"].inc(unknown)
    stamps = [s.stamp_us for s in freelancers if s.stamp_us is not None]
    if stamps:
        m.feature_age["freelancer"].observe((now_us - min(stamps)) / 1e6)
    entities = [("job", found.job)]
    if body.client_id is not None:
        entities.append(("client", found.client))
    for entity, stamped in entities:
        if stamped is None:
            m.missing[entity].inc()
        elif stamped.stamp_us is not None:
            m.feature_age[entity].observe((now_us - stamped.stamp_us) / 1e6)
