"""The cosmos:// adapters on the Cosmos DB emulator, beyond the conformance suite.

Concurrency, the global log's repair paths (a writer that died between its commit and
its slot, two helpers that slotted one commit), large appends, configuration errors and
throttling.  Waits are bounded polls; nothing asserts on time.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from azure.cosmos.exceptions import CosmosHttpResponseError

from app.adapters.stores import cosmos
from app.adapters.stores.cosmos import CosmosEventStore, CosmosViewStore
from app.core.errors import ConcurrencyError, ConfigurationError, TransientError
from app.core.messages import Event, NewEvent
from app.core.ports import ANY, NO_STREAM, ViewChange
from tests.services import cosmos as service


def new(n: int, size: int = 0) -> NewEvent:
    data: dict[str, object] = {"n": n}
    if size:
        data["pad"] = "x" * size
    return NewEvent(type="Tested", data=data)


def read_everything(store: CosmosEventStore) -> list[Event]:
    events: list[Event] = []
    position = None
    while True:
        page = store.read_all(position, limit=50)
        if not page:
            return events
        events.extend(page)
        position = page[-1].position


@pytest.fixture
def url() -> Iterator[str]:
    with service.fresh_database() as name:
        yield service.url_for(name) + "&sweep_after=0"


def test_concurrent_appends_at_one_version_have_exactly_one_winner(url: str) -> None:
    stream = f"race-{uuid.uuid4().hex[:6]}"
    winners: list[int] = []
    losers: list[int] = []

    def attempt(n: int) -> None:
        store = CosmosEventStore.from_url(url)
        try:
            store.append(stream, [new(n)], NO_STREAM)
            winners.append(n)
        except ConcurrencyError as e:
            losers.append(e.actual)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = CosmosEventStore.from_url(url)
    assert len(winners) == 1
    assert losers == [1] * 5, "every loser saw the winner's version"
    assert [e.data["n"] for e in store.read_stream(stream)] == winners
    assert [e.data["n"] for e in read_everything(store)] == winners


def test_concurrent_any_appends_all_land_once_in_order(url: str) -> None:
    streams = [f"s{i}-{uuid.uuid4().hex[:4]}" for i in range(2)]

    def writer(w: int) -> None:
        store = CosmosEventStore.from_url(url)
        for i in range(4):
            store.append(streams[i % 2], [new(w * 100 + i)], ANY)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = CosmosEventStore.from_url(url)
    everything = read_everything(store)
    assert len(everything) == 12
    assert len({e.id for e in everything}) == 12
    for stream in streams:
        versions = [e.version for e in everything if e.stream_id == stream]
        assert versions == list(range(1, 7)), "per-stream order in the global log"
    assert read_everything(store) == everything, "reading again gives the same events in the same order"


def test_an_append_over_the_item_limit_goes_to_parts_and_reads_back_whole(url: str) -> None:
    store = CosmosEventStore.from_url(url)
    events = [new(i, size=190_000) for i in range(10)]
    store.append("big", events, NO_STREAM)
    back = store.read_stream("big")
    assert [e.id for e in back] == [e.id for e in events]
    assert all(len(str(e.data["pad"])) == 190_000 for e in back)
    assert [e.id for e in read_everything(store)] == [e.id for e in events]


def test_a_commit_whose_writer_died_before_its_slot_is_swept_in_stream_order(url: str) -> None:
    store = CosmosEventStore.from_url(url)
    store.append("other", [new(0)], NO_STREAM)
    store._write_commit("orphan", 1, [new(1), new(2)])  # the writer dies here: no slot
    swept = [(e.stream_id, e.version) for e in read_everything(CosmosEventStore.from_url(url))]
    assert swept == [("other", 1), ("orphan", 1), ("orphan", 2)]
    store.append("orphan", [new(3)], 2)
    everything = read_everything(store)
    assert [(e.stream_id, e.version) for e in everything] == [
        ("other", 1),
        ("orphan", 1),
        ("orphan", 2),
        ("orphan", 3),
    ]


def test_a_commit_slotted_twice_is_read_once(url: str) -> None:
    store = CosmosEventStore.from_url(url)
    store.append("dup", [new(0)], NO_STREAM)
    commit = store._commits("dup")[0]
    store._slot_commit(commit)  # a helper that lost the race leaves a slot the commit does not name
    store.append("dup", [new(1)], 1)
    everything = read_everything(store)
    assert [(e.stream_id, e.version) for e in everything] == [("dup", 1), ("dup", 2)]
    assert store.last_position() == everything[-1].position


def test_a_missing_container_is_a_configuration_error_naming_it() -> None:
    with service.fresh_database(create_containers=False) as name:
        store = CosmosEventStore.from_url(service.url_for(name, "nothing"))
        with pytest.raises(ConfigurationError, match="'nothing'"):
            store.stream_version("s")
        views = CosmosViewStore.from_url(service.url_for(name, "nothing"))
        with pytest.raises(ConfigurationError, match="'nothing-views'"):
            views.get("c", "k")


def test_a_failed_revision_check_writes_nothing(url: str) -> None:
    views = CosmosViewStore.from_url(url)
    views.commit("p", [ViewChange("c", "a", {"v": 1})], {"$all": "1"})
    with pytest.raises(ConcurrencyError):
        views.commit(
            "p", [ViewChange("c", "b", {"v": 2}), ViewChange("c", "a", {"v": 3}, expected_revision=5)], {"$all": "2"}
        )
    assert views.get("c", "b") is None
    assert views.get_checkpoint("p") == "1"


def test_throttling_is_retried_after_the_servers_delay_then_transient() -> None:
    slept: list[float] = []
    calls = 0

    def throttled() -> None:
        nonlocal calls
        calls += 1
        error = CosmosHttpResponseError(status_code=429, message="Request rate is large")  # type: ignore[no-untyped-call]
        error.headers = {"x-ms-retry-after-ms": "250"}
        raise error

    with pytest.raises(TransientError, match="429") as caught:
        cosmos.call("reading", throttled, sleep=slept.append)
    assert calls == cosmos.MAX_THROTTLE_RETRIES + 1
    assert slept == [0.25] * cosmos.MAX_THROTTLE_RETRIES
    assert isinstance(caught.value.__cause__, CosmosHttpResponseError)


def test_throttling_that_clears_succeeds() -> None:
    outcomes: list[object] = [429, 429, "ok"]

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if outcome == 429:
            error = CosmosHttpResponseError(status_code=429, message="busy")  # type: ignore[no-untyped-call]
            error.headers = {"x-ms-retry-after-ms": "10"}
            raise error
        return str(outcome)

    assert cosmos.call("reading", flaky, sleep=lambda s: None) == "ok"


def test_urls_name_what_is_missing() -> None:
    with pytest.raises(ConfigurationError, match="database and a container"):
        CosmosEventStore.from_url("cosmos://acct/onlydb")
    with pytest.raises(ConfigurationError, match="account"):
        CosmosEventStore.from_url("cosmos:///db/c")
    store = CosmosEventStore.from_url("cosmos://acct/db/c?key=secret&endpoint=https://127.0.0.1:1/")
    assert "secret" not in store.url
