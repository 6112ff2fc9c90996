"""Every error answers ``{"detail": ..., "errors": [{"field": ..., "reason": ...}]}``.

jobline's exceptions map to statuses here, once: JobNotFound and MetadataNotFound 404, refused
transitions and lost leases 409, a metadata document of another model 409, metadata past its
size limits 413 and past its key limit 422, a job type that is not registered 422, an
unreachable database (or a connection pool that stays exhausted) 503. Request validation
answers 422 (400 for malformed JSON) with one entry per field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.schemas import ErrorBody, FieldError
from jobline.exceptions import (
    JobNotFound,
    JobTypeError,
    LeaseLost,
    MetadataModelMismatch,
    MetadataNotFound,
    MetadataTooLarge,
    TooManyMetadataKeys,
    TransitionError,
)

log = logging.getLogger(__name__)

#: jobline exception -> (HTTP status, the field it is about).
EXCEPTION_STATUS: list[tuple[type[Exception], int, str]] = [
    (JobNotFound, 404, "job_id"),
    (MetadataNotFound, 404, "key"),
    (MetadataModelMismatch, 409, "key"),
    (MetadataTooLarge, 413, "body"),
    (TooManyMetadataKeys, 422, "key"),
    (LeaseLost, 409, "lease_token"),
    (TransitionError, 409, "status"),
    (JobTypeError, 422, "job_type"),
]
#: "field: reason" at the start of a message names the field.
_FIELD_PREFIX = re.compile(r"^(?P<field>[a-z_][a-z0-9_.-]*): (?P<reason>.+)$", re.DOTALL)
#: The error answers every route may give, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed request (e.g. JSON)."},
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    413: {"model": ErrorBody, "description": "Request body too large."},
    422: {"model": ErrorBody, "description": "Invalid request: each field and why."},
    503: {"model": ErrorBody, "description": "The database is unavailable."},
}


def json_error_responses(extra: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """ERROR_RESPONSES (plus ``extra``: status -> description) with their JSON media type
    spelled out, for routes whose own answers are not JSON (an event stream)."""
    descriptions = {code: spec["description"] for code, spec in ERROR_RESPONSES.items()}
    reference = {"$ref": "#/components/schemas/ErrorBody"}
    return {
        code: {"description": text, "content": {"application/json": {"schema": reference}}}
        for code, text in {**descriptions, **extra}.items()
    }


def error_response(
    status: int,
    detail: str,
    errors: Iterable[FieldError] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(detail=detail, errors=list(errors))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def field_error(default_field: str, message: str) -> FieldError:
    """A FieldError from a message; a leading ``field:`` overrides ``default_field``."""
    match = _FIELD_PREFIX.match(message)
    if match:
        return FieldError(field=match["field"], reason=match["reason"])
    return FieldError(field=default_field, reason=message)


async def _jobline_error(request: Request, error: Exception) -> JSONResponse:
    for kind, status, field in EXCEPTION_STATUS:
        if isinstance(error, kind):
            return error_response(status, str(error), [field_error(field, str(error))])
    raise error  # pragma: no cover - only registered for the kinds above


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = [_describe(item) for item in error.errors()]
    malformed = any(item.get("type") == "json_invalid" for item in error.errors())
    summary = "; ".join(f"{p.field}: {p.reason}" for p in problems)
    if malformed:
        return error_response(400, f"malformed JSON body: {summary}", problems)
    return error_response(422, f"invalid request: {summary}", problems)


def _describe(item: dict[str, Any]) -> FieldError:
    location = [str(part) for part in item.get("loc", ())]
    where = location[0] if location else "body"
    names = location[1:]
    message = str(item.get("msg", "invalid"))
    if item.get("type") == "json_invalid":
        reason = item.get("ctx", {}).get("error", "not valid JSON")
        return FieldError(field="body", reason=f"{reason} at position {names[0] if names else 0}")
    if item.get("type") == "extra_forbidden":
        return FieldError(field=".".join(names), reason="unknown field: not accepted here")
    if item.get("type") == "missing":
        return FieldError(field=".".join(names) or where, reason="required")
    message = message.removeprefix("Value error, ")
    # Model-level validators name their field in the message ("product_id: ...").
    return field_error(".".join(names) or where, message)


class OnlyAllowed(HTTPException):
    """A 405 whose route states its ``Allow`` itself (a literal path that a parameter route
    would otherwise also match, such as ``/jobs/retry`` and ``/jobs/{job_id}``)."""

    def __init__(self, method: str, allowed: list[str]) -> None:
        allow = ", ".join(allowed)
        super().__init__(
            405,
            f"method: {method} is not allowed here; allowed are {allow}",
            headers={"Allow": allow},
        )


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    detail = str(error.detail)
    headers = dict(getattr(error, "headers", None) or {})
    if error.status_code == 405 and not isinstance(error, OnlyAllowed):
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"method: {request.method} is not allowed here; allowed are {headers['Allow']}"
    return error_response(
        error.status_code, detail, [field_error("request", detail)], headers=headers or None
    )


#: The methods a 405 answer may list.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers on the request's path (asked of every route
    with each method in turn: included routers nest their routes)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.routes):
            allowed.append(method)
    return allowed


async def _database_unreachable(request: Request, error: OperationalError) -> JSONResponse:
    log.warning("database unavailable: %s", error)
    return error_response(
        503, "the job store's database is unavailable (see the server's log); try again later"
    )


async def _database_busy(request: Request, error: PoolTimeout) -> JSONResponse:
    log.warning("database connections all busy: %s", error)
    return error_response(
        503,
        "the job store's database connections are all busy; try again shortly",
        headers={"Retry-After": "1"},
    )


def install_error_handlers(app: FastAPI) -> None:
    for kind, _, _ in EXCEPTION_STATUS:
        app.add_exception_handler(kind, _jobline_error)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _database_unreachable)  # type: ignore[arg-type]
    app.add_exception_handler(PoolTimeout, _database_busy)  # type: ignore[arg-type]


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with 413, by Content-Length when the client
    sends one, and by counting otherwise (chunked bodies), before a route sees them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                response = error_response(
                    400,
                    "content-length: not a number",
                    [FieldError(field="content-length", reason="not a number")],
                )
                await response(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._reason())
            return message

        await self.app(scope, counting_receive, send)

    def _reason(self) -> str:
        return f"body: larger than the limit of {self.max_bytes} bytes"

    def _too_large(self) -> JSONResponse:
        return error_response(
            413, self._reason(), [FieldError(field="body", reason=self._reason())]
        )
