"""PostgreSQL ``append``: many events by binary COPY after the version check, few by one pipelined INSERT.

Appends of ``_COPY_FROM`` events or more go by COPY; every guarantee of ``append`` must hold
on both paths: the same stored events, the version check, idempotent repeats, an id stored
in another stream refused, ``ANY``, validation before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from skyferry.adapters.stores.postgres import _COPY_FROM, PostgresEventStore, _appended_rows_binary
from skyferry.core.errors import ConcurrencyError, EventTooLarge
from skyferry.core.messages import NewEvent
from skyferry.core.ports import ANY, NO_STREAM
from tests.services import postgres

TRICKY = {"text": 'tab\there, newline\n, back\\slash, quote", ünïcödé, 🚀', "nested": {"a": [1, 2.5, None, True]}}


@pytest.fixture
def store() -> Iterator[PostgresEventStore]:
    with postgres.fresh_schema() as url:
        s = PostgresEventStore(url)
        yield s
        s.close()


def events(count: int, **data: object) -> list[NewEvent]:
    return [NewEvent("Happened", {"n": n, **TRICKY, **data}, {"m": n}) for n in range(count)]


@pytest.mark.parametrize("count", [_COPY_FROM - 1, _COPY_FROM, 1000])
def test_both_paths_store_the_same_events(store: PostgresEventStore, count: int) -> None:
    first = events(count)
    recorded = datetime(2020, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)
    first[0] = NewEvent("Imported", {"x": 1}, recorded_at=recorded, schema_version=3)
    result = store.append("s-1", first, NO_STREAM)
    assert (result.first_version, result.last_version, result.idempotent) == (1, count, False)
    stored = store.read_stream("s-1")
    assert [e.version for e in stored] == list(range(1, count + 1))
    for new, old in zip(first, stored, strict=True):
        assert (old.id, old.type, old.schema_version, old.data, old.metadata, old.occurred_at) == (
            new.id,
            new.type,
            new.schema_version,
            new.data,
            new.metadata,
            new.occurred_at,
        )
    assert stored[0].recorded_at == recorded
    assert len({e.recorded_at for e in stored[1:]}) <= 1  # one append, one time of recording


def test_a_stale_expected_version_is_a_conflict_and_stores_nothing(store: PostgresEventStore) -> None:
    store.append("s-1", events(3), NO_STREAM)
    with pytest.raises(ConcurrencyError) as caught:
        store.append("s-1", events(_COPY_FROM), 1)
    assert caught.value.actual == 3
    assert store.stream_version("s-1") == 3


def test_the_same_append_again_is_idempotent(store: PostgresEventStore) -> None:
    batch = events(_COPY_FROM * 2)
    store.append("s-1", batch, NO_STREAM)
    again = store.append("s-1", batch, NO_STREAM)
    assert (again.first_version, again.last_version, again.idempotent) == (1, len(batch), True)
    assert store.stream_version("s-1") == len(batch)


def test_an_id_stored_in_another_stream_is_refused_and_nothing_stored(store: PostgresEventStore) -> None:
    batch = events(_COPY_FROM)
    store.append("s-1", batch[:1], NO_STREAM)
    with pytest.raises(ConcurrencyError, match=r"already stored in stream .s-1."):
        store.append("s-2", batch, NO_STREAM)
    assert store.stream_version("s-2") == 0


def test_any_appends_after_whatever_is_there(store: PostgresEventStore) -> None:
    store.append("s-1", events(2), NO_STREAM)
    result = store.append("s-1", events(_COPY_FROM), ANY)
    assert (result.first_version, result.last_version) == (3, 2 + _COPY_FROM)
    assert [e.version for e in store.read_stream("s-1")] == list(range(1, 3 + _COPY_FROM))


def test_an_invalid_event_anywhere_refuses_the_whole_append_before_writing(store: PostgresEventStore) -> None:
    batch = events(_COPY_FROM * 2)
    batch[-1] = NewEvent("Bad", {"big": "x" * 300_000})
    with pytest.raises(EventTooLarge):
        store.append("s-1", batch, NO_STREAM)
    assert store.stream_version("s-1") == 0


def test_rows_the_binary_format_cannot_hold_exactly_go_by_insert() -> None:
    now = datetime.now(UTC)
    batch = events(2)
    encoded = [(b"{}", b"{}")] * 2
    assert _appended_rows_binary("s", 1, batch, encoded, now) is not None
    assert _appended_rows_binary("s", 2**31 - 1, batch, encoded, now) is None  # a version past 32 bits
    wide = [batch[0], NewEvent("Happened", {}, schema_version=2**31)]
    assert _appended_rows_binary("s", 1, wide, encoded, now) is None


@pytest.mark.parametrize("count", [1, _COPY_FROM])
def test_after_a_refused_append_the_connection_is_idle_and_the_next_append_succeeds(
    store: PostgresEventStore, count: int
) -> None:
    batch = events(count)
    store.append("s-1", batch[:1], NO_STREAM)
    with pytest.raises(ConcurrencyError):
        store.append("s-2", batch, NO_STREAM)  # the INSERT (or COPY) fails on the unique id
    with pytest.raises(ConcurrencyError):
        store.append("s-1", events(count), 0)  # the version check fails
    with store.db.connection("checking") as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert store.append("s-3", events(count), NO_STREAM).last_version == count
    assert [e.version for e in store.read_stream("s-1")] == [1]
