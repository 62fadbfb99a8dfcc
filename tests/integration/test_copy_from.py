"""``copy_from`` between the SQL stores, every pair: what it stores, and what it leaves alone.

SQLite and PostgreSQL copy from any store with the feature ``rows`` (the rows it keeps, a
page at a time, no event decoded); PostgreSQL copies from PostgreSQL server to server.
Whichever way, the target must hold what ``bulk_append`` of the source's events would,
and a call that cannot be judged as a batch must write nothing, not even the pages it
had already written.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from skyferry.adapters.stores import _common
from skyferry.core.errors import ConcurrencyError
from skyferry.core.messages import Event
from skyferry.core.ports import CopyingEventStore, EventStore
from skyferry.migrate.errors import TargetConflict
from skyferry.migrate.migrate import Migration
from skyferry.migrate.verify import verify_stores
from tests.integration.migrate_support import awkward_history as history
from tests.integration.migrate_support import opened, store_url

PAIRS = [("sqlite", "sqlite"), ("sqlite", "postgresql"), ("postgresql", "sqlite"), ("postgresql", "postgresql")]


@pytest.fixture(params=PAIRS, ids=["->".join(pair) for pair in PAIRS])
def stores(request: pytest.FixtureRequest) -> Iterator[tuple[EventStore, CopyingEventStore]]:
    source_scheme, target_scheme = request.param
    with (
        store_url(source_scheme) as source_url,
        store_url(target_scheme) as target_url,
        opened(source_url) as (source, _),
        opened(target_url) as (target, _),
    ):
        assert isinstance(target, CopyingEventStore)
        assert target.copies_from(source)
        yield source, target


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three rows a page, so that one call reads, checks and writes several."""
    monkeypatch.setattr(_common, "ROWS_PAGE", 3)


def everything(store: EventStore) -> list[Event]:
    return [event.with_position(None) for event in store.read_all(limit=10_000)]


def test_copy_from_stores_what_bulk_append_of_the_events_would(
    stores: tuple[EventStore, CopyingEventStore],
) -> None:
    source, target = stores
    prior = history(2, 2, prefix="prior")
    target.bulk_append(prior)
    source.bulk_append(history(5, 4))  # type: ignore[attr-defined]
    position: str | None = None
    calls = 0
    while (copied := target.copy_from(source, position, 7)) is not None and copied.events:
        assert copied.last_position == source.read_all(after=position, limit=7)[-1].position
        assert copied.last_recorded_at == max(e.recorded_at for e in source.read_all(after=position, limit=7))
        position = copied.last_position
        calls += 1
    assert copied is not None
    assert copied.last_position == position
    assert copied.last_recorded_at is None
    assert calls == 3  # 7 + 7 + 6 events
    assert everything(target) == prior + everything(source)
    assert target.stream_version("tenant/ü.s0") == 4


def test_a_call_that_meets_what_the_target_holds_writes_nothing(
    stores: tuple[EventStore, CopyingEventStore],
) -> None:
    """Its first pages would continue their streams; a later one overlaps the target (as
    the first batch of a resumed copy does), or skips a version: ``None``, nothing
    written, and ``bulk_append`` of the same events then takes them."""
    source, target = stores
    events = history(2, 6)
    source.bulk_append(events)  # type: ignore[attr-defined]
    target.bulk_append([event for event in events if event.stream_id == "s-1" and event.version <= 4])
    assert target.copy_from(source, None, 12) is None  # "s-1" at version 1 is already there
    assert len(everything(target)) == 4
    assert target.bulk_append(events) == 8
    assert everything(target)[4:] == [e for e in events if not (e.stream_id == "s-1" and e.version <= 4)]
    later = history(2, 7)[12:]  # version 7 of both streams
    source.bulk_append(later)  # type: ignore[attr-defined]
    target.bulk_append([later[1]._replace(id=str(uuid.uuid4()))])  # the target's own version 7 of "s-1"
    assert target.copy_from(source, source.read_all(limit=12)[-1].position, 12) is None
    assert len(everything(target)) == 13


def test_an_id_the_target_keeps_in_another_stream_refuses_the_whole_call(
    stores: tuple[EventStore, CopyingEventStore],
) -> None:
    source, target = stores
    events = history(3, 3)
    source.bulk_append(events)  # type: ignore[attr-defined]
    target.bulk_append([events[7]._replace(stream_id="elsewhere", version=1)])
    with pytest.raises(ConcurrencyError, match="already stored elsewhere"):
        target.copy_from(source, None, 100)
    assert [event.stream_id for event in everything(target)] == ["elsewhere"]


def test_migrate_takes_the_copy_from_path_and_verifies(stores: tuple[EventStore, CopyingEventStore]) -> None:
    source, target = stores
    source.bulk_append(history(4, 5))  # type: ignore[attr-defined]
    with opened(target.url) as (_, views):
        migration = Migration(source, target, views, batch=6)
        assert migration.report.write_path == "copy_from"
        migration.catch_up()
    assert (migration.report.events, migration.report.written, migration.report.batches) == (20, 20, 4)
    assert migration.writer.written == 0
    assert verify_stores(source, target).ok


def test_a_migration_into_a_target_holding_other_events_names_the_stream_and_version(
    stores: tuple[EventStore, CopyingEventStore],
) -> None:
    """``copy_from`` leaves the batch to the event path, whose writer names the conflict."""
    source, target = stores
    events = history(2, 3)
    source.bulk_append(events)  # type: ignore[attr-defined]
    target.bulk_append([events[0], events[2]._replace(id=str(uuid.uuid4()))])
    with opened(target.url) as (_, views):
        migration = Migration(source, target, views)
        with pytest.raises(TargetConflict, match=r"stream 'tenant/ü.s0' version 2: .*differs in id"):
            migration.catch_up()
    assert len(everything(target)) == 2
