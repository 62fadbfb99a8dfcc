"""SNS FIFO -> SQS FIFO on moto server: attempts are the handler's failures, not SQS's receive count.

A FIFO receive returns the later messages of a group with the first, so each failure of the
first raises their ``ApproximateReceiveCount`` too.  A healthy message queued behind a
failing one must still get its full ``max_deliveries`` attempts, and the queue's redrive
policy must not move it either.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from skyferry.adapters.brokers import sns_sqs
from skyferry.core.errors import ConfigurationError, TransientError, ValidationError
from skyferry.core.ports import Message
from tests.services import moto_server
from tests.services import sns_sqs as sns_sqs_service


@pytest.fixture
def url() -> Iterator[str]:
    with sns_sqs_service.provide("broker", "sns+sqs") as base:
        yield base


def test_a_message_behind_a_failing_one_keeps_its_own_attempts(url: str) -> None:
    broker = sns_sqs.SnsSqsBroker.from_url(url)
    failures_left = {"first": 2, "second": 1}
    attempts: dict[str, list[int]] = {"first": [], "second": []}
    handled: list[str] = []
    done = threading.Event()

    def handler(message: Message) -> None:
        name = message.body.decode()
        attempts[name].append(message.delivery_attempt)
        if failures_left[name]:
            failures_left[name] -= 1
            raise RuntimeError(f"{name}: a transient failure")
        handled.append(name)
        if len(handled) == 2:
            done.set()

    subscription = broker.subscribe("projector", handler, max_deliveries=3)
    broker.publish([Message(id=str(uuid.uuid4()), key="acct-1", body=name.encode()) for name in ("first", "second")])
    try:
        assert done.wait(60), f"not both handled: {attempts}, dead letters {broker.dead_letters('projector')}"
    finally:
        subscription.close()
    assert handled == ["first", "second"]
    assert attempts == {"first": [1, 2, 3], "second": [1, 2]}
    assert broker.dead_letters("projector") == []
    broker.close()


def test_a_poison_message_is_dead_lettered_at_max_deliveries_and_the_redrive_derives_from_it(url: str) -> None:
    broker = sns_sqs.SnsSqsBroker.from_url(url)
    seen: list[int] = []

    def refuse(message: Message) -> None:
        seen.append(message.delivery_attempt)
        raise RuntimeError("poison")

    subscription = broker.subscribe("poison", refuse, max_deliveries=3)
    broker.publish([Message(id=str(uuid.uuid4()), key="acct-2", body=b"x")])
    deadline = time.monotonic() + 60
    while not broker.dead_letters("poison") and time.monotonic() < deadline:
        time.sleep(0.05)
    subscription.close()
    assert seen[:3] == [1, 2, 3]
    [letter] = broker.dead_letters("poison")
    assert letter.delivery_attempt == 3
    queue_url, _ = broker._queues("poison", 3)
    redrive = broker._sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    assert json.loads(redrive["Attributes"]["RedrivePolicy"])["maxReceiveCount"] == sns_sqs.redrive_receive_count(3)
    assert sns_sqs.redrive_receive_count(3) == 30
    assert sns_sqs.redrive_receive_count(500) == 1000
    broker.close()


def test_a_missing_queue_is_a_configuration_error_naming_it() -> None:
    endpoint = moto_server.endpoint()
    broker = sns_sqs.SnsSqsBroker.from_url(f"sns+sqs://nothing?endpoint={endpoint}&account=123456789012&wait=0")
    with pytest.raises(ConfigurationError, match=r"nothing-projections\.fifo"):
        broker.subscribe("projections", lambda m: None)
    broker.close()


def test_publishing_keeps_inflight_requests_and_never_two_of_one_group(url: str) -> None:
    broker = sns_sqs.SnsSqsBroker.from_url(f"{url}&inflight=4")
    client = broker._sns
    original = client.publish_batch
    lock = threading.Lock()
    in_flight: list[set[str]] = []
    most = [0]
    sent: dict[str, list[str]] = {}
    shared: list[str] = []

    def publish_batch(**kwargs: object) -> object:
        entries = kwargs["PublishBatchRequestEntries"]
        assert isinstance(entries, list)
        groups = {entry["MessageGroupId"] for entry in entries}
        with lock:
            shared.extend(sorted(groups & set().union(*in_flight)))
            in_flight.append(groups)
            most[0] = max(most[0], len(in_flight))
            for entry in entries:
                sent.setdefault(entry["MessageGroupId"], []).append(entry["MessageDeduplicationId"])
        try:
            time.sleep(0.02)  # a round trip: the other lanes get to send meanwhile
            return original(**kwargs)
        finally:
            with lock:
                in_flight.remove(groups)

    client.publish_batch = publish_batch
    messages = [Message(id=str(uuid.uuid4()), key=f"acct-{n % 13}", body=b"{}") for n in range(300)]
    try:
        broker.publish(messages)
    finally:
        broker.close()
    assert 1 < most[0] <= 4
    assert shared == []  # no group was ever in two requests in flight at once
    for key in {m.key for m in messages}:  # and each group went out in publish order
        assert sent[sns_sqs.group_id(key)] == [sns_sqs.dedup_id(m.id) for m in messages if m.key == key]


def test_publishes_begun_together_keep_each_group_in_order_and_stop_after_a_failure(url: str) -> None:
    broker = sns_sqs.SnsSqsBroker.from_url(f"{url}&inflight=4")
    client = broker._sns
    original = client.publish_batch
    lock = threading.Lock()
    sent: dict[str, list[str]] = {}
    refuse: set[str] = set()

    def publish_batch(**kwargs: object) -> object:
        entries = kwargs["PublishBatchRequestEntries"]
        assert isinstance(entries, list)
        if any(entry["MessageDeduplicationId"] in refuse for entry in entries):
            raise ValidationError("refused")  # a sender fault: not retried
        time.sleep(0.02)  # a round trip
        with lock:
            for entry in entries:
                sent.setdefault(entry["MessageGroupId"], []).append(entry["MessageDeduplicationId"])
        return original(**kwargs)

    client.publish_batch = publish_batch
    calls = [[Message(id=str(uuid.uuid4()), key=f"acct-{n % 7}", body=b"{}") for n in range(60)] for _ in range(4)]
    try:
        waiters = [broker.publish_begin(call) for call in calls]
        for wait in waiters:
            wait()
        everything = [m for call in calls for m in call]
        for key in {m.key for m in everything}:  # each group in order across the four calls
            assert sent[sns_sqs.group_id(key)] == [sns_sqs.dedup_id(m.id) for m in everything if m.key == key]

        # A call that fails: the call begun after it sends nothing of that group until every
        # waiter was called; then the broker takes publishes again.
        sent.clear()
        failing = [Message(id=str(uuid.uuid4()), key="acct-0", body=b"{}") for _ in range(30)]
        refuse.add(sns_sqs.dedup_id(failing[0].id))
        after = [Message(id=str(uuid.uuid4()), key="acct-0", body=b"{}") for _ in range(30)]
        first, second = broker.publish_begin(failing), broker.publish_begin(after)
        with pytest.raises(ValidationError, match="refused"):
            first()
        with pytest.raises(TransientError, match="an earlier publish failed"):
            second()
        assert sns_sqs.group_id("acct-0") not in sent, "nothing of the group went out after the failure"
        refuse.clear()
        broker.publish_begin(failing)()
        assert len(sent[sns_sqs.group_id("acct-0")]) == 30
    finally:
        broker.close()


@pytest.mark.parametrize("inflight", ["0", "33", "x"])
def test_inflight_is_range_checked(inflight: str) -> None:
    with pytest.raises(ConfigurationError, match="inflight must be a whole number from 1 to 32"):
        sns_sqs.SnsSqsBroker.from_url(f"sns+sqs://t?region=us-east-1&inflight={inflight}")
