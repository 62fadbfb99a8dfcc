"""The kernel and the ledger on every store adapter of the registry.

The unit tests prove the kernel's guarantees in memory.  This runs one ledger scenario on
each real store (its emulator or server comes from ``tests/services``), which checks
what only the adapters can break: the kernel's reserved view collections (``$snapshots``,
``$idempotency``, ``$aliases``, ``$streams``), commits with no checkpoint, conditional
writes, temporal reads and blue/green collections.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from skyferry.adapters import registry
from skyferry.adapters.brokers.memory import MemoryBroker
from skyferry.bootstrap import Ledger
from skyferry.core.application import SNAPSHOTS, Application
from skyferry.core.codec import encode
from skyferry.core.errors import ConcurrencyError
from skyferry.core.projections import ProjectionConsumer, physical_collection
from skyferry.ledger.account import Account
from skyferry.ledger.commands import CloseAccount, Deposit, OpenAccount, TransferMoney, Withdraw
from skyferry.ledger.handlers import register_handlers
from skyferry.ledger.projections import BalancesProjection
from tests import services


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
