"""SQLite store: appends and ``read_all`` against its raw driver (``apsw``) on the same file, same durability.

* **append** -- one event per call with an expected version, ``synchronous=FULL`` (the
  default): ``SQLiteEventStore.append`` vs. the raw transaction (``BEGIN IMMEDIATE``,
  ``SELECT max(version)``, ``INSERT``, ``COMMIT``) on a connection with the same pragmas.
* **bulk append** -- ``bulk_append`` of 1,000-event batches vs. raw ``executemany``.
* **read_all decoded** -- ``read_all`` in pages of 1,000 (rows decoded into ``Event``s;
  the two timestamps stay integer microseconds until read, see ``Event``) vs. the raw
  paged ``SELECT`` plus ``orjson.loads`` of data and metadata.  Goal: >= 70 % of raw.
  A second figure also reads both timestamps of every event (two datetimes each), to
  show what a reader that needs them pays; the raw side there builds the same datetimes.

Every figure runs under the process settings of a ``skyferry`` process: the GC threshold
that ``skyferry.cli.main`` sets (:func:`skyferry.runtime.tune_gc`), for the adapter and the raw side
alike (restored afterwards).  For comparison, ``read_all`` is also measured (both sides)
under CPython's default threshold, the setting of a process that embeds the store
without the ``skyferry`` entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apsw
import orjson

from benchmarks.figures import Figure, compare
from skyferry.adapters.stores.sqlite import SQLiteEventStore, open_connection
from skyferry.core.messages import Event, NewEvent
from skyferry.runtime import tune_gc

PAGE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _events(count: int, streams: int) -> list[Event]:
    now = datetime.now(UTC)
    data = {"amount": "12.50", "currency": "EUR", "account_id": "acc-0001", "note": "benchmark payload"}
    meta = {"correlation_id": str(uuid.uuid4()), "actor": "bench"}
    # Distinct timestamps per event, as real appends have (no cache can make them cheaper).
    return [
        Event(
            str(uuid.uuid4()),
            f"bench-{i % streams}",
            i // streams + 1,
            "MoneyDeposited",
            1,
            data,
            meta,
            now + timedelta(microseconds=i),
            now + timedelta(microseconds=i + 7),
        )
        for i in range(count)
    ]


@contextlib.contextmanager
def _gc_threshold(young: int | None = None) -> Iterator[None]:
    """Run under the ``skyferry`` GC setting (``young=None``) or this young threshold; restore."""
    before = gc.get_threshold()
    if young is None:
        tune_gc()
    else:
        gc.set_threshold(young, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def raw_connection(path: Path | str, synchronous: str = "FULL") -> apsw.Connection:
    """The raw side of the SQLite benchmarks: the store's driver, opened as the store opens
    it (``open_connection``), in WAL mode at the given durability."""
    db = open_connection(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


def bench_read_all(directory: Path, count: int) -> list[Figure]:
    """``read_all`` decoded vs. raw paged read + orjson parse."""
    url = f"sqlite:///{directory}/read.db"
    store = SQLiteEventStore(url)
    events = _events(count, streams=max(1, count // 50))
    for start in range(0, count, 10_000):
        store.bulk_append(events[start : start + 10_000])

    def adapter() -> None:
        after = None
        while page := store.read_all(after, PAGE):
            after = page[-1].position

    raw_db = raw_connection(directory / "read.db")
    sql = (
        "SELECT position, id, stream_id, version, type, schema_version, data, metadata, occurred_at, "
        "recorded_at FROM events WHERE position > ? ORDER BY position LIMIT ?"
    )

    def raw() -> None:
        after = -1
        while rows := list(raw_db.execute(sql, (after, PAGE))):
            for row in rows:
                orjson.loads(row[6])
                orjson.loads(row[7])
            after = rows[-1][0]

    value, raw_rate = compare(count, adapter, raw)

    def adapter_timestamps() -> None:
        after = None
        while page := store.read_all(after, PAGE):
            for event in page:
                event.occurred_at  # noqa: B018 - decoding the timestamp is the point
                event.recorded_at  # noqa: B018
            after = page[-1].position

    def raw_timestamps() -> None:
        after = -1
        while rows := list(raw_db.execute(sql, (after, PAGE))):
            for row in rows:
                orjson.loads(row[6])
                orjson.loads(row[7])
                _EPOCH + timedelta(microseconds=row[8])
                _EPOCH + timedelta(microseconds=row[9])
            after = rows[-1][0]

    with_ts, raw_ts = compare(count, adapter_timestamps, raw_timestamps)
    with _gc_threshold(700):  # CPython's default
        default_gc, raw_default_gc = compare(count, adapter, raw)
    store.close()
    raw_db.close()
    return [
        Figure("read_all decoded", value, "events/s", raw_rate, "SELECT + orjson", goal=0.7),
        Figure(
            "read_all decoded, timestamps read", with_ts, "events/s", raw_ts, "SELECT + orjson + datetimes", goal=0.7
        ),
        Figure(
            "read_all decoded, CPython's default GC",
            default_gc,
            "events/s",
            raw_default_gc,
            "SELECT + orjson",
            note="threshold 700, not the skyferry setting",
        ),
    ]


def bench_append(directory: Path, count: int) -> Figure:
    """One-event appends with an expected version at synchronous=FULL."""
    store = SQLiteEventStore(f"sqlite:///{directory}/append.db")
    store.stream_version("warm-up")
    stream_count = 10

    def adapter() -> None:
        versions = [store.stream_version(f"a-{s}") for s in range(stream_count)]
        for i in range(count):
            s = i % stream_count
            store.append(f"a-{s}", [NewEvent("MoneyDeposited", {"amount": "1.00", "n": i})], versions[s])
            versions[s] += 1

    raw_db = raw_connection(directory / "append.db")
    insert = (
        "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at, "
        "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    def raw() -> None:
        for i in range(count):
            stream = f"r-{i % stream_count}"
            raw_db.execute("BEGIN IMMEDIATE")
            current = raw_db.execute("SELECT max(version) FROM events WHERE stream_id = ?", (stream,)).get
            now = int(datetime.now(UTC).timestamp() * 1_000_000)
            raw_db.execute(
                insert,
                (
                    str(uuid.uuid4()),
                    stream,
                    (current or 0) + 1,
                    "MoneyDeposited",
                    1,
                    orjson.dumps({"amount": "1.00", "n": i}).decode(),
                    "{}",
                    now,
                    now,
                ),
            )
            raw_db.execute("COMMIT")

    value, raw_rate = compare(count, adapter, raw)
    store.close()
    raw_db.close()
    return Figure("append (1 event, synchronous=FULL)", value, "appends/s", raw_rate, "apsw txn", goal=0.7)


def bench_bulk_append(directory: Path, count: int) -> Figure:
    """``bulk_append`` in 1,000-event batches vs. raw executemany per batch."""
    runs = iter(range(100))

    def adapter() -> None:
        store = SQLiteEventStore(f"sqlite:///{directory}/bulk-{next(runs)}.db")
        events = _events(count, streams=max(1, count // 50))
        for start in range(0, count, PAGE):
            store.bulk_append(events[start : start + PAGE])
        store.close()

    raw_runs = iter(range(100))
    insert = (
        "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at, "
        "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    def raw() -> None:
        store = SQLiteEventStore(f"sqlite:///{directory}/rawbulk-{next(raw_runs)}.db")
        store.stream_version("create the schema")
        store.close()
        db = raw_connection(directory / f"rawbulk-{next(raw_runs) - 1}.db")
        events = _events(count, streams=max(1, count // 50))
        for start in range(0, count, PAGE):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                insert,
                [
                    (
                        e.id,
                        e.stream_id,
                        e.version,
                        e.type,
                        e.schema_version,
                        orjson.dumps(e.data).decode(),
                        orjson.dumps(e.metadata).decode(),
                        0,
                        0,
                    )
                    for e in events[start : start + PAGE]
                ],
            )
            db.execute("COMMIT")
        db.close()

    value, raw_rate = compare(count, adapter, raw)
    return Figure("bulk_append (1,000 per call)", value, "events/s", raw_rate, "executemany", goal=0.7)


def run(args: argparse.Namespace) -> list[Figure]:
    """The SQLite store figures."""
    quick = bool(getattr(args, "quick", False))
    with _gc_threshold(), tempfile.TemporaryDirectory(prefix="skyferry-bench-") as name:
        directory = Path(name)
        return [
            bench_append(directory, 100 if quick else 1000),
            bench_bulk_append(directory, 5_000 if quick else 50_000),
            *bench_read_all(directory, 10_000 if quick else 100_000),
        ]
