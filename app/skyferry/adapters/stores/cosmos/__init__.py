"""Event store and view store on Azure Cosmos DB for NoSQL (``azure-cosmos``).

URL::

    cosmos://ACCOUNT/DATABASE/CONTAINER[?views=NAME][&endpoint=URL][&key=KEY][&verify=false]
        [&sweep_after=SECONDS][&lock_timeout=SECONDS]

* ``ACCOUNT`` -- the Cosmos DB account; the endpoint is ``https://ACCOUNT.documents.azure.com:443/``.
* ``DATABASE`` / ``CONTAINER`` -- the database and the events container (partition key
  :data:`EVENTS_PARTITION_KEY_PATH`).  The containers are created by the infrastructure
  (``providers/azure``), never by the adapter: a missing one is a ``ConfigurationError``.
* ``views`` -- the view-store container (partition key :data:`VIEWS_PARTITION_KEY_PATH`),
  default ``CONTAINER-views``.
* ``endpoint`` -- another endpoint, *for tests and local use* (the emulator).
* ``key`` -- an account key, *for tests and local use*; without it the adapter signs in
  with ``DefaultAzureCredential`` (the managed identity on Azure), as the account has
  local (key) auth disabled.
* ``verify=false`` -- accept the emulator's self-signed certificate, *for tests only*.
* ``sweep_after`` -- how old a commit without its slot in the global log must be before
  ``read_all`` slots it itself (its writer presumed dead), default :data:`DEFAULT_SWEEP_AFTER`.
* ``lock_timeout`` -- how old a view commit's locks must be before another writer presumes
  that commit dead and rolls it back, default :data:`LOCK_TIMEOUT_SECONDS`.

Throttling (429) is retried after the server's ``x-ms-retry-after-ms``, up to
``MAX_THROTTLE_RETRIES`` times, then raised as ``TransientError``.

The package
-----------
``layout`` holds what is stored where (imported by the infrastructure), ``client`` the
connection to Cosmos DB (URL, retries, error translation), ``events`` the event store and
``views`` the view store.  This module re-exports the names the registry, the providers
and the tests use; names with a leading underscore are the package's own.
"""

from __future__ import annotations

from skyferry.adapters.stores._commit import LOCK_TIMEOUT_SECONDS
from skyferry.adapters.stores.cosmos.client import (
    DEFAULT_SWEEP_AFTER,
    MAX_THROTTLE_RETRIES,
    CosmosLocation,
    call,
)
from skyferry.adapters.stores.cosmos.events import LAST_SLOTS, CosmosEventStore
from skyferry.adapters.stores.cosmos.layout import (
    EVENTS_PARTITION_KEY_PATH,
    INLINE_LIMIT,
    LOG_PARTITION,
    MAX_BATCH_OPERATIONS,
    VIEWS_PARTITION,
    VIEWS_PARTITION_KEY_PATH,
    views_container_name,
)
from skyferry.adapters.stores.cosmos.views import ABORTED_RECORD_SECONDS, CosmosViewStore
from skyferry.core.ports import StreamState

__all__ = [
    "ABORTED_RECORD_SECONDS",
    "DEFAULT_SWEEP_AFTER",
    "EVENTS_PARTITION_KEY_PATH",
    "INLINE_LIMIT",
    "LAST_SLOTS",
    "LOCK_TIMEOUT_SECONDS",
    "LOG_PARTITION",
    "MAX_BATCH_OPERATIONS",
    "MAX_THROTTLE_RETRIES",
    "VIEWS_PARTITION",
    "VIEWS_PARTITION_KEY_PATH",
    "CosmosEventStore",
    "CosmosLocation",
    "CosmosViewStore",
    "StreamState",
    "call",
    "views_container_name",
]
