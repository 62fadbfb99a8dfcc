"""Projections, message codec and relay: exactly-once effect, blue/green, none lost."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, ClassVar

import pytest

from skyferry.adapters.brokers.memory import MemoryBroker
from skyferry.adapters.stores.memory import MemoryEventStore, MemoryViewStore
from skyferry.core.codec import decode, encode
from skyferry.core.errors import (
    ConcurrencyError,
    ConfigurationError,
    StreamNotFound,
    TooManyParked,
    TransientError,
    ValidationError,
)
from skyferry.core.messages import Event, NewEvent
from skyferry.core.parking import ParkedEvents, RetryPolicy, parked_in
from skyferry.core.ports import ANY, Message
from skyferry.core.projections import (
    ALIASES,
    Projection,
    ProjectionConsumer,
    ProjectionRunner,
    ReadModels,
    ViewBatch,
    checkpoint_name,
    physical_collection,
    rebuild,
    stream_checkpoint_collection,
)
from skyferry.core.relay import Relay
from skyferry.core.upcasting import Upcasters
from tests.unit.kernel_fakes import (
    CountingProjection,
    FailingCommitViews,
    FlakyBroker,
    PipelinedFakeBroker,
    RefusingViews,
)

NO_WAIT = RetryPolicy(sleep=lambda _: None)


def fill(events: MemoryEventStore, streams: int = 5, per_stream: int = 20) -> int:
    """Interleaved appends; every event adds its index; returns the sum of all amounts."""
    total = 0
    for i in range(per_stream):
        for s in range(streams):
            amount = i * streams + s
            events.append(f"counter-{s}", [NewEvent("Added", {"amount": amount}, schema_version=2)], i)
            total += amount
        events.append("other-x", [NewEvent("Ignored", {})], i)
    return total


def counts(views: Any, generation: int = 1) -> dict[str, dict[str, int]]:
    return {key: doc.value for key, doc in views.query(physical_collection("counts", generation))}


def clean_counts(events: MemoryEventStore) -> dict[str, dict[str, int]]:
    views = MemoryViewStore()
    ProjectionRunner(events, views, CountingProjection(), batch_size=7).run_once()
    return counts(views)


# -- catch-up runner -----------------------------------------------------------------------


def test_runner_applies_every_event_once_and_commits_in_batches() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    total = fill(events)
    spy = FailingCommitViews(views)
    runner = ProjectionRunner(events, spy, CountingProjection(), batch_size=30)  # type: ignore[arg-type]
    assert runner.run_once() == 120
    assert spy.commits == 4  # 120 events in batches of 30: view changes and checkpoint together
    result = counts(views)
    assert result["$total"] == {"events": 100, "sum": total}
    assert all(result[f"counter-{s}"]["events"] == 20 for s in range(5))
    assert views.get_checkpoint(checkpoint_name("counting", 1)) == events.last_position()
    assert runner.run_once() == 0


def test_a_failed_commit_leaves_views_and_checkpoint_untouched_and_the_rerun_is_exact() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events)
    expected = clean_counts(events)
    flaky = FailingCommitViews(views, fail_times=0)
    runner = ProjectionRunner(events, flaky, CountingProjection(), batch_size=50)  # type: ignore[arg-type]
    runner.run_once(max_events=50)
    committed = counts(views)
    checkpoint = views.get_checkpoint("counting_g1")
    flaky.fail_times = 1
    with pytest.raises(TransientError):
        runner.run_once()
    assert counts(views) == committed
    assert views.get_checkpoint("counting_g1") == checkpoint
    runner.run_once()
    assert counts(views) == expected


def test_a_transient_failure_inside_a_batch_commits_nothing_of_that_batch_and_parks_nothing() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events)
    expected = clean_counts(events)
    crash = {"on": True}
    projection = CountingProjection(fail_on=lambda e: crash["on"] and e.data["amount"] == 77, fail_with=TransientError)
    with pytest.raises(TransientError):
        ProjectionRunner(events, views, projection, batch_size=40, retry=NO_WAIT).run_once()
    partial = counts(views)
    assert partial["$total"]["events"] < 100
    assert parked_in(views) == []  # an unreachable store is not the event's fault
    crash["on"] = False
    ProjectionRunner(events, views, projection, batch_size=40).run_once()
    assert counts(views) == expected


# -- poison isolation: retry, park, go on --------------------------------------------------------


def _without(expected: dict[str, dict[str, int]], event: Event) -> dict[str, dict[str, int]]:
    """``expected`` counts minus one ``Added`` event."""
    less = {key: dict(doc) for key, doc in expected.items()}
    for key in (event.stream_id, "$total"):
        less[key]["events"] -= 1
        less[key]["sum"] -= event.data["amount"]
    return less


def test_an_event_the_handler_keeps_failing_on_is_retried_then_parked_and_the_runner_goes_on() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events)
    expected = clean_counts(events)
    poison = next(e for e in events.read_all() if e.data.get("amount") == 77)
    waits: list[float] = []
    policy = RetryPolicy(sleep=waits.append)
    projection = CountingProjection(fail_on=lambda e: e.id == poison.id)
    runner = ProjectionRunner(events, views, projection, batch_size=40, retry=policy)
    assert runner.run_once() == 120
    assert waits == [0.2, 0.4, 0.8]  # 4 attempts, backing off
    assert counts(views) == _without(expected, poison)
    assert views.get_checkpoint("counting_g1") == events.last_position()
    [parked] = parked_in(views)
    assert (parked.key, parked.runner, parked.projection, parked.generation) == (
        f"counting_g1/{poison.id}",
        "counting_g1",
        "counting",
        1,
    )
    assert (parked.event_id, parked.stream_id, parked.version, parked.type) == (
        poison.id,
        poison.stream_id,
        poison.version,
        "Added",
    )
    assert parked.error == f"RuntimeError: projection crashed on {poison.id}"
    assert parked.attempts == 4
    assert runner.parked == 1
    # Later events keep coming through.
    events.append("counter-0", [NewEvent("Added", {"amount": 1000}, schema_version=2)], ANY)
    assert runner.run_once() == 1
    assert counts(views)["$total"]["sum"] == expected["$total"]["sum"] - 77 + 1000


def test_a_document_the_store_refuses_parks_its_event_and_the_rest_is_stored() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=3, per_stream=5)
    events.append("counter-poison", [NewEvent("Added", {"amount": 5}, schema_version=2)], ANY)
    fill_more = [NewEvent("Added", {"amount": 1}, schema_version=2) for _ in range(3)]
    events.append("counter-0", fill_more, ANY)
    refusing = RefusingViews(views, marker="poison")
    runner = ProjectionRunner(events, refusing, CountingProjection(), batch_size=100, retry=NO_WAIT)  # type: ignore[arg-type]
    runner.run_once()
    [parked] = parked_in(views)
    assert parked.stream_id == "counter-poison"
    assert parked.error.startswith("ValidationError: the store cannot hold")
    result = counts(views)
    assert "counter-poison" not in result
    assert result["counter-0"]["events"] == 5 + 3
    assert views.get_checkpoint("counting_g1") == events.last_position()


def test_a_parked_event_is_retried_after_a_fix_or_skipped_by_the_operator() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events)
    expected = clean_counts(events)
    broken = {"on": True}
    projection = CountingProjection(fail_on=lambda e: broken["on"] and e.data["amount"] in (77, 78))
    runner = ProjectionRunner(events, views, projection, retry=NO_WAIT)
    runner.run_once()
    operator = ParkedEvents(events, views, {"counting": runner.reapply})
    first, second = operator.list()
    assert operator.counts() == {"counting_g1": 2}
    again = operator.retry(first.key)  # not fixed yet: still parked, one more attempt recorded
    assert again is not None
    assert again.attempts == first.attempts + 1
    broken["on"] = False  # the fix is deployed
    assert operator.retry(first.key) is None
    assert operator.skip(second.key).event_id == second.event_id
    assert operator.list() == []
    skipped = next(e for e in events.read_all() if e.id == second.event_id)
    assert counts(views) == _without(expected, skipped)
    with pytest.raises(ValidationError, match="no parked event"):
        operator.retry(first.key)


def test_a_retry_the_store_refuses_again_counts_as_failed_again_and_keeps_the_event_parked() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=2, per_stream=3)
    events.append("counter-poison", [NewEvent("Added", {"amount": 5}, schema_version=2)], ANY)
    refusing = RefusingViews(views, marker="poison")
    runner = ProjectionRunner(events, refusing, CountingProjection(), retry=NO_WAIT)  # type: ignore[arg-type]
    runner.run_once()
    [parked] = parked_in(views)
    operator = ParkedEvents(events, refusing, {"counting": runner.reapply})  # type: ignore[arg-type]
    again = operator.retry(parked.key)  # the handler succeeds, the commit of what it wrote is refused
    assert again is not None
    assert again.attempts == parked.attempts + 1
    assert again.error.startswith("ValidationError: the store cannot hold")
    assert parked_in(views) == [again]  # the record says so
    assert "counter-poison" not in counts(views)
    assert ParkedEvents(events, views, {"counting": runner.reapply}).retry(parked.key) is None  # the store is fixed
    assert parked_in(views) == []
    assert counts(views)["counter-poison"] == {"events": 1, "sum": 5}


def test_a_runner_failing_on_event_after_event_stops_instead_of_parking_the_log() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events)
    policy = RetryPolicy(max_parked=3, sleep=lambda _: None)
    runner = ProjectionRunner(events, views, CountingProjection(fail_on=lambda e: True), retry=policy)
    with pytest.raises(TooManyParked, match="3 events are parked already"):
        runner.run_once()
    assert len(parked_in(views)) == 3


def test_a_rebuild_forgets_the_parked_events_of_the_generation_it_replaces() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events)
    poison = next(e for e in events.read_all() if e.data.get("amount") == 77)
    ProjectionRunner(events, views, CountingProjection(fail_on=lambda e: e.id == poison.id), retry=NO_WAIT).run_once()
    assert [p.runner for p in parked_in(views)] == ["counting_g1"]
    rebuild(events, views, CountingProjection())  # the fixed code
    assert parked_in(views) == []
    assert counts(views, 2) == clean_counts(events)


@pytest.mark.parametrize("stream_checkpoints", [True, False])
def test_a_consumer_parks_on_the_last_delivery_and_the_stream_goes_on(stream_checkpoints: bool) -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=1, per_stream=3)
    first, poison, third = [encode(e) for e in events.read_stream("counter-0")]
    consumer = ProjectionConsumer(
        events,
        views,
        CountingProjection(fail_on=lambda e: e.id == poison.id),
        stream_checkpoints=stream_checkpoints,
        retry=NO_WAIT,
    )
    consumer.handle(first)
    for attempt in range(1, NO_WAIT.attempts):
        with pytest.raises(RuntimeError):
            consumer.handle(replace(poison, delivery_attempt=attempt))  # the broker redelivers
        assert parked_in(views) == []
    consumer.handle(replace(poison, delivery_attempt=NO_WAIT.attempts))  # parked, acknowledged
    [parked] = parked_in(views)
    assert (parked.event_id, parked.version, parked.attempts) == (poison.id, 2, NO_WAIT.attempts)
    consumer.handle(third)
    assert counts(views)["counter-0"]["events"] == 2
    if stream_checkpoints:  # the parked event is not fetched again to fill a gap
        assert views.get(stream_checkpoint_collection("counting", 1), "counter-0").value["version"] == 3


def test_a_message_that_cannot_be_decoded_is_parked_as_it_came() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    garbage = Message("m-1", "counter-9", b"not json", {"type": "Added", "version": "4"}, delivery_attempt=4)
    ProjectionConsumer(events, views, CountingProjection(), retry=NO_WAIT).handle(garbage)
    [parked] = parked_in(views)
    assert (parked.event_id, parked.stream_id, parked.version, parked.type) == ("m-1", "counter-9", 4, "Added")


def test_two_runners_of_one_projection_never_double_apply() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events)
    expected = clean_counts(events)
    rival = ProjectionRunner(events, views, CountingProjection(), batch_size=1000)
    # The rival commits everything while the first runner is about to commit its batch.

    def rival_catches_up() -> None:
        rival.run_once()

    racing = FailingCommitViews(views, before=rival_catches_up)
    first = ProjectionRunner(events, racing, CountingProjection(), batch_size=1000)  # type: ignore[arg-type]
    first.run_once()
    assert racing.commits == 1  # its commit conflicted; the reloaded checkpoint left nothing to do
    assert counts(views) == expected


def test_upcasters_apply_in_projections() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    events.append("counter-1", [NewEvent("Added", {"n": 5}), NewEvent("Added", {"amount": 6}, schema_version=2)], 0)
    upcasters = Upcasters()
    upcasters.add("Added", 1, lambda data: {"amount": data["n"]})
    ProjectionRunner(events, views, CountingProjection(), upcasters=upcasters).run_once()
    assert counts(views)["counter-1"] == {"events": 2, "sum": 11}


# -- blue/green rebuild ----------------------------------------------------------------------


def test_rebuild_builds_beside_the_live_generation_switches_and_drops_the_old_one() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events)
    ProjectionRunner(events, views, CountingProjection()).run_once()
    before = counts(views, 1)
    report = rebuild(events, views, CountingProjection(), batch_size=13)
    assert (report.old_generation, report.new_generation, report.events) == (1, 2, 120)
    assert counts(views, 2) == before
    assert counts(views, 1) == {}
    assert views.get_checkpoint("counting_g1") is None
    assert views.get(ALIASES, "counting").value["generation"] == 2  # type: ignore[union-attr]
    read_models = ReadModels(views)
    assert read_models.get("counting", "counts", "$total") == before["$total"]
    # The live runner follows the switch and keeps applying new events to generation 2.
    events.append("counter-0", [NewEvent("Added", {"amount": 1000}, schema_version=2)], 20)
    ProjectionRunner(events, views, CountingProjection()).run_once()
    assert read_models.get("counting", "counts", "counter-0")["events"] == 21  # type: ignore[index]
    live = counts(views, 2)
    again = rebuild(events, views, CountingProjection())
    assert again.new_generation == 3
    assert counts(views, 3) == live
    assert counts(views, 2) == {}
    assert read_models.get("counting", "counts", "counter-0")["sum"] == before["counter-0"]["sum"] + 1000  # type: ignore[index]


def test_rebuild_reports_its_progress_after_every_batch() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events)
    seen: list[int] = []
    report = rebuild(events, views, CountingProjection(), batch_size=50, on_progress=seen.append)
    assert report.events == 120
    assert seen[:3] == [50, 50, 20]  # the first pass, one call per committed batch
    assert sum(seen) == report.events  # the pass after the switch read nothing new


def test_rebuild_drops_leftovers_of_an_interrupted_rebuild() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events)
    ProjectionRunner(events, views, CountingProjection()).run_once()
    stale = ProjectionRunner(events, views, CountingProjection(), generation=2)
    stale.run_once(max_events=10)
    assert counts(views, 2) != {}
    report = rebuild(events, views, CountingProjection())
    assert report.new_generation == 2
    assert counts(views, 2) == clean_counts(events)


def test_a_concurrent_rebuild_loses_the_alias_race() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=1, per_stream=3)
    racing = FailingCommitViews(views)
    original = racing.commit
    rivals: list[int] = []

    def commit(projection: str, changes: Any, checkpoint: Any) -> None:
        if projection == ALIASES and not rivals:
            # Another process switches the alias first.
            rivals.append(rebuild(events, views, CountingProjection()).new_generation)
        original(projection, changes, checkpoint)

    racing.commit = commit  # type: ignore[method-assign]
    with pytest.raises(ConcurrencyError):
        rebuild(events, racing, CountingProjection())  # type: ignore[arg-type]
    assert ReadModels(views).live_generation("counting") == 2


# -- codec -----------------------------------------------------------------------------------


def test_full_messages_carry_the_whole_event() -> None:
    events = MemoryEventStore()
    events.append("counter-1", [NewEvent("Added", {"amount": 3}, {"actor": "t"}, schema_version=2)], 0)
    event = events.read_all()[0]
    message = encode(event, "full")
    assert (message.id, message.key) == (event.id, "counter-1")
    assert message.attributes == {"type": "Added", "version": "1", "schema_version": "2", "mode": "full"}
    assert decode(message).to_dict() == event.to_dict()


def test_thin_messages_carry_ids_and_the_consumer_fetches_the_event() -> None:
    events = MemoryEventStore()
    events.append("counter-1", [NewEvent("Added", {"secret": "not in the message"})], 0)
    event = events.read_all()[0]
    message = encode(event, "thin")
    assert b"secret" not in message.body
    assert decode(message, events).to_dict() == event.to_dict()
    with pytest.raises(ValidationError):
        decode(message)
    wrong = Message(id=message.id, key=message.key, body=message.body.replace(event.id.encode(), b"0" * 36))
    with pytest.raises(StreamNotFound):
        decode(wrong, events)
    with pytest.raises(ValidationError):
        encode(event, "fat")  # type: ignore[arg-type]


# -- broker-fed consumer ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "thin"])
def test_consumer_skips_duplicates_and_fills_gaps_from_the_store(mode: str) -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=2, per_stream=4)
    messages = [encode(e, mode) for e in events.read_all()]  # type: ignore[arg-type]
    consumer = ProjectionConsumer(events, views, CountingProjection())
    by_stream = [m for m in messages if m.key == "counter-0"]
    consumer.handle(by_stream[0])
    consumer.handle(by_stream[0])
    consumer.handle(by_stream[3])  # versions 2 and 3 are fetched from the store
    for message in messages:
        consumer.handle(message)
    assert counts(views) == clean_counts(events)
    assert consumer.duplicates == 1 + 4


def test_competing_consumers_cannot_double_apply() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=1, per_stream=2)
    message = encode(events.read_stream("counter-0")[0])
    other = ProjectionConsumer(events, views, CountingProjection())
    racing = FailingCommitViews(views, before=lambda: other.handle(message))
    consumer = ProjectionConsumer(events, racing, CountingProjection())  # type: ignore[arg-type]
    with pytest.raises(ConcurrencyError):
        consumer.handle(message)
    consumer.handle(message)  # the broker's redelivery: a duplicate now
    assert counts(views)["counter-0"] == {"events": 1, "sum": 0}


# -- relay -------------------------------------------------------------------------------------


def test_relay_publishes_everything_once_and_advances_its_checkpoint() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=3, per_stream=10)
    broker = FlakyBroker()
    relay = Relay(events, views, broker, "thin", batch_size=7)
    assert relay.run_once() == 40
    assert [m.id for m in broker.accepted] == [e.id for e in events.read_all(limit=1000)]
    assert relay.position() == events.last_position()
    assert relay.run_once() == 0
    assert len(broker.accepted) == 40


def test_relay_never_loses_an_event_when_the_broker_fails_mid_batch() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=3, per_stream=10)
    broker = FlakyBroker(accept=10)
    relay = Relay(events, views, broker, "full", batch_size=8)
    with pytest.raises(TransientError):
        relay.run_once()
    # Batch 1 (8 events) was accepted whole; batch 2 failed after 2 of its 8 messages.
    assert relay.position() == events.read_all(limit=8)[-1].position
    broker.accept = None
    relay.run_once()
    all_ids = [e.id for e in events.read_all(limit=1000)]
    assert set(m.id for m in broker.accepted) == set(all_ids)
    assert len(broker.accepted) == 40 + 2  # the two messages of the failed batch came twice
    # A consumer's checkpoints absorb the duplicates.
    consumer_views = MemoryViewStore()
    consumer = ProjectionConsumer(events, consumer_views, CountingProjection())
    for message in broker.accepted:
        consumer.handle(message)
    assert counts(consumer_views) == clean_counts(events)


def test_relay_keeps_batches_in_flight_and_checkpoints_only_confirmed_ones() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=2, per_stream=20)  # 60 events: 10 batches of 6
    positions = [e.position for e in events.read_all(limit=1000)]
    broker = PipelinedFakeBroker()
    relay = Relay(events, views, broker, "full", batch_size=6, in_flight=4)
    # One batch a step, as the worker runs it: the checkpoint trails by the batches in flight.
    assert relay.run_once(max_batches=1) == 6
    assert relay.position() is None
    assert relay.run_once(max_batches=3) == 18
    assert broker.most_in_flight == 4
    assert relay.position() == positions[5], "only the first batch is confirmed"
    assert [m.id for m in broker.accepted] == [e.id for e in events.read_all(limit=6)]
    # A call that reads everything returns with everything confirmed, in order.
    assert relay.run_once() == 36
    assert relay.position() == positions[-1]
    assert broker.in_flight == 0
    assert broker.waited == list(range(10))
    assert [m.id for m in broker.accepted] == [e.id for e in events.read_all(limit=1000)]
    assert relay.run_once() == 0


def test_relay_forgets_the_batches_in_flight_after_a_failure_and_publishes_them_again() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=2, per_stream=20)  # 60 events: 10 batches of 6
    positions = [e.position for e in events.read_all(limit=1000)]
    broker = PipelinedFakeBroker(fail_call=2)
    relay = Relay(events, views, broker, "full", batch_size=6, in_flight=4)
    with pytest.raises(TransientError, match="call 2 failed"):
        relay.run_once()
    assert relay.position() == positions[11], "the two batches before the failed one are confirmed"
    assert broker.in_flight == 0, "every batch in flight was waited out"
    assert len(broker.accepted) == 12
    broker.heal()
    assert relay.run_once() == 48, "published again from the checkpoint"
    assert relay.position() == positions[-1]
    assert [m.id for m in broker.accepted] == [e.id for e in events.read_all(limit=1000)]


def test_closing_the_relay_settles_what_is_in_flight_or_leaves_it_to_the_next_run() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=2, per_stream=20)
    relay = Relay(events, views, PipelinedFakeBroker(), "full", batch_size=6, in_flight=4)
    relay.run_once(max_batches=3)
    assert relay.position() is None, "three batches in flight, none confirmed yet"
    relay.close()
    assert relay.position() == events.read_all(limit=18)[-1].position

    more = MemoryEventStore()
    fill(more, streams=2, per_stream=20)
    failing = Relay(more, MemoryViewStore(), PipelinedFakeBroker(fail_call=0), batch_size=6)
    failing.run_once(max_batches=2)
    failing.close()  # logs, forgets: the next run publishes from the checkpoint
    assert failing.position() is None


def test_a_synchronous_broker_has_one_batch_in_flight() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=2, per_stream=6)
    relay = Relay(events, views, FlakyBroker(), "full", batch_size=4, in_flight=8)
    assert relay.in_flight == 1
    assert relay.run_once(max_batches=1) == 4
    assert relay.position() == events.read_all(limit=4)[-1].position, "checkpointed at once"
    with pytest.raises(ConfigurationError, match="in_flight"):
        Relay(events, views, FlakyBroker(), in_flight=0)


@pytest.mark.parametrize("mode", ["full", "thin"])
def test_relay_to_the_in_process_broker_feeds_a_consumer_exactly_once(mode: str) -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    broker = MemoryBroker(retry_backoff=0.01)
    consumer = ProjectionConsumer(events, views, CountingProjection())
    subscription = broker.subscribe("counting", consumer.handle)
    try:
        fill(events, streams=4, per_stream=5)
        relay = Relay(events, views, broker, mode)
        relay.run_once()
        relay.views.commit(relay.name, [], {})  # nothing to change: the checkpoint stays
        deadline = time.monotonic() + 30
        while broker.pending("counting") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.pending("counting") == 0
        assert broker.dead_letters("counting") == []
    finally:
        subscription.close()
        broker.close()
    assert counts(views) == clean_counts(events)


def test_a_thin_duplicate_is_skipped_from_its_headers_without_reading_the_store() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=1, per_stream=2)
    message = encode(events.read_stream("counter-0")[1], "thin")
    reads: list[str] = []
    original = events.read_stream

    def counting_read(stream_id: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(stream_id)
        return original(stream_id, *args, **kwargs)

    events.read_stream = counting_read  # type: ignore[method-assign]
    consumer = ProjectionConsumer(events, views, CountingProjection())
    consumer.handle(message)  # the event itself, then the gap (version 1) from the store
    assert reads == ["counter-0", "counter-0"]
    consumer.handle(message)
    assert reads == ["counter-0", "counter-0"]
    assert consumer.duplicates == 1
    assert counts(views)["counter-0"] == {"events": 2, "sum": 0 + 1}


class LastAmount(Projection):
    """Writes without reading: the amount of the last ``Added`` event."""

    name: ClassVar[str] = "last"
    handles: ClassVar[frozenset[str]] = frozenset({"Added"})
    collections: ClassVar[tuple[str, ...]] = ("last",)

    def apply(self, event: Event, views: ViewBatch) -> None:
        views.put("last", "amount", {"amount": event.data["amount"]})


def test_a_late_runner_cannot_overwrite_blind_writes_of_a_faster_one() -> None:
    events, views = MemoryEventStore(), MemoryViewStore()
    fill(events, streams=1, per_stream=30)
    fast = ProjectionRunner(events, views, LastAmount(), batch_size=1000)

    def fast_runs_to_the_end() -> None:
        fast.run_once()

    slow_views = FailingCommitViews(views, before=fast_runs_to_the_end)
    slow = ProjectionRunner(events, slow_views, LastAmount(), batch_size=10)  # type: ignore[arg-type]
    slow.run_once()
    assert views.get(physical_collection("last", 1), "amount").value == {"amount": 29}  # type: ignore[union-attr]
    assert slow_views.commits == 1  # its first commit lost the race; the reload found nothing left
