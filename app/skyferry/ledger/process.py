"""The transfer process manager: it runs each transfer's saga (see :mod:`skyferry.ledger.transfer`).

Every command it sends carries an idempotency key derived from the id of the event that
triggered it, so handling an event twice (a redelivery, a replay, an imported store)
never moves money twice; and it acts only when the transfer is still in the state the
event announced, so a stale event is ignored.
"""

from __future__ import annotations

from typing import Any, ClassVar

from skyferry.core.application import Application
from skyferry.core.errors import DomainError, StreamNotFound
from skyferry.core.messages import Event
from skyferry.core.projections import Projection, ViewBatch
from skyferry.ledger import events as ev
from skyferry.ledger.commands import (
    CompleteTransfer,
    CreditForTransfer,
    DebitForTransfer,
    FailTransfer,
    MarkTransferDebited,
    RefundTransfer,
)
from skyferry.ledger.transfer import DEBITED, STARTED, Transfer


class TransferProcess(Projection):
    """The process manager, fed like a projection (from ``read_all`` or the broker).

    It writes no view; its effects are idempotent commands on ``app``.
    """

    name: ClassVar[str] = "transfer-process"
    handles: ClassVar[frozenset[str]] = frozenset({ev.TRANSFER_STARTED, ev.TRANSFER_DEBITED})
    collections: ClassVar[tuple[str, ...]] = ()

    def __init__(self, app: Application) -> None:
        self.app = app
        app.reserve_keys(f"{self.name}:")  # no client can send a key of this process manager

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
        self.app.execute(command, internal_key=f"{self.name}:{step}:{trigger.id}", metadata=metadata)

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
