"""Export, import, verify and migrate through the ports, over the stores of the registry."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from skyferry.adapters import registry
from skyferry.adapters.archives.local import LocalArchive
from skyferry.core.errors import TransientError
from skyferry.core.messages import Event, NewEvent
from skyferry.core.ports import (
    FEATURE_BULK_APPEND,
    FEATURE_BULK_IN_FLIGHT,
    CopyingEventStore,
    ViewStore,
    features_of,
)
from skyferry.migrate import checkpoints
from skyferry.migrate.errors import TargetConflict
from skyferry.migrate.export import export
from skyferry.migrate.importer import import_archive
from skyferry.migrate.manifest import MANIFEST_NAME, Manifest
from skyferry.migrate.migrate import Migration
from skyferry.migrate.sharding import Shard
from skyferry.migrate.verify import verify_archive, verify_stores
from skyferry.migrate.writer import TargetWriter
from tests.integration.migrate_support import chunk_lines, fill, opened, store_schemes, store_url


@pytest.mark.parametrize("target_scheme", store_schemes())
def test_export_import_export_is_byte_identical(tmp_path: Path, target_scheme: str) -> None:
    with store_url("sqlite") as source_url, store_url(target_scheme) as target_url:
        with opened(source_url) as (source, _):
            count = fill(source)
            first = LocalArchive(tmp_path / "first")
            exported = export(source, first, chunk_events=10)
        with opened(target_url) as (target, views):
            bulk = FEATURE_BULK_APPEND in features_of(target)
            report = import_archive(first, target, views)
            assert (report.events, report.written, report.skipped) == (count, count, 0)
            assert [p["chunk"] for p in report.positions] == [
                c.name for c in Manifest.from_bytes(first.get(MANIFEST_NAME)).chunks
            ]
            assert report.positions[-1]["source"] == exported.last_position
            assert report.positions[-1]["target"] == target.last_position()
            second = LocalArchive(tmp_path / "second")
            again = export(target, second, chunk_events=10)
            assert verify_archive(first, target).ok
        with opened(source_url) as (source, _), opened(target_url) as (target, _):
            assert verify_stores(source, target).differences == []
    assert again.events == exported.events == count
    before, after = chunk_lines(first, drop_position=True), chunk_lines(second, drop_position=True)
    assert sorted(after) == sorted(before)  # every event byte-identical
    a, b = Manifest.from_bytes(first.get(MANIFEST_NAME)), Manifest.from_bytes(second.get(MANIFEST_NAME))
    assert {k: (v.events, v.head) for k, v in a.streams.items()} == {
        k: (v.events, v.head) for k, v in b.streams.items()
    }
    if target_scheme == "sqlite":  # same store type, fresh database: the positions match too
        assert [first.get(c.name) for c in a.chunks] == [second.get(c.name) for c in b.chunks]
    if bulk:  # and in the same global order (the heads above: each stream's order, in every case)
        assert after == before


@pytest.mark.parametrize("use_bulk", [True, False], ids=["bulk_append", "append"])
def test_both_write_paths_keep_the_global_order(tmp_path: Path, use_bulk: bool) -> None:
    with (
        store_url("memory") as source_url,
        store_url("sqlite") as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, _),
    ):
        fill(source, streams=4, per_stream=5)
        writer = TargetWriter(target, use_bulk=use_bulk, concurrency=1)  # append: in order with one in flight
        assert writer.path == ("bulk_append" if use_bulk else "append")
        after = None
        while batch := source.read_all(after=after, limit=7):
            writer.write(batch)
            after = batch[-1].position
        assert writer.written == 20
        assert [e.id for e in target.read_all(limit=100)] == [e.id for e in source.read_all(limit=100)]
        writer.write(source.read_all(limit=100))
        assert (writer.written, writer.skipped) == (20, 20)


def test_importing_twice_adds_nothing(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    with store_url("memory") as source_url, store_url("sqlite") as target_url:
        with opened(source_url) as (source, _):
            count = fill(source)
            export(source, archive, chunk_events=8)
        with opened(target_url) as (target, views):
            import_archive(archive, target, views)
            again = import_archive(archive, target, views)
            assert (again.written, again.resumed_at_chunk) == (0, again.chunks + again.resumed_at_chunk)
            # without the checkpoint too: every write is idempotent by id and version
            views.drop_checkpoints(checkpoints.PROJECTION)
            third = import_archive(archive, target, views)
            assert (third.written, third.skipped, third.resumed_at_chunk) == (0, count, 0)
            assert len(target.read_all(limit=10_000)) == count


@pytest.mark.parametrize("use_bulk", [True, False], ids=["bulk_append", "append"])
def test_a_target_holding_other_events_stops_naming_stream_and_version(tmp_path: Path, use_bulk: bool) -> None:
    archive = LocalArchive(tmp_path / "a")
    with store_url("memory") as source_url, store_url("sqlite") as target_url:
        with opened(source_url) as (source, _):
            fill(source, streams=2, per_stream=4)
            export(source, archive)
            stream_id = next(iter(source.list_streams()))
            theirs = source.read_stream(stream_id)
        with opened(target_url) as (target, _):
            target.append(stream_id, [e.to_new() for e in theirs[:2]], 0)
            target.append(stream_id, [NewEvent(type="Intruder", data={})], 2)
            writer = TargetWriter(target, use_bulk=use_bulk)
            with pytest.raises(TargetConflict, match=rf"stream '{stream_id}' version 3: .*differs in id"):
                writer.write([e for e in theirs])


def test_verify_lists_every_difference(tmp_path: Path) -> None:
    with (
        store_url("memory") as source_url,
        store_url("memory") as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, _),
    ):
        fill(source, streams=4, per_stream=3)
        streams = list(source.list_streams())
        for sid in streams[1:]:
            events = source.read_stream(sid)
            if sid == streams[1]:
                events = events[:2]
            if sid == streams[2]:
                changed = events[1].to_new()
                events = [events[0]]
                target.append(sid, [e.to_new() for e in events], 0)
                target.append(
                    sid,
                    [
                        NewEvent(
                            type=changed.type,
                            data={"amount": "9"},
                            id=changed.id,
                            occurred_at=changed.occurred_at,
                            metadata=changed.metadata,
                            schema_version=changed.schema_version,
                        )
                    ],
                    1,
                )
                continue
            target.append(sid, [e.to_new() for e in events], 0)
        target.append("only-in-target", [NewEvent(type="X", data={})], 0)
        report = verify_stores(source, target)
        assert not report.ok
        text = "\n".join(report.differences)
        assert f"stream {streams[0]!r}: missing in the target (3 events)" in text
        assert f"stream {streams[1]!r}: target ends at version 2, source continues to version 3" in text
        assert f"stream {streams[2]!r} version 2: differs in data, recorded_at" in text
        assert "stream 'only-in-target': only in the target (1 events)" in text
        assert report.difference_count == 4
        archive = LocalArchive(tmp_path / "a")
        export(source, archive)
        against = verify_archive(archive, target)
        assert against.difference_count == 4
        assert f"stream {streams[1]!r}: archive has 3 events, target has 2" in against.differences


def commits_recorded(views: ViewStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that commit to ``views`` from now on, in order."""
    committed_by: list[str] = []
    commit = views.commit

    def recorded(*args: Any) -> None:
        committed_by.append(threading.current_thread().name)
        commit(*args)

    monkeypatch.setattr(views, "commit", recorded)
    return committed_by


@pytest.mark.parametrize("target_scheme", ["cosmos", "dynamodb", "firestore"])
def test_an_import_with_writes_in_flight_commits_its_checkpoints_behind_them_and_resumes(
    tmp_path: Path, target_scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into a store with ``bulk_in_flight`` each chunk's checkpoint is committed on a thread
    of its own while the next chunk is written; a failure lets the last one finish, and the
    rerun starts after it."""
    archive = LocalArchive(tmp_path / "a")
    with store_url("memory") as source_url, store_url(target_scheme) as target_url:
        with opened(source_url) as (source, _):
            count = fill(source)
            export(source, archive, chunk_events=10)
        key = checkpoints.job_key("import", Manifest.from_bytes(archive.get(MANIFEST_NAME)).digest, None, None)
        with opened(target_url) as (target, views):
            assert FEATURE_BULK_IN_FLIGHT in features_of(target)
            committed_by = commits_recorded(views, monkeypatch)
            calls = 0
            bulk_append = target.bulk_append  # type: ignore[attr-defined]

            def third_fails(events: Sequence[Event], in_flight: int = 1) -> int:
                nonlocal calls
                calls += 1
                if calls == 3:
                    raise TransientError("the store went away")
                return int(bulk_append(events, in_flight=in_flight))

            monkeypatch.setattr(target, "bulk_append", third_fails)
            with pytest.raises(TransientError, match="went away"):
                import_archive(archive, target, views)
            assert checkpoints.load(views, key) == {"chunks": 2, "events": 20}, "the second chunk's commit finished"
            assert committed_by == ["skyferry-checkpoint_0"] * 2
            monkeypatch.undo()
            report = import_archive(archive, target, views)
            assert (report.resumed_at_chunk, report.written, report.skipped) == (2, count - 20, 0)
            assert checkpoints.load(views, key) == {"chunks": report.resumed_at_chunk + report.chunks, "events": count}
            assert verify_archive(archive, target).ok


def test_an_import_reads_its_first_chunk_while_it_reads_its_checkpoint(tmp_path: Path) -> None:
    """The checkpoint is a round trip away (or more: the first request connects); the first
    chunk is read and checked meanwhile, not after."""
    from skyferry.adapters.stores.memory import MemoryEventStore, MemoryViewStore

    chunk_read = threading.Event()

    class Watched(LocalArchive):
        def get(self, name: str, limit: int | None = None) -> bytes:
            if name != MANIFEST_NAME:
                chunk_read.set()
            return super().get(name, limit)

    class FarAway(MemoryViewStore):
        def get_checkpoint(self, projection: str, key: str = "$all") -> str | None:
            assert chunk_read.wait(10), "the first chunk was not read while the checkpoint was"
            return super().get_checkpoint(projection, key)

    source = MemoryEventStore()
    count = fill(source)
    export(source, LocalArchive(tmp_path / "a"), chunk_events=10)
    target = MemoryEventStore()
    report = import_archive(Watched(tmp_path / "a"), target, FarAway())
    assert (report.events, report.written) == (count, count)
    assert verify_archive(LocalArchive(tmp_path / "a"), target).ok


def test_a_migration_with_writes_in_flight_has_its_checkpoint_current_once_caught_up_or_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Into a store with ``bulk_in_flight`` a batch's checkpoint is committed behind the next
    batch: closing waits for it, and catching up makes it current."""
    with (
        store_url("memory") as source_url,
        store_url("dynamodb") as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, views),
    ):
        count = fill(source)
        commit = views.commit
        committed_by = commits_recorded(views, monkeypatch)
        first = Migration(source, target, views, batch=10)
        first.copy_once()
        first.copy_once()
        first.close()
        assert checkpoints.load(views, first.key) == {"position": first.position, "events": 20}
        resumed = Migration(source, target, views, batch=10)
        assert resumed.position == first.position
        resumed.catch_up()
        assert checkpoints.load(views, resumed.key) == {"position": resumed.position, "events": count}
        report = resumed.finish()
        assert (report.written, report.skipped) == (count - 20, 0)
        assert set(committed_by) == {"skyferry-checkpoint_0"}
        assert verify_stores(source, target).ok

        # follow, stopped right after a batch: the checkpoint is that batch's when it returns
        source.append("late", [NewEvent(type="Late", data={})], 0)
        monkeypatch.setattr(views, "commit", lambda *args: (time.sleep(0.3), commit(*args)))
        following, stop = Migration(source, target, views, batch=10), threading.Event()
        copy_once = following.copy_once
        monkeypatch.setattr(following, "copy_once", lambda: stop.set() or copy_once())
        following.follow(stop)
        assert checkpoints.load(views, following.key) == {"position": following.position, "events": count + 1}
        following.close()


def test_migrate_copies_resumes_from_its_checkpoint_and_follows() -> None:
    with (
        store_url("sqlite") as source_url,
        store_url("sqlite") as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, views),
    ):
        count = fill(source)
        first = Migration(source, target, views, batch=5)
        first.copy_once()
        first.copy_once()
        assert len(target.read_all(limit=1000)) == 10
        resumed = Migration(source, target, views, batch=5)
        assert resumed.position == first.position
        resumed.catch_up()
        assert resumed.report.caught_up
        assert resumed.report.lag_seconds == 0.0
        assert resumed.report.written == count - 10
        source.append("late", [NewEvent(type="Late", data={})], 0)
        assert resumed.copy_once() == 1
        assert verify_stores(source, target).ok


def test_postgresql_to_postgresql_goes_server_to_server_and_resumes_a_committed_batch() -> None:
    """The ``copy_from`` path: the same result as the event path, a batch already stored
    but not checkpointed (killed between the two) goes the event path once and is skipped,
    and a shard goes the event path throughout."""
    with (
        store_url("postgresql") as source_url,
        store_url("postgresql") as target_url,
        store_url("postgresql") as sharded_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, views),
        opened(sharded_url) as (sharded, sharded_views),
    ):
        count = fill(source, streams=9, per_stream=8)
        first = Migration(source, target, views, batch=10)
        assert first.report.write_path == "copy_from"
        assert first.batch == 10
        assert Migration(source, target, views).batch == 20_000
        first.copy_once()
        # Killed after the target committed the second batch, before its checkpoint:
        assert isinstance(target, CopyingEventStore)
        assert target.copy_from(source, first.position, 10) is not None
        resumed = Migration(source, target, views, batch=10)
        assert resumed.position == first.position
        resumed.catch_up()
        assert (resumed.report.written, resumed.report.skipped) == (count - 20, 10)
        assert resumed.writer.written == 0  # every new event went server to server
        assert [e.with_position(None) for e in target.read_all(limit=1000)] == [
            e.with_position(None) for e in source.read_all(limit=1000)
        ]
        assert verify_stores(source, target).ok
        whole = Migration(source, sharded, sharded_views, shard=Shard(0, 1), batch=10)
        assert whole.report.write_path == "bulk_append"
        whole.catch_up()
        assert whole.writer.written == count
        assert verify_stores(source, sharded).ok


def test_store_urls_in_reports_carry_no_secret() -> None:
    assert registry.redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
