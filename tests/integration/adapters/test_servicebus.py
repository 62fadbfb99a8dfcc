"""The Service Bus fake keeps the service's documented rules, and the adapter maps the port onto them.

Nothing here runs against a real Service Bus (none can be had without Docker); these tests
make sure the fake would catch an adapter that broke session ordering, lock or
dead-letter rules, and check the adapter's mapping of ids, keys and attributes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    SessionLockLostError,
)

from skyferry.adapters.brokers import servicebus
from skyferry.core.errors import ConfigurationError
from skyferry.core.ports import Message
from tests.services.servicebus_fake import FakeAdministrationClient, FakeNamespace, FakeServiceBusClient

TOPIC = "t"


def namespace(max_delivery_count: int = 10, lock_duration: float = 30.0) -> tuple[FakeNamespace, FakeServiceBusClient]:
    ns = FakeNamespace(lock_duration=lock_duration)
    ns.create_topic(TOPIC)
    FakeAdministrationClient(ns).create_subscription(
        TOPIC, "g", requires_session=True, max_delivery_count=max_delivery_count
    )
    return ns, FakeServiceBusClient(ns)


def send(client: FakeServiceBusClient, *messages: tuple[str, str]) -> None:
    with client.get_topic_sender(TOPIC) as sender:
        sender.send_messages([ServiceBusMessage(b"x", message_id=m, session_id=s) for m, s in messages])


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_session_subscription_needs_a_session_receiver() -> None:
    _, client = namespace()
    with pytest.raises(Exception, match="requires sessions"):
        client.get_subscription_receiver(TOPIC, "g")


def test_a_session_is_locked_by_one_receiver_at_a_time_and_delivered_in_order() -> None:
    _, client = namespace()
    send(client, ("1", "a"), ("2", "a"), ("3", "b"))
    with client.get_subscription_receiver(TOPIC, "g", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=0.1) as first:
        assert first.session_id == "a"
        with client.get_subscription_receiver(
            TOPIC, "g", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=0.1
        ) as second:
            assert second.session_id == "b", "session a is locked by the first receiver"
            with pytest.raises(OperationTimeoutError):
                client.get_subscription_receiver(TOPIC, "g", session_id="a", max_wait_time=0.1).__enter__()
        got = first.receive_messages(max_message_count=5, max_wait_time=0.1)
        assert [m.message_id for m in got] == ["1", "2"]


def test_abandon_redelivers_first_with_a_higher_count_then_the_service_dead_letters() -> None:
    _ns, client = namespace(max_delivery_count=3)
    send(client, ("1", "a"), ("2", "a"))
    for expected in (0, 1, 2):
        with client.get_subscription_receiver(TOPIC, "g", session_id="a", max_wait_time=0.1) as receiver:
            (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=0.1)
            assert (message.message_id, message.delivery_count) == ("1", expected)
            receiver.abandon_message(message)
    with client.get_subscription_receiver(TOPIC, "g", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        dead = dlq.peek_messages(10)
    assert [(m.message_id, m.dead_letter_reason) for m in dead] == [("1", "MaxDeliveryCountExceeded")]
    with client.get_subscription_receiver(TOPIC, "g", session_id="a", max_wait_time=0.1) as receiver:
        assert [m.message_id for m in receiver.receive_messages(1, 0.1)] == ["2"]


def test_settling_after_the_lock_expired_or_twice_fails() -> None:
    _, client = namespace(lock_duration=0.05)
    send(client, ("1", "a"))
    receiver = client.get_subscription_receiver(TOPIC, "g", session_id="a", max_wait_time=0.1).__enter__()
    (message,) = receiver.receive_messages(1, 0.1)
    time.sleep(0.1)
    with pytest.raises(SessionLockLostError):
        receiver.complete_message(message)
    receiver.close()
    _, client = namespace()
    send(client, ("1", "a"))
    with client.get_subscription_receiver(TOPIC, "g", session_id="a", max_wait_time=0.1) as receiver:
        (message,) = receiver.receive_messages(1, 0.1)
        receiver.complete_message(message)
        with pytest.raises(MessageAlreadySettled):
            receiver.complete_message(message)


def test_closing_a_receiver_releases_the_session_and_counts_a_delivery() -> None:
    _, client = namespace()
    send(client, ("1", "a"))
    with client.get_subscription_receiver(TOPIC, "g", session_id="a", max_wait_time=0.1) as receiver:
        receiver.receive_messages(1, 0.1)
    with client.get_subscription_receiver(TOPIC, "g", session_id="a", max_wait_time=0.1) as receiver:
        (message,) = receiver.receive_messages(1, 0.1)
        assert message.delivery_count == 1


def test_duplicates_are_dropped_and_oversized_or_unknown_entities_rejected() -> None:
    ns, client = namespace()
    send(client, ("1", "a"), ("1", "a"))
    assert len(ns.subscription(TOPIC, "g").messages) == 1
    with pytest.raises(MessageSizeExceededError), client.get_topic_sender(TOPIC) as sender:
        sender.send_messages(ServiceBusMessage(b"x" * (257 * 1024), message_id="big", session_id="a"))
    with pytest.raises(MessagingEntityNotFoundError):
        client.get_topic_sender("nope")
    with pytest.raises(MessagingEntityNotFoundError):
        client.get_subscription_receiver(TOPIC, "nope", session_id="a")


# --- the adapter's mapping -----------------------------------------------------------------------


def test_a_long_key_gets_a_hashed_session_but_travels_whole() -> None:
    key = "stream/" + "k" * 190
    converted = servicebus.to_servicebus(Message(id="m1", key=key, body=b"{}", attributes={"type": "T"}))
    assert converted.session_id is not None
    assert len(converted.session_id) <= servicebus.SESSION_ID_MAX
    assert converted.session_id == servicebus.session_id_for(key)
    _ns, client = namespace()
    with client.get_topic_sender(TOPIC) as sender:
        sender.send_messages([converted])
    with client.get_subscription_receiver(TOPIC, "g", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=0.1) as r:
        (raw,) = r.receive_messages(1, 0.1)
        back = servicebus.from_servicebus(raw)
    assert (back.id, back.key, back.body, dict(back.attributes), back.delivery_attempt) == (
        "m1",
        key,
        b"{}",
        {"type": "T"},
        1,
    )


def test_a_poison_message_is_dead_lettered_by_the_adapter_before_the_service_backstop() -> None:
    ns, client = namespace(max_delivery_count=10)
    broker = servicebus.ServiceBusBroker(
        servicebus.ServiceBusLocation.parse(f"servicebus://ns/{TOPIC}?retry_backoff=0&workers=2"), client=client
    )
    attempts: list[int] = []

    def handler(message: Message) -> None:
        attempts.append(message.delivery_attempt)
        raise RuntimeError("poison")

    subscription = broker.subscribe("g", handler, max_deliveries=3)
    broker.publish([Message(id="p", key="k", body=b"{}")])
    wait_until(lambda: bool(broker.dead_letters("g")))
    subscription.close()
    assert attempts == [1, 2, 3]
    (dead,) = broker.dead_letters("g")
    assert dead.id == "p"
    assert ns.subscription(TOPIC, "g").dead[0].dead_letter_reason == "MaxDeliveriesExceeded"


def test_bad_urls_and_missing_registrations_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="namespace and a topic"):
        servicebus.ServiceBusLocation.parse("servicebus://ns")
    with pytest.raises(ConfigurationError, match="unknown options"):
        servicebus.ServiceBusLocation.parse("servicebus://ns/t?colour=blue")
    with pytest.raises(ConfigurationError, match="not registered"):
        servicebus.ServiceBusLocation.parse("servicebus://ns/t?client=nobody").clients()
    assert servicebus.ServiceBusLocation.parse("servicebus://ns/t").host == "ns.servicebus.windows.net"


def test_publishing_to_a_missing_topic_is_a_configuration_error() -> None:
    ns = FakeNamespace()
    broker = servicebus.ServiceBusBroker(
        servicebus.ServiceBusLocation.parse("servicebus://ns/missing"), client=FakeServiceBusClient(ns)
    )
    with pytest.raises(ConfigurationError, match="missing"):
        broker.publish([Message(id="m", key="k", body=b"{}")])
