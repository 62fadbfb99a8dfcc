"""Transfers: the transfer aggregate and the process manager that orchestrates them.

A transfer is a mediator-style saga over two accounts::

    TransferMoney -> TransferStarted
      process manager: DebitForTransfer(source)
        ok     -> MarkTransferDebited -> TransferDebited
        reject -> FailTransfer(compensated=False) -> TransferFailed
    TransferDebited
      process manager: CreditForTransfer(target)
        ok     -> CompleteTransfer -> TransferCompleted
        reject -> RefundTransfer(source), then FailTransfer(compensated=True) -> TransferFailed

Every command the process manager sends carries an idempotency key derived from the id
of the event that triggered it, so handling an event twice (a redelivery, a replay, an
imported store) never moves money twice; and it acts only when the transfer is still in
the state the event announced, so a stale event is ignored.
"""

from __future__ import annotations

from typing import Any, ClassVar

from skyferry.core.aggregate import Aggregate, applies
from skyferry.core.application import Application
from skyferry.core.errors import DomainError, StreamNotFound
from skyferry.core.messages import Event, JSONObject, NewEvent
from skyferry.core.projections import Projection, ViewBatch
from skyferry.ledger import events as ev
from skyferry.ledger.commands import (
    CompleteTransfer,
    CreditForTransfer,
    DebitForTransfer,
    FailTransfer,
    MarkTransferDebited,
    RefundTransfer,
    TransferMoney,
)
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


class TransferProcess(Projection):
    """The process manager, fed like a projection (from ``read_all`` or the broker).

    It writes no view; its effects are idempotent commands on ``app``.
    """

    name: ClassVar[str] = "transfer-process"
    handles: ClassVar[frozenset[str]] = frozenset({ev.TRANSFER_STARTED, ev.TRANSFER_DEBITED})
    collections: ClassVar[tuple[str, ...]] = ()

    def __init__(self, app: Application) -> None:
        self.app = app

    def apply(self, event: Event, views: ViewBatch) -> None:
        """React to one transfer event."""
        self.handle(event)

    def handle(self, event: Event) -> None:
        """React to one transfer event (safe to call any number of times)."""
        if event.type == ev.TRANSFER_STARTED:
            self._debit(event)
        elif event.type == ev.TRANSFER_DEBITED:
            self._credit(event)

    def _pending(self, event: Event, status: str) -> tuple[Transfer, dict[str, Any]] | None:
        """The transfer if it is still ``status`` (else the event is stale), and its money fields."""
        try:
            transfer = self.app.load(Transfer, event.data["transfer_id"])
        except StreamNotFound:
            return None
        if transfer.status != status:
            return None
        return transfer, {"amount": transfer.amount, "currency": transfer.currency, "transfer_id": transfer.id}

    def _run(self, command: Any, step: str, trigger: Event) -> None:
        metadata = {
            "causation_id": trigger.id,
            "correlation_id": trigger.metadata.get("correlation_id", trigger.id),
            "actor": self.name,
        }
        self.app.execute(command, idempotency_key=f"{self.name}:{step}:{trigger.id}", metadata=metadata)

    def _debit(self, event: Event) -> None:
        pending = self._pending(event, STARTED)
        if pending is None:
            return
        transfer, money = pending
        try:
            self._run(DebitForTransfer(account_id=transfer.from_account, **money), "debit", event)
        except DomainError as e:
            self._run(FailTransfer(transfer_id=transfer.id, reason=str(e), compensated=False), "fail", event)
            return
        self._run(MarkTransferDebited(transfer_id=transfer.id), "debited", event)

    def _credit(self, event: Event) -> None:
        pending = self._pending(event, DEBITED)
        if pending is None:
            return
        transfer, money = pending
        try:
            self._run(CreditForTransfer(account_id=transfer.to_account, **money), "credit", event)
        except DomainError as e:
            self._run(RefundTransfer(account_id=transfer.from_account, **money), "refund", event)
            self._run(FailTransfer(transfer_id=transfer.id, reason=str(e), compensated=True), "fail", event)
            return
        self._run(CompleteTransfer(transfer_id=transfer.id), "complete", event)
