"""The Broker contract of skyferry.core.ports, run against every registered adapter.

Groups are subscribed before publishing: a group receives what is published after it
was first subscribed (or provisioned by the infrastructure).  Waits are bounded polls,
never timed assertions.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable

import pytest

from skyferry.core.ports import BROKER_FEATURES, FEATURE_PUBLISH_BEGIN, Broker, Message, PipelinedBroker, features_of

WAIT = 90.0


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def msg(key: str, seq: int, **attributes: str) -> Message:
    body = f'{{"key": "{key}", "seq": {seq}, "text": "grüß dich ✓"}}'.encode()
    return Message(id=str(uuid.uuid4()), key=key, body=body, attributes={"seq": str(seq), **attributes})


def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


class Recorder:
    """A handler that records what it handled, thread-safely, and can be told to fail."""

    def __init__(self, fail: Callable[[Message], bool] = lambda m: False) -> None:
        self.lock = threading.Lock()
        self.handled: list[Message] = []
        self.attempts: Counter[str] = Counter()
        self.fail = fail
        self.active: dict[str, int] = defaultdict(int)
        self.overlap = False

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.attempts[message.id] += 1
            self.active[message.key] += 1
            if self.active[message.key] > 1:
                self.overlap = True
        try:
            time.sleep(0.001)
            if self.fail(message):
                raise RuntimeError(f"handler refuses {message.id}")
            with self.lock:
                self.handled.append(message)
        finally:
            with self.lock:
                self.active[message.key] -= 1

    def ids(self) -> set[str]:
        with self.lock:
            return {m.id for m in self.handled}

    def first_success_order(self, key: str) -> list[int]:
        with self.lock:
            order: list[int] = []
            for m in self.handled:
                seq = int(m.attributes["seq"])
                if m.key == key and seq not in order:
                    order.append(seq)
            return order


def test_every_message_arrives_with_its_id_key_body_and_attributes(broker: Broker) -> None:
    rec = Recorder()
    broker.subscribe(group(), rec)
    sent = [msg("acct-1", 1, type="MoneyDeposited"), msg("Ärger:ü/日本", 2)]
    broker.publish(sent)
    wait_until(lambda: rec.ids() >= {m.id for m in sent}, "both messages")
    got = {m.id: m for m in rec.handled}
    for m in sent:
        assert got[m.id].key == m.key
        assert got[m.id].body == m.body
        assert dict(got[m.id].attributes).items() >= dict(m.attributes).items()
        assert got[m.id].delivery_attempt >= 1


def test_order_is_kept_per_key_within_a_group(broker: Broker) -> None:
    rec = Recorder()
    broker.subscribe(group(), rec)
    keys = ["k-a", "k-b", "k-c"]
    sent = [msg(k, i) for i in range(15) for k in keys]
    for start in range(0, len(sent), 10):
        broker.publish(sent[start : start + 10])
    wait_until(lambda: rec.ids() >= {m.id for m in sent}, "all messages")
    for k in keys:
        assert rec.first_success_order(k) == list(range(15))
    assert not rec.overlap, "two messages of one key were handled at the same time"


def test_each_group_gets_every_message(broker: Broker) -> None:
    first, second = Recorder(), Recorder()
    broker.subscribe(group(), first)
    broker.subscribe(group(), second)
    sent = [msg("k", i) for i in range(5)]
    broker.publish(sent)
    wait_until(lambda: first.ids() >= {m.id for m in sent} and second.ids() >= {m.id for m in sent}, "both groups")
    assert first.first_success_order("k") == second.first_success_order("k") == list(range(5))


def test_competing_consumers_share_a_group_and_keep_key_order(broker: Broker) -> None:
    shared = Recorder()
    name = group()
    broker.subscribe(name, shared)
    broker.subscribe(name, shared)
    keys = [f"k{i}" for i in range(6)]
    sent = [msg(k, i) for i in range(8) for k in keys]
    for start in range(0, len(sent), 10):
        broker.publish(sent[start : start + 10])
    wait_until(lambda: shared.ids() >= {m.id for m in sent}, "all messages")
    time.sleep(0.5)
    assert len(shared.handled) < 2 * len(sent), "each consumer got every message: they do not compete"
    for k in keys:
        assert shared.first_success_order(k) == list(range(8))
    assert not shared.overlap, "two messages of one key were handled at the same time"


def test_a_failing_handler_gets_a_redelivery_and_the_key_waits_for_it(broker: Broker) -> None:
    failed_once: set[str] = set()

    def fail_first_attempt_of_seq_1(message: Message) -> bool:
        if message.attributes["seq"] == "1" and message.id not in failed_once:
            failed_once.add(message.id)
            return True
        return False

    rec = Recorder(fail_first_attempt_of_seq_1)
    broker.subscribe(group(), rec)
    sent = [msg("k", i) for i in range(4)]
    broker.publish(sent)
    wait_until(lambda: rec.ids() >= {m.id for m in sent}, "all messages after a redelivery")
    assert rec.attempts[sent[1].id] >= 2
    assert rec.first_success_order("k") == [0, 1, 2, 3]
    redelivered = [m for m in rec.handled if m.id == sent[1].id]
    assert redelivered[0].delivery_attempt >= 2


def test_dead_letter_after_max_deliveries_then_the_key_moves_on(broker: Broker) -> None:
    poison = msg("k", 1)
    rec = Recorder(lambda m: m.id == poison.id)
    name = group()
    broker.subscribe(name, rec, max_deliveries=5)
    sent = [msg("k", 0), poison, msg("k", 2), msg("other", 0)]
    broker.publish(sent)
    wait_until(lambda: rec.ids() >= {sent[0].id, sent[2].id, sent[3].id}, "the messages around the poison one")
    wait_until(lambda: any(m.id == poison.id for m in broker.dead_letters(name)), "the dead letter")
    dead = next(m for m in broker.dead_letters(name) if m.id == poison.id)
    assert dead.body == poison.body
    assert dead.key == poison.key
    assert 5 <= rec.attempts[poison.id] <= 6
    assert poison.id not in rec.ids()
    assert rec.first_success_order("k") == [0, 2]


def test_a_message_published_twice_is_delivered_once(broker: Broker) -> None:
    rec = Recorder()
    broker.subscribe(group(), rec)
    twice = msg("k", 0)
    broker.publish([twice])
    broker.publish([twice])
    sentinel = msg("k", 1)
    broker.publish([sentinel])
    wait_until(lambda: sentinel.id in rec.ids(), "the sentinel after the duplicate")
    time.sleep(0.5)
    assert [m.id for m in rec.handled].count(twice.id) == 1


def test_a_group_resumes_after_its_consumer_closes(broker: Broker) -> None:
    name = group()
    first = Recorder()
    subscription = broker.subscribe(name, first)
    early = [msg("k", i) for i in range(3)]
    broker.publish(early)
    wait_until(lambda: first.ids() >= {m.id for m in early}, "the early messages")
    subscription.close()

    late = [msg("k", i) for i in range(3, 6)]
    broker.publish(late)
    second = Recorder()
    broker.subscribe(name, second)
    wait_until(lambda: second.ids() >= {m.id for m in late}, "the late messages in a new consumer")
    time.sleep(0.5)
    assert not (second.ids() & {m.id for m in early}), "acknowledged messages came back"
    assert second.first_success_order("k") == [3, 4, 5]


def test_declared_features_are_known(broker: Broker) -> None:
    assert features_of(broker) <= BROKER_FEATURES


def test_publishes_in_flight_keep_each_keys_order_across_calls(broker: Broker) -> None:
    if FEATURE_PUBLISH_BEGIN not in features_of(broker):
        pytest.skip(f"{type(broker).__name__} does not declare publish_begin")
    assert isinstance(broker, PipelinedBroker)
    rec = Recorder()
    broker.subscribe(group(), rec)
    calls = [[msg(key, 3 * n + i) for key in ("k", "j") for i in range(3)] for n in range(4)]
    waiters = [broker.publish_begin(call) for call in calls]  # all four in flight before any is waited for
    for wait in waiters:
        wait()
    sent = {m.id for call in calls for m in call}
    wait_until(lambda: rec.ids() >= sent, "every message of the four calls")
    assert rec.first_success_order("k") == list(range(12))
    assert rec.first_success_order("j") == list(range(12))
