"""Every error answer of the service, made in one handler.

`handle_error` is registered for each exception type below and maps it to a status and the one
JSON shape of `schemas.ErrorAnswer`: `detail`, a line that names the field, and `errors`, each
problem with its field (`proposals[3].bid_amount`). Bad input is always a 4xx. Anything
unexpected is a 500 whose answer says nothing of the inside (no settings, no secrets); the log
has it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from features.errors import ModelError

log = logging.getLogger("bestmatch.serving")


class ApiError(Exception):
    """An error with its HTTP status and the field it is about."""

    status = 400

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Unauthorized(ApiError):
    status = 401


class NotReady(ApiError):
    status = 503


def field_name(loc: Sequence[Any]) -> str:
    """`("body", "proposals", 3, "bid_amount")` → `proposals[3].bid_amount`."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "header", "query") else loc)
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "body"


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(payload), status, headers, media_type="application/json")


def _answer(
    status: int, errors: list[dict[str, str]], headers: dict[str, str] | None = None
) -> Response:
    first = errors[0]
    detail = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return json_response({"detail": detail, "errors": errors}, status, headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for error in exc.errors():
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            message = f"not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
            out.append({"field": "body", "message": message})
            continue
        out.append({"field": field_name(error.get("loc", ())), "message": message})
    return out or [{"field": "body", "message": "invalid request"}]


async def handle_error(request: Request, exc: Exception) -> Response:
    """The one place an exception becomes an HTTP answer."""
    response = _response(request, exc)
    state = getattr(request.app.state, "serving", None)
    if state is not None:
        state.metrics.errors.labels(str(response.status_code)).inc()
    return response


def _response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RequestValidationError):
        return _answer(422, _validation_errors(exc))
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
        return _answer(exc.status, [{"field": exc.field, "message": exc.message}], headers)
    if isinstance(exc, ApiError):
        return _answer(exc.status, [{"field": exc.field, "message": exc.message}])
    if isinstance(exc, ModelError):
        return _answer(503, [{"field": "", "message": str(exc)}])
    if isinstance(exc, HTTPException):
        field = "body" if exc.status_code == 413 else ""
        return _answer(exc.status_code, [{"field": field, "message": str(exc.detail)}])
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return _answer(500, [{"field": "", "message": "internal error"}])


def install_error_handler(app: FastAPI) -> None:
    for kind in (RequestValidationError, ApiError, ModelError, HTTPException, Exception):
        app.add_exception_handler(kind, handle_error)
