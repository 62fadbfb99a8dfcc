"""The account aggregate and the decisions on it (plain command-handler functions)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from skyferry.core.aggregate import Aggregate, applies
from skyferry.core.messages import Event, JSONObject, NewEvent
from skyferry.ledger import events as ev
from skyferry.ledger.commands import (
    CloseAccount,
    CreditForTransfer,
    DebitForTransfer,
    Deposit,
    MoneyCommand,
    OpenAccount,
    RefundTransfer,
    Withdraw,
)
from skyferry.ledger.errors import (
    AccountAlreadyExists,
    AccountClosed,
    AccountNotEmpty,
    AccountNotFound,
    CurrencyMismatch,
    InsufficientFunds,
)
from skyferry.ledger.money import format_amount

OPEN = "open"
CLOSED = "closed"


class Account(Aggregate):
    """An account: owner, currency, balance (never negative), open or closed."""

    stream_prefix = "account-"
    snapshot_schema = 1

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.owner = ""
        self.currency = ""
        self.balance = Decimal(0)
        self.status = ""

    @applies(ev.ACCOUNT_OPENED)
    def _opened(self, event: Event) -> None:
        self.owner = event.data["owner"]
        self.currency = event.data["currency"]
        self.status = OPEN

    @applies(ev.MONEY_DEPOSITED)
    def _deposited(self, event: Event) -> None:
        self.balance += Decimal(event.data["amount"])

    @applies(ev.MONEY_WITHDRAWN)
    def _withdrawn(self, event: Event) -> None:
        self.balance -= Decimal(event.data["amount"])

    @applies(ev.ACCOUNT_CLOSED)
    def _closed(self, event: Event) -> None:
        self.status = CLOSED

    def snapshot(self) -> JSONObject:
        """The account's state as JSON (the balance as a decimal string)."""
        return {"owner": self.owner, "currency": self.currency, "balance": str(self.balance), "status": self.status}

    def restore_state(self, state: JSONObject) -> None:
        """Inverse of :meth:`snapshot`."""
        self.owner = state["owner"]
        self.currency = state["currency"]
        self.balance = Decimal(state["balance"])
        self.status = state["status"]

    def to_dict(self) -> JSONObject:
        """The account as the API shows it."""
        balance = format_amount(self.balance, self.currency) if self.currency else str(self.balance)
        return {
            "account_id": self.id,
            "version": self.version,
            "owner": self.owner,
            "currency": self.currency,
            "balance": balance,
            "status": self.status,
        }

    # -- rules -------------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self.version == 0:
            raise AccountNotFound(f"account {self.id!r} does not exist")
        if self.status == CLOSED:
            raise AccountClosed(f"account {self.id!r} is closed")

    def _require_currency(self, command: MoneyCommand) -> None:
        if command.currency != self.currency:
            raise CurrencyMismatch(f"account {self.id!r} holds {self.currency}, the command is in {command.currency}")

    def _require_funds(self, amount: Decimal) -> None:
        if amount > self.balance:
            raise InsufficientFunds(
                f"account {self.id!r} has {format_amount(self.balance, self.currency)} {self.currency}, "
                f"{format_amount(amount, self.currency)} requested"
            )


def open_account(account: Account, command: OpenAccount) -> NewEvent:
    """Open: the account must not exist yet."""
    if account.version:
        raise AccountAlreadyExists(f"account {account.id!r} already exists")
    return ev.account_opened(command.account_id, command.owner, command.currency)


def deposit(account: Account, command: Deposit) -> NewEvent:
    """Deposit into an open account of the same currency."""
    account._require_open()
    account._require_currency(command)
    return ev.money_deposited(command.account_id, command.amount_text, command.currency)


def withdraw(account: Account, command: Withdraw) -> NewEvent:
    """Withdraw from an open account, never below zero."""
    account._require_open()
    account._require_currency(command)
    account._require_funds(command.value)
    return ev.money_withdrawn(command.account_id, command.amount_text, command.currency)


def close_account(account: Account, command: CloseAccount) -> NewEvent:
    """Close an open account whose balance is zero."""
    account._require_open()
    if account.balance != 0:
        raise AccountNotEmpty(
            f"account {account.id!r} still holds {format_amount(account.balance, account.currency)} {account.currency}"
        )
    return ev.account_closed(command.account_id)


def debit_for_transfer(account: Account, command: DebitForTransfer) -> NewEvent:
    """The debit leg of a transfer: same rules as a withdrawal."""
    account._require_open()
    account._require_currency(command)
    account._require_funds(command.value)
    return ev.money_withdrawn(
        command.account_id, command.amount_text, command.currency, ev.REASON_TRANSFER, command.transfer_id
    )


def credit_for_transfer(account: Account, command: CreditForTransfer) -> NewEvent:
    """The credit leg of a transfer: the target must be open and in the same currency."""
    account._require_open()
    account._require_currency(command)
    return ev.money_deposited(
        command.account_id, command.amount_text, command.currency, ev.REASON_TRANSFER, command.transfer_id
    )


def refund_transfer(account: Account, command: RefundTransfer) -> NewEvent:
    """Compensation: give the debit back.  Allowed even on a closed account (it must not fail)."""
    if account.version == 0:
        raise AccountNotFound(f"account {account.id!r} does not exist")
    account._require_currency(command)
    return ev.money_deposited(
        command.account_id, command.amount_text, command.currency, ev.REASON_REFUND, command.transfer_id
    )


def account_id_of(command: Any) -> str:
    """The account a command acts on."""
    return str(command.account_id)
