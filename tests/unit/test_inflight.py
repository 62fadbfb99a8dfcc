"""Many writes in flight: bounded, in order per key, and a failure leaves no gap.

The pool (``skyferry.core.inflight``) alone, then the migrate writer on it over an
instrumented in-memory store that counts the appends in flight and can fail one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from skyferry.adapters.archives.local import LocalArchive
from skyferry.adapters.stores.memory import MemoryEventStore, MemoryViewStore
from skyferry.core.errors import ConfigurationError, TransientError
from skyferry.core.inflight import NotRun, OrderedPool
from skyferry.core.messages import Event, NewEvent, new_event_id
from skyferry.core.ports import AppendResult, ExpectedVersion, WriteLimits
from skyferry.migrate.export import export
from skyferry.migrate.importer import import_archive
from skyferry.migrate.verify import verify_archive
from skyferry.migrate.writer import MAX_CONCURRENCY, TargetWriter, check_concurrency


def test_tasks_of_one_key_run_in_order_and_the_bound_holds() -> None:
    pool: OrderedPool[int] = OrderedPool(4)
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()
    running = [0]
    most = [0]

    def task(key: str, n: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002)
        with lock:
            seen.setdefault(key, []).append(n)
            running[0] -= 1
        return n

    try:
        for n in range(120):
            key = f"k{n % 7}"
            pool.submit((key,), lambda key=key, n=n: task(key, n))  # type: ignore[misc]
        assert pool.drain() == list(range(120))
    finally:
        pool.close()
    assert most[0] == pool.max_in_flight <= 4
    assert pool.max_in_flight > 1  # different keys did run side by side
    for key, order in seen.items():
        assert order == sorted(order), key


def test_a_task_waits_for_every_key_it_names() -> None:
    pool: OrderedPool[str] = OrderedPool(3)
    log: list[str] = []
    gate = threading.Event()
    try:
        pool.submit(("a",), lambda: (gate.wait(5), log.append("a"), "a")[2])
        pool.submit(("b",), lambda: (log.append("b"), "b")[1])
        pool.submit(("a", "b"), lambda: (log.append("ab"), "ab")[1])
        time.sleep(0.05)
        assert log == ["b"]  # "ab" waits for "a"
        gate.set()
        assert pool.drain() == ["a", "b", "ab"]
    finally:
        pool.close()
    assert log == ["b", "a", "ab"]


def test_a_failure_starts_nothing_more_and_is_raised() -> None:
    pool: OrderedPool[int] = OrderedPool(2)
    ran: list[int] = []

    def fail() -> int:
        raise TransientError("boom")

    try:
        pool.submit(("a",), fail)
        for n in range(5):
            pool.submit(("a",), lambda n=n: (ran.append(n), n)[1])  # type: ignore[misc]
        with pytest.raises(TransientError, match="boom"):
            pool.drain()
        assert ran == []  # a's later tasks never ran: no gap after the failed one
        pool.submit(("a",), lambda: 7)  # the pool goes on after a drain
        assert pool.drain() == [7]
    finally:
        pool.close()


def test_size_one_runs_in_the_callers_thread() -> None:
    pool: OrderedPool[str] = OrderedPool(1)
    pool.submit(("a",), lambda: threading.current_thread().name)
    assert pool.drain() == [threading.current_thread().name]
    with pytest.raises(ZeroDivisionError):
        pool.submit(("a",), lambda: str(1 // 0))
    assert pool.drain() == []


@pytest.mark.parametrize("value", [0, -1, MAX_CONCURRENCY + 1, True, 2.5])
def test_concurrency_is_range_checked(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="--concurrency must be from 1 to"):
        check_concurrency(value)


class CountingStore(MemoryEventStore):
    """A store without ``bulk_append`` (the append path, as Cosmos DB) that counts appends in
    flight, takes a little time per append, and fails the append of ``fail_at`` once."""

    features: frozenset[str] = frozenset()

    def __init__(self, fail_at: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.write_limits = WriteLimits()
        self.in_flight = 0
        self.most = 0
        self.order: list[tuple[str, int]] = []
        self._count = threading.Lock()

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> AppendResult:
        with self._count:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(0.003)  # a round trip: the others get to start meanwhile
            first = int(expected_version) + 1  # type: ignore[call-overload]
            failing = self.fail_at
            if failing is not None and failing[0] == stream_id and first <= failing[1] < first + len(events):
                self.fail_at = None
                raise TransientError(f"{stream_id} at {first}: the service is away")
            result = super().append(stream_id, events, expected_version)
            with self._count:
                self.order.append((stream_id, first))
            return result
        finally:
            with self._count:
                self.in_flight -= 1


def _events(streams: int, per_stream: int) -> list[Event]:
    now = datetime.now(UTC)
    return [
        Event(new_event_id(), f"s-{n % streams}", n // streams + 1, "Happened", 1, {"n": n}, {}, now, now)
        for n in range(streams * per_stream)
    ]


def _versions(store: MemoryEventStore, stream_id: str) -> list[int]:
    return [event.version for event in store.read_stream(stream_id)]


def test_the_writer_keeps_each_stream_in_order_within_its_bound() -> None:
    store = CountingStore()
    store.write_limits = WriteLimits(units=3)  # several appends per stream
    events = _events(streams=12, per_stream=9)
    writer = TargetWriter(store, concurrency=5)
    try:
        assert writer.write(events) == len(events)
    finally:
        writer.close()
    assert 1 < store.most <= 5
    assert writer.pool.max_in_flight <= 5
    for n in range(12):
        assert _versions(store, f"s-{n}") == list(range(1, 10))
        firsts = [first for stream, first in store.order if stream == f"s-{n}"]
        assert firsts == [1, 4, 7]  # each stream's appends in version order


def test_a_pool_across_calls_waits_per_call_and_takes_tasks_again_after_restart() -> None:
    pool: OrderedPool[int] = OrderedPool(4, name="test-calls")
    release = threading.Event()
    order: list[int] = []

    def task(n: int, fail: bool = False) -> int:
        if n == 0:
            release.wait(10)
        order.append(n)
        if fail:
            raise TransientError(f"task {n} failed")
        return n

    try:
        first = [pool.submit(("k",), lambda: task(0)), pool.submit(("j",), lambda: task(1))]
        second = [pool.submit(("k",), lambda: task(2)), pool.submit(("i",), lambda: task(3))]
        assert pool.wait([second[1]]) == [3], "a call's own tasks, whatever the others do"
        release.set()
        assert pool.wait(second[:1]) == [2]
        assert order.index(2) > order.index(0), "key k in submission order across calls"
        assert pool.wait(first) == [0, 1]
        assert pool._tasks == {}, "waited tasks are forgotten"
        assert pool._last == {}

        failing = [pool.submit(("k",), lambda: task(4, fail=True))]
        with pytest.raises(TransientError, match="task 4"):
            pool.wait(failing)
        later = [pool.submit(("k",), lambda: task(5))]
        with pytest.raises(NotRun):
            pool.wait(later)
        assert 5 not in order, "nothing runs after a failure until restart"
        pool.restart()
        assert pool.wait([pool.submit(("k",), lambda: task(6))]) == [6]
    finally:
        release.set()
        pool.close()


def test_a_failure_mid_flight_leaves_no_gap_and_a_rerun_completes() -> None:
    store = CountingStore(fail_at=("s-3", 5))
    store.write_limits = WriteLimits(units=2)
    events = _events(streams=8, per_stream=8)
    writer = TargetWriter(store, concurrency=4)
    try:
        with pytest.raises(TransientError, match="the service is away"):
            writer.write(events)
        for n in range(8):  # every stream holds a prefix of its versions, never a gap
            versions = _versions(store, f"s-{n}")
            assert versions == list(range(1, len(versions) + 1))
        assert _versions(store, "s-3") == [1, 2, 3, 4]  # stopped just before the failed append
        stored = len(store.read_all(limit=1000))
        assert 0 < stored < len(events)
        assert writer.write(events) == len(events) - stored  # the rest, what is stored skipped
    finally:
        writer.close()
    for n in range(8):
        assert _versions(store, f"s-{n}") == list(range(1, 9))
    assert len(store.read_all(limit=1000)) == len(events)


def test_an_import_failing_mid_flight_resumes_and_verifies(tmp_path: Path) -> None:
    source = MemoryEventStore()
    source.bulk_append(_events(streams=10, per_stream=12))
    archive = LocalArchive(tmp_path / "archive")
    export(source, archive, chunk_events=40)  # three chunks
    target, views = CountingStore(fail_at=("s-7", 10)), MemoryViewStore()  # version 10: the third chunk
    with pytest.raises(TransientError, match="the service is away"):
        import_archive(archive, target, views, concurrency=4)
    assert 1 < target.most <= 4
    for n in range(10):  # no stream has a gap
        versions = _versions(target, f"s-{n}")
        assert versions == list(range(1, len(versions) + 1))
    report = import_archive(archive, target, views, concurrency=4)
    assert report.resumed_at_chunk == 2  # the first two chunks were checkpointed, not the third
    assert verify_archive(archive, target).ok
    assert len(target.read_all(limit=1000)) == 120


def test_a_part_pool_warms_each_thread_it_will_use_once_and_a_failed_warm_up_fails_nothing() -> None:
    """``PartPool.warm``: the threads a block will write on prepare (a Cosmos DB client each)
    while the caller reads; once per pool; a warm-up that fails is left to the first write."""
    from skyferry.adapters.stores._blocks import Claim, PartPool

    warmed: list[str] = []
    lock = threading.Lock()
    everyone = threading.Barrier(3, timeout=10)  # three warm-ups at once: on three threads

    def prepare() -> None:
        everyone.wait()
        with lock:
            warmed.append(threading.current_thread().name)
        if len(warmed) == 1:
            raise TransientError("the first one fails")

    parts = PartPool("warm-test")
    parts.warm(8, 3, prepare)  # 3 streams in the block: 3 of the 8 threads
    parts.warm(8, 3, prepare)  # once per pool
    event = Event(new_event_id(), "s", 1, "T", 1, {}, {}, datetime.now(UTC), datetime.now(UTC))
    written = parts.run([[event]], [Claim("c", (1,), 0)], 8, lambda part, claim: len(part), lambda claim: None)
    assert written == 1, "the warm-ups count nothing, and the one that failed fails no write"
    assert len(warmed) == 3
    assert len(set(warmed)) == 3
    assert all(name.startswith("warm-test-") for name in warmed)
    parts.warm(1, 3, prepare)  # a pool of one writes in the caller's thread: nothing to warm
    assert len(warmed) == 3
    parts.close()
