"""The ledger's events (past tense) and the functions that make them.

Amounts are decimal strings with the currency's decimals.  ``MoneyDeposited`` and
``MoneyWithdrawn`` carry a ``reason``: ``deposit`` / ``withdrawal`` for money entering or
leaving the ledger, ``transfer`` for a transfer leg, ``refund`` for the compensation of a
failed transfer.  Only ``deposit`` and ``withdrawal`` change the ledger's total.
"""

from __future__ import annotations

from typing import Final

from skyferry.core.messages import NewEvent

ACCOUNT_OPENED: Final = "AccountOpened"
MONEY_DEPOSITED: Final = "MoneyDeposited"
MONEY_WITHDRAWN: Final = "MoneyWithdrawn"
ACCOUNT_CLOSED: Final = "AccountClosed"
TRANSFER_STARTED: Final = "TransferStarted"
TRANSFER_DEBITED: Final = "TransferDebited"
TRANSFER_COMPLETED: Final = "TransferCompleted"
TRANSFER_FAILED: Final = "TransferFailed"

ACCOUNT_EVENTS: Final = frozenset({ACCOUNT_OPENED, MONEY_DEPOSITED, MONEY_WITHDRAWN, ACCOUNT_CLOSED})
TRANSFER_EVENTS: Final = frozenset({TRANSFER_STARTED, TRANSFER_DEBITED, TRANSFER_COMPLETED, TRANSFER_FAILED})

REASON_DEPOSIT: Final = "deposit"
REASON_WITHDRAWAL: Final = "withdrawal"
REASON_TRANSFER: Final = "transfer"
REASON_REFUND: Final = "refund"


def account_opened(account_id: str, owner: str, currency: str) -> NewEvent:
    """An account was opened."""
    return NewEvent(ACCOUNT_OPENED, {"account_id": account_id, "owner": owner, "currency": currency})


def money_deposited(
    account_id: str, amount: str, currency: str, reason: str = REASON_DEPOSIT, transfer_id: str | None = None
) -> NewEvent:
    """Money entered an account."""
    data = {"account_id": account_id, "amount": amount, "currency": currency, "reason": reason}
    if transfer_id is not None:
        data["transfer_id"] = transfer_id
    return NewEvent(MONEY_DEPOSITED, data)


def money_withdrawn(
    account_id: str, amount: str, currency: str, reason: str = REASON_WITHDRAWAL, transfer_id: str | None = None
) -> NewEvent:
    """Money left an account."""
    data = {"account_id": account_id, "amount": amount, "currency": currency, "reason": reason}
    if transfer_id is not None:
        data["transfer_id"] = transfer_id
    return NewEvent(MONEY_WITHDRAWN, data)


def account_closed(account_id: str) -> NewEvent:
    """An account was closed."""
    return NewEvent(ACCOUNT_CLOSED, {"account_id": account_id})


def transfer_started(transfer_id: str, from_account: str, to_account: str, amount: str, currency: str) -> NewEvent:
    """A transfer was requested."""
    return NewEvent(
        TRANSFER_STARTED,
        {
            "transfer_id": transfer_id,
            "from_account": from_account,
            "to_account": to_account,
            "amount": amount,
            "currency": currency,
        },
    )


def transfer_debited(transfer_id: str) -> NewEvent:
    """The transfer's source account was debited."""
    return NewEvent(TRANSFER_DEBITED, {"transfer_id": transfer_id})


def transfer_completed(transfer_id: str, amount: str, currency: str) -> NewEvent:
    """The transfer's target account was credited: done."""
    return NewEvent(TRANSFER_COMPLETED, {"transfer_id": transfer_id, "amount": amount, "currency": currency})


def transfer_failed(transfer_id: str, reason: str, compensated: bool) -> NewEvent:
    """The transfer failed; ``compensated`` when the debit was given back."""
    return NewEvent(TRANSFER_FAILED, {"transfer_id": transfer_id, "reason": reason, "compensated": compensated})
