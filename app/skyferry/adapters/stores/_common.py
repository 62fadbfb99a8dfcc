"""Small helpers shared by the store adapters (one definition, used by all)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from skyferry.core.errors import ValidationError

PREFIX_END: Final = "\U0010ffff"
"""Every key that starts with ``prefix`` sorts below ``prefix + PREFIX_END`` (code point order)."""


def field_equals(value: Mapping[str, Any], where: tuple[str, str | int | bool]) -> bool:
    """Top-level ``field == wanted`` with JSON types kept apart (``true`` is not ``1``)."""
    name, wanted = where
    if name not in value:
        return False
    found = value[name]
    return bool(found == wanted and isinstance(found, bool) == isinstance(wanted, bool))


def check_limit(limit: int | None, *, minimum: int) -> None:
    """Refuse a ``limit`` below ``minimum`` (SQL would read a negative LIMIT as "no limit")."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < minimum):
        raise ValidationError(f"limit must be an integer >= {minimum}, not {limit!r}")
