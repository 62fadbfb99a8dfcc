"""The batched hot paths of export/import give exactly what the one-at-a-time paths give.

``encode_events`` = ``encode_line`` and ``canonical_bytes`` per event, ``decode_lines`` = ``decode_line_canonical``
per line (same errors for bad lines), ``ChunkWriter.add_many`` = ``add`` per event (same
chunks, cut at the same events), ``HeadTracker.add_many`` = ``add``, and SQLite
``bulk_append`` rejects what ``NewEvent.validate`` rejects, with the same error.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from skyferry.adapters.archives.local import LocalArchive
from skyferry.adapters.stores.sqlite import SQLiteEventStore
from skyferry.core.errors import EventTooLarge, ValidationError
from skyferry.core.messages import EVENT_SIZE_LIMIT, Event, to_micros
from skyferry.migrate.chunks import ChunkWriter, chunk_lines
from skyferry.migrate.errors import ArchiveError
from skyferry.migrate.export import HeadTracker
from skyferry.migrate.format import (
    CHAIN_START,
    canonical_bytes,
    chain_next,
    decode_line_canonical,
    decode_lines,
    encode_events,
    encode_line,
)
from skyferry.migrate.manifest import StreamHead

T0 = datetime(2026, 11, 27, 6, 0, 0, 123456, tzinfo=UTC)


def event(version: int, stream_id: str = "account:1", **changes: Any) -> Event:
    base = Event(
        id=str(uuid.UUID(int=version + (hash(stream_id) & 0xFFFF) * 1_000_000)),
        stream_id=stream_id,
        version=version,
        type="MoneyDeposited",
        schema_version=1,
        data={"amount": str(version), "z": [1, None], "a": {"y": 1, "b": 2}},
        metadata={"actor": "ümlaut", "correlation_id": f"c-{version}"},
        occurred_at=T0 + timedelta(seconds=version // 3),
        recorded_at=T0 + timedelta(seconds=version // 2),
        position=f"{version:06d}",
    )
    return replace(base, **changes)


def varied() -> list[Event]:
    """Shared and distinct timestamps, integer-microsecond fields (as SQLite reads them),
    a non-UTC offset, whole seconds, no position."""
    events = [event(v) for v in range(1, 40)]
    raw = event(40)
    micros: Any = to_micros(raw.occurred_at)
    events.append(Event(*raw[:7], micros, micros, raw.position))
    events.append(event(41, occurred_at=datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))))
    events.append(event(42, recorded_at=datetime(2026, 1, 1, tzinfo=UTC), position=None))
    return events


def test_encode_events_is_encode_event_per_event() -> None:
    events = varied()
    assert encode_events(events) == ([encode_line(e) for e in events], [canonical_bytes(e) for e in events])


def test_decode_lines_is_decode_line_canonical_per_line() -> None:
    events = varied()
    lines = [encode_line(e) for e in events]
    # a non-canonical but valid time text, and a boolean version, take the one-line path
    odd = orjson.loads(lines[0])
    odd["time"] = "2026-11-27T07:00:00.5+01:00"
    odd["recordedtime"] = "2026-11-27T06:00:00.500000Z"
    lines.append(orjson.dumps(odd))
    odd = orjson.loads(lines[1])
    odd.update(id=12345, sourceposition=17, streamversion=True)  # converted/accepted by the one-line path
    odd.pop("datacontenttype")
    lines.append(orjson.dumps(odd))
    one_by_one = [decode_line_canonical(line, "c", n) for n, line in enumerate(lines, 1)]
    assert decode_lines(lines, "c") == ([e for e, _ in one_by_one], [c for _, c in one_by_one])


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("time"),
        lambda d: d.update(specversion="0.3"),
        lambda d: d.update(time="yesterday"),
        lambda d: d.update(time=12),
        lambda d: d.update(time=[1]),
        lambda d: d.update(recordedtime="2026-11-27T06:00:00"),
        lambda d: d.update(metadata="{not json"),
        lambda d: d.update(metadata=7),
        lambda d: d.update(data=[1]),
        lambda d: d.update(streamversion=0),
        lambda d: d.update(schemaversion="1"),
        lambda d: d.update(source="/skyferry/streams/other"),
        lambda d: d.update(streamid=["x"]),
    ],
)
def test_decode_lines_rejects_a_bad_line_with_the_same_error(change: Any) -> None:
    lines = [encode_line(event(v)) for v in (1, 2, 3)]
    bad = orjson.loads(lines[1])
    change(bad)
    lines[1] = orjson.dumps(bad)
    with pytest.raises(ArchiveError) as one:
        decode_line_canonical(lines[1], "c", 2)
    with pytest.raises(ArchiveError) as batch:
        decode_lines(lines, "c")
    assert str(batch.value) == str(one.value)
    assert "c" in str(batch.value)


def test_decode_lines_rejects_a_line_that_is_not_json_or_not_an_object() -> None:
    for bad in (b"{", b"[1, 2]"):
        with pytest.raises(ArchiveError) as one:
            decode_line_canonical(bad, "c", 2)
        with pytest.raises(ArchiveError) as batch:
            decode_lines([encode_line(event(1)), bad], "c")
        assert str(batch.value) == str(one.value)


def write(tmp_path: Path, name: str, events: list[Event], batched: bool, **limits: int) -> list[Any]:
    archive = LocalArchive(tmp_path / name)
    writer = ChunkWriter(archive, None, **limits)
    if batched:
        for start in range(0, len(events), 13):
            part = events[start : start + 13]
            writer.add_many(part, [encode_line(e) for e in part])
    else:
        for e in events:
            writer.add(e, encode_line(e))
    writer.close()
    return [(entry, archive.get(entry.name)) for entry in writer.entries]


@pytest.mark.parametrize("limits", [{"chunk_events": 5}, {"chunk_events": 1000, "chunk_bytes": 3000}, {}])
def test_add_many_cuts_the_same_chunks_as_add(tmp_path: Path, limits: dict[str, int]) -> None:
    events = varied()
    one = write(tmp_path, "one", events, False, **limits)
    many = write(tmp_path, "many", events, True, **limits)
    assert many == one
    assert sum(entry.events for entry, _ in many) == len(events)
    if limits:
        assert len(many) > 1


def test_chunk_writer_raises_a_failed_store(tmp_path: Path) -> None:
    class Broken(LocalArchive):
        def put(self, name: str, data: bytes) -> None:
            raise OSError("disk full")

    writer = ChunkWriter(Broken(tmp_path / "b"), chunk_events=2)
    writer.add_many([event(1), event(2)], [encode_line(event(1)), encode_line(event(2))])
    with pytest.raises(OSError, match="disk full"):
        writer.close()


def test_head_tracker_add_many_is_chain_next_per_stream_and_names_a_gap() -> None:
    events = varied()[:30] + [event(v, "account:2") for v in (1, 2, 3)]
    pairs = [(e, canonical_bytes(e)) for e in events]
    expected: dict[str, StreamHead] = {}
    for e in events:
        head = expected.setdefault(e.stream_id, StreamHead(0, CHAIN_START, 0))
        head.events, head.last_version, head.head = head.events + 1, e.version, chain_next(head.head, e)
    many = HeadTracker()
    many.add_many(pairs, "x")
    assert many.heads == expected
    assert len(expected) == 2
    gap = [*pairs, (event(5, "account:2"), canonical_bytes(event(5, "account:2")))]
    with pytest.raises(ArchiveError, match=r"chunk-9: .*jumps from version 3 to 5"):
        HeadTracker().add_many(gap, lambda e: "chunk-9")


def nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"id": "not-a-uuid"}, ValidationError, "is not a UUID"),
        ({"id": "0000000A-0000-0000-0000-000000000001"}, ValidationError, "canonical form"),
        ({"type": ""}, ValidationError, "event type must be"),
        ({"type": "T\x00"}, ValidationError, "not allowed"),
        ({"data": [1]}, ValidationError, "must be JSON objects"),
        ({"schema_version": 0}, ValidationError, "schema_version must be an integer from 1"),
        ({"schema_version": 2**31}, ValidationError, "schema_version must be an integer from 1"),
        ({"data": {"x": float("nan")}}, ValidationError, "not a JSON number"),
        ({"metadata": {"x": nested_list(64)}}, ValidationError, "nested more than"),
        ({"occurred_at": datetime(2026, 1, 1)}, ValidationError, "occurred_at must be timezone-aware"),
        ({"data": {"x": object()}}, ValidationError, "not JSON-serializable"),
        ({"data": {"x": "y" * EVENT_SIZE_LIMIT}}, EventTooLarge, "is over the limit"),
    ],
)
def test_sqlite_bulk_append_rejects_what_validate_rejects(
    tmp_path: Path, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    bad = event(2, **change)
    with pytest.raises(error, match=message) as expected:
        bad.to_new().validate()
    store = SQLiteEventStore(f"sqlite:///{tmp_path / 'e.db'}")
    try:
        with pytest.raises(error) as got:
            store.bulk_append([event(1), bad, event(3)])
        assert str(got.value) == str(expected.value)
        assert store.read_all() == []  # nothing of the call is stored
    finally:
        store.close()


def test_sqlite_bulk_append_stores_what_it_was_given(tmp_path: Path) -> None:
    events = varied()
    store = SQLiteEventStore(f"sqlite:///{tmp_path / 'e.db'}")
    try:
        assert store.bulk_append(events) == len(events)
        assert store.bulk_append(events) == 0  # idempotent
        stored = store.read_all()
        assert [e.with_position(None) for e in stored] == [e.with_position(None) for e in events]
        assert [list(e.data) for e in stored] == [list(e.data) for e in events]  # key order kept
    finally:
        store.close()


@pytest.mark.parametrize(
    ("plaintext", "lines"),
    [
        (b"a\nb\n", [b"a", b"b"]),
        (b"a\nb", [b"a", b"b"]),
        (b"a\n\nb\n", [b"a", b"b"]),
        (b"", []),
        (b"\n", []),
    ],
)
def test_chunk_lines_are_the_non_empty_lines(plaintext: bytes, lines: list[bytes]) -> None:
    assert chunk_lines(plaintext) == lines
