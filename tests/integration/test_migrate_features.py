"""Transforms, shards, live follow and cutover, through the ports."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from skyferry.adapters.archives.local import LocalArchive
from skyferry.core.errors import ValidationError
from skyferry.core.messages import NewEvent
from skyferry.core.ports import ANY
from skyferry.migrate import checkpoints
from skyferry.migrate.export import export
from skyferry.migrate.fence import FENCE_COLLECTION, FENCE_KEY, is_fenced, lift_fence
from skyferry.migrate.importer import import_archive
from skyferry.migrate.manifest import MANIFEST_NAME, Manifest
from skyferry.migrate.migrate import Migration
from skyferry.migrate.sharding import Shard
from skyferry.migrate.transforms import Transformer, dry_run_diff, load_transform
from skyferry.migrate.verify import verify_archive, verify_stores
from tests.integration.migrate_support import fill, opened, store_url

T = "tests.integration.migrate_transforms"


def transformer(name: str, allow: bool = False) -> Transformer:
    spec = f"{T}:{name}"
    return Transformer(spec, load_transform(spec), allow_count_change=allow)


def test_an_upcast_and_rename_transform_rewrites_events_and_is_recorded(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    with store_url("memory") as url, opened(url) as (source, _):
        count = fill(source, streams=3, per_stream=4)
        export(source, archive, transformer=transformer("upcast_deposits"))
    manifest = Manifest.from_bytes(archive.get(MANIFEST_NAME))
    assert manifest.transform == {
        "spec": f"{T}:upcast_deposits",
        "allow_count_change": False,
        "events_in": count,
        "events_out": count,
        "events_changed": 6,
    }
    with store_url("sqlite") as url, opened(url) as (target, views):
        import_archive(archive, target, views, transformer=transformer("rename_withdrawals"))
        events = target.read_all(limit=100)
        assert {e.type for e in events} == {"MoneyDeposited", "FundsWithdrawn"}
        deposits = [e for e in events if e.type == "MoneyDeposited"]
        assert all(e.schema_version == 9 and "value" in e.data and "amount" not in e.data for e in deposits)


def test_a_count_change_must_be_allowed_and_then_renumbers(tmp_path: Path) -> None:
    with (
        store_url("memory") as source_url,
        store_url("sqlite") as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, views),
    ):
        fill(source, streams=2, per_stream=4)
        refused = Migration(source, target, views, transformer=transformer("drop_withdrawals"))
        with pytest.raises(ValidationError, match="into 0 events; pass --allow-count-change"):
            refused.catch_up()
        assert target.last_position() is None
        allowed = Migration(source, target, views, transformer=transformer("drop_withdrawals", allow=True))
        allowed.catch_up()
        recorded = checkpoints.load(views, allowed.key)
        assert recorded is not None
        assert (recorded["transform"]["spec"], recorded["transform"]["events_out"]) == (f"{T}:drop_withdrawals", 4)
        for stream_id in source.list_streams():
            kept = target.read_stream(stream_id)
            assert [e.version for e in kept] == [1, 2]
            assert [e.id for e in kept] == [e.id for e in source.read_stream(stream_id) if e.type != "MoneyWithdrawn"]
        assert allowed.finish().transform == {
            "spec": f"{T}:drop_withdrawals",
            "allow_count_change": True,
            "events_in": 8,
            "events_out": 4,
            "events_changed": 4,
        }


def test_a_split_transform_resumes_without_duplicates(tmp_path: Path) -> None:
    with (
        store_url("memory") as source_url,
        store_url("sqlite") as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, views),
    ):
        fill(source, streams=2, per_stream=6)
        first = Migration(source, target, views, batch=5, transformer=transformer("split_deposits", True))
        first.copy_once()
        # a crash after the write, before the checkpoint: the same batch is copied again
        rerun = Migration(source, target, views, batch=5, transformer=transformer("split_deposits", True))
        rerun.position = None
        rerun.catch_up()
        ids = [e.id for e in target.read_all(limit=100)]
        assert len(ids) == len(set(ids)) == 12 + 6
        for stream_id in target.list_streams():
            assert [e.version for e in target.read_stream(stream_id)] == list(range(1, 10))


def test_dry_run_shows_a_diff_and_writes_nothing() -> None:
    with store_url("memory") as url, opened(url) as (source, _):
        fill(source, streams=2, per_stream=3)
        diff, seen = dry_run_diff(transformer("upcast_deposits"), iter(source.read_all(limit=100)), limit=2)
    assert diff.count("--- source ") == 2
    assert '-  "schema_version": 2,' in diff or '-  "schema_version": 3,' in diff or '-  "schema_version": 1,' in diff
    assert '+  "schema_version": 9,' in diff
    assert '+    "value": "1.00"' in diff
    assert seen == 2
    dropped, _ = dry_run_diff(transformer("drop_withdrawals", True), iter([]), limit=2)
    assert dropped == ""


def test_a_failing_transform_names_the_event() -> None:
    with store_url("memory") as url, opened(url) as (source, _):
        fill(source, streams=1, per_stream=1)
        event = source.read_all()[0]
        with pytest.raises(
            ValidationError, match=rf"failed on event {event.id} \(stream 'tenant-0/acct.ü_0' version 1\)"
        ):
            transformer("explode").apply([event])


def test_shards_migrate_one_store_together_and_verify_as_one(tmp_path: Path) -> None:
    with (
        store_url("memory") as source_url,
        store_url("sqlite") as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, views),
    ):
        fill(source, streams=12, per_stream=3)
        for index in range(3):
            shard = Shard(index, 3)
            Migration(source, target, views, shard=shard).catch_up()
            assert verify_stores(source, target, shard=shard).ok
            if index < 2:
                assert not verify_stores(source, target).ok
        assert verify_stores(source, target).ok
        archives = []
        for index in range(2):
            archive = LocalArchive(tmp_path / f"shard-{index}")
            export(source, archive, shard=Shard(index, 2))
            assert verify_archive(archive, target, shard=Shard(index, 2)).ok
            archives.append(Manifest.from_bytes(archive.get(MANIFEST_NAME)))
        assert sum(m.event_count for m in archives) == 36
        assert archives[0].source["shard"] == "0/2"
        assert not set(archives[0].streams) & set(archives[1].streams)


def test_follow_copies_new_events_until_stopped() -> None:
    with (
        store_url("sqlite") as source_url,
        store_url("sqlite") as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, views),
    ):
        fill(source, streams=3, per_stream=3)
        migration = Migration(source, target, views)
        stop = threading.Event()
        worker = threading.Thread(target=migration.follow, args=(stop,), kwargs={"poll": 0.05})
        worker.start()
        try:
            for i in range(20):
                source.append(f"live-{i % 4}", [NewEvent(type="Live", data={"i": i})], ANY)
            deadline = time.monotonic() + 30
            while len(target.read_all(limit=1000)) < 29 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            worker.join(10)
        assert not worker.is_alive()
        assert verify_stores(source, target).ok
        assert migration.report.caught_up


def test_cutover_fences_the_source_drains_and_verifies() -> None:
    with (
        store_url("sqlite") as source_url,
        store_url("sqlite") as target_url,
        opened(source_url) as (source, source_views),
        opened(target_url) as (target, views),
    ):
        fill(source, streams=3, per_stream=3)
        migration = Migration(source, target, views)
        report = migration.cutover(source_views, grace=0.2)
        assert report is not None
        assert report.ok
        assert is_fenced(source_views)
        fence = source_views.get(FENCE_COLLECTION, FENCE_KEY)
        assert fence is not None
        assert fence.value["reason"] == f"migration cutover to {target.url}"
        assert migration.finish().fenced
        lift_fence(source_views)
        assert not is_fenced(source_views)
