"""The DynamoDB adapters on moto server beyond the conformance suite: request counts, bad input, retries.

Request counts are exact, not timed: they are what the docstring of
``app/skyferry/adapters/stores/dynamodb/__init__.py`` reports per 1,000 events.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from skyferry.adapters import aws
from skyferry.adapters.stores import dynamodb
from skyferry.core.errors import ConcurrencyError, ConfigurationError, TransientError, ValidationError
from skyferry.core.messages import NewEvent
from skyferry.core.ports import ANY, NO_STREAM, ViewChange
from tests.integration.adapters.aws_support import Counter, boto
from tests.integration.adapters.blocks_support import check_a_dead_writers_holes, exported
from tests.services import dynamodb as dynamodb_service
from tests.services import moto_server


@pytest.fixture
def table() -> Iterator[str]:
    with dynamodb_service.fresh_table() as name:
        yield name


def events(n: int) -> list[NewEvent]:
    return [NewEvent("Thing", {"n": i, "text": "x" * 100}) for i in range(n)]


# --- requests per 1,000 events ------------------------------------------------------------------


def test_requests_per_thousand_events(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Exact request counts for small volumes, scaled to 1,000 events (the counts are per call).

    (moto copies a table on every transaction, so large volumes only measure moto.)
    """
    counter = Counter()
    store = dynamodb.DynamoDBEventStore(table, client=counter.attach(boto("dynamodb")))
    figures: dict[str, float] = {}

    for i in range(10):
        store.append(f"batch10-{i}", events(10), NO_STREAM)
    assert counter.calls == {"GetItem": 10, "TransactWriteItems": 10}
    figures["append, 10 events per append, expected version"] = counter.total() * 1000 / 100

    counter.reset()
    for _ in range(2):
        store.append("batch49", events(49), ANY)
    assert counter.calls == {"Query": 2, "GetItem": 2, "TransactWriteItems": 2}
    figures["append, 49 events per append, ANY"] = counter.total() * 1000 / 98

    counter.reset()
    for version in range(20):
        store.append("single", events(1), version)
    assert counter.total() == 40
    figures["append, 1 event per append"] = counter.total() * 1000 / 20

    counter.reset()
    everything = store.read_all(limit=1000)
    assert len(everything) == 218
    assert counter.calls == {"Query": 1}
    figures["read_all, limit 1000: one Query per 1 MB page (218 events measured)"] = counter.total()

    counter.reset()
    assert len(store.read_stream("batch49")) == 98
    assert counter.total() == 1
    figures["read_stream, up to 1 MB of events"] = counter.total()

    views = dynamodb.DynamoDBViewStore(table, client=counter.attach(boto("dynamodb")))
    counter.reset()
    keys = [f"k{i:04d}" for i in range(198)]
    for start in range(0, len(keys), 99):
        views.commit("p", [ViewChange("c", k, {"i": k}) for k in keys[start : start + 99]], {"$all": str(start)})
    assert counter.calls == {"TransactWriteItems": 2}
    figures["view commit, 1,000 documents (99 + checkpoint per commit)"] = 1000 / 99
    counter.reset()
    assert len(views.get_many("c", keys)) == len(keys)
    assert counter.calls == {"BatchGetItem": 2}
    figures["view get_many, 1,000 keys"] = counter.total() * 1000 / 200
    counter.reset()
    views.drop("c")
    assert counter.calls == {"Query": 1, "BatchWriteItem": 8}
    figures["view drop, 1,000 documents (Query pages + BatchWriteItem of 25)"] = 1000 / 25 + 1
    with capsys.disabled():
        print("\nDynamoDB requests per 1,000 events or documents (moto server, counted by botocore hooks):")
        for what, count in figures.items():
            print(f"  {what}: {count:.0f}")


# --- bad input and failures ---------------------------------------------------------------------


def test_the_connection_pool_holds_a_connection_for_every_write_in_flight(table: str) -> None:
    """``--concurrency`` up to its most: a pool smaller than the writes in flight would open a
    new connection (and TLS handshake) for each write beyond it, and drop it after."""
    from skyferry.migrate.writer import MAX_CONCURRENCY

    for store in (
        dynamodb.DynamoDBEventStore.from_url(dynamodb_service.url_for(table)),
        dynamodb.DynamoDBViewStore.from_url(dynamodb_service.url_for(table)),
    ):
        client = store._table.client
        assert client.meta.config.max_pool_connections >= MAX_CONCURRENCY
        store.close()


def test_a_missing_table_is_a_configuration_error_naming_it() -> None:
    url = dynamodb_service.url_for("no-such-table")
    with pytest.raises(ConfigurationError, match="no-such-table"):
        dynamodb.DynamoDBEventStore.from_url(url).stream_version("s")
    with pytest.raises(ConfigurationError, match="no-such-table"):
        dynamodb.DynamoDBViewStore.from_url(url).get("c", "k")


def test_missing_region_and_credentials_are_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    with pytest.raises(ConfigurationError, match="region"):
        dynamodb.DynamoDBEventStore.from_url("dynamodb://t").stream_version("s")
    endpoint = moto_server.endpoint()
    store = dynamodb.DynamoDBEventStore.from_url(f"dynamodb://t?region=eu-west-1&endpoint={endpoint}")
    with pytest.raises(ConfigurationError, match="credentials"):
        store.stream_version("s")
    with pytest.raises(ConfigurationError, match="no table"):
        dynamodb.DynamoDBEventStore.from_url("dynamodb://?region=eu-west-1")
    with pytest.raises(ConfigurationError, match="unknown options"):
        dynamodb.DynamoDBEventStore.from_url("dynamodb://t?regoin=eu-west-1")


def test_throttling_is_retried_then_surfaces_as_transient(table: str) -> None:
    from botocore.stub import Stubber

    client = boto("dynamodb")
    options = aws.AwsOptions(attempts=3)
    store = dynamodb.DynamoDBEventStore(table, client=client, options=options)
    with Stubber(client) as stub:
        for _ in range(2):
            stub.add_client_error("query", "ProvisionedThroughputExceededException")
        stub.add_response("query", {"Items": [{"sk": {"S": "0000000007"}}]})
        assert store.stream_version("s") == 7
        for _ in range(3):
            stub.add_client_error("query", "ThrottlingException")
        with pytest.raises(TransientError):
            store.stream_version("s")
        stub.assert_no_pending_responses()


def test_a_cancelled_append_writes_nothing_and_an_oversized_one_is_refused(table: str) -> None:
    store = dynamodb.DynamoDBEventStore(table, client=boto("dynamodb"))
    big = [NewEvent("Big", {"pad": "z" * 190_000}) for _ in range(21)]
    with pytest.raises(ValidationError, match="split the write"):
        store.append("big", big, NO_STREAM)
    assert store.stream_version("big") == 0
    assert store.last_position() is None


# --- large view commits: the commit-record protocol ---------------------------------------------


def put(key: str, value: int, expected: int | None = None) -> ViewChange:
    return ViewChange("c", key, {"v": value}, expected)


def test_a_large_commit_failing_in_its_second_lock_batch_leaves_nothing(table: str) -> None:
    views = dynamodb.DynamoDBViewStore(table, client=boto("dynamodb"))
    views.commit("p", [put("k0150", 1)], {"$all": "1"})
    changes = [put(f"k{i:04d}", 2) for i in range(150)] + [put("k0150", 2, expected=9)]
    with pytest.raises(ConcurrencyError):
        views.commit("p", changes, {"$all": "2"})
    assert [k for k, _ in views.query("c")] == ["k0150"]
    assert views.get_checkpoint("p") == "1"
    raw = boto("dynamodb").scan(TableName=table)["Items"]
    assert not [i for i in raw if "tx" in i or i["pk"]["S"].startswith("t#")], "a lock or record was left"


def test_a_large_commit_interrupted_after_its_commit_point_is_seen_whole_and_finished_by_the_next_writer(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    views = dynamodb.DynamoDBViewStore(table, client=boto("dynamodb"))
    views.commit("p", [put("k0000", 1)], {})

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("process killed")

    monkeypatch.setattr(views, "_roll_forward", crash)
    with pytest.raises(RuntimeError):
        views.commit("p", [put(f"k{i:04d}", 2) for i in range(120)], {"$all": "2"})
    monkeypatch.undo()
    assert views.get_checkpoint("p") == "2"
    docs = views.get_many("c", [f"k{i:04d}" for i in range(120)])
    assert len(docs) == 120
    assert {d.value["v"] for d in docs.values()} == {2}
    first = views.get("c", "k0000")
    assert first is not None
    assert first.revision == 2
    views.commit("p", [put("k0000", 3, expected=2)], {})
    again = views.get("c", "k0000")
    assert again is not None
    assert (again.value, again.revision) == ({"v": 3}, 3)


def test_a_large_commit_that_died_before_its_commit_point_is_rolled_back(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    views = dynamodb.DynamoDBViewStore(table, client=boto("dynamodb"))
    views.commit("p", [put("k0000", 1)], {"$all": "1"})
    real_transact = views._table.transact
    calls = {"n": 0}

    def die_at_the_commit_point(items: list[dict[str, Any]]) -> Exception | None:
        calls["n"] += 1
        if calls["n"] == 3:  # two lock batches, then the flip
            raise RuntimeError("process killed")
        return real_transact(items)

    monkeypatch.setattr(views._table, "transact", die_at_the_commit_point)
    monkeypatch.setattr(views, "_roll_back", lambda txid, changes: None)  # the dead process cleans nothing
    monkeypatch.setattr(views._table, "call", _skip_record_delete(views._table.call))
    with pytest.raises(RuntimeError):
        views.commit("p", [put(f"k{i:04d}", 2) for i in range(150)], {"$all": "2"})
    monkeypatch.undo()
    assert views.get_checkpoint("p") == "1"
    assert [k for k, _ in views.query("c")] == ["k0000"]
    old = views.get("c", "k0000")
    assert old is not None
    assert old.value == {"v": 1}
    with pytest.raises(ConcurrencyError):  # the lock is young: the committer may still be alive
        views.commit("p", [put("k0000", 5, expected=1)], {})
    monkeypatch.setattr(views, "lock_timeout", -1)
    views.commit("p", [put("k0000", 5, expected=1)], {})
    now = views.get("c", "k0000")
    assert now is not None
    assert (now.value, now.revision) == ({"v": 5}, 2)


def _skip_record_delete(call: Any) -> Any:
    def wrapped(operation: str, **kwargs: Any) -> Any:
        if operation == "delete_item" and kwargs["Key"]["pk"]["S"].startswith("t#"):
            return {}
        return call(operation, **kwargs)

    return wrapped


def test_append_many_is_one_transaction_with_contiguous_positions_and_idempotent_retries(table: str) -> None:
    counter = Counter()
    store = dynamodb.DynamoDBEventStore(table, client=counter.attach(boto("dynamodb")))
    batch = [("m-a", events(2), NO_STREAM), ("m-b", events(3), NO_STREAM), ("m-c", events(1), NO_STREAM)]
    results = store.append_many(batch)
    assert [(r.stream_id, r.last_version, r.idempotent) for r in results] == [
        ("m-a", 2, False),
        ("m-b", 3, False),
        ("m-c", 1, False),
    ]
    assert counter.calls == {"GetItem": 1, "TransactWriteItems": 1}
    assert [e.position for e in store.read_all()] == [str(p) for p in range(1, 7)]
    again = store.append_many(batch)
    assert all(r.idempotent for r in again)
    assert store.last_position() == "6"
    with pytest.raises(ValidationError):
        store.append_many([("m-d", events(30), NO_STREAM), ("m-e", events(30), NO_STREAM)])
    with pytest.raises(ValidationError):
        store.append_many([("m-d", events(1), NO_STREAM), ("m-d", events(1), 1)])
    assert store.stream_version("m-d") == 0


# --- bulk_append in flight: positions taken ahead ---------------------------------------------------


class InFlight:
    """Counts ``TransactWriteItems`` calls and the most that were in flight at once."""

    def __init__(self, client: Any) -> None:
        self.lock = threading.Lock()
        self.now = self.most = self.calls = 0
        self._call = client.transact_write_items
        client.transact_write_items = self

    def __call__(self, **kwargs: Any) -> Any:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            return self._call(**kwargs)
        finally:
            with self.lock:
                self.now -= 1


def test_a_bulk_append_in_flight_is_one_reservation_then_its_parts_side_by_side(table: str) -> None:
    """1,000 events over 50 streams: one transaction takes the positions, 25 write the parts
    (two whole streams each), up to ``in_flight`` at once, and no claim is left behind."""
    client = boto("dynamodb")
    counter = Counter()
    counter.attach(client)
    flight = InFlight(client)
    store = dynamodb.DynamoDBEventStore(table, client=client)
    events = exported(50, 20, "fly")
    assert store.bulk_append(events, in_flight=8) == 1000
    assert counter.calls == {"GetItem": 1, "TransactWriteItems": 26}
    assert 1 < flight.most <= 8
    assert [e.id for e in store.read_all(limit=2000)] == [e.id for e in events]
    claims = client.query(
        TableName=table, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "x#claims"}}
    )
    assert claims["Items"] == []
    store.close()


def test_positions_a_dead_writer_took_are_passed_over_once_they_expire(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = dynamodb.DynamoDBEventStore(table, client=boto("dynamodb"))
    check_a_dead_writers_holes(store, exported(6, 20, "dead"), monkeypatch)  # 3 parts of two streams
