"""The ledger's domain errors: each a ``DomainError`` with a stable ``code``."""

from __future__ import annotations

from typing import ClassVar

from skyferry.core.errors import DomainError


class LedgerError(DomainError):
    """Base of the ledger's rule violations; ``code`` is stable and machine-readable."""

    code: ClassVar[str] = "ledger_error"


class AccountNotFound(LedgerError):
    """The account does not exist."""

    code = "account_not_found"


class AccountAlreadyExists(LedgerError):
    """An account with this id was already opened."""

    code = "account_already_exists"


class AccountClosed(LedgerError):
    """The account is closed."""

    code = "account_closed"


class AccountNotEmpty(LedgerError):
    """An account can be closed only when its balance is zero."""

    code = "account_not_empty"


class InsufficientFunds(LedgerError):
    """A withdrawal or debit larger than the balance (no overdraft)."""

    code = "insufficient_funds"


class CurrencyMismatch(LedgerError):
    """The command's currency is not the account's."""

    code = "currency_mismatch"


class TransferNotFound(LedgerError):
    """The transfer does not exist."""

    code = "transfer_not_found"


class TransferAlreadyExists(LedgerError):
    """A transfer with this id was already requested."""

    code = "transfer_already_exists"


class InvalidTransferState(LedgerError):
    """The transfer is not in the state the step requires."""

    code = "invalid_transfer_state"
