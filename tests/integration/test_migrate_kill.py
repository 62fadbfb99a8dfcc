"""SIGKILL at several points of an import and of a migration, then the same command again:
the result is identical to an uninterrupted run (the checkpoint lives in the target)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skyferry.adapters.archives.local import LocalArchive
from skyferry.core.messages import Event, NewEvent
from skyferry.core.ports import BulkAppendEventStore
from skyferry.migrate import checkpoints
from skyferry.migrate.export import export
from skyferry.migrate.importer import import_archive
from skyferry.migrate.manifest import MANIFEST_NAME, Manifest
from skyferry.migrate.verify import verify_archive, verify_stores
from tests.integration.migrate_support import opened, store_url

SKYFERRY = str(Path(sys.executable).with_name("skyferry"))
STREAMS, PER_STREAM = 40, 150  # 6,000 events


def build_source(url: str) -> None:
    """A source store of 6,000 interleaved events, written fast with ``bulk_append``."""
    with opened(url) as (store, _):
        template = {"amount": "1.00", "memo": "x" * 200}
        events: list[Event] = []
        moment = datetime(2026, 1, 1, tzinfo=UTC)
        for version in range(1, PER_STREAM + 1):
            for s in range(STREAMS):
                new = NewEvent(type="Deposited", data={**template, "n": version}, occurred_at=moment)
                events.append(Event(new.id, f"acct:{s}", version, new.type, 1, new.data, {}, moment, moment))
        assert isinstance(store, BulkAppendEventStore)
        for start in range(0, len(events), 1000):
            store.bulk_append(events[start : start + 1000])


def kill_at(args: list[str], reached: Callable[[], bool], *, deadline: float = 90) -> bool:
    """Run the CLI, SIGKILL it once ``reached()`` holds; False if it finished first."""
    process = subprocess.Popen([SKYFERRY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + deadline
        while process.poll() is None and time.monotonic() < end:
            if reached():
                process.send_signal(signal.SIGKILL)
                process.wait(30)
                return True
            time.sleep(0.005)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def all_ids(url: str) -> list[tuple[str, str, int]]:
    with opened(url) as (store, _):
        out: list[tuple[str, str, int]] = []
        after = None
        while batch := store.read_all(after=after, limit=5000):
            out += [(e.id, e.stream_id, e.version) for e in batch]
            after = batch[-1].position
        return out


@pytest.mark.slow
def test_import_killed_at_several_points_then_rerun_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path}/source.db"
    build_source(source)
    archive = LocalArchive(tmp_path / "archive")
    with opened(source) as (store, _):
        export(store, archive, chunk_events=100)
    manifest = Manifest.from_bytes(archive.get(MANIFEST_NAME))
    reference = f"sqlite:///{tmp_path}/reference.db"
    with opened(reference) as (store, views):
        import_archive(archive, store, views)
    target = f"sqlite:///{tmp_path}/target.db"
    key = checkpoints.job_key("import", manifest.digest, None, None)
    args = ["import", "--from", str(tmp_path / "archive"), "--to", target]

    def events_done() -> int:
        with opened(target) as (_, views):
            state = checkpoints.load(views, key)
        return int(state["events"]) if state else 0

    rng = random.Random(4)
    kills = 0
    for goal in (500, 2500, 4800):
        start = events_done()
        if kill_at(args, lambda g=goal: events_done() >= g):  # type: ignore[misc]
            kills += 1
            assert events_done() >= start  # the checkpoint never goes back
    # and once at a random moment, not aligned with a checkpoint
    process = subprocess.Popen([SKYFERRY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.5, 1.5))
    process.kill()
    process.wait(30)
    assert kills >= 2
    final = subprocess.run([SKYFERRY, *args, "--json"], capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert all_ids(target) == all_ids(reference)
    with opened(target) as (store, _):
        assert verify_archive(archive, store).ok


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["sqlite", "postgresql"])  # PostgreSQL: the copy_from path
def test_migrate_killed_at_several_points_then_rerun_matches_the_source(scheme: str) -> None:
    with store_url(scheme) as source, store_url(scheme) as target:
        migrate_killed_and_rerun(source, target)


def migrate_killed_and_rerun(source: str, target: str) -> None:
    build_source(source)
    args = ["migrate", "--from", source, "--to", target, "--batch", "100"]

    def copied() -> int:
        with opened(target) as (store, _):
            last = store.last_position()
            return 0 if last is None else int(last)

    kills = 0
    for goal in (300, 2000, 5000):
        if kill_at(args, lambda g=goal: copied() >= g):  # type: ignore[misc]
            kills += 1
    assert kills >= 2
    final = subprocess.run([SKYFERRY, *args, "--json"], capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert all_ids(target) == all_ids(source)
    with opened(source) as (left, _), opened(target) as (right, _):
        assert verify_stores(left, right).ok
