"""PostgreSQL event store and view store: ``postgresql://`` (alias ``postgres://``).

URL fields::

    postgresql://USER:PASSWORD@HOST:PORT/DATABASE?schema=skyferry&pool_max=10&sslmode=require

* ``schema`` (default ``skyferry``): the PostgreSQL schema holding the tables; created
  and migrated on first use when the user may (``CREATE`` on the database).  Tests give
  each test its own schema.
* ``pool_min`` / ``pool_max`` (default 1 / 10): the connection pool's size.
* ``connect_timeout`` (default 10 s) and every other query parameter are libpq
  connection parameters, passed through unchanged (``sslmode``, ``application_name`` …).

One schema holds both stores (``events``, ``views``, ``checkpoints``) and the
``schema_version`` table.  The adapter migrates an older schema forward under an
advisory lock (concurrent processes migrate once) and refuses, with a
:class:`ConfigurationError`, a schema that a newer skyferry has written.

**The sequence-gap problem and how it is solved.**  ``read_all`` orders events by a
``bigint`` identity column.  Sequence values are handed out when a row is *inserted*,
but become visible when its transaction *commits*; two writers can commit out of order,
so a reader tailing ``position > last_seen`` may see 11 before 10 commits, move its
checkpoint to 11, and never see 10.  This adapter serializes the *insert-and-commit*
phase of appends with a transaction-level advisory lock (``pg_advisory_xact_lock``,
one lock per schema), taken just before the ``INSERT`` and released by PostgreSQL only
after the commit is visible.  Positions therefore become visible in ascending order:
once a reader sees position *p*, every position below *p* is either visible or was
rolled back (a hole that is never filled).  Reads need no filtering and are not held
back by unrelated long transactions.

Cost: appends to one schema do their insert and commit one at a time (the version
check, validation and encoding stay concurrent, and the lock, insert and commit travel
in one pipelined round trip).  Write throughput of one schema is bounded by the commit
latency (with ``synchronous_commit=on``, the WAL flush); ``benchmarks/bench_postgres.py``
prints the figure beside unserialized raw inserts.  The alternative,
``xid8``/``pg_snapshot_xmin`` visibility filtering, lets writers commit in parallel but
makes every reader wait behind the oldest running transaction of the whole cluster
(one idle-in-transaction session anywhere stalls every relay); for a ledger whose write
rate is far below a commit per millisecond per schema, the lock is the simpler and
more predictable choice.

Both stores are thread-safe (a ``psycopg_pool.ConnectionPool``); no I/O happens until
first use.  Errors: a bad DSN, authentication failure, unknown database or missing
privilege is a :class:`ConfigurationError` naming the setting; an unreachable server, a
dropped connection or a pool timeout is a :class:`TransientError` (nothing is
half-written: every write is one transaction).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Self
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from skyferry.adapters.registry import redact
from skyferry.adapters.stores._common import encode_append
from skyferry.core.errors import (
    ConcurrencyError,
    ConfigurationError,
    SkyferryError,
    TransientError,
    ValidationError,
)
from skyferry.core.messages import (
    Event,
    NewEvent,
    encode_json,
    plainly_valid,
    utc_now,
    validate_stream_id,
)
from skyferry.core.ports import (
    ANY,
    FEATURE_BULK_APPEND,
    FEATURE_COUNT,
    FEATURE_TEMPORAL,
    FEATURE_TRANSACTIONS_ACROSS_STREAMS,
    AppendResult,
    Doc,
    ExpectedVersion,
    ViewChange,
    expected_as_int,
    resolve_conflict,
)

SCHEMA_VERSION: Final = 1
"""The newest schema version this code knows; an older schema is migrated to it."""

DEFAULT_SCHEMA: Final = "skyferry"
_OWN_PARAMS: Final = frozenset({"schema", "pool_min", "pool_max"})
_SCHEMA_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_POSITION_DIGITS: Final = 20
_ANY_RETRIES: Final = 50

# Each migration takes the schema from version n to n + 1; {s} is the quoted schema.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE {s}.events (
        position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id uuid NOT NULL,
        stream_id text COLLATE "C" NOT NULL,
        version integer NOT NULL,
        type text NOT NULL,
        schema_version integer NOT NULL,
        data json NOT NULL,
        metadata json NOT NULL,
        occurred_at timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL,
        CONSTRAINT events_id UNIQUE (id),
        CONSTRAINT events_stream_version UNIQUE (stream_id, version)
    );
    CREATE INDEX events_stream_heads ON {s}.events (stream_id) WHERE version = 1;
    CREATE TABLE {s}.views (
        collection text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value jsonb NOT NULL,
        revision integer NOT NULL,
        PRIMARY KEY (collection, key)
    );
    CREATE TABLE {s}.checkpoints (
        projection text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value text NOT NULL,
        PRIMARY KEY (projection, key)
    );
    """,
)


# ---------------------------------------------------------------------------------------
# Connection settings, pool, schema
# ---------------------------------------------------------------------------------------


class PostgresDatabase:
    """One schema in one PostgreSQL database, reached through a connection pool.

    Shared by the event store and the view store of one URL.  ``client`` may be a
    ready ``psycopg_pool.ConnectionPool`` (its connections must use autocommit); the
    schema is still created or migrated on first use.
    """

    def __init__(self, url: str, *, client: ConnectionPool | None = None, existing: bool = False) -> None:
        parts = urlsplit(url)
        self.existing = existing
        if parts.scheme.lower() not in {"postgresql", "postgres"}:
            raise ConfigurationError(f"not a postgresql:// URL: {redact(url)!r}")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
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
        libpq = {k: v for k, v in params.items() if k not in _OWN_PARAMS}
        libpq.setdefault("connect_timeout", "10")
        self.conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(libpq), ""))
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
    """Session settings every connection gets: UTC timestamps, orjson for JSON."""
    set_json_loads(orjson.loads, conn)
    set_json_dumps(orjson.dumps, conn)
    conn.execute("SET TIME ZONE 'UTC'")


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


def prefix_end(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (code point order).

    ``None`` when there is none (empty prefix, or only U+10FFFF characters).  With the
    ``"C"`` collation of the key columns, ``prefix <= key < prefix_end(prefix)`` is an index
    range scan of exactly the keys starting with ``prefix``.
    """
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    last = ord(stripped[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:  # surrogates cannot be stored: skip to the next scalar value
        last = 0xE000
    return stripped[:-1] + chr(last)


def encode_position(position: int) -> str:
    """The opaque position: zero-padded decimal, so that text order is numeric order."""
    return str(position).zfill(_POSITION_DIGITS)


def decode_position(position: str | None) -> int:
    """Inverse of :func:`encode_position` (``None`` is before the first event)."""
    if position is None:
        return 0
    try:
        return int(position)
    except ValueError as e:
        raise ValidationError(f"{position!r} is not a position of a PostgreSQL store") from e


# ---------------------------------------------------------------------------------------
# Event store
# ---------------------------------------------------------------------------------------

_COLUMNS: Final = (
    "id::text, stream_id, version, type, schema_version, data::text, metadata::text, occurred_at, recorded_at"
)


def _events(rows: Sequence[tuple[Any, ...]]) -> list[Event]:
    """Rows of :data:`_COLUMNS` as Events (sessions run in UTC, so timestamps come back in UTC).

    ``Event`` is a tuple: one ``tuple.__new__`` call per row builds it (the hot path of
    ``read_stream``, and so of loading an aggregate).
    """
    new, event_type, loads = _tuple_new, Event, orjson.loads
    return [  # all ten fields: tuple.__new__ fills in no default (read_stream gives no position)
        new(
            event_type,
            (event_id, stream_id, version, kind, schema, loads(data), loads(metadata), occurred, recorded, None),
        )
        for event_id, stream_id, version, kind, schema, data, metadata, occurred, recorded in rows
    ]


_tuple_new: Final = tuple.__new__
_COPY_BLOCK_ROWS: Final = 2000
_BEGIN: Final = b"BEGIN"
_COMMIT: Final = b"COMMIT"
_COPY_FROM: Final = 32
"""Appends of this many events or more go by binary COPY (see ``PostgresEventStore.append``)."""
_dumps: Final = orjson.dumps
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CANONICAL_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_COPY_SPECIAL: Final = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES: Final = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _copy_text(value: str) -> str:
    """``value`` escaped for COPY's text format (backslash, tab, newline, carriage return)."""
    return _COPY_SPECIAL.sub(lambda m: _COPY_ESCAPES[m.group()], value)


def _copy_moment(moment: Any) -> str:
    """A timestamp field as COPY text; naive datetimes never get here (validated first)."""
    if type(moment) is int:  # microseconds since the epoch, UTC (see Event)
        moment = _EPOCH + timedelta(0, 0, moment)
    return str(moment.isoformat())


def _checked(fields: tuple[Any, ...], e: Event, canonical_id: bool) -> tuple[bytes, bytes]:
    """Validate one event (``canonical_id``: whether its id is a canonical UUID string); return
    its data and metadata JSON in the encoding of :func:`encode_json`.

    The checks are those of :meth:`NewEvent.validate`, by its common case
    (:func:`~skyferry.core.messages.plainly_valid`); an event that fails any of them (or that
    they cannot judge) goes through
    ``validate()`` itself, so exactly the same events are rejected with the same errors.
    """
    _, _, _, event_type, schema_version, data, metadata, occurred, recorded = fields
    try:
        data_json = _dumps(data, option=_SORT_KEYS)  # encode_json, without a call
        metadata_json = _dumps(metadata, option=_SORT_KEYS)
    except TypeError:
        data_json = metadata_json = b""
    if not (
        canonical_id
        and plainly_valid(event_type, schema_version, data, metadata, occurred, recorded, data_json, metadata_json)
    ):
        e.to_new().validate()  # raises the port's error for this event
        data_json, metadata_json = encode_json(data), encode_json(metadata)
    return data_json, metadata_json


def _copy_rows(events: Sequence[Event]) -> list[str]:
    """Validate every event (see :func:`_checked`) and encode it once as a COPY text row."""
    rows: list[str] = []
    append = rows.append
    fullmatch = _CANONICAL_ID.fullmatch
    special = _COPY_SPECIAL.search
    last_occurred: Any = None
    last_recorded: Any = None
    occurred_text = recorded_text = ""
    for e in events:
        fields: tuple[Any, ...] = e[:9]
        event_id, stream_id, version, event_type, schema_version, _, _, occurred, recorded = fields
        canonical_id = type(event_id) is str and fullmatch(event_id) is not None
        data_json, metadata_json = _checked(fields, e, canonical_id)
        data_text = data_json.decode()
        metadata_text = metadata_json.decode()
        # Decoders hand back one object for equal timestamps (and often the same one for
        # both fields): format each object once, not twice per event.
        if occurred is not last_occurred:
            last_occurred = occurred
            occurred_text = occurred.isoformat() if type(occurred) is not int else _copy_moment(occurred)
        if recorded is occurred:
            last_recorded, recorded_text = recorded, occurred_text  # the pair stays consistent
        elif recorded is not last_recorded:
            last_recorded = recorded
            recorded_text = recorded.isoformat() if type(recorded) is not int else _copy_moment(recorded)
        append(
            "\t".join(
                (
                    event_id if canonical_id else _copy_text(str(event_id)),
                    stream_id,
                    str(version),
                    _copy_text(event_type) if special(event_type) else event_type,
                    str(schema_version),
                    _copy_text(data_text) if "\\" in data_text else data_text,
                    _copy_text(metadata_text) if "\\" in metadata_text else metadata_text,
                    occurred_text,
                    recorded_text,
                )
            )
            + "\n"
        )
    return rows


_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_MICROS: Final = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
_MICROSECOND: Final = timedelta(microseconds=1)
_INT4: Final = range(-(2**31), 2**31)
_COPY_BINARY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_COPY_BINARY_TRAILER: Final = b"\xff\xff"
_PACK_HEAD: Final = struct.Struct("!hi16si").pack  # field count; id; length of stream_id
_PACK_INT_LEN: Final = struct.Struct("!iii").pack  # int4 field; length of the next field
_PACK_LEN: Final = struct.Struct("!i").pack
_PACK_MOMENTS: Final = struct.Struct("!iqiq").pack  # occurred_at, recorded_at (timestamptz)


def _binary_ready(events: Sequence[Event]) -> bool:
    """Whether COPY's binary format stores ``events`` exactly as the text format would.

    Ids must be canonical (the server parses other spellings of a UUID in text) and
    versions int4 values (text lets the server reject the others); everything else is
    validated per event by :func:`_checked` on either path.
    """
    fullmatch = _CANONICAL_ID.fullmatch
    for e in events:
        event_id, version, schema_version = e[0], e[2], e[4]
        if not (
            type(event_id) is str
            and fullmatch(event_id) is not None
            and type(version) is int
            and version in _INT4
            and type(schema_version) is int
            and schema_version in _INT4
        ):
            return False
    return True


def _pg_micros(moment: Any) -> int:
    """A timestamp field as microseconds since 2000-01-01 UTC (binary ``timestamptz``)."""
    if type(moment) is int:  # microseconds since the epoch, UTC (see Event)
        return int(moment) - _PG_EPOCH_MICROS
    return (moment - _PG_EPOCH) // _MICROSECOND  # type: ignore[no-any-return]


def _copy_rows_binary(events: Sequence[Event]) -> list[bytes]:
    """Validate every event (see :func:`_checked`) and encode it as a binary COPY tuple.

    Only for events that pass :func:`_binary_ready` (which checked that every id is
    canonical: this function relies on it).  Data and metadata go as their JSON
    text (the binary form of ``json``), so nothing needs escaping.
    """
    rows: list[bytes] = []
    append = rows.append
    fromhex = bytes.fromhex
    last_occurred: Any = None
    last_recorded: Any = None
    occurred_micros = recorded_micros = 0
    for e in events:
        fields: tuple[Any, ...] = e[:9]
        event_id, stream_id, version, event_type, schema_version, _, _, occurred, recorded = fields
        data_json, metadata_json = _checked(fields, e, True)  # ids checked by _binary_ready
        if occurred is not last_occurred:
            last_occurred = occurred
            occurred_micros = _pg_micros(occurred)
        if recorded is occurred:
            last_recorded, recorded_micros = recorded, occurred_micros  # the pair stays consistent
        elif recorded is not last_recorded:
            last_recorded = recorded
            recorded_micros = _pg_micros(recorded)
        append(
            _binary_row(
                fromhex(event_id.replace("-", "")),
                stream_id.encode(),
                version,
                event_type,
                schema_version,
                data_json,
                metadata_json,
                occurred_micros,
                recorded_micros,
            )
        )
    return rows


def _binary_row(
    uuid_bytes: bytes,
    stream_bytes: bytes,
    version: int,
    event_type: str,
    schema_version: int,
    data_json: bytes,
    metadata_json: bytes,
    occurred_micros: int,
    recorded_micros: int,
) -> bytes:
    """One tuple of a binary COPY into ``events`` (timestamps in microseconds since 2000)."""
    type_bytes = event_type.encode()
    return b"".join(
        (
            _PACK_HEAD(9, 16, uuid_bytes, len(stream_bytes)),
            stream_bytes,
            _PACK_INT_LEN(4, version, len(type_bytes)),
            type_bytes,
            _PACK_INT_LEN(4, schema_version, len(data_json)),
            data_json,
            _PACK_LEN(len(metadata_json)),
            metadata_json,
            _PACK_MOMENTS(8, occurred_micros, 8, recorded_micros),
        )
    )


def _appended_rows_binary(
    stream_id: str,
    first_version: int,
    events: Sequence[NewEvent],
    encoded: Sequence[tuple[bytes, bytes]],
    now: datetime,
) -> list[bytes] | None:
    """The binary COPY tuples of an append (``encoded``: the events' JSON from
    :func:`encode_append`, which checked them), or ``None`` when the binary format would
    not store them exactly as the ``INSERT`` would (an id not canonical, a version or
    schema version outside 32 bits): then the ``INSERT`` stores them."""
    if first_version + len(events) > 2**31:
        return None
    stream_bytes = stream_id.encode()
    now_micros = _pg_micros(now)
    fromhex, fullmatch = bytes.fromhex, _CANONICAL_ID.fullmatch
    rows: list[bytes] = []
    append = rows.append
    for version, e, (data_json, metadata_json) in zip(itertools.count(first_version), events, encoded):
        event_id, schema_version, recorded = e.id, e.schema_version, e.recorded_at
        if fullmatch(event_id) is None or schema_version not in _INT4:
            return None
        append(
            _binary_row(
                fromhex(event_id.replace("-", "")),
                stream_bytes,
                version,
                e.type,
                schema_version,
                data_json,
                metadata_json,
                _pg_micros(e.occurred_at),
                now_micros if recorded is None else _pg_micros(recorded),
            )
        )
    return rows


def _positioned_rows(rows: Sequence[tuple[Any, ...]]) -> list[Event]:
    """Rows of :data:`_COLUMNS` plus ``position`` as Events carrying their positions.

    Equal timestamps share one ``datetime``.

    Events appended together carry equal timestamps (often the same in both fields);
    sharing the object lets :func:`_copy_rows` format it once when the page is copied on.
    """
    events: list[Event] = []
    append = events.append
    new, event_type, loads = _tuple_new, Event, orjson.loads
    last: Any = None
    for row in rows:
        occurred, recorded = row[7], row[8]
        if occurred == last:
            occurred = last
        if recorded == occurred:
            recorded = occurred
        elif recorded == last:
            recorded = last
        last = recorded
        append(
            new(
                event_type,
                (
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    loads(row[5]),
                    loads(row[6]),
                    occurred,
                    recorded,
                    str(row[9]).zfill(_POSITION_DIGITS),
                ),
            )
        )
    return events


class PostgresEventStore:
    """Event store in a PostgreSQL schema; features ``bulk_append`` (COPY), ``temporal``,
    ``transactions_across_streams``.  See the module docstring for the gap-free ``read_all``."""

    features: frozenset[str] = frozenset(
        {FEATURE_BULK_APPEND, FEATURE_COUNT, FEATURE_TEMPORAL, FEATURE_TRANSACTIONS_ACROSS_STREAMS}
    )

    def __init__(self, url: str, *, client: ConnectionPool | None = None, existing: bool = False) -> None:
        self.db = PostgresDatabase(url, client=client, existing=existing)
        self.url = self.db.url
        self.identity = self.db.identity
        t = self.db.table("events")
        # The statements of the hot paths, rendered to bytes once: psycopg would render a
        # composed statement again on every call (a tenth of a command cycle's client time).
        self._lock_sql = _rendered(
            sql.SQL("SELECT pg_advisory_xact_lock(hashtext('skyferry-append'), hashtext({}))").format(
                sql.Literal(self.db.schema)
            )
        )
        self._insert_sql = _rendered(
            sql.SQL(
                "INSERT INTO {t} (id, stream_id, version, type, schema_version, data, metadata, occurred_at,"
                " recorded_at) SELECT u.id, %(stream)s, u.version, u.type, u.schema_version, u.data::json,"
                " u.metadata::json, u.occurred_at, u.recorded_at"
                " FROM unnest(%(ids)s::uuid[], %(versions)s::int[], %(types)s::text[], %(schema_versions)s::int[],"
                " %(data)s::text[], %(metadata)s::text[], %(occurred)s::timestamptz[], %(recorded)s::timestamptz[])"
                " AS u(id, version, type, schema_version, data, metadata, occurred_at, recorded_at)"
                " WHERE (SELECT coalesce(max(e.version), 0) FROM {t} e WHERE e.stream_id = %(stream)s) = %(expected)s"
                " ORDER BY u.version"
            ).format(t=t)
        )
        # One backward index probe per stream (a GROUP BY over ``stream_id = ANY(...)`` is
        # planned as a scan of the whole table once a batch names many streams).
        self._heads_sql = _rendered(
            sql.SQL(
                "SELECT k.stream_id, h.version FROM unnest(%s::text[]) AS k(stream_id)"
                " CROSS JOIN LATERAL (SELECT max(e.version) AS version FROM {} e"
                ' WHERE e.stream_id = k.stream_id COLLATE "C") AS h WHERE h.version IS NOT NULL'
            ).format(t)
        )
        self._copy_binary_sql = _rendered(
            sql.SQL(
                "COPY {} (id, stream_id, version, type, schema_version, data, metadata, occurred_at, recorded_at)"
                " FROM STDIN (FORMAT BINARY)"
            ).format(t)
        )
        self._version_sql = _rendered(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {} WHERE stream_id = %s").format(t)
        )
        self._ids_sql = _rendered(
            sql.SQL("SELECT id::text, stream_id, version FROM {} WHERE id = ANY(%s::uuid[])").format(t)
        )
        self._read_stream_sql = {
            backwards: _rendered(
                sql.SQL(
                    "SELECT " + _COLUMNS + " FROM {} WHERE stream_id = %s AND version >= %s AND version <= %s"
                    " ORDER BY version " + ("DESC" if backwards else "ASC") + " LIMIT %s"
                ).format(t)
            )
            for backwards in (False, True)
        }
        self._read_all_sql = _rendered(
            sql.SQL("SELECT " + _COLUMNS + ", position FROM {} WHERE position > %s ORDER BY position LIMIT %s").format(
                t
            )
        )

    @classmethod
    def from_url(cls, url: str, *, existing: bool = False) -> Self:
        """Parse ``url`` (see the module docstring); no I/O.  The schema is created (or
        migrated) on first use, or with ``existing`` must already hold the store: a missing
        database, schema or table is a ``ConfigurationError`` naming it, and nothing is created."""
        return cls(url, existing=existing)

    # -- append ----------------------------------------------------------------------

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> AppendResult:
        """Append atomically with an optimistic version check (see ``EventStore.append``).

        From :data:`_COPY_FROM` events on, the rows go by binary ``COPY`` after a version
        check under the append lock (one more round trip than the ``INSERT``, which checks
        the version in its own ``WHERE``, and a fraction of its cost per event).
        """
        events = events if isinstance(events, list | tuple) else list(events)
        encoded = encode_append(stream_id, events, sort_keys=False)
        expected = expected_as_int(expected_version)
        now = utc_now()
        with self.db.connection(f"appending to {stream_id!r}") as conn:
            for _ in range(_ANY_RETRIES):
                base = expected if expected is not None else self._stream_version(conn, stream_id)
                rows = (
                    _appended_rows_binary(stream_id, base + 1, events, encoded, now)
                    if len(events) >= _COPY_FROM
                    else None
                )
                try:
                    if rows is not None:
                        inserted = self._copy_append(conn, stream_id, base, rows)
                    else:
                        inserted = self._insert_append(conn, self._params(stream_id, events, encoded, base, now))
                except psycopg.errors.UniqueViolation:
                    inserted = 0
                if inserted == len(events):
                    return AppendResult(stream_id, base + 1, base + len(events))
                result = self._resolve(conn, stream_id, events, expected_version)
                if result is not None:
                    return result
            raise TransientError(f"stream {stream_id!r}: gave up appending with ANY after {_ANY_RETRIES} races")

    def _insert_append(self, conn: psycopg.Connection[Any], params: dict[str, Any]) -> int:
        """``BEGIN``, the append lock, the ``INSERT`` (which checks the version) and ``COMMIT`` in
        one round trip; return how many rows were inserted.

        They go as one pipeline with a single sync: ``conn.transaction()`` would sync after
        ``BEGIN`` and after ``COMMIT`` as well, four round trips for one append.  When a
        statement fails, the server skips the rest up to the sync and leaves the transaction
        aborted: it is rolled back here before the error goes on.
        """
        try:
            with conn.pipeline():
                conn.execute(_BEGIN)
                conn.execute(self._lock_sql)
                cur = conn.execute(self._insert_sql, params)
                conn.execute(_COMMIT)
        except BaseException:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
            raise
        return cur.rowcount

    def _copy_append(self, conn: psycopg.Connection[Any], stream_id: str, base: int, rows: list[bytes]) -> int:
        """Under the append lock: COPY ``rows`` if the stream is at ``base`` (return how many), else 0."""
        with conn.transaction():
            with conn.pipeline():
                conn.execute(self._lock_sql)
                cur = conn.execute(self._version_sql, [stream_id])
            row = cur.fetchone()
            if (row[0] if row else 0) != base:
                raise psycopg.Rollback
            with conn.cursor().copy(self._copy_binary_sql) as copy:
                copy.write(b"".join((_COPY_BINARY_HEADER, *rows, _COPY_BINARY_TRAILER)))
            return len(rows)
        return 0  # rolled back: the stream is elsewhere

    def _params(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        encoded: Sequence[tuple[bytes, bytes]],
        base: int,
        now: datetime,
    ) -> dict[str, Any]:
        return {
            "stream": stream_id,
            "expected": base,
            "ids": [e.id for e in events],
            "versions": list(range(base + 1, base + 1 + len(events))),
            "types": [e.type for e in events],
            "schema_versions": [e.schema_version for e in events],
            "data": [data.decode() for data, _ in encoded],
            "metadata": [metadata.decode() for _, metadata in encoded],
            "occurred": [e.occurred_at for e in events],
            "recorded": [e.recorded_at or now for e in events],
        }

    def _resolve(
        self,
        conn: psycopg.Connection[Any],
        stream_id: str,
        events: Sequence[NewEvent],
        expected: ExpectedVersion,
    ) -> AppendResult | None:
        """After a failed insert: an idempotent success, a ConcurrencyError, or ``None`` (retry ANY)."""
        actual = self._stream_version(conn, stream_id)
        stored: dict[str, int] = {}
        for event_id, other_stream, version in conn.execute(self._ids_sql, [[e.id for e in events]]):
            if other_stream != stream_id:
                raise ConcurrencyError(
                    stream_id,
                    expected.value if expected is ANY else expected,
                    actual,
                    f"event id {event_id} is already stored in stream {other_stream!r}",
                )
            stored[event_id] = version
        if expected is ANY and not stored:
            return None
        return resolve_conflict(stream_id, events, expected, actual, stored)

    def _stream_version(self, conn: psycopg.Connection[Any], stream_id: str) -> int:
        row = conn.execute(self._version_sql, [stream_id]).fetchone()
        return int(row[0]) if row else 0

    def append_many(self, batch: Sequence[tuple[str, Sequence[NewEvent], ExpectedVersion]]) -> list[AppendResult]:
        """Apply every append in one transaction, or none (feature ``transactions_across_streams``)."""
        encoded = [encode_append(stream_id, events, sort_keys=False) for stream_id, events, _ in batch]
        all_ids = [e.id for _, events, _ in batch for e in events]
        if len(set(all_ids)) != len(all_ids):
            raise ValidationError("append_many: an event id appears in two appends of one batch")
        now = utc_now()
        results: list[AppendResult] = []
        with self.db.connection("appending to several streams") as conn:
            try:
                with conn.transaction():
                    conn.execute(self._lock_sql)
                    for (stream_id, events, expected_version), stream_encoded in zip(batch, encoded, strict=True):
                        expected = expected_as_int(expected_version)
                        actual = self._stream_version(conn, stream_id)
                        base = actual if expected is None else expected
                        cur = conn.execute(self._insert_sql, self._params(stream_id, events, stream_encoded, base, now))
                        if cur.rowcount == len(events):
                            results.append(AppendResult(stream_id, base + 1, base + len(events)))
                            continue
                        # Raises ConcurrencyError (rolling back everything) unless idempotent.
                        result = self._resolve(conn, stream_id, events, expected_version)
                        if result is None:
                            raise ConcurrencyError(stream_id, "any", actual, "changed while appending")
                        results.append(result)
            except psycopg.errors.UniqueViolation as e:
                raise ConcurrencyError("(several)", "as given", -1, f"an event id is already stored: {e}") from e
        return results

    def bulk_append(self, events: Sequence[Event]) -> int:
        """Store exported events with COPY, atomically; skip those already stored (feature ``bulk_append``).

        Only events at or below a stream's current version are looked up (they must be
        stored with the same id); the rest go straight to COPY, where an id already stored
        in another stream violates the unique index and rolls the whole call back.
        """
        if not events:
            return 0
        streams = list(dict.fromkeys(event[1] for event in events))  # Event.stream_id
        for stream_id in streams:
            validate_stream_id(stream_id)
        t = self.db.table("events")
        fresh: list[Event] = []
        with self.db.connection("importing events") as conn:
            try:
                with conn.transaction():
                    conn.execute(self._lock_sql)
                    heads: dict[str, int] = dict(conn.execute(self._heads_sql, [streams]).fetchall())
                    # One pass in the order given: each event continues its stream (new), or
                    # lies at or below the stored head (must be stored with the same id).
                    current = dict(heads)
                    old: list[Event] = []
                    for event in events:
                        stream_id, version = event[1], event[2]
                        head = current.get(stream_id, 0)
                        if version == head + 1:
                            current[stream_id] = version
                            fresh.append(event)
                        elif version <= heads.get(stream_id, 0):
                            old.append(event)
                        else:
                            raise ConcurrencyError(
                                stream_id, version - 1, head, f"version {version} does not continue it"
                            )
                    if old:
                        rows = conn.execute(
                            sql.SQL(
                                "SELECT e.stream_id, e.version, e.id::text FROM {} e"
                                " JOIN unnest(%s::text[], %s::int[]) AS k(stream_id, version)"
                                " ON e.stream_id = k.stream_id AND e.version = k.version"
                            ).format(t),
                            [[e.stream_id for e in old], [e.version for e in old]],
                        )
                        stored = {(row[0], row[1]): row[2] for row in rows}
                        for event in old:
                            if stored.get((event.stream_id, event.version)) != event.id:
                                raise ConcurrencyError(
                                    event.stream_id,
                                    event.version - 1,
                                    heads.get(event.stream_id, 0),
                                    f"version {event.version} holds another event than {event.id}",
                                )
                        _copy_rows(old)  # validated, not written
                    if fresh:
                        self._copy(conn, fresh)
            except psycopg.errors.UniqueViolation as e:
                detail = e.diag.message_detail or str(e)
                raise ConcurrencyError(
                    "(import)", "new ids", -1, f"an event id of this import is already stored elsewhere: {detail}"
                ) from e
        return len(fresh)

    def _copy(self, conn: psycopg.Connection[Any], events: list[Event]) -> None:
        """COPY ``events``, validated and encoded a block at a time (see :func:`_copy_rows`), so that
        the server stores one block while the next is encoded; an invalid event raises inside
        the COPY, which aborts it (the caller's transaction stores nothing)."""
        copy_sql = sql.SQL(
            "COPY {} (id, stream_id, version, type, schema_version, data, metadata, occurred_at, recorded_at)"
            " FROM STDIN"
        ).format(self.db.table("events"))
        if _binary_ready(events):
            with conn.cursor().copy(copy_sql + sql.SQL(" (FORMAT BINARY)")) as copy:
                copy.write(_COPY_BINARY_HEADER)
                for start in range(0, len(events), _COPY_BLOCK_ROWS):
                    copy.write(b"".join(_copy_rows_binary(events[start : start + _COPY_BLOCK_ROWS])))
                copy.write(_COPY_BINARY_TRAILER)
            return
        with conn.cursor().copy(copy_sql) as copy:
            for start in range(0, len(events), _COPY_BLOCK_ROWS):
                copy.write("".join(_copy_rows(events[start : start + _COPY_BLOCK_ROWS])).encode())

    # -- reads -----------------------------------------------------------------------

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[Event]:
        """The stream's events in a version range, ascending or descending (see the port)."""
        query = self._read_stream_sql[bool(backwards)]
        upper = to_version if to_version is not None else 2**31 - 1
        with self.db.connection(f"reading {stream_id!r}") as conn:
            rows = conn.cursor(binary=True).execute(query, [stream_id, from_version, upper, limit]).fetchall()
        return _events(rows)

    def read_stream_as_of(self, stream_id: str, as_of: datetime) -> list[Event]:
        """The stream's events recorded at or before ``as_of`` (feature ``temporal``; index on the stream)."""
        query = sql.SQL(
            "SELECT " + _COLUMNS + " FROM {} WHERE stream_id = %s AND recorded_at <= %s ORDER BY version"
        ).format(self.db.table("events"))
        with self.db.connection(f"reading {stream_id!r} as of {as_of}") as conn:
            rows = conn.cursor(binary=True).execute(query, [stream_id, as_of]).fetchall()
        return _events(rows)

    def stream_version(self, stream_id: str) -> int:
        """The stream's last version, 0 if it does not exist."""
        with self.db.connection(f"reading the version of {stream_id!r}") as conn:
            return self._stream_version(conn, stream_id)

    def list_streams(self, prefix: str = "") -> Iterator[str]:
        """Stream ids starting with ``prefix``, ascending (code point order), read in pages of 1,000."""
        table = self.db.table("events")
        end = prefix_end(prefix)
        bound = sql.SQL(" AND stream_id < %s") if end is not None else sql.SQL("")
        first = sql.SQL(
            "SELECT stream_id FROM {} WHERE version = 1 AND stream_id >= %s{} ORDER BY stream_id LIMIT 1000"
        )
        more = sql.SQL("SELECT stream_id FROM {} WHERE version = 1 AND stream_id > %s{} ORDER BY stream_id LIMIT 1000")
        query, after = first.format(table, bound), prefix
        while True:
            with self.db.connection("listing streams") as conn:
                rows = conn.execute(query, [after] if end is None else [after, end]).fetchall()
            yield from (row[0] for row in rows)
            if len(rows) < 1000:
                return
            query, after = more.format(table, bound), rows[-1][0]

    def read_all(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Events after ``after`` in commit order of positions (gap-free, see the module docstring)."""
        with self.db.connection("reading all events") as conn:
            rows = conn.cursor(binary=True).execute(self._read_all_sql, [decode_position(after), limit]).fetchall()
        return _positioned_rows(rows)

    def count_after(self, after: str | None = None) -> int:
        """How many visible events follow ``after`` (feature ``count``: the position index;
        positions come from a sequence, so not a subtraction)."""
        query = sql.SQL("SELECT count(*) FROM {} WHERE position > %s").format(self.db.table("events"))
        with self.db.connection("counting events") as conn:
            row = conn.execute(query, [decode_position(after)]).fetchone()
        return int(row[0]) if row else 0

    def last_position(self) -> str | None:
        """The position of the newest visible event, or ``None`` when the store is empty."""
        query = sql.SQL("SELECT max(position) FROM {}").format(self.db.table("events"))
        with self.db.connection("reading the last position") as conn:
            row = conn.execute(query).fetchone()
        return encode_position(row[0]) if row and row[0] is not None else None

    def close(self) -> None:
        """Close the connection pool."""
        self.db.close()


# ---------------------------------------------------------------------------------------
# View store
# ---------------------------------------------------------------------------------------


class PostgresViewStore:
    """Read models (``views``) and projection checkpoints in the same PostgreSQL schema."""

    def __init__(self, url: str, *, client: ConnectionPool | None = None) -> None:
        self.db = PostgresDatabase(url, client=client)
        self.url = self.db.url
        v = self.db.table("views")
        self._upsert = sql.SQL(
            "INSERT INTO {v} AS d (collection, key, value, revision) VALUES (%s, %s, %s::jsonb, 1)"
            " ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value, revision = d.revision + 1"
        ).format(v=v)
        self._insert = sql.SQL(
            "INSERT INTO {} (collection, key, value, revision) VALUES (%s, %s, %s::jsonb, 1)"
            " ON CONFLICT (collection, key) DO NOTHING"
        ).format(v)
        self._update = sql.SQL(
            "UPDATE {} SET value = %s::jsonb, revision = revision + 1"
            " WHERE collection = %s AND key = %s AND revision = %s"
        ).format(v)
        self._delete = sql.SQL("DELETE FROM {} WHERE collection = %s AND key = %s").format(v)
        self._delete_at = sql.SQL("DELETE FROM {} WHERE collection = %s AND key = %s AND revision = %s").format(v)
        self._exists = sql.SQL("SELECT revision FROM {} WHERE collection = %s AND key = %s").format(v)
        self._checkpoint = sql.SQL(
            "INSERT INTO {} (projection, key, value) VALUES (%s, %s, %s)"
            " ON CONFLICT (projection, key) DO UPDATE SET value = excluded.value"
        ).format(self.db.table("checkpoints"))

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Parse ``url`` (see the module docstring); no I/O."""
        return cls(url)

    def get(self, collection: str, key: str) -> Doc | None:
        """The document at ``key``, or ``None``."""
        with self.db.connection(f"reading {collection}/{key}") as conn:
            row = conn.execute(
                sql.SQL("SELECT value, revision FROM {} WHERE collection = %s AND key = %s").format(
                    self.db.table("views")
                ),
                [collection, key],
            ).fetchone()
        return Doc(row[0], row[1]) if row else None

    def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Doc]:
        """The documents that exist among ``keys``, in one query."""
        if not keys:
            return {}
        with self.db.connection(f"reading {collection}") as conn:
            rows = conn.execute(
                sql.SQL("SELECT key, value, revision FROM {} WHERE collection = %s AND key = ANY(%s)").format(
                    self.db.table("views")
                ),
                [collection, list(keys)],
            ).fetchall()
        return {key: Doc(value, revision) for key, value, revision in rows}

    def query(
        self,
        collection: str,
        *,
        prefix: str = "",
        where: tuple[str, str | int | bool] | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """Documents by key prefix and one top-level field's value, ascending by key."""
        clauses = [sql.SQL("collection = %s")]
        params: list[Any] = [collection]
        if prefix:
            end = prefix_end(prefix)
            clauses.append(sql.SQL("key >= %s") if end is None else sql.SQL("key >= %s AND key < %s"))
            params += [prefix] if end is None else [prefix, end]
        if where is not None:
            clauses.append(sql.SQL("value -> %s = %s::jsonb"))
            params += [where[0], orjson.dumps(where[1]).decode()]
        params.append(limit)
        query = sql.SQL("SELECT key, value, revision FROM {} WHERE {} ORDER BY key LIMIT %s").format(
            self.db.table("views"), sql.SQL(" AND ").join(clauses)
        )
        with self.db.connection(f"querying {collection}") as conn:
            rows = conn.execute(query, params).fetchall()
        return [(key, Doc(value, revision)) for key, value, revision in rows]

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: Mapping[str, str]) -> None:
        """Write ``changes`` and the checkpoint in one transaction; a failed condition rolls all back."""
        with self.db.connection(f"committing {projection}") as conn:
            try:
                with conn.transaction():
                    checks: list[tuple[ViewChange, psycopg.Cursor[Any], bool]] = []
                    with conn.pipeline():
                        for change in changes:
                            cur = conn.cursor()
                            checks.append((change, cur, self._write(cur, change)))
                        for key, value in checkpoint.items():
                            conn.execute(self._checkpoint, [projection, key, value])
                    for change, cur, must_touch in checks:
                        if change.expected_revision is None:
                            continue
                        touched = cur.rowcount > 0
                        if touched != must_touch:
                            raise self._conflict(conn, change)
            except psycopg.errors.UniqueViolation as e:  # pragma: no cover - guarded by ON CONFLICT
                raise ConcurrencyError(projection, "absent", -1, str(e)) from e

    def _write(self, cur: psycopg.Cursor[Any], change: ViewChange) -> bool:
        """Queue one change; return whether a conditional one must touch a row (else: must not)."""
        c, k, rev = change.collection, change.key, change.expected_revision
        if change.doc is None:
            if rev is None:
                cur.execute(self._delete, [c, k])
            elif rev == 0:
                cur.execute(self._exists, [c, k])
                return False
            else:
                cur.execute(self._delete_at, [c, k, rev])
            return True
        value = orjson.dumps(change.doc).decode()
        if rev is None:
            cur.execute(self._upsert, [c, k, value])
        elif rev == 0:
            cur.execute(self._insert, [c, k, value])
        else:
            cur.execute(self._update, [value, c, k, rev])
        return True

    def _conflict(self, conn: psycopg.Connection[Any], change: ViewChange) -> ConcurrencyError:
        row = conn.execute(self._exists, [change.collection, change.key]).fetchone()
        return ConcurrencyError(
            f"{change.collection}/{change.key}",
            change.expected_revision,
            int(row[0]) if row else 0,
            "document revision",
        )

    def get_checkpoint(self, projection: str, key: str = "$all") -> str | None:
        """The checkpoint last committed for ``(projection, key)``."""
        with self.db.connection(f"reading the checkpoint of {projection}") as conn:
            row = conn.execute(
                sql.SQL("SELECT value FROM {} WHERE projection = %s AND key = %s").format(self.db.table("checkpoints")),
                [projection, key],
            ).fetchone()
        return str(row[0]) if row else None

    def drop(self, collection: str) -> None:
        """Delete every document of ``collection``."""
        with self.db.connection(f"dropping {collection}") as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE collection = %s").format(self.db.table("views")), [collection])

    def drop_checkpoints(self, projection: str) -> None:
        """Forget every checkpoint of ``projection``."""
        with self.db.connection(f"dropping the checkpoints of {projection}") as conn:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE projection = %s").format(self.db.table("checkpoints")), [projection]
            )

    def close(self) -> None:
        """Close the connection pool."""
        self.db.close()
