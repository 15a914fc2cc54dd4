"""The routes' dependencies, as named `Annotated` types."""

from __future__ import annotations

import hmac
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


async def check_api_key(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Open without a configured key; with one, `Authorization: Bearer <key>` (constant time)."""
    expected = state.api_key
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        msg = "missing or wrong API key: send `Authorization: Bearer <key>`"
        raise Unauthorized(msg, "Authorization")


Authorized = Annotated[None, Depends(check_api_key)]


async def get_model(state: State) -> LoadedRanker:
    model = state.watcher.current
    if model is None:
        msg = f"no model to serve yet: {state.watcher.last_error or 'loading'}"
        raise NotReady(msg)
    return model


Model = Annotated[LoadedRanker, Depends(get_model)]
