"""The portability invariant, for every registered event store: an event that one store
accepts, every store accepts and gives back unchanged; one that a store could not keep
exactly is refused by all of them, before anything is written.

"Unchanged" is byte for byte: the canonical JSON of ``data`` and ``metadata``, the id,
type and schema version, and both timestamps to the microsecond, through ``append`` (read
back by ``read_stream`` and ``read_all``) and ``bulk_append`` where the store has it.  The
cases are the hard ones: control characters and NUL, unusual Unicode, number edge cases,
deep nesting, the size limit exactly and one byte over.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from skyferry.core.errors import EventTooLarge, ValidationError
from skyferry.core.messages import (
    EVENT_SIZE_LIMIT,
    MAX_JSON_DEPTH,
    SCHEMA_VERSION_MAX,
    TYPE_MAX,
    Event,
    NewEvent,
    encode_json,
    format_timestamp,
)
from skyferry.core.ports import FEATURE_BULK_APPEND, NO_STREAM, EventStore, features_of

CONTROL = "".join(chr(c) for c in range(0x20)) + "\x7f\x80\x9f"
UNUSUAL = (
    "😀𝄞"  # astral: UTF-16 surrogate pairs elsewhere
    "e\u0301é"  # decomposed and composed: kept apart
    "\u202eRTL\u202c"  # bidi overrides
    "\ufeff\u200b\u200d"  # BOM, zero width space and joiner
    "\u2028\u2029"  # line and paragraph separators (invalid in JavaScript strings before ES2019)
    "\ufffe\uffff\ue000\U0010ffff"  # noncharacters, private use, the last code point
    '"\\/'  # what JSON escapes
)
NUMBERS: dict[str, Any] = {
    "negative_zero": -0.0,
    "zero_point": 0.0,
    "one_point_zero": 1.0,
    "big_float": 1e16,
    "tiny": 1e-300,
    "subnormal": 5e-324,
    "max_double": 1.7976931348623157e308,
    "tenth": 0.1,
    "sum": 0.1 + 0.2,
    "beyond_double": 2**53 + 1,
    "int64_max": 2**63 - 1,
    "int64_min": -(2**63),
    "uint64_max": 2**64 - 1,
    "minus_one": -1,
    "true": True,
    "false": False,
    "null": None,
    "list": [0, -0.0, 1.0, 2**63 - 1, None, True],
}


def nested(depth: int) -> dict[str, Any]:
    """An object nested ``depth`` levels deep (the object itself is level 1), objects and
    arrays alternating."""
    value: Any = "leaf"
    for level in range(depth, 0, -1):
        value = {"in": value} if level % 2 else [value]
    return value  # type: ignore[no-any-return]


def sized(size: int, filler: str) -> NewEvent:
    """An event whose data + metadata encode to exactly ``size`` bytes, padded with ``filler``
    (whose JSON text is counted: a control character is six bytes, ``€`` three)."""
    unit = len(encode_json(filler)) - 2
    metadata = {"control": CONTROL}
    overhead = len(encode_json({"pad": ""})) + len(encode_json(metadata))
    count, rest = divmod(size - overhead, unit)
    event = NewEvent(type="Sized", data={"pad": filler * count + "a" * rest}, metadata=metadata)
    assert event.encoded_size() == size
    return event


def accepted() -> dict[str, NewEvent]:
    """Events every store must keep exactly, by name."""
    utc = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
    return {
        "control characters and NUL": NewEvent(
            type="Control",
            data={"text": CONTROL, CONTROL: "key", "\x00": "\x00", "crlf": "a\r\nb"},
            metadata={"\x00nul": CONTROL},
        ),
        "unusual unicode": NewEvent(
            type="Ünïcödé-型.名/前 with spaces",
            data={"text": UNUSUAL, UNUSUAL: UNUSUAL, "é": 1, "e\u0301": 2},
            metadata={"actor": UNUSUAL},
        ),
        "numbers": NewEvent(type="Numbers", data=NUMBERS, metadata={"n": NUMBERS}),
        "empty values": NewEvent(type="E", data={}, metadata={}),
        "empty containers": NewEvent(type="E", data={"o": {}, "a": [], "s": "", "aa": [[], [{}]]}),
        "keys stores treat specially": NewEvent(
            type="Keys",
            data={"id": 1, "_rid": 2, "_etag": 3, "$ref": 4, "a.b": 5, "__name__": 6, "": 7, "pk": 8, "ttl": 9},
        ),
        "deepest nesting allowed": NewEvent(type="Deep", data=nested(MAX_JSON_DEPTH), metadata=nested(MAX_JSON_DEPTH)),
        "longest type": NewEvent(type="T" * (TYPE_MAX - 1) + "末", data={"n": 1}),
        "largest schema version": NewEvent(type="V", data={}, schema_version=SCHEMA_VERSION_MAX),
        "year 1": NewEvent(
            type="Old",
            data={},
            occurred_at=datetime(1, 1, 1, tzinfo=UTC),
            recorded_at=datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        ),
        "year 999": NewEvent(
            type="Old", data={}, occurred_at=datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), recorded_at=utc
        ),
        "year 9999": NewEvent(
            type="Future",
            data={},
            occurred_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            recorded_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        "another offset": NewEvent(
            type="Offset",
            data={},
            occurred_at=datetime(2024, 1, 1, 5, 30, 0, 123, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
        "size limit of escaped control characters": sized(EVENT_SIZE_LIMIT, "\x01"),
        "size limit of three-byte characters": sized(EVENT_SIZE_LIMIT, "€"),
        "size limit of astral characters": sized(EVENT_SIZE_LIMIT, "😀"),
    }


def refused() -> dict[str, tuple[Callable[[], NewEvent], type[Exception], str]]:
    """Events every store must refuse, with the error and a word the message must hold."""
    ok = str(uuid.uuid4())
    return {
        "NUL in the type": (lambda: NewEvent(type="Bad\x00Type", data={}), ValidationError, "type"),
        "newline in the type": (lambda: NewEvent(type="Bad\nType", data={}), ValidationError, "type"),
        "empty type": (lambda: NewEvent(type="", data={}), ValidationError, "type"),
        "type one character too long": (lambda: NewEvent(type="T" * (TYPE_MAX + 1), data={}), ValidationError, "type"),
        "lone surrogate in the type": (lambda: NewEvent(type="T\udc80", data={}), ValidationError, "type"),
        "upper-case id": (lambda: NewEvent(type="T", data={}, id=ok.upper()), ValidationError, "canonical"),
        "id in braces": (lambda: NewEvent(type="T", data={}, id="{" + ok + "}"), ValidationError, "canonical"),
        "id as 32 hex digits": (
            lambda: NewEvent(type="T", data={}, id=ok.replace("-", "")),
            ValidationError,
            "canonical",
        ),
        "schema version 2**31": (
            lambda: NewEvent(type="T", data={}, schema_version=SCHEMA_VERSION_MAX + 1),
            ValidationError,
            "schema_version",
        ),
        "schema version 0": (lambda: NewEvent(type="T", data={}, schema_version=0), ValidationError, "schema_version"),
        "NaN": (lambda: NewEvent(type="T", data={"x": [1, float("nan")]}), ValidationError, "data['x'][1]"),
        "infinity": (lambda: NewEvent(type="T", data={}, metadata={"x": float("-inf")}), ValidationError, "metadata"),
        "integer over 64 bits": (lambda: NewEvent(type="T", data={"x": 2**64}), ValidationError, "data['x']"),
        "integer under 64 bits": (lambda: NewEvent(type="T", data={"x": -(2**63) - 1}), ValidationError, "64 bits"),
        "lone surrogate in a value": (lambda: NewEvent(type="T", data={"x": "a\ud800"}), ValidationError, "surrogate"),
        "lone surrogate in a key": (lambda: NewEvent(type="T", data={"\udfff": 1}), ValidationError, "surrogate"),
        "a key that is not a string": (lambda: NewEvent(type="T", data={1: 1}), ValidationError, "key"),
        "one level too deep": (
            lambda: NewEvent(type="T", data=nested(MAX_JSON_DEPTH + 1)),
            ValidationError,
            "nested",
        ),
        "far too deep": (lambda: NewEvent(type="T", data=nested(400)), ValidationError, "nested"),
        "naive timestamp": (
            lambda: NewEvent(type="T", data={}, occurred_at=datetime(2024, 1, 1)),
            ValidationError,
            "occurred_at",
        ),
        "timestamp before year 1 in UTC": (
            lambda: NewEvent(type="T", data={}, recorded_at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
            ValidationError,
            "recorded_at",
        ),
        "one byte over the size limit, escaped": (lambda: sized(EVENT_SIZE_LIMIT + 1, "\x01"), EventTooLarge, "limit"),
        "one byte over the size limit, astral": (lambda: sized(EVENT_SIZE_LIMIT + 1, "😀"), EventTooLarge, "limit"),
    }


def same(stored: Event, given: NewEvent) -> list[str]:
    """What differs between a stored event and the one given (empty: nothing)."""
    problems = []
    if encode_json(stored.data) != encode_json(given.data):
        problems.append("data")
    if encode_json(stored.metadata) != encode_json(given.metadata):
        problems.append("metadata")
    if (stored.id, stored.type, stored.schema_version) != (given.id, given.type, given.schema_version):
        problems.append("id, type or schema version")
    if format_timestamp(stored.occurred_at) != format_timestamp(given.occurred_at):
        problems.append(f"occurred_at {format_timestamp(stored.occurred_at)}")
    if given.recorded_at is not None and format_timestamp(stored.recorded_at) != format_timestamp(given.recorded_at):
        problems.append(f"recorded_at {format_timestamp(stored.recorded_at)}")
    if stored.occurred_at.utcoffset() != timedelta(0) or stored.recorded_at.utcoffset() != timedelta(0):
        problems.append("a timestamp not in UTC")
    return problems


def stream_of(name: str) -> str:
    return f"hard-{uuid.uuid4().hex[:10]}"


def test_every_hard_event_comes_back_byte_for_byte(event_store: EventStore) -> None:
    cases = accepted()
    streams = {name: stream_of(name) for name in cases}
    for name, event in cases.items():
        event.validate()
        event_store.append(streams[name], [event], NO_STREAM)
    problems = {}
    for name, event in cases.items():
        [stored] = event_store.read_stream(streams[name])
        if differs := same(stored, event):
            problems[name] = differs
    assert not problems, f"{type(event_store).__name__} changed: {problems}"
    by_stream = {e.stream_id: e for e in _read_all(event_store)}
    through_read_all = {name: same(by_stream[streams[name]], event) for name, event in cases.items()}
    assert not {k: v for k, v in through_read_all.items() if v}


def test_bulk_append_keeps_every_hard_event_byte_for_byte(event_store: EventStore) -> None:
    if FEATURE_BULK_APPEND not in features_of(event_store):
        pytest.skip(f"{type(event_store).__name__} has no bulk_append")
    cases = accepted()
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    events = {
        name: Event(
            event.id,
            stream_of(name),
            1,
            event.type,
            event.schema_version,
            event.data,
            event.metadata,
            event.occurred_at,
            event.recorded_at or moment,
        )
        for name, event in cases.items()
    }
    for name, event in events.items():  # one at a time: the size-limit events do not fit one commit together
        assert event_store.bulk_append([event]) == 1, name  # type: ignore[attr-defined]
    problems = {}
    for name, event in events.items():
        [stored] = event_store.read_stream(event.stream_id)
        if differs := same(stored, event.to_new()):
            problems[name] = differs
    assert not problems, f"{type(event_store).__name__} changed: {problems}"


@pytest.mark.parametrize("case", sorted(refused()))
def test_what_one_store_cannot_keep_every_store_refuses_naming_it(event_store: EventStore, case: str) -> None:
    make, error, word = refused()[case]
    event = make()
    with pytest.raises(error) as caught:
        event.validate()
    assert word in str(caught.value)
    sid = stream_of(case)
    harmless = NewEvent(type="Fine", data={"n": 1})
    with pytest.raises(error):
        event_store.append(sid, [harmless, event], NO_STREAM)
    assert event_store.stream_version(sid) == 0
    assert event_store.read_stream(sid) == []
    if FEATURE_BULK_APPEND in features_of(event_store):
        moment = datetime(2030, 1, 1, tzinfo=UTC)
        imported = [
            Event(e.id, sid, v, e.type, e.schema_version, e.data, e.metadata, e.occurred_at, e.recorded_at or moment)
            for v, e in enumerate([harmless, event], start=1)
        ]
        with pytest.raises(error):
            event_store.bulk_append(imported)  # type: ignore[attr-defined]
        assert event_store.stream_version(sid) == 0


def test_a_caller_changing_what_it_read_changes_no_history(event_store: EventStore) -> None:
    sid = stream_of("mutation")
    event_store.append(sid, [NewEvent(type="T", data={"nested": {"list": [1]}}, metadata={"m": {"k": "v"}})], NO_STREAM)
    [first] = event_store.read_stream(sid)
    first.data["nested"]["list"].append(2)
    first.metadata["m"]["k"] = "changed"
    [again] = event_store.read_stream(sid)
    assert again.data == {"nested": {"list": [1]}}
    assert again.metadata == {"m": {"k": "v"}}
    [through_all] = [e for e in _read_all(event_store) if e.stream_id == sid]
    through_all.data["nested"]["list"].clear()
    assert event_store.read_stream(sid)[0].data == {"nested": {"list": [1]}}


def test_what_a_caller_changes_after_appending_is_not_stored(event_store: EventStore) -> None:
    sid = stream_of("after")
    data: dict[str, Any] = {"list": [1]}
    event_store.append(sid, [NewEvent(type="T", data=data)], NO_STREAM)
    data["list"].append(2)
    assert event_store.read_stream(sid)[0].data == {"list": [1]}


def _read_all(store: EventStore) -> list[Event]:
    events: list[Event] = []
    after: str | None = None
    while batch := store.read_all(after=after, limit=500):
        events.extend(batch)
        after = batch[-1].position
    return events
