"""The kernel and the ledger on every store adapter of the registry.

The unit tests prove the kernel's guarantees in memory.  This runs one ledger scenario on
each real store (its emulator or server comes from ``tests/services``), which checks
what only the adapters can break: the kernel's reserved view collections (``$snapshots``,
``$idempotency``, ``$aliases``, ``$streams``), commits with no checkpoint, conditional
writes, temporal reads and blue/green collections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

from skyferry.adapters import registry
from skyferry.adapters.brokers.memory import MemoryBroker
from skyferry.bootstrap import Ledger, bootstrap
from skyferry.core.application import SNAPSHOTS, Application, CommandResult, IdempotencyKeyReused
from skyferry.core.codec import encode
from skyferry.core.errors import ConcurrencyError, TransientError
from skyferry.core.messages import Event, NewEvent
from skyferry.core.parking import ParkedEvents, RetryPolicy
from skyferry.core.ports import NO_STREAM
from skyferry.core.projections import (
    Projection,
    ProjectionConsumer,
    ViewBatch,
    physical_collection,
    stream_checkpoint_collection,
)
from skyferry.ledger.account import Account
from skyferry.ledger.commands import CloseAccount, Deposit, OpenAccount, TransferMoney, Withdraw
from skyferry.ledger.handlers import register_handlers
from skyferry.ledger.projections import BalancesProjection
from skyferry.settings import Settings
from tests import services
from tests.services import postgres
from tests.threads import at_once


def _stores() -> list[Any]:
    seen: dict[str, str] = {}
    for scheme, path in sorted(registry.EVENT_STORES.items()):
        seen.setdefault(path, scheme)
    return [pytest.param((scheme, path), id=scheme) for path, scheme in sorted(seen.items(), key=lambda i: i[1])]


@pytest.fixture(params=_stores())
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    scheme, path = request.param
    with services.provide("event_store", path, scheme) as url:
        yield url


def test_ledger_scenario_on_the_store(store_url: str) -> None:
    events = registry.open_event_store(store_url)
    views = registry.open_view_store(store_url)
    ledger = Ledger(events, views, MemoryBroker(), snapshot_every=2, message_mode="thin")
    try:
        for account, currency in (("a", "EUR"), ("b", "EUR"), ("shut", "EUR")):
            ledger.execute(OpenAccount(account_id=account, owner=account, currency=currency))
        ledger.execute(CloseAccount(account_id="shut"))
        ledger.execute(Deposit(account_id="a", amount="100", currency="EUR"))
        first = ledger.execute(Withdraw(account_id="a", amount="10", currency="EUR"), idempotency_key="w-1")
        again = ledger.execute(Withdraw(account_id="a", amount="10", currency="EUR"), idempotency_key="w-1")
        assert again.replayed
        assert [e.id for e in again.events] == [e.id for e in first.events]
        moment = first.events[0].recorded_at
        ledger.execute(TransferMoney(transfer_id="ok", from_account="a", to_account="b", amount="25", currency="EUR"))
        ledger.execute(TransferMoney(transfer_id="no", from_account="a", to_account="shut", amount="5", currency="EUR"))
        with pytest.raises(ConcurrencyError) as raised:
            ledger.execute(Deposit(account_id="b", amount="1", currency="EUR"), expected_version=0)
        assert raised.value.actual == 1
        assert ledger.run_worker_once() > 0

        assert ledger.transfer("ok")["status"] == "completed"
        assert (ledger.transfer("no")["status"], ledger.transfer("no")["compensated"]) == ("failed", True)
        assert ledger.balance("a")["balance"] == "65.00"
        assert ledger.balance("b")["balance"] == "25.00"
        assert all(check["conserved"] for check in ledger.money_check().values())

        # Snapshots were written, and loading with or without them gives the same state.
        assert views.get(SNAPSHOTS, "account-a") is not None
        plain = Application(events, views, snapshot_every=0, cache_size=0)
        register_handlers(plain)
        fresh = Application(events, views, snapshot_every=2, cache_size=0)
        expected = plain.load(Account, "a")
        assert fresh.load(Account, "a").to_dict() == expected.to_dict()
        assert ledger.account_state("a", as_of=moment)["balance"] == "90.00"
        assert ledger.account_state("a", at_version=2)["balance"] == "100.00"

        # Blue/green rebuild gives identical views.
        for name in ("balances", "transfers"):
            before = ledger.read_models.query(name, name)
            report = ledger.rebuild(name)
            assert report.new_generation == 2
            assert ledger.read_models.query(name, name) == before
            assert views.query(physical_collection(name, 1)) == []

        # Thin messages from the relay feed a broker-side consumer through this store.
        consumer_views = registry.open_view_store(store_url)
        consumer = ProjectionConsumer(events, consumer_views, BalancesProjection(), generation=7)
        for event in events.read_all(limit=1000):
            message = encode(event, "thin")
            consumer.handle(message)
            consumer.handle(message)
        assert consumer.duplicates == consumer.applied
        projected = consumer_views.get(physical_collection("balances", 7), "a")
        assert projected is not None
        assert projected.value["balance"] == "65.00"
        consumer_views.close()
    finally:
        ledger.close()


# --- poison isolation on every store ------------------------------------------------------------

NO_WAIT = RetryPolicy(sleep=lambda _: None)


def _poison(projection: Projection, account: str) -> Callable[[Event, ViewBatch], None]:
    """Make ``projection`` fail, deterministically, on every event of ``account``; returns the healthy apply."""
    healthy = projection.apply

    def apply(event: Event, views: ViewBatch) -> None:
        if event.data.get("account_id") == account:
            raise KeyError(f"{projection.name} cannot take {account} (a deterministic bug)")
        healthy(event, views)

    projection.apply = apply  # type: ignore[method-assign]
    return healthy


def test_the_worker_keeps_projecting_after_a_poisoned_event(store_url: str) -> None:
    events = registry.open_event_store(store_url)
    views = registry.open_view_store(store_url)
    ledger = Ledger(events, views, MemoryBroker(), retry=NO_WAIT)
    try:
        balances = ledger.projections["balances"]
        healthy = _poison(balances, "poison")
        for account in ("before", "poison", "after"):
            ledger.execute(OpenAccount(account_id=account, owner=account, currency="EUR"))
            ledger.execute(Deposit(account_id=account, amount="10", currency="EUR"))
        ledger.execute(
            TransferMoney(transfer_id="t", from_account="before", to_account="after", amount="4", currency="EUR")
        )
        while ledger.run_worker_once():
            pass
        assert ledger.balance("before")["balance"] == "6.00"
        assert ledger.balance("after")["balance"] == "14.00"
        assert ledger.transfer("t")["status"] == "completed"
        assert len(ledger.history("poison")) == 2  # the other read models took the account's events

        # The parked records are in the store, beside the checkpoint that moved past them.
        other = registry.open_view_store(store_url)
        try:
            parked = ParkedEvents(events, other, {}).list()
        finally:
            other.close()
        assert [(p.runner, p.stream_id, p.version) for p in parked] == [
            ("balances_g1", "account-poison", 1),
            ("balances_g1", "account-poison", 2),
        ]
        assert views.get_checkpoint("balances_g1") == events.last_position()

        balances.apply = healthy  # type: ignore[method-assign]  # the fix is deployed
        for record in parked:
            assert ledger.parked.retry(record.key) is None
        assert ledger.parked.list() == []
        assert ledger.balance("poison")["balance"] == "10.00"
        assert all(check["conserved"] for check in ledger.money_check().values())

        # A broker-fed consumer of this store parks on the last delivery and moves on.
        _poison(balances, "after")
        consumer = ProjectionConsumer(events, views, balances, generation=5, retry=NO_WAIT)
        stream = events.read_stream("account-after")
        consumer.handle(replace(encode(stream[0], "thin"), delivery_attempt=NO_WAIT.attempts))
        [record] = ledger.parked.list()
        assert (record.runner, record.version) == ("balances_g5", 1)
        assert views.get(stream_checkpoint_collection("balances", 5), "account-after").value["version"] == 1
    finally:
        ledger.close()


def test_a_nul_in_a_document_is_isolated_on_postgresql() -> None:
    """An owner with a NUL character, which PostgreSQL's jsonb refuses: the command refuses it,
    but an event stored by another way (an import of another system's events) must still
    be isolated, not stop the worker."""
    with postgres.fresh_schema() as url:
        ledger = bootstrap(Settings(store_url=url, broker_url="memory://"))
        try:
            with pytest.raises(PydanticValidationError, match="control character"):
                OpenAccount(account_id="nul", owner="a\x00b", currency="EUR")
            ledger.execute(OpenAccount(account_id="fine", owner="fine", currency="EUR"))
            opened = ledger.events.read_stream("account-fine")[0]
            data = {**opened.data, "account_id": "nul", "owner": "a\x00b"}
            ledger.events.append("account-nul", [NewEvent(opened.type, data, opened.metadata)], NO_STREAM)
            while ledger.run_worker_once():
                pass
            assert ledger.balance("fine")["balance"] == "0.00"
            parked = ledger.parked.list()
            assert {p.stream_id for p in parked} == {"account-nul"}
            assert {p.runner for p in parked} >= {"balances_g1"}
        finally:
            ledger.close()


# --- idempotency under real concurrency, on every store ---------------------------------------


def as_a_client_would(request: Callable[[], CommandResult]) -> CommandResult:
    """``request()``, sent again with the same key after a ``TransientError``, as the API tells clients.

    An emulator on a loaded machine may time a request out now and then; the outcome of
    that request is unknown, and the contract is: retry with the same idempotency key.
    """
    for _ in range(3):
        try:
            return request()
        except TransientError:
            continue
    return request()


def test_one_idempotency_key_binds_one_request_under_concurrency(store_url: str) -> None:
    events = registry.open_event_store(store_url)
    views = registry.open_view_store(store_url)
    ledger = Ledger(events, views, MemoryBroker())
    try:
        for n in range(10):
            ledger.execute(OpenAccount(account_id=f"acc-{n}", owner="o", currency="EUR"))
        # 20 parallel deposits with one key and amounts 1..20: one is stored, 19 refused.
        results = at_once(
            20,
            lambda i: as_a_client_would(
                lambda: ledger.execute(
                    Deposit(account_id="acc-0", amount=str(i + 1), currency="EUR"), idempotency_key="race-1"
                )
            ),
        )
        stored = [r for r in results if isinstance(r, CommandResult)]
        assert len(stored) == 1, results
        others = [r for r in results if r is not stored[0] and not isinstance(r, IdempotencyKeyReused)]
        assert not others, [repr(r) for r in others]
        assert events.stream_version("account-acc-0") == 2
        amount = stored[0].events[0].data["amount"]
        retry = ledger.execute(Deposit(account_id="acc-0", amount=amount, currency="EUR"), idempotency_key="race-1")
        assert retry.replayed
        assert [e.id for e in retry.events] == [e.id for e in stored[0].events]

        # 10 parallel deposits to 10 accounts with one key: one is stored.
        results = at_once(
            10,
            lambda i: as_a_client_would(
                lambda: ledger.execute(
                    Deposit(account_id=f"acc-{i}", amount="5", currency="EUR"), idempotency_key="race-2"
                )
            ),
        )
        assert sum(isinstance(r, CommandResult) for r in results) == 1, results
        assert sum(isinstance(r, IdempotencyKeyReused) for r in results) == 9, results
        assert sum(events.stream_version(f"account-acc-{n}") for n in range(10)) == 10 + 1 + 1

        # True retries racing each other all get the one result.
        results = at_once(
            8,
            lambda i: as_a_client_would(
                lambda: ledger.execute(
                    Deposit(account_id="acc-9", amount="3", currency="EUR"), idempotency_key="race-3"
                )
            ),
        )
        assert all(isinstance(r, CommandResult) for r in results), results
        assert len({tuple(e.id for e in r.events) for r in results if isinstance(r, CommandResult)}) == 1
        assert sum(not r.replayed for r in results if isinstance(r, CommandResult)) == 1
    finally:
        ledger.close()
