"""Imports and migrations fit every target by themselves: writes are cut to the target's own
limits (DynamoDB's transaction items and bytes, Firestore's 500 writes and commit size),
each stream's versions stay contiguous, no option is needed; and a chunk holding one event
no store may hold writes nothing of that chunk, on every store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from skyferry.adapters.archives.local import LocalArchive
from skyferry.core.errors import EventTooLarge, ValidationError
from skyferry.core.messages import EVENT_SIZE_LIMIT, Event
from skyferry.core.ports import EventStore
from skyferry.migrate.errors import ArchiveError
from skyferry.migrate.export import export
from skyferry.migrate.importer import import_archive
from skyferry.migrate.migrate import Migration
from skyferry.migrate.verify import verify_archive, verify_stores
from skyferry.migrate.writer import TargetWriter
from tests.integration.migrate_support import opened, sized_data, store_schemes, store_url, write_archive

MOMENT = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def event(stream_id: str, version: int, data: dict[str, Any], **change: Any) -> Event:
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "stream_id": stream_id,
        "version": version,
        "type": "Imported",
        "schema_version": 1,
        "data": data,
        "metadata": {},
        "occurred_at": MOMENT + timedelta(microseconds=version),
        "recorded_at": MOMENT + timedelta(seconds=1, microseconds=version),
        "position": None,
    }
    fields.update(change)
    return Event(**fields)


def hard_history(big_events: int = 60, streams: int = 250) -> list[Event]:
    """One stream of ``big_events`` events exactly at the size limit, interleaved with two
    small events in each of ``streams`` streams: more bytes than one DynamoDB transaction
    or Firestore commit takes, and more streams than one Firestore commit."""
    small = [event(f"small-{s}", v, {"n": s * 10 + v}) for v in (1, 2) for s in range(streams)]
    big = [event("big", v, sized_data(EVENT_SIZE_LIMIT - 2)) for v in range(1, big_events + 1)]
    history: list[Event] = []
    for index in range(max(len(small), len(big))):
        history += big[index : index + 1] + small[index : index + 1]
    return history


def fill_source(store: EventStore, history: list[Event]) -> None:
    TargetWriter(store).write(history)


STREAMS_PER_APPEND = {"cosmos": 20, "dynamodb": 20}
"""Stores written one append per stream get fewer small streams (each is a round trip or
eight on an emulator); the many streams are for the stores that take them in one commit."""


@pytest.mark.parametrize("scheme", store_schemes())
def test_a_migration_fits_the_target_without_any_option(scheme: str) -> None:
    history = hard_history(streams=STREAMS_PER_APPEND.get(scheme, 250))
    with (
        store_url("memory") as source_url,
        store_url(scheme) as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, views),
    ):
        fill_source(source, history)
        migration = Migration(source, target, views)  # the default --batch
        migration.catch_up()
        report = migration.finish()
        assert (report.events, report.written) == (len(history), len(history))
        assert [e.version for e in target.read_stream("big")] == list(range(1, 61))
        verified = verify_stores(source, target)
        assert verified.ok, verified.differences


@pytest.mark.parametrize("scheme", store_schemes())
def test_an_ordinary_archive_imports_into_every_store(scheme: str, tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    streams = STREAMS_PER_APPEND.get(scheme, 100)  # a chunk of 1000 events over 100 streams: 1101 writes
    count = 12 * streams
    history = [event(f"acct:{i % streams}", i // streams + 1, {"amount": f"{i}.50"}) for i in range(count)]
    with store_url("memory") as source_url, opened(source_url) as (source, _):
        fill_source(source, history)
        export(source, archive, chunk_events=10 * streams)
    with store_url(scheme) as target_url, opened(target_url) as (target, views):
        report = import_archive(archive, target, views)
        assert (report.events, report.written, report.chunks) == (count, count, 2)
        verified = verify_archive(archive, target)
        assert verified.ok, verified.differences


def invalid(defect: str, stream_id: str, version: int) -> Event:
    good = event(stream_id, version, {"n": version})
    if defect == "empty type":
        return good._replace(type="")
    if defect == "id with a space":
        return good._replace(id=good.id[:-1] + " ")
    return good._replace(data=sized_data(EVENT_SIZE_LIMIT - 1))  # one byte over, with the metadata's 2


@pytest.mark.parametrize("defect", ["empty type", "id with a space", "one byte over the size limit"])
@pytest.mark.parametrize("scheme", store_schemes())
def test_a_chunk_holding_one_invalid_event_writes_nothing_of_it(scheme: str, defect: str, tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    events = [event("a", 1, {"n": 1}), event("b", 1, {"n": 2}), invalid(defect, "a", 2), event("c", 1, {"n": 3})]
    write_archive(archive, events)
    with store_url(scheme) as target_url, opened(target_url) as (target, views):
        with pytest.raises((ValidationError, EventTooLarge)) as caught:
            import_archive(archive, target, views)
        assert target.last_position() is None
        assert [target.stream_version(s) for s in "abc"] == [0, 0, 0]
        assert isinstance(caught.value, ArchiveError)
        assert "chunks/000000.jsonl.zst" in str(caught.value)


def test_a_migration_refuses_a_batch_holding_one_invalid_event_before_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source may hold what the rules now refuse (an older store): no part of its batch is written."""
    history = [event("a", 1, {"n": 1}), event("b", 1, {"n": 2}), invalid("empty type", "a", 2)]
    with (
        store_url("memory") as source_url,
        store_url("dynamodb") as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, views),
    ):
        monkeypatch.setattr("skyferry.adapters.stores.memory.check_append", lambda *_: None)  # an older source
        source.bulk_append(history)  # type: ignore[attr-defined]
        monkeypatch.undo()
        with pytest.raises(ValidationError, match="event type"):
            Migration(source, target, views).catch_up()
        assert target.last_position() is None


def test_verify_reads_each_side_once_in_its_global_order(monkeypatch: pytest.MonkeyPatch) -> None:
    history = [event(f"s{i % 40}", i // 40 + 1, {"n": i}) for i in range(400)]
    with (
        store_url("memory") as a_url,
        store_url("memory") as b_url,
        opened(a_url) as (a, _),
        opened(b_url) as (b, _),
    ):
        fill_source(a, history)
        fill_source(b, [*history[:-1], history[-1]._replace(data={"n": "changed"})])
        calls: list[str] = []
        for store in (a, b):
            original = store.read_stream

            def counted(*args: Any, _original: Any = original, **kwargs: Any) -> list[Event]:
                calls.append(args[0])
                return _original(*args, **kwargs)  # type: ignore[no-any-return]

            monkeypatch.setattr(store, "read_stream", counted)
        report = verify_stores(a, b)
        assert report.differences == ["stream 's39' version 10: differs in data"]
        assert (report.streams, report.events) == (40, 400)
        assert set(calls) == {"s39"}, "only the stream that differs is read stream by stream"
