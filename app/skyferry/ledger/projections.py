"""The ledger's read models: balances, history, daily totals, transfers.

Amounts are decimal strings.  Keys:

* ``balances``: ``<account_id>`` -> owner, currency, balance, status, version.
* ``history``: ``<account_id>/<10^10 - version, 10 digits>`` -> one entry per account
  event, so that a prefix query lists the newest first.
* ``daily_totals``: ``<YYYY-MM-DD>/<currency>`` -> money that entered (``deposited``) and
  left (``withdrawn``) the ledger that day (by ``occurred_at``, UTC), and completed
  transfers (``transferred``), each with a count.
* ``transfers``: ``<transfer_id>`` -> status, accounts, amount, reason.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Final

from skyferry.core.messages import Event, format_timestamp
from skyferry.core.projections import Projection, ViewBatch
from skyferry.ledger import events as ev
from skyferry.ledger.money import CURRENCY_DECIMALS, format_amount, zero

HISTORY_VERSION_SPAN: Final = 10**10


def _zero(currency: str) -> str:
    """Zero in ``currency`` as the read models show amounts (``"0.00"``, ``"0"`` for JPY)."""
    return format_amount(zero(currency), currency) if currency in CURRENCY_DECIMALS else "0"


def history_key(account_id: str, version: int) -> str:
    """The key of an account's history entry: newest first in key order."""
    return f"{account_id}/{HISTORY_VERSION_SPAN - version:010d}"


class BalancesProjection(Projection):
    """One document per account: its balance and status."""

    name: ClassVar[str] = "balances"
    handles: ClassVar[frozenset[str]] = ev.ACCOUNT_EVENTS
    collections: ClassVar[tuple[str, ...]] = ("balances",)

    def apply(self, event: Event, views: ViewBatch) -> None:
        """Apply one account event."""
        data = event.data
        account_id = data["account_id"]
        kind = event.type
        if kind == ev.ACCOUNT_OPENED:
            doc = {
                "account_id": account_id,
                "owner": data["owner"],
                "currency": data["currency"],
                "balance": _zero(data["currency"]),
                "status": "open",
                "version": event.version,
            }
            views.put("balances", account_id, doc)
            return
        current = views.get("balances", account_id)
        if current is None:
            return
        if kind == ev.MONEY_DEPOSITED:
            current["balance"] = str(Decimal(current["balance"]) + Decimal(data["amount"]))
        elif kind == ev.MONEY_WITHDRAWN:
            current["balance"] = str(Decimal(current["balance"]) - Decimal(data["amount"]))
        elif kind == ev.ACCOUNT_CLOSED:
            current["status"] = "closed"
        current["version"] = event.version
        views.put("balances", account_id, current)


class HistoryProjection(Projection):
    """One document per account event, newest first per account."""

    name: ClassVar[str] = "history"
    handles: ClassVar[frozenset[str]] = ev.ACCOUNT_EVENTS
    collections: ClassVar[tuple[str, ...]] = ("history",)

    def apply(self, event: Event, views: ViewBatch) -> None:
        """Record one account event."""
        data = event.data
        entry = {
            "account_id": data["account_id"],
            "version": event.version,
            "type": event.type,
            "event_id": event.id,
            "occurred_at": format_timestamp(event.occurred_at),
        }
        for field in ("amount", "currency", "reason", "transfer_id", "owner"):
            if field in data:
                entry[field] = data[field]
        views.put("history", history_key(data["account_id"], event.version), entry)


class DailyTotalsProjection(Projection):
    """Per day and currency: money in, money out, transfers completed."""

    name: ClassVar[str] = "daily_totals"
    handles: ClassVar[frozenset[str]] = frozenset({ev.MONEY_DEPOSITED, ev.MONEY_WITHDRAWN, ev.TRANSFER_COMPLETED})
    collections: ClassVar[tuple[str, ...]] = ("daily_totals",)

    def apply(self, event: Event, views: ViewBatch) -> None:
        """Add one event to its day's totals."""
        data = event.data
        kind = event.type
        if kind == ev.MONEY_DEPOSITED:
            if data["reason"] != ev.REASON_DEPOSIT:
                return
            field = "deposited"
        elif kind == ev.MONEY_WITHDRAWN:
            if data["reason"] != ev.REASON_WITHDRAWAL:
                return
            field = "withdrawn"
        else:
            field = "transferred"
        day = event.occurred_at.date().isoformat()
        currency = data["currency"]
        key = f"{day}/{currency}"
        doc = views.get("daily_totals", key)
        if doc is None:
            zero = _zero(currency)
            doc = {
                "day": day,
                "currency": currency,
                "deposited": zero,
                "withdrawn": zero,
                "transferred": zero,
                "deposited_count": 0,
                "withdrawn_count": 0,
                "transferred_count": 0,
            }
        doc[field] = str(Decimal(doc[field]) + Decimal(data["amount"]))
        doc[f"{field}_count"] += 1
        views.put("daily_totals", key, doc)


class TransfersProjection(Projection):
    """One document per transfer: where it stands."""

    name: ClassVar[str] = "transfers"
    handles: ClassVar[frozenset[str]] = ev.TRANSFER_EVENTS
    collections: ClassVar[tuple[str, ...]] = ("transfers",)

    def apply(self, event: Event, views: ViewBatch) -> None:
        """Apply one transfer event."""
        data = event.data
        transfer_id = data["transfer_id"]
        if event.type == ev.TRANSFER_STARTED:
            doc = {**data, "status": "started", "reason": "", "compensated": False, "version": event.version}
            views.put("transfers", transfer_id, doc)
            return
        current = views.get("transfers", transfer_id)
        if current is None:
            return
        if event.type == ev.TRANSFER_DEBITED:
            current["status"] = "debited"
        elif event.type == ev.TRANSFER_COMPLETED:
            current["status"] = "completed"
        else:
            current["status"] = "failed"
            current["reason"] = data["reason"]
            current["compensated"] = data["compensated"]
        current["version"] = event.version
        views.put("transfers", transfer_id, current)


def ledger_projections() -> list[Projection]:
    """The ledger's read models (the process manager is not one of them)."""
    return [BalancesProjection(), HistoryProjection(), DailyTotalsProjection(), TransfersProjection()]
