"""How errors become HTTP responses: one JSON shape, a stable ``error`` code, a clear message.

======================================  ======  ==================================================
error                                   status  body extras
======================================  ======  ==================================================
missing or wrong bearer token           401     ``error: unauthorized`` (checked first)
body over the limit                     413     ``error: payload_too_large``
body not sent as JSON                   415     ``error: unsupported_media_type``
malformed JSON                          400     ``error: malformed_json``
invalid input (pydantic, stream id)     422     ``errors: [{field, reason}]``
domain rule (insufficient funds ...)    409     ``error: <LedgerError.code>``
unknown account / transfer              404     ``error: account_not_found`` ...
version conflict                        409     ``actual_version``, ``expected_version``
idempotency key reused                  422     ``error: idempotency_key_reused``
event too large                         413     ``error: event_too_large``
fenced source (migration cutover)       503     ``Retry-After``, ``error: read_only``
transient store/broker failure          503     ``Retry-After``, ``error: transient``
store misconfigured / corrupt file      500     ``error: configuration_error``
anything else (a bug)                   500     ``error: internal_error`` (details in the log)
======================================  ======  ==================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from skyferry.core.errors import (
    ConcurrencyError,
    ConfigurationError,
    DomainError,
    EventTooLarge,
    SkyferryError,
    StreamNotFound,
    TransientError,
    ValidationError,
    WriteFenced,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"

_NOT_FOUND_CODES = frozenset({"account_not_found", "transfer_not_found"})


def problem(
    status: int, error: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The one error body: ``{"error": code, "message": text, ...extra}``."""
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_problem(errors: list[dict[str, Any]]) -> JSONResponse:
    """422 naming every bad field and why."""
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = err.get("ctx", {}).get("error", err.get("msg", "invalid JSON"))
            return problem(400, "malformed_json", f"the request body is not valid JSON: {reason}")
    listed = [{"field": _field(err.get("loc", ())), "reason": _reason(err)} for err in errors]
    summary = "; ".join(f"{e['field']}: {e['reason']}" for e in listed)
    return problem(422, "invalid_input", summary, errors=listed)


def _reason(err: dict[str, Any]) -> str:
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") == "missing":
        return "field required"
    message = str(err.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def error_response(error: Exception) -> JSONResponse:
    """The response for a skyferry error raised by a command or a query."""
    if isinstance(error, ConcurrencyError):
        return problem(
            409,
            "version_conflict",
            str(error),
            actual_version=error.actual,
            expected_version=error.expected,
        )
    if isinstance(error, DomainError):
        code = str(getattr(error, "code", "rejected"))
        return problem(404 if code in _NOT_FOUND_CODES else 409, code, str(error))
    if isinstance(error, StreamNotFound):
        return problem(404, "not_found", str(error))
    if isinstance(error, EventTooLarge):
        return problem(413, "event_too_large", str(error))
    if isinstance(error, ValidationError):
        code = "idempotency_key_reused" if type(error).__name__ == "IdempotencyKeyReused" else "invalid_input"
        return problem(422, code, str(error))
    if isinstance(error, WriteFenced):
        return problem(503, "read_only", str(error), headers={"Retry-After": RETRY_AFTER_SECONDS})
    if isinstance(error, TransientError):
        log.warning("transient failure: %s", error)
        return problem(503, "transient", str(error), headers={"Retry-After": RETRY_AFTER_SECONDS})
    if isinstance(error, ConfigurationError):
        log.error("configuration error: %s", error)
        return problem(500, "configuration_error", str(error))
    log.exception("unexpected error", exc_info=error)
    return problem(500, "internal_error", "internal error; see the server log")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(list(exc.errors()))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
        return problem(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers=exc.headers)

    async def on_skyferry(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def on_pydantic(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PydanticValidationError)
        return validation_problem([dict(e) for e in exc.errors()])

    async def on_anything(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)  # logged there; the client gets the one JSON shape, never a traceback

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(PydanticValidationError, on_pydantic)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(SkyferryError, on_skyferry)
    app.add_exception_handler(Exception, on_anything)
