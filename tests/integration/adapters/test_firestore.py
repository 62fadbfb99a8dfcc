"""Bad input and faults for the Google adapters: contention and unavailability are
retried then ``TransientError``; a missing project, topic, bucket or credentials is a
``ConfigurationError``; nothing is half-written.

Faults are injected at the SDK's commit call on Google's Firestore emulator, so the
transaction machinery and the adapter's retry loop run for real.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.services.firestore.client import FirestoreClient
from google.cloud.firestore_v1.transaction import Transaction

from skyferry.adapters import gcp_common
from skyferry.adapters.archives.gcs import GCSArchive
from skyferry.adapters.brokers import pubsub as pubsub_adapter
from skyferry.adapters.brokers.pubsub import PubSubBroker
from skyferry.adapters.stores.firestore import FirestoreEventStore, FirestoreViewStore
from skyferry.core.errors import ConfigurationError, TransientError
from skyferry.core.messages import NewEvent
from skyferry.core.ports import NO_STREAM, Message, ViewChange
from tests import services
from tests.services import firestore as firestore_service
from tests.services import gcs as gcs_service
from tests.services import pubsub as pubsub_service


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcp_common, "backoff_delay", lambda *args, **kwargs: 0.0)


@pytest.fixture
def store_url() -> Iterator[str]:
    with firestore_service.provide("event_store", "firestore") as url:
        yield url


@pytest.mark.parametrize(
    "url",
    [
        "firestore:///(default)",
        "firestore://p/a/b",
        "firestore://p/(default)?emulatr=x",
        "pubsub://p",
        "pubsub:///topic",
        "gs:///prefix",
        "gs://bucket?region=x",
    ],
)
def test_malformed_urls_are_configuration_errors(url: str) -> None:
    cls: Any = {"firestore": FirestoreEventStore, "pubsub": PubSubBroker, "gs": GCSArchive}[url.split(":")[0]]
    with pytest.raises(ConfigurationError):
        cls.from_url(url)


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


def test_a_missing_bucket_is_a_configuration_error() -> None:
    endpoint = gcs_service.endpoint()
    archive = GCSArchive.from_url(f"gs://absent-{uuid.uuid4().hex[:12]}/x?endpoint={endpoint}")
    with pytest.raises(ConfigurationError, match="does not exist"):
        archive.get("manifest.json")
    with pytest.raises(ConfigurationError):
        archive.put("manifest.json", b"{}")


# --- Pub/Sub: what the emulator can show ----------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[PubSubBroker]:
    with pubsub_service.provide("broker", "pubsub") as url:
        broker = PubSubBroker.from_url(url)
        try:
            yield broker
        finally:
            broker.close()


def test_a_group_subscription_is_ordered_with_a_dead_letter_policy(broker: PubSubBroker) -> None:
    path = broker.ensure_group("projections", max_deliveries=7)
    subscription = broker.subscriber.get_subscription(subscription=path)
    assert subscription.enable_message_ordering is True
    assert subscription.dead_letter_policy.max_delivery_attempts == 7
    assert subscription.dead_letter_policy.dead_letter_topic.endswith(
        "/topics/" + pubsub_adapter.dead_letter_topic_id("events", "projections")
    )
    low = broker.subscriber.get_subscription(subscription=broker.ensure_group("fast", max_deliveries=2))
    assert low.dead_letter_policy.max_delivery_attempts == pubsub_adapter.MIN_SERVER_DELIVERY_ATTEMPTS


def test_dead_lettering_below_the_services_minimum_is_done_by_the_client(broker: PubSubBroker) -> None:
    attempts: list[int] = []
    poison = Message(id=str(uuid.uuid4()), key="acct-1", body=b"{}", attributes={"type": "Poison"})

    def refuse(message: Message) -> None:
        attempts.append(message.delivery_attempt)
        raise RuntimeError("poison")

    broker.subscribe("fast", refuse, max_deliveries=2)
    broker.publish([poison])
    deadline = time.monotonic() + 90
    dead: list[Message] = []
    while time.monotonic() < deadline and not dead:
        dead = [m for m in broker.dead_letters("fast") if m.id == poison.id]
        time.sleep(0.1)
    assert dead, "the poison message was not dead-lettered"
    assert attempts == [1, 2]
    assert dead[0].key == "acct-1"
    assert dead[0].attributes["type"] == "Poison"
