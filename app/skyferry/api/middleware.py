"""ASGI middleware of the API, outermost first: request metrics, the bearer token, the request body.

The token is checked before anything else is looked at (a malformed body without a token
is 401, not 400); then the body: at most ``limit`` bytes (413), sent as JSON (415 naming the
``Content-Type`` header) and well-formed JSON (400); only then does the route validate it (422).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def reply(
    send: Send, status: int, error: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with the API's one error body (see :mod:`skyferry.api.errors`) from inside a middleware."""
    body = orjson.dumps({"error": error, "message": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def bearer_matches(authorization: str | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <token>``, compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    # compare_digest runs on every request, even without a token, so timing tells nothing.
    matches = hmac.compare_digest(given.strip().encode(), token)
    return matches and scheme.lower() == "bearer"


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


class BearerAuthMiddleware:
    """Answer 401 to a request without ``Authorization: Bearer <token>``, before anything else is read.

    Paths in ``public`` (health) pass without a token.
    """

    def __init__(self, app: ASGIApp, token: bytes, public: frozenset[str]) -> None:
        self.app = app
        self.token = token
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.public:
            await self.app(scope, receive, send)
            return
        if not bearer_matches(_header(scope, b"authorization"), self.token):
            challenge = [(b"www-authenticate", b'Bearer realm="skyferry"')]
            await reply(send, 401, "unauthorized", "missing or wrong bearer token", challenge)
            return
        await self.app(scope, receive, send)


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` names JSON (``application/json``, ``application/<x>+json``; parameters allowed)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodyMiddleware:
    """The request body: 413 over ``limit`` bytes, before any of it reaches a handler; 415 if
    not sent as JSON; 400 if not well-formed JSON.

    A declared ``Content-Length`` over the limit is refused without reading; a streamed
    (chunked) body is counted as it arrives and refused once it passes the limit.  A
    non-empty body must come with ``Content-Type: application/json``: a missing or other
    type gets 415 with a message naming the header (``curl -d`` sends a form type).  It must
    then be one JSON text, strictly (RFC 8259, in UTF-8): no ``NaN`` or ``Infinity``, no
    number out of a double's range, no lone surrogate, at most 1,024 levels deep; anything
    else is 400 ``malformed_json`` naming what is wrong and where (line, column).  Every
    route gets that answer, including those that take no body.  The body (at most ``limit``
    bytes) is then handed to the app in one piece.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared_length = _header(scope, b"content-length")
        if declared_length is not None:
            try:
                declared = int(declared_length)
            except ValueError:
                declared = self.limit + 1
            if declared > self.limit:
                await self._too_large(send)
                return
        # Read the body here (it is small: the limit), so that a streamed body over the
        # limit is refused with 413 before any handler runs.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(message, receive), send)
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.limit:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        content_type = _header(scope, b"content-type")
        if received and not is_json(content_type):
            given = f"not {content_type!r}" if content_type else "and it is missing"
            await reply(
                send,
                415,
                "unsupported_media_type",
                f"the request body must be JSON: send the header Content-Type: application/json ({given})",
            )
            return
        body = b"".join(chunks)
        if received:
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError as e:
                await reply(send, 400, "malformed_json", f"the request body is not valid JSON: {e}")
                return
        whole: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay(whole, receive), send)

    async def _too_large(self, send: Send) -> None:
        await reply(send, 413, "payload_too_large", f"request body is larger than the limit of {self.limit} bytes")


def _replay(first: Message, receive: Receive) -> Receive:
    """A ``receive`` that returns ``first`` once, then defers to the server's."""
    pending = [first]

    async def replaying_receive() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replaying_receive


class Metrics:
    """The API's Prometheus metrics, in a registry of their own (one per app instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "skyferry_http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "skyferry_http_request_seconds",
            "HTTP request latency by method and route",
            ["method", "route"],
            registry=self.registry,
        )
        self.commands = Counter(
            "skyferry_commands",
            "Commands handled, by command type and outcome",
            ["command", "outcome"],
            registry=self.registry,
        )


class MetricsMiddleware:
    """Count requests and time them per route template (not per raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
