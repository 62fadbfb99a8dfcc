"""The ledger: accounts, transfers, their read models and the worker that keeps them.

:data:`CONSUMER_GROUPS` names the broker consumer groups the worker subscribes (the transfer
process manager's and each projection's ``name``): the one list the deployments
(``providers/``) create queues and subscriptions for.
"""

from __future__ import annotations

from typing import Final

from skyferry.ledger.projections import ledger_projections
from skyferry.ledger.process import TransferProcess

CONSUMER_GROUPS: Final[tuple[str, ...]] = (
    TransferProcess.name,
    *(projection.name for projection in ledger_projections()),
)
"""Every group ``Ledger.start_consumers`` subscribes, in subscription order."""
