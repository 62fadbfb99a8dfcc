"""The ledger domain: commands, rules, the transfer process manager, read models, money conservation."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skyferry.adapters.brokers.memory import MemoryBroker
from skyferry.adapters.stores.memory import MemoryEventStore, MemoryViewStore
from skyferry.bootstrap import Ledger, bootstrap
from skyferry.core.errors import ConfigurationError, TransientError, ValidationError
from skyferry.core.messages import Event
from skyferry.core.parking import RetryPolicy
from skyferry.core.ports import Message
from skyferry.core.projections import ViewBatch, checkpoint_name
from skyferry.core.worker import Task
from skyferry.ledger.commands import CloseAccount, Deposit, OpenAccount, TransferMoney, Withdraw
from skyferry.ledger.errors import (
    AccountAlreadyExists,
    AccountClosed,
    AccountNotEmpty,
    AccountNotFound,
    CurrencyMismatch,
    InsufficientFunds,
    LedgerError,
    TransferAlreadyExists,
)
from skyferry.ledger.projections import BalancesProjection
from skyferry.settings import Settings
from tests.unit.kernel_fakes import FlakyBroker


@pytest.fixture(params=[True, False], ids=["fastforward", "trust-cache"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    ledger = Ledger(MemoryEventStore(), MemoryViewStore(), MemoryBroker(), snapshot_every=3, fastforward=request.param)
    yield ledger
    ledger.close()


def open_funded(ledger: Ledger, account_id: str, amount: str = "100", currency: str = "EUR") -> None:
    ledger.execute(OpenAccount(account_id=account_id, owner=f"owner of {account_id}", currency=currency))
    ledger.execute(Deposit(account_id=account_id, amount=amount, currency=currency))


# -- commands ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"amount": 1.5}, "amount"),
        ({"amount": "1.234"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "-3"}, "amount"),
        ({"amount": "ten"}, "amount"),
        ({"amount": "Infinity"}, "amount"),
        ({"amount_minor": 1.0}, "amount_minor"),
        ({"amount": "1", "colour": "red"}, "colour"),
        ({"amount": "1", "currency": "XXX"}, "currency"),
        ({"amount": "1", "account_id": "spaces are bad"}, "account_id"),
    ],
)
def test_invalid_commands_name_the_field(payload: dict[str, Any], field: str) -> None:
    body = {"account_id": "a-1", "currency": "EUR", **payload}
    with pytest.raises(pydantic.ValidationError) as raised:
        Deposit.model_validate(body)
    assert field in {str(loc) for error in raised.value.errors() for loc in error["loc"]}


def test_amounts_are_exact_with_the_currency_decimals() -> None:
    assert Deposit(account_id="a", amount="10.5", currency="EUR").amount_text == "10.50"
    assert Deposit(account_id="a", amount_minor=1050, currency="EUR").amount == Decimal("10.50")
    assert Deposit(account_id="a", amount=7, currency="JPY").amount_text == "7"
    assert Deposit(account_id="a", amount="0.125", currency="KWD").amount_text == "0.125"
    with pytest.raises(pydantic.ValidationError):
        Deposit(account_id="a", amount="7.5", currency="JPY")
    with pytest.raises(pydantic.ValidationError):
        Deposit(account_id="a", currency="EUR")
    with pytest.raises(pydantic.ValidationError):
        TransferMoney(transfer_id="t", from_account="a", to_account="a", amount="1", currency="EUR")


# -- account rules ------------------------------------------------------------------------------


def test_account_rules_reject_before_storing(ledger: Ledger) -> None:
    open_funded(ledger, "a", "50")
    ledger.execute(OpenAccount(account_id="usd", owner="u", currency="USD"))
    stored = len(ledger.events.read_all(limit=100))
    rejected: list[tuple[Any, type[LedgerError]]] = [
        (Withdraw(account_id="a", amount="50.01", currency="EUR"), InsufficientFunds),
        (Deposit(account_id="nobody", amount="1", currency="EUR"), AccountNotFound),
        (Deposit(account_id="usd", amount="1", currency="EUR"), CurrencyMismatch),
        (OpenAccount(account_id="a", owner="again", currency="EUR"), AccountAlreadyExists),
        (CloseAccount(account_id="a"), AccountNotEmpty),
    ]
    for command, error in rejected:
        with pytest.raises(error):
            ledger.execute(command)
    assert len(ledger.events.read_all(limit=100)) == stored
    ledger.execute(Withdraw(account_id="a", amount="50", currency="EUR"))
    ledger.execute(CloseAccount(account_id="a"))
    with pytest.raises(AccountClosed):
        ledger.execute(Deposit(account_id="a", amount="1", currency="EUR"))
    state = ledger.account_state("a")
    assert (state["balance"], state["status"], state["version"]) == ("0.00", "closed", 4)


def test_read_models_and_temporal_state(ledger: Ledger) -> None:
    open_funded(ledger, "a", "100")
    moment = ledger.execute(Withdraw(account_id="a", amount="30", currency="EUR")).events[0].recorded_at
    ledger.execute(Deposit(account_id="a", amount="5.25", currency="EUR"))
    ledger.run_worker_once()
    assert ledger.balance("a")["balance"] == "75.25"
    history = ledger.history("a", limit=2)
    assert [(h["type"], h["amount"]) for h in history] == [("MoneyDeposited", "5.25"), ("MoneyWithdrawn", "30.00")]
    assert len(ledger.history("a")) == 4
    assert ledger.account_state("a", as_of=moment)["balance"] == "70.00"
    assert ledger.account_state("a", at_version=2)["balance"] == "100.00"
    day = history[0]["occurred_at"][:10]
    totals = ledger.daily_totals(day)
    assert totals[0]["deposited"] == "105.25"
    assert totals[0]["withdrawn"] == "30.00"
    with pytest.raises(AccountNotFound):
        ledger.balance("nobody")
    with pytest.raises(AccountNotFound):
        ledger.account_state("nobody")


# -- transfers --------------------------------------------------------------------------------


def test_a_transfer_debits_then_credits(ledger: Ledger) -> None:
    open_funded(ledger, "a", "100")
    open_funded(ledger, "b", "1")
    ledger.execute(TransferMoney(transfer_id="t1", from_account="a", to_account="b", amount="40", currency="EUR"))
    with pytest.raises(TransferAlreadyExists):
        ledger.execute(TransferMoney(transfer_id="t1", from_account="a", to_account="b", amount="1", currency="EUR"))
    ledger.run_worker_once()
    assert ledger.transfer("t1")["status"] == "completed"
    assert ledger.balance("a")["balance"] == "60.00"
    assert ledger.balance("b")["balance"] == "41.00"
    assert ledger.daily_totals(ledger.history("a")[0]["occurred_at"][:10])[0]["transferred"] == "40.00"


def test_a_transfer_without_funds_fails_without_moving_money(ledger: Ledger) -> None:
    open_funded(ledger, "a", "10")
    open_funded(ledger, "b", "10")
    ledger.execute(TransferMoney(transfer_id="t", from_account="a", to_account="b", amount="11", currency="EUR"))
    ledger.run_worker_once()
    transfer = ledger.transfer("t")
    assert (transfer["status"], transfer["compensated"]) == ("failed", False)
    assert "has 10.00 EUR" in transfer["reason"]
    assert [ledger.balance(x)["balance"] for x in "ab"] == ["10.00", "10.00"]


@pytest.mark.parametrize("target", ["closed", "missing", "usd"])
def test_a_failed_credit_is_compensated(ledger: Ledger, target: str) -> None:
    open_funded(ledger, "a", "100")
    ledger.execute(OpenAccount(account_id="closed", owner="c", currency="EUR"))
    ledger.execute(CloseAccount(account_id="closed"))
    ledger.execute(OpenAccount(account_id="usd", owner="u", currency="USD"))
    ledger.execute(TransferMoney(transfer_id="t", from_account="a", to_account=target, amount="25", currency="EUR"))
    ledger.run_worker_once()
    transfer = ledger.transfer("t")
    assert (transfer["status"], transfer["compensated"]) == ("failed", True)
    assert ledger.balance("a")["balance"] == "100.00"
    reasons = [h.get("reason") for h in ledger.history("a")]
    assert reasons[:2] == ["refund", "transfer"]
    assert all(check["conserved"] for check in ledger.money_check().values())


def test_replaying_the_process_manager_never_moves_money_twice(ledger: Ledger) -> None:
    open_funded(ledger, "a", "100")
    open_funded(ledger, "b", "0.01")
    ledger.execute(TransferMoney(transfer_id="ok", from_account="a", to_account="b", amount="10", currency="EUR"))
    ledger.execute(TransferMoney(transfer_id="bad", from_account="a", to_account="zz", amount="5", currency="EUR"))
    ledger.run_worker_once()
    stored = len(ledger.events.read_all(limit=1000))
    # Forget where the process manager was, and that any request was ever answered:
    # as after importing the events into a fresh store.
    ledger.views.drop_checkpoints(checkpoint_name("transfer-process", 1))
    ledger.views.drop("$idempotency")
    ledger.app._cache.clear()
    ledger.run_worker_once()
    assert len(ledger.events.read_all(limit=1000)) == stored
    assert ledger.account_state("a")["balance"] == "90.00"
    assert ledger.account_state("b")["balance"] == "10.01"


def test_idempotent_client_commands_through_the_ledger(ledger: Ledger) -> None:
    open_funded(ledger, "a", "100")
    first = ledger.execute(Withdraw(account_id="a", amount="60", currency="EUR"), idempotency_key="w-1")
    again = ledger.execute(Withdraw(account_id="a", amount="60", currency="EUR"), idempotency_key="w-1")
    assert again.replayed
    assert [e.id for e in again.events] == [e.id for e in first.events]
    assert ledger.account_state("a")["balance"] == "40.00"


def test_rebuild_yields_identical_views(ledger: Ledger) -> None:
    open_funded(ledger, "a", "100")
    open_funded(ledger, "b", "3")
    ledger.execute(TransferMoney(transfer_id="t", from_account="a", to_account="b", amount="7", currency="EUR"))
    ledger.run_worker_once()
    for name in ("balances", "history", "daily_totals", "transfers"):
        before = ledger.read_models.query(name, name)
        report = ledger.rebuild(name)
        assert report.new_generation == 2
        assert ledger.read_models.query(name, name) == before
    with pytest.raises(ConfigurationError):
        ledger.rebuild("nope")


def test_bootstrap_wires_the_adapters_from_urls() -> None:
    settings = Settings(store_url="memory://", broker_url="memory://", snapshot_every=2, message_mode="thin")
    ledger = bootstrap(settings)
    try:
        open_funded(ledger, "a", "5")
        assert ledger.run_worker_once() > 0
        assert ledger.relay.mode == "thin"
        assert ledger.balance("a")["balance"] == "5.00"
    finally:
        ledger.close()


def test_store_fed_worker_publishes_nothing_and_keeps_the_relay_level_with_the_process_manager() -> None:
    broker = FlakyBroker(accept=0)  # any publish would raise
    ledger = Ledger(MemoryEventStore(), MemoryViewStore(), broker)
    open_funded(ledger, "a", "12")
    ledger.execute(OpenAccount(account_id="b", owner="b", currency="EUR"))
    ledger.execute(TransferMoney(transfer_id="t", from_account="a", to_account="b", amount="2", currency="EUR"))
    while ledger.run_worker_once():
        pass
    assert ledger.transfer("t")["status"] == "completed"
    assert (ledger.balance("a")["balance"], ledger.balance("b")["balance"]) == ("10.00", "2.00")
    assert broker.accepted == []
    assert ledger.relay.published == 0
    assert ledger.relay.position() == ledger.events.last_position()


class RefusingBroker(MemoryBroker):
    """The in-process broker, refusing every publish while ``refusing`` is set (a full topic, a broker down)."""

    def __init__(self) -> None:
        super().__init__(retry_backoff=0.01)
        self.refusing = threading.Event()
        self.refused = 0

    def publish(self, messages: Sequence[Message]) -> None:
        if self.refusing.is_set():
            self.refused += 1
            raise TransientError("broker refuses messages (test)")
        super().publish(messages)


def test_a_refusing_broker_delays_only_the_relay() -> None:
    broker = RefusingBroker()
    ledger = Ledger(MemoryEventStore(), MemoryViewStore(), broker, projections_from="broker")
    try:
        open_funded(ledger, "a", "100")
        ledger.execute(OpenAccount(account_id="b", owner="b", currency="EUR"))
        ledger.execute(TransferMoney(transfer_id="t", from_account="a", to_account="b", amount="30", currency="EUR"))
        ledger.run_worker_once()  # relayed: the consumers take it from here
        broker.refusing.set()
        # The process manager, fed by the broker, debits; the relay cannot publish that.
        _wait(lambda: ledger.account_state("a")["balance"] == "70.00")
        with pytest.raises(TransientError):
            ledger.run_worker_once()
        assert broker.refused
        assert ledger.transfer("t")["status"] == "started"  # delayed, not lost
        broker.refusing.clear()
        _settle(ledger, lambda: ledger.transfer("t")["status"] == "completed")
        assert (ledger.balance("a")["balance"], ledger.balance("b")["balance"]) == ("70.00", "30.00")
    finally:
        ledger.close()


def test_the_worker_loop_backs_off_the_failing_relay_while_the_consumers_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = RefusingBroker()
    ledger = Ledger(MemoryEventStore(), MemoryViewStore(), broker, projections_from="broker")
    open_funded(ledger, "a", "12")
    ledger.run_worker_once()
    broker.refusing.set()
    ledger.execute(Deposit(account_id="a", amount="3", currency="EUR"))
    stop = threading.Event()
    worker = threading.Thread(
        target=ledger.run_worker, args=(stop,), kwargs={"poll_interval": 0.01, "max_backoff": 0.05}
    )
    with caplog.at_level(logging.INFO, logger="skyferry.core.worker"):
        worker.start()
        try:
            _wait(lambda: broker.refused >= 5)
            assert ledger.balance("a")["balance"] == "12.00"  # what was published is projected
            broker.refusing.clear()
            _wait(lambda: ledger.balance("a")["balance"] == "15.00")
        finally:
            stop.set()
            worker.join(timeout=30)
            ledger.close()
    assert not worker.is_alive()
    outage = [r.getMessage() for r in caplog.records if "relay" in r.getMessage()]
    # one line when the outage began, one when it ended: not one per attempt
    assert len(outage) == 2, outage
    assert "failing (TransientError: broker refuses messages (test))" in outage[0]
    assert "recovered after" in outage[1]


def _wait(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(LedgerError):
            if done():
                return
        time.sleep(0.01)
    raise AssertionError("not done within 30 s")


# -- money conservation -------------------------------------------------------------------------

ACCOUNTS = ["a", "b", "c", "d"]
amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("500"), places=2)
small_amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("20"), places=2)
operations = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=1),
        st.one_of(
            st.tuples(st.just("deposit"), st.sampled_from(ACCOUNTS), amounts),
            st.tuples(st.just("withdraw"), st.sampled_from(ACCOUNTS), amounts),
            st.tuples(st.just("transfer"), st.sampled_from(ACCOUNTS), st.sampled_from([*ACCOUNTS, "ghost"]), amounts),
            st.tuples(st.just("transfer"), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS), small_amounts),
            st.tuples(st.just("close"), st.sampled_from(ACCOUNTS)),
            st.tuples(st.just("work")),
        ),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_money_is_conserved_under_random_command_sequences(ops: list[tuple[int, tuple[Any, ...]]]) -> None:
    # Two writers share the stores (an API replica and a worker, say): their caches go
    # stale, their projection runners and process managers compete.
    events, views, broker = MemoryEventStore(), MemoryViewStore(), MemoryBroker()
    writers = [
        Ledger(events, views, broker, snapshot_every=2, fastforward=False),
        Ledger(events, views, broker, snapshot_every=3, fastforward=True),
    ]
    ledger = writers[0]
    for account in ACCOUNTS:
        open_funded(ledger, account, "100")
    external = Decimal(100) * len(ACCOUNTS)
    transfers = 0
    for writer, op in ops:
        ledger = writers[writer]
        try:
            if op[0] == "deposit":
                ledger.execute(Deposit(account_id=op[1], amount=op[2], currency="EUR"))
                external += op[2]
            elif op[0] == "withdraw":
                ledger.execute(Withdraw(account_id=op[1], amount=op[2], currency="EUR"))
                external -= op[2]
            elif op[0] == "transfer":
                if op[1] == op[2]:
                    continue
                transfers += 1
                ledger.execute(
                    TransferMoney(
                        transfer_id=f"t{transfers}", from_account=op[1], to_account=op[2], amount=op[3], currency="EUR"
                    )
                )
            elif op[0] == "close":
                ledger.execute(CloseAccount(account_id=op[1]))
            else:
                ledger.run_worker_once()
        except LedgerError:
            pass
        # Mid-way, with transfers possibly in flight, the money held never exceeds what came in.
        assert all(Decimal(ledger.account_state(a)["balance"]) >= 0 for a in ACCOUNTS)
    ledger = writers[0]
    writers[1].run_worker_once()
    ledger.run_worker_once()
    balances = {a: Decimal(ledger.account_state(a)["balance"]) for a in ACCOUNTS}
    assert sum(balances.values()) == external
    assert ledger.total_money().get("EUR", Decimal(0)) == external
    assert all(check["conserved"] for check in ledger.money_check().values())
    assert {a: Decimal(ledger.balance(a)["balance"]) for a in ACCOUNTS} == balances
    statuses = {doc["status"] for _, doc in ledger.read_models.query("transfers", "transfers")}
    assert statuses <= {"completed", "failed"}


def _settle(ledger: Ledger, done: Callable[[], bool]) -> None:
    """Run worker passes until ``done()`` (the broker delivers on its own threads)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ledger.run_worker_once()
        try:
            if done():
                return
        except LedgerError:
            pass
        time.sleep(0.01)
    raise AssertionError("the broker consumers did not settle in 30 s")


@pytest.mark.parametrize("mode", ["full", "thin"])
def test_broker_fed_worker_runs_the_saga_and_the_read_models(mode: str) -> None:
    ledger = Ledger(
        MemoryEventStore(),
        MemoryViewStore(),
        MemoryBroker(retry_backoff=0.01),
        message_mode=mode,
        projections_from="broker",
    )
    try:
        open_funded(ledger, "a", "100")
        ledger.execute(OpenAccount(account_id="b", owner="b", currency="EUR"))
        ledger.execute(TransferMoney(transfer_id="t", from_account="a", to_account="b", amount="30", currency="EUR"))
        ledger.execute(TransferMoney(transfer_id="u", from_account="a", to_account="zz", amount="5", currency="EUR"))
        _settle(
            ledger,
            lambda: (
                ledger.transfer("t")["status"] == "completed"
                and ledger.transfer("u")["status"] == "failed"
                and ledger.balance("a")["balance"] == "70.00"
                and ledger.balance("b")["balance"] == "30.00"
            ),
        )
        for name in ("balances", "daily_totals"):
            before = ledger.read_models.query(name, name)
            report = ledger.rebuild(name)
            assert report.new_generation == 2
            assert ledger.read_models.query(name, name) == before
        day = ledger.history("a")[0]["occurred_at"][:10]
        # The consumers continue the rebuilt generation without applying anything twice.
        ledger.execute(Deposit(account_id="a", amount="1", currency="EUR"))
        _settle(ledger, lambda: ledger.balance("a")["balance"] == "71.00")
        _settle(ledger, lambda: ledger.daily_totals(day)[0]["deposited_count"] == 2)
        assert ledger.daily_totals(day)[0]["deposited"] == "101.00"
        assert ledger.broker.dead_letters("balances") == []
    finally:
        ledger.close()
    with pytest.raises(ConfigurationError):
        Ledger(MemoryEventStore(), MemoryViewStore(), MemoryBroker(), projections_from="carrier pigeon")  # type: ignore[arg-type]


def test_read_models_show_amounts_with_the_currency_decimals(ledger: Ledger) -> None:
    ledger.execute(OpenAccount(account_id="e", owner="e", currency="EUR"))
    ledger.execute(OpenAccount(account_id="y", owner="y", currency="JPY"))
    ledger.execute(Deposit(account_id="y", amount="500", currency="JPY"))
    ledger.run_worker_once()
    assert ledger.balance("e")["balance"] == "0.00"
    assert ledger.balance("y")["balance"] == "500"
    day = ledger.history("y")[0]["occurred_at"][:10]
    jpy = next(doc for doc in ledger.daily_totals(day) if doc["currency"] == "JPY")
    assert (jpy["deposited"], jpy["withdrawn"], jpy["transferred"]) == ("500", "0", "0")


def test_a_new_projection_version_marks_its_read_model_outdated_until_rebuilt(ledger: Ledger) -> None:
    open_funded(ledger, "a", "8")
    ledger.run_worker_once()
    assert ledger.outdated_read_models() == []

    class BalancesV2(BalancesProjection):
        version = 2

        def apply(self, event: Event, views: ViewBatch) -> None:
            super().apply(event, views)
            doc = views.get("balances", event.data["account_id"])
            if doc is not None:
                views.put("balances", event.data["account_id"], {**doc, "schema": 2})

    ledger.projections["balances"] = BalancesV2()
    assert ledger.outdated_read_models() == ["balances"]
    reports = ledger.rebuild_outdated()
    assert [(r.projection, r.new_generation) for r in reports] == [("balances", 2)]
    assert ledger.outdated_read_models() == []
    balance = ledger.balance("a")
    assert (balance["schema"], balance["balance"]) == (2, "8.00")


def test_a_client_cannot_take_the_process_managers_idempotency_key(ledger: Ledger) -> None:
    open_funded(ledger, "a", "50")
    ledger.execute(OpenAccount(account_id="b", owner="b", currency="EUR"))
    started = ledger.execute(
        TransferMoney(transfer_id="t", from_account="a", to_account="b", amount="20", currency="EUR")
    ).events[0]
    # The event id is predictable from the response: a crafted key would take the debit's key.
    with pytest.raises(ValidationError, match="reserved"):
        ledger.execute(
            Deposit(account_id="a", amount="1", currency="EUR"), idempotency_key=f"transfer-process:debit:{started.id}"
        )
    assert ledger.run_worker_once() > 0
    assert ledger.transfer("t")["status"] == "completed"
    assert ledger.parked.list() == []


# -- poison isolation ---------------------------------------------------------------------------

NO_WAIT = RetryPolicy(sleep=lambda _: None)


def poison_balances(ledger: Ledger, owner: str = "poison") -> None:
    """Make the balances projection fail, deterministically, on every event of accounts owned by ``owner``."""
    projection = ledger.projections["balances"]
    healthy = projection.apply
    poisoned: set[str] = set()

    def apply(event: Event, views: ViewBatch) -> None:
        if event.data.get("owner") == owner:
            poisoned.add(event.data["account_id"])
        if event.data.get("account_id") in poisoned:
            raise KeyError(f"balances cannot take {event.data['account_id']}")
        healthy(event, views)

    projection.apply = apply  # type: ignore[method-assign]


def test_one_poisoned_event_is_parked_and_every_read_model_keeps_going() -> None:
    ledger = Ledger(MemoryEventStore(), MemoryViewStore(), MemoryBroker(), retry=NO_WAIT)
    poison_balances(ledger)
    open_funded(ledger, "before", "10")
    ledger.execute(OpenAccount(account_id="p", owner="poison", currency="EUR"))
    open_funded(ledger, "after", "20")
    assert ledger.run_worker_once() > 0  # no error: the pass goes on past the poisoned event
    assert ledger.balance("before")["balance"] == "10.00"
    assert ledger.balance("after")["balance"] == "20.00"
    with pytest.raises(AccountNotFound):
        ledger.balance("p")
    assert [entry["type"] for entry in ledger.history("p")] == ["AccountOpened"]  # other read models took it
    [parked] = ledger.parked.list()
    assert (parked.runner, parked.stream_id, parked.type) == ("balances_g1", "account-p", "AccountOpened")
    assert "KeyError" in parked.error
    assert {r.name: r.parked for r in ledger.runners()}["balances"] == 1
    assert all(r.lag_seconds == 0 for r in ledger.runners())
    ledger.close()


def test_a_poisoned_transfer_event_parks_in_the_process_manager_and_other_transfers_complete() -> None:
    ledger = Ledger(MemoryEventStore(), MemoryViewStore(), MemoryBroker(), retry=NO_WAIT)
    open_funded(ledger, "a", "100")
    ledger.execute(OpenAccount(account_id="b", owner="b", currency="EUR"))
    handle = ledger.process.handle

    def failing(event: Event) -> None:
        if event.data["transfer_id"] == "bad":
            raise RuntimeError("the process manager cannot take this one")
        handle(event)

    ledger.process.handle = failing  # type: ignore[method-assign]
    for transfer_id in ("t1", "bad", "t2"):
        ledger.execute(
            TransferMoney(transfer_id=transfer_id, from_account="a", to_account="b", amount="5", currency="EUR")
        )
    while ledger.run_worker_once():
        pass
    assert [ledger.transfer(t)["status"] for t in ("t1", "bad", "t2")] == ["completed", "started", "completed"]
    [parked] = ledger.parked.list()
    assert parked.runner == "transfer-process_g1"
    ledger.process.handle = handle  # type: ignore[method-assign]  # the fix is deployed
    assert ledger.parked.retry(parked.key) is None
    while ledger.run_worker_once():
        pass
    assert ledger.transfer("bad")["status"] == "completed"
    assert ledger.balance("a")["balance"] == "85.00"
    assert all(check["conserved"] for check in ledger.money_check().values())
    ledger.close()


def test_broker_fed_consumers_park_a_poisoned_event_and_keep_consuming() -> None:
    broker = MemoryBroker(retry_backoff=0.01)
    ledger = Ledger(MemoryEventStore(), MemoryViewStore(), broker, projections_from="broker", retry=NO_WAIT)
    poison_balances(ledger)
    try:
        open_funded(ledger, "before", "10")
        ledger.execute(OpenAccount(account_id="p", owner="poison", currency="EUR"))
        open_funded(ledger, "after", "20")
        _settle(ledger, lambda: ledger.balance("after")["balance"] == "20.00" and len(ledger.parked.list()) == 1)
        assert ledger.balance("before")["balance"] == "10.00"
        assert broker.dead_letters("balances") == []
        [parked] = ledger.parked.list()
        assert (parked.runner, parked.stream_id, parked.attempts) == ("balances_g1", "account-p", NO_WAIT.attempts)
    finally:
        ledger.close()


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()


def test_the_serve_worker_thread_is_restarted_when_it_dies_and_says_so_meanwhile() -> None:
    ledger = Ledger(MemoryEventStore(), MemoryViewStore(), MemoryBroker())
    deaths = {"left": 1}
    first = ledger.worker.tasks[0]

    def dying() -> int:
        if deaths["left"]:
            deaths["left"] -= 1
            raise ConfigurationError("the store went read-only (test)")
        return first.step()

    ledger.worker.tasks[0] = Task(first.name, dying)
    open_funded(ledger, "a", "7")
    stop = threading.Event()
    thread = ledger.start_worker(stop, poll_interval=0.01)
    try:
        _wait(lambda: ledger.worker_status() == {"up": False, "restarts": 1, "last_error": ANY_TEXT})
        status = ledger.worker_status()
        assert status is not None
        assert status["last_error"] == "ConfigurationError: the store went read-only (test)"
        _wait(lambda: ledger.balance("a")["balance"] == "7.00")  # restarted (after 1 s)
        assert ledger.worker_status() == {"up": True, "restarts": 1, "last_error": ANY_TEXT}
    finally:
        stop.set()
        thread.join(timeout=30)
        ledger.close()
