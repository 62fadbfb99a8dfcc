"""The ledger's queries: the read models (eventually consistent) and an account's state from its events.

Reads of the read models reflect the events the worker has processed;
:meth:`LedgerQueries.account_state` reads the event store and is always current.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from skyferry.core.application import Application
from skyferry.core.errors import StreamNotFound
from skyferry.core.projections import ReadModels
from skyferry.ledger import account as acc
from skyferry.ledger.errors import AccountNotFound, TransferNotFound
from skyferry.ledger.money import format_amount
from skyferry.ledger.projections import history_key


class LedgerQueries:
    """Queries over the live generation of the ledger's read models, and temporal account loads."""

    def __init__(self, read_models: ReadModels, app: Application) -> None:
        self.read_models = read_models
        self.app = app

    def balance(self, account_id: str) -> dict[str, Any]:
        """The balances document of an account; ``AccountNotFound`` if the view has none."""
        doc = self.read_models.get("balances", "balances", account_id)
        if doc is None:
            raise AccountNotFound(f"account {account_id!r} does not exist (or is not projected yet)")
        return doc

    def history(self, account_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The account's events, newest first, at most ``limit``."""
        prefix = history_key(account_id, 0).rsplit("/", 1)[0] + "/"
        return [doc for _, doc in self.read_models.query("history", "history", prefix=prefix, limit=limit)]

    def daily_totals(self, day: date | str) -> list[dict[str, Any]]:
        """The totals of ``day`` (``YYYY-MM-DD``), one document per currency."""
        text = day.isoformat() if isinstance(day, date) else day
        return [doc for _, doc in self.read_models.query("daily_totals", "daily_totals", prefix=f"{text}/")]

    def transfer(self, transfer_id: str) -> dict[str, Any]:
        """Where a transfer stands (from the transfers view); ``TransferNotFound`` if absent."""
        doc = self.read_models.get("transfers", "transfers", transfer_id)
        if doc is None:
            raise TransferNotFound(f"transfer {transfer_id!r} does not exist (or is not projected yet)")
        return doc

    def account_state(
        self, account_id: str, as_of: datetime | None = None, at_version: int | None = None
    ) -> dict[str, Any]:
        """The account as it is, or was at ``as_of`` / ``at_version``, from its events."""
        try:
            account = self.app.load(acc.Account, account_id, as_of=as_of, at_version=at_version)
        except StreamNotFound as e:
            raise AccountNotFound(f"account {account_id!r} does not exist at that point") from e
        return account.to_dict()

    def total_money(self) -> dict[str, Decimal]:
        """Per currency: the sum of the balances plus the money in transit (debited, not credited).

        Equal to deposits minus withdrawals (see :meth:`money_check`) once the worker is
        caught up.
        """
        totals: dict[str, Decimal] = {}
        for _, doc in self.read_models.query("balances", "balances"):
            totals[doc["currency"]] = totals.get(doc["currency"], Decimal(0)) + Decimal(doc["balance"])
        for _, doc in self.read_models.query("transfers", "transfers", where=("status", "debited")):
            totals[doc["currency"]] = totals.get(doc["currency"], Decimal(0)) + Decimal(doc["amount"])
        return totals

    def money_check(self) -> dict[str, dict[str, Any]]:
        """Per currency: total money vs. deposits minus withdrawals (from daily totals), and whether equal."""
        held = self.total_money()
        flows: dict[str, Decimal] = {}
        for _, doc in self.read_models.query("daily_totals", "daily_totals"):
            net = Decimal(doc["deposited"]) - Decimal(doc["withdrawn"])
            flows[doc["currency"]] = flows.get(doc["currency"], Decimal(0)) + net
        report: dict[str, dict[str, Any]] = {}
        for currency in sorted(set(held) | set(flows)):
            have, expected = held.get(currency, Decimal(0)), flows.get(currency, Decimal(0))
            report[currency] = {
                "held": format_amount(have, currency),
                "deposited_minus_withdrawn": format_amount(expected, currency),
                "conserved": have == expected,
            }
        return report
