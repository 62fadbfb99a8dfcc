"""The Cosmos DB client of the ``cosmos://`` stores: the URL, one SDK client per thread,
retries and error translation.

Throttling (429) is retried after the server's ``x-ms-retry-after-ms``, up to
``MAX_THROTTLE_RETRIES`` times, then raised as ``TransientError``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import requests.utils
from azure.core.exceptions import AzureError
from azure.cosmos import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import (
    CosmosBatchOperationError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from skyferry.adapters import azure
from skyferry.adapters.registry import redact
from skyferry.adapters.stores._commit import LOCK_TIMEOUT_SECONDS
from skyferry.adapters.stores.cosmos.layout import (
    views_container_name,
)
from skyferry.core.errors import ConfigurationError, TransientError

MAX_THROTTLE_RETRIES: Final = 8
SERVICE: Final = "Cosmos DB"
DATA_ROLE: Final = "Cosmos DB Built-in Data Contributor"
"""The data-plane role the stores need on the account (``providers/azure`` assigns it by id)."""
DEFAULT_SWEEP_AFTER: Final = 30.0


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class CosmosLocation:
    """A parsed ``cosmos://`` URL."""

    account: str
    database: str
    container: str
    views: str
    endpoint: str
    key: str | None
    verify: bool
    sweep_after: float
    lock_timeout: float = LOCK_TIMEOUT_SECONDS

    @classmethod
    def parse(cls, url: str) -> CosmosLocation:
        """Parse ``url``; raises ``ConfigurationError`` naming what is missing."""
        parts = urlsplit(url)
        if parts.scheme != "cosmos":
            raise ConfigurationError(f"not a cosmos:// URL: {redact(url)!r}")
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not parts.hostname:
            raise ConfigurationError(f"{redact(url)!r} names no Cosmos DB account (cosmos://ACCOUNT/DB/CONTAINER)")
        if len(path) != 2:
            raise ConfigurationError(
                f"{redact(url)!r} must name a database and a container: cosmos://ACCOUNT/DATABASE/CONTAINER"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        account = parts.hostname
        return cls(
            account=account,
            database=path[0],
            container=path[1],
            views=query.get("views", views_container_name(path[1])),
            endpoint=query.get("endpoint", f"https://{account}.documents.azure.com:443/"),
            key=query.get("key"),
            verify=query.get("verify", "true").lower() not in {"false", "0", "no"},
            sweep_after=_seconds(query, "sweep_after", DEFAULT_SWEEP_AFTER),
            lock_timeout=_seconds(query, "lock_timeout", LOCK_TIMEOUT_SECONDS),
        )

    def client(self, **options: Any) -> CosmosClient:
        """A client for this account (``options``: more of the SDK's client options): building
        one reads the account (one request).

        The environment's proxy settings (``HTTPS_PROXY``, ``NO_PROXY``, ...) and CA bundle
        (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) are read here, once: by default the
        HTTP library reads them again on every request, scanning the whole environment, a
        tenth of the client's CPU per Cosmos DB request here, more in a pod whose
        environment lists every service of its namespace.  The connections of every client
        with the same certificate check share one TLS context (:func:`azure.transport`)."""
        verify, proxies = self.connection_settings()
        return CosmosClient(
            self.endpoint,
            credential=azure.credential(self.key, scheme="cosmos"),
            connection_verify=verify,
            raw_request_hook=_batch_partition_keys,
            transport=azure.transport(),
            proxies=proxies,
            **options,
        )

    def connection_settings(self) -> tuple[bool | str, dict[str, str]]:
        """The certificate check (``False``, ``True`` or a CA bundle's path) and the proxies
        the environment gives this endpoint now."""
        verify: bool | str = self.verify
        if verify is True:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        proxies: dict[str, str] = requests.utils.get_environ_proxies(self.endpoint)
        return verify, proxies


def _seconds(query: dict[str, str], name: str, default: float) -> float:
    """The URL option ``name``: a number of seconds, 0 or more."""
    raw = query.get(name)
    if raw is None:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ConfigurationError(f"cosmos:// URL option {name} must be a number of seconds, 0 or more, not {raw!r}")
    return seconds


def _batch_partition_keys(request: Any) -> None:
    """Copy a batch's partition key into each operation, as the JavaScript SDK does.

    The service reads the batch's header; the emulator reads each operation's field.
    """
    http = request.http_request
    header = http.headers.get("x-ms-documentdb-partitionkey")
    if not header or http.headers.get("x-ms-cosmos-is-batch-request", "").lower() != "true":
        return
    operations = json.loads(http.body)
    for operation in operations:
        operation.setdefault("partitionKey", header)
    http.set_json_body(operations)


def _retry_after(error: CosmosHttpResponseError) -> float:
    headers = error.headers or {}
    raw = headers.get("x-ms-retry-after-ms") or headers.get("x-ms-retry-after")
    try:
        return max(0.0, float(raw) / 1000.0) if raw is not None else 1.0
    except ValueError:
        return 1.0


_GRANT: Final = f"the {DATA_ROLE!r} role on the account"


def call(what: str, fn: Callable[[], _T], *, sleep: Callable[[float], None] = time.sleep) -> _T:
    """Run one SDK call: retry 429 after the server's retry-after, translate errors.

    Errors the caller handles itself (404, 409, 412) are re-raised unchanged.
    """
    for attempt in range(MAX_THROTTLE_RETRIES + 1):
        try:
            return fn()
        except (CosmosResourceNotFoundError, CosmosResourceExistsError):
            raise
        except CosmosBatchOperationError:
            raise
        except CosmosHttpResponseError as e:
            if e.status_code == 412:
                raise
            if e.status_code == 429:
                if attempt < MAX_THROTTLE_RETRIES:
                    sleep(_retry_after(e))
                    continue
                raise TransientError(f"Cosmos DB throttled {what} (429) {attempt + 1} times") from e
            if e.status_code in {408, 410, 449, 500, 502, 503} or e.status_code is None:
                raise TransientError(f"Cosmos DB failed {what} ({e.status_code}): {e.message}") from e
            translated = azure.translate(e, SERVICE, what, _GRANT)  # 401, 403
            if translated is not None:
                raise translated from e
            raise
        except AzureError as e:
            raise (azure.translate(e, SERVICE, what, _GRANT) or azure.failed(SERVICE, what, e)) from e
    raise AssertionError("unreachable")  # pragma: no cover


class _Clients:
    """The SDK clients of one account and credential, one per thread, shared by every store of
    this process that names them (see :func:`_clients`): an event store and a view store of one
    URL, as every process opens them, connect, shake hands and read the account once a thread,
    not once each, and a container is checked once for both.

    The SDK's client is not safe to share between threads: every call writes the shared
    ``client_connection.last_response_headers``, which the SDK itself iterates, so
    concurrent calls fail now and then with "OrderedDict mutated during iteration" (the
    SDK's maintainers say those headers are not thread-safe).  So each thread gets its own
    client, built on its first call; a thread's client goes when the thread does.  Two
    stores used by one thread use its client one call after another, as one store does.
    ``given``: a client handed to one store, used by every thread as it is (the caller's
    choice), never shared nor closed here.
    """

    def __init__(self, location: CosmosLocation, key: tuple[Any, ...], given: CosmosClient | None = None) -> None:
        self.location = location
        self.key = key
        self._given = given
        self.users = 0
        self._owned: weakref.WeakSet[CosmosClient] = weakref.WeakSet()
        self._local = threading.local()
        self._checked: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def client(self) -> CosmosClient:
        """This thread's client, built on its first call (or the client given)."""
        if self._given is not None:
            return self._given
        client: CosmosClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = call(f"connecting to account {self.location.account}", self.location.client)
            with self._lock:
                self._owned.add(client)
        return client

    def checked(self, database: str, name: str) -> bool:
        """Whether the container was read once already through these clients."""
        with self._lock:
            return (database, name) in self._checked

    def mark_checked(self, database: str, name: str) -> None:
        """Remember that the container exists (read once through these clients)."""
        with self._lock:
            self._checked.add((database, name))

    def close(self) -> None:
        """Close every client built (the pool's last user is gone; a client given stays open)."""
        with self._lock:
            for client in list(self._owned):
                client.close()
            self._owned.clear()
            self._checked.clear()
            self._local = threading.local()

    @property
    def owned(self) -> int:
        """How many clients are open (for tests)."""
        with self._lock:
            return len(self._owned)


_POOLS: dict[tuple[Any, ...], _Clients] = {}
_POOLS_LOCK = threading.Lock()


def _clients(location: CosmosLocation) -> _Clients:
    """The shared clients of ``location``'s account and credential, with one more user.

    Keyed by everything that makes a client other: the location's class (whose ``client``
    builds it), the endpoint, the key, and the certificate check and proxies the environment
    gives now; the database and the containers are chosen per call, so they do not split
    the pool."""
    verify, proxies = location.connection_settings()
    key = (type(location), location.endpoint, location.key, verify, tuple(sorted(proxies.items())))
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = _Clients(location, key)
        pool.users += 1
        return pool


def _release(pool: _Clients) -> None:
    """One user fewer; the last closes the clients."""
    with _POOLS_LOCK:
        pool.users -= 1
        if pool.users > 0:
            return
        if _POOLS.get(pool.key) is pool:
            del _POOLS[pool.key]
    pool.close()


class _Containers:
    """The containers of one store, through the clients its account shares (:class:`_Clients`),
    each checked once on first use.  A client handed in is used by every thread as it is:
    the caller's choice."""

    def __init__(self, location: CosmosLocation, client: CosmosClient | None) -> None:
        self.location = location
        self._given = None if client is None else _Clients(location, (), client)
        self._pool: _Clients | None = None
        self._release: weakref.finalize[[_Clients], _Containers] | None = None
        self._local = threading.local()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Give up the shared clients (the last store of the account closes them; a client
        handed in stays open).  A later call takes them again."""
        with self._lock:
            release, self._pool, self._release = self._release, None, None
            self._local = threading.local()
        if self._given is not None:
            self._given.close()  # forgets the containers checked; the client stays open
        if release is not None:
            release()

    def _clients(self) -> _Clients:
        """The clients to call through: those of the client handed in, or the shared ones,
        taken on first use (a store dropped unclosed gives them up when it is collected)."""
        if self._given is not None:
            return self._given
        with self._lock:
            if self._pool is None:
                self._pool = _clients(self.location)
                self._release = weakref.finalize(self, _release, self._pool)
            return self._pool

    def get(self, name: str) -> ContainerProxy:
        local = self._local
        proxies: dict[str, ContainerProxy] | None = getattr(local, "proxies", None)
        if proxies is None:
            proxies = local.proxies = {}
        container = proxies.get(name)
        if container is not None:
            return container
        database = self.location.database
        clients = self._clients()
        container = clients.client().get_database_client(database).get_container_client(name)
        if not clients.checked(database, name):
            try:
                call(f"reading container {name}", container.read)
            except CosmosResourceNotFoundError as e:
                raise azure.missing(
                    f"Cosmos DB account {self.location.account!r}",
                    f"container {name!r} in database {database!r}",
                ) from e
            clients.mark_checked(database, name)
        proxies[name] = container
        return container
