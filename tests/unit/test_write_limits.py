"""How writes are cut to a store's limits, and how a refused size is told from throttling."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime

import pytest
from google.api_core import exceptions as gexc

from skyferry.adapters import gcp
from skyferry.adapters.stores import _blocks
from skyferry.adapters.stores.dynamodb import WRITE_LIMITS as DYNAMODB
from skyferry.adapters.stores.firestore import WRITE_LIMITS as FIRESTORE
from skyferry.core.errors import TransientError, ValidationError
from skyferry.core.messages import EVENT_SIZE_LIMIT, Event, encode_json
from skyferry.core.ports import WriteLimits, event_bytes, stream_bytes

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def events(sizes: list[int], streams: int) -> list[Event]:
    versions: dict[str, int] = {}
    out = []
    for index, size in enumerate(sizes):
        stream_id = f"s-{index % streams}"
        versions[stream_id] = versions.get(stream_id, 0) + 1
        data = {"pad": "x" * max(0, size - 10)}
        out.append(Event(str(uuid.uuid4()), stream_id, versions[stream_id], "T", 1, data, {}, NOW, NOW))
    return out


def cost(part: list[Event]) -> tuple[int, list[str], int]:
    streams = list(dict.fromkeys(e.stream_id for e in part))
    size = sum(
        event_bytes(len(encode_json(e.data)) + len(encode_json(e.metadata)), e.type, e.stream_id) for e in part
    ) + sum(stream_bytes(s) for s in streams)
    return len(part), streams, size


@pytest.mark.parametrize("limits", [DYNAMODB, FIRESTORE, WriteLimits(units=7, per_stream=2, bytes=200_000)])
@pytest.mark.parametrize("streams", [1, 3, 600])
def test_every_part_fits_and_the_parts_are_the_events_in_order(limits: WriteLimits, streams: int) -> None:
    rng = random.Random(streams)
    sizes = [rng.choice([20, 500, 5_000, EVENT_SIZE_LIMIT // 4]) for _ in range(1500)]
    given = events(sizes, streams)
    parts = [list(part) for part in limits.split(given)]
    assert [e.id for part in parts for e in part] == [e.id for e in given]
    for part in parts:
        count, names, size = cost(part)
        limits.check(count, names, size, "a part")  # raises if it does not fit
    for first, second in itertools.pairwise(parts):  # each part is the longest that fits
        count, names, size = cost([*first, second[0]])
        with pytest.raises(ValidationError):
            limits.check(count, names, size, "one more")


@pytest.mark.parametrize("limits", [DYNAMODB, FIRESTORE, WriteLimits(units=7, per_stream=2, bytes=200_000)])
@pytest.mark.parametrize("streams", [1, 3, 50, 600])
def test_pack_fits_every_write_and_keeps_each_streams_events_together_in_order(
    limits: WriteLimits, streams: int
) -> None:
    rng = random.Random(streams)
    sizes = [rng.choice([20, 500, 5_000, EVENT_SIZE_LIMIT // 4]) for _ in range(1500)]
    given = events(sizes, streams)
    writes = limits.pack(given)
    assert sorted(e.id for w in writes for e in w) == sorted(e.id for e in given)
    for write in writes:
        count, names, size = cost(write)
        limits.check(count, names, size, "a write")  # raises if it does not fit
    for stream_id in {e.stream_id for e in given}:
        mine = [e.version for w in writes for e in w if e.stream_id == stream_id]
        assert mine == sorted(mine), "each stream's events in order"
        holding = [i for i, w in enumerate(writes) if any(e.stream_id == stream_id for e in w)]
        assert holding == list(range(holding[0], holding[-1] + 1)), "a stream's writes are consecutive"


def test_pack_cuts_only_the_streams_that_do_not_fit_one_write() -> None:
    """50 streams of 20 interleaved events, DynamoDB's 99 units (two an event, one a stream):
    two whole streams a write and no stream cut, where split cuts nearly every one."""
    given = events([20] * 1000, 50)
    writes = DYNAMODB.pack(given)
    assert [len({e.stream_id for e in w}) for w in writes] == [2] * 25
    split = [{e.stream_id for e in part} for part in DYNAMODB.split(sorted(given, key=lambda e: e.stream_id))]
    assert sum(1 for a, b in itertools.pairwise(split) if a & b) > 15
    big = events([20] * 120, 1) + events([20] * 3, 3)[1:]  # one stream of 120 events, then two small ones
    sizes = [(len(w), sorted({e.stream_id for e in w})) for w in DYNAMODB.pack(big)]
    assert sizes == [(49, ["s-0"]), (49, ["s-0"]), (24, ["s-0", "s-1", "s-2"])]


@pytest.mark.parametrize(("most_events", "most_parts"), [(1000, 99), (1000, 4), (10_000, 128), (7, 1)])
def test_blocks_keep_the_order_and_fit_their_parts(most_events: int, most_parts: int) -> None:
    given = events([20, 500, 5_000] * 400, 50)
    cut = list(_blocks.blocks(given, DYNAMODB, most_events, most_parts))
    assert [e.id for block, _ in cut for e in block] == [e.id for e in given]
    for block, parts in cut:
        assert parts == DYNAMODB.pack(block)
        assert len(block) <= most_events
        assert len(DYNAMODB.pack(block)) <= most_parts or len(block) == 1


def test_an_event_larger_than_the_byte_cap_is_a_part_of_its_own() -> None:
    limits = WriteLimits(bytes=1000)
    given = events([10, 5000, 10], 1)
    assert [len(part) for part in limits.split(given)] == [1, 1, 1]


def test_no_cap_is_one_part_and_a_fallback_caps_the_count() -> None:
    given = events([10] * 25, 5)
    assert [len(p) for p in WriteLimits().split(given)] == [25]
    assert [len(p) for p in WriteLimits().split(given, fallback=10)] == [10, 10, 5]
    assert list(WriteLimits().split([])) == []


@pytest.mark.parametrize(
    "error",
    [
        gexc.ResourceExhausted("gRPC message exceeds maximum size 4194304: 11814532"),
        gexc.InvalidArgument("Request payload size exceeds the limit: 11534336 bytes."),
        gexc.RetryError("Timeout of 60.0s exceeded", gexc.ResourceExhausted("gRPC message exceeds maximum size 1: 2")),
    ],
)
def test_a_request_over_a_size_limit_is_refused_not_retried_as_throttling(error: Exception) -> None:
    calls = []

    def refused() -> None:
        calls.append(1)
        raise error

    with pytest.raises(ValidationError, match="size limit"):
        gcp.call(refused, "Firestore database projects/p/databases/d")
    assert len(calls) == 1


def test_throttling_is_still_retried_then_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcp.time, "sleep", lambda _: None)
    calls = []

    def throttled() -> None:
        calls.append(1)
        raise gexc.ResourceExhausted("Quota exceeded")

    with pytest.raises(TransientError):
        gcp.call(throttled, "Firestore")
    assert len(calls) == gcp.ATTEMPTS
