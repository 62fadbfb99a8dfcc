"""``skyferry demo``: the main job on the embedded default, checked end to end.

Starts the API (uvicorn, in a thread) on a free loopback port against a fresh SQLite file
in a temporary directory (or ``--store``) and the in-process broker (or ``--broker``),
then drives a workload through HTTP only: accounts, deposits, a withdrawal, a transfer
that completes and one that fails and is compensated, a concurrency conflict, a command
retried with the same idempotency key, and a refused overdraft.  It runs the worker
passes (relay, transfer process manager, projections), shows the read models, a
temporal query, a blue/green rebuild of every read model that must give identical views,
and checks that money is conserved.

Then it shows the move: a migration copies the live store into a second SQLite file while
the API keeps taking writes, cuts over (the source turns read-only: commands get 503),
verifies the copy, starts the API on the new store and checks that every balance is the
same there and that the new store takes writes; last, it lifts the fence as a rollback
would, so that the old store is left writable.  The command exits 0 when every check
passed, 1 otherwise.

Account and transfer ids carry a per-run suffix, so the demo also runs against a store
that holds earlier data.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import httpx
import uvicorn
from pydantic import SecretStr

from skyferry.adapters import registry
from skyferry.api.app import create_app
from skyferry.bootstrap import Ledger, bootstrap
from skyferry.cli import listen_socket
from skyferry.console import count, duration, plural
from skyferry.core.messages import format_timestamp, utc_now
from skyferry.core.ports import EventStore
from skyferry.migrate.fence import lift_fence
from skyferry.migrate.migrate import Migration
from skyferry.settings import Settings

CURRENCY = "EUR"


@dataclass
class Checks:
    """The demo's checks, printed as they pass or fail."""

    out: TextIO
    failed: list[str] = field(default_factory=list)
    passed: int = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record and print one check."""
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
        mark = "ok  " if ok else "FAIL"
        self.out.write(f"  [{mark}] {name}{f'  ({detail})' if detail else ''}\n")
        return ok


class ApiServer:
    """uvicorn serving ``app`` in a daemon thread on an already-bound loopback socket."""

    def __init__(self, app: Any) -> None:
        self.socket = listen_socket("127.0.0.1", 0)
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="demo-api", daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo API did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


def _amount(text: str) -> Decimal:
    return Decimal(text)


def run_demo(
    *, store: str | None = None, broker: str | None = None, keep: bool = False, out: TextIO | None = None
) -> list[str]:
    """Run the demo and print its report; return the names of the checks that failed (none: all passed)."""
    out = out or sys.stdout
    directory = Path(tempfile.mkdtemp(prefix="skyferry-demo-"))
    store_url = store or f"sqlite:///{directory}/skyferry.db"
    broker_url = broker or "memory://"
    token = secrets.token_urlsafe(24)
    settings = Settings(api_token=SecretStr(token), store_url=store_url, broker_url=broker_url)
    ledger = bootstrap(settings)
    checks = Checks(out)
    started = time.perf_counter()
    try:
        ledger.events.last_position()  # a corrupt or read-only store fails here, clearly
        with ApiServer(create_app(settings, ledger)) as server:
            out.write(f"skyferry demo: API on {server.url}, store {store_url}, broker {broker_url}\n")
            with _client(server, token) as client:
                balances = _workload(client, ledger, checks, out)
                _move(
                    client,
                    ledger,
                    settings.model_copy(update={"store_url": f"sqlite:///{directory}/moved.db"}),
                    balances,
                    checks,
                    out,
                )
    finally:
        ledger.close()
        if keep:
            out.write(f"  data kept in {directory}\n")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    seconds = time.perf_counter() - started
    if checks.failed:
        out.write(
            f"\n{len(checks.failed)} of {checks.passed + len(checks.failed)} checks FAILED "
            f"in {duration(seconds)}: {', '.join(checks.failed)}\n"
        )
    else:
        out.write(f"\nall {checks.passed} checks passed in {duration(seconds)}\n")
    return checks.failed


def _client(server: ApiServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _stored(store: EventStore) -> int:
    """How many events ``store`` holds (the demo's stores are small)."""
    total, after = 0, None
    while batch := store.read_all(after=after, limit=1000):
        total, after = total + len(batch), batch[-1].position
    return total


def _workload(client: httpx.Client, ledger: Ledger, checks: Checks, out: TextIO) -> dict[str, str]:
    """Steps 1 to 8; the balances this run's accounts must have."""
    run = secrets.token_hex(3)
    stored_at_start = _stored(ledger.events)
    alice, bob, carol = f"alice-{run}", f"bob-{run}", f"carol-{run}"
    check = checks.check

    def post(path: str, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
        return client.post(path, json=body if body is not None else {}, headers=headers)

    def money(value: str) -> dict[str, str]:
        return {"amount": value, "currency": CURRENCY}

    def worker() -> int:
        return ledger.run_worker_once()

    out.write("\n1. accounts and money, through the HTTP API\n")
    for account, owner in ((alice, "Alice"), (bob, "Bob"), (carol, "Carol")):
        response = post("/accounts", {"account_id": account, "owner": owner, "currency": CURRENCY})
        check(f"open {account}", response.status_code == 201, f"HTTP {response.status_code}")
    response = post(f"/accounts/{alice}/deposits", money("100.00"), **{"Idempotency-Key": f"demo-{run}-1"})
    check("deposit 100.00 to alice", response.status_code == 201, f"HTTP {response.status_code}")
    first = response.json()
    check("deposit 50.00 to bob", post(f"/accounts/{bob}/deposits", money("50.00")).status_code == 201)

    out.write("\n2. a retried command with the same idempotency key\n")
    again = post(f"/accounts/{alice}/deposits", money("100.00"), **{"Idempotency-Key": f"demo-{run}-1"})
    check(
        "the retry returns the first result and stores nothing",
        again.status_code == 201
        and again.json()["replayed"] is True
        and again.json()["events"][0]["id"] == first["events"][0]["id"]
        and ledger.events.stream_version(first["stream_id"]) == first["last_version"],
        f"replayed={again.json().get('replayed')}, stream at version "
        f"{ledger.events.stream_version(first['stream_id'])}",
    )

    before_withdrawal = format_timestamp(utc_now())
    time.sleep(0.002)
    check("withdraw 20.00 from alice", post(f"/accounts/{alice}/withdrawals", money("20.00")).status_code == 201)

    out.write("\n3. a concurrency conflict (two writers with the same If-Match)\n")
    version = client.get(f"/accounts/{bob}").json()["version"]
    winner = post(f"/accounts/{bob}/deposits", money("5.00"), **{"If-Match": f'"{version}"'})
    loser = post(f"/accounts/{bob}/deposits", money("7.00"), **{"If-Match": f'"{version}"'})
    check(
        "the second writer gets 409 with the actual version",
        winner.status_code == 201 and loser.status_code == 409 and loser.json().get("actual_version") == version + 1,
        f"HTTP {winner.status_code} then {loser.status_code}: {loser.json().get('message', '')}",
    )
    overdraft = post(f"/accounts/{bob}/withdrawals", money("1000.00"))
    check(
        "an overdraft is refused, nothing stored",
        overdraft.status_code == 409 and overdraft.json()["error"] == "insufficient_funds",
        f"HTTP {overdraft.status_code} {overdraft.json().get('error')}",
    )

    out.write("\n4. transfers through the process manager (debit, credit, compensate)\n")
    check(f"close {carol} (balance zero)", post(f"/accounts/{carol}/close").status_code == 201)
    ok_id, failing_id = f"t-{run}-1", f"t-{run}-2"
    accepted = post("/transfers", {"transfer_id": ok_id, "from_account": alice, "to_account": bob, **money("30.00")})
    check("transfer 30.00 alice -> bob accepted", accepted.status_code == 202, f"HTTP {accepted.status_code}")
    accepted = post(
        "/transfers", {"transfer_id": failing_id, "from_account": bob, "to_account": carol, **money("10.00")}
    )
    check("transfer 10.00 bob -> closed carol accepted", accepted.status_code == 202, f"HTTP {accepted.status_code}")
    before_worker = _stored(ledger.events)
    handled = worker()
    stored = _stored(ledger.events)
    out.write(
        f"  the worker caught up on {plural(stored - stored_at_start, 'new event')} "
        f"({count(stored - before_worker)} of them written by the transfer process manager on the way); "
        f"its tasks ({', '.join(task.name for task in ledger.worker.tasks)}) each read the events they need: "
        f"{count(handled)} handlings in all\n"
    )
    done = client.get(f"/transfers/{ok_id}").json()
    check("the first transfer completed", done.get("status") == "completed", f"status {done.get('status')}")
    failed = client.get(f"/transfers/{failing_id}").json()
    check(
        "the second failed and was compensated",
        failed.get("status") == "failed" and failed.get("compensated") is True,
        f"status {failed.get('status')}, compensated {failed.get('compensated')}: {failed.get('reason', '')}",
    )

    out.write("\n5. read models\n")
    expected = {alice: "50.00", bob: "85.00", carol: "0.00"}
    for account, want in expected.items():
        doc = client.get(f"/accounts/{account}/balance").json()
        balance = doc.get("balance", "?")
        check(
            f"balance of {account} is {want}",
            balance != "?" and _amount(balance) == _amount(want),
            f"{balance} {doc.get('currency', '')}, {doc.get('status', '')}",
        )
    history = client.get(f"/accounts/{bob}/history", params={"limit": 10}).json()
    out.write(f"  history of {bob}, newest first:\n")
    for entry in history:
        out.write(
            f"    v{entry['version']:<3} {entry['type']:<18} {entry.get('amount', ''):>8} {entry.get('reason', '')}\n"
        )
    today = utc_now().date().isoformat()
    totals = client.get(f"/daily-totals/{today}").json()
    for doc in totals:
        out.write(
            f"  daily totals {doc['day']} {doc['currency']}: deposited {doc['deposited']}, "
            f"withdrawn {doc['withdrawn']}, transferred {doc['transferred']}\n"
        )
    check("daily totals are shown", any(d.get("currency") == CURRENCY for d in totals))

    out.write("\n6. temporal query\n")
    past = client.get(f"/accounts/{alice}/balance", params={"as_of": before_withdrawal}).json()
    check(
        "alice's balance before the withdrawal was 100.00",
        _amount(past.get("balance", "-1")) == Decimal("100.00"),
        f"as of {before_withdrawal}: {past.get('balance')}",
    )
    at_two = client.get(f"/accounts/{alice}", params={"at_version": 2}).json()
    check("alice at version 2 had 100.00", _amount(at_two.get("balance", "-1")) == Decimal("100.00"))

    out.write("\n7. blue/green rebuild of every read model\n")
    for name in sorted(ledger.projections):
        before = _views(ledger, name)
        report = ledger.rebuild(name)
        after = _views(ledger, name)
        check(
            f"rebuild {name}: identical views",
            before == after and report.new_generation == report.old_generation + 1,
            f"generation {report.old_generation} -> {report.new_generation}, {plural(report.events, 'event')}, "
            f"{plural(sum(len(v) for v in after.values()), 'document')}",
        )

    out.write("\n8. money is conserved\n")
    worker()
    for currency, line in ledger.money_check().items():
        check(
            f"{currency}: balances + in transit == deposits - withdrawals",
            bool(line["conserved"]),
            f"held {line['held']}, deposited - withdrawn {line['deposited_minus_withdrawn']}",
        )
    mine = sum((_amount(client.get(f"/accounts/{a}/balance").json()["balance"]) for a in expected), Decimal(0))
    check("this run's accounts hold 100 + 50 + 5 - 20 = 135.00", mine == Decimal("135.00"), f"{mine}")
    return expected


def _move(
    client: httpx.Client, ledger: Ledger, moved: Settings, balances: dict[str, str], checks: Checks, out: TextIO
) -> None:
    """Step 9: copy the live store into ``moved.store_url`` while the API takes writes, cut over, switch."""
    check = checks.check
    dave = f"dave-{secrets.token_hex(3)}"
    balances = {**balances, dave: "10.00"}
    out.write("\n9. the move: a live copy to a second store while the API takes writes, a cutover, the switch\n")
    out.write(f"  from {ledger.events.url}\n    to {moved.store_url}\n")
    target, target_views = registry.open_event_store(moved.store_url), registry.open_view_store(moved.store_url)
    try:
        migration = Migration(ledger.events, target, target_views)
        stop = threading.Event()
        follower = threading.Thread(target=migration.follow, args=(stop,), kwargs={"poll": 0.05}, name="demo-move")
        follower.start()
        try:
            answers = [client.post("/accounts", json={"account_id": dave, "owner": "Dave", "currency": CURRENCY})]
            answers += [
                client.post(f"/accounts/{dave}/deposits", json={"amount": "1.00", "currency": CURRENCY})
                for _ in range(10)
            ]
            check(
                "the API takes writes while the copy follows the live store",
                all(answer.status_code == 201 for answer in answers),
                f"{len(answers)} commands: HTTP {', '.join(sorted({str(a.status_code) for a in answers}))}",
            )
            deadline = time.monotonic() + 30
            while migration.position != ledger.events.last_position() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            stop.set()
            follower.join(timeout=30)
        check(
            "the copy caught up with the live store",
            migration.position == ledger.events.last_position(),
            f"{plural(migration.report.events, 'event')} copied, {count(migration.report.written)} written",
        )
        verified = migration.cutover(ledger.views, grace=0.2)
        refused = client.post(f"/accounts/{dave}/deposits", json={"amount": "1.00", "currency": CURRENCY})
        check(
            "cutover: the source is read-only, a command gets 503",
            refused.status_code == 503 and refused.json().get("error") == "read_only",
            f"HTTP {refused.status_code} {refused.json().get('error')}",
        )
        check(
            "the copy is verified identical to the fenced source",
            verified is not None and verified.ok,
            "" if verified is None else f"{plural(verified.streams, 'stream')}, {plural(verified.events, 'event')}",
        )
    finally:
        target.close()
        target_views.close()
    ledger.run_worker_once()
    on_source = {account: client.get(f"/accounts/{account}/balance").json().get("balance") for account in balances}
    switched = bootstrap(moved)
    try:
        switched.run_worker_once()  # the new store's read models, built from the copied events
        with ApiServer(create_app(moved, switched)) as server, _client(server, moved.require_token()) as new:
            out.write(f"  the API now runs on the new store: {server.url}\n")
            for account, want in balances.items():
                got = new.get(f"/accounts/{account}/balance").json().get("balance", "?")
                check(
                    f"balance of {account} is {want} on the new store, as on the old",
                    got != "?" and _amount(got) == _amount(want) == _amount(on_source[account] or "-1"),
                    f"new {got}, old {on_source[account]}",
                )
            deposit = new.post(f"/accounts/{dave}/deposits", json={"amount": "1.00", "currency": CURRENCY})
            check("the new store takes writes", deposit.status_code == 201, f"HTTP {deposit.status_code}")
        switched.run_worker_once()
        for currency, line in switched.money_check().items():
            check(
                f"{currency} on the new store: balances + in transit == deposits - withdrawals",
                bool(line["conserved"]),
                f"held {line['held']}, deposited - withdrawn {line['deposited_minus_withdrawn']}",
            )
    finally:
        switched.close()
    lift_fence(ledger.views)  # what `skyferry migrate --unfence` does: the demo leaves the old store writable
    again = client.post(f"/accounts/{dave}/deposits", json={"amount": "1.00", "currency": CURRENCY})
    check(
        "a rollback (--unfence) makes the old store take commands again",
        again.status_code == 201,
        f"HTTP {again.status_code}",
    )


def _views(ledger: Ledger, projection: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every live document of ``projection``, by collection."""
    collections: tuple[str, ...] = ledger.projections[projection].collections
    query: Callable[..., list[tuple[str, dict[str, Any]]]] = ledger.read_models.query
    return {collection: query(projection, collection) for collection in collections}
