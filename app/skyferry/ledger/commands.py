"""The ledger's commands: pydantic models, validated before anything is stored.

Every model forbids unknown fields.  Money commands carry ``currency`` and either
``amount`` (a decimal string, ``"10.50"``) or ``amount_minor`` (an integer of minor units);
after validation ``amount`` is always set, with exactly the currency's decimals, and
``amount_minor`` is ``None``.  Ids are 1 to 64 letters, digits, ``_ . : -``; an owner is 1 to
200 characters without control characters (C0, DEL, C1: PostgreSQL's ``jsonb``, where read
models are kept, cannot hold NUL, and no name needs one).

The commands below the public ones are issued by the transfer process manager only.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from skyferry.ledger.money import AMOUNT_PATTERN, check_currency, format_amount, from_minor, parse_amount

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Currency = Annotated[str, Field(min_length=3, max_length=3)]


def _no_control_characters(value: str) -> str:
    for index, character in enumerate(value):
        if character < " " or "\x7f" <= character <= "\x9f":
            raise ValueError(f"must not hold a control character ({character!r} at index {index})")
    return value


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_control_characters)]


class Command(BaseModel):
    """Base of the ledger's commands: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")


class MoneyCommand(Command):
    """A command moving money: ``currency`` plus ``amount`` or ``amount_minor``."""

    currency: Currency
    amount: Decimal | str | int | None = Field(
        default=None,
        json_schema_extra={
            "anyOf": [{"type": "string", "pattern": AMOUNT_PATTERN}, {"type": "integer"}, {"type": "null"}],
            "examples": ["10.50"],
        },
    )
    """A decimal string (or int, or Decimal); a ``Decimal`` once validated."""
    amount_minor: int | None = Field(default=None, strict=True)

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        return check_currency(value)

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f'amount must be a decimal string such as "10.50", not {str(value).lower()}')
        if isinstance(value, float):
            raise ValueError('amount must be a decimal string such as "10.50", not a JSON number with a fraction')
        return value

    @field_validator("amount", mode="after")
    @classmethod
    def _amount_in_currency(cls, value: Decimal | str | int | None, info: ValidationInfo) -> Decimal | None:
        currency = info.data.get("currency")
        if value is None:
            return None
        if currency is None:  # the currency is invalid and reported on its own
            return Decimal(0)
        return parse_amount(value, currency)

    @field_validator("amount_minor", mode="after")
    @classmethod
    def _minor_in_currency(cls, value: int | None, info: ValidationInfo) -> int | None:
        currency = info.data.get("currency")
        if value is not None and currency is not None:
            from_minor(value, currency)
        return value

    @model_validator(mode="after")
    def _exact_amount(self) -> Self:
        if (self.amount is None) == (self.amount_minor is None):
            raise ValueError("give exactly one of amount (a decimal string) and amount_minor (minor units)")
        if self.amount_minor is not None:
            self.amount = from_minor(self.amount_minor, self.currency)
            self.amount_minor = None
        return self

    @property
    def value(self) -> Decimal:
        """The validated amount."""
        assert isinstance(self.amount, Decimal)
        return self.amount

    @property
    def amount_text(self) -> str:
        """The amount as its JSON string (exactly the currency's decimals)."""
        return format_amount(self.value, self.currency)


class OpenAccount(Command):
    """Open a new account holding ``currency``, owned by ``owner``."""

    account_id: Id
    owner: Name
    currency: Currency

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        return check_currency(value)


class Deposit(MoneyCommand):
    """Put money into an open account."""

    account_id: Id


class Withdraw(MoneyCommand):
    """Take money out of an open account; never below zero."""

    account_id: Id


class CloseAccount(Command):
    """Close an open account whose balance is zero."""

    account_id: Id


class TransferMoney(MoneyCommand):
    """Move money between two accounts (orchestrated by the transfer process manager)."""

    transfer_id: Id
    from_account: Id
    to_account: Id

    @model_validator(mode="after")
    def _two_accounts(self) -> Self:
        if self.from_account == self.to_account:
            raise ValueError("from_account and to_account must differ")
        return self


# -- issued by the transfer process manager ------------------------------------------------


class DebitForTransfer(MoneyCommand):
    """Take a transfer's amount out of its source account."""

    account_id: Id
    transfer_id: Id


class CreditForTransfer(MoneyCommand):
    """Put a transfer's amount into its target account."""

    account_id: Id
    transfer_id: Id


class RefundTransfer(MoneyCommand):
    """Give a failed transfer's amount back to its source account (compensation)."""

    account_id: Id
    transfer_id: Id


class MarkTransferDebited(Command):
    """Record on the transfer that its source account was debited."""

    transfer_id: Id


class CompleteTransfer(Command):
    """Record on the transfer that its target account was credited."""

    transfer_id: Id


class FailTransfer(Command):
    """Record on the transfer that it failed (and whether the debit was given back)."""

    transfer_id: Id
    reason: Annotated[str, Field(max_length=500)]
    compensated: bool = False


PUBLIC_COMMANDS: dict[str, type[Command]] = {
    cls.__name__: cls for cls in (OpenAccount, Deposit, Withdraw, CloseAccount, TransferMoney)
}
"""The commands clients may send, by name."""
