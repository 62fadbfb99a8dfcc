"""The ledger on SQLite: the command cycle and a projection rebuild, beside the raw driver (apsw).

* **command cycle** -- ``Ledger.execute(Deposit)``: load the account (cache + tail read),
  decide, append, commit; vs. the raw cycle on the same file and durability:
  ``BEGIN IMMEDIATE``, read the stream's tail, compute the balance, ``INSERT``,
  ``COMMIT``.  Measured at ``synchronous=full`` (the default, fsync per commit) and
  ``synchronous=normal`` (CPU-bound: shows the kernel's own overhead).  Goal >= 70 %.
* **projection rebuild** -- ``Ledger.rebuild("balances")`` over N account events, in
  events/s, beside the raw paged read + ``orjson`` parse of the same events.  Goal:
  >= 300,000 events/s.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import apsw
import orjson

from benchmarks.bench_sqlite import raw_connection
from benchmarks.figures import Figure, compare
from skyferry.adapters.stores.sqlite import SQLiteEventStore, open_connection
from skyferry.bootstrap import Ledger, bootstrap
from skyferry.core.messages import Event, to_micros
from skyferry.ledger import events as ev
from skyferry.ledger.commands import Deposit, OpenAccount
from skyferry.settings import Settings

ACCOUNTS = 20
_INSERT = (
    "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at, "
    "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _raw_cycle(db: apsw.Connection, count: int, prefix: str) -> None:
    """The raw command cycle: the same reads and writes, no framework."""
    state: dict[str, tuple[int, Decimal]] = {}
    for i in range(count):
        stream = f"{prefix}-{i % ACCOUNTS}"
        version, balance = state.get(stream, (0, Decimal(0)))
        db.execute("BEGIN IMMEDIATE")
        for (data,) in db.execute(
            "SELECT data FROM events WHERE stream_id = ? AND version > ? ORDER BY version", (stream, version)
        ):
            balance += Decimal(orjson.loads(data).get("amount", "0"))
            version += 1
        amount = Decimal("1.25")
        now = to_micros(datetime.now(UTC))
        body = {"account_id": stream, "amount": str(amount), "currency": "EUR", "reason": "deposit"}
        db.execute(
            _INSERT,
            (
                str(uuid.uuid4()),
                stream,
                version + 1,
                "MoneyDeposited",
                1,
                orjson.dumps(body).decode(),
                orjson.dumps({"command": "Deposit"}).decode(),
                now,
                now,
            ),
        )
        db.execute("COMMIT")
        state[stream] = (version + 1, balance + amount)


def bench_command_cycle(directory: Path, count: int, synchronous: str) -> Figure:
    """``Ledger.execute(Deposit)`` vs. the raw cycle, at ``synchronous``."""
    url = f"sqlite:///{directory}/cycle-{synchronous}.db?synchronous={synchronous}"
    ledger = bootstrap(Settings(store_url=url, broker_url="memory://"))
    for n in range(ACCOUNTS):
        ledger.execute(OpenAccount(account_id=f"acc-{n}", owner="bench", currency="EUR"))
    commands = [Deposit(account_id=f"acc-{i % ACCOUNTS}", amount=Decimal("1.25"), currency="EUR") for i in range(count)]

    def adapter() -> None:
        for command in commands:
            ledger.execute(command)

    db = raw_connection(directory / f"cycle-{synchronous}.db", synchronous.upper())
    rounds = iter(range(100))

    def raw() -> None:
        _raw_cycle(db, count, f"raw{next(rounds)}")

    value, raw_rate = compare(count, adapter, raw)
    db.close()
    ledger.close()
    return Figure(f"command cycle (synchronous={synchronous})", value, "commands/s", raw_rate, "apsw cycle", goal=0.7)


def _ledger_events(count: int) -> list[Event]:
    now = datetime.now(UTC)
    accounts = max(1, count // 100)
    out: list[Event] = []
    for a in range(accounts):
        stream, account = f"account-r{a}", f"r{a}"
        opened = ev.account_opened(account, "bench", "EUR")
        moment = now + timedelta(microseconds=len(out))
        out.append(Event(str(uuid.uuid4()), stream, 1, opened.type, 1, opened.data, {}, moment, moment))
    per = count // accounts - 1
    for v in range(per):
        for a in range(accounts):
            deposited = ev.money_deposited(f"r{a}", "1.25", "EUR")
            out.append(
                Event(str(uuid.uuid4()), f"account-r{a}", v + 2, deposited.type, 1, deposited.data, {}, now, now)
            )
    return out


def bench_rebuild(directory: Path, count: int) -> Figure:
    """``Ledger.rebuild("balances")`` in events/s beside the raw read + parse of the same events."""
    url = f"sqlite:///{directory}/rebuild.db"
    store = SQLiteEventStore(url)
    events = _ledger_events(count)
    for start in range(0, len(events), 10_000):
        store.bulk_append(events[start : start + 10_000])
    store.close()
    ledger: Ledger = bootstrap(Settings(store_url=url, broker_url="memory://"))
    db = open_connection(str(directory / "rebuild.db"))

    def raw() -> None:
        after = -1
        while rows := list(
            db.execute(
                "SELECT position, data, metadata FROM events WHERE position > ? ORDER BY position LIMIT 5000", (after,)
            )
        ):
            for row in rows:
                orjson.loads(row[1])
                orjson.loads(row[2])
            after = rows[-1][0]

    def adapter() -> None:
        ledger.rebuild("balances")

    value, raw_rate = compare(len(events), adapter, raw, repeat=2)
    db.close()
    ledger.close()
    return Figure(
        "projection rebuild (balances)",
        value,
        "events/s",
        raw_rate,
        "read + parse",
        goal_value=300_000,
    )


def run(args: argparse.Namespace) -> list[Figure]:
    """The ledger figures."""
    quick = bool(getattr(args, "quick", False))
    with tempfile.TemporaryDirectory(prefix="skyferry-bench-") as name:
        directory = Path(name)
        return [
            bench_command_cycle(directory, 100 if quick else 1000, "full"),
            bench_command_cycle(directory, 300 if quick else 3000, "normal"),
            bench_rebuild(directory, 10_000 if quick else 100_000),
        ]
