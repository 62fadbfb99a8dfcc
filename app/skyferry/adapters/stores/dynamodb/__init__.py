"""DynamoDB event store and view store (``dynamodb://``), on one table.

URL
---
``dynamodb://TABLE?region=eu-west-1``

``TABLE``
    The table (created by ``providers/aws`` from :func:`table_spec`; tests and local use
    call :func:`create_table`).
``region``, ``profile``, ``attempts``
    See :mod:`skyferry.adapters.aws`.
``endpoint``
    A custom endpoint (moto server, DynamoDB Local): **for tests and local use**.

Requests (measured by ``tests/integration/adapters/test_dynamodb.py``)
----------------------------------------------------------------------
* append with an explicit expected version: 2 requests (``GetItem`` of the counter,
  ``TransactWriteItems``); with ``ANY``: 3 (plus a ``Query`` for the version).
  1,000 events in appends of 10 events: 200 requests; in appends of 49: 42.
* ``bulk_append`` in flight, 1,000 events over 50 streams: 1 ``GetItem`` (the counter, on
  the first call only), 1 ``TransactWriteItems`` taking the positions and 25 writing the
  parts (two whole streams each), up to ``in_flight`` at once.
* ``read_stream`` and ``read_all``: one ``Query`` per 1 MB page (or per ``limit``).
* views: ``get_many`` one ``BatchGetItem`` per 100 keys; ``commit`` one
  ``TransactWriteItems``; ``drop`` one ``Query`` page plus one ``BatchWriteItem`` per 25.

The package
-----------
``layout`` holds what is stored where (imported by the infrastructure), ``client`` the
connection to DynamoDB (URL, retries, error translation), ``events`` the event store and
``views`` the view store.  This module re-exports the names the registry, the providers
and the tests use; names with a leading underscore are the package's own.
"""

from __future__ import annotations

from skyferry.adapters.stores._commit import LOCK_TIMEOUT_SECONDS
from skyferry.adapters.stores.dynamodb.events import DynamoDBEventStore
from skyferry.adapters.stores.dynamodb.layout import (
    ALL,
    ATTRIBUTE_DEFINITIONS,
    GLOBAL_SECONDARY_INDEXES,
    IAM_ACTIONS,
    IAM_ACTIONS_BY_OPERATION,
    KEY_SCHEMA,
    MAX_APPEND_BYTES,
    MAX_APPEND_EVENTS,
    MAX_COMMIT_ITEMS,
    MAX_TRANSACTION_ITEMS,
    PARTITION_KEY,
    POSITION_INDEX,
    POSITION_INDEX_HASH,
    POSITION_INDEX_RANGE,
    SORT_KEY,
    WRITE_LIMITS,
    create_table,
    table_spec,
)
from skyferry.adapters.stores.dynamodb.views import DynamoDBViewStore

__all__ = [
    "ALL",
    "ATTRIBUTE_DEFINITIONS",
    "GLOBAL_SECONDARY_INDEXES",
    "IAM_ACTIONS",
    "IAM_ACTIONS_BY_OPERATION",
    "KEY_SCHEMA",
    "LOCK_TIMEOUT_SECONDS",
    "MAX_APPEND_BYTES",
    "MAX_APPEND_EVENTS",
    "MAX_COMMIT_ITEMS",
    "MAX_TRANSACTION_ITEMS",
    "PARTITION_KEY",
    "POSITION_INDEX",
    "POSITION_INDEX_HASH",
    "POSITION_INDEX_RANGE",
    "SORT_KEY",
    "WRITE_LIMITS",
    "DynamoDBEventStore",
    "DynamoDBViewStore",
    "create_table",
    "table_spec",
]
