"""Bad input and faults for the firestore:// adapters: contention and unavailability are
retried then ``TransientError``; a missing project or credentials is a ``ConfigurationError``;
nothing is half-written.

Faults are injected at the SDK's commit call on Google's Firestore emulator, so the
transaction machinery and the adapter's retry loop run for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.services.firestore.client import FirestoreClient
from google.cloud.firestore_v1.transaction import Transaction

from skyferry.adapters import gcp
from skyferry.adapters.stores.firestore import FirestoreEventStore, FirestoreViewStore
from skyferry.core.errors import ConfigurationError, TransientError
from skyferry.core.messages import NewEvent
from skyferry.core.ports import NO_STREAM, ViewChange
from tests import services
from tests.services import firestore as firestore_service


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcp, "backoff_delay", lambda *args, **kwargs: 0.0)


@pytest.fixture
def store_url() -> Iterator[str]:
    with firestore_service.provide("event_store", "firestore") as url:
        yield url


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
    original = FirestoreClient.commit
    failures: list[int] = []

    def commit_then_lose_the_reply(self: FirestoreClient, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if not failures:
            failures.append(1)
            raise gexc.DeadlineExceeded("deadline exceeded after the commit was applied")  # type: ignore[no-untyped-call]
        return result

    monkeypatch.setattr(FirestoreClient, "commit", commit_then_lose_the_reply)
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
