"""PostgreSQL store and NATS JetStream relay, each beside the raw limit measured in the same run.

* **command cycle** -- ``Ledger.execute(Deposit)`` on accounts holding 10 events (load the
  account, decide, append with the expected version) vs. the raw psycopg cycle: read the
  stream's rows, ``INSERT`` one event, ``COMMIT``.  Goal >= 70 %.
* **concurrent appends** -- 4 threads appending one event each to their own streams, vs.
  the same inserts without the gap lock: the price of the advisory lock that keeps
  ``read_all`` gap-free (see ``app/skyferry/adapters/stores/postgres/events.py``).  Informational.
* **bulk_append (COPY)** vs. raw ``COPY`` of the same rows.
* **read_all decoded** -- pages of 1,000 decoded into ``Event``s vs. a raw server-side
  cursor with ``orjson`` parsing of data and metadata.  Goal >= 70 %.
* **relay publish** -- ``Relay.run_once`` from PostgreSQL to JetStream vs. raw
  ``publish_async`` of the same payloads with nats-py.  Goal >= 50 %.
* **command to view latency** -- from ``execute`` returning to the balances view showing
  the deposit, with a worker (relay to JetStream, projections) running in a thread; p50
  and p99 in milliseconds.

Servers: ``SKYFERRY_BENCH_POSTGRES_DSN`` (else ``.cache/postgres.dsn``, else
``postgresql://postgres@127.0.0.1:5432/postgres``)
in a schema of its own, dropped at the end; NATS from ``.cache/nats.url`` or
``nats://127.0.0.1:4222``, a stream of its own, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import nats
import orjson
import psycopg
from psycopg import sql

from benchmarks.figures import Figure, compare
from skyferry.adapters.brokers.memory import MemoryBroker
from skyferry.adapters.brokers.nats import NatsBroker
from skyferry.adapters.stores.postgres import PostgresEventStore, PostgresViewStore
from skyferry.bootstrap import Ledger
from skyferry.core.codec import encode
from skyferry.core.messages import Event, NewEvent
from skyferry.core.relay import Relay
from skyferry.ledger import commands as cmd

_CACHED_DSN = Path(__file__).resolve().parents[1] / ".cache" / "postgres.dsn"
DSN = os.environ.get("SKYFERRY_BENCH_POSTGRES_DSN") or (
    _CACHED_DSN.read_text().strip() if _CACHED_DSN.exists() else "postgresql://postgres@127.0.0.1:5432/postgres"
)
PAGE = 1000


def nats_server() -> str:
    cached = Path(__file__).resolve().parents[1] / ".cache" / "nats.url"
    return cached.read_text().strip() if cached.exists() else "nats://127.0.0.1:4222"


@contextmanager
def schema() -> Iterator[str]:
    """A store URL with a schema of its own (dropped afterwards)."""
    name = f"bench_pg_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in DSN else "?"
    try:
        yield f"{DSN}{sep}schema={name}&pool_max=8"
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@contextmanager
def nats_stream() -> Iterator[str]:
    """A broker URL with a stream of its own (deleted afterwards)."""
    server = nats_server()
    stream = f"BENCH{uuid.uuid4().hex[:12]}"
    try:
        yield f"{server}/{stream}"
    finally:

        async def delete() -> None:
            nc = await nats.connect(servers=[server])
            try:
                await nc.jetstream().delete_stream(stream)
            except Exception:  # noqa: S110 - never created: nothing to delete
                pass
            finally:
                await nc.close()

        asyncio.run(delete())


def schema_name(url: str) -> str:
    return url.rsplit("schema=", 1)[1].split("&")[0]


def exported(count: int, streams: int) -> list[Event]:
    now = datetime.now(UTC)
    data = {"amount": "12.50", "currency": "EUR", "account_id": "acc-0001", "note": "benchmark payload"}
    meta = {"correlation_id": str(uuid.uuid4()), "actor": "bench"}
    return [
        Event(str(uuid.uuid4()), f"bench-{i % streams}", i // streams + 1, "MoneyDeposited", 1, data, meta, now, now)
        for i in range(count)
    ]


# --- command cycle ----------------------------------------------------------------------------


def bench_command_cycle(url: str, count: int) -> Figure:
    """``Ledger.execute(Deposit)`` vs. raw read-rows + insert + commit."""
    events, views = PostgresEventStore(url), PostgresViewStore(url)
    ledger = Ledger(events, views, MemoryBroker())
    accounts = [f"acct-{i}" for i in range(20)]
    for account in accounts:
        ledger.execute(cmd.OpenAccount(account_id=account, owner="bench", currency="EUR"))
        for _ in range(9):
            ledger.execute(cmd.Deposit(account_id=account, amount="1.00", currency="EUR"))
    rounds = iter(range(1000))

    def adapter() -> None:
        for i in range(count):
            ledger.execute(cmd.Deposit(account_id=accounts[i % len(accounts)], amount="1.00", currency="EUR"))

    table = sql.SQL("{}.events").format(sql.Identifier(schema_name(url)))
    raw_conn = psycopg.connect(DSN, autocommit=True)
    select = sql.SQL(
        "SELECT id, version, type, schema_version, data::text, metadata::text, occurred_at, recorded_at"
        " FROM {} WHERE stream_id = %s ORDER BY version"
    ).format(table)
    insert = sql.SQL(
        "INSERT INTO {} (id, stream_id, version, type, schema_version, data, metadata, occurred_at, recorded_at)"
        " VALUES (%s, %s, %s, %s, 1, %s::json, %s::json, now(), now())"
    ).format(table)
    now = datetime.now(UTC)
    for account in accounts:
        events.bulk_append(
            [
                Event(
                    str(uuid.uuid4()),
                    f"raw-{account}",
                    v,
                    "MoneyDeposited",
                    1,
                    {"a": "1.00"},
                    {},
                    now,
                    now,
                )
                for v in range(1, 11)
            ]
        )
    versions = {a: 10 for a in accounts}

    def raw() -> None:
        next(rounds)
        for i in range(count):
            account = accounts[i % len(accounts)]
            with raw_conn.transaction():
                rows = raw_conn.execute(select, [f"raw-{account}"]).fetchall()
                for row in rows:
                    orjson.loads(row[4])
                versions[account] += 1
                raw_conn.execute(
                    insert,
                    [
                        str(uuid.uuid4()),
                        f"raw-{account}",
                        versions[account],
                        "MoneyDeposited",
                        orjson.dumps({"amount": "1.00", "currency": "EUR"}).decode(),
                        "{}",
                    ],
                )

    value, raw_rate = compare(count, adapter, raw)
    raw_conn.close()
    ledger.close()
    return Figure("command cycle (Deposit)", value, "commands/s", raw_rate, "read rows+insert+commit", goal=0.7)


# --- concurrent appends: the price of the gap lock -------------------------------------------------


def bench_concurrent_appends(url: str, per_thread: int, threads: int = 4) -> Figure:
    """Appends from several threads with the gap lock vs. the same inserts without it."""
    store = PostgresEventStore(url)
    store.stream_version("warm-up")
    tag = iter(range(1000))

    def parallel(work: Callable[[int, int], None]) -> Callable[[], None]:
        def run() -> None:
            run_id = next(tag)
            workers = [threading.Thread(target=work, args=(run_id, t)) for t in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()

        return run

    def adapter(run_id: int, t: int) -> None:
        stream = f"par-{run_id}-{t}"
        for v in range(per_thread):
            store.append(stream, [NewEvent("MoneyDeposited", {"amount": "1.00"})], v)

    insert = sql.SQL(
        "INSERT INTO {}.events (id, stream_id, version, type, schema_version, data, metadata, occurred_at,"
        " recorded_at) VALUES (%s, %s, %s, 'MoneyDeposited', 1, %s::json, '{{}}', now(), now())"
    ).format(sql.Identifier(schema_name(url)))

    def raw(run_id: int, t: int) -> None:
        with psycopg.connect(DSN, autocommit=True) as conn:
            stream = f"rawpar-{run_id}-{t}"
            for v in range(per_thread):
                conn.execute(insert, [str(uuid.uuid4()), stream, v + 1, '{"amount": "1.00"}'])

    value, raw_rate = compare(per_thread * threads, parallel(adapter), parallel(raw))
    store.close()
    return Figure(
        f"concurrent appends ({threads} threads)",
        value,
        "appends/s",
        raw_rate,
        "unserialized INSERTs",
        note="cost of the gap-free advisory lock; no goal",
    )


# --- bulk append and read_all ----------------------------------------------------------------------


def bench_bulk_append(count: int) -> Figure:
    """``bulk_append`` (COPY) in batches of 1,000 vs. raw COPY of the same rows."""

    def adapter() -> None:
        with schema() as url:
            store = PostgresEventStore(url)
            events = exported(count, max(1, count // 50))
            for start in range(0, count, PAGE):
                store.bulk_append(events[start : start + PAGE])
            store.close()

    def raw() -> None:
        with schema() as url:
            store = PostgresEventStore(url)
            store.stream_version("create the schema")
            store.close()
            events = exported(count, max(1, count // 50))
            copy_sql = sql.SQL(
                "COPY {}.events (id, stream_id, version, type, schema_version, data, metadata, occurred_at,"
                " recorded_at) FROM STDIN"
            ).format(sql.Identifier(schema_name(url)))
            with psycopg.connect(DSN, autocommit=True) as conn:
                for start in range(0, count, PAGE):
                    with conn.transaction(), conn.cursor().copy(copy_sql) as copy:
                        for e in events[start : start + PAGE]:
                            copy.write_row(
                                (
                                    e.id,
                                    e.stream_id,
                                    e.version,
                                    e.type,
                                    e.schema_version,
                                    orjson.dumps(e.data).decode(),
                                    orjson.dumps(e.metadata).decode(),
                                    e.occurred_at,
                                    e.recorded_at,
                                )
                            )

    value, raw_rate = compare(count, adapter, raw, repeat=2)
    return Figure("bulk_append (COPY, 1,000 per call)", value, "events/s", raw_rate, "raw COPY", goal=0.7)


def bench_read_all(url: str, count: int) -> Figure:
    """``read_all`` decoded vs. a raw server-side cursor plus orjson parsing."""
    store = PostgresEventStore(url)
    events = exported(count, max(1, count // 50))
    for start in range(0, count, 10_000):
        store.bulk_append(events[start : start + 10_000])

    def adapter() -> None:
        after = None
        while page := store.read_all(after, PAGE):
            after = page[-1].position

    query = sql.SQL(
        "SELECT position, id, stream_id, version, type, schema_version, data::text, metadata::text,"
        " occurred_at, recorded_at FROM {}.events ORDER BY position"
    ).format(sql.Identifier(schema_name(url)))

    def raw() -> None:
        with psycopg.connect(DSN) as conn, conn.cursor(name="bench_read_all") as cursor:
            cursor.itersize = PAGE
            cursor.execute(query)
            for row in cursor:
                orjson.loads(row[6])
                orjson.loads(row[7])

    value, raw_rate = compare(count, adapter, raw)
    store.close()
    return Figure("read_all decoded", value, "events/s", raw_rate, "server-side cursor+orjson", goal=0.7)


# --- relay to JetStream -----------------------------------------------------------------------------


def bench_relay(url: str, count: int) -> Figure:
    """``Relay.run_once`` (PostgreSQL to JetStream) vs. raw ``publish_async`` of the same messages."""
    store, views = PostgresEventStore(url), PostgresViewStore(url)
    events = exported(count, max(1, count // 50))
    for start in range(0, count, 10_000):
        store.bulk_append(events[start : start + 10_000])
    messages = [encode(e, "full") for e in store.read_all(None, count)]
    runs = iter(range(100))
    with nats_stream() as broker_url:
        broker = NatsBroker(broker_url)

        def adapter() -> None:
            relay = Relay(store, views, broker, name=f"$relay-bench-{next(runs)}", batch_size=500)
            relay.run_once()

        server = broker_url.rsplit("/", 1)[0]
        subject_of = {m.key: broker.subject_for(m.key) for m in messages}

        async def raw_publish(run: int) -> None:
            nc = await nats.connect(servers=[server])
            js = nc.jetstream()
            for start in range(0, len(messages), 500):
                futures = [
                    await js.publish_async(
                        subject_of[m.key], m.body, headers={"Nats-Msg-Id": f"raw{run}-{m.id}"}, wait_stall=30
                    )
                    for m in messages[start : start + 500]
                ]
                await asyncio.gather(*futures)
            await nc.close()

        raw_runs = iter(range(100))
        broker.publish(messages[:1])  # connect and create the stream before timing

        def raw() -> None:
            asyncio.run(raw_publish(next(raw_runs)))

        value, raw_rate = compare(count, adapter, raw)
        broker.close()
    store.close()
    views.close()
    return Figure("relay publish to JetStream", value, "events/s", raw_rate, "raw publish_async", goal=0.5)


# --- latency from command to view ---------------------------------------------------------------------


def bench_latency(url: str, samples: int) -> list[Figure]:
    """Command accepted to balances view updated, with the worker running in a thread."""
    with nats_stream() as broker_url:
        ledger = Ledger(PostgresEventStore(url), PostgresViewStore(url), NatsBroker(broker_url))
        ledger.execute(cmd.OpenAccount(account_id="lat-1", owner="bench", currency="EUR"))
        stop = threading.Event()
        worker = threading.Thread(target=ledger.run_worker, args=(stop,), kwargs={"poll_interval": 0.002})
        worker.start()
        latencies: list[float] = []
        try:
            for i in range(1, samples + 1):
                ledger.execute(cmd.Deposit(account_id="lat-1", amount="1.00", currency="EUR"))
                accepted = time.perf_counter()
                want = f"{i}.00"
                while True:
                    try:
                        if ledger.balance("lat-1")["balance"] == want:
                            break
                    except Exception:  # noqa: S110 - not projected yet
                        pass
                    time.sleep(0.0005)
                latencies.append((time.perf_counter() - accepted) * 1000)
        finally:
            stop.set()
            worker.join()
            ledger.close()
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    note = "worker polls every 2 ms; lower is better"
    return [
        Figure("command to view latency p50", statistics.median(ordered), "ms", note=note),
        Figure("command to view latency p99", p99, "ms", note=note),
    ]


def run(args: argparse.Namespace) -> list[Figure]:
    """The PostgreSQL and JetStream figures."""
    quick = bool(getattr(args, "quick", False))
    figures: list[Figure] = []
    with schema() as url:
        figures.append(bench_command_cycle(url, 100 if quick else 1000))
        figures.append(bench_concurrent_appends(url, 50 if quick else 250))
        figures.append(bench_read_all(url, 10_000 if quick else 100_000))
    figures.append(bench_bulk_append(5_000 if quick else 50_000))
    with schema() as url:
        figures.append(bench_relay(url, 2_000 if quick else 20_000))
    with schema() as url:
        figures.extend(bench_latency(url, 50 if quick else 300))
    return figures
