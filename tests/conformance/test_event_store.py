"""The EventStore contract of skyferry.core.ports, run against every registered adapter."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from skyferry.core.errors import ConcurrencyError, EventTooLarge, NotSupported, ValidationError
from skyferry.core.messages import EVENT_SIZE_LIMIT, Event, NewEvent, encode_json, to_micros
from skyferry.core.ports import (
    ANY,
    EVENT_STORE_FEATURES,
    FEATURE_BULK_APPEND,
    FEATURE_BULK_IN_FLIGHT,
    FEATURE_COPY_FROM,
    FEATURE_COUNT,
    FEATURE_ROWS,
    FEATURE_TEMPORAL,
    FEATURE_TRANSACTIONS_ACROSS_STREAMS,
    NO_STREAM,
    EventStore,
    RowsEventStore,
    features_of,
    write_limits,
)


def new(n: int = 0, **kwargs: object) -> NewEvent:
    fields: dict[str, object] = {"type": "Thing", "data": {"n": n}}
    fields.update(kwargs)
    return NewEvent(**fields)  # type: ignore[arg-type]


def stream(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def read_everything(store: EventStore, page: int = 100) -> list[Event]:
    events: list[Event] = []
    after: str | None = None
    while batch := store.read_all(after=after, limit=page):
        events.extend(batch)
        after = batch[-1].position
    return events


# --- append and read back ---------------------------------------------------------------


def test_append_then_read_keeps_every_field(event_store: EventStore) -> None:
    sid = stream()
    occurred = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
    event = NewEvent(
        type="AccountOpened",
        data={"owner": "Zoë", "nested": {"list": [1, "two", None, True, 2.5]}, "empty": {}},
        metadata={"correlation_id": "c-1", "causation_id": "k-9", "actor": "alice"},
        schema_version=3,
        occurred_at=occurred,
    )
    before = datetime.now(UTC) - timedelta(seconds=5)
    result = event_store.append(sid, [event], NO_STREAM)
    after = datetime.now(UTC) + timedelta(seconds=5)

    assert (result.stream_id, result.first_version, result.last_version, result.idempotent) == (
        sid,
        1,
        1,
        False,
    )
    [stored] = event_store.read_stream(sid)
    assert stored.id == event.id
    assert stored.stream_id == sid
    assert stored.version == 1
    assert stored.type == "AccountOpened"
    assert stored.schema_version == 3
    assert stored.data == event.data
    assert stored.metadata == event.metadata
    assert stored.occurred_at == occurred
    assert stored.occurred_at.utcoffset() == timedelta(0)
    assert before <= stored.recorded_at <= after
    assert stored.recorded_at.utcoffset() == timedelta(0)


def test_every_read_gives_whole_events(event_store: EventStore) -> None:
    """Stores build events with one tuple call on their hot paths: every field must be there."""
    sid = stream()
    event_store.append(sid, [new(0), new(1)], NO_STREAM)
    read = [*event_store.read_stream(sid), *event_store.read_stream(sid, backwards=True)]
    read += [e for e in read_everything(event_store) if e.stream_id == sid]
    for event in read:
        assert len(event) == len(Event._fields)
        assert event.position is None or isinstance(event.position, str)
        assert repr(event).startswith("Event(id=")
        assert event.with_position(None) == event.with_position(None)._replace()


def test_recorded_at_given_by_an_import_is_preserved(event_store: EventStore) -> None:
    sid = stream()
    recorded = datetime(2001, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    event_store.append(sid, [new(recorded_at=recorded)], NO_STREAM)
    assert event_store.read_stream(sid)[0].recorded_at == recorded


def test_versions_are_contiguous_across_appends(event_store: EventStore) -> None:
    sid = stream()
    event_store.append(sid, [new(0), new(1)], NO_STREAM)
    result = event_store.append(sid, [new(2), new(3), new(4)], 2)
    assert (result.first_version, result.last_version) == (3, 5)
    assert [e.version for e in event_store.read_stream(sid)] == [1, 2, 3, 4, 5]
    assert [e.data["n"] for e in event_store.read_stream(sid)] == [0, 1, 2, 3, 4]
    assert event_store.stream_version(sid) == 5


def test_missing_stream_reads_empty_with_version_zero(event_store: EventStore) -> None:
    sid = stream()
    assert event_store.read_stream(sid) == []
    assert event_store.stream_version(sid) == 0


# --- expected version ---------------------------------------------------------------------


def test_int_expected_version_mismatch_reports_the_actual_version(event_store: EventStore) -> None:
    sid = stream()
    event_store.append(sid, [new(), new()], NO_STREAM)
    for wrong in (0, 1, 3, 10):
        with pytest.raises(ConcurrencyError) as caught:
            event_store.append(sid, [new()], wrong)
        assert caught.value.actual == 2
        assert caught.value.stream_id == sid
    assert event_store.stream_version(sid) == 2


def test_no_stream_conflicts_when_the_stream_exists(event_store: EventStore) -> None:
    sid = stream()
    event_store.append(sid, [new()], NO_STREAM)
    with pytest.raises(ConcurrencyError) as caught:
        event_store.append(sid, [new()], NO_STREAM)
    assert caught.value.actual == 1
    assert len(event_store.read_stream(sid)) == 1


def test_zero_means_no_stream(event_store: EventStore) -> None:
    sid = stream()
    event_store.append(sid, [new()], 0)
    with pytest.raises(ConcurrencyError):
        event_store.append(sid, [new()], 0)


def test_any_appends_at_the_end_whatever_the_version(event_store: EventStore) -> None:
    sid = stream()
    first = event_store.append(sid, [new(0)], ANY)
    second = event_store.append(sid, [new(1), new(2)], ANY)
    assert (first.first_version, second.first_version, second.last_version) == (1, 2, 3)
    assert [e.data["n"] for e in event_store.read_stream(sid)] == [0, 1, 2]


def test_only_one_of_two_racing_appends_at_the_same_version_wins(event_store: EventStore) -> None:
    sid = stream()
    event_store.append(sid, [new()], NO_STREAM)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def racer() -> None:
        barrier.wait()
        try:
            event_store.append(sid, [new(), new()], 1)
            outcomes.append("won")
        except ConcurrencyError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["won"]
    assert [e.version for e in event_store.read_stream(sid)] == [1, 2, 3]


# --- idempotency ----------------------------------------------------------------------------


def test_reappending_the_same_ids_at_the_same_versions_is_an_idempotent_success(
    event_store: EventStore,
) -> None:
    sid = stream()
    batch = [new(0), new(1)]
    event_store.append(sid, batch, NO_STREAM)
    event_store.append(sid, [new(2)], 2)

    again = event_store.append(sid, batch, NO_STREAM)
    assert (again.first_version, again.last_version, again.idempotent) == (1, 2, True)
    assert event_store.append(sid, batch, ANY).idempotent
    assert event_store.append(sid, batch, 0).idempotent
    assert [e.data["n"] for e in event_store.read_stream(sid)] == [0, 1, 2]
    assert len([e for e in read_everything(event_store) if e.stream_id == sid]) == 3


def test_the_same_id_at_another_version_is_a_conflict(event_store: EventStore) -> None:
    sid = stream()
    first = new(0)
    event_store.append(sid, [first, new(1)], NO_STREAM)
    with pytest.raises(ConcurrencyError) as caught:
        event_store.append(sid, [first], 2)
    assert caught.value.actual == 2
    assert event_store.stream_version(sid) == 2
    # With ANY, a retried append is recognised by its ids wherever they are stored.
    assert event_store.append(sid, [first], ANY).idempotent


def test_a_partly_stored_batch_is_a_conflict_and_adds_nothing(event_store: EventStore) -> None:
    sid = stream()
    stored = new(0)
    event_store.append(sid, [stored], NO_STREAM)
    with pytest.raises(ConcurrencyError):
        event_store.append(sid, [stored, new(1)], NO_STREAM)
    assert [e.id for e in event_store.read_stream(sid)] == [stored.id]


# --- atomicity and validation -----------------------------------------------------------


def test_append_is_all_or_nothing(event_store: EventStore) -> None:
    sid = stream()
    too_big = new(data={"pad": "x" * EVENT_SIZE_LIMIT})
    with pytest.raises(EventTooLarge):
        event_store.append(sid, [new(0), too_big, new(2)], NO_STREAM)
    with pytest.raises(ValidationError):
        event_store.append(sid, [new(0), NewEvent(type="", data={})], NO_STREAM)
    assert event_store.read_stream(sid) == []
    assert event_store.stream_version(sid) == 0


def test_a_batch_of_many_events_lands_whole(event_store: EventStore) -> None:
    sid = stream()
    count = min(150, write_limits(event_store).per_append or 150)
    event_store.append(sid, [new(i) for i in range(count)], NO_STREAM)
    assert [e.version for e in event_store.read_stream(sid)] == list(range(1, count + 1))


def test_an_append_over_the_adapters_cap_is_refused_whole(event_store: EventStore) -> None:
    limit = write_limits(event_store).per_append
    if limit is None:
        pytest.skip(f"{type(event_store).__name__} has no cap on events per append")
    sid = stream()
    with pytest.raises(ValidationError):
        event_store.append(sid, [new(i) for i in range(limit + 1)], NO_STREAM)
    assert event_store.stream_version(sid) == 0


def test_a_write_over_the_stores_byte_cap_is_refused_whole_before_sending(event_store: EventStore) -> None:
    limits = write_limits(event_store)
    if limits.bytes is None:
        pytest.skip(f"{type(event_store).__name__} has no cap on the bytes of one write")
    sid = stream()
    count = limits.bytes // EVENT_SIZE_LIMIT + 1
    assert limits.per_append is None or count <= limits.per_append
    events = [sized(EVENT_SIZE_LIMIT) for _ in range(count)]
    started = time.monotonic()
    with pytest.raises(ValidationError, match="split the write"):
        event_store.append(sid, events, NO_STREAM)
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    imported = [
        Event(e.id, sid, v, e.type, 1, e.data, e.metadata, moment, moment) for v, e in enumerate(events, start=1)
    ]
    if FEATURE_BULK_APPEND in features_of(event_store) and FEATURE_BULK_IN_FLIGHT not in features_of(event_store):
        with pytest.raises(ValidationError, match="split the write"):
            event_store.bulk_append(imported)  # type: ignore[attr-defined]
    assert time.monotonic() - started < 10, "refused up front, not retried as throttling"
    assert event_store.stream_version(sid) == 0
    parts = list(limits.split(exported(sid, range(1, count + 1), data=events)))
    assert len(parts) > 1
    if FEATURE_BULK_IN_FLIGHT in features_of(event_store):  # it cuts the call itself
        assert event_store.bulk_append(imported, in_flight=4) == count  # type: ignore[attr-defined]
        assert [e.id for e in event_store.read_stream(sid)] == [e.id for e in imported]


def sized(size: int) -> NewEvent:
    """An event whose encoded size (data + metadata) is exactly ``size`` bytes."""
    metadata = {"actor": "a"}
    overhead = len(encode_json({"pad": ""})) + len(encode_json(metadata))
    event = new(data={"pad": "y" * (size - overhead)}, metadata=metadata)
    assert event.encoded_size() == size
    return event


def test_an_event_exactly_at_the_size_limit_is_stored_whole(event_store: EventStore) -> None:
    sid = stream()
    event = sized(EVENT_SIZE_LIMIT)
    event_store.append(sid, [event], NO_STREAM)
    [stored] = event_store.read_stream(sid)
    assert stored.data == event.data
    assert len(encode_json(stored.data)) + len(encode_json(stored.metadata)) == EVENT_SIZE_LIMIT


def test_one_byte_over_the_size_limit_is_rejected(event_store: EventStore) -> None:
    sid = stream()
    with pytest.raises(EventTooLarge) as caught:
        event_store.append(sid, [sized(EVENT_SIZE_LIMIT + 1)], NO_STREAM)
    assert (caught.value.size, caught.value.limit) == (EVENT_SIZE_LIMIT + 1, EVENT_SIZE_LIMIT)
    assert event_store.stream_version(sid) == 0


def test_multibyte_characters_count_as_their_utf8_bytes(event_store: EventStore) -> None:
    sid = stream()
    overhead = len(encode_json({"pad": ""})) + len(encode_json({}))
    over = new(data={"pad": "€" * ((EVENT_SIZE_LIMIT - overhead) // 3 + 1)})
    with pytest.raises(EventTooLarge):
        event_store.append(sid, [over], NO_STREAM)


@pytest.mark.parametrize(
    "sid",
    [
        "konto/Ärger:ü.日本-1_x",
        "Σ-Δ:λ",
        "a",
        "x" * 200,
        "tenant:7/account-١٢٣",
    ],
)
def test_unicode_and_punctuated_stream_ids_round_trip(event_store: EventStore, sid: str) -> None:
    unique = f"{sid[:180]}{uuid.uuid4().hex[:8]}" if len(sid) < 190 else sid[:-8] + uuid.uuid4().hex[:8]
    event_store.append(unique, [new(0), new(1)], NO_STREAM)
    assert [e.stream_id for e in event_store.read_stream(unique)] == [unique, unique]
    assert event_store.stream_version(unique) == 2
    assert unique in set(event_store.list_streams(unique[:3]))


@pytest.mark.parametrize("bad", ["", "x" * 201, "has space", "tab\there", "star*", "gt>", "new\nline", "emoji😀"])
def test_invalid_stream_ids_are_rejected_before_writing(event_store: EventStore, bad: str) -> None:
    with pytest.raises(ValidationError):
        event_store.append(bad, [new()], NO_STREAM)


def test_data_and_metadata_must_be_json_objects(event_store: EventStore) -> None:
    sid = stream()
    with pytest.raises(ValidationError):
        event_store.append(sid, [NewEvent(type="T", data=[1, 2])], NO_STREAM)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        event_store.append(sid, [NewEvent(type="T", data={"when": object()})], NO_STREAM)
    with pytest.raises(ValidationError):
        event_store.append(sid, [], NO_STREAM)
    with pytest.raises(ValidationError):
        event_store.append(sid, [NewEvent(type="T", data={}, id="not-a-uuid")], NO_STREAM)
    assert event_store.stream_version(sid) == 0


# --- read_stream ----------------------------------------------------------------------------


@pytest.fixture
def ten(event_store: EventStore) -> str:
    sid = stream()
    event_store.append(sid, [new(i) for i in range(1, 11)], NO_STREAM)
    return sid


@pytest.mark.parametrize(
    ("kwargs", "versions"),
    [
        ({}, list(range(1, 11))),
        ({"from_version": 4}, list(range(4, 11))),
        ({"from_version": 4, "to_version": 6}, [4, 5, 6]),
        ({"to_version": 3}, [1, 2, 3]),
        ({"limit": 2}, [1, 2]),
        ({"from_version": 9, "limit": 5}, [9, 10]),
        ({"from_version": 11}, []),
        ({"backwards": True}, list(range(10, 0, -1))),
        ({"backwards": True, "limit": 3}, [10, 9, 8]),
        ({"backwards": True, "to_version": 5, "limit": 2}, [5, 4]),
        ({"backwards": True, "from_version": 8}, [10, 9, 8]),
        ({"from_version": 3, "to_version": 3}, [3]),
        ({"from_version": 5, "to_version": 4}, []),
    ],
)
def test_read_stream_ranges_limits_and_direction(
    event_store: EventStore, ten: str, kwargs: dict[str, object], versions: list[int]
) -> None:
    events = event_store.read_stream(ten, **kwargs)  # type: ignore[arg-type]
    assert [e.version for e in events] == versions
    assert [e.data["n"] for e in events] == versions


def test_a_long_stream_reads_whole_in_every_window(event_store: EventStore) -> None:
    """Windows of a 250-event stream, each side of where a store may change how it reads
    (PostgreSQL streams what follows its first 100 rows)."""
    sid = stream("long")
    step = min(50, write_limits(event_store).per_append or 50)  # within the store's cap of events per append
    for start in range(0, 250, step):
        event_store.append(sid, [new(n) for n in range(start + 1, min(start + step, 250) + 1)], start)
    versions = list(range(1, 251))
    windows: list[tuple[dict[str, object], list[int]]] = [
        ({}, versions),
        ({"limit": 100}, versions[:100]),
        ({"limit": 101}, versions[:101]),
        ({"limit": 180}, versions[:180]),
        ({"from_version": 120}, versions[119:]),
        ({"from_version": 20, "to_version": 230, "limit": 150}, versions[19:169]),
        ({"backwards": True}, versions[::-1]),
        ({"backwards": True, "limit": 100}, versions[::-1][:100]),
        ({"backwards": True, "limit": 130}, versions[::-1][:130]),
        ({"backwards": True, "from_version": 30, "to_version": 240}, versions[29:240][::-1]),
    ]
    for kwargs, expected in windows:
        events = event_store.read_stream(sid, **kwargs)  # type: ignore[arg-type]
        assert [e.version for e in events] == expected, kwargs
        assert [e.data["n"] for e in events] == expected, kwargs
        assert all(e.stream_id == sid for e in events), kwargs


def test_list_streams_by_prefix_in_order(event_store: EventStore) -> None:
    tag = uuid.uuid4().hex[:8]
    names = [f"acct-{tag}-b", f"acct-{tag}-a", f"xfer-{tag}-c", f"acct-{tag}-c"]
    for name in names:
        event_store.append(name, [new()], NO_STREAM)
    assert list(event_store.list_streams(f"acct-{tag}")) == sorted(n for n in names if n.startswith("acct"))
    assert f"xfer-{tag}-c" in set(event_store.list_streams())


# --- read_all -------------------------------------------------------------------------------


def test_read_all_returns_every_event_in_append_order_with_positions(event_store: EventStore) -> None:
    a, b = stream("a"), stream("b")
    event_store.append(a, [new(1)], NO_STREAM)
    event_store.append(b, [new(2), new(3)], NO_STREAM)
    event_store.append(a, [new(4)], 1)
    mine = [e for e in read_everything(event_store, page=2) if e.stream_id in (a, b)]
    assert [(e.stream_id, e.version, e.data["n"]) for e in mine] == [
        (a, 1, 1),
        (b, 1, 2),
        (b, 2, 3),
        (a, 2, 4),
    ]
    assert all(isinstance(e.position, str) and e.position for e in mine)
    assert len({e.position for e in mine}) == 4
    assert event_store.last_position() == read_everything(event_store)[-1].position


def test_read_all_pages_and_positions_are_stable(event_store: EventStore) -> None:
    for i in range(7):
        event_store.append(stream(), [new(i), new(i + 100)], NO_STREAM)
    whole = read_everything(event_store, page=1000)
    paged = read_everything(event_store, page=3)
    assert [(e.id, e.position) for e in paged] == [(e.id, e.position) for e in whole]
    middle = whole[5].position
    again = event_store.read_all(after=middle, limit=4)
    assert [e.id for e in again] == [e.id for e in whole[6:10]]
    assert [e.id for e in event_store.read_all(after=middle, limit=4)] == [e.id for e in again]
    assert event_store.read_all(after=whole[-1].position, limit=10) == []


def test_read_all_is_complete_while_writers_append_concurrently(event_store: EventStore) -> None:
    """4 writers append (some multi-event, some conflicting); a reader tails read_all.

    Every event must be seen exactly once, each stream's events in version order.
    """
    writers, per_writer = 4, 40
    stop = threading.Event()
    seen: list[Event] = []
    errors: list[BaseException] = []
    start = event_store.last_position()
    tag = uuid.uuid4().hex[:8]

    def write(w: int) -> None:
        rng = random.Random(w)
        try:
            for i in range(per_writer):
                sid = f"c{tag}-{rng.randrange(3)}"
                batch = [new(w * 1000 + i, metadata={"w": w}) for _ in range(rng.choice([1, 1, 2, 3]))]
                while True:
                    try:
                        event_store.append(sid, batch, event_store.stream_version(sid))
                        break
                    except ConcurrencyError:
                        time.sleep(rng.random() / 1000)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def tail() -> None:
        after = start
        try:
            while True:
                done = stop.is_set()
                batch = event_store.read_all(after=after, limit=50)
                seen.extend(batch)
                if batch:
                    after = batch[-1].position
                elif done:
                    return
                else:
                    time.sleep(0.002)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    reader = threading.Thread(target=tail)
    reader.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join(timeout=120)
    assert not errors, errors

    mine = [e for e in seen if e.stream_id.startswith(f"c{tag}-")]
    stored = [e for sid in sorted({e.stream_id for e in mine}) for e in event_store.read_stream(sid)]
    assert len(stored) >= writers * per_writer
    assert len({e.id for e in mine}) == len(mine), "an event was seen twice"
    assert {e.id for e in mine} == {e.id for e in stored}, "the tailing reader skipped events"
    for sid in {e.stream_id for e in mine}:
        assert [e.version for e in mine if e.stream_id == sid] == list(range(1, event_store.stream_version(sid) + 1))
    assert [e.id for e in read_everything(event_store) if e.stream_id.startswith(f"c{tag}-")] == [e.id for e in mine], (
        "a re-read gave another order"
    )


# --- optional features ------------------------------------------------------------------


def test_declared_features_are_known(event_store: EventStore) -> None:
    assert features_of(event_store) <= EVENT_STORE_FEATURES


@pytest.mark.parametrize(
    ("feature", "method", "args"),
    [
        (FEATURE_BULK_APPEND, "bulk_append", ([],)),
        (FEATURE_TEMPORAL, "read_stream_as_of", ("s-1", datetime.now(UTC))),
        (FEATURE_TRANSACTIONS_ACROSS_STREAMS, "append_many", ([],)),
        (FEATURE_COUNT, "count_after", (None,)),
        (FEATURE_COPY_FROM, "copy_from", (None, None, 1)),
        (FEATURE_ROWS, "read_rows", (None, 1)),
    ],
)
def test_undeclared_features_are_really_absent(
    event_store: EventStore, feature: str, method: str, args: tuple[object, ...]
) -> None:
    if feature in features_of(event_store):
        pytest.skip(f"{feature} is declared; its own tests cover it")
    if hasattr(event_store, method):
        with pytest.raises(NotSupported):
            getattr(event_store, method)(*args)


def requires(store: EventStore, feature: str) -> None:
    if feature not in features_of(store):
        pytest.skip(f"{type(store).__name__} does not declare {feature}")


def exported(
    sid: str, versions: range, ids: list[str] | None = None, data: list[NewEvent] | None = None
) -> list[Event]:
    moment = datetime(2020, 5, 1, 12, 0, 0, 1, tzinfo=UTC)
    return [
        Event(
            id=ids[i] if ids else str(uuid.uuid4()),
            stream_id=sid,
            version=v,
            type="Imported",
            schema_version=2,
            data=data[i].data if data else {"v": v},
            metadata=data[i].metadata if data else {"source": "test"},
            occurred_at=moment + timedelta(seconds=v),
            recorded_at=moment + timedelta(seconds=v, microseconds=7),
        )
        for i, v in enumerate(versions)
    ]


def test_read_rows_are_read_all_as_the_store_keeps_it(event_store: EventStore) -> None:
    """Feature ``rows``: the same events, order and positions as ``read_all``, their JSON as
    text that decodes to the event's, timestamps as exact microseconds (before 1970 too)."""
    requires(event_store, FEATURE_ROWS)
    assert isinstance(event_store, RowsEventStore)
    sid = stream("rows")
    events = exported(sid, range(1, 6))
    events[1] = events[1]._replace(
        data={"z": 1, "a": [1.5, None, "é\n\u2028"], "m": {"b": True}},
        occurred_at=datetime(1969, 12, 31, 23, 59, 59, 500001, tzinfo=UTC),
        recorded_at=datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    )
    events[2] = events[2]._replace(recorded_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    event_store.bulk_append(events)  # type: ignore[attr-defined]
    every = read_everything(event_store, page=3)
    rows: list[tuple[object, ...]] = []
    after: str | None = None
    while True:
        page, last = event_store.read_rows(after, 3)
        if not page:
            assert last == after
            break
        rows.extend(page)
        after = last
    assert len(rows) == len(every)
    assert after == every[-1].position
    mine = [(row, event) for row, event in zip(rows, every, strict=True) if event.stream_id == sid]
    assert [event.id for _, event in mine] == [event.id for event in events]
    for row, event in mine:
        assert row[1:6] == (event.id, event.stream_id, event.version, event.type, event.schema_version)
        assert (orjson.loads(row[6]), orjson.loads(row[7])) == (event.data, event.metadata)  # type: ignore[arg-type]
        assert (row[8], row[9]) == (to_micros(event.occurred_at), to_micros(event.recorded_at))


def test_bulk_append_keeps_versions_ids_and_timestamps(event_store: EventStore) -> None:
    requires(event_store, FEATURE_BULK_APPEND)
    a, b = stream("bulk"), stream("bulk")
    events = exported(a, range(1, 4)) + exported(b, range(1, 3))
    assert event_store.bulk_append(events) == 5  # type: ignore[attr-defined]
    for sid in (a, b):
        want = [e for e in events if e.stream_id == sid]
        got = event_store.read_stream(sid)
        assert [
            (e.id, e.version, e.type, e.schema_version, e.data, e.metadata, e.occurred_at, e.recorded_at) for e in got
        ] == [
            (e.id, e.version, e.type, e.schema_version, e.data, e.metadata, e.occurred_at, e.recorded_at) for e in want
        ]


def test_bulk_append_gives_positions_in_the_order_given(event_store: EventStore) -> None:
    requires(event_store, FEATURE_BULK_APPEND)
    a, b, c = stream("ord"), stream("ord"), stream("ord")
    ea, eb, ec = exported(a, range(1, 4)), exported(b, range(1, 3)), exported(c, range(1, 3))
    interleaved = [ea[0], eb[0], ea[1], ec[0], eb[1], ea[2], ec[1]]
    assert event_store.bulk_append(interleaved) == 7  # type: ignore[attr-defined]
    mine = [e.id for e in read_everything(event_store) if e.stream_id in (a, b, c)]
    assert mine == [e.id for e in interleaved]


def test_bulk_append_skips_what_is_stored_and_continues(event_store: EventStore) -> None:
    requires(event_store, FEATURE_BULK_APPEND)
    sid = stream("bulk")
    events = exported(sid, range(1, 6))
    assert event_store.bulk_append(events[:3]) == 3  # type: ignore[attr-defined]
    assert event_store.bulk_append(events) == 2  # type: ignore[attr-defined]
    assert event_store.bulk_append(events) == 0  # type: ignore[attr-defined]
    assert [e.id for e in event_store.read_stream(sid)] == [e.id for e in events]


def test_bulk_append_refuses_different_events_and_writes_nothing(event_store: EventStore) -> None:
    requires(event_store, FEATURE_BULK_APPEND)
    sid, other = stream("bulk"), stream("bulk")
    event_store.append(sid, [new(0)], NO_STREAM)
    with pytest.raises(ConcurrencyError) as caught:
        event_store.bulk_append(exported(other, range(1, 3)) + exported(sid, range(1, 3)))  # type: ignore[attr-defined]
    assert sid in str(caught.value)
    assert event_store.stream_version(other) == 0
    with pytest.raises(ConcurrencyError):
        event_store.bulk_append(exported(other, range(2, 4)))  # type: ignore[attr-defined]  # gap
    assert event_store.stream_version(other) == 0


def test_bulk_append_takes_each_stream_in_version_order(event_store: EventStore) -> None:
    """Events continue their stream in the order given: a stream's versions out of order are refused."""
    requires(event_store, FEATURE_BULK_APPEND)
    sid, other = stream("bulk"), stream("bulk")
    first, second = exported(sid, range(1, 3))
    with pytest.raises(ConcurrencyError) as caught:
        event_store.bulk_append([*exported(other, range(1, 2)), second, first])  # type: ignore[attr-defined]
    assert sid in str(caught.value)
    assert (event_store.stream_version(sid), event_store.stream_version(other)) == (0, 0)


def in_parts(store: EventStore, streams: list[str]) -> list[Event]:
    """Exported events of ``streams``, taking turns, enough for ``bulk_append`` to cut them
    (each stream's together) into more than four parts."""
    per_stream = 40
    limits = write_limits(store)
    while True:
        runs = [exported(sid, range(1, per_stream + 1)) for sid in streams]
        uncapped = limits.units is None and limits.bytes is None  # the store's parts are its streams
        if uncapped or len(list(limits.split([e for run in runs for e in run]))) > 4:
            return [run[i] for i in range(per_stream) for run in runs]
        per_stream *= 2


def test_bulk_append_in_flight_keeps_the_order_given_across_its_parts(event_store: EventStore) -> None:
    requires(event_store, FEATURE_BULK_IN_FLIGHT)
    streams = [stream("fly") for _ in range(7)]
    events = in_parts(event_store, streams)
    assert event_store.bulk_append(events, in_flight=8) == len(events)  # type: ignore[attr-defined]
    mine = [e for e in read_everything(event_store) if e.stream_id in streams]
    assert [e.id for e in mine] == [e.id for e in events]
    for sid in streams:
        assert [e.version for e in event_store.read_stream(sid)] == list(range(1, len(events) // 7 + 1))
    assert event_store.bulk_append(events, in_flight=8) == 0  # type: ignore[attr-defined]
    assert [e.id for e in read_everything(event_store) if e.stream_id in streams] == [e.id for e in events]


def test_bulk_append_in_flight_resumed_stores_the_rest_once(event_store: EventStore) -> None:
    """A call again after a part of it was stored: the rest is stored, nothing twice, and
    ``read_all`` passes over the positions the stored part no longer needs."""
    requires(event_store, FEATURE_BULK_IN_FLIGHT)
    streams = [stream("again") for _ in range(5)]
    events = in_parts(event_store, streams)
    first = len(events) // 3
    assert event_store.bulk_append(events[:first], in_flight=4) == first  # type: ignore[attr-defined]
    assert event_store.bulk_append(events, in_flight=4) == len(events) - first  # type: ignore[attr-defined]
    after = stream("after")
    event_store.append(after, [new(0)], NO_STREAM)
    everything = [e for e in read_everything(event_store) if e.stream_id in [*streams, after]]
    ids = [e.id for e in everything]
    assert len(ids) == len(set(ids)) == len(events) + 1
    assert set(ids) == {e.id for e in events} | {event_store.read_stream(after)[0].id}
    assert everything[-1].stream_id == after
    assert event_store.last_position() == everything[-1].position


def test_bulk_append_in_flight_failing_leaves_each_stream_a_prefix(event_store: EventStore) -> None:
    """An event that clashes stops the call: every stream holds a prefix of its events, and
    ``read_all`` goes past the positions that were not used to what is appended next."""
    requires(event_store, FEATURE_BULK_IN_FLIGHT)
    streams = [stream("clash") for _ in range(6)]
    events = in_parts(event_store, streams)
    middle = len(events) // 12
    clash = next(e for e in events if e.stream_id == streams[2] and e.version == middle)
    event_store.append(stream("holder"), [NewEvent("Thing", {}, {}, id=clash.id)], NO_STREAM)
    try:
        event_store.append(stream("holder"), [NewEvent("Thing", {}, {}, id=clash.id)], NO_STREAM)
    except (ConcurrencyError, ValidationError):
        pass
    else:
        pytest.skip(
            f"{type(event_store).__name__} keeps event ids unique per stream only, so an id stored in another "
            "stream is no clash; its own tests fail a part of the call instead"
        )
    with pytest.raises(ConcurrencyError) as caught:
        event_store.bulk_append(events, in_flight=4)  # type: ignore[attr-defined]
    assert streams[2] in str(caught.value)
    stored = 0
    for sid in streams:
        versions = [e.version for e in event_store.read_stream(sid)]
        assert versions == list(range(1, len(versions) + 1)), f"{sid} holds a gap"
        stored += len(versions)
    assert event_store.stream_version(streams[2]) < middle
    assert event_store.last_position() == read_everything(event_store)[-1].position  # past the gaps at the end
    after = stream("after")
    event_store.append(after, [new(0)], NO_STREAM)
    mine = [e for e in read_everything(event_store) if e.stream_id in [*streams, after]]
    assert len(mine) == stored + 1
    assert mine[-1].stream_id == after


def test_temporal_reads_the_stream_as_it_was(event_store: EventStore) -> None:
    requires(event_store, FEATURE_TEMPORAL)
    sid = stream("t")
    base = datetime(2022, 3, 1, tzinfo=UTC)
    event_store.append(sid, [new(i, recorded_at=base + timedelta(hours=i)) for i in range(5)], NO_STREAM)
    as_of = event_store.read_stream_as_of(sid, base + timedelta(hours=2, minutes=30))  # type: ignore[attr-defined]
    assert [e.version for e in as_of] == [1, 2, 3]
    exact = event_store.read_stream_as_of(sid, base + timedelta(hours=1))  # type: ignore[attr-defined]
    assert [e.version for e in exact] == [1, 2]
    assert event_store.read_stream_as_of(sid, base - timedelta(seconds=1)) == []  # type: ignore[attr-defined]


def test_count_after_counts_what_read_all_would_return(event_store: EventStore) -> None:
    requires(event_store, FEATURE_COUNT)
    counting = event_store
    before, start = counting.count_after(), counting.last_position()  # type: ignore[attr-defined]
    a, b = stream("c"), stream("c")
    event_store.append(a, [new(), new(), new()], NO_STREAM)
    event_store.append(b, [new(), new()], NO_STREAM)
    fresh = event_store.read_all(after=start, limit=100)
    assert len(fresh) == 5
    assert counting.count_after() == before + 5  # type: ignore[attr-defined]
    assert counting.count_after(start) == 5  # type: ignore[attr-defined]
    assert counting.count_after(fresh[1].position) == 3  # type: ignore[attr-defined]
    assert counting.count_after(fresh[-1].position) == 0  # type: ignore[attr-defined]


def test_append_many_is_atomic_across_streams(event_store: EventStore) -> None:
    requires(event_store, FEATURE_TRANSACTIONS_ACROSS_STREAMS)
    a, b = stream("m"), stream("m")
    event_store.append(b, [new()], NO_STREAM)
    with pytest.raises(ConcurrencyError):
        event_store.append_many([(a, [new()], NO_STREAM), (b, [new()], NO_STREAM)])  # type: ignore[attr-defined]
    assert event_store.stream_version(a) == 0
    assert event_store.stream_version(b) == 1
    results = event_store.append_many([(a, [new(), new()], NO_STREAM), (b, [new()], 1)])  # type: ignore[attr-defined]
    assert [(r.stream_id, r.last_version) for r in results] == [(a, 2), (b, 2)]
