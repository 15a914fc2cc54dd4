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
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class TooLarge(ApiError):
    status = 413

    @classmethod
    def body(cls, max_bytes: int) -> TooLarge:
        return cls(f"the body is over {max_bytes:,} bytes", "body")


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
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
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
        if exc.status_code == 400:  # FastAPI could not read the body (e.g. not UTF-8)
            return _answer(400, [{"field": "body", "message": "not readable as UTF-8 JSON"}])
        return _answer(exc.status_code, [{"field": "", "message": str(exc.detail)}])
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return _answer(500, [{"field": "", "message": "internal error"}])


def install_error_handler(app: FastAPI) -> None:
    for kind in (RequestValidationError, ApiError, ModelError, HTTPException, Exception):
        app.add_exception_handler(kind, handle_error)


class BodyLimit:
    """413 for a body over `max_bytes`, before anything reads it.

    A declared Content-Length over the limit is refused at once (the server delivers no more than
    it declares); a body without one (chunked) is read up to the limit, then handed on. The answer
    has the one error shape (it is made before the app's handler could see the request).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = TooLarge.body(self.max_bytes)
        await _answer(413, [{"field": refused.field, "message": refused.message}])(
            scope, receive, send
        )
