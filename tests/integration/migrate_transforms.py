"""Example transforms for ``--transform`` in the migrate tests (``module:function``)."""

from __future__ import annotations

import uuid
from dataclasses import replace

from skyferry.core.messages import Event


def upcast_deposits(event: Event) -> Event:
    """Schema 1..3 deposits become schema 9, with ``amount`` renamed to ``value``."""
    if event.type != "MoneyDeposited":
        return event
    data = dict(event.data)
    data["value"] = data.pop("amount")
    return replace(event, data=data, schema_version=9)


def rename_withdrawals(event: Event) -> Event:
    """``MoneyWithdrawn`` becomes ``FundsWithdrawn``."""
    return replace(event, type="FundsWithdrawn") if event.type == "MoneyWithdrawn" else event


def drop_withdrawals(event: Event) -> Event | None:
    """Withdrawals are dropped (changes the count: needs --allow-count-change)."""
    return None if event.type == "MoneyWithdrawn" else event


def split_deposits(event: Event) -> list[Event]:
    """Each deposit becomes itself plus an audit event with a deterministic id."""
    if event.type != "MoneyDeposited":
        return [event]
    audit = replace(event, id=str(uuid.uuid5(uuid.UUID(event.id), "audit")), type="DepositAudited", data={})
    return [event, audit]


def explode(event: Event) -> Event:
    """Always fails (for the error path)."""
    raise RuntimeError("boom")
