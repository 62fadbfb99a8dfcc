"""An in-memory Service Bus namespace behind the SDK's narrowest seam.

It stands in for ``azure.servicebus.ServiceBusClient`` (``get_topic_sender``,
``get_subscription_receiver``) and the few ``ServiceBusAdministrationClient`` calls the
adapter makes with ``provision=true``.  It takes the SDK's own ``ServiceBusMessage``
objects and raises the SDK's own exceptions.  It is not a Service Bus: it keeps the
rules the service documents and the adapter relies on, so that breaking one of them in
the adapter fails a test:

* Topics fan a message out to every subscription that exists when it is sent.
* Duplicate detection: a ``message_id`` seen on the topic within the window is accepted
  and dropped.  A message over the tier's size (256 KB, standard) raises
  ``MessageSizeExceededError``; an unknown topic or subscription raises
  ``MessagingEntityNotFoundError``.
* A session-enabled subscription can only be read by a session receiver; a session is
  locked by one receiver at a time (``NEXT_AVAILABLE_SESSION`` takes an unlocked session
  with messages, or raises ``OperationTimeoutError`` after ``max_wait_time``); the lock
  expires after ``lock_duration`` unless renewed, after which settling raises
  ``SessionLockLostError``.
* Within a session, messages are delivered in sequence order; a received message is
  locked until settled.  ``complete`` removes it, ``abandon`` unlocks it and raises its
  delivery count (it is delivered again first), ``dead_letter`` moves it to the
  subscription's dead-letter queue.  When the delivery count reaches the
  subscription's ``max_delivery_count`` the message is dead-lettered by the "service"
  (reason ``MaxDeliveryCountExceeded``).  Closing a receiver releases its session, and
  messages it left unsettled count a delivery, as an expired lock does.  Settling twice
  raises ``MessageAlreadySettled``.
* ``delivery_count`` is the AMQP header value the SDK exposes: earlier failed deliveries
  (0 on the first delivery).
* The dead-letter queue is not session-enabled; ``peek_messages`` neither locks nor
  removes.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusError,
    SessionLockLostError,
)

MAX_MESSAGE_BYTES = 256 * 1024


@dataclass
class FakeReceivedMessage:
    """The attributes of ``ServiceBusReceivedMessage`` the adapter reads."""

    message_id: str
    session_id: str | None
    data: bytes
    application_properties: dict[bytes, bytes]
    sequence_number: int
    delivery_count: int = 0
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None
    settled: bool = False
    locked_by: object | None = None

    @property
    def body(self) -> Iterator[bytes]:
        """A generator of data sections, as the SDK returns."""
        return iter([self.data])


@dataclass
class _Subscription:
    name: str
    requires_session: bool
    max_delivery_count: int
    messages: list[FakeReceivedMessage] = field(default_factory=list)
    dead: list[FakeReceivedMessage] = field(default_factory=list)
    session_locks: dict[str, tuple[object, float]] = field(default_factory=dict)


@dataclass
class _Topic:
    name: str
    duplicate_window: float
    seen: dict[str, float] = field(default_factory=dict)
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)


class FakeNamespace:
    """The state of one namespace, shared by every client built on it."""

    def __init__(self, lock_duration: float = 30.0) -> None:
        self.lock_duration = lock_duration
        self.cond = threading.Condition()
        self.topics: dict[str, _Topic] = {}
        self._sequence = itertools.count(1)

    def create_topic(self, name: str, duplicate_window: float = 600.0) -> None:
        """Provision a topic with duplicate detection (what ``providers/azure`` declares)."""
        with self.cond:
            self.topics.setdefault(name, _Topic(name, duplicate_window))

    def topic(self, name: str) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise MessagingEntityNotFoundError(message=f"topic {name} not found")
        return topic

    def subscription(self, topic: str, name: str) -> _Subscription:
        sub = self.topic(topic).subscriptions.get(name)
        if sub is None:
            raise MessagingEntityNotFoundError(message=f"subscription {topic}/{name} not found")
        return sub

    def send(self, topic_name: str, messages: list[ServiceBusMessage]) -> None:
        with self.cond:
            topic = self.topic(topic_name)
            for message in messages:
                data = b"".join(message.body) if not isinstance(message.body, bytes) else message.body
                if len(data) > MAX_MESSAGE_BYTES:
                    raise MessageSizeExceededError(message=f"message {message.message_id} is over 256 KB")
            now = time.monotonic()
            for message in messages:
                message_id = str(message.message_id)
                if now - topic.seen.get(message_id, -1e18) < topic.duplicate_window:
                    continue
                topic.seen[message_id] = now
                data = b"".join(message.body)
                properties = {
                    str(k).encode(): str(v).encode() for k, v in (message.application_properties or {}).items()
                }
                sequence = next(self._sequence)
                for sub in topic.subscriptions.values():
                    sub.messages.append(
                        FakeReceivedMessage(message_id, message.session_id, data, dict(properties), sequence)
                    )
            self.cond.notify_all()

    # -- rules applied under the condition's lock -----------------------------------------

    def _expire(self, sub: _Subscription) -> None:
        now = time.monotonic()
        for session, (owner, until) in list(sub.session_locks.items()):
            if until < now:
                self._release(sub, session, owner)

    def _release(self, sub: _Subscription, session: str, owner: object) -> None:
        if sub.session_locks.get(session, (None, 0))[0] is owner:
            del sub.session_locks[session]
        for message in list(sub.messages):
            if message.locked_by is owner and message.session_id == session:
                message.locked_by = None
                self._count_delivery(sub, message)

    def _count_delivery(self, sub: _Subscription, message: FakeReceivedMessage) -> None:
        message.delivery_count += 1
        if message.delivery_count >= sub.max_delivery_count:
            self._to_dead_letter(sub, message, "MaxDeliveryCountExceeded", "delivery count reached the maximum")

    def _to_dead_letter(self, sub: _Subscription, message: FakeReceivedMessage, reason: str, text: str) -> None:
        sub.messages.remove(message)
        message.locked_by = None
        message.dead_letter_reason = reason
        message.dead_letter_error_description = text
        sub.dead.append(message)


class FakeSession:
    """``ServiceBusSession``: the session id and lock renewal."""

    def __init__(self, receiver: FakeReceiver) -> None:
        self._receiver = receiver

    @property
    def session_id(self) -> str | None:
        return self._receiver.session_id

    def renew_lock(self) -> None:
        ns, sub = self._receiver.namespace, self._receiver.sub
        with ns.cond:
            owner, _ = sub.session_locks.get(self.session_id or "", (None, 0))
            if owner is not self._receiver:
                raise SessionLockLostError(message="session lock lost")
            sub.session_locks[self.session_id or ""] = (owner, time.monotonic() + ns.lock_duration)


class FakeSender:
    """``ServiceBusSender`` for one topic."""

    def __init__(self, namespace: FakeNamespace, topic: str) -> None:
        self.namespace = namespace
        self.topic = topic

    def __enter__(self) -> FakeSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_messages(self, messages: ServiceBusMessage | list[ServiceBusMessage]) -> None:
        self.namespace.send(self.topic, messages if isinstance(messages, list) else [messages])

    def close(self) -> None:
        pass


class FakeReceiver:
    """``ServiceBusReceiver`` on a subscription, its session, or its dead-letter queue."""

    def __init__(
        self,
        namespace: FakeNamespace,
        topic: str,
        subscription: str,
        session_id: Any = None,
        sub_queue: Any = None,
        max_wait_time: float | None = None,
    ) -> None:
        self.namespace = namespace
        self.sub = namespace.subscription(topic, subscription)
        self.dead_letter = sub_queue == ServiceBusSubQueue.DEAD_LETTER
        if self.sub.requires_session and not self.dead_letter and session_id is None:
            raise ServiceBusError("the subscription requires sessions: pass session_id to the receiver")
        self.requested = session_id
        self.session_id: str | None = None
        self.max_wait_time = max_wait_time
        self.session = FakeSession(self)
        self.closed = False

    def __enter__(self) -> FakeReceiver:
        if self.sub.requires_session and not self.dead_letter:
            self._accept_session()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_session(self) -> None:
        ns, sub = self.namespace, self.sub
        deadline = time.monotonic() + (self.max_wait_time or 60.0)
        with ns.cond:
            while True:
                ns._expire(sub)
                candidates = (
                    [m.session_id for m in sub.messages if m.session_id not in sub.session_locks]
                    if self.requested is NEXT_AVAILABLE_SESSION
                    else [self.requested]
                    if self.requested not in sub.session_locks
                    else []
                )
                if candidates:
                    self.session_id = str(candidates[0])
                    sub.session_locks[self.session_id] = (self, time.monotonic() + ns.lock_duration)
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OperationTimeoutError(message="no session available")
                ns.cond.wait(remaining)

    def _check_lock(self) -> None:
        ns, sub = self.namespace, self.sub
        ns._expire(sub)
        owner, _ = sub.session_locks.get(self.session_id or "", (None, 0))
        if owner is not self:
            raise SessionLockLostError(message=f"the lock on session {self.session_id} was lost")

    def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[FakeReceivedMessage]:
        if self.dead_letter:
            raise NotImplementedError("the fake's dead-letter queue supports peek_messages only")
        ns, sub = self.namespace, self.sub
        deadline = time.monotonic() + (max_wait_time if max_wait_time is not None else (self.max_wait_time or 60))
        with ns.cond:
            while True:
                self._check_lock()
                ready = [
                    m
                    for m in sorted(sub.messages, key=lambda m: m.sequence_number)
                    if m.session_id == self.session_id and m.locked_by is None
                ][: max_message_count or 1]
                if ready:
                    for message in ready:
                        message.locked_by = self
                    return ready
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                ns.cond.wait(remaining)

    def _settle(self, message: FakeReceivedMessage) -> None:
        if message.settled:
            raise MessageAlreadySettled(action="settle")
        self._check_lock()
        if message.locked_by is not self:
            raise SessionLockLostError(message="the message is not locked by this receiver")

    def complete_message(self, message: FakeReceivedMessage) -> None:
        with self.namespace.cond:
            self._settle(message)
            message.settled = True
            self.sub.messages.remove(message)
            self.namespace.cond.notify_all()

    def abandon_message(self, message: FakeReceivedMessage) -> None:
        with self.namespace.cond:
            self._settle(message)
            message.locked_by = None
            self.namespace._count_delivery(self.sub, message)
            message.settled = message in self.sub.dead
            self.namespace.cond.notify_all()

    def dead_letter_message(
        self, message: FakeReceivedMessage, reason: str | None = None, error_description: str | None = None
    ) -> None:
        with self.namespace.cond:
            self._settle(message)
            message.settled = True
            self.namespace._to_dead_letter(self.sub, message, reason or "", error_description or "")
            self.namespace.cond.notify_all()

    def peek_messages(self, max_message_count: int = 1) -> list[FakeReceivedMessage]:
        with self.namespace.cond:
            source = self.sub.dead if self.dead_letter else self.sub.messages
            return list(source[:max_message_count])

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self.namespace.cond:
            if self.session_id is not None:
                self.namespace._release(self.sub, self.session_id, self)
            self.namespace.cond.notify_all()


class FakeServiceBusClient:
    """``ServiceBusClient``: senders and receivers on the fake namespace."""

    def __init__(self, namespace: FakeNamespace) -> None:
        self.namespace = namespace

    def get_topic_sender(self, topic_name: str) -> FakeSender:
        with self.namespace.cond:
            self.namespace.topic(topic_name)
        return FakeSender(self.namespace, topic_name)

    def get_subscription_receiver(
        self,
        topic_name: str,
        subscription_name: str,
        *,
        session_id: Any = None,
        sub_queue: Any = None,
        max_wait_time: float | None = None,
        prefetch_count: int = 0,
    ) -> FakeReceiver:
        with self.namespace.cond:
            return FakeReceiver(self.namespace, topic_name, subscription_name, session_id, sub_queue, max_wait_time)

    def close(self) -> None:
        pass


class FakeAdministrationClient:
    """The ``ServiceBusAdministrationClient`` calls made with ``provision=true``."""

    def __init__(self, namespace: FakeNamespace) -> None:
        self.namespace = namespace

    def get_subscription(self, topic_name: str, subscription_name: str) -> str:
        with self.namespace.cond:
            try:
                self.namespace.subscription(topic_name, subscription_name)
            except MessagingEntityNotFoundError as e:
                raise ResourceNotFoundError(f"subscription {subscription_name} not found") from e
            return subscription_name

    def create_subscription(
        self,
        topic_name: str,
        subscription_name: str,
        *,
        requires_session: bool = False,
        max_delivery_count: int = 10,
        dead_lettering_on_message_expiration: bool = False,
    ) -> None:
        with self.namespace.cond:
            topic = self.namespace.topic(topic_name)
            if subscription_name in topic.subscriptions:
                raise ResourceExistsError(f"subscription {subscription_name} exists")
            topic.subscriptions[subscription_name] = _Subscription(
                subscription_name, requires_session, max_delivery_count
            )
