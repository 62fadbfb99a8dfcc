"""A PostgreSQL -> PostgreSQL migration beside the peer's copy loop and the server's own copy.

``python -m benchmarks --only copy``.  Every side copies the same number of events from one
schema of the server into a fresh one, interleaved in one run (best of three rounds, the
sides taking turns, every round into a fresh schema):

* **migrate**: ``Migration.catch_up`` as ``skyferry migrate`` runs it between two PostgreSQL
  stores: the ``copy_from`` path, binary ``COPY`` out of the source piped into binary
  ``COPY`` into the target, batches of 20,000 (each stream of a batch checked to continue
  the target's, one transaction and a checkpoint per batch, no event decoded).
* **migrate, event by event**: the same with ``--shard 0/1`` (every stream, but a sharded
  migration takes the path every other pair of stores takes): ``read_all`` one batch
  ahead, ``bulk_append`` (binary ``COPY``, every event checked), a checkpoint per batch of
  5,000.
* **the peer's copy loop**: the ``eventsourcing`` library's ``PostgresApplicationRecorder``
  (the ``bench`` dependency group): read every notification of one recorder in pages of
  1,000 (``select_notifications``) and insert each page into a second recorder
  (``insert_events``): no checks, no checkpoint.  Its events carry what its mapper would
  store for ours (the timestamp, data and metadata as JSON ``state`` bytes).
* **piped COPY**: ``COPY (SELECT ...) TO STDOUT`` piped into ``COPY FROM STDIN`` with the raw
  driver: the floor of the server's own work.

Goals: migrate >= 2.5x the peer's copy loop, and >= 130,000 events/s.  Then one more figure:
``verify_stores`` of the copy (both sides read once, each stream's chain compared).  Then
SQLite -> PostgreSQL and PostgreSQL -> SQLite (half as many events): ``copy_from`` (the
rows the source keeps, a page at a time, no event decoded) beside the event path, each
interleaved with the other.
The server is ``SKYFERRY_BENCH_POSTGRES_DSN`` as in ``bench_postgres``; every schema this
module creates is dropped at the end.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import sql

from benchmarks.bench_peer import postgres_peer
from benchmarks.bench_postgres import DSN
from benchmarks.figures import Figure, interleaved
from skyferry.adapters.registry import open_event_store, open_view_store
from skyferry.adapters.stores.postgres import PostgresEventStore
from skyferry.migrate.migrate import Migration
from skyferry.migrate.sharding import Shard
from skyferry.migrate.verify import verify_stores

DATA: dict[str, Any] = {"amount": "12.50", "currency": "EUR", "account_id": "acc-0001", "note": "benchmark payload"}
METADATA: dict[str, Any] = {"correlation_id": "6f1c2d9e-1b7a-4f0e-9a53-2a8c1f4b7d10", "actor": "bench"}
TYPE = "MoneyDeposited"
TOPIC = "ledger:MoneyDeposited"
STREAMS = 1000
PAGE = 1000
COLUMNS = "id, stream_id, version, type, schema_version, data, metadata, occurred_at, recorded_at"


class Schemas:
    """Schemas of the benchmark server, each dropped by :meth:`drop`."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def new(self) -> str:
        name = f"bench_copy_{uuid.uuid4().hex[:12]}"
        self.names.append(name)
        return name

    def url(self, schema: str) -> str:
        return f"{DSN}{'&' if '?' in DSN else '?'}schema={schema}"

    def store(self) -> tuple[str, str]:
        """A fresh, empty skyferry store: ``(schema, url)``."""
        schema = self.new()
        url = self.url(schema)
        store = PostgresEventStore(url)
        store.last_position()  # creates the schema, untimed
        store.close()
        return schema, url

    def drop(self) -> None:
        with psycopg.connect(DSN, autocommit=True) as conn:
            for name in self.names:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        self.names.clear()


def _events(count: int) -> Iterator[tuple[Any, ...]]:
    moment = datetime.now(UTC)
    data, metadata = orjson.dumps(DATA).decode(), orjson.dumps(METADATA).decode()
    for i in range(count):
        yield (str(uuid.uuid4()), f"bench-{i % STREAMS}", i // STREAMS + 1, TYPE, 1, data, metadata, moment, moment)


def skyferry_source(schemas: Schemas, count: int) -> tuple[str, str]:
    """A skyferry store of ``count`` events over 1,000 streams, filled by raw ``COPY`` (untimed)."""
    schema, url = schemas.store()
    with (
        psycopg.connect(DSN, autocommit=True) as conn,
        conn.cursor().copy(
            sql.SQL("COPY {}.events ({}) FROM STDIN").format(sql.Identifier(schema), sql.SQL(COLUMNS))
        ) as copy,
    ):
        for row in _events(count):
            copy.write_row(row)
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}.events").format(sql.Identifier(schema)))
    return schema, url


def peer_recorder(schemas: Schemas) -> tuple[PostgresApplicationRecorder, PostgresDatastore]:
    """The peer's recorder in a fresh schema."""
    return postgres_peer(schemas.new())


def peer_source(schemas: Schemas, count: int) -> tuple[PostgresApplicationRecorder, PostgresDatastore]:
    """The peer's recorder holding ``count`` events over 1,000 originators (untimed)."""
    recorder, datastore = peer_recorder(schemas)
    originators = [uuid.uuid4() for _ in range(STREAMS)]
    state = orjson.dumps({"timestamp": datetime.now(UTC).isoformat(), "data": DATA, "metadata": METADATA})
    batch: list[StoredEvent] = []
    for i in range(count):
        batch.append(StoredEvent(originators[i % STREAMS], i // STREAMS + 1, TOPIC, state))
        if len(batch) == PAGE:
            recorder.insert_events(batch)
            batch = []
    if batch:
        recorder.insert_events(batch)
    return recorder, datastore


def run(args: argparse.Namespace) -> list[Figure]:
    """The copy's figures."""
    quick = bool(getattr(args, "quick", False))
    count = 20_000 if quick else 200_000
    schemas = Schemas()
    closers: list[Callable[[], object]] = []
    try:
        src_schema, src_url = skyferry_source(schemas, count)
        peer_src, peer_src_store = peer_source(schemas, count)
        closers.append(peer_src_store.close)
        targets: list[str] = []

        def migrate() -> Callable[[], None]:
            _, url = schemas.store()
            targets.append(url)
            return migration(src_url, url, count, direct=True)

        def event_path() -> Callable[[], None]:
            return migration(src_url, schemas.store()[1], count, direct=False)

        def peer() -> Callable[[], None]:
            recorder, datastore = peer_recorder(schemas)
            closers.append(datastore.close)

            def work() -> None:
                start, copied = 0, 0
                while page := peer_src.select_notifications(start, PAGE, inclusive_of_start=False):
                    recorder.insert_events(
                        [StoredEvent(n.originator_id, n.originator_version, n.topic, n.state) for n in page]
                    )
                    start = page[-1].id
                    copied += len(page)
                assert copied == count

            return work

        def piped() -> Callable[[], None]:
            schema, _ = schemas.store()

            def work() -> None:
                with psycopg.connect(DSN) as reader, psycopg.connect(DSN) as writer:
                    out = sql.SQL("COPY (SELECT {} FROM {}.events ORDER BY position) TO STDOUT (FORMAT BINARY)").format(
                        sql.SQL(COLUMNS), sql.Identifier(src_schema)
                    )
                    into = sql.SQL("COPY {}.events ({}) FROM STDIN (FORMAT BINARY)").format(
                        sql.Identifier(schema), sql.SQL(COLUMNS)
                    )
                    with reader.cursor().copy(out) as source, writer.cursor().copy(into) as target:
                        for block in source:
                            target.write(block)

            return work

        load_before = os.getloadavg()[0]
        ours, events_rate, peer_rate, raw = interleaved(count, [migrate, event_path, peer, piped])
        load = f"load {load_before:.2f} -> {os.getloadavg()[0]:.2f}"
        source, target = PostgresEventStore(src_url), PostgresEventStore(targets[-1])
        start = time.perf_counter()
        report = verify_stores(source, target)
        verify_rate = count / (time.perf_counter() - start)
        source.close()
        target.close()
        if not report.ok:
            raise RuntimeError(f"the copy differs from its source: {report.differences[:3]}")
        name = "migrate PostgreSQL -> PostgreSQL"
        by_event = f"{name}, event by event"
        figures = [
            Figure(name, ours, "events/s", peer_rate, "eventsourcing copy loop", 2.5, times=True),
            Figure(name, ours, "events/s", goal_value=130_000, note=load),
            Figure(name, ours, "events/s", raw, "piped binary COPY", note=load),
            Figure(by_event, events_rate, "events/s", peer_rate, "eventsourcing copy loop", times=True),
            Figure(by_event, events_rate, "events/s", raw, "piped binary COPY", note=load),
            Figure("verify_stores of the copy (both sides)", verify_rate, "events/s", note="ok"),
        ]
        return figures + with_sqlite(schemas, count // 2)
    finally:
        for close in closers:
            close()
        schemas.drop()


def migration(source_url: str, target_url: str, count: int, *, direct: bool) -> Callable[[], None]:
    """The timed work of one migration: ``copy_from`` (``direct``), or the event path
    (``--shard 0/1``: every stream, but a sharded migration reads and writes events)."""

    def work() -> None:
        source, target = open_event_store(source_url), open_event_store(target_url)
        views = open_view_store(target_url)
        job = Migration(source, target, views, shard=None if direct else Shard(0, 1))
        job.catch_up()
        assert job.report.written == count
        assert job.report.write_path == ("copy_from" if direct else "bulk_append")
        for closable in (views, target, source):
            closable.close()

    return work


def with_sqlite(schemas: Schemas, count: int) -> list[Figure]:
    """SQLite -> PostgreSQL and PostgreSQL -> SQLite: ``copy_from`` (the rows the source
    keeps, a page at a time, no event decoded) beside the event path, interleaved, from
    sources of ``count`` events (filled untimed)."""
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="skyferry-bench-copy-") as directory:
        files = itertools.count()

        def sqlite_url() -> str:
            return f"sqlite:///{directory}/{next(files)}.db"

        def postgres_url() -> str:
            return schemas.store()[1]

        _, pg_source = skyferry_source(schemas, count)
        sqlite_source = sqlite_url()
        migration(pg_source, sqlite_source, count, direct=True)()
        for name, source_url, new_target in (
            ("SQLite -> PostgreSQL", sqlite_source, postgres_url),
            ("PostgreSQL -> SQLite", pg_source, sqlite_url),
        ):
            sides = [partial(_side, source_url, new_target, count, direct) for direct in (True, False)]
            load_before = os.getloadavg()[0]
            direct_rate, by_event = interleaved(count, sides)
            load = f"load {load_before:.2f} -> {os.getloadavg()[0]:.2f}"
            figures.append(Figure(f"migrate {name}", direct_rate, "events/s", by_event, "event by event", note=load))
    return figures


def _side(source_url: str, new_target: Callable[[], str], count: int, direct: bool) -> Callable[[], None]:
    return migration(source_url, new_target(), count, direct=direct)
