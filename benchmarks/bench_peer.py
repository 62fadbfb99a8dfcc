"""skyferry's SQLite and PostgreSQL stores beside the best-known Python peer, interleaved in one run.

``python -m benchmarks --only peer``.  The peer is the ``eventsourcing`` library's
application recorders (``SQLiteApplicationRecorder``, ``PostgresApplicationRecorder``), the
layer of it that stores and reads events; it is the ``bench`` dependency group (installed
by ``make bench`` and ``make deps``, never into the image or by ``make demo``).  Every row
prints skyferry's rate, the peer's rate measured in the same run (each side's best of three
rounds, the sides taking turns, every round on a fresh database) and skyferry ÷ peer.
Goal: >= 2.0x on every row.

Rows, for each store:

* **append 1 event per call**, durable and not: ``EventStore.append`` of one event with an
  expected version (ten streams in turn) against ``insert_events`` of one event.
* **append 1,000 per call** (100,000 events, a new stream per call): ``append`` and
  ``bulk_append`` against the peer's ``insert_events``, and against the driver's own batched
  insert of the same rows into skyferry's table (SQLite: ``executemany`` in one
  transaction; PostgreSQL: ``COPY``), all four sides interleaved.
* **read a 1,000-event stream**: ``read_stream`` against ``select_events``.
* **read all** 100,000 events in pages of 1,000: ``read_all`` against ``select_notifications``.
* **command cycle**, durable and not: load an aggregate (read its stream, fold the
  amounts into a balance) and append one event at the version read, on 20 aggregates that
  start with 10 events; the same fold on both sides.

Beside every write row (the appends and the command cycles) a third side runs in the same
rounds, **the driver alone**: the same work on skyferry's table with no skyferry code, the
store's own statements sent straight through its driver (``apsw``; psycopg with the store's
session settings): the store's single-event ``INSERT`` that checks the version in its own
``WHERE``, the driver's batched insert, and for the cycle a read of the stream's ``data``
and ``metadata`` decoded with ``orjson``.  Its row, "the driver alone", prints its rate ÷
the peer's: how far skyferry's row could go with no code of its own between the caller
and the database, the ceiling of that row on this machine.

What is kept the same:

* **Payload.**  Every event carries the same ``data`` and ``metadata`` dicts.  skyferry
  stores them as they are; the peer stores what its mapper would, the JSON of the event's
  timestamp, data and metadata as its ``state`` bytes (the type as its topic).  The peer's
  side encodes each event's state with ``orjson`` before each insert (every event of a
  1,000-event insert too, as its mapper does) and decodes it with ``orjson`` after each
  read, so both sides go from dicts to dicts; the peer's own mapper
  and transcoder are slower than ``orjson``, so this is the peer at its best.  The peer's
  aggregate ids are UUIDs (its default).
* **Durability.**  SQLite: both files in WAL mode; ``synchronous`` is set on every
  connection of both sides (skyferry's URL ``?synchronous=``, a ``PRAGMA`` on every
  connection the peer's pool opens) and read back from both before a row is measured.
  "durable" is ``FULL`` (a commit is on disk when it returns), "not durable" ``NORMAL``.
  PostgreSQL: both sides use the same server; ``synchronous_commit`` is set for every
  connection of both by libpq's ``PGOPTIONS`` and read back (``SHOW``) from both;
  "durable" is ``on`` (the server's ``fsync`` and ``wal_sync_method`` are printed), "not
  durable" ``off``.

Servers: PostgreSQL as in ``bench_postgres`` (``SKYFERRY_BENCH_POSTGRES_DSN`` …); every
schema this module creates is dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import apsw
import orjson
import psycopg
from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
from psycopg import sql

from benchmarks.bench_postgres import DSN
from benchmarks.bench_sqlite import raw_connection
from benchmarks.figures import Figure, interleaved
from skyferry.adapters.stores.postgres import PostgresEventStore
from skyferry.adapters.stores.postgres.client import configure_connection
from skyferry.adapters.stores.sqlite import _INSERT as SQLITE_INSERT
from skyferry.adapters.stores.sqlite import _INSERT_AT as SQLITE_INSERT_AT
from skyferry.adapters.stores.sqlite import SQLiteEventStore
from skyferry.core.messages import Event, NewEvent, new_event_id, to_micros
from skyferry.core.ports import NO_STREAM, EventStore

DATA: dict[str, Any] = {"amount": "12.50", "currency": "EUR", "account_id": "acc-0001", "note": "benchmark payload"}
METADATA: dict[str, Any] = {"correlation_id": "6f1c2d9e-1b7a-4f0e-9a53-2a8c1f4b7d10", "actor": "bench"}
TYPE = "MoneyDeposited"
TOPIC = "ledger:MoneyDeposited"
PAGE = 1000


def peer_state(moment: datetime, data: dict[str, Any] = DATA, metadata: dict[str, Any] = METADATA) -> bytes:
    """What the peer's mapper would store for one event: its timestamp, data and metadata."""
    return orjson.dumps({"timestamp": moment.isoformat(), "data": data, "metadata": metadata})


def balance(amounts: Iterator[str]) -> Decimal:
    """The fold both sides of the command cycle run over the loaded events."""
    total = Decimal(0)
    for amount in amounts:
        total += Decimal(amount)
    return total


class Backend(Protocol):
    """One database engine, holding skyferry's store and the peer's recorder side by side."""

    name: str
    durable_level: str
    fast_level: str

    def skyferry(self, level: str) -> EventStore:
        """skyferry's store on a fresh database at durability ``level``."""
        ...

    def peer(self, level: str) -> ApplicationRecorder:
        """The peer's recorder on a fresh database at durability ``level``."""
        ...

    def driver(self, level: str) -> Driver:
        """The driver alone on a fresh skyferry table at durability ``level``."""
        ...

    def settings(self, store: EventStore, recorder: ApplicationRecorder) -> str:
        """The durability settings read back from both sides (they must be equal)."""
        ...

    def close(self) -> None:
        """Close and drop everything this backend created."""
        ...


class Driver(Protocol):
    """The driver alone on skyferry's table: each row's work with no skyferry code around it.

    Rows are ``(id, stream_id, version, type, schema_version, data, metadata, occurred_at,
    recorded_at)``, ``data`` and ``metadata`` as JSON text, the timestamps as the store keeps
    them (:attr:`micros`: integer microseconds, else ``datetime``).
    """

    micros: bool

    def insert_many(self, rows: list[tuple[Any, ...]]) -> None:
        """The driver's own batched insert, one transaction."""
        ...

    def insert_at(self, row: tuple[Any, ...], expected: int) -> bool:
        """One row, if its stream is at ``expected``: the store's own single-event statement."""
        ...

    def read_payloads(self, stream_id: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The ``data`` and ``metadata`` of a stream's events in version order, decoded with ``orjson``."""
        ...


def driver_row(driver: Driver, stream_id: str, version: int, now: datetime) -> tuple[Any, ...]:
    """A new event's row as the driver inserts it (its JSON encoded, as skyferry encodes every event's)."""
    moment: Any = to_micros(now) if driver.micros else now
    dumps = orjson.dumps
    return (new_event_id(), stream_id, version, TYPE, 1, dumps(DATA).decode(), dumps(METADATA).decode(), moment, moment)


# --- SQLite ------------------------------------------------------------------------------------------


@dataclass
class SQLiteDriver:
    """``apsw`` on the file, opened as the store opens it; the store's own statements."""

    db: apsw.Connection
    micros: bool = True

    def insert_many(self, rows: list[tuple[Any, ...]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(SQLITE_INSERT, rows)
        self.db.execute("COMMIT")

    def insert_at(self, row: tuple[Any, ...], expected: int) -> bool:
        self.db.execute(SQLITE_INSERT_AT, (*row, expected))
        return self.db.changes() == 1

    def read_payloads(self, stream_id: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        loads = orjson.loads
        query = "SELECT CAST(data AS BLOB), CAST(metadata AS BLOB) FROM events WHERE stream_id = ? ORDER BY version"
        return [(loads(data), loads(metadata)) for data, metadata in self.db.execute(query, (stream_id,))]


@dataclass
class SQLiteBackend:
    """Files in a temporary directory; WAL on both sides, ``synchronous`` set on every connection."""

    directory: Path
    name: str = "SQLite"
    durable_level: str = "full"
    fast_level: str = "normal"
    _count: int = 0
    _closers: list[Callable[[], object]] = field(default_factory=list)

    def _path(self, kind: str) -> Path:
        self._count += 1
        return self.directory / f"{kind}-{self._count}.db"

    def skyferry(self, level: str) -> EventStore:
        store = SQLiteEventStore(f"sqlite:///{self._path('skyferry')}?synchronous={level}")
        store.stream_version("warm-up")  # opens the file and creates the table, untimed
        self._closers.append(store.close)
        return store

    def peer(self, level: str) -> ApplicationRecorder:
        datastore = SQLiteDatastore(str(self._path("peer")))
        pool = datastore.pool
        create = pool._create_connection

        def with_synchronous() -> Any:
            connection = create()
            connection._sqlite_conn.execute(f"PRAGMA synchronous={level}")
            return connection

        pool._create_connection = with_synchronous  # type: ignore[method-assign]
        recorder = SQLiteApplicationRecorder(datastore)
        recorder.create_table()
        self._closers.append(datastore.close)
        return recorder

    def driver(self, level: str) -> Driver:
        path = self._path("driver")
        SQLiteEventStore(f"sqlite:///{path}").stream_version("create the table")
        db = raw_connection(path, level)
        self._closers.append(db.close)
        return SQLiteDriver(db)

    def settings(self, store: EventStore, recorder: ApplicationRecorder) -> str:
        assert isinstance(store, SQLiteEventStore)
        assert isinstance(recorder, SQLiteApplicationRecorder)
        ours = store._conn.run(lambda db: db.execute("PRAGMA synchronous").get)
        with recorder.datastore.get_connection(commit=False) as connection:
            theirs = connection._sqlite_conn.execute("PRAGMA synchronous").fetchone()[0]
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        if ours != theirs:
            raise RuntimeError(f"synchronous differs: skyferry {names[ours]}, peer {names[theirs]}")
        return f"synchronous={names[ours]} on both"

    def close(self) -> None:
        for close in reversed(self._closers):
            close()
        self._closers.clear()


# --- PostgreSQL --------------------------------------------------------------------------------------


@contextlib.contextmanager
def pg_options(level: str) -> Iterator[None]:
    """Every libpq connection opened inside the block gets ``synchronous_commit=level`` (``PGOPTIONS``)."""
    before = os.environ.get("PGOPTIONS")
    os.environ["PGOPTIONS"] = f"-c synchronous_commit={level}"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PGOPTIONS"]
        else:
            os.environ["PGOPTIONS"] = before


@dataclass
class PostgresDriver:
    """One psycopg connection; ``COPY`` for batches, the store's own single-event ``INSERT``."""

    conn: psycopg.Connection[Any]
    copy_sql: bytes
    """The store's text ``COPY`` into its table."""
    insert_one_sql: bytes
    """The store's statement for one event at a known version (the append lock and the
    version check in its own ``WHERE``)."""
    read_sql: sql.Composed
    micros: bool = False

    def insert_many(self, rows: list[tuple[Any, ...]]) -> None:
        with self.conn.transaction(), self.conn.cursor().copy(self.copy_sql) as copy:
            for row in rows:
                copy.write_row(row)

    def insert_at(self, row: tuple[Any, ...], expected: int) -> bool:
        event_id, stream_id, version, event_type, schema_version, data, metadata, occurred, recorded = row
        params = {
            "id": event_id,
            "stream": stream_id,
            "version": version,
            "type": event_type,
            "schema_version": schema_version,
            "data": data,
            "metadata": metadata,
            "occurred": occurred,
            "recorded": recorded,
            "expected": expected,
        }
        return self.conn.execute(self.insert_one_sql, params).rowcount == 1

    def read_payloads(self, stream_id: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        loads = orjson.loads
        return [(loads(data), loads(metadata)) for data, metadata in self.conn.execute(self.read_sql, [stream_id])]


@dataclass
class PostgresBackend:
    """A schema per database on one server, dropped at the end."""

    name: str = "PostgreSQL"
    durable_level: str = "on"
    fast_level: str = "off"
    _schemas: list[str] = field(default_factory=list)
    _closers: list[Callable[[], object]] = field(default_factory=list)

    def _schema(self) -> str:
        name = f"bench_peer_{uuid.uuid4().hex[:12]}"
        self._schemas.append(name)
        return name

    def _url(self, schema: str) -> str:
        sep = "&" if "?" in DSN else "?"
        return f"{DSN}{sep}schema={schema}&pool_max=4"

    def skyferry(self, level: str) -> EventStore:
        with pg_options(level):
            store = PostgresEventStore(self._url(self._schema()))
            store.stream_version("warm-up")  # opens the pool and creates the schema, untimed
        self._closers.append(store.close)
        return store

    def peer(self, level: str) -> ApplicationRecorder:
        with pg_options(level):
            recorder, datastore = postgres_peer(self._schema())
        self._closers.append(datastore.close)
        return recorder

    def driver(self, level: str) -> Driver:
        schema = self._schema()
        with pg_options(level):
            store = PostgresEventStore(self._url(schema))
            store.stream_version("create the table")
            store.close()
            conn = psycopg.connect(DSN, autocommit=True)
        configure_connection(conn)  # the session settings of the store's own connections
        self._closers.append(conn.close)
        table = sql.Identifier(schema, "events")
        return PostgresDriver(
            conn,
            store._copy_text_sql,
            store._insert_one_sql,
            sql.SQL("SELECT data::text, metadata::text FROM {} WHERE stream_id = %s ORDER BY version").format(table),
        )

    def settings(self, store: EventStore, recorder: ApplicationRecorder) -> str:
        assert isinstance(store, PostgresEventStore)
        assert isinstance(recorder, PostgresApplicationRecorder)
        with store.db.connection("reading settings") as conn:
            ours = conn.execute("SHOW synchronous_commit").fetchone()
            server = conn.execute(
                "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings"
                " WHERE name IN ('fsync', 'wal_sync_method')"
            ).fetchone()
        with recorder.datastore.get_connection() as conn:
            theirs = conn.execute("SHOW synchronous_commit").fetchone()
        ours_value = ours[0] if ours else None
        theirs_value = theirs["synchronous_commit"] if theirs else None
        if ours_value != theirs_value:
            raise RuntimeError(f"synchronous_commit differs: skyferry {ours_value}, peer {theirs_value}")
        return f"synchronous_commit={ours_value} on both, {server[0] if server else ''}"

    def close(self) -> None:
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        self._closers.clear()
        with psycopg.connect(DSN, autocommit=True) as conn:
            for schema in self._schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        self._schemas.clear()


# --- the rows -----------------------------------------------------------------------------------------


def _figure(backend: Backend, name: str, ours: float, peer: float, unit: str, note: str) -> Figure:
    return Figure(f"{backend.name}: {name}", ours, unit, peer, "eventsourcing", goal=2.0, note=note, times=True)


def inserted(done: bool) -> None:
    """Refuse a run in which the driver's version check failed (the sides would not do the same work)."""
    if not done:
        raise RuntimeError("the driver's single-event insert found its stream at another version")


def _ceiling(backend: Backend, name: str, driver: float, peer: float, unit: str) -> Figure:
    """The driver alone beside the peer: how far the row above could go with no skyferry code at all."""
    return Figure(f"{backend.name}: {name}, the driver alone", driver, unit, peer, "eventsourcing", times=True)


def _load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def _check_settings(backend: Backend, level: str) -> str:
    store, recorder = backend.skyferry(level), backend.peer(level)
    return backend.settings(store, recorder)


def append_one(backend: Backend, level: str, count: int, label: str) -> list[Figure]:
    """One event per call with an expected version, ten streams in turn; the peer inserts one
    event; the driver runs the store's own single-event statement."""
    settings = _check_settings(backend, level)
    streams = 10

    def ours() -> Callable[[], None]:
        store = backend.skyferry(level)

        def work() -> None:
            versions = [0] * streams
            for i in range(count):
                s = i % streams
                store.append(f"one-{s}", [NewEvent(TYPE, DATA, METADATA)], versions[s])
                versions[s] += 1

        return work

    def peer() -> Callable[[], None]:
        recorder = backend.peer(level)
        ids = [uuid.uuid4() for _ in range(streams)]

        def work() -> None:
            versions = [0] * streams
            for i in range(count):
                s = i % streams
                versions[s] += 1
                state = peer_state(datetime.now(UTC))
                recorder.insert_events([StoredEvent(ids[s], versions[s], TOPIC, state)])

        return work

    def driver() -> Callable[[], None]:
        raw = backend.driver(level)

        def work() -> None:
            versions = [0] * streams
            for i in range(count):
                s = i % streams
                versions[s] += 1
                inserted(raw.insert_at(driver_row(raw, f"one-{s}", versions[s], datetime.now(UTC)), versions[s] - 1))

        return work

    ours_rate, peer_rate, driver_rate = interleaved(count, [ours, peer, driver])
    name = f"append 1 per call, {label}"
    return [
        _figure(backend, name, ours_rate, peer_rate, "appends/s", f"{settings}; {_load()}"),
        _ceiling(backend, name, driver_rate, peer_rate, "appends/s"),
    ]


def append_many(backend: Backend, level: str, total: int, per_call: int) -> list[Figure]:
    """``append`` and ``bulk_append`` of ``per_call`` events a call, the peer, and the driver."""
    settings = _check_settings(backend, level)
    calls = total // per_call

    def ours() -> Callable[[], None]:
        store = backend.skyferry(level)

        def work() -> None:
            for c in range(calls):
                store.append(f"many-{c}", [NewEvent(TYPE, DATA, METADATA) for _ in range(per_call)], NO_STREAM)

        return work

    def ours_bulk() -> Callable[[], None]:
        store = backend.skyferry(level)
        bulk_append = getattr(store, "bulk_append")  # noqa: B009 - both stores have the feature

        def work() -> None:
            for c in range(calls):
                now = datetime.now(UTC)
                stream = f"bulk-{c}"
                bulk_append(
                    [
                        Event(new_event_id(), stream, v, TYPE, 1, DATA, METADATA, now, now)
                        for v in range(1, per_call + 1)
                    ]
                )

        return work

    def peer() -> Callable[[], None]:
        recorder = backend.peer(level)

        def work() -> None:
            for _ in range(calls):
                originator = uuid.uuid4()
                now = datetime.now(UTC)  # one timestamp a call, as on skyferry's side
                # Each event's state encoded, as the peer's mapper encodes every event (and as
                # skyferry and the driver encode every event's data and metadata).
                recorder.insert_events(
                    [StoredEvent(originator, v, TOPIC, peer_state(now)) for v in range(1, per_call + 1)]
                )

        return work

    def driver() -> Callable[[], None]:
        raw = backend.driver(level)

        def work() -> None:
            for c in range(calls):
                now = datetime.now(UTC)  # one timestamp a call, as on the other sides
                raw.insert_many([driver_row(raw, f"driver-{c}", v, now) for v in range(1, per_call + 1)])

        return work

    ours_rate, bulk_rate, peer_rate, driver_rate = interleaved(total, [ours, ours_bulk, peer, driver])
    note = f"{settings}; {_load()}"
    driver_name = "executemany" if backend.name == "SQLite" else "COPY"
    return [
        _figure(backend, f"append {per_call:,} per call", ours_rate, peer_rate, "events/s", note),
        _figure(backend, f"bulk_append {per_call:,} per call", bulk_rate, peer_rate, "events/s", note),
        _ceiling(backend, f"append {per_call:,} per call", driver_rate, peer_rate, "events/s"),
        Figure(
            f"{backend.name}: append {per_call:,} per call", ours_rate, "events/s", driver_rate, driver_name, goal=0.8
        ),
        Figure(
            f"{backend.name}: bulk_append {per_call:,} per call",
            bulk_rate,
            "events/s",
            driver_rate,
            driver_name,
            goal=0.8,
        ),
    ]


@dataclass
class Filled:
    """Both sides holding the same ``streams`` streams of ``per_stream`` events."""

    store: EventStore
    recorder: ApplicationRecorder
    stream_ids: list[str]
    originator_ids: list[uuid.UUID]


def fill(backend: Backend, streams: int, per_stream: int) -> Filled:
    """A skyferry store and a peer recorder with the same events (untimed)."""
    store, recorder = backend.skyferry(backend.fast_level), backend.peer(backend.fast_level)
    bulk_append = getattr(store, "bulk_append")  # noqa: B009
    stream_ids = [f"read-{s}" for s in range(streams)]
    originator_ids = [uuid.uuid4() for _ in range(streams)]
    for stream, originator in zip(stream_ids, originator_ids, strict=True):
        now = datetime.now(UTC)
        bulk_append(
            [Event(new_event_id(), stream, v, TYPE, 1, DATA, METADATA, now, now) for v in range(1, per_stream + 1)]
        )
        state = peer_state(now)
        recorder.insert_events([StoredEvent(originator, v, TOPIC, state) for v in range(1, per_stream + 1)])
    return Filled(store, recorder, stream_ids, originator_ids)


def read_stream(backend: Backend, filled: Filled, reads: int) -> Figure:
    """``read_stream`` of whole streams against ``select_events`` plus decoding the states."""
    count = reads * PAGE
    streams = len(filled.stream_ids)

    def ours() -> None:
        for r in range(reads):
            events = filled.store.read_stream(filled.stream_ids[r % streams])
            assert len(events) == PAGE

    def peer() -> None:
        loads = orjson.loads
        for r in range(reads):
            records = filled.recorder.select_events(filled.originator_ids[r % streams])
            states = [loads(record.state) for record in records]
            assert len(states) == PAGE

    ours_rate, peer_rate = interleaved(count, [lambda: ours, lambda: peer])
    return _figure(backend, f"read a {PAGE:,}-event stream", ours_rate, peer_rate, "events/s", _load())


def read_all(backend: Backend, filled: Filled, total: int) -> Figure:
    """``read_all`` in pages of 1,000 against ``select_notifications`` plus decoding the states."""

    def ours() -> None:
        after, seen = None, 0
        while page := filled.store.read_all(after, PAGE):
            after = page[-1].position
            seen += len(page)
        assert seen == total

    def peer() -> None:
        loads = orjson.loads
        start, seen = 0, 0
        while page := filled.recorder.select_notifications(start, PAGE, inclusive_of_start=False):
            states = [loads(n.state) for n in page]
            start = page[-1].id
            seen += len(states)
        assert seen == total

    ours_rate, peer_rate = interleaved(total, [lambda: ours, lambda: peer])
    return _figure(backend, f"read all {total:,} in pages of {PAGE:,}", ours_rate, peer_rate, "events/s", _load())


def command_cycle(backend: Backend, level: str, count: int, label: str) -> list[Figure]:
    """Load (read the stream, fold) and append one event at the version read, 20 aggregates in
    turn; the driver reads the stream's JSON and runs the store's own single-event statement."""
    settings = _check_settings(backend, level)
    aggregates = 20

    def ours() -> Callable[[], None]:
        store = backend.skyferry(level)
        bulk_append = getattr(store, "bulk_append")  # noqa: B009
        now = datetime.now(UTC)
        streams = [f"acct-{a}" for a in range(aggregates)]
        for stream in streams:
            bulk_append([Event(new_event_id(), stream, v, TYPE, 1, DATA, METADATA, now, now) for v in range(1, 11)])

        def work() -> None:
            for i in range(count):
                stream = streams[i % aggregates]
                events = store.read_stream(stream)
                balance(e.data["amount"] for e in events)
                store.append(stream, [NewEvent(TYPE, DATA, METADATA)], len(events))

        return work

    def peer() -> Callable[[], None]:
        recorder = backend.peer(level)
        now = datetime.now(UTC)
        ids = [uuid.uuid4() for _ in range(aggregates)]
        for originator in ids:
            recorder.insert_events([StoredEvent(originator, v, TOPIC, peer_state(now)) for v in range(1, 11)])

        def work() -> None:
            loads = orjson.loads
            for i in range(count):
                originator = ids[i % aggregates]
                states = [loads(r.state) for r in recorder.select_events(originator)]
                balance(s["data"]["amount"] for s in states)
                state = peer_state(datetime.now(UTC))
                recorder.insert_events([StoredEvent(originator, len(states) + 1, TOPIC, state)])

        return work

    def driver() -> Callable[[], None]:
        raw = backend.driver(level)
        now = datetime.now(UTC)
        streams = [f"acct-{a}" for a in range(aggregates)]
        for stream in streams:
            raw.insert_many([driver_row(raw, stream, v, now) for v in range(1, 11)])

        def work() -> None:
            for i in range(count):
                stream = streams[i % aggregates]
                payloads = raw.read_payloads(stream)
                balance(data["amount"] for data, _ in payloads)
                inserted(raw.insert_at(driver_row(raw, stream, len(payloads) + 1, datetime.now(UTC)), len(payloads)))

        return work

    ours_rate, peer_rate, driver_rate = interleaved(count, [ours, peer, driver])
    name = f"command cycle, {label}"
    return [
        _figure(backend, name, ours_rate, peer_rate, "commands/s", f"{settings}; {_load()}"),
        _ceiling(backend, name, driver_rate, peer_rate, "commands/s"),
    ]


def rows(backend: Backend, quick: bool) -> list[Figure]:
    """Every row for one backend."""
    total = 10_000 if quick else 100_000
    durable, fast = backend.durable_level, backend.fast_level
    figures = [
        *append_one(backend, durable, 100 if quick else 500, f"durable ({durable})"),
        *append_one(backend, fast, 500 if quick else 3000, f"not durable ({fast})"),
        *append_many(backend, durable, total, PAGE),
    ]
    backend.close()
    filled = fill(backend, total // PAGE, PAGE)
    figures.append(read_stream(backend, filled, 20 if quick else 100))
    figures.append(read_all(backend, filled, total))
    backend.close()
    figures += command_cycle(backend, durable, 100 if quick else 500, f"durable ({durable})")
    figures += command_cycle(backend, fast, 200 if quick else 2000, f"not durable ({fast})")
    backend.close()
    return figures


def run(args: argparse.Namespace, backends: Sequence[str] = ("sqlite", "postgres")) -> list[Figure]:
    """Both stores' rows (SQLite first, then PostgreSQL)."""
    quick = bool(getattr(args, "quick", False))
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="skyferry-peer-") as name:
        for kind in backends:
            backend: Backend = SQLiteBackend(Path(name)) if kind == "sqlite" else PostgresBackend()
            try:
                figures += rows(backend, quick)
            finally:
                backend.close()
    return figures


def postgres_peer(schema: str) -> tuple[PostgresApplicationRecorder, PostgresDatastore]:
    """The peer's PostgreSQL recorder in ``schema``, created on the benchmark server, its table made."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    parts = urlsplit(DSN)
    datastore = PostgresDatastore(
        dbname=parts.path.lstrip("/") or "postgres",
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or "",
        schema=schema,
    )
    recorder = PostgresApplicationRecorder(datastore)
    recorder.create_table()
    return recorder, datastore
