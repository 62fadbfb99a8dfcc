"""Bad input and faults for the firestore:// adapters: contention and unavailability are
retried then ``TransientError``; a missing project or credentials is a ``ConfigurationError``;
nothing is half-written.

Faults are injected at the SDK's commit call on Google's Firestore emulator, so the
transaction machinery and the adapter's retry loop run for real.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.services.firestore.client import FirestoreClient
from google.cloud.firestore_v1.transaction import Transaction

from skyferry.adapters import gcp
from skyferry.adapters.stores.firestore import FirestoreEventStore, FirestoreViewStore
from skyferry.core.errors import ConcurrencyError, ConfigurationError, TransientError
from skyferry.core.messages import Event, NewEvent
from skyferry.core.ports import NO_STREAM, ViewChange
from tests import services
from tests.integration.adapters.blocks_support import check_a_dead_writers_holes, exported
from tests.services import firestore as firestore_service


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcp, "backoff_delay", lambda *args, **kwargs: 0.0)


@pytest.fixture
def store_url() -> Iterator[str]:
    with firestore_service.provide("event_store", "firestore") as url:
        yield url


def lose_one_reply(monkeypatch: pytest.MonkeyPatch, which: Callable[[Any], bool]) -> list[int]:
    """Make the first commit whose request ``which`` picks be applied but answered with a
    deadline error (as when the reply is lost); the list records that it happened."""
    original = FirestoreClient.commit
    lost: list[int] = []

    def commit_then_lose_the_reply(self: FirestoreClient, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if not lost and which(kwargs.get("request") or args[0]):
            lost.append(1)
            raise gexc.DeadlineExceeded("deadline exceeded after the commit was applied")  # type: ignore[no-untyped-call]
        return result

    monkeypatch.setattr(FirestoreClient, "commit", commit_then_lose_the_reply)
    return lost


@pytest.mark.parametrize("url", ["firestore:///(default)", "firestore://p/a/b", "firestore://p/(default)?emulatr=x"])
def test_malformed_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        FirestoreEventStore.from_url(url)


def test_missing_project_is_named() -> None:
    with pytest.raises(ConfigurationError, match="project is missing"):
        FirestoreViewStore.from_url("firestore:///(default)")


def test_missing_credentials_are_a_configuration_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    store = FirestoreEventStore.from_url("firestore://some-project/(default)")
    with pytest.raises(ConfigurationError, match="credentials"):
        store.stream_version("acct-1")


def test_an_unreachable_service_is_transient_after_retries(no_backoff: None) -> None:
    port = services.free_port()  # nothing listens there
    store = FirestoreEventStore.from_url(f"firestore://p/(default)?emulator=127.0.0.1:{port}")
    try:
        with pytest.raises(TransientError):
            store.stream_version("acct-1")
    finally:
        store.close()


def test_contention_that_never_ends_is_transient_and_writes_nothing(
    store_url: str, no_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FirestoreEventStore.from_url(store_url)
    calls: list[int] = []

    def aborted(self: Transaction, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise gexc.Aborted("too much contention on these datastore entities")  # type: ignore[no-untyped-call]

    monkeypatch.setattr(Transaction, "_commit", aborted)
    try:
        with pytest.raises(TransientError):
            store.append("acct-1", [NewEvent("Opened", {"n": 1})], NO_STREAM)
        assert len(calls) > 3, "contention must be retried"
        monkeypatch.undo()
        assert store.stream_version("acct-1") == 0
        assert store.read_all() == []
        assert store.last_position() is None
    finally:
        store.close()


def test_an_append_whose_commit_outcome_was_lost_is_retried_idempotently(
    store_url: str, no_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FirestoreEventStore.from_url(store_url)
    failures = lose_one_reply(monkeypatch, lambda request: True)
    try:
        events = [NewEvent("Opened", {"n": 1}), NewEvent("Deposited", {"n": 2})]
        result = store.append("acct-1", events, NO_STREAM)
        assert failures == [1]
        assert (result.first_version, result.last_version, result.idempotent) == (1, 2, True)
        assert [e.id for e in store.read_all()] == [e.id for e in events]
        assert store.last_position() == store.read_all()[-1].position
    finally:
        store.close()


def test_a_view_commit_that_keeps_failing_writes_neither_documents_nor_checkpoint(
    store_url: str, no_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    views = FirestoreViewStore.from_url(store_url)

    def unavailable(self: Transaction, *args: Any, **kwargs: Any) -> Any:
        raise gexc.ServiceUnavailable("the service is unavailable")  # type: ignore[no-untyped-call]

    monkeypatch.setattr(Transaction, "_commit", unavailable)
    try:
        with pytest.raises(TransientError):
            views.commit("balances", [ViewChange("balances", "a1", {"total": 5})], {"$all": "7"})
        monkeypatch.undo()
        assert views.get("balances", "a1") is None
        assert views.get_checkpoint("balances") is None
    finally:
        views.close()


def test_bulk_append_after_its_own_is_one_commit_until_another_writer_writes(store_url: str) -> None:
    """A ``bulk_append`` continuing what this instance's last one left is one batched write
    on condition of the global head, without reading first; after another writer's append, or
    with an id already stored, the condition fails, the state is read again and decides."""
    now = datetime.now(UTC)

    def event(stream: str, version: int, event_id: str | None = None) -> Event:
        return Event(event_id or str(uuid.uuid4()), stream, version, "T", 1, {"n": version}, {}, now, now)

    importer, other = FirestoreEventStore.from_url(store_url), FirestoreEventStore.from_url(store_url)
    reads: list[int] = []
    read_state = importer._bulk_state

    def counted(*args: Any) -> Any:
        reads.append(1)
        return read_state(*args)

    importer._bulk_state = counted  # type: ignore[method-assign]
    try:
        assert importer.bulk_append([event("a", 1), event("b", 1), event("a", 2)]) == 3
        assert importer.bulk_append([event("b", 2), event("a", 3), event("c", 1)]) == 3
        assert len(reads) == 1  # the second call: one batched write, no read
        other.append("a", [NewEvent("T", {})], 3)  # another writer: its state is read again
        with pytest.raises(ConcurrencyError, match="version 4 holds another event"):
            importer.bulk_append([event("b", 3), event("a", 4)])
        assert len(reads) == 2
        assert importer.bulk_append([event("b", 3), event("a", 5)]) == 2
        assert len(reads) == 3
        taken = importer.read_stream("a")[0].id  # an id already stored: the batched write is refused whole
        with pytest.raises(ConcurrencyError, match="does not continue"):
            importer.bulk_append([event("b", 4), event("c", 2, taken)])
        assert len(reads) == 4
        assert importer.bulk_append([event("b", 4), event("c", 2)]) == 2
        assert len(reads) == 5
        assert importer.bulk_append([event("b", 5)]) == 1
        assert len(reads) == 5
        stored = importer.read_all()
        assert [(e.stream_id, e.version) for e in stored] == [
            ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("c", 1), ("a", 4),
            ("b", 3), ("a", 5), ("b", 4), ("c", 2), ("b", 5),
        ]  # fmt: skip
        assert [int(e.position or 0) for e in stored] == list(range(1, 13))
        assert importer.stream_version("b") == 5
        assert importer.stream_version("c") == 2
    finally:
        importer.close()
        other.close()


def test_a_batched_bulk_append_whose_reply_was_lost_is_not_stored_twice(
    store_url: str, no_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batched write was applied but its reply lost: the retry fails the head's condition
    (the write itself moved the head), the transaction then finds every event stored."""
    now = datetime.now(UTC)
    store = FirestoreEventStore.from_url(store_url)
    try:
        first = [Event(str(uuid.uuid4()), "s", v, "T", 1, {}, {}, now, now) for v in (1, 2)]
        assert store.bulk_append(first) == 2
        # the batched write, not a transaction's commit
        lost = lose_one_reply(monkeypatch, lambda request: not request.get("transaction"))
        second = [Event(str(uuid.uuid4()), "s", v, "T", 1, {}, {}, now, now) for v in (3, 4)]
        assert store.bulk_append(second) == 0  # stored by the batched write whose reply was lost
        assert lost == [1]
        assert [e.id for e in store.read_all()] == [e.id for e in first + second]
        assert store.last_position() == store.read_all()[-1].position
        assert store.bulk_append([Event(str(uuid.uuid4()), "s", 5, "T", 1, {}, {}, now, now)]) == 1
    finally:
        store.close()


# --- bulk_append in flight: positions taken ahead ---------------------------------------------------


def test_positions_a_dead_writer_took_are_passed_over_once_they_expire(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FirestoreEventStore.from_url(store_url)
    try:
        check_a_dead_writers_holes(store, exported(4, 300, "dead"), monkeypatch)  # 4 parts, a stream each
    finally:
        store.close()


def test_a_part_whose_reply_was_lost_is_not_stored_twice(
    store_url: str, no_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part's write was applied but its reply lost: the retry fails (its claim is gone, its
    events are there), the state read finds every event stored, and the call goes on."""
    store = FirestoreEventStore.from_url(store_url)

    def a_part(request: Any) -> bool:  # a part's write deletes its claim
        deletes = [w for w in request.get("writes", []) if "delete" in w]
        return bool(deletes) and "skyferry_claims" in str(deletes[-1])

    lost = lose_one_reply(monkeypatch, a_part)
    try:
        events = exported(4, 300, "lost")
        written = store.bulk_append(events, in_flight=2)
        assert lost == [1]
        assert written < len(events)  # the lost part counts as stored before, by its own write
        assert [e.id for e in store.read_all(limit=2000)] == [e.id for e in events]
        assert store.last_position() == store.read_all(limit=2000)[-1].position
    finally:
        store.close()


def test_another_writer_on_a_stream_mid_block_is_a_conflict_not_a_fork(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the reservation and a part, another writer appends to one of the part's
    streams: the part's condition on that stream's head fails, and the call raises
    ``ConcurrencyError`` instead of storing a second event at a version."""
    store, other = FirestoreEventStore.from_url(store_url), FirestoreEventStore.from_url(store_url)
    real = store._write_part
    meddled: list[str] = []

    def another_writer_first(part: Any, claim: Any, heads: Any) -> int:
        if not meddled:
            stream_id = part[-1].stream_id
            meddled.append(stream_id)
            other.append(stream_id, [NewEvent("T", {"by": "other"})], heads[stream_id][0])
        return real(part, claim, heads)

    monkeypatch.setattr(store, "_write_part", another_writer_first)
    try:
        events = exported(4, 300, "fork")
        with pytest.raises(ConcurrencyError):
            store.bulk_append(events, in_flight=1)
        for stream_id in {e.stream_id for e in events}:
            versions = [e.version for e in store.read_stream(stream_id)]
            assert versions == list(range(1, len(versions) + 1)), f"{stream_id}: {versions}"
        assert [e.data for e in store.read_stream(meddled[0])] == [{"by": "other"}]
        after = store.read_all(limit=2000)
        assert len({e.id for e in after}) == len(after)
    finally:
        store.close()
        other.close()
