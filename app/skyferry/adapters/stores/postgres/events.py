"""The PostgreSQL event store.

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

Cost: appends to one schema do their insert and commit one at a time (validation and
encoding stay concurrent; an append of fewer than 32 events is one ``INSERT`` statement
in its own transaction, which takes the lock in its ``FROM`` and checks the version in
its ``WHERE``: one round trip).  Write throughput of one schema is bounded by the commit
latency (with ``synchronous_commit=on``, the WAL flush); ``benchmarks/bench_postgres.py``
prints the figure beside unserialized raw inserts.  The alternative,
``xid8``/``pg_snapshot_xmin`` visibility filtering, lets writers commit in parallel but
makes every reader wait behind the oldest running transaction of the whole cluster
(one idle-in-transaction session anywhere stalls every relay); for a ledger whose write
rate is far below a commit per millisecond per schema, the lock is the simpler and
more predictable choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Final, Self

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg_pool import ConnectionPool

from skyferry.adapters.stores._common import NeedsEvents, check_limit, copy_rows, encode_append
from skyferry.adapters.stores.postgres.client import (
    PostgresDatabase,
    _rendered,
)
from skyferry.adapters.stores.postgres.layout import (
    decode_position,
    encode_position,
    prefix_end,
)
from skyferry.adapters.stores.postgres.rows import (
    _COLUMNS,
    _COPY_BLOCK_ROWS,
    _COPY_FROM,
    _INT4,
    _ROW_COLUMNS,
    _STREAM_COLUMNS,
    STREAM_FIRST,
    _appended_copy_data,
    _binary_appendable,
    _binary_ready,
    _binary_storable,
    _copy_rows,
    _copy_rows_binary,
    _event_cursor,
    _events,
    _in_blocks,
    _positioned_rows,
    _stored_copy_data,
    _stored_rows,
    _streamed,
)
from skyferry.core.errors import (
    ConcurrencyError,
    TransientError,
    ValidationError,
)
from skyferry.core.messages import (
    Event,
    NewEvent,
    utc_now,
    validate_stream_id,
)
from skyferry.core.ports import (
    ANY,
    FEATURE_BULK_APPEND,
    FEATURE_COPY_FROM,
    FEATURE_COUNT,
    FEATURE_ROWS,
    FEATURE_TEMPORAL,
    FEATURE_TRANSACTIONS_ACROSS_STREAMS,
    AppendResult,
    CopiedBatch,
    EventStore,
    ExpectedVersion,
    RowSource,
    StoredRow,
    expected_as_int,
    features_of,
    resolve_conflict,
)

_ANY_RETRIES: Final = 50


class PostgresEventStore:
    """Event store in a PostgreSQL schema; features ``bulk_append`` (COPY), ``copy_from``
    (another PostgreSQL store's rows piped from server to server, another store's rows by
    binary COPY), ``count``, ``rows``, ``temporal``, ``transactions_across_streams``.  See the
    module docstring for the gap-free ``read_all``."""

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

    def __init__(self, url: str, *, client: ConnectionPool | None = None, existing: bool = False) -> None:
        self.db = PostgresDatabase(url, client=client, existing=existing)
        self.url = self.db.url
        self.identity = self.db.identity
        self._backlog: str | None = None
        """Where the last ``read_all`` that filled its page ended (see ``read_all``)."""
        t = self.db.table("events")
        # The statements of the hot paths, rendered to bytes once: psycopg would render a
        # composed statement again on every call (a tenth of a command cycle's client time).
        lock = self._append_lock()
        self._lock_sql = _rendered(lock)
        # An append's INSERT is one statement, its own transaction (the connections are in
        # autocommit): the lock in its FROM is taken before any row draws its position (every
        # row it projects needs the lock's row first), the version is checked in its WHERE,
        # and the lock is released with the commit.  BEGIN, the lock, the INSERT and COMMIT as
        # four statements of one pipeline cost the client twice as much (about 200 µs against
        # 100 for one event) in one round trip all the same.
        self._insert_sql = _rendered(
            sql.SQL(
                "INSERT INTO {t} (id, stream_id, version, type, schema_version, data, metadata, occurred_at,"
                " recorded_at) SELECT u.id, %(stream)s, u.version, u.type, u.schema_version, u.data::json,"
                " u.metadata::json, u.occurred_at, u.recorded_at"
                " FROM ({lock}) AS append_lock,"
                " unnest(%(ids)s::uuid[], %(versions)s::int[], %(types)s::text[], %(schema_versions)s::int[],"
                " %(data)s::text[], %(metadata)s::text[], %(occurred)s::timestamptz[], %(recorded)s::timestamptz[])"
                " AS u(id, version, type, schema_version, data, metadata, occurred_at, recorded_at)"
                " WHERE (SELECT coalesce(max(e.version), 0) FROM {t} e WHERE e.stream_id = %(stream)s) = %(expected)s"
                " ORDER BY u.version"
            ).format(t=t, lock=lock)
        )
        # One event (a command's usual append) as scalar parameters: arrays of one element cost
        # the client a third of the append (psycopg's array dumpers, each text escaped again).
        self._insert_one_sql = _rendered(
            sql.SQL(
                "INSERT INTO {t} (id, stream_id, version, type, schema_version, data, metadata, occurred_at,"
                " recorded_at) SELECT %(id)s::uuid, %(stream)s, %(version)s::int, %(type)s, %(schema_version)s::int,"
                " %(data)s::json, %(metadata)s::json, %(occurred)s::timestamptz, %(recorded)s::timestamptz"
                " FROM ({lock}) AS append_lock"
                " WHERE (SELECT coalesce(max(e.version), 0) FROM {t} e WHERE e.stream_id = %(stream)s) = %(expected)s"
            ).format(t=t, lock=lock)
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
        self._top_sql = _rendered(sql.SQL("SELECT max(position) FROM {}").format(t))
        # The heads the last ``bulk_append`` of this instance left, and the table's last
        # position then: while that position is still the last, nobody else has written.
        self._bulk_heads: tuple[int | None, dict[str, int]] | None = None
        copy_sql = sql.SQL(
            "COPY {} (id, stream_id, version, type, schema_version, data, metadata, occurred_at, recorded_at)"
            " FROM STDIN"
        ).format(t)
        self._copy_text_sql = _rendered(copy_sql)
        self._copy_binary_sql = _rendered(copy_sql + sql.SQL(" (FORMAT BINARY)"))
        self._version_sql = _rendered(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {} WHERE stream_id = %s").format(t)
        )
        self._ids_sql = _rendered(
            sql.SQL("SELECT id::text, stream_id, version FROM {} WHERE id = ANY(%s::uuid[])").format(t)
        )
        self._read_stream_sql = {
            backwards: _rendered(
                sql.SQL(
                    "SELECT " + _STREAM_COLUMNS + " FROM {} WHERE stream_id = %s AND version >= %s AND version <= %s"
                    " ORDER BY version " + ("DESC" if backwards else "ASC") + " LIMIT %s"
                ).format(t)
            )
            for backwards in (False, True)
        }
        # A migration's batch (``copy_from``): each stream's versions and the batch's bounds,
        # read from the source's position index; then the rows, as binary COPY tuples.
        self._batch_sql = _rendered(
            sql.SQL(
                "SELECT stream_id, min(version), max(version), count(*), max(position), max(recorded_at) FROM"
                " (SELECT stream_id, version, position, recorded_at FROM {} WHERE position > %s"
                " ORDER BY position LIMIT %s) AS b GROUP BY stream_id"
            ).format(t)
        )
        self._rows_sql = _rendered(
            sql.SQL("SELECT " + _ROW_COLUMNS + " FROM {} WHERE position > %s ORDER BY position LIMIT %s").format(t)
        )
        self._read_all_sql = _rendered(
            sql.SQL("SELECT " + _COLUMNS + ", position FROM {} WHERE position > %s ORDER BY position LIMIT %s").format(
                t
            )
        )

    @classmethod
    def from_url(cls, url: str, *, existing: bool = False) -> Self:
        """Parse ``url`` (see the package docstring); no I/O.  The schema is created (or
        migrated) on first use, or with ``existing`` must already hold the store: a missing
        database, schema or table is a ``ConfigurationError`` naming it, and nothing is created."""
        return cls(url, existing=existing)

    def _append_lock(self) -> sql.Composable:
        """The query that takes this schema's append lock (see the module docstring)."""
        return sql.SQL("SELECT pg_advisory_xact_lock(hashtext('skyferry-append'), hashtext({}))").format(
            sql.Literal(self.db.schema)
        )

    # -- append ----------------------------------------------------------------------

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> AppendResult:
        """Append atomically with an optimistic version check (see ``EventStore.append``).

        From :data:`_COPY_FROM` events on, the rows go by binary ``COPY`` after a version
        check under the append lock (one more round trip than the ``INSERT``, which checks
        the version in its own ``WHERE``, and a fraction of its cost per event), built and
        sent a block at a time, so that the server stores one block while the next is built.
        """
        events = events if isinstance(events, list | tuple) else list(events)
        encoded = encode_append(stream_id, events, sort_keys=False)
        expected = expected_as_int(expected_version)
        now = utc_now()
        binary = len(events) >= _COPY_FROM and _binary_appendable(events)
        with self.db.connection(f"appending to {stream_id!r}") as conn:
            for _ in range(_ANY_RETRIES):
                base = expected if expected is not None else self._stream_version(conn, stream_id)
                try:
                    if binary and base + len(events) in _INT4:  # the last version, too
                        data = _appended_copy_data(stream_id, base + 1, events, encoded, now)
                        inserted = self._copy_append(conn, stream_id, base, data, len(events))
                    else:
                        inserted = conn.execute(*self._params(stream_id, events, encoded, base, now)).rowcount
                except psycopg.errors.UniqueViolation:
                    inserted = 0
                if inserted == len(events):
                    return AppendResult(stream_id, base + 1, base + len(events))
                result = self._resolve(conn, stream_id, events, expected_version)
                if result is not None:
                    return result
            raise TransientError(f"stream {stream_id!r}: gave up appending with ANY after {_ANY_RETRIES} races")

    def _copy_append(
        self, conn: psycopg.Connection[Any], stream_id: str, base: int, data: Iterator[bytes], count: int
    ) -> int:
        """Under the append lock: COPY ``data`` (``count`` events' tuples, from
        :func:`_appended_copy_data`) if the stream is at ``base`` (return ``count``), else 0."""
        with conn.transaction():
            with conn.pipeline():
                conn.execute(self._lock_sql)
                cur = conn.execute(self._version_sql, [stream_id])
            row = cur.fetchone()
            if (row[0] if row else 0) != base:
                raise psycopg.Rollback
            self._write_binary(conn, data)
            return count
        return 0  # rolled back: the stream is elsewhere

    def _params(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        encoded: Sequence[tuple[bytes, bytes]],
        base: int,
        now: datetime,
    ) -> tuple[bytes, dict[str, Any]]:
        """The ``INSERT`` of an append and its parameters: scalars for one event, arrays for more."""
        if len(events) == 1:
            (event,), ((data, metadata),) = events, encoded
            return self._insert_one_sql, {
                "stream": stream_id,
                "expected": base,
                "id": event.id,
                "version": base + 1,
                "type": event.type,
                "schema_version": event.schema_version,
                "data": data.decode(),
                "metadata": metadata.decode(),
                "occurred": event.occurred_at,
                "recorded": event.recorded_at or now,
            }
        return self._insert_sql, {
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
                        cur = conn.execute(*self._params(stream_id, events, stream_encoded, base, now))
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
        with self.db.connection("importing events") as conn, _ids_checked():
            with conn.transaction():
                conn.execute(self._lock_sql)
                heads = self._heads(conn, streams)
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
                        raise ConcurrencyError(stream_id, version - 1, head, f"version {version} does not continue it")
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
                top = conn.execute(self._top_sql).fetchone()
            self._bulk_heads = (top[0] if top else None, {s: current.get(s, 0) for s in streams})
        return len(fresh)

    def copies_from(self, source: EventStore | RowSource) -> bool:
        """Whether :meth:`copy_from` reads ``source``: another PostgreSQL store (any server),
        or a :class:`~skyferry.core.ports.RowSource` (a store with the feature ``rows``, or an
        import's checked chunk)."""
        return isinstance(source, PostgresEventStore) or (
            FEATURE_ROWS in features_of(source) and isinstance(source, RowSource)
        )

    def copy_from(self, source: EventStore | RowSource, after: str | None, limit: int) -> CopiedBatch | None:
        """Copy the next ``limit`` events of ``source`` as the rows it keeps (feature ``copy_from``).

        From another PostgreSQL store, server to server: one query of the source gives
        each stream's first and last version in the batch and the batch's last position;
        the streams are checked against this store's heads under the append lock; then
        ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)`` on the source is piped into
        ``COPY ... FROM STDIN (FORMAT BINARY)`` here, block by block, in one transaction.
        Both tables have this schema's columns, so the source's binary tuples are this
        table's: the client never looks inside them.

        From another :class:`~skyferry.core.ports.RowSource` (a SQLite store, an import's
        checked chunk): its rows are read a page at a time, each page checked as above and
        written by binary ``COPY`` with its JSON as it is, in one transaction.

        New positions follow the source's order.  ``None`` (nothing written) where
        ``bulk_append`` must judge the batch event by event (see the port).
        """
        if not self.copies_from(source):
            raise ValidationError(f"copy_from reads PostgreSQL stores and stores with rows, not {source.url}")
        check_limit(limit, minimum=1)
        try:
            if isinstance(source, PostgresEventStore):
                return self._copy_from_server(source, after, limit)
            assert isinstance(source, RowSource)
            return self._copy_from_rows(source, after, limit)
        except NeedsEvents:
            return None

    def _copy_from_server(self, source: PostgresEventStore, after: str | None, limit: int) -> CopiedBatch:
        start = decode_position(after)
        with source.db.connection("reading events to copy") as reading:
            batch = reading.execute(source._batch_sql, [start, limit]).fetchall()
            if not batch:
                return CopiedBatch(0, after, None)
            streams = [row[0] for row in batch]
            count, top = sum(row[3] for row in batch), max(row[4] for row in batch)
            copy_out = sql.SQL(
                "COPY (SELECT id, stream_id, version, type, schema_version, data, metadata, occurred_at, recorded_at"
                " FROM {} WHERE position > {} AND position <= {} ORDER BY position) TO STDOUT (FORMAT BINARY)"
            ).format(source.db.table("events"), sql.Literal(start), sql.Literal(top))
            with self.db.connection("copying events") as conn, _ids_checked():
                with conn.transaction():
                    conn.execute(self._lock_sql)
                    heads = self._heads(conn, streams)
                    for stream_id, first, last, events, _, _ in batch:
                        if first != heads.get(stream_id, 0) + 1 or last - first + 1 != events:
                            raise NeedsEvents
                    with (
                        reading.cursor() as cursor,
                        cursor.copy(copy_out) as rows,
                        conn.cursor().copy(self._copy_binary_sql) as into,
                    ):
                        for block in rows:
                            into.write(block)
                        if cursor.rowcount != count:  # every row read is written, or the COPY fails
                            raise TransientError(
                                f"{source.url} gave {cursor.rowcount} events where it had counted {count}"
                                " (nothing was copied; run the command again)"
                            )
                    stored = conn.execute(self._top_sql).fetchone()
                self._bulk_heads = (stored[0] if stored else None, {row[0]: row[2] for row in batch})
        return CopiedBatch(count, encode_position(top), max(row[5] for row in batch))

    def _copy_from_rows(self, source: RowSource, after: str | None, limit: int) -> CopiedBatch:
        with self.db.connection("copying events") as conn, _ids_checked():
            with conn.transaction():
                conn.execute(self._lock_sql)

                def write(rows: list[StoredRow]) -> None:
                    if not _binary_storable(rows):
                        raise NeedsEvents
                    self._write_binary(conn, _stored_copy_data(rows))

                copied, heads = copy_rows(source, after, limit, lambda streams: self._heads(conn, streams), write)
                stored = conn.execute(self._top_sql).fetchone()
            self._bulk_heads = (stored[0] if stored else None, heads)
        return copied

    def _heads(self, conn: psycopg.Connection[Any], streams: list[str]) -> dict[str, int]:
        """The current version of each of ``streams`` that has events (under the append lock).

        Those the last ``bulk_append`` of this instance left are taken as they are while
        the table's last position is still the one it left (an import or a migration
        writes batch after batch to the same streams; a stream's head is an index probe,
        about 10 µs, so 1,000 streams would cost 10 ms a batch); the rest are read.
        """
        known = self._bulk_heads
        heads: dict[str, int] = {}
        unknown = streams
        if known is not None:
            top = conn.execute(self._top_sql).fetchone()
            if (top[0] if top else None) == known[0]:
                cached = known[1]
                unknown = [s for s in streams if s not in cached]
                heads = {s: cached[s] for s in streams if cached.get(s)}
        if unknown:
            heads.update(conn.execute(self._heads_sql, [unknown]).fetchall())
        return heads

    def _copy(self, conn: psycopg.Connection[Any], events: list[Event]) -> None:
        """COPY ``events``, validated and encoded a block at a time (see :func:`_copy_rows`), so that
        the server stores one block while the next is encoded; an invalid event raises inside
        the COPY, which aborts it (the caller's transaction stores nothing)."""
        if _binary_ready(events):
            self._write_binary(conn, _in_blocks(_copy_rows_binary(events)))
            return
        with conn.cursor().copy(self._copy_text_sql) as copy:
            for start in range(0, len(events), _COPY_BLOCK_ROWS):
                copy.write("".join(_copy_rows(events[start : start + _COPY_BLOCK_ROWS])).encode())

    def _write_binary(self, conn: psycopg.Connection[Any], blocks: Iterable[bytes]) -> None:
        """One binary COPY into ``events`` of ``blocks`` (from :func:`_in_blocks`), each sent
        as it is built."""
        with conn.cursor().copy(self._copy_binary_sql) as copy:
            for block in blocks:
                copy.write(block)

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
        check_limit(limit, minimum=0)
        query = self._read_stream_sql[bool(backwards)]
        upper = to_version if to_version is not None else 2**31 - 1
        first = STREAM_FIRST if limit is None else min(limit, STREAM_FIRST)
        with self.db.connection(f"reading {stream_id!r}") as conn:
            cursor = _event_cursor(conn)
            events = _events(stream_id, cursor.execute(query, [stream_id, from_version, upper, first]).fetchall())
            if len(events) == first and (limit is None or limit > first):  # a long stream: the rest streamed
                # a second statement, a later snapshot: the stream only grows, so what it
                # adds continues the versions read (it may hold events appended since)
                last = events[-1].version
                lower, upper = (from_version, last - 1) if backwards else (last + 1, upper)
                rest = None if limit is None else limit - first
                events += _events(stream_id, _streamed(cursor, query, [stream_id, lower, upper, rest]))
        return events

    def read_stream_as_of(self, stream_id: str, as_of: datetime) -> list[Event]:
        """The stream's events recorded at or before ``as_of`` (feature ``temporal``; index on the stream)."""
        query = sql.SQL(
            "SELECT " + _STREAM_COLUMNS + " FROM {} WHERE stream_id = %s AND recorded_at <= %s ORDER BY version"
        ).format(self.db.table("events"))
        with self.db.connection(f"reading {stream_id!r} as of {as_of}") as conn:
            rows = _event_cursor(conn).execute(query, [stream_id, as_of]).fetchall()
        return _events(stream_id, rows)

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

    def read_rows(self, after: str | None, limit: int) -> tuple[list[StoredRow], str | None]:
        """``read_all`` as the rows this store keeps (feature ``rows``): JSON as its text,
        timestamps as microseconds, nothing decoded."""
        check_limit(limit, minimum=1)
        with self.db.connection("reading all events") as conn:
            cursor = _event_cursor(conn)
            rows = _stored_rows(cursor.execute(self._rows_sql, [decode_position(after), limit]).fetchall())
        return rows, encode_position(rows[-1][0]) if rows else after

    def read_all(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Events after ``after`` in commit order of positions (gap-free, see the module docstring).

        The first :data:`STREAM_FIRST` rows come by a prepared statement and the rest, if
        any, streamed (``rows._streamed``); a call that goes on where a page of the same
        store filled up is paging through a backlog, and streams its whole page.  Threads
        sharing the store can only make a call take the other of the two ways."""
        check_limit(limit, minimum=1)
        start = decode_position(after)
        with self.db.connection("reading all events") as conn:
            cursor = _event_cursor(conn)
            if limit > STREAM_FIRST and after is not None and after == self._backlog:
                events = _positioned_rows(_streamed(cursor, self._read_all_sql, [start, limit]))
            else:
                first = min(limit, STREAM_FIRST)
                rows = cursor.execute(self._read_all_sql, [start, first]).fetchall()
                events = _positioned_rows(rows)
                if len(rows) == first < limit:  # a long page: the rest streamed, after the last position read
                    # a later snapshot, as the next call's would be: positions still come in order
                    rest = [rows[-1][-1], limit - first]
                    events += _positioned_rows(_streamed(cursor, self._read_all_sql, rest))
        self._backlog = events[-1].position if len(events) == limit else None
        return events

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


@contextlib.contextmanager
def _ids_checked() -> Iterator[None]:
    """Inside the connection's error translation: a bulk write holding an event id this
    store keeps in another stream is a :class:`ConcurrencyError` saying so."""
    try:
        yield
    except psycopg.errors.UniqueViolation as e:
        detail = e.diag.message_detail or str(e)
        raise ConcurrencyError(
            "(import)", "new ids", -1, f"an event id of this import is already stored elsewhere: {detail}"
        ) from e
