"""The archive's event lines: CloudEvents 1.0 structured-mode JSON, one event per line.

A line carries the whole skyferry envelope.  Standard attributes hold what CloudEvents
defines (``id``, ``source``, ``type``, ``time`` = ``occurred_at``, ``data``); the rest are
extension attributes, whose names are lower-case letters and digits as the CloudEvents
spec requires:

============== ========= ==================================================
attribute      type      meaning
============== ========= ==================================================
streamid       String    the stream id
streamversion  Integer   the event's 1-based version in its stream
schemaversion  Integer   the event's schema version
recordedtime   Timestamp when the source store first recorded it
metadata       String    the metadata object as canonical JSON
sourceposition String    the source store's ``read_all`` position (opaque)
============== ========= ==================================================

``metadata`` is a string because CloudEvents extension values must be scalars.  Lines
are canonical (sorted keys, compact), so the same event always encodes to the same bytes.
See ``docs/archive-format.md``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple
from urllib.parse import quote, unquote

import orjson

from skyferry.core.errors import EventTooLarge, ValidationError
from skyferry.core.messages import (
    CANONICAL_UUID,
    Event,
    NewEvent,
    encode_json,
    format_timestamp,
    parse_timestamp,
    plainly_valid,
    to_micros,
    validate_stream_id,
)
from skyferry.core.ports import StoredRow
from skyferry.migrate.errors import ArchiveError

SPEC_VERSION: Final = "1.0"
SOURCE_PREFIX: Final = "/skyferry/streams/"
CHAIN_START: Final = "0" * 64
"""The hash-chain head of a stream with no events."""

_REQUIRED: Final = (
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "data",
    "streamid",
    "streamversion",
    "schemaversion",
    "recordedtime",
    "metadata",
)


_REQUIRED_SET: Final = frozenset(_REQUIRED)

timestamp: Final = format_timestamp
"""RFC 3339, UTC, six fraction digits and ``Z`` (:func:`skyferry.core.messages.format_timestamp`)."""


@functools.lru_cache(maxsize=65_536)
def source_of(stream_id: str) -> str:
    """The CloudEvents ``source`` of a stream's events: a URI reference naming the stream."""
    return SOURCE_PREFIX + quote(stream_id, safe="")


def to_cloudevent(event: Event, occurred: str | None = None, recorded: str | None = None) -> dict[str, Any]:
    """The event as a CloudEvents structured-mode JSON object (see the module docstring)."""
    attributes: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event.id,
        "source": source_of(event.stream_id),
        "type": event.type,
        "time": occurred or timestamp(event.occurred_at),
        "datacontenttype": "application/json",
        "data": event.data,
        "streamid": event.stream_id,
        "streamversion": event.version,
        "schemaversion": event.schema_version,
        "recordedtime": recorded or timestamp(event.recorded_at),
        "metadata": encode_json(event.metadata).decode(),
    }
    if event.position is not None:
        attributes["sourceposition"] = event.position
    return attributes


def encode_line(event: Event) -> bytes:
    """One archive line (without the newline): canonical CloudEvents JSON of ``event``."""
    return encode_json(to_cloudevent(event))


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SORTED: Final = orjson.OPT_SORT_KEYS


def _timestamp_of(raw: Any) -> str:
    """:func:`timestamp` of an ``Event`` timestamp field's raw value (integer microseconds or a datetime)."""
    if type(raw) is int:
        return (_EPOCH + timedelta(0, 0, raw)).isoformat(timespec="microseconds")[:-6] + "Z"
    return timestamp(raw)


class Prepared(NamedTuple):
    """An event ready to encode: ``data`` and ``metadata`` as canonical JSON, timestamps as
    canonical text; the fields of :class:`~skyferry.core.messages.Event`, in its order."""

    id: str
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: bytes
    metadata: bytes
    occurred_at: str
    recorded_at: str
    position: str | None


def prepare_events(events: list[Event]) -> list[Prepared]:
    """The first half of :func:`encode_events`, which can run in another process (see
    :mod:`skyferry.migrate.reader`): each distinct timestamp of the batch is formatted once
    (events appended together share them)."""
    dumps, sorted_keys, new = orjson.dumps, _SORTED, tuple.__new__
    texts: dict[Any, str] = {}
    prepared: list[Prepared] = []
    add = prepared.append
    for event in events:
        occurred, recorded = event[7], event[8]  # raw: integer microseconds where the store keeps them
        occurred_text = texts.get(occurred)
        if occurred_text is None:
            occurred_text = texts[occurred] = _timestamp_of(occurred)
        recorded_text = texts.get(recorded)
        if recorded_text is None:
            recorded_text = texts[recorded] = _timestamp_of(recorded)
        add(
            new(
                Prepared,
                (
                    event[0],
                    event[1],
                    event[2],
                    event[3],
                    event[4],
                    dumps(event[5], option=sorted_keys),
                    dumps(event[6], option=sorted_keys),
                    occurred_text,
                    recorded_text,
                    event[9],
                ),
            )
        )
    return prepared


def encode_prepared(prepared: list[Prepared]) -> tuple[list[bytes], list[bytes]]:
    """The second half of :func:`encode_events`: ``(lines, canonical bytes)`` of ``prepared``,
    with ``data`` and ``metadata`` embedded as they are and no calls beyond the JSON encoder."""
    dumps, fragment = orjson.dumps, orjson.Fragment
    lines: list[bytes] = []
    canonicals: list[bytes] = []
    add_line, add_canonical = lines.append, canonicals.append
    for (
        event_id,
        stream_id,
        version,
        event_type,
        schema_version,
        data,
        metadata,
        occurred,
        recorded,
        position,
    ) in prepared:
        data_json = fragment(data)
        # keys inserted in sorted order (and data/metadata already canonical): no sort needed
        attributes = {
            "data": data_json,
            "datacontenttype": "application/json",
            "id": event_id,
            "metadata": metadata.decode(),
            "recordedtime": recorded,
            "schemaversion": schema_version,
            "source": source_of(stream_id),
            "sourceposition": position,
            "specversion": SPEC_VERSION,
            "streamid": stream_id,
            "streamversion": version,
            "time": occurred,
            "type": event_type,
        }
        if position is None:
            del attributes["sourceposition"]  # the others keep their order
        add_line(dumps(attributes))
        add_canonical(
            dumps(
                {
                    "data": data_json,
                    "id": event_id,
                    "metadata": fragment(metadata),
                    "occurred_at": occurred,
                    "recorded_at": recorded,
                    "schema_version": schema_version,
                    "stream_id": stream_id,
                    "type": event_type,
                    "version": version,
                }
            )
        )
    return lines, canonicals


def encode_events(events: list[Event]) -> tuple[list[bytes], list[bytes]]:
    """``(lines, canonical bytes)``: :func:`encode_line` and :func:`canonical_bytes` of each of
    ``events``, as two lists in the order of ``events``: the same bytes, made in two halves
    (:func:`prepare_events`, then :func:`encode_prepared`) with ``data`` and ``metadata``
    encoded once (embedded in both)."""
    return encode_prepared(prepare_events(events))


def decode_line(line: bytes, location: str, line_number: int) -> Event:
    """Parse one archive line; a malformed line raises :class:`ArchiveError` naming it."""
    return decode_line_canonical(line, location, line_number)[0]


def _is_canonical_time(text: object) -> bool:
    return isinstance(text, str) and len(text) == 27 and text[-1] == "Z" and text[19] == "."


def decode_line_canonical(line: bytes, location: str, line_number: int) -> tuple[Event, bytes]:
    """``(event, canonical bytes)`` of one archive line (the chain's input, without re-formatting
    timestamps already in canonical form); a malformed line raises :class:`ArchiveError`."""
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ArchiveError(location, f"not JSON: {e}", line_number) from e
    if not isinstance(raw, dict):
        raise ArchiveError(location, "not a JSON object", line_number)
    if not _REQUIRED_SET.issubset(raw):
        missing = [name for name in _REQUIRED if name not in raw]
        raise ArchiveError(location, f"missing CloudEvents attribute(s) {', '.join(missing)}", line_number)
    if raw["specversion"] != SPEC_VERSION:
        raise ArchiveError(location, f"unsupported specversion {raw['specversion']!r}", line_number)
    occurred_text = raw["time"]
    recorded_text = raw["recordedtime"]
    data = raw["data"]
    try:
        metadata = orjson.loads(raw["metadata"])
        stream_id = raw["streamid"]
        if raw["source"] != source_of(stream_id):
            raise ValueError(f"source {raw['source']!r} does not name stream {stream_id!r}")
        version = raw["streamversion"]
        schema_version = raw["schemaversion"]
        if not (isinstance(version, int) and isinstance(schema_version, int)) or version < 1:
            raise ValueError("streamversion and schemaversion must be positive integers")
        if not isinstance(data, dict) or not isinstance(metadata, dict):
            raise ValueError("data and metadata must be JSON objects")
        position = raw.get("sourceposition")
        occurred_at = parse_timestamp(occurred_text)
        event = Event(
            str(raw["id"]),
            str(stream_id),
            version,
            str(raw["type"]),
            schema_version,
            data,
            metadata,
            occurred_at,
            occurred_at if recorded_text == occurred_text else parse_timestamp(recorded_text),
            None if position is None else str(position),
        )
    except (ValueError, TypeError, orjson.JSONDecodeError, ValidationError) as e:
        raise ArchiveError(location, f"malformed event: {e}", line_number) from e
    occurred = occurred_text if _is_canonical_time(occurred_text) else timestamp(event.occurred_at)
    recorded = recorded_text if _is_canonical_time(recorded_text) else timestamp(event.recorded_at)
    return event, _canonical(event, occurred, recorded)


def decode_lines(lines: Iterable[bytes], location: str, first: int = 1) -> tuple[list[Event], list[bytes]]:
    """``(events, canonical bytes)``: :func:`decode_line_canonical` of each line (numbered from
    ``first``), as two lists in the order of the lines: the same results.

    The common case is decoded inline, with each distinct timestamp text of the call parsed
    once; a line that fails any check (or that the inline path cannot judge) goes through
    :func:`decode_line_canonical` itself, so the same lines are rejected with the same errors.
    """
    return _decode(lines, location, first, rows=False)


def decode_rows(lines: Iterable[bytes], location: str, first: int = 1) -> tuple[list[StoredRow], list[bytes]]:
    """``(rows, canonical bytes)``: the events of :func:`decode_lines` as the rows the SQL stores
    keep (:data:`~skyferry.core.ports.StoredRow`: the line's ``sourceposition`` first, ``data``
    and ``metadata`` as canonical JSON text, timestamps as microseconds), no ``Event`` built and
    ``data`` encoded once for both the row and the chain's bytes.

    Every event is also checked against the rules every store enforces
    (:meth:`~skyferry.core.messages.NewEvent.validate`, a valid stream id), since a store
    copying rows trusts them: one that breaks a rule raises :class:`ArchiveError` naming its
    line.  The same lines are rejected as by :func:`decode_lines`, with the same errors.
    """
    return _decode(lines, location, first, rows=True)


def _decode(lines: Iterable[bytes], location: str, first: int, *, rows: bool) -> tuple[list[Any], list[bytes]]:
    """:func:`decode_lines` (``rows`` false) or :func:`decode_rows`: one loop, one branch an event."""
    loads, dumps, sorted_keys, new, fragment = orjson.loads, orjson.dumps, _SORTED, tuple.__new__, orjson.Fragment
    source, fullmatch, plain = source_of, CANONICAL_UUID.fullmatch, plainly_valid
    times: dict[str, tuple[datetime, str, int]] = {}
    streams: set[str] = set()
    items: list[Any] = []
    canonicals: list[bytes] = []
    add_item, add_canonical = items.append, canonicals.append
    for number, line in enumerate(lines, first):
        try:
            raw = loads(line)
            # a missing attribute raises KeyError here: the one-line path names it
            if type(raw) is not dict or raw["specversion"] != SPEC_VERSION:
                raise _Irregular
            data = raw["data"]
            metadata = loads(raw["metadata"])
            stream_id = raw["streamid"]
            version = raw["streamversion"]
            schema_version = raw["schemaversion"]
            if (
                type(data) is not dict
                or type(metadata) is not dict
                or type(version) is not int
                or type(schema_version) is not int
                or version < 1
                or raw["source"] != source(stream_id)
            ):
                raise _Irregular
            occurred_text = raw["time"]
            recorded_text = raw["recordedtime"]
            occurred = times.get(occurred_text)
            if occurred is None:
                occurred = times[occurred_text] = _parsed(occurred_text)
            recorded = occurred if recorded_text == occurred_text else times.get(recorded_text)
            if recorded is None:
                recorded = times[recorded_text] = _parsed(recorded_text)
            position = raw.get("sourceposition")
            event_id, event_type = raw["id"], raw["type"]
            if type(event_id) is not str or type(event_type) is not str or type(stream_id) is not str:
                raise _Irregular  # the one-line path converts them with str()
            if position is not None and type(position) is not str:
                raise _Irregular
            if rows:
                data_json, metadata_json = dumps(data, option=sorted_keys), dumps(metadata, option=sorted_keys)
                if stream_id not in streams:
                    validate_stream_id(stream_id)
                    streams.add(stream_id)
                if fullmatch(event_id) is None or not plain(
                    event_type, schema_version, data, metadata, 0, 0, data_json, metadata_json
                ):  # the rules themselves decide; a broken one goes to the one-line path, which names the line
                    new(
                        NewEvent, (event_type, data, metadata, event_id, schema_version, occurred[0], recorded[0])
                    ).validate()
        except Exception:
            event, canonical = decode_line_canonical(line, location, number)  # raises the error of this line
            add_item(_row_of(event, location, number) if rows else event)
            add_canonical(canonical)
            continue
        if rows:
            add_item(
                (
                    position,
                    event_id,
                    stream_id,
                    version,
                    event_type,
                    schema_version,
                    data_json.decode(),
                    metadata_json.decode(),
                    occurred[2],
                    recorded[2],
                )
            )
            # keys inserted in sorted order (and data/metadata already canonical): no sort needed
            canonical = dumps(
                {
                    "data": fragment(data_json),
                    "id": event_id,
                    "metadata": fragment(metadata_json),
                    "occurred_at": occurred[1],
                    "recorded_at": recorded[1],
                    "schema_version": schema_version,
                    "stream_id": stream_id,
                    "type": event_type,
                    "version": version,
                }
            )
        else:
            add_item(
                new(
                    Event,
                    (
                        event_id,
                        stream_id,
                        version,
                        event_type,
                        schema_version,
                        data,
                        metadata,
                        occurred[0],
                        recorded[0],
                        position,
                    ),
                )
            )
            canonical = dumps(
                {
                    "id": event_id,
                    "stream_id": stream_id,
                    "version": version,
                    "type": event_type,
                    "schema_version": schema_version,
                    "data": data,
                    "metadata": metadata,
                    "occurred_at": occurred[1],
                    "recorded_at": recorded[1],
                },
                option=sorted_keys,
            )
        add_canonical(canonical)
    return items, canonicals


def _row_of(event: Event, location: str, number: int) -> StoredRow:
    """The :data:`StoredRow` of a decoded line's event after checking it against the rules
    every store enforces; a broken rule raises :class:`ArchiveError` naming the line."""
    try:
        validate_stream_id(event.stream_id)
        event.to_new().validate()
    except (ValidationError, EventTooLarge) as e:
        raise ArchiveError(location, f"holds an event no store may hold: {e}", number) from e
    return (
        event.position,
        event.id,
        event.stream_id,
        event.version,
        event.type,
        event.schema_version,
        encode_json(event.data).decode(),
        encode_json(event.metadata).decode(),
        to_micros(event.occurred_at),
        to_micros(event.recorded_at),
    )


def events_of_rows(rows: Iterable[StoredRow]) -> list[Event]:
    """The events of :func:`decode_rows`' rows, as :func:`decode_lines` gives them (the
    timestamps as microseconds, which ``Event`` decodes exactly when they are read)."""
    new, loads = tuple.__new__, orjson.loads
    return [
        new(
            Event,
            (event_id, stream_id, version, kind, schema, loads(data), loads(metadata), occurred, recorded, position),
        )
        for position, event_id, stream_id, version, kind, schema, data, metadata, occurred, recorded in rows
    ]


class _Irregular(Exception):
    """Internal: a line the inline decoder leaves to :func:`decode_line_canonical`."""


def _parsed(text: str) -> tuple[datetime, str, int]:
    """``(moment, canonical text, microseconds)`` of a timestamp text (as
    :func:`decode_line_canonical` derives the first two)."""
    moment = parse_timestamp(text)
    return moment, text if _is_canonical_time(text) else timestamp(moment), to_micros(moment)


def _canonical(event: Event, occurred: str, recorded: str) -> bytes:
    return encode_json(
        {
            "id": event.id,
            "stream_id": event.stream_id,
            "version": event.version,
            "type": event.type,
            "schema_version": event.schema_version,
            "data": event.data,
            "metadata": event.metadata,
            "occurred_at": occurred,
            "recorded_at": recorded,
        }
    )


def canonical_bytes(event: Event) -> bytes:
    """The bytes the hash chain covers: the envelope (``Event.to_dict``) without the position."""
    return _canonical(event, timestamp(event.occurred_at), timestamp(event.recorded_at))


def chain_next(head: str, event: Event, canonical: bytes | None = None) -> str:
    """The next hash-chain head: ``sha256(previous head (hex) || canonical bytes)``."""
    return hashlib.sha256(head.encode() + (canonical or canonical_bytes(event))).hexdigest()


def stream_of_source(source: str) -> str:
    """Inverse of :func:`source_of` (for readers that only look at ``source``)."""
    return unquote(source.removeprefix(SOURCE_PREFIX))
