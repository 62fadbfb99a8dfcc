"""Transfers: the transfer aggregate and its decisions (the saga is run by :mod:`skyferry.ledger.process`).

A transfer is a mediator-style saga over two accounts::

    TransferMoney -> TransferStarted
      process manager: DebitForTransfer(source)
        ok     -> MarkTransferDebited -> TransferDebited
        reject -> FailTransfer(compensated=False) -> TransferFailed
    TransferDebited
      process manager: CreditForTransfer(target)
        ok     -> CompleteTransfer -> TransferCompleted
        reject -> RefundTransfer(source), then FailTransfer(compensated=True) -> TransferFailed
"""

from __future__ import annotations

from typing import Any

from skyferry.core.aggregate import Aggregate, applies
from skyferry.core.messages import Event, JSONObject, NewEvent
from skyferry.ledger import events as ev
from skyferry.ledger.commands import CompleteTransfer, FailTransfer, MarkTransferDebited, TransferMoney
from skyferry.ledger.errors import InvalidTransferState, TransferAlreadyExists, TransferNotFound

STARTED = "started"
DEBITED = "debited"
COMPLETED = "completed"
FAILED = "failed"


class Transfer(Aggregate):
    """A transfer: accounts, amount, and where the saga stands."""

    stream_prefix = "transfer-"
    snapshot_schema = 1

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.from_account = ""
        self.to_account = ""
        self.amount = ""
        self.currency = ""
        self.status = ""
        self.reason = ""
        self.compensated = False

    @applies(ev.TRANSFER_STARTED)
    def _started(self, event: Event) -> None:
        data = event.data
        self.from_account = data["from_account"]
        self.to_account = data["to_account"]
        self.amount = data["amount"]
        self.currency = data["currency"]
        self.status = STARTED

    @applies(ev.TRANSFER_DEBITED)
    def _debited(self, event: Event) -> None:
        self.status = DEBITED

    @applies(ev.TRANSFER_COMPLETED)
    def _completed(self, event: Event) -> None:
        self.status = COMPLETED

    @applies(ev.TRANSFER_FAILED)
    def _failed(self, event: Event) -> None:
        self.status = FAILED
        self.reason = event.data["reason"]
        self.compensated = bool(event.data["compensated"])

    def snapshot(self) -> JSONObject:
        """The transfer's state as JSON."""
        return {
            "from_account": self.from_account,
            "to_account": self.to_account,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
            "reason": self.reason,
            "compensated": self.compensated,
        }

    def restore_state(self, state: JSONObject) -> None:
        """Inverse of :meth:`snapshot`."""
        self.from_account = state["from_account"]
        self.to_account = state["to_account"]
        self.amount = state["amount"]
        self.currency = state["currency"]
        self.status = state["status"]
        self.reason = state["reason"]
        self.compensated = state["compensated"]

    def to_dict(self) -> JSONObject:
        """The transfer as the API shows it."""
        return {"transfer_id": self.id, "version": self.version, **self.snapshot()}

    def _require(self, *statuses: str) -> None:
        if self.version == 0:
            raise TransferNotFound(f"transfer {self.id!r} does not exist")
        if self.status not in statuses:
            raise InvalidTransferState(f"transfer {self.id!r} is {self.status}, not {' or '.join(statuses)}")


def start_transfer(transfer: Transfer, command: TransferMoney) -> NewEvent:
    """Request a transfer: the id must be new."""
    if transfer.version:
        raise TransferAlreadyExists(f"transfer {transfer.id!r} already exists")
    return ev.transfer_started(
        command.transfer_id, command.from_account, command.to_account, command.amount_text, command.currency
    )


def mark_debited(transfer: Transfer, command: MarkTransferDebited) -> NewEvent:
    """The debit succeeded."""
    transfer._require(STARTED)
    return ev.transfer_debited(command.transfer_id)


def complete_transfer(transfer: Transfer, command: CompleteTransfer) -> NewEvent:
    """The credit succeeded."""
    transfer._require(DEBITED)
    return ev.transfer_completed(command.transfer_id, transfer.amount, transfer.currency)


def fail_transfer(transfer: Transfer, command: FailTransfer) -> NewEvent:
    """The transfer failed (compensated after a debit, plain before)."""
    transfer._require(STARTED, DEBITED)
    return ev.transfer_failed(command.transfer_id, command.reason, command.compensated)


def transfer_id_of(command: Any) -> str:
    """The transfer a command acts on."""
    return str(command.transfer_id)
