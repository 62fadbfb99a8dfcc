"""The HTTP API (FastAPI): commands in, queries out.  OpenAPI at ``/openapi.json``.

Commands answer ``201 Created`` (``202 Accepted`` for a transfer, which the worker
carries on) with the stored events.  Every endpoint except ``/healthz`` and ``/readyz``
needs ``Authorization: Bearer <SKYFERRY_API_TOKEN>`` (compared in constant time).

Headers of commands:

* ``Idempotency-Key`` -- bound to the request's route, target and body when first seen; a
  repeat returns the first result (``Idempotent-Replayed: true``) and stores nothing; the
  key with another route, target or body is 422, concurrent requests included.
* ``If-Match: <version>`` -- optimistic concurrency: 409 with ``actual_version`` when the
  aggregate is at another version.  Responses carry ``ETag: "<version>"``.

When the store is fenced for a migration cutover (:mod:`skyferry.migrate.fence`), every command gets
``503`` with ``Retry-After`` (the kernel's write guard refuses it, see :mod:`skyferry.bootstrap`)
and the queries keep working.  Errors share one JSON shape
(see :mod:`skyferry.api.errors`).
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from skyferry.api.errors import install
from skyferry.api.health import RunnerCollector, readiness
from skyferry.api.middleware import (
    BearerAuthMiddleware,
    BodyMiddleware,
    Metrics,
    MetricsMiddleware,
    bearer_matches,
)
from skyferry.bootstrap import Ledger
from skyferry.core.application import CommandResult
from skyferry.core.errors import ValidationError
from skyferry.ledger import commands as cmd
from skyferry.settings import Settings

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
"""The only paths that answer without the bearer token."""

Id = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]


class Amount(cmd.MoneyCommand):
    """A money body: ``currency`` and ``amount`` (decimal string) or ``amount_minor`` (integer)."""


class EventOut(BaseModel):
    """A stored event as the API shows it."""

    id: str
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    occurred_at: str
    recorded_at: str


class CommandOut(BaseModel):
    """What a command stored."""

    stream_id: str
    first_version: int
    last_version: int
    replayed: bool
    events: list[EventOut]


class Health(BaseModel):
    """Liveness."""

    status: str
    detail: str = ""


class Readiness(Health):
    """Readiness (``detail``, ``worker`` and ``runners`` only for a caller with the token)."""

    worker: dict[str, Any] | None = None
    runners: list[dict[str, Any]] | None = None


class WriteOptions:
    """The command headers, parsed once (``Idempotency-Key`` and ``If-Match``)."""

    def __init__(
        self,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)] = None,
        if_match: Annotated[str | None, Header(alias="If-Match")] = None,
    ) -> None:
        self.idempotency_key = idempotency_key
        self.expected_version: int | None = None
        if if_match is not None:
            text = if_match.strip().removeprefix("W/").strip('"')
            if not (text.isascii() and text.isdigit()):
                raise ValidationError(f'If-Match must be an aggregate version such as "3", not {if_match!r}')
            self.expected_version = int(text)


_bearer = HTTPBearer(auto_error=False, description="SKYFERRY_API_TOKEN")


def authorized(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Require ``Authorization: Bearer <token>`` (checked first by :class:`BearerAuthMiddleware`; this
    dependency declares the scheme in the OpenAPI document and checks again)."""
    if not bearer_matches(request.headers.get("authorization"), request.app.state.token):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": 'Bearer realm="skyferry"'}
        )


Options = Annotated[WriteOptions, Depends()]


def _command_response(result: CommandResult, status: int) -> JSONResponse:
    body = {
        "stream_id": result.stream_id,
        "first_version": result.first_version,
        "last_version": result.last_version,
        "replayed": result.replayed,
        "events": [event.to_dict() for event in result.events],
    }
    headers = {"ETag": f'"{result.last_version}"'}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(settings: Settings, ledger: Ledger) -> FastAPI:
    """The API over ``ledger``, a bootstrapped application (:func:`skyferry.bootstrap.bootstrap`).

    The caller owns ``ledger`` (and closes it).  ``settings.api_token`` must be set
    (:meth:`Settings.require_token`); ``settings.max_body_bytes`` bounds request bodies.
    """
    token = settings.require_token().encode()
    metrics = Metrics()
    metrics.registry.register(RunnerCollector(ledger))

    async def execute(command: cmd.Command, options: WriteOptions, status: int) -> JSONResponse:
        name = type(command).__name__
        try:
            result = await run_in_threadpool(
                ledger.execute,
                command,
                idempotency_key=options.idempotency_key,
                expected_version=options.expected_version,
                metadata={"actor": "api"},
            )
        except Exception as e:
            metrics.commands.labels(name, type(e).__name__).inc()
            raise
        metrics.commands.labels(name, "replayed" if result.replayed else "ok").inc()
        return _command_response(result, status)

    api = APIRouter(dependencies=[Depends(authorized)])
    command_responses: dict[int | str, dict[str, Any]] = {
        409: {"description": "version conflict (with actual_version) or a domain rule"},
        413: {"description": "body over the limit"},
        422: {"description": "invalid input, naming the field and the reason"},
        503: {"description": "read-only (migration cutover) or a transient failure"},
    }

    @api.post("/accounts", status_code=201, response_model=CommandOut, responses=command_responses)
    async def open_account(body: cmd.OpenAccount, options: Options) -> JSONResponse:
        """Open an account."""
        return await execute(body, options, 201)

    @api.post(
        "/accounts/{account_id}/deposits", status_code=201, response_model=CommandOut, responses=command_responses
    )
    async def deposit(account_id: Id, body: Amount, options: Options) -> JSONResponse:
        """Deposit money."""
        command = cmd.Deposit(account_id=account_id, currency=body.currency, amount=body.amount)
        return await execute(command, options, 201)

    @api.post(
        "/accounts/{account_id}/withdrawals",
        status_code=201,
        response_model=CommandOut,
        responses=command_responses,
    )
    async def withdraw(account_id: Id, body: Amount, options: Options) -> JSONResponse:
        """Withdraw money (never below zero)."""
        command = cmd.Withdraw(account_id=account_id, currency=body.currency, amount=body.amount)
        return await execute(command, options, 201)

    @api.post("/accounts/{account_id}/close", status_code=201, response_model=CommandOut, responses=command_responses)
    async def close_account(account_id: Id, options: Options) -> JSONResponse:
        """Close an account whose balance is zero."""
        return await execute(cmd.CloseAccount(account_id=account_id), options, 201)

    @api.post("/transfers", status_code=202, response_model=CommandOut, responses=command_responses)
    async def transfer(body: cmd.TransferMoney, options: Options) -> JSONResponse:
        """Request a transfer; the worker debits, credits, or compensates (see GET /transfers/{id})."""
        response = await execute(body, options, 202)
        if response.status_code == 202:
            response.headers["Location"] = f"/transfers/{body.transfer_id}"
        return response

    @api.get("/accounts/{account_id}")
    async def account(
        account_id: Id,
        as_of: Annotated[datetime | None, Query(description="RFC 3339 moment (with offset)")] = None,
        at_version: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        """The account from its events: now, as of a moment, or at a version (always current)."""
        if as_of is not None and as_of.tzinfo is None:
            raise ValidationError("as_of must carry a timezone, for example 2026-11-27T10:00:00Z")
        return await run_in_threadpool(ledger.account_state, account_id, as_of, at_version)

    @api.get("/accounts/{account_id}/balance")
    async def balance(
        account_id: Id,
        as_of: Annotated[datetime | None, Query(description="RFC 3339 moment (with offset)")] = None,
    ) -> dict[str, Any]:
        """The balance from the read model, or as of a moment (from the events)."""
        if as_of is None:
            return await run_in_threadpool(ledger.balance, account_id)
        if as_of.tzinfo is None:
            raise ValidationError("as_of must carry a timezone, for example 2026-11-27T10:00:00Z")
        found = await run_in_threadpool(ledger.account_state, account_id, as_of, None)
        return {**found, "as_of": as_of.isoformat()}

    @api.get("/accounts/{account_id}/history")
    async def history(account_id: Id, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        """The account's events, newest first (read model)."""
        return await run_in_threadpool(ledger.history, account_id, limit)

    @api.get("/daily-totals/{day}")
    async def daily_totals(day: date) -> list[dict[str, Any]]:
        """Money in, money out and transfers of a day (UTC), per currency (read model)."""
        return await run_in_threadpool(ledger.daily_totals, day)

    @api.get("/transfers/{transfer_id}")
    async def transfer_status(transfer_id: Id) -> dict[str, Any]:
        """Where a transfer stands (read model)."""
        return await run_in_threadpool(ledger.transfer, transfer_id)

    @api.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        """Prometheus metrics (text exposition format); the runners' gauges read the stores."""
        text = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    app = FastAPI(
        title="skyferry",
        version="0.1.0",
        description="The skyferry ledger: an event-sourced CQRS application.",
        # The spec is served by the authorized route below: only health answers without a token.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        """The OpenAPI document (bearer token required, like everything but health)."""
        return JSONResponse(app.openapi())

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, tags=["health"], responses={503: {"model": Readiness}})
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: the stores answer and the in-process worker is up.  With the token: why, and each runner."""
        detailed = bearer_matches(request.headers.get("authorization"), token)
        status, body = await run_in_threadpool(readiness, ledger, detailed)
        return JSONResponse(body, status_code=status)

    app.state.token = token
    app.include_router(api)
    install(app)
    # Added innermost first: metrics see every answer, the token is checked before the body.
    app.add_middleware(BodyMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(BearerAuthMiddleware, token=token, public=PUBLIC_PATHS)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
