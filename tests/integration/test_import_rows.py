"""Import into SQLite and PostgreSQL by rows: an archive's lines decoded straight into the rows
those stores keep (``format.decode_rows``) and written by the target's ``copy_from``.

The lane must give what the event path gives: the same events and chains, the same lines
refused, a resumed import that skips what is stored, conflicts named."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from skyferry.adapters import registry
from skyferry.adapters.archives.local import LocalArchive
from skyferry.core.errors import EventTooLarge, TransientError, ValidationError
from skyferry.core.messages import EVENT_SIZE_LIMIT, Event, encode_json, to_micros
from skyferry.core.ports import EventStore, ViewStore
from skyferry.migrate import checkpoints
from skyferry.migrate import decoder as decoder_module
from skyferry.migrate.chunks import DECODED_BUDGET, estimated_memory
from skyferry.migrate.errors import ArchiveError, TargetConflict
from skyferry.migrate.format import (
    canonical_bytes,
    decode_lines,
    decode_rows,
    encode_events,
    events_of_rows,
)
from skyferry.migrate.importer import import_archive
from skyferry.migrate.manifest import MANIFEST_NAME, ChunkEntry, Manifest
from skyferry.migrate.sharding import Shard, owned
from skyferry.migrate.verify import verify_archive
from skyferry.migrate.writer import TargetWriter
from tests import services
from tests.integration.migrate_support import opened, sized_data, store_url, write_archive

MOMENT = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def history(count: int = 60, streams: int = 7) -> list[Event]:
    """Interleaved streams with awkward payloads, as an archive holds them."""
    return [
        Event(
            str(uuid.uuid4()),
            f"acct:{i % streams}" if i % streams % 3 else f"tenant-{i % streams}/ü.{i % streams}",
            i // streams + 1,
            "MoneyDeposited" if i % 2 else "Ünïcode Type",
            1 + i % 3,
            {"z": i, "amount": f"{i}.50", "note": '€ ✓\n"q"', "nested": {"b": [1, True], "a": {}}, "rate": 1.25}
            if i % 6
            else {"with null": None},  # one that the rules' common case leaves to ``validate()``
            {"correlation_id": str(uuid.UUID(int=i)), "actor": "tester"} if i % 4 else {},
            MOMENT + timedelta(microseconds=i // 3),
            MOMENT + timedelta(seconds=1, microseconds=i // 3),
            str(1000 + i) if i % 5 else None,
        )
        for i in range(count)
    ]


def test_rows_decode_to_the_events_and_chain_bytes_of_the_lines() -> None:
    events = history()
    lines = encode_events(events)[0]
    # a line written by another tool: keys in another order, a time with an offset, no position
    odd = orjson.loads(lines[3])
    odd["time"] = odd["time"].replace("Z", "+00:00")
    del odd["sourceposition"]
    lines[3] = orjson.dumps(dict(reversed(list(odd.items()))))
    decoded, canonicals = decode_lines(lines, "chunk")
    rows, row_canonicals = decode_rows(lines, "chunk")
    assert row_canonicals == canonicals
    assert [canonical_bytes(e) for e in events_of_rows(rows)] == [canonical_bytes(e) for e in decoded]
    assert [e.position for e in events_of_rows(rows)] == [e.position for e in decoded]
    for row, event in zip(rows, decoded, strict=True):
        assert row[0] == event.position
        assert row[1:6] == (event.id, event.stream_id, event.version, event.type, event.schema_version)
        assert (row[6], row[7]) == (encode_json(event.data).decode(), encode_json(event.metadata).decode())
        assert (row[8], row[9]) == (to_micros(event.occurred_at), to_micros(event.recorded_at))


@pytest.mark.parametrize(
    ("defect", "change"),
    [
        ("empty type", {"type": ""}),
        ("id with a space", {"id": str(uuid.UUID(int=7))[:-1] + " "}),
        ("stream id with a space", {"stream_id": "acct 1"}),
        ("one byte over the size limit", {"data": sized_data(EVENT_SIZE_LIMIT - 1)}),
    ],
)
def test_rows_refuse_an_event_no_store_may_hold_naming_its_line(defect: str, change: dict[str, object]) -> None:
    events = history(5)
    events[2] = events[2]._replace(**change)  # the third line
    lines = encode_events(events)[0]
    decode_lines(lines, "chunks/000000.jsonl.zst")  # the event path checks the rules when it writes
    with pytest.raises(ArchiveError) as caught:
        decode_rows(lines, "chunks/000000.jsonl.zst")
    assert str(caught.value).startswith("chunks/000000.jsonl.zst, line 3: holds an event no store may hold: ")
    assert isinstance(caught.value.__cause__, ValidationError | EventTooLarge)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest) -> Iterator[tuple[EventStore, ViewStore]]:
    with store_url(request.param) as url, opened(url) as stores:
        yield stores


def test_an_import_into_a_sql_store_copies_rows_and_keeps_the_chains(
    target: tuple[EventStore, ViewStore], tmp_path: Path
) -> None:
    store, views = target
    archive = LocalArchive(tmp_path / "a")
    events = history(250)
    write_archive(archive, events, chunk_events=100)
    report = import_archive(archive, store, views)
    assert (report.write_path, report.events, report.written, report.skipped) == ("copy_from", 250, 250, 0)
    verified = verify_archive(archive, store)
    assert verified.ok, verified.differences
    stored = store.read_all(limit=1000)
    assert [canonical_bytes(e) for e in stored] == [canonical_bytes(e) for e in events]


def test_an_import_into_a_store_holding_part_of_a_chunk_skips_what_it_holds(
    target: tuple[EventStore, ViewStore], tmp_path: Path
) -> None:
    store, views = target
    archive = LocalArchive(tmp_path / "a")
    events = history(250)
    write_archive(archive, events, chunk_events=100)
    TargetWriter(store).write(events[:130])  # an earlier run stopped inside the second chunk
    report = import_archive(archive, store, views)
    assert (report.written, report.skipped) == (120, 130)
    verified = verify_archive(archive, store)
    assert verified.ok, verified.differences


def test_an_import_meeting_an_id_stored_elsewhere_names_it_and_writes_nothing_of_the_chunk(
    target: tuple[EventStore, ViewStore], tmp_path: Path
) -> None:
    store, views = target
    archive = LocalArchive(tmp_path / "a")
    events = history(40)
    write_archive(archive, events)
    TargetWriter(store).write([events[17]._replace(stream_id="elsewhere", version=1)])
    with pytest.raises(TargetConflict):
        import_archive(archive, store, views)
    assert [(e.id, e.stream_id) for e in store.read_all(limit=100)] == [(events[17].id, "elsewhere")]


def test_a_sharded_import_copies_the_rows_of_its_own_streams(
    target: tuple[EventStore, ViewStore], tmp_path: Path
) -> None:
    store, views = target
    archive = LocalArchive(tmp_path / "a")
    events = history(120, streams=12)
    write_archive(archive, events, chunk_events=50)
    shard = Shard(1, 3)
    report = import_archive(archive, store, views, shard=shard)
    mine = [e for e in events if owned(shard, e.stream_id)]
    assert 0 < len(mine) < len(events)
    assert (report.write_path, report.written) == ("copy_from", len(mine))
    assert [canonical_bytes(e) for e in store.read_all(limit=1000)] == [canonical_bytes(e) for e in mine]


def test_an_import_into_a_store_without_copy_from_writes_events(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    write_archive(archive, history(30))
    with store_url("memory") as url, opened(url) as (store, views):
        report = import_archive(archive, store, views)
        assert (report.write_path, report.written) == ("bulk_append", 30)


# -- the decoder process (``skyferry.migrate.decoder``): what ``skyferry import`` uses --


def test_an_import_reading_in_a_second_process_stores_what_one_process_stores(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    events = history(250)
    write_archive(archive, events, chunk_events=40)
    stored = []
    for archive_url in (None, archive.url):
        with store_url("sqlite") as url, opened(url) as (store, views):
            report = import_archive(archive, store, views, archive_url=archive_url)
            assert (report.write_path, report.written, report.chunks) == ("copy_from", 250, 7)
            assert [position["chunk"] for position in report.positions] == [e.name for e in _chunks(archive)]
            stored.append(store.read_all(limit=1000))
    assert stored[0] == stored[1]
    assert [canonical_bytes(e) for e in stored[1]] == [canonical_bytes(e) for e in events]


def test_an_import_resumed_in_a_second_process_writes_from_its_checkpoint(
    target: tuple[EventStore, ViewStore], tmp_path: Path
) -> None:
    store, views = target
    archive = LocalArchive(tmp_path / "a")
    events = history(250)
    manifest = write_archive(archive, events, chunk_events=100)
    TargetWriter(store).write(events[:200])  # an earlier run wrote two chunks and saved its checkpoint
    checkpoints.save(views, checkpoints.job_key("import", manifest.digest, None, None), {"chunks": 2, "events": 200})
    report = import_archive(archive, store, views, archive_url=archive.url)
    assert (report.resumed_at_chunk, report.written, report.skipped, report.events) == (2, 50, 0, 250)
    verified = verify_archive(archive, store)
    assert verified.ok, verified.differences


def test_a_sharded_import_in_a_second_process_copies_its_own_streams(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    events = history(120, streams=12)
    write_archive(archive, events, chunk_events=50)
    shard = Shard(2, 3)
    with store_url("sqlite") as url, opened(url) as (store, views):
        report = import_archive(archive, store, views, shard=shard, archive_url=archive.url)
        mine = [e for e in events if owned(shard, e.stream_id)]
        assert report.written == len(mine)
        assert [canonical_bytes(e) for e in store.read_all(limit=1000)] == [canonical_bytes(e) for e in mine]


def test_a_chunk_too_large_to_keep_decoded_comes_from_the_second_process_in_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = LocalArchive(tmp_path / "a")
    wide = {f"k{n:05d}": n % 10 for n in range(14_000)}  # 154 kB, and a colon every 11 bytes
    events = [e._replace(data=wide) for e in history(40, streams=4)]
    events += [e._replace(stream_id="small", version=v) for v, e in enumerate(history(10), 1)]
    write_archive(archive, events, chunk_events=40)
    assert estimated_memory(b"".join(encode_events(events[:40])[0])) > DECODED_BUDGET
    parts: list[tuple[int, int, bool]] = []
    original = decoder_module.DecoderProcess.__iter__

    def counted(self: decoder_module.DecoderProcess) -> Iterator[tuple[int, list[Any], bool]]:
        for index, rows, last in original(self):
            parts.append((index, len(rows), last))
            yield index, rows, last

    monkeypatch.setattr(decoder_module.DecoderProcess, "__iter__", counted)
    with store_url("sqlite") as url, opened(url) as (store, views):
        report = import_archive(archive, store, views, archive_url=archive.url)
        assert report.written == 50
        assert [canonical_bytes(e) for e in store.read_all(limit=1000)] == [canonical_bytes(e) for e in events]
    assert len([part for part in parts if part[0] == 0]) > 1  # the first chunk, a segment at a time
    assert [(index, last) for index, _, last in parts if last] == [(0, True), (1, True)]
    assert [count for index, count, _ in parts if index == 1] == [10]
    assert sum(count for _, count, _ in parts) == 50


def test_a_manifest_changed_under_the_import_stops_the_second_process(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    manifest = write_archive(archive, history(30), chunk_events=10)
    with (
        pytest.raises(ArchiveError, match=r"manifest\.json: changed while the import was reading the archive"),
        decoder_module.DecoderProcess(
            archive.url, digest="sha256:" + "0" * 64, key=None, start=0, chunks=len(manifest.chunks), shard=None
        ) as decoder,
    ):
        list(decoder)


def test_a_second_process_that_dies_is_a_transient_error(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    manifest = write_archive(archive, history(8000), chunk_events=500)  # more than the pipe holds
    with decoder_module.DecoderProcess(
        archive.url, digest=manifest.digest, key=None, start=0, chunks=len(manifest.chunks), shard=None
    ) as decoder:
        parts = iter(decoder)
        next(parts)
        decoder._process.kill()
        with pytest.raises(
            TransientError,
            match=r"the import's decoder process ended \(exit code -9\) before it finished; .* run the import again$",
        ):
            list(parts)


def _chunks(archive: LocalArchive) -> list[ChunkEntry]:
    return Manifest.from_bytes(archive.get(MANIFEST_NAME)).chunks


@pytest.mark.parametrize("scheme", sorted(registry.ARCHIVES))
def test_the_second_process_reads_an_archive_of_every_technology(scheme: str) -> None:
    with services.provide("archive", registry.ARCHIVES[scheme], scheme) as archive_url:
        archive = registry.open_archive(archive_url)
        events = history(90)
        write_archive(archive, events, chunk_events=30)
        with store_url("sqlite") as url, opened(url) as (store, views):
            report = import_archive(archive, store, views, archive_url=archive_url)
            assert (report.written, report.chunks) == (90, 3)
            verified = verify_archive(archive, store)
            assert verified.ok, verified.differences
