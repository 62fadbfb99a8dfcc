"""Exact money: ``Decimal`` amounts with the currency's number of decimals.

Amounts travel as strings in JSON (``"10.50"``), never as floats.  Each currency allows a
fixed number of decimals (EUR 2, JPY 0, KWD 3 ...); an amount with more is rejected, never
rounded.  Minor units (cents) are accepted as integers where a command offers
``amount_minor``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Final

CURRENCY_DECIMALS: Final[dict[str, int]] = {
    "AUD": 2,
    "BHD": 3,
    "CAD": 2,
    "CHF": 2,
    "CNY": 2,
    "DKK": 2,
    "EUR": 2,
    "GBP": 2,
    "JPY": 0,
    "KWD": 3,
    "NOK": 2,
    "SEK": 2,
    "USD": 2,
}
"""The currencies the ledger accepts and their decimals (ISO 4217 minor units)."""

MAX_AMOUNT: Final = Decimal("1000000000000")
"""The largest amount of one command (10^12 major units)."""

AMOUNT_PATTERN: Final = r"^[0-9]+(\.[0-9]+)?$"
"""An amount as a string: ASCII digits, then optionally a point and more digits (``"10"``, ``"10.50"``)."""

_QUANTA: Final = {code: Decimal(1).scaleb(-places) for code, places in CURRENCY_DECIMALS.items()}
_AMOUNT: Final = re.compile(AMOUNT_PATTERN)


def check_currency(currency: str) -> str:
    """``currency`` if the ledger knows it, else ``ValueError`` listing the known ones."""
    if currency not in CURRENCY_DECIMALS:
        raise ValueError(f"unknown currency {currency!r}; known: {', '.join(sorted(CURRENCY_DECIMALS))}")
    return currency


def parse_amount(value: object, currency: str) -> Decimal:
    """A positive amount in ``currency``: a decimal string, an int or a ``Decimal``.

    Raises ``ValueError`` saying what is wrong: a float (inexact), a string that is not
    :data:`AMOUNT_PATTERN` (``1e2``, ``+10``, ``1_000``, ``10.``, ``.5``, spaces, digits other
    than ASCII ones: what ``Decimal`` would accept but the API documents not to), zero or
    negative, over :data:`MAX_AMOUNT`, or more decimals than the currency allows.  The
    result carries exactly the currency's decimals (``"10.5"`` EUR gives ``Decimal("10.50")``).
    """
    check_currency(currency)
    if isinstance(value, bool | float):
        raise ValueError('amount must be a decimal string such as "10.50", not a JSON float')
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        if not _AMOUNT.fullmatch(value.removeprefix("-")):  # a minus sign is refused below, as not positive
            raise ValueError(
                f"amount {value!r} is not a decimal number written as digits 0-9 with an optional "
                f'point and decimals, such as "10.50"'
            )
        try:
            amount = Decimal(value)
        except InvalidOperation as e:  # cannot happen for the pattern; kept as a guard
            raise ValueError(f"amount {value!r} is not a decimal number") from e
    else:
        raise ValueError(f"amount must be a decimal string, not {type(value).__name__}")
    if not amount.is_finite():
        raise ValueError(f"amount {value!r} is not a finite number")
    if amount <= 0:
        raise ValueError(f"amount must be positive, got {amount}")
    if amount > MAX_AMOUNT:
        raise ValueError(f"amount must be at most {MAX_AMOUNT}, got {amount}")
    places = CURRENCY_DECIMALS[currency]
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        raise ValueError(f"{currency} amounts have at most {places} decimals, got {value}")
    return amount.quantize(_QUANTA[currency])


def from_minor(minor: int, currency: str) -> Decimal:
    """The amount of ``minor`` minor units (cents) of ``currency``."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise ValueError("amount_minor must be an integer number of minor units")
    check_currency(currency)
    return parse_amount(Decimal(minor).scaleb(-CURRENCY_DECIMALS[currency]), currency)


def format_amount(amount: Decimal, currency: str) -> str:
    """``amount`` as the JSON string with exactly the currency's decimals."""
    return str(amount.quantize(_QUANTA[currency]))


def zero(currency: str) -> Decimal:
    """Zero with the currency's decimals."""
    return Decimal(0).quantize(_QUANTA[currency])
