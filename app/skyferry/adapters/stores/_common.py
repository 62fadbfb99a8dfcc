"""Small helpers shared by the store adapters (one definition, used by all)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from skyferry.core.errors import ValidationError
from skyferry.core.messages import NewEvent, check_append, plainly_valid, validate_stream_id

_CANONICAL_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

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


def encode_append(stream_id: str, events: Sequence[NewEvent], *, sort_keys: bool) -> list[tuple[bytes, bytes]]:
    """Check an append as :func:`~skyferry.core.messages.check_append` does, and return the JSON of
    each event's ``data`` and ``metadata`` (keys sorted when ``sort_keys``): the hot path of
    ``EventStore.append``, which encodes every event once instead of once to check and once
    to store.

    The checks go by the common case (:func:`~skyferry.core.messages.plainly_valid`, a
    canonical id, no id twice); when an event fails one or cannot be judged by it,
    ``check_append`` itself runs, so exactly the same appends are refused with the same
    errors.  Nothing is returned for a refused append.
    """
    validate_stream_id(stream_id)
    option = orjson.OPT_SORT_KEYS if sort_keys else None
    dumps, fullmatch, plain = orjson.dumps, _CANONICAL_ID.fullmatch, plainly_valid
    seen: set[str] = set()
    encoded: list[tuple[bytes, bytes]] = []
    for event in events:
        event_id, data, metadata, recorded = event.id, event.data, event.metadata, event.recorded_at
        try:
            data_json, metadata_json = dumps(data, option=option), dumps(metadata, option=option)
        except TypeError:
            data_json = metadata_json = b""
        if not (
            type(event_id) is str
            and fullmatch(event_id) is not None
            and event_id not in seen
            and plain(
                event.type,
                event.schema_version,
                data,
                metadata,
                event.occurred_at,
                0 if recorded is None else recorded,  # none yet: the store sets it
                data_json,
                metadata_json,
            )
        ):
            check_append(stream_id, list(events))  # raises the port's error for this append
            data_json, metadata_json = dumps(data, option=option), dumps(metadata, option=option)
        seen.add(event_id)
        encoded.append((data_json, metadata_json))
    if not encoded:
        check_append(stream_id, list(events))  # raises: nothing to append
    return encoded
