"""Kernel command handling: snapshots, upcasters, idempotency, retry, validation, temporal loads."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skyferry.adapters.stores.memory import MemoryEventStore, MemoryViewStore
from skyferry.core.application import (
    SNAPSHOTS,
    Application,
    CommandResult,
    IdempotencyKeyReused,
    deterministic_event_id,
)
from skyferry.core.errors import (
    ConcurrencyError,
    ConfigurationError,
    EventTooLarge,
    StreamNotFound,
    ValidationError,
    WriteFenced,
)
from skyferry.core.messages import NewEvent
from skyferry.core.ports import ViewChange
from skyferry.core.upcasting import Upcasters
from tests.threads import at_once
from tests.unit.kernel_fakes import (
    Add,
    Counter,
    InterferingStore,
    NonTemporalStore,
    Reset,
    TooNegative,
    decide_add,
    decide_reset,
)


def make_app(events: object | None = None, views: object | None = None, **options: object) -> Application:
    app = Application(events or MemoryEventStore(), views or MemoryViewStore(), **options)  # type: ignore[arg-type]
    app.register(Add, Counter, lambda c: c.counter_id, decide_add)
    app.register(Reset, Counter, lambda c: c.counter_id, decide_reset)
    return app


def upcasters_v1_to_v2() -> Upcasters:
    upcasters = Upcasters()
    upcasters.add("Added", 1, lambda data: {"amount": data["n"]})
    return upcasters


# -- snapshots ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    amounts=st.lists(st.integers(min_value=-5, max_value=9), min_size=1, max_size=40),
    every=st.integers(min_value=1, max_value=7),
)
def test_loading_with_and_without_snapshots_gives_identical_state(amounts: list[int], every: int) -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    writer = make_app(events, views, snapshot_every=every, cache_size=0)
    for amount in amounts:
        with contextlib.suppress(TooNegative):
            writer.execute(Add(counter_id="c", amount=amount))
        if amount == 0:
            writer.execute(Reset(counter_id="c"))
    plain = make_app(events, views, snapshot_every=0, cache_size=0)
    with_snapshots = make_app(events, views, snapshot_every=every, cache_size=0)
    version = events.stream_version("counter-c")
    if version == 0:
        return
    if version >= every:
        assert views.get(SNAPSHOTS, "counter-c") is not None
        assert writer.snapshots_written == version // every
    expected = plain.load(Counter, "c")
    loaded = with_snapshots.load(Counter, "c")
    assert (loaded.version, loaded.snapshot()) == (expected.version, expected.snapshot())
    for at in range(1, version + 1):
        past, past_plain = with_snapshots.load(Counter, "c", at_version=at), plain.load(Counter, "c", at_version=at)
        assert (past.version, past.snapshot()) == (past_plain.version, past_plain.snapshot())


def test_snapshot_of_another_schema_or_class_is_ignored() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    app = make_app(events, views, snapshot_every=2, cache_size=0)
    for amount in (1, 2, 3):
        app.execute(Add(counter_id="c", amount=amount))
    bogus = {"type": "Counter", "schema": 99, "version": 3, "state": {"total": 1000, "seen": []}}
    views.commit(SNAPSHOTS, [ViewChange(SNAPSHOTS, "counter-c", bogus)], {})
    assert app.load(Counter, "c").total == 6
    other = {"type": "Account", "schema": 1, "version": 3, "state": {"total": 1000, "seen": []}}
    views.commit(SNAPSHOTS, [ViewChange(SNAPSHOTS, "counter-c", other)], {})
    assert app.load(Counter, "c").total == 6


@pytest.mark.parametrize("fastforward", [True, False])
def test_the_state_cache_sees_events_of_other_writers(fastforward: bool) -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    first = make_app(events, views, fastforward=fastforward, max_conflict_retries=0)
    second = make_app(events, views)
    first.execute(Add(counter_id="c", amount=5))
    second.execute(Add(counter_id="c", amount=7))
    result = first.execute(Add(counter_id="c", amount=1))
    assert result.first_version == 3
    assert first.load(Counter, "c").total == 13
    # A rejection decided on a stale cache is checked again on fresh state.
    second.execute(Add(counter_id="c", amount=100))
    taken = first.execute(Add(counter_id="c", amount=-110))
    assert taken.first_version == 5
    assert first.load(Counter, "c").total == 3
    with pytest.raises(TooNegative):
        first.execute(Add(counter_id="c", amount=-4))
    assert events.stream_version("counter-c") == 5


def test_without_fastforward_a_cached_stream_is_not_read_before_deciding() -> None:
    events = MemoryEventStore()
    app = make_app(events, fastforward=False)
    app.execute(Add(counter_id="c", amount=1))
    reads: list[str] = []
    original = events.read_stream

    def counting_read(stream_id: str, *args: object, **kwargs: object) -> object:
        reads.append(stream_id)
        return original(stream_id, *args, **kwargs)  # type: ignore[arg-type]

    events.read_stream = counting_read  # type: ignore[method-assign,assignment]
    app.execute(Add(counter_id="c", amount=1))
    assert reads == []
    app.execute(Add(counter_id="c", amount=1), expected_version=2)
    assert reads == ["counter-c"]


# -- upcasters ----------------------------------------------------------------------------


def test_upcasters_apply_on_read_and_never_rewrite_the_store() -> None:
    events = MemoryEventStore()
    events.append("counter-u", [NewEvent("Added", {"n": 4}), NewEvent("Added", {"n": 6})], 0)
    app = make_app(events, upcasters=upcasters_v1_to_v2())
    counter = app.load(Counter, "u")
    assert counter.total == 10
    app.execute(Add(counter_id="u", amount=5))
    assert app.load(Counter, "u").seen == [4, 6, 5]
    stored = events.read_stream("counter-u")
    assert [(e.schema_version, e.data) for e in stored] == [
        (1, {"n": 4}),
        (1, {"n": 6}),
        (2, {"amount": 5}),
    ]
    without = make_app(events)
    with pytest.raises(KeyError):
        without.load(Counter, "u")


def test_upcasters_chain_and_reject_a_second_registration_of_a_step() -> None:
    upcasters = upcasters_v1_to_v2()
    upcasters.add("Added", 2, lambda data: {"amount": data["amount"] * 10})
    events = MemoryEventStore()
    events.append("counter-x", [NewEvent("Added", {"n": 1}), NewEvent("Added", {"amount": 2}, schema_version=2)], 0)
    upcast = upcasters.upcast_all(events.read_stream("counter-x"))
    assert [(e.schema_version, e.data) for e in upcast] == [(3, {"amount": 10}), (3, {"amount": 20})]
    assert upcasters.latest("Added") == 3
    with pytest.raises(ConfigurationError):
        upcasters.add("Added", 1, lambda data: data)


# -- idempotency --------------------------------------------------------------------------


def test_same_idempotency_key_returns_the_first_result_and_stores_nothing_twice() -> None:
    events = MemoryEventStore()
    app = make_app(events)
    first = app.execute(Add(counter_id="c", amount=3), idempotency_key="req-1")
    again = app.execute(Add(counter_id="c", amount=3), idempotency_key="req-1")
    assert not first.replayed
    assert again.replayed
    assert [e.id for e in again.events] == [e.id for e in first.events]
    assert (again.first_version, again.last_version) == (1, 1)
    assert events.stream_version("counter-c") == 1
    assert first.events[0].id == deterministic_event_id("counter-c", "req-1", 0)


def test_reusing_a_key_for_another_command_is_rejected_and_stores_nothing() -> None:
    events = MemoryEventStore()
    app = make_app(events)
    app.execute(Add(counter_id="c", amount=3), idempotency_key="req-1")
    with pytest.raises(IdempotencyKeyReused):
        app.execute(Add(counter_id="c", amount=4), idempotency_key="req-1")
    assert events.stream_version("counter-c") == 1


def test_idempotency_survives_a_lost_record_even_after_later_commands() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    app = make_app(events, views)
    first = app.execute(Add(counter_id="c", amount=3), idempotency_key="req-1")
    app.execute(Add(counter_id="c", amount=-3))
    views.drop("$idempotency")  # as after importing the events into a fresh store
    again = make_app(events, views).execute(Add(counter_id="c", amount=3), idempotency_key="req-1")
    assert again.replayed
    assert [e.id for e in again.events] == [e.id for e in first.events]
    assert events.stream_version("counter-c") == 2


def test_idempotency_survives_a_lost_record_when_the_rule_would_now_reject() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    app = make_app(events, views)
    app.execute(Add(counter_id="c", amount=5))
    first = app.execute(Add(counter_id="c", amount=-5), idempotency_key="take-5")
    views.drop("$idempotency")
    again = app.execute(Add(counter_id="c", amount=-5), idempotency_key="take-5")
    assert again.replayed
    assert again.events[0].id == first.events[0].id
    with pytest.raises(TooNegative):
        app.execute(Add(counter_id="c", amount=-5), idempotency_key="take-5-again")
    assert events.stream_version("counter-c") == 2


@pytest.mark.parametrize("fastforward", [True, False])
@pytest.mark.parametrize("shared_app", [True, False], ids=["one-app", "app-per-thread"])
def test_concurrent_duplicates_store_once(shared_app: bool, fastforward: bool) -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    make_app(events, views).execute(Add(counter_id="c", amount=1))
    threads_count = 8
    apps = [make_app(events, views, fastforward=fastforward) for _ in range(threads_count)]
    results = at_once(
        threads_count,
        lambda i: (apps[0] if shared_app else apps[i]).execute(Add(counter_id="c", amount=2), idempotency_key="dup"),
    )
    done = [r for r in results if isinstance(r, CommandResult)]
    assert len(done) == threads_count, results
    assert events.stream_version("counter-c") == 2
    assert sum(1 for r in done if not r.replayed) == 1
    assert {r.events[0].id for r in done} == {deterministic_event_id("counter-c", "dup", 0)}


def test_concurrent_requests_with_one_key_and_other_bodies_store_one_and_refuse_the_rest() -> None:
    events = MemoryEventStore()
    app = make_app(events)
    results = at_once(20, lambda i: app.execute(Add(counter_id="c", amount=i + 1), idempotency_key="race-1"))
    stored = [r for r in results if isinstance(r, CommandResult)]
    assert len(stored) == 1, results
    assert not stored[0].replayed
    assert all(isinstance(r, IdempotencyKeyReused) for r in results if r is not stored[0])
    assert events.stream_version("counter-c") == 1
    winner = stored[0].events[0].data["amount"]
    again = app.execute(Add(counter_id="c", amount=winner), idempotency_key="race-1")
    assert again.replayed
    assert [e.id for e in again.events] == [e.id for e in stored[0].events]


def test_one_key_for_requests_to_different_targets_stores_one() -> None:
    events = MemoryEventStore()
    app = make_app(events)
    results = at_once(10, lambda i: app.execute(Add(counter_id=f"c{i}", amount=5), idempotency_key="race-2"))
    assert sum(isinstance(r, CommandResult) for r in results) == 1, results
    assert sum(isinstance(r, IdempotencyKeyReused) for r in results) == 9
    assert len(list(events.list_streams())) == 1


def test_a_key_bound_by_a_request_that_stored_nothing_is_kept_for_that_request() -> None:
    events = MemoryEventStore()
    app = make_app(events)
    with pytest.raises(TooNegative):
        app.execute(Add(counter_id="c", amount=-1), idempotency_key="k")
    with pytest.raises(IdempotencyKeyReused):
        app.execute(Add(counter_id="c", amount=2), idempotency_key="k")
    with pytest.raises(TooNegative):  # the same request again is decided again
        app.execute(Add(counter_id="c", amount=-1), idempotency_key="k")
    assert events.last_position() is None


def test_internal_keys_live_in_a_namespace_no_client_can_reach() -> None:
    events = MemoryEventStore()
    app = make_app(events)
    app.reserve_keys("process:")
    with pytest.raises(ValidationError, match="reserved"):
        app.execute(Add(counter_id="c", amount=1), idempotency_key="process:step:123")
    first = app.execute(Add(counter_id="c", amount=1), internal_key="process:step:123")
    again = app.execute(Add(counter_id="c", amount=1), internal_key="process:step:123")
    assert again.replayed
    assert [e.id for e in again.events] == [e.id for e in first.events]
    assert first.events[0].id == deterministic_event_id("counter-c", "process:step:123", 0)
    with pytest.raises(ConfigurationError):
        app.execute(Add(counter_id="c", amount=1), internal_key="client-looking-key")
    assert events.stream_version("counter-c") == 1


# -- concurrency and retry -----------------------------------------------------------------


def test_conflicts_are_retried_a_bounded_number_of_times() -> None:
    store = InterferingStore(MemoryEventStore(), conflicts=2)
    app = make_app(store, max_conflict_retries=3)
    result = app.execute(Add(counter_id="c", amount=5))
    assert store.appends == 3
    assert result.first_version == 3
    assert app.load(Counter, "c").total == 7

    store = InterferingStore(MemoryEventStore(), conflicts=10)
    app = make_app(store, max_conflict_retries=3)
    with pytest.raises(ConcurrencyError) as raised:
        app.execute(Add(counter_id="c", amount=5))
    assert store.appends == 4
    assert raised.value.actual == 4
    assert all(e.data["amount"] == 1 for e in store.inner.read_stream("counter-c"))


def test_commands_not_safe_to_retry_fail_on_the_first_conflict() -> None:
    store = InterferingStore(MemoryEventStore(), conflicts=1)
    app = Application(store, MemoryViewStore())
    app.register(Add, Counter, lambda c: c.counter_id, decide_add, retry_safe=False)
    with pytest.raises(ConcurrencyError):
        app.execute(Add(counter_id="c", amount=5))
    assert store.appends == 1


def test_expected_version_mismatch_reports_the_actual_version_and_is_not_retried() -> None:
    events = MemoryEventStore()
    app = make_app(events)
    app.execute(Add(counter_id="c", amount=1))
    app.execute(Add(counter_id="c", amount=1))
    with pytest.raises(ConcurrencyError) as raised:
        app.execute(Add(counter_id="c", amount=1), expected_version=1)
    assert raised.value.actual == 2
    assert events.stream_version("counter-c") == 2
    ok = app.execute(Add(counter_id="c", amount=1), expected_version=2)
    assert ok.first_version == 3

    store = InterferingStore(events, conflicts=1)
    app = make_app(store)
    with pytest.raises(ConcurrencyError):
        app.execute(Add(counter_id="c", amount=1), expected_version=3)
    assert store.appends == 1


# -- validation before storing -------------------------------------------------------------


def test_every_command_passes_the_write_guard_first() -> None:
    events = MemoryEventStore()
    paused = {"on": True}

    def guard() -> None:
        if paused["on"]:
            raise WriteFenced("writes are paused (test)")

    app = make_app(events, write_guard=guard)
    with pytest.raises(WriteFenced):
        app.execute(Add(counter_id="c", amount=1))
    with pytest.raises(WriteFenced):
        app.execute(Add(counter_id="c", amount=1), idempotency_key="k")
    assert events.last_position() is None
    paused["on"] = False
    assert app.execute(Add(counter_id="c", amount=1)).last_version == 1


def test_rejected_commands_store_nothing() -> None:
    events = MemoryEventStore()
    app = make_app(events)
    with pytest.raises(TooNegative):
        app.execute(Add(counter_id="c", amount=-1))
    with pytest.raises(ValidationError):
        app.execute(Add(counter_id="bad id with spaces", amount=1))
    with pytest.raises(ConfigurationError):
        app.execute(object())
    assert events.read_all() == []


def test_an_oversized_event_is_rejected_before_anything_is_stored() -> None:
    events = MemoryEventStore()
    app = make_app(events)

    class Huge(Add):
        pass

    app.register(Huge, Counter, lambda c: c.counter_id, lambda agg, cmd: NewEvent("Added", {"x": "y" * 200_000}))
    with pytest.raises(EventTooLarge):
        app.execute(Huge(counter_id="c", amount=1))
    assert events.read_all() == []


# -- temporal queries ------------------------------------------------------------------------


@pytest.mark.parametrize("temporal", [True, False], ids=["temporal-store", "scanning"])
def test_state_as_of_a_moment_and_at_a_version(temporal: bool) -> None:
    inner = MemoryEventStore()
    events = inner if temporal else NonTemporalStore(inner)
    app = make_app(events, snapshot_every=2)
    moments: list[datetime] = []
    for amount in (10, 20, 30, 40):
        result = app.execute(Add(counter_id="c", amount=amount))
        moments.append(result.events[0].recorded_at)
    assert [app.load(Counter, "c", as_of=m).total for m in moments] == [10, 30, 60, 100]
    assert [app.load(Counter, "c", at_version=v).total for v in (1, 2, 3, 4)] == [10, 30, 60, 100]
    assert app.load(Counter, "c", at_version=99).version == 4
    with pytest.raises(StreamNotFound):
        app.load(Counter, "c", as_of=moments[0] - timedelta(microseconds=1))
    with pytest.raises(ValidationError):
        app.load(Counter, "c", as_of=datetime(2026, 1, 1))
    with pytest.raises(StreamNotFound):
        app.load(Counter, "nobody")
