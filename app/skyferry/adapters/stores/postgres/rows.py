"""Events as rows of the ``events`` table: read back from query results, and encoded for
``COPY`` (text and binary formats), each validated once on the way.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
import psycopg
from psycopg.abc import Loader
from psycopg.pq import Format
from psycopg.types.numeric import Int8BinaryLoader

from skyferry.adapters.stores.postgres.layout import (
    _POSITION_DIGITS,
)
from skyferry.core.messages import (
    CANONICAL_UUID,
    Event,
    NewEvent,
    encode_json,
    plainly_valid,
)
from skyferry.core.ports import StoredRow

_COLUMNS: Final = (
    "id::text, stream_id, version, type, schema_version, data::text, metadata::text, occurred_at, recorded_at"
)
_STREAM_COLUMNS: Final = (  # a stream's rows: its id is the one asked for (compared byte by byte, COLLATE "C")
    "id::text, version, type, schema_version, data::text, metadata::text, occurred_at, recorded_at"
)
_ROW_COLUMNS: Final = "position, " + _COLUMNS  # a StoredRow, its timestamps as wire integers (_stored_rows)


def _event_cursor(conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """A binary cursor for :func:`_events` and :func:`_positioned_rows`: its ``timestamptz``
    columns come as their wire value, microseconds since 2000-01-01 UTC in an ``int8``'s
    layout, read by the driver's integer loader instead of being built into ``datetime``s
    (about a tenth of the client's time for a stream's rows, a quarter of fetching a page
    of ``read_all``; registering it costs the cursor about 3 µs)."""
    cursor = conn.cursor(binary=True)
    cursor.adapters.register_loader(_TIMESTAMPTZ, _WIRE_INTEGER)
    return cursor


_TIMESTAMPTZ: Final = psycopg.postgres.types["timestamptz"].oid
_INT8: Final = psycopg.postgres.types["int8"].oid
_WIRE_INTEGER: Final[type[Loader]] = psycopg.adapters.get_loader(_INT8, Format.BINARY) or Int8BinaryLoader
"""The driver's loader of a binary ``int8`` (its C one where installed)."""


STREAM_CHUNK: Final = 100
"""Rows per result a streamed read takes from the driver (:func:`_streamed`)."""
STREAM_FIRST: Final = 100
"""Rows a read (``read_all``, ``read_stream``) takes by its prepared statement before it
streams the rest (:func:`_streamed`)."""
_CHUNKED: Final = psycopg.capabilities.has_stream_chunked()


def _streamed(cursor: psycopg.Cursor[Any], query: bytes, params: Sequence[Any]) -> Iterable[tuple[Any, ...]]:
    """The rows of ``query``, handed on as the server sends them, :data:`STREAM_CHUNK` at a
    time (libpq's chunked mode, libpq 17 and newer; else all at once): the client decodes
    one chunk while the server produces the next, on another core.  Reads of 1,000 rows
    ran 10-25 % faster so (``docs/performance.md``).

    The driver does not prepare a streamed statement: the server plans it again each time
    (a tail's read of a few events took 0.16-0.2 ms longer so), which is why a read's first
    :data:`STREAM_FIRST` rows keep the prepared statement."""
    if _CHUNKED:
        return cursor.stream(query, params, size=STREAM_CHUNK)
    return cursor.execute(query, params).fetchall()


def _events(stream_id: str, rows: Iterable[tuple[Any, ...]]) -> list[Event]:
    """Rows of :data:`_STREAM_COLUMNS` of ``stream_id``, read by :func:`_event_cursor`, as
    Events (their timestamps integer microseconds since the Unix epoch, which ``Event``
    decodes exactly when they are read).

    ``Event`` is a tuple: one ``tuple.__new__`` call per row builds it (the hot path of
    ``read_stream``, and so of loading an aggregate).  The stream's id is not read back:
    one column fewer for the server to send and the client to take.
    """
    new, event_type, loads, epoch = _tuple_new, Event, orjson.loads, _PG_EPOCH_MICROS
    return [  # all ten fields: tuple.__new__ fills in no default (read_stream gives no position)
        new(
            event_type,
            (event_id, stream_id, version, kind, schema, loads(data), loads(meta), epoch + o, epoch + r, None),
        )
        for event_id, version, kind, schema, data, meta, o, r in rows  # o, r: occurred_at, recorded_at since 2000
    ]


_tuple_new: Final = tuple.__new__
_COPY_BLOCK_ROWS: Final = 250
"""Tuples a COPY into ``events`` sends in one write (an append's, ``bulk_append``'s, a page of
another store's rows): the server stores one block while the client builds the next
(appends of 1,000 and batches of 5,000 were fastest at 250, of 100, 250, 500, 1,000 and
2,000; see ``docs/performance.md``)."""
_COPY_FROM: Final = 32
"""Appends of this many events or more go by binary COPY (see ``PostgresEventStore.append``)."""
_dumps: Final = orjson.dumps
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_COPY_SPECIAL: Final = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES: Final = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _copy_text(value: str) -> str:
    """``value`` escaped for COPY's text format (backslash, tab, newline, carriage return)."""
    return _COPY_SPECIAL.sub(lambda m: _COPY_ESCAPES[m.group()], value)


def _copy_moment(moment: Any) -> str:
    """A timestamp field as COPY text; naive datetimes never get here (validated first)."""
    if type(moment) is int:  # microseconds since the epoch, UTC (see Event)
        moment = _EPOCH + timedelta(0, 0, moment)
    return str(moment.isoformat())


def _checked(fields: tuple[Any, ...], e: Event, canonical_id: bool) -> tuple[bytes, bytes]:
    """Validate one event (``canonical_id``: whether its id is a canonical UUID string); return
    its data and metadata JSON in the encoding of :func:`encode_json`.

    The checks are those of :meth:`NewEvent.validate`, by its common case
    (:func:`~skyferry.core.messages.plainly_valid`); an event that fails any of them (or that
    they cannot judge) goes through
    ``validate()`` itself, so exactly the same events are rejected with the same errors.
    """
    _, _, _, event_type, schema_version, data, metadata, occurred, recorded = fields
    try:
        data_json = _dumps(data, option=_SORT_KEYS)  # encode_json, without a call
        metadata_json = _dumps(metadata, option=_SORT_KEYS)
    except TypeError:
        data_json = metadata_json = b""
    if not (
        canonical_id
        and plainly_valid(event_type, schema_version, data, metadata, occurred, recorded, data_json, metadata_json)
    ):
        e.to_new().validate()  # raises the port's error for this event
        data_json, metadata_json = encode_json(data), encode_json(metadata)
    return data_json, metadata_json


def _copy_rows(events: Sequence[Event]) -> list[str]:
    """Validate every event (see :func:`_checked`) and encode it once as a COPY text row."""
    rows: list[str] = []
    append = rows.append
    fullmatch = CANONICAL_UUID.fullmatch
    special = _COPY_SPECIAL.search
    last_occurred: Any = None
    last_recorded: Any = None
    occurred_text = recorded_text = ""
    for e in events:
        fields: tuple[Any, ...] = e[:9]
        event_id, stream_id, version, event_type, schema_version, _, _, occurred, recorded = fields
        canonical_id = type(event_id) is str and fullmatch(event_id) is not None
        data_json, metadata_json = _checked(fields, e, canonical_id)
        data_text = data_json.decode()
        metadata_text = metadata_json.decode()
        # Decoders hand back one object for equal timestamps (and often the same one for
        # both fields): format each object once, not twice per event.
        if occurred is not last_occurred:
            last_occurred = occurred
            occurred_text = occurred.isoformat() if type(occurred) is not int else _copy_moment(occurred)
        if recorded is occurred:
            last_recorded, recorded_text = recorded, occurred_text  # the pair stays consistent
        elif recorded is not last_recorded:
            last_recorded = recorded
            recorded_text = recorded.isoformat() if type(recorded) is not int else _copy_moment(recorded)
        append(
            "\t".join(
                (
                    event_id if canonical_id else _copy_text(str(event_id)),
                    stream_id,
                    str(version),
                    _copy_text(event_type) if special(event_type) else event_type,
                    str(schema_version),
                    _copy_text(data_text) if "\\" in data_text else data_text,
                    _copy_text(metadata_text) if "\\" in metadata_text else metadata_text,
                    occurred_text,
                    recorded_text,
                )
            )
            + "\n"
        )
    return rows


_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_MICROS: Final = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
_MICROSECOND: Final = timedelta(microseconds=1)
_INT4: Final = range(-(2**31), 2**31)
_COPY_BINARY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_COPY_BINARY_TRAILER: Final = b"\xff\xff"
_PACK_HEAD: Final = struct.Struct("!hi16si").pack  # field count; id; length of stream_id
_PACK_INT_LEN: Final = struct.Struct("!iii").pack  # int4 field; length of the next field
_PACK_LEN: Final = struct.Struct("!i").pack
_PACK_MOMENTS: Final = struct.Struct("!iqiq").pack  # occurred_at, recorded_at (timestamptz)


def _binary_ready(events: Sequence[Event]) -> bool:
    """Whether COPY's binary format stores ``events`` exactly as the text format would.

    Ids must be canonical (the server parses other spellings of a UUID in text) and
    versions int4 values (text lets the server reject the others); everything else is
    validated per event by :func:`_checked` on either path.
    """
    fullmatch = CANONICAL_UUID.fullmatch
    for e in events:
        event_id, version, schema_version = e[0], e[2], e[4]
        if not (
            type(event_id) is str
            and fullmatch(event_id) is not None
            and type(version) is int
            and version in _INT4
            and type(schema_version) is int
            and schema_version in _INT4
        ):
            return False
    return True


def _pg_micros(moment: Any) -> int:
    """A timestamp field as microseconds since 2000-01-01 UTC (binary ``timestamptz``)."""
    if type(moment) is int:  # microseconds since the epoch, UTC (see Event)
        return int(moment) - _PG_EPOCH_MICROS
    return (moment - _PG_EPOCH) // _MICROSECOND  # type: ignore[no-any-return]


def _copy_rows_binary(events: Sequence[Event]) -> Iterator[bytes]:
    """Validate every event (see :func:`_checked`) and encode it as a binary COPY tuple, one
    at a time as they are taken (an invalid event raises when its turn comes).

    Only for events that pass :func:`_binary_ready` (which checked that every id is
    canonical: this function relies on it).  Data and metadata go as their JSON
    text (the binary form of ``json``), so nothing needs escaping.
    """
    fromhex = bytes.fromhex
    last_occurred: Any = None
    last_recorded: Any = None
    occurred_micros = recorded_micros = 0
    for e in events:
        fields: tuple[Any, ...] = e[:9]
        event_id, stream_id, version, event_type, schema_version, _, _, occurred, recorded = fields
        data_json, metadata_json = _checked(fields, e, True)  # ids checked by _binary_ready
        if occurred is not last_occurred:
            last_occurred = occurred
            occurred_micros = _pg_micros(occurred)
        if recorded is occurred:
            last_recorded, recorded_micros = recorded, occurred_micros  # the pair stays consistent
        elif recorded is not last_recorded:
            last_recorded = recorded
            recorded_micros = _pg_micros(recorded)
        yield _binary_row(
            fromhex(event_id.replace("-", "")),
            stream_id.encode(),
            version,
            event_type,
            schema_version,
            data_json,
            metadata_json,
            occurred_micros,
            recorded_micros,
        )


def _binary_storable(rows: Sequence[StoredRow]) -> bool:
    """Whether COPY's binary format stores another store's rows (``copy_from``) exactly as
    ``bulk_append`` would: every id canonical, every version and schema version a 32-bit
    integer.  When not, ``bulk_append`` must take them."""
    fullmatch, int4 = CANONICAL_UUID.fullmatch, _INT4
    return all(
        fullmatch(event_id) is not None and version in int4 and schema_version in int4
        for _, event_id, _, version, _, schema_version, *_ in rows
    )


def _stored_copy_data(rows: Sequence[StoredRow]) -> Iterator[bytes]:
    """The binary COPY data of another store's rows, as they are: no JSON decoded or
    encoded; in blocks (:func:`_in_blocks`).  Only for rows that pass :func:`_binary_storable`."""
    fromhex, epoch = bytes.fromhex, _PG_EPOCH_MICROS
    return _in_blocks(
        _binary_row(
            fromhex(event_id.replace("-", "")),
            stream_id.encode(),
            version,
            event_type,
            schema_version,
            data.encode(),
            metadata.encode(),
            occurred - epoch,
            recorded - epoch,
        )
        for _, event_id, stream_id, version, event_type, schema_version, data, metadata, occurred, recorded in rows
    )


def _in_blocks(tuples: Iterable[bytes]) -> Iterator[bytes]:
    """Binary COPY ``tuples`` as the data of one COPY in blocks of :data:`_COPY_BLOCK_ROWS`
    (the first opens with the header, the last ends with the trailer), each built only when
    the one before has been sent: the server stores one block while the client builds the
    next."""
    block: list[bytes] = [_COPY_BINARY_HEADER]
    for row in tuples:
        block.append(row)
        if len(block) >= _COPY_BLOCK_ROWS:
            yield b"".join(block)
            block.clear()
    block.append(_COPY_BINARY_TRAILER)
    yield b"".join(block)


def _binary_row(
    uuid_bytes: bytes,
    stream_bytes: bytes,
    version: int,
    event_type: str,
    schema_version: int,
    data_json: bytes,
    metadata_json: bytes,
    occurred_micros: int,
    recorded_micros: int,
) -> bytes:
    """One tuple of a binary COPY into ``events`` (timestamps in microseconds since 2000)."""
    type_bytes = event_type.encode()
    return b"".join(
        (
            _PACK_HEAD(9, 16, uuid_bytes, len(stream_bytes)),
            stream_bytes,
            _PACK_INT_LEN(4, version, len(type_bytes)),
            type_bytes,
            _PACK_INT_LEN(4, schema_version, len(data_json)),
            data_json,
            _PACK_LEN(len(metadata_json)),
            metadata_json,
            _PACK_MOMENTS(8, occurred_micros, 8, recorded_micros),
        )
    )


def _binary_appendable(events: Sequence[NewEvent]) -> bool:
    """Whether COPY's binary format stores the events of an append exactly as the ``INSERT``
    would: every id canonical, every schema version a 32-bit integer (and, for the caller to
    check, every version).  When not, the ``INSERT`` stores them."""
    fullmatch = CANONICAL_UUID.fullmatch
    return all(fullmatch(e.id) is not None and e.schema_version in _INT4 for e in events)


def _appended_copy_data(
    stream_id: str,
    first_version: int,
    events: Sequence[NewEvent],
    encoded: Sequence[tuple[bytes, bytes]],
    now: datetime,
) -> Iterator[bytes]:
    """The binary COPY data of an append, in blocks (:func:`_in_blocks`).  ``encoded``: the
    events' JSON from :func:`encode_append`, which checked them; only for events that pass
    :func:`_binary_appendable`."""
    stream_bytes = stream_id.encode()
    now_micros = _pg_micros(now)
    fromhex = bytes.fromhex
    return _in_blocks(
        _binary_row(
            fromhex(e.id.replace("-", "")),
            stream_bytes,
            version,
            e.type,
            e.schema_version,
            data_json,
            metadata_json,
            _pg_micros(e.occurred_at),
            now_micros if e.recorded_at is None else _pg_micros(e.recorded_at),
        )
        for version, e, (data_json, metadata_json) in zip(itertools.count(first_version), events, encoded)
    )


def _stored_rows(rows: Iterable[tuple[Any, ...]]) -> list[StoredRow]:
    """Rows of :data:`_ROW_COLUMNS`, read by :func:`_event_cursor`, as :data:`StoredRow`
    tuples: the wire's microseconds since 2000-01-01 made microseconds since the Unix
    epoch on the client.  (The server computing them with ``extract`` doubled its work
    per row.)"""
    epoch = _PG_EPOCH_MICROS
    return [
        (position, event_id, stream_id, version, kind, schema, data, meta, o + epoch, r + epoch)
        for position, event_id, stream_id, version, kind, schema, data, meta, o, r in rows
    ]


def _positioned_rows(rows: Iterable[tuple[Any, ...]]) -> list[Event]:
    """Rows of :data:`_COLUMNS` plus ``position``, read by :func:`_event_cursor`, as Events
    carrying their positions (timestamps integer microseconds since the Unix epoch, as in
    :func:`_events`).

    Equal timestamps share one object: events appended together carry equal timestamps
    (often the same in both fields), and sharing lets :func:`_copy_rows` format each once
    when the page is copied on.
    """
    events: list[Event] = []
    append = events.append
    new, event_type, loads, epoch = _tuple_new, Event, orjson.loads, _PG_EPOCH_MICROS
    last_wire: Any = None
    last: Any = None
    for row in rows:
        occurred_wire, recorded_wire = row[7], row[8]  # since 2000-01-01
        occurred = last if occurred_wire == last_wire else epoch + occurred_wire
        if recorded_wire == occurred_wire:
            recorded = occurred
        elif recorded_wire == last_wire:
            recorded = last
        else:
            recorded = epoch + recorded_wire
        last_wire, last = recorded_wire, recorded
        append(
            new(
                event_type,
                (
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    loads(row[5]),
                    loads(row[6]),
                    occurred,
                    recorded,
                    str(row[9]).zfill(_POSITION_DIGITS),
                ),
            )
        )
    return events
