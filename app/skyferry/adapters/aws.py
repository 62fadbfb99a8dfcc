"""What the AWS adapters share: URL options, boto3 clients, retries and error translation.

The three AWS adapters (``dynamodb://`` stores, ``sns+sqs://`` broker, ``s3://`` archive)
take the same query options in their URLs:

``region``
    The AWS region (else ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / the profile's region).
``endpoint``
    A custom endpoint URL, **for tests and local use** (moto server, LocalStack).
``profile``
    A named profile of the shared AWS config (else the default credential chain: the ECS
    task role in production).
``attempts``
    How many times a throttled or transient call is tried before ``TransientError``
    (default 8).

Credentials never appear in a URL.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from skyferry.core.errors import ConfigurationError, SkyferryError, TransientError
from skyferry.core.inflight import MAX_IN_FLIGHT

T = TypeVar("T")

DEFAULT_ATTEMPTS = 8

#: Error codes that mean "slow down or try again": retried with backoff, then TransientError.
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "InternalServerError",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionInProgressException",
        "KMSThrottlingException",
    }
)

#: Error codes that retrying cannot fix: a missing resource, credentials or permission.
CONFIGURATION_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredTokenException",
        "ExpiredToken",
        "AuthorizationError",
        "NoSuchBucket",
        "NotFound",
        "NotFoundException",
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "KMSAccessDeniedException",
        "KMSDisabledException",
    }
)


@dataclass(frozen=True, slots=True)
class AwsOptions:
    """The options of an AWS adapter URL (see the module docstring)."""

    region: str | None = None
    endpoint: str | None = None
    profile: str | None = None
    attempts: int = DEFAULT_ATTEMPTS
    extra: Mapping[str, str] | None = None

    def option(self, name: str, default: str | None = None) -> str | None:
        """An adapter-specific query option."""
        return (self.extra or {}).get(name, default)


def parse_options(url: str) -> tuple[str, str, AwsOptions]:
    """Split ``scheme://NETLOC/PATH?options`` into ``(netloc, path, options)``."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    try:
        attempts = int(query.pop("attempts", DEFAULT_ATTEMPTS))
    except ValueError as e:
        raise ConfigurationError(f"{parts.scheme}:// URL option attempts must be an integer") from e
    if attempts < 1:
        raise ConfigurationError(f"{parts.scheme}:// URL option attempts must be at least 1")
    options = AwsOptions(
        region=query.pop("region", None) or None,
        endpoint=query.pop("endpoint", None) or None,
        profile=query.pop("profile", None) or None,
        attempts=attempts,
        extra=query,
    )
    return parts.netloc, parts.path.lstrip("/"), options


_session_lock = threading.Lock()


def make_client(service: str, options: AwsOptions, **config: Any) -> Any:
    """A boto3 client for ``service``; raises ConfigurationError when no region is known.

    ``config`` adds botocore ``Config`` fields (``s3={"addressing_style": "path"}``).

    botocore's own retries are kept to one attempt: :func:`call` retries with jittered
    backoff and turns the last failure into ``TransientError``.
    """
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ProfileNotFound
    except ImportError as e:  # pragma: no cover - the aws extra is installed in tests
        raise ConfigurationError("the AWS adapters need boto3: install skyferry with the 'aws' extra") from e
    try:
        # boto3's default session is not thread-safe to create clients from.
        with _session_lock:
            session: Any = boto3.session.Session(profile_name=options.profile, region_name=options.region)
        region = session.region_name
        if not region:
            raise ConfigurationError(f"no AWS region for {service}: add ?region=... to the URL or set AWS_REGION")
        settings = Config(
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=MAX_IN_FLIGHT,  # one per write in flight, up to --concurrency's most
            **config,
        )
        with _session_lock:
            return session.client(service, region_name=region, endpoint_url=options.endpoint, config=settings)
    except ProfileNotFound as e:
        raise ConfigurationError(f"AWS profile {options.profile!r} does not exist") from e
    except BotoCoreError as e:
        raise ConfigurationError(f"cannot build the AWS {service} client: {e}") from e


def error_code(error: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (empty for anything else)."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def translate(error: Exception, what: str) -> SkyferryError | None:
    """The skyferry error for a boto error (``None`` when it must be handled by the caller).

    Retryable errors become ``TransientError``; missing credentials, regions, resources and
    permissions become ``ConfigurationError`` naming ``what``.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return ConfigurationError(
            f"{what}: no AWS credentials found (use the task role, a profile or AWS_ACCESS_KEY_ID)"
        )
    if isinstance(error, NoRegionError):
        return ConfigurationError(f"{what}: no AWS region (add ?region=... or set AWS_REGION)")
    if isinstance(error, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        return TransientError(f"{what}: cannot reach AWS: {error}")
    if isinstance(error, ClientError):
        code = error_code(error)
        if code in RETRYABLE_CODES:
            return TransientError(f"{what}: {code} after retries: {error}")
        if code in CONFIGURATION_CODES:
            return ConfigurationError(f"{what}: {code}: {error}")
    return None


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is throttling or a transient failure worth another attempt."""
    from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

    if isinstance(error, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        return True
    return isinstance(error, ClientError) and error_code(error) in RETRYABLE_CODES


def backoff(attempt: int, base: float = 0.05, cap: float = 5.0) -> float:
    """Full-jitter exponential backoff for ``attempt`` (1-based)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def call(fn: Callable[..., T], what: str, attempts: int = DEFAULT_ATTEMPTS, **kwargs: Any) -> T:
    """Call ``fn(**kwargs)``, retrying throttling and transient errors with backoff.

    After ``attempts`` tries the last failure is raised as ``TransientError``; missing
    resources and credentials raise ``ConfigurationError`` at once; any other
    ``ClientError`` is re-raised unchanged for the caller to interpret.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(1, attempts + 1):
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as e:
            if is_retryable(e) and attempt < attempts:
                time.sleep(backoff(attempt))
                continue
            translated = translate(e, what)
            if translated is not None:
                raise translated from e
            raise
    raise AssertionError("unreachable")  # pragma: no cover
