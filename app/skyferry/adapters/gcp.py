"""What the Google Cloud adapters share: error translation and retry with backoff.

Every call into a Google SDK made by the ``firestore://``, ``pubsub://`` and ``gs://``
adapters goes through :func:`call`, which retries the errors Google documents as
retryable (contention, deadline exceeded, unavailable, throttling) with exponential
backoff and jitter, then raises :class:`~skyferry.core.errors.TransientError`; and turns the
errors retrying cannot fix (missing credentials, permission denied, a missing project,
database, topic or bucket) into :class:`~skyferry.core.errors.ConfigurationError` naming what
is missing.  The original error is always chained (``raise ... from e``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Final, TypeVar

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from skyferry.core.errors import ConfigurationError, SkyferryError, TransientError, ValidationError

T = TypeVar("T")

RETRYABLE: Final[tuple[type[Exception], ...]] = (
    gexc.Aborted,
    gexc.DeadlineExceeded,
    gexc.ServiceUnavailable,
    gexc.ResourceExhausted,
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.GatewayTimeout,
    gexc.RetryError,
    auth_exc.TransportError,
)
"""Errors after which the same call may succeed (Google's retry guidance)."""

ATTEMPTS: Final = 6
"""Tries before giving up with ``TransientError`` (about 6 s of backoff in all)."""

_TOO_LARGE: Final = ("exceeds maximum size", "larger than max", "payload size exceeds", "too big", "too large")
"""How Google's services and gRPC say a request is over a size limit (the emulator answers
429 RESOURCE_EXHAUSTED, like throttling): retrying the same request cannot help."""


def too_large(error: BaseException) -> bool:
    """Whether ``error`` (or the last error of the SDK's own retries) refuses a request's size."""
    if isinstance(error, gexc.RetryError) and error.cause is not None:
        error = error.cause
    if not isinstance(error, gexc.ResourceExhausted | gexc.InvalidArgument | gexc.BadRequest):
        return False
    text = str(error).lower()
    return any(marker in text for marker in _TOO_LARGE)


def backoff_delay(attempt: int, base: float = 0.1, cap: float = 3.0) -> float:
    """Full-jitter exponential backoff: a random delay up to ``base * 2**attempt`` (capped)."""
    return random.uniform(0, min(cap, base * 2**attempt))


def translate(error: Exception, what: str) -> SkyferryError:
    """The skyferry error for a Google SDK error raised while doing ``what``.

    ``what`` names the resource (``"Firestore database projects/p/databases/(default)"``)
    so that a ``ConfigurationError`` says what is missing.
    """
    if isinstance(error, SkyferryError):
        return error
    if too_large(error):
        return ValidationError(f"{what}: the request is over the service's size limit (not retried): {error}")
    if isinstance(error, auth_exc.DefaultCredentialsError):
        return ConfigurationError(
            f"{what}: no Google credentials found (set GOOGLE_APPLICATION_CREDENTIALS, run on a "
            f"service account, or point the URL at an emulator for local use): {error}"
        )
    if isinstance(error, gexc.Unauthenticated | gexc.PermissionDenied | gexc.Forbidden):
        return ConfigurationError(f"{what}: the credentials are not allowed to do this: {error.message}")
    if isinstance(error, gexc.NotFound):
        return ConfigurationError(f"{what} does not exist (create it with the Pulumi stack): {error.message}")
    if isinstance(error, gexc.FailedPrecondition):
        return ConfigurationError(f"{what}: {error.message} (a missing index or database setting)")
    if isinstance(error, RETRYABLE):
        return TransientError(f"{what}: still failing after {ATTEMPTS} attempts: {error}")
    if isinstance(error, gexc.InvalidArgument | gexc.BadRequest):
        return ValidationError(f"{what}: rejected as invalid: {error.message}")
    if isinstance(error, gexc.GoogleAPICallError):
        return TransientError(f"{what}: unexpected error from Google: {error}")
    if isinstance(error, auth_exc.GoogleAuthError):
        return ConfigurationError(f"{what}: credentials problem: {error}")
    raise error


def call(fn: Callable[[], T], what: str, *, attempts: int = ATTEMPTS) -> T:
    """Run ``fn``, retrying retryable Google errors with backoff; translate the rest.

    ``fn`` must be safe to repeat (every caller in skyferry is idempotent: appends by
    event id, view commits by revision, archive puts by object name).
    """
    for attempt in range(attempts):
        try:
            return fn()
        except RETRYABLE as e:
            if attempt + 1 >= attempts or too_large(e):
                raise translate(e, what) from e
            time.sleep(backoff_delay(attempt))
        except (gexc.GoogleAPICallError, auth_exc.GoogleAuthError) as e:
            raise translate(e, what) from e
    raise AssertionError("unreachable")  # pragma: no cover
