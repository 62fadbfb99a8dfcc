"""The pubsub:// broker on Google's Pub/Sub emulator beyond the conformance suite: bad URLs,
and what the emulator can show of ordering and dead-lettering; and, at the publisher
client's seam, what it cannot: a failed publish pausing its ordering key."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from google.api_core import exceptions as gexc
from google.cloud.pubsub_v1.publisher.exceptions import PublishToPausedOrderingKeyException

from skyferry.adapters.brokers import pubsub as pubsub_adapter
from skyferry.adapters.brokers.pubsub import PubSubBroker
from skyferry.core.errors import ConfigurationError, TransientError, ValidationError
from skyferry.core.ports import Message
from tests.services import pubsub as pubsub_service


@pytest.mark.parametrize("url", ["pubsub://p", "pubsub:///topic"])
def test_malformed_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        PubSubBroker.from_url(url)


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


class PausingPublisher:
    """The publisher client's ordering-key rule, at its narrowest seam (the emulator cannot be
    made to fail one publish): a failed publish pauses its key, and publishing to a paused key
    raises ``PublishToPausedOrderingKeyException`` until ``resume_publish``."""

    def __init__(self, fail: set[str]) -> None:
        self.fail = fail
        self.paused: set[str] = set()
        self.accepted: list[str] = []

    def get_topic(self, topic: str) -> object:
        return object()

    def publish(self, topic: str, data: bytes, ordering_key: str = "", **attributes: str) -> Future[str]:
        if ordering_key in self.paused:
            raise PublishToPausedOrderingKeyException(ordering_key)
        future: Future[str] = Future()
        if attributes[pubsub_adapter.ID_ATTRIBUTE] in self.fail:
            self.paused.add(ordering_key)
            future.set_exception(gexc.InvalidArgument("refused"))
        else:
            self.accepted.append(attributes[pubsub_adapter.ID_ATTRIBUTE])
            future.set_result("server-id")
        return future

    def resume_publish(self, topic: str, ordering_key: str) -> None:
        self.paused.discard(ordering_key)


def test_a_call_begun_after_a_failed_one_is_refused_and_every_key_is_resumed() -> None:
    poison = Message(id=str(uuid.uuid4()), key="acct-1", body=b"{}")
    publisher = PausingPublisher({poison.id})
    broker = PubSubBroker("pubsub://p/events", publisher=publisher)  # type: ignore[arg-type]
    first = broker.publish_begin([poison])
    later = Message(id=str(uuid.uuid4()), key="acct-1", body=b"{}")
    with pytest.raises(TransientError, match="an earlier publish of key 'acct-1' failed"):
        broker.publish_begin([later])
    with pytest.raises(ValidationError, match="refused"):  # the failure itself, translated
        first()
    assert publisher.paused == set(), "the keys are taken again"
    assert later.id not in publisher.accepted
    broker.publish_begin([later])()
    assert publisher.accepted == [later.id]
