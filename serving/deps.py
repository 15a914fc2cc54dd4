"""The routes' dependencies, as named `Annotated` types, and the checks behind them."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.errors import NotReady, Unauthorized
from serving.model import LoadedRanker
from serving.state import ServingState

_bearer = HTTPBearer(auto_error=False, description="Needed when BESTMATCH_API_KEY is set.")


async def get_state(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state


State = Annotated[ServingState, Depends(get_state)]


def check_key(state: ServingState, given: str) -> None:
    """Open without a configured key; with one, the given key must be it (constant time)."""
    expected = state.api_key
    if expected is None:
        return
    if not hmac.compare_digest(given.encode(), expected.encode()):
        msg = "missing or wrong API key: send `Authorization: Bearer <key>`"
        raise Unauthorized(msg, "Authorization")


async def check_api_key(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    check_key(state, credentials.credentials if credentials is not None else "")


Authorized = Annotated[None, Depends(check_api_key)]


def current_model(state: ServingState) -> LoadedRanker:
    """The model being served; `NotReady` (503) while there is none."""
    model = state.watcher.current
    if model is None:
        msg = f"no model to serve yet: {state.watcher.last_error or 'loading'}"
        raise NotReady(msg)
    return model


async def get_model(state: State) -> LoadedRanker:
    return current_model(state)


Model = Annotated[LoadedRanker, Depends(get_model)]


@dataclass(frozen=True, slots=True)
class Ranking:
    """What `POST /v1/rank` needs: the service's state and the model to score with."""

    state: ServingState
    model: LoadedRanker


async def get_ranking(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Ranking:
    """`Authorized`, then `Model`, in one dependency: FastAPI resolves each dependency per
    request, and on the hot route each level cost about as much as validating the body."""
    state: ServingState = request.app.state.serving
    check_key(state, credentials.credentials if credentials is not None else "")
    return Ranking(state, current_model(state))


Ranked = Annotated[Ranking, Depends(get_ranking)]
