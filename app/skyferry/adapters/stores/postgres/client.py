"""The connection of the ``postgresql://`` stores: URL, connection pool, schema migration
and error translation.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import unquote, urlunsplit

import orjson
import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from skyferry.adapters.registry import redact, split_url
from skyferry.adapters.stores.postgres.layout import (
    _SCHEMA_NAME,
    DEFAULT_SCHEMA,
    MIGRATIONS,
    SCHEMA_VERSION,
)
from skyferry.core.errors import (
    ConfigurationError,
    SkyferryError,
    TransientError,
    ValidationError,
)

_OWN_PARAMS: Final = frozenset({"schema", "pool_min", "pool_max"})


class PostgresDatabase:
    """One schema in one PostgreSQL database, reached through a connection pool.

    Shared by the event store and the view store of one URL.  ``client`` may be a
    ready ``psycopg_pool.ConnectionPool`` (its connections must use autocommit, and should
    be set up by :func:`configure_connection`); the schema is still created or migrated on
    first use.
    """

    def __init__(self, url: str, *, client: ConnectionPool | None = None, existing: bool = False) -> None:
        parts = split_url(url)  # its port is read below
        self.existing = existing
        if parts.scheme.lower() not in {"postgresql", "postgres"}:
            raise ConfigurationError(f"not a postgresql:// URL: {redact(url)!r}")
        # Read as libpq reads a URI: percent-decoded, "+" kept (parse_qsl would make it a space).
        pairs = [pair.partition("=") for pair in parts.query.split("&") if pair]
        params = {unquote(key): unquote(value) for key, _, value in pairs}
        self.schema = params.get("schema", DEFAULT_SCHEMA)
        if not _SCHEMA_NAME.match(self.schema):
            raise ConfigurationError(
                f"schema={self.schema!r} in {redact(url)!r}: use 1 to 63 lower-case letters, digits or _, "
                "not starting with a digit"
            )
        try:
            self.pool_min = int(params.get("pool_min", "1"))
            self.pool_max = int(params.get("pool_max", "10"))
        except ValueError as e:
            raise ConfigurationError(f"pool_min and pool_max in {redact(url)!r} must be integers") from e
        if not 0 <= self.pool_min <= self.pool_max or self.pool_max < 1:
            raise ConfigurationError(f"need 0 <= pool_min <= pool_max and pool_max >= 1 in {redact(url)!r}")
        # libpq's parameters go on as they were written
        libpq = [key + sep + value for key, sep, value in pairs if unquote(key) not in _OWN_PARAMS]
        if "connect_timeout" not in params:
            libpq.append("connect_timeout=10")
        self.conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, "&".join(libpq), ""))
        self.url = redact(url)
        self.identity = (
            "postgresql",
            parts.hostname or "",
            str(parts.port or 5432),
            parts.path.lstrip("/") or unquote(parts.username or ""),
            self.schema,
        )
        self.schema_sql = sql.Identifier(self.schema)
        self._pool = client
        self._given_pool = client is not None
        self._ready = False
        self._lock = threading.Lock()
        self._closed = False

    # -- life cycle ------------------------------------------------------------------

    def pool(self) -> ConnectionPool:
        """The connection pool, opened (and the schema migrated) on first call."""
        if self._ready and self._pool is not None:
            return self._pool
        with self._lock:
            if self._closed:
                raise ConfigurationError(f"{self.url}: the store is closed")
            if not self._ready:
                self._open()
            assert self._pool is not None
            return self._pool

    def _open(self) -> None:
        if self._pool is None:
            with self.connect() as conn:
                self._prepare(conn)
            pool = ConnectionPool(
                self.conninfo,
                min_size=self.pool_min,
                max_size=self.pool_max,
                kwargs={"autocommit": True},
                configure=configure_connection,
                open=False,
                num_workers=1,
                name=f"skyferry-{self.schema}",
            )
            try:
                pool.open(wait=True, timeout=30)
            except PoolTimeout as e:
                pool.close()
                raise TransientError(f"{self.url}: could not fill the connection pool") from e
            self._pool = pool
        else:
            with self._pool.connection() as conn:
                self._prepare(conn)
        self._ready = True

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection outside the pool (errors translated)."""
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
        except psycopg.ProgrammingError as e:
            raise ConfigurationError(f"{self.url}: invalid PostgreSQL connection string: {e}") from e
        except psycopg.OperationalError as e:
            raise connection_error(self.url, e) from e
        configure_connection(conn)
        return conn

    def close(self) -> None:
        """Close the pool (a pool handed in by the caller is left open)."""
        with self._lock:
            self._closed = True
            if self._pool is not None and not self._given_pool:
                self._pool.close()

    # -- schema ----------------------------------------------------------------------

    def migrate(self, conn: psycopg.Connection[Any]) -> int:
        """Create or migrate the schema to :data:`SCHEMA_VERSION`; return the version found."""
        with translate(self.url, f"migrating schema {self.schema!r}"):
            found = self._version(conn)
            if found == SCHEMA_VERSION:
                return found
            if found > SCHEMA_VERSION:
                raise ConfigurationError(self._too_new(found))
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('skyferry-migrate'), hashtext(%s))", [self.schema])
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self.schema_sql))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {}.schema_version ("
                        " version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(self.schema_sql)
                )
                found = self._version(conn)
                if found > SCHEMA_VERSION:
                    raise ConfigurationError(self._too_new(found))
                for step in range(found, SCHEMA_VERSION):
                    conn.execute(sql.SQL(MIGRATIONS[step]).format(s=self.schema_sql))
                    conn.execute(
                        sql.SQL("INSERT INTO {}.schema_version (version) VALUES (%s)").format(self.schema_sql),
                        [step + 1],
                    )
            return found

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        if self.existing:
            self.require(conn)
        else:
            self.migrate(conn)

    def require(self, conn: psycopg.Connection[Any]) -> None:
        """Check, creating nothing, that the schema holds a store of this version (``existing``)."""
        with translate(self.url, f"reading schema {self.schema!r}"):
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema]).fetchone() is None:
                raise ConfigurationError(
                    f"{self.url}: the database has no schema {self.schema!r} (a store to read is never created)"
                )
            found = self._version(conn)
        if found == 0:
            raise ConfigurationError(f"{self.url}: schema {self.schema!r} holds no skyferry store (no schema_version)")
        if found > SCHEMA_VERSION:
            raise ConfigurationError(self._too_new(found))
        if found < SCHEMA_VERSION:
            raise ConfigurationError(
                f"{self.url}: schema {self.schema!r} is at version {found}, older than {SCHEMA_VERSION}; "
                "a store opened to be read is never migrated: run skyferry worker (or serve) on it once"
            )

    def _version(self, conn: psycopg.Connection[Any]) -> int:
        exists = conn.execute(
            "SELECT to_regclass(format('%%I.schema_version', %s::text)) IS NOT NULL", [self.schema]
        ).fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_version").format(self.schema_sql)
        ).fetchone()
        return int(row[0]) if row else 0

    def _too_new(self, found: int) -> str:
        return (
            f"{self.url}: schema {self.schema!r} is at version {found}, but this skyferry knows versions up to "
            f"{SCHEMA_VERSION}; upgrade skyferry (or point schema= at another schema)"
        )

    def table(self, name: str) -> sql.Composed:
        """The qualified name of one of the schema's tables."""
        return sql.SQL("{}.{}").format(self.schema_sql, sql.Identifier(name))

    @contextlib.contextmanager
    def connection(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; psycopg and pool errors are translated (see :func:`translate`)."""
        pool = self.pool()
        with translate(self.url, what):
            try:
                with pool.connection(timeout=30) as conn:
                    yield conn
            except PoolTimeout as e:
                raise TransientError(f"{self.url}: no database connection available for {what}") from e
            except psycopg.OperationalError:
                # After a server restart every idle connection is dead: test them all now
                # (replacing the broken ones), so that the caller's retry gets a live one.
                with contextlib.suppress(Exception):
                    pool.check()
                raise


def configure_connection(conn: psycopg.Connection[Any]) -> None:
    """Session settings every connection gets: UTC timestamps, orjson for JSON, and the
    planner's cost of a random page read at 1.1.

    PostgreSQL's default of 4.0 prices a random read as on a spinning disk.  With it, a
    stream the statistics put at a few rows (every stream of a table not analyzed yet)
    or whose events lie scattered among other streams' is read by a bitmap scan of its
    ``(stream_id, version)`` index and then sorted: the first row comes only once the
    last has been read and sorted, so the client cannot decode one part of a long read
    while the server produces the next, and the sort is work of its own.  At 1.1, the
    usual setting for the SSD storage that managed PostgreSQL services run on, the plan
    is the index scan in version order.  A lower cost only makes index paths cheaper, so
    no statement of the stores can turn to a sequential scan (``docs/performance.md``,
    "Stream reads plan an index scan").
    """
    set_json_loads(orjson.loads, conn)
    set_json_dumps(orjson.dumps, conn)
    conn.execute("SET TIME ZONE 'UTC'; SET random_page_cost = 1.1")


def connection_error(url: str, e: psycopg.OperationalError) -> SkyferryError:
    """Classify a failure to connect: wrong settings (ConfigurationError) or not reachable (TransientError)."""
    text = str(e)
    lowered = text.lower()
    if any(
        marker in lowered
        for marker in (
            "password authentication failed",
            "authentication failed",
            "no password supplied",
            "does not exist",
            "no pg_hba.conf entry",
            "permission denied",
            "invalid",
        )
    ):
        return ConfigurationError(f"{url}: PostgreSQL refused the connection settings: {text.strip()}")
    return TransientError(f"{url}: PostgreSQL is not reachable: {text.strip()}")


@contextlib.contextmanager
def translate(url: str, what: str) -> Iterator[None]:
    """Translate psycopg errors raised inside the block into :mod:`skyferry.core.errors`."""
    try:
        yield
    except SkyferryError:
        raise
    except psycopg.errors.InsufficientPrivilege as e:
        raise ConfigurationError(f"{url}: the database user lacks a privilege for {what}: {e}") from e
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as e:
        raise ConfigurationError(f"{url}: a table is missing while {what} (was the schema dropped?): {e}") from e
    except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as e:
        raise TransientError(f"{url}: {what} collided with another transaction; retry: {e}") from e
    except psycopg.OperationalError as e:
        raise TransientError(f"{url}: the database connection failed while {what}; retrying is safe: {e}") from e
    except psycopg.DataError as e:
        raise ValidationError(f"{url}: PostgreSQL rejected a value while {what}: {e}") from e
    except psycopg.Error as e:
        raise SkyferryError(f"{url}: PostgreSQL error while {what}: {e}") from e


def _rendered(query: sql.Composable) -> bytes:
    """``query`` as the bytes psycopg sends.  Only for statements whose identifiers are
    schema and table names, which are ASCII (see ``_SCHEMA_NAME``): rendered without a
    connection, they are the same in every client encoding."""
    return query.as_bytes(None)
