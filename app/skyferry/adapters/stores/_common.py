"""Small helpers shared by the store adapters (one definition, used by all)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import orjson

from skyferry.core.errors import ValidationError
from skyferry.core.messages import (
    CANONICAL_UUID,
    NewEvent,
    check_append,
    from_micros,
    plainly_valid,
    validate_stream_id,
)
from skyferry.core.ports import CopiedBatch, RowSource, StoredRow

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
    dumps, fullmatch, plain = orjson.dumps, CANONICAL_UUID.fullmatch, plainly_valid
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


ROWS_PAGE: Final = 5000
"""Rows read from a source at a time by :func:`copy_rows` (what one page holds in memory)."""


class NeedsEvents(Exception):
    """Internal: a ``copy_from`` batch that ``bulk_append`` must judge event by event; raised
    inside the target's transaction, so nothing of the call is written."""


def check_rows(
    rows: Sequence[StoredRow], current: dict[str, int], heads: Callable[[list[str]], Mapping[str, int]]
) -> None:
    """Check that ``rows`` continue each of their streams, contiguously, from ``current`` (the
    versions known so far, which this updates; ``heads`` reads those of streams not in it,
    absent meaning 0).  :class:`NeedsEvents` when they do not (a stream already holding
    some of them, a gap, a stream id this store refuses)."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for row in rows:
        stream_id, version = row[2], row[3]
        previous = last.get(stream_id)
        if previous is None:
            first[stream_id] = version
        elif version != previous + 1:
            raise NeedsEvents
        last[stream_id] = version
    unknown = [stream_id for stream_id in first if stream_id not in current]
    if unknown:
        try:
            for stream_id in unknown:
                validate_stream_id(stream_id)
        except ValidationError as e:
            raise NeedsEvents from e
        found = heads(unknown)
        for stream_id in unknown:
            current[stream_id] = found.get(stream_id, 0)
    for stream_id, version in first.items():
        if version != current[stream_id] + 1:
            raise NeedsEvents
        current[stream_id] = last[stream_id]


def copy_rows(
    source: RowSource,
    after: str | None,
    limit: int,
    heads: Callable[[list[str]], Mapping[str, int]],
    write: Callable[[list[StoredRow]], None],
) -> tuple[CopiedBatch, dict[str, int]]:
    """The rows half of ``copy_from``, inside the target's write transaction: read up to
    ``limit`` rows of ``source`` a page at a time, check each page (:func:`check_rows`) and
    ``write`` it; return what was copied and each stream's last version.

    The next page is read in a second thread while this one is written (so the source's
    reading overlaps the target's writing): two pages in memory at most.  ``limit`` is
    checked by the caller.
    """
    current: dict[str, int] = {}
    copied, position, end = 0, after, None
    with ThreadPoolExecutor(1, thread_name_prefix="skyferry-copy-read") as reader:
        page = min(ROWS_PAGE, limit)
        ahead: Future[tuple[list[StoredRow], str | None]] | None = reader.submit(source.read_rows, position, page)
        while ahead is not None:
            rows, position = ahead.result()
            ahead = None
            if not rows:
                break
            check_rows(rows, current, heads)
            left = limit - copied - len(rows)
            if len(rows) == page and left > 0:
                page = min(ROWS_PAGE, left)
                ahead = reader.submit(source.read_rows, position, page)
            write(rows)
            copied += len(rows)
            newest = max(row[9] for row in rows)
            end = newest if end is None else max(end, newest)
    return CopiedBatch(copied, position, None if end is None else from_micros(end)), current
