"""The ledger: accounts, transfers, their read models and the worker that keeps them.

:data:`CONSUMER_GROUPS` names the broker consumer groups the worker subscribes (the transfer
process manager's and each projection's ``name``), and :data:`MAX_DELIVERIES` how often a
group's broker delivers one message: the one source the deployments (``providers/``) create
queues, subscriptions and their dead-letter settings from.
"""

from __future__ import annotations

from typing import Final

from skyferry.core.parking import DEFAULT_RETRY
from skyferry.ledger.process import TransferProcess
from skyferry.ledger.projections import ledger_projections

CONSUMER_GROUPS: Final[tuple[str, ...]] = (
    TransferProcess.name,
    *(projection.name for projection in ledger_projections()),
)
"""Every group ``Ledger.start_consumers`` subscribes, in subscription order."""

MAX_DELIVERIES: Final = DEFAULT_RETRY.attempts + 1
"""Deliveries before a broker dead-letters a message: a consumer parks an event on its retry
policy's ``attempts``-th delivery and subscribes with one more (``Ledger.start_consumers``)."""
