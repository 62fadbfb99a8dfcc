"""SQLite event store and view store in one file: ``sqlite:///path.db``.

URL fields:

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` -- the database file
  (created on first use, with its tables).  ``:memory:`` is not supported: the event
  store and the view store each open their own connection to the same file.
* ``?synchronous=full`` (default) or ``?synchronous=normal`` -- durability.

Durability: the file runs in WAL mode.  With ``synchronous=full`` (the default) every
commit is fsynced to the write-ahead log before ``append``/``commit`` returns, so an
acknowledged event survives a power loss.  With ``synchronous=normal`` commits are
fsynced only at checkpoints: a power loss (not a process crash) may lose the last
transactions, never corrupt the file.

Global order: ``events.position`` is the table's ``INTEGER PRIMARY KEY`` (the rowid).
SQLite has a single writer: every append runs in a transaction that holds the
database's write lock from the moment it assigns positions until it commits (``BEGIN
IMMEDIATE``, or for one event at a known version a single ``INSERT``, which takes the
write lock as it starts).
So position ``n + 1`` can only be assigned after the transaction that took ``n`` has
committed or rolled back, and a reader never sees ``n + 1`` while ``n`` is still
invisible: ``read_all`` tailing by position never skips an event (no sequence gaps of
the kind concurrent SQL writers produce).  Rows are never deleted or updated, so
reading from a position again yields the same events.

Timestamps are stored as integer microseconds since the epoch, ``data`` and
``metadata`` as JSON text (orjson).  Both stores are thread-safe: each instance owns one
connection, used under a lock.

Driver: ``apsw``, with the SQLite it bundles (the same SQLite wherever skyferry runs,
whatever the system ships).  The standard library's ``sqlite3`` module lets go of the GIL
and takes it back around every column of every row it reads; ``apsw`` does so once a row,
around SQLite's step, and reads rows and runs ``executemany`` faster (``docs/performance.md``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Final, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

import apsw
import orjson
from orjson import loads as _loads

from skyferry.adapters.stores._common import (
    PREFIX_END,
    NeedsEvents,
    check_limit,
    copy_rows,
    encode_append,
    field_equals,
)
from skyferry.core.errors import ConcurrencyError, ConfigurationError, TransientError, ValidationError
from skyferry.core.messages import (
    CANONICAL_UUID,
    Event,
    NewEvent,
    plainly_valid,
    to_micros,
    utc_now,
    validate_stream_id,
)
from skyferry.core.ports import (
    FEATURE_BULK_APPEND,
    FEATURE_COPY_FROM,
    FEATURE_COUNT,
    FEATURE_ROWS,
    FEATURE_TEMPORAL,
    FEATURE_TRANSACTIONS_ACROSS_STREAMS,
    AppendResult,
    CopiedBatch,
    Doc,
    EventStore,
    ExpectedVersion,
    RowSource,
    StoredRow,
    StreamState,
    ViewChange,
    expected_as_int,
    features_of,
    resolve_conflict,
)

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS: Final = 30.0
SYNCHRONOUS_LEVELS: Final = {"full": "FULL", "normal": "NORMAL"}

EVENTS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    UNIQUE (stream_id, version)
);
DROP INDEX IF EXISTS events_stream_recorded;
"""
"""The events table and its three B-trees: the rows by position, the unique ids, the
unique stream versions.  Files written before kept a fourth, ``(stream_id, recorded_at)``
for ``read_stream_as_of``; every append paid for it, and an as-of read looks at the whole
stream whichever index it takes, so opening such a file to write drops it."""

VIEWS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS views (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    projection TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (projection, key)
) WITHOUT ROWID;
"""

# data and metadata come as bytes (orjson parses them as they are: no str is built first)
_COLUMNS: Final = (
    "CAST(position AS TEXT), id, stream_id, version, type, schema_version, CAST(data AS BLOB),"
    " CAST(metadata AS BLOB), occurred_at, recorded_at"
)
_STREAM_COLUMNS: Final = (  # a stream's rows: its id is the one asked for (compared byte by byte)
    "CAST(position AS TEXT), id, version, type, schema_version, CAST(data AS BLOB), CAST(metadata AS BLOB),"
    " occurred_at, recorded_at"
)
_INSERT: Final = (
    "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at, "
    "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# One event at a known version (a command's usual append) as one statement, its own
# transaction: SQLite takes the write lock as the statement starts (waiting as BEGIN
# IMMEDIATE does), then checks the version in its WHERE.
_INSERT_AT: Final = (
    "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at, "
    "recorded_at) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9"
    " WHERE (SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?2) = ?10"
)
_ROW_COLUMNS: Final = "position, id, stream_id, version, type, schema_version, data, metadata, occurred_at, recorded_at"
_INSERT_ROWS: Final = (  # a StoredRow: its first field, the source's position, is not stored
    "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at, "
    "recorded_at) VALUES (?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
)
_CHUNK: Final = 500
_HEADS: Final = (  # one answer (one JSON object), so the query lets go of the GIL once, not per stream
    "SELECT json_group_object(s.value, coalesce((SELECT max(version) FROM events WHERE stream_id = s.value), 0))"
    " FROM json_each(?) AS s"
)


def parse_url(url: str) -> tuple[str, str]:
    """``(path, synchronous)`` of a ``sqlite:///`` URL; a bad URL is a ConfigurationError."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or not url.lower().startswith("sqlite:///"):
        raise ConfigurationError(f"not a sqlite:/// URL: {url!r} (use sqlite:///path.db)")
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        raise ConfigurationError(f"{url!r}: name a database file, as in sqlite:///skyferry.db")
    if any("\udc80" <= char <= "\udcff" for char in path):
        # bytes of the command line that are not UTF-8 (Python keeps them as surrogates): SQLite takes UTF-8 names only
        raise ConfigurationError(f"{url!r}: the file name is not UTF-8, which SQLite needs: rename the file")
    query = parse_qs(parts.query)
    level = query.pop("synchronous", ["full"])[-1].lower()
    if level not in SYNCHRONOUS_LEVELS:
        raise ConfigurationError(f"{url!r}: synchronous must be 'full' or 'normal', not {level!r}")
    if query:
        raise ConfigurationError(f"{url!r}: unknown parameter(s) {', '.join(sorted(query))}")
    return path, SYNCHRONOUS_LEVELS[level]


def _switch_to_wal(db: apsw.Connection) -> str:
    """Set WAL mode and return the journal mode now in force.

    A new file starts in rollback-journal mode, where two connections switching it at once
    can deadlock: each holds a shared lock and wants an exclusive one.  SQLite then answers
    "database is locked" at once, without calling the busy handler, so the busy timeout
    does not help; the switch is retried here, for as long as that timeout would have waited.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    pause = 0.001
    while True:
        try:
            return str(db.execute("PRAGMA journal_mode=WAL").get)
        except apsw.BusyError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def open_connection(path: str, *, existing: bool = False) -> apsw.Connection:
    """A connection to the file at ``path`` (with ``existing``, never created).

    Its statements wait up to :data:`BUSY_TIMEOUT_SECONDS` for another connection's lock.
    The query planner's stability guarantee (``QPSG``) is on: without it, the SQLite that
    apsw bundles prepares a statement again each time a value is bound to a parameter of its
    ``WHERE``, so every cached statement was compiled anew on every call (a single append
    spent a fifth of its time re-preparing its ``INSERT``).  The plans of this store never
    depend on the values bound: it keeps no ``ANALYZE`` statistics and binds no ``LIKE``.
    """
    flags = apsw.SQLITE_OPEN_READWRITE | (0 if existing else apsw.SQLITE_OPEN_CREATE)
    db = apsw.Connection(path, flags=flags)
    db.set_busy_timeout(int(BUSY_TIMEOUT_SECONDS * 1000))
    db.config(apsw.SQLITE_DBCONFIG_ENABLE_QPSG, 1)
    return db


def _rollback(db: apsw.Connection) -> None:
    """Undo the open transaction, if one is still open (SQLite ends it by itself after some
    errors).  A failed rollback is not raised: the error that called for it is the one to report."""
    if db.in_transaction:
        with contextlib.suppress(apsw.Error):
            db.execute("ROLLBACK")


class _Connection:
    """One lazily opened connection to the file, used under a lock, with error translation.

    ``existing``: the file must already hold the tables ``required`` (a store opened to be
    read): a missing file or table is a ``ConfigurationError`` naming it, and nothing is
    created, not even an empty file (it is opened without ``SQLITE_OPEN_CREATE``).
    """

    def __init__(
        self,
        url: str,
        schema: str,
        *,
        existing: bool = False,
        required: str = "",
    ) -> None:
        self.url = url
        self.path, self.synchronous = parse_url(url)
        self._schema = schema
        self._db: apsw.Connection | None = None
        """Set once the file is open, in WAL mode and migrated (:meth:`db`)."""
        self._existing = existing
        self._required = required
        self.lock = threading.RLock()

    def describe(self, error: apsw.Error) -> SkyferryErrorLike:
        """Translate ``error`` into the hierarchy, naming the file."""
        name = os.path.abspath(self.path)
        if isinstance(error, apsw.BusyError | apsw.LockedError):
            return TransientError(f"SQLite file {name} is busy: {error}")
        if isinstance(error, apsw.ReadOnlyError):
            return ConfigurationError(f"SQLite file {name} is read-only: {error}")
        if isinstance(error, apsw.NotADBError | apsw.CorruptError):
            return ConfigurationError(f"SQLite file {name} is corrupt or not a SQLite database: {error}")
        if isinstance(error, apsw.CantOpenError):
            return ConfigurationError(f"SQLite file {name} cannot be opened: {error}")
        if isinstance(error, apsw.FullError | apsw.IOError):
            return TransientError(f"SQLite file {name}: {error}")
        return ConfigurationError(f"SQLite file {name}: {error}")

    def db(self) -> apsw.Connection:
        """The open connection (opened and migrated on first use; call under the lock)."""
        if self._db is not None:
            return self._db
        self._check_writable()
        name = os.path.abspath(self.path)
        if os.path.isdir(self.path):
            raise ConfigurationError(f"SQLite file {name} is a directory: name a database file in it")
        if self._existing and not os.path.isfile(self.path):
            raise ConfigurationError(f"SQLite file {name} does not exist (a store to read is never created)")
        db: apsw.Connection | None = None
        try:
            db = open_connection(name, existing=self._existing)
            if self._existing:
                query = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
                found = db.execute(query, (self._required,)).get
                if not found:
                    raise ConfigurationError(
                        f"SQLite file {name} holds no skyferry store (no table {self._required!r})"
                    )
            mode = _switch_to_wal(db)
            if str(mode).lower() != "wal":
                raise ConfigurationError(f"SQLite file {name}: cannot switch to WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            if not self._existing:
                db.execute(f"BEGIN IMMEDIATE;{self._schema}COMMIT;")
        except (apsw.Error, ConfigurationError) as e:
            if db is not None:
                db.close()
            if isinstance(e, ConfigurationError):
                raise
            raise self.describe(e) from e
        self._db = db
        return db

    def _check_writable(self) -> None:
        """A file marked read-only is refused up front, even for root (who could write it)."""
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as e:
            raise ConfigurationError(f"SQLite file {os.path.abspath(self.path)}: {e.strerror}") from e
        if not os.access(self.path, os.W_OK) or not mode & 0o222:
            raise ConfigurationError(
                f"SQLite file {os.path.abspath(self.path)} is read-only; skyferry needs to write to it"
            )

    def run(self, work: Callable[[apsw.Connection], T]) -> T:
        """Run ``work`` under the lock, translating SQLite errors."""
        with self.lock:
            db = self.db()
            try:
                return work(db)
            except apsw.Error as e:
                _rollback(db)
                raise self.describe(e) from e

    def write(self, work: Callable[[apsw.Connection], T]) -> T:
        """Run ``work`` in a ``BEGIN IMMEDIATE`` transaction: committed if it returns, else rolled back."""

        def transaction(db: apsw.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                _rollback(db)
                raise
            db.execute("COMMIT")
            return result

        return self.run(transaction)

    def close(self) -> None:
        """Close the connection (it is reopened if the store is used again)."""
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None


SkyferryErrorLike = TransientError | ConfigurationError


class _Conflict(Exception):
    """Internal: an insert hit a unique constraint; the caller decides idempotent vs conflict."""


_new_tuple: Final = tuple.__new__


def _decode(rows: list[tuple[Any, ...]]) -> list[Event]:
    """Rows as ``Event``s: the hot path of ``read_all``, so kept to the bare minimum.

    ``Event`` is a tuple, so one ``tuple.__new__`` call per row builds it (no argument
    handling).  The timestamps stay integer microseconds: ``Event`` decodes them (exactly)
    when they are read.
    """
    new, event_type, loads = _new_tuple, Event, _loads
    return [
        new(
            event_type,
            (
                event_id,
                stream_id,
                version,
                kind,
                schema,
                loads(data),
                loads(metadata),
                occurred,
                recorded,
                position,
            ),
        )
        for position, event_id, stream_id, version, kind, schema, data, metadata, occurred, recorded in rows
    ]


def _decode_stream(stream_id: str, rows: list[tuple[Any, ...]]) -> list[Event]:
    """Rows of :data:`_STREAM_COLUMNS` of ``stream_id`` as ``Event``s (as :func:`_decode`;
    the hot path of loading an aggregate: one column fewer a row)."""
    new, event_type, loads = _new_tuple, Event, _loads
    return [
        new(
            event_type,
            (
                event_id,
                stream_id,
                version,
                kind,
                schema,
                loads(data),
                loads(metadata),
                occurred,
                recorded,
                position,
            ),
        )
        for position, event_id, version, kind, schema, data, metadata, occurred, recorded in rows
    ]


def _current_version(db: apsw.Connection, stream_id: str) -> int:
    return int(db.execute("SELECT max(version) FROM events WHERE stream_id = ?", (stream_id,)).get or 0)


def _current_versions(db: apsw.Connection, streams: Sequence[str]) -> dict[str, int]:
    """The current version of each of ``streams`` (0 for new ones): one query, whose one row
    is a JSON object.  A row per stream would take the GIL back once per stream: beside an
    import's decoding thread, which holds it for up to 5 ms at a time, that cost 50-60 ms a
    chunk of 1,000 streams instead of 10."""
    if not streams:
        return {}
    answer = db.execute(_HEADS, (orjson.dumps(list(streams)).decode(),)).get
    found: dict[str, int] = orjson.loads(answer)
    return found


def _imported_row(event: Event) -> tuple[Any, ...]:
    """The row of an already-versioned event (bulk_append): every field kept as it is."""
    return (
        event.id,
        event.stream_id,
        event.version,
        event.type,
        event.schema_version,
        orjson.dumps(event.data).decode(),
        orjson.dumps(event.metadata).decode(),
        to_micros(event.occurred_at),
        to_micros(event.recorded_at),
    )


def _insert_at(
    stream_id: str, event: NewEvent, encoded: tuple[bytes, bytes], expected: int, db: apsw.Connection
) -> bool:
    """Insert ``event`` as version ``expected + 1`` if the stream is at ``expected``; whether it was."""
    data, metadata = encoded
    occurred = to_micros(event.occurred_at)
    recorded = to_micros(utc_now()) if event.recorded_at is None else to_micros(event.recorded_at)
    row = (event.id, stream_id, expected + 1, event.type, event.schema_version, data.decode(), metadata.decode())
    try:
        db.execute(_INSERT_AT, (*row, occurred, recorded, expected))
    except apsw.ConstraintError:  # the id is stored already, or a writer took the version first
        return False
    return db.changes() == 1


def _micros(moment: Any) -> int:
    """A timestamp field's raw value (integer microseconds or an aware datetime) as microseconds."""
    return moment if type(moment) is int else to_micros(moment)


def _validated_rows(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """Validate every event and build its row (the same as :func:`_imported_row`) in one pass.

    The checks are those of :meth:`NewEvent.validate`, by its common case
    (:func:`~skyferry.core.messages.plainly_valid`); an event that fails any of them (or that
    they cannot judge) goes through ``validate()`` itself, so exactly the same events are
    rejected with the same errors.  The size check
    measures the JSON that is stored: it has the length of the canonical (sorted) encoding.
    """
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    fullmatch = CANONICAL_UUID.fullmatch
    dumps = orjson.dumps
    last_moment: Any = None
    last_micros = 0
    for e in events:
        fields: tuple[Any, ...] = e[:9]
        event_id, stream_id, version, event_type, schema_version, data, metadata, occurred, recorded = fields
        try:
            data_json = dumps(data)
            metadata_json = dumps(metadata)
        except TypeError:
            data_json = metadata_json = b""
        if not (
            type(event_id) is str
            and fullmatch(event_id) is not None
            and plainly_valid(event_type, schema_version, data, metadata, occurred, recorded, data_json, metadata_json)
        ):
            e.to_new().validate()  # raises the port's error for this event
            append(_imported_row(e))
            continue
        # events of one batch often share timestamps: convert each distinct one once
        if occurred is not last_moment:
            last_moment, last_micros = occurred, _micros(occurred)
        occurred_micros = last_micros
        if recorded is not last_moment:
            last_moment, last_micros = recorded, _micros(recorded)
        append(
            (
                event_id,
                stream_id,
                version,
                event_type,
                schema_version,
                data_json.decode(),
                metadata_json.decode(),
                occurred_micros,
                last_micros,
            )
        )
    return rows


def _stored(db: apsw.Connection, ids: Sequence[str]) -> dict[str, tuple[str, int]]:
    """``id -> (stream_id, version)`` of those of ``ids`` already stored."""
    found: dict[str, tuple[str, int]] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for event_id, stream_id, version in db.execute(
            f"SELECT id, stream_id, version FROM events WHERE id IN ({marks})", chunk
        ):
            found[event_id] = (stream_id, version)
    return found


def _expected_text(expected: ExpectedVersion) -> object:
    return expected.value if isinstance(expected, StreamState) else expected


class SQLiteEventStore:
    """The event store on a SQLite file (see the module docstring for the URL and durability).

    Features: ``bulk_append`` (``executemany`` in one transaction), ``copy_from`` (another
    store's rows, ``executemany`` as they are), ``count``, ``rows``, ``temporal`` (an index on
    ``stream_id, recorded_at``) and ``transactions_across_streams`` (one transaction).
    """

    features: frozenset[str] = frozenset(
        {
            FEATURE_BULK_APPEND,
            FEATURE_COPY_FROM,
            FEATURE_COUNT,
            FEATURE_ROWS,
            FEATURE_TEMPORAL,
            FEATURE_TRANSACTIONS_ACROSS_STREAMS,
        }
    )

    def __init__(self, url: str, *, existing: bool = False) -> None:
        self.url = url
        self._conn = _Connection(url, EVENTS_SCHEMA, existing=existing, required="events")
        self.identity = ("sqlite", os.path.realpath(self._conn.path))

    @classmethod
    def from_url(cls, url: str, *, existing: bool = False) -> Self:
        """Parse ``url``; the file is opened (and created, with its tables) on first use, or with
        ``existing`` must already hold the store: a missing file or table is a
        ``ConfigurationError`` naming it, and nothing is created."""
        return cls(url, existing=existing)

    # -- writing -------------------------------------------------------------------------

    def _append_in(
        self,
        db: apsw.Connection,
        stream_id: str,
        events: Sequence[NewEvent],
        encoded: list[tuple[bytes, bytes]],
        expected: ExpectedVersion,
    ) -> AppendResult:
        """Inside an open transaction: insert ``events`` (``encoded``: their JSON, from
        :func:`encode_append`), or raise ``_Conflict``."""
        want = expected_as_int(expected)
        actual = _current_version(db, stream_id)
        if want is not None and want != actual:
            raise _Conflict
        now = to_micros(utc_now())
        rows = [
            (
                e.id,
                stream_id,
                version,
                e.type,
                e.schema_version,
                data.decode(),
                metadata.decode(),
                to_micros(e.occurred_at),
                now if e.recorded_at is None else to_micros(e.recorded_at),
            )
            for version, e, (data, metadata) in zip(itertools.count(actual + 1), events, encoded)
        ]
        try:
            if len(rows) == 1:
                db.execute(_INSERT, rows[0])  # the usual command: one event, no executemany set-up
            else:
                db.executemany(_INSERT, rows)
        except apsw.ConstraintError as e:
            raise _Conflict from e
        return AppendResult(stream_id, actual + 1, actual + len(events))

    def _resolve(
        self, db: apsw.Connection, stream_id: str, events: Sequence[NewEvent], expected: ExpectedVersion
    ) -> AppendResult:
        """After a failed check: idempotent success or the ConcurrencyError (reads only)."""
        actual = _current_version(db, stream_id)
        stored = _stored(db, [e.id for e in events])
        elsewhere = [(i, s) for i, (s, _) in stored.items() if s != stream_id]
        if elsewhere:
            raise ConcurrencyError(
                stream_id,
                _expected_text(expected),
                actual,
                f"event id {elsewhere[0][0]} is already stored in stream {elsewhere[0][1]!r}",
            )
        return resolve_conflict(stream_id, events, expected, actual, {i: v for i, (_, v) in stored.items()})

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> AppendResult:
        """Append atomically in one transaction (see ``EventStore.append``).

        One event at a known version is one ``INSERT`` that checks the version itself
        (:data:`_INSERT_AT`): a quarter of the statements of ``BEGIN IMMEDIATE``, a read of
        the version, the ``INSERT`` and ``COMMIT``, which the other appends take."""
        events = events if isinstance(events, list | tuple) else list(events)
        encoded = encode_append(stream_id, events, sort_keys=False)
        want = expected_as_int(expected_version)
        if want is not None and len(events) == 1:
            if self._conn.run(partial(_insert_at, stream_id, events[0], encoded[0], want)):
                return AppendResult(stream_id, want + 1, want + 1)
        else:
            try:
                return self._conn.write(lambda db: self._append_in(db, stream_id, events, encoded, expected_version))
            except _Conflict:
                pass
        return self._conn.run(lambda db: self._resolve(db, stream_id, events, expected_version))

    def append_many(self, batch: Sequence[tuple[str, Sequence[NewEvent], ExpectedVersion]]) -> list[AppendResult]:
        """Apply every ``(stream_id, events, expected_version)`` in one transaction, or none."""
        streams = [stream_id for stream_id, _, _ in batch]
        if len(set(streams)) != len(streams):
            raise ValidationError("append_many: a stream appears twice in one batch")
        ids = [e.id for _, events, _ in batch for e in events]
        if len(set(ids)) != len(ids):
            raise ValidationError("append_many: an event id appears twice in one batch")
        encoded = [encode_append(stream_id, events, sort_keys=False) for stream_id, events, _ in batch]
        for _, _, expected in batch:
            expected_as_int(expected)

        def work(db: apsw.Connection) -> list[AppendResult]:
            results = []
            for (stream_id, events, expected), stream_encoded in zip(batch, encoded, strict=True):
                db.execute("SAVEPOINT one_stream")
                try:
                    results.append(self._append_in(db, stream_id, events, stream_encoded, expected))
                except _Conflict:
                    db.execute("ROLLBACK TO one_stream")
                    results.append(self._resolve(db, stream_id, events, expected))
                db.execute("RELEASE one_stream")
            return results

        return self._conn.write(work)

    def bulk_append(self, events: Sequence[Event]) -> int:
        """Insert already-versioned events with ``executemany`` in one transaction.

        Events already stored with the same id at the same version are skipped; anything
        else that does not continue its stream raises ``ConcurrencyError`` and nothing of
        the call is stored.  Returns how many events were new.
        """
        streams = list(dict.fromkeys(event.stream_id for event in events))
        for stream_id in streams:
            validate_stream_id(stream_id)
        encoded = _validated_rows(events)  # every event is validated, skipped ones too

        def work(db: apsw.Connection) -> int:
            current = _current_versions(db, streams)
            rows: list[tuple[Any, ...]] = []
            skipped: list[Event] = []
            for event, row in zip(events, encoded, strict=True):
                version = current[event.stream_id]
                if event.version == version + 1:
                    current[event.stream_id] = event.version
                    rows.append(row)
                elif event.version <= version:
                    skipped.append(event)
                else:
                    raise ConcurrencyError(
                        event.stream_id,
                        event.version - 1,
                        version,
                        f"event {event.id} at version {event.version} does not continue the stream",
                    )
            if skipped:
                stored = _stored(db, [e.id for e in skipped])
                for event in skipped:
                    if stored.get(event.id) != (event.stream_id, event.version):
                        raise ConcurrencyError(
                            event.stream_id,
                            event.version - 1,
                            current[event.stream_id],
                            f"version {event.version} holds another event than {event.id}",
                        )
            try:
                db.executemany(_INSERT, rows)
            except apsw.ConstraintError as e:
                raise ConcurrencyError(
                    events[0].stream_id if events else "", "bulk", 0, f"an event id is already stored: {e}"
                ) from e
            return len(rows)

        return self._conn.write(work)

    def copies_from(self, source: EventStore | RowSource) -> bool:
        """Whether :meth:`copy_from` reads ``source``: a :class:`~skyferry.core.ports.RowSource`
        (a store with the feature ``rows``, or an import's checked chunk)."""
        return FEATURE_ROWS in features_of(source) and isinstance(source, RowSource)

    def copy_from(self, source: EventStore | RowSource, after: str | None, limit: int) -> CopiedBatch | None:
        """Copy the next ``limit`` events of ``source`` as the rows it keeps (feature ``copy_from``).

        In one write transaction: the source's rows are read a page at a time, each page's
        streams checked to continue this store's (see
        :func:`~skyferry.adapters.stores._common.check_rows`) and inserted as they are, with
        one ``executemany``: no event is decoded or encoded.  ``None`` (nothing written) where
        ``bulk_append`` must judge the batch event by event (see the port).
        """
        if not self.copies_from(source):
            raise ValidationError(f"copy_from reads stores with the feature rows, not {source.url}")
        assert isinstance(source, RowSource)
        check_limit(limit, minimum=1)

        def work(db: apsw.Connection) -> CopiedBatch:
            def write(rows: list[StoredRow]) -> None:
                try:
                    db.executemany(_INSERT_ROWS, rows)
                except apsw.ConstraintError as e:  # the unique id: versions were checked
                    raise ConcurrencyError(
                        "(import)", "new ids", -1, f"an event id of this copy is already stored elsewhere: {e}"
                    ) from e

            return copy_rows(source, after, limit, lambda streams: _current_versions(db, streams), write)[0]

        try:
            return self._conn.write(work)
        except NeedsEvents:
            return None

    # -- reading -------------------------------------------------------------------------

    def read_rows(self, after: str | None, limit: int) -> tuple[list[StoredRow], str | None]:
        """``read_all`` as the rows this store keeps (feature ``rows``): no JSON is decoded."""
        check_limit(limit, minimum=1)
        start = -1 if after is None else _position(after)
        sql = f"SELECT {_ROW_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
        rows: list[StoredRow] = self._conn.run(lambda db: list(db.execute(sql, (start, limit))))
        return rows, str(rows[-1][0]) if rows else after

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[Event]:
        """The stream's events in ``[from_version, to_version]`` (see ``EventStore.read_stream``)."""
        check_limit(limit, minimum=0)
        upper = to_version if to_version is not None else 2**62
        order = "DESC" if backwards else "ASC"
        sql = (
            f"SELECT {_STREAM_COLUMNS} FROM events WHERE stream_id = ? AND version BETWEEN ? AND ? "
            f"ORDER BY version {order} LIMIT ?"
        )
        params = (stream_id, from_version, upper, -1 if limit is None else limit)
        rows = self._conn.run(lambda db: db.execute(sql, params).fetchall())
        return _decode_stream(stream_id, rows)

    def read_stream_as_of(self, stream_id: str, as_of: datetime) -> list[Event]:
        """The stream's events with ``recorded_at <= as_of``: the stream read by its
        ``(stream_id, version)`` index, filtered."""
        sql = f"SELECT {_STREAM_COLUMNS} FROM events WHERE stream_id = ? AND recorded_at <= ? ORDER BY version"
        params = (stream_id, to_micros(as_of))
        rows = self._conn.run(lambda db: db.execute(sql, params).fetchall())
        return _decode_stream(stream_id, rows)

    def stream_version(self, stream_id: str) -> int:
        """The stream's last version, 0 when it does not exist."""
        return self._conn.run(lambda db: _current_version(db, stream_id))

    def list_streams(self, prefix: str = "") -> Iterator[str]:
        """Stream ids starting with ``prefix``, ascending (uses the stream/version index)."""
        sql = "SELECT DISTINCT stream_id FROM events WHERE stream_id >= ? AND stream_id < ? ORDER BY stream_id"
        rows = self._conn.run(lambda db: db.execute(sql, (prefix, prefix + PREFIX_END)).fetchall())
        names = [str(name) for (name,) in rows]
        return iter([name for name in names if name.startswith(prefix)])

    def read_all(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Events after ``after`` by position (complete and stable: see the module docstring)."""
        check_limit(limit, minimum=1)
        start = -1 if after is None else _position(after)
        sql = f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
        rows = self._conn.run(lambda db: db.execute(sql, (start, limit)).fetchall())
        return _decode(rows)

    def count_after(self, after: str | None = None) -> int:
        """How many events follow ``after`` (feature ``count``: the primary key's index)."""
        start = -1 if after is None else _position(after)
        query = "SELECT count(*) FROM events WHERE position > ?"
        return int(self._conn.run(lambda db: db.execute(query, (start,)).get))

    def last_position(self) -> str | None:
        """The highest position, ``None`` when the store is empty."""
        last = self._conn.run(lambda db: db.execute("SELECT max(position) FROM events").get)
        return None if last is None else str(last)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _position(text: str) -> int:
    try:
        return int(text)
    except ValueError as e:
        raise ValidationError(f"{text!r} is not a position of a sqlite:// store") from e


class SQLiteViewStore:
    """The view store on the same SQLite file as the event store (tables ``views``, ``checkpoints``).

    ``commit`` runs in one ``BEGIN IMMEDIATE`` transaction: the document changes and the
    checkpoint are written together or not at all.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = _Connection(url, VIEWS_SCHEMA)

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Parse ``url``; the file is opened on first use."""
        return cls(url)

    def get(self, collection: str, key: str) -> Doc | None:
        """The document at ``key``, or ``None``."""
        sql = "SELECT value, revision FROM views WHERE collection = ? AND key = ?"
        row = self._conn.run(lambda db: db.execute(sql, (collection, key)).fetchone())
        return None if row is None else Doc(orjson.loads(row[0]), row[1])

    def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Doc]:
        """The documents that exist among ``keys`` (``IN`` queries of 500 keys)."""
        keys = list(dict.fromkeys(keys))

        def work(db: apsw.Connection) -> dict[str, Doc]:
            found: dict[str, Doc] = {}
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT key, value, revision FROM views WHERE collection = ? AND key IN ({marks})"
                for key, value, revision in db.execute(sql, (collection, *chunk)):
                    found[key] = Doc(orjson.loads(value), revision)
            return found

        return self._conn.run(work)

    def query(
        self,
        collection: str,
        *,
        prefix: str = "",
        where: tuple[str, str | int | bool] | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """Documents by key prefix and optional top-level field equality, ascending by key."""
        sql = "SELECT key, value, revision FROM views WHERE collection = ? AND key >= ? AND key < ?"
        params: tuple[Any, ...] = (collection, prefix, prefix + PREFIX_END)
        if where is not None:
            sql += " AND json_extract(value, ?) = ?"
            params += ('$."' + where[0].replace('"', '""') + '"', where[1])
        sql += " ORDER BY key"

        def work(db: apsw.Connection) -> list[tuple[str, Doc]]:
            result: list[tuple[str, Doc]] = []
            for key, value, revision in db.execute(sql, params):
                doc = orjson.loads(value)
                if not key.startswith(prefix) or (where is not None and not field_equals(doc, where)):
                    continue
                result.append((key, Doc(doc, revision)))
                if limit is not None and len(result) >= limit:
                    break
            return result

        return self._conn.run(work)

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: Mapping[str, str]) -> None:
        """Write ``changes`` and ``checkpoint`` in one transaction (a revision mismatch raises)."""

        def work(db: apsw.Connection) -> None:
            run: list[tuple[str, str, str]] = []
            for change in changes:
                if change.expected_revision is None and change.doc is not None:
                    run.append((change.collection, change.key, orjson.dumps(change.doc).decode()))
                    continue
                _upsert(db, run)
                if change.expected_revision is not None:
                    row = db.execute(
                        "SELECT revision FROM views WHERE collection = ? AND key = ?",
                        (change.collection, change.key),
                    ).fetchone()
                    revision = 0 if row is None else row[0]
                    if revision != change.expected_revision:
                        raise ConcurrencyError(f"{change.collection}/{change.key}", change.expected_revision, revision)
                if change.doc is None:
                    db.execute("DELETE FROM views WHERE collection = ? AND key = ?", (change.collection, change.key))
                else:
                    _upsert(db, [(change.collection, change.key, orjson.dumps(change.doc).decode())])
            _upsert(db, run)
            if checkpoint:
                db.executemany(
                    "INSERT INTO checkpoints (projection, key, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (projection, key) DO UPDATE SET value = excluded.value",
                    [(projection, key, value) for key, value in checkpoint.items()],
                )

        self._conn.write(work)

    def get_checkpoint(self, projection: str, key: str = "$all") -> str | None:
        """The last committed checkpoint value of ``(projection, key)``."""
        sql = "SELECT value FROM checkpoints WHERE projection = ? AND key = ?"
        row = self._conn.run(lambda db: db.execute(sql, (projection, key)).fetchone())
        return None if row is None else str(row[0])

    def drop(self, collection: str) -> None:
        """Delete every document of ``collection``."""
        self._conn.write(lambda db: db.execute("DELETE FROM views WHERE collection = ?", (collection,)))

    def drop_checkpoints(self, projection: str) -> None:
        """Forget the checkpoints of ``projection``."""
        self._conn.write(lambda db: db.execute("DELETE FROM checkpoints WHERE projection = ?", (projection,)))

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _upsert(db: apsw.Connection, run: list[tuple[str, str, str]]) -> None:
    """Write a run of unconditional document writes (revision 1, or +1), then empty ``run``."""
    if run:
        db.executemany(
            "INSERT INTO views (collection, key, value, revision) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value, revision = revision + 1",
            run,
        )
        run.clear()
