"""The PostgreSQL adapter's COPY encoding (text and binary) and row decoding (no server).

``_copy_rows`` formats a timestamp object once when events share it; whatever the pattern
of shared and distinct objects, every row must equal the row of that event encoded alone.
"""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson

from skyferry.adapters.stores.postgres.rows import _binary_ready, _copy_rows, _copy_rows_binary, _positioned_rows
from skyferry.core.messages import Event, to_micros

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
T1 = T0 + timedelta(seconds=1)
T2 = T0 + timedelta(seconds=2)
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _event(version: int, occurred: object, recorded: object) -> Event:
    return Event(str(uuid.uuid4()), "s-1", version, "Happened", 1, {"n": version}, {}, occurred, recorded)  # type: ignore[arg-type]


def test_shared_and_distinct_timestamps_encode_like_single_events() -> None:
    pairs: list[tuple[object, object]] = [
        (T0, T0),
        (T0, T1),
        (T2, T2),  # recorded is occurred: must not leave T2's text as the memo for T1
        (T0, T1),
        (T1, T0),
        (to_micros(T2), to_micros(T2)),
        (T0, to_micros(T1)),
        (T0, T0),
    ]
    events = [_event(i + 1, occurred, recorded) for i, (occurred, recorded) in enumerate(pairs)]
    together = _copy_rows(events)
    alone = [_copy_rows([event])[0] for event in events]
    assert together == alone
    fields = [row.rstrip("\n").split("\t") for row in together]
    assert fields[3][7:] == [T0.isoformat(), T1.isoformat()]
    assert fields[4][7:] == [T1.isoformat(), T0.isoformat()]
    assert fields[6][7:] == [T0.isoformat(), T1.isoformat()]


def _wire(moment: datetime) -> int:
    """A timestamptz as the binary protocol carries it: microseconds since 2000-01-01 UTC."""
    return (moment - PG_EPOCH) // timedelta(microseconds=1)


def test_positioned_rows_share_equal_timestamps_and_keep_values() -> None:
    w0, w1, w2 = _wire(T0), _wire(T1), _wire(T2)
    copy = int(str(w0))  # equal to w0, another object
    assert copy is not w0
    rows = [
        (str(uuid.uuid4()), "s", 1, "A", 1, '{"a":1}', "{}", w0, copy, 7),
        (str(uuid.uuid4()), "s", 2, "A", 1, "{}", '{"m":"x"}', copy, w1, 8),
        (str(uuid.uuid4()), "s", 3, "A", 1, "{}", "{}", w1, w2, 9),
    ]
    events = _positioned_rows(rows)
    assert [(e.occurred_at, e.recorded_at) for e in events] == [(T0, T0), (T0, T1), (T1, T2)]
    assert events[0][7] is events[0][8]
    assert events[1][7] is events[0][8]
    assert events[2][7] is events[1][8]
    assert [e.position for e in events] == ["00000000000000000007", "00000000000000000008", "00000000000000000009"]
    assert events[0].data == {"a": 1}
    assert events[1].metadata == {"m": "x"}


def _parse_tuple(row: bytes) -> list[bytes]:
    (count,) = struct.unpack_from("!h", row)
    fields, offset = [], 2
    for _ in range(count):
        (length,) = struct.unpack_from("!i", row, offset)
        fields.append(row[offset + 4 : offset + 4 + length])
        offset += 4 + length
    assert offset == len(row)
    return fields


def test_binary_rows_hold_the_values_of_the_text_rows() -> None:
    paris = timezone(timedelta(hours=1))
    pairs: list[tuple[object, object]] = [
        (T0, T0),
        (T0, T1),
        (T2, T2),
        (T0, T1),
        (to_micros(T2), to_micros(T1)),
        (T0.astimezone(paris), T1),
    ]
    events = [_event(i + 1, occurred, recorded) for i, (occurred, recorded) in enumerate(pairs)]
    events[1] = events[1]._replace(type="back\\slash", data={"q": 'a\\b"c'})
    assert _binary_ready(events)
    text_rows = [row.rstrip("\n").split("\t") for row in _copy_rows(events)]
    for event, row, text in zip(events, _copy_rows_binary(events), text_rows, strict=True):
        fields = _parse_tuple(row)
        assert str(uuid.UUID(bytes=fields[0])) == event.id
        assert fields[1].decode() == event.stream_id
        assert struct.unpack("!i", fields[2])[0] == event.version
        assert fields[3].decode() == event.type
        assert struct.unpack("!i", fields[4])[0] == event.schema_version
        assert orjson.loads(fields[5]) == event.data
        assert orjson.loads(fields[6]) == event.metadata
        moments = [PG_EPOCH + timedelta(microseconds=struct.unpack("!q", f)[0]) for f in fields[7:]]
        assert moments == [event.occurred_at, event.recorded_at]
        assert moments == [datetime.fromisoformat(t) for t in text[7:]]


def test_binary_copy_is_only_for_canonical_ids_and_int4_versions() -> None:
    good = _event(1, T0, T0)
    assert _binary_ready([good])
    assert not _binary_ready([good, good._replace(id=good.id.upper())])
    assert not _binary_ready([good._replace(version=2**31)])
    assert not _binary_ready([good._replace(version=True)])
    assert not _binary_ready([good._replace(schema_version=2**31)])
