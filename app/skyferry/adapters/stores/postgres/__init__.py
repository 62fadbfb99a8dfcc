"""PostgreSQL event store and view store: ``postgresql://`` (alias ``postgres://``).

URL fields::

    postgresql://USER:PASSWORD@HOST:PORT/DATABASE?schema=skyferry&pool_max=10&sslmode=require

* ``schema`` (default ``skyferry``): the PostgreSQL schema holding the tables; created
  and migrated on first use when the user may (``CREATE`` on the database).  Tests give
  each test its own schema.
* ``pool_min`` / ``pool_max`` (default 1 / 10): the connection pool's size.
* ``connect_timeout`` (default 10 s) and every other query parameter are libpq
  connection parameters, passed through unchanged (``sslmode``, ``application_name`` …)
  and read as libpq reads a URI: percent-decoded, so a space is ``%20`` and ``+`` is
  itself (``options=-c%20statement_timeout%3D5000``).

Both stores are thread-safe (a ``psycopg_pool.ConnectionPool``); no I/O happens until
first use.  Each connection sets ``TimeZone`` to UTC and ``random_page_cost`` to 1.1, so
that a stream is read by an index scan in version order (see ``configure_connection``).
Errors: a bad DSN, authentication failure, unknown database or missing privilege is a
:class:`ConfigurationError` naming the setting; an unreachable server, a dropped
connection or a pool timeout is a :class:`TransientError` (nothing is half-written:
every write is one transaction).

The package
-----------
``layout`` holds the schema (tables, migrations, positions), ``client`` the connection
(URL, pool, schema migration, error translation), ``rows`` the events as rows (read back,
and encoded for ``COPY``), ``events`` the event store and ``views`` the view store.  This
module re-exports the names the registry and the tests use; names with a leading
underscore are the package's own.
"""

from __future__ import annotations

from skyferry.adapters.stores.postgres.client import (
    PostgresDatabase,
    configure_connection,
    connection_error,
    translate,
)
from skyferry.adapters.stores.postgres.events import PostgresEventStore
from skyferry.adapters.stores.postgres.layout import (
    DEFAULT_SCHEMA,
    MIGRATIONS,
    SCHEMA_VERSION,
    decode_position,
    encode_position,
    prefix_end,
)
from skyferry.adapters.stores.postgres.views import PostgresViewStore

__all__ = [
    "DEFAULT_SCHEMA",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "PostgresDatabase",
    "PostgresEventStore",
    "PostgresViewStore",
    "configure_connection",
    "connection_error",
    "decode_position",
    "encode_position",
    "prefix_end",
    "translate",
]
