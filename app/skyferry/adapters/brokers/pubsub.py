"""Google Cloud Pub/Sub broker: ``pubsub://PROJECT/TOPIC``.

URL fields
----------
``pubsub://PROJECT/TOPIC?emulator=HOST:PORT``

* ``PROJECT`` (required): the Google Cloud project id.
* ``TOPIC`` (required): the app's topic id; every event goes to this one topic.
* ``emulator=HOST:PORT`` — *for tests and local use*: talk to the Pub/Sub emulator over
  plain gRPC with no credentials.  Without it the clients use Application Default
  Credentials (on Cloud Run: the service's service account).

Resources (names exported below, so ``providers/gcp`` declares exactly these)
----------------------------------------------------------------------------
* topic ``TOPIC``; per consumer group ``G``: subscription ``TOPIC.G`` with message
  ordering on, a dead-letter policy to topic ``TOPIC.G.dead-letter``, and a subscription
  of the same name on that topic, which :meth:`PubSubBroker.dead_letters` reads.
* ``publish`` and ``subscribe`` create what is missing (handy on an emulator and on a
  fresh project); in production Pulumi declares them, and credentials with only the
  publisher/subscriber roles get a ``ConfigurationError`` naming the missing resource.

How the port's guarantees are kept
----------------------------------
* **Order per key**: messages are published with ``ordering_key`` = the stream id, on a
  publisher with message ordering on, to subscriptions with ``enable_message_ordering``.
  ``publish`` hands the client each key's messages together (keys in order of first
  appearance, each key's in publish order): the client sends one batch per key at a time,
  and all keys side by side, so a key whose messages straddled the client's 10 ms batch
  timer no longer waits a round trip for each of its batches in turn.
  The client library hands a key's messages to the handler one at a time.  A failed
  handler is retried *in place* (same thread, exponential backoff, ack deadline kept
  alive by the client's lease management) so the key waits for it: nacking would let the
  client dispatch the key's next message before the redelivery, breaking order.
* **Publishes in flight** (``publish_begin``): the client orders each key's messages across
  calls and, when a call fails for a key, fails the key's messages queued behind it and
  pauses the key; each waiter resumes its call's keys after a failure.
* **At-least-once, ack after success**: the message is acked only after the handler
  returns; a crash redelivers it (and, with ordering, everything after it on that key),
  within :data:`LEASE_EXTENSION_SECONDS`.
* **Dead letters**: after ``max_deliveries`` attempts in all (the server's delivery count
  from earlier processes plus this one's retries) the message is published to the
  group's dead-letter topic and acked, and the key moves on.  The subscription also
  carries a server-side ``dead_letter_policy`` (``max_delivery_attempts`` = the same
  number, at least 5, the service's minimum) as the backstop for a consumer that crashes
  on a message every time.  *Emulator*: it accepts the policy; the client-side path is
  what the tests exercise.  On the real service, grant the Pub/Sub service agent
  publisher on the dead-letter topic and subscriber on the subscription (``providers/gcp``
  does).
* **Deduplication by id**: Pub/Sub has no publish-side deduplication.  Each broker
  instance remembers the last ``DEDUP_WINDOW`` message ids each group has settled and
  acks a repeat without calling the handler.  Across processes a duplicate can still reach
  a handler; consumers absorb it with their checkpoints (docs/kernel.md).
* **Competing consumers**: several ``subscribe`` calls with one group share one
  subscription (streaming pulls), so each message goes to one of them.

Errors: deadline-exceeded, unavailable and throttling are retried with backoff, then
``TransientError``; a missing project, topic or credentials is a ``ConfigurationError``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any, Final, Self
from urllib.parse import parse_qs, unquote, urlsplit

import google.cloud.pubsub_v1 as pubsub_v1
import grpc
from google.api_core import exceptions as gexc
from google.cloud.pubsub_v1.publisher.exceptions import PublishToPausedOrderingKeyException
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

from skyferry.adapters.gcp import backoff_delay, call, translate
from skyferry.core.errors import ConfigurationError, TransientError
from skyferry.core.ports import FEATURE_PUBLISH_BEGIN, Message, MessageHandler, nothing_to_wait_for

log = logging.getLogger(__name__)

ID_ATTRIBUTE: Final = "skyferry_id"
"""Message attribute carrying the message (event) id."""
KEY_ATTRIBUTE: Final = "skyferry_key"
"""Message attribute carrying the ordering key (kept when a message is dead-lettered)."""
DEAD_LETTER_SUFFIX: Final = ".dead-letter"
MIN_SERVER_DELIVERY_ATTEMPTS: Final = 5
"""The service accepts ``max_delivery_attempts`` from 5 to 100."""
MAX_SERVER_DELIVERY_ATTEMPTS: Final = 100
ACK_DEADLINE_SECONDS: Final = 60
LEASE_EXTENSION_SECONDS: Final = 10
"""How long each of the client's lease extensions lasts (``max_duration_per_lease_extension``,
the service's minimum).  A message that a stream received but no handler will ack (the stream
closed or its process died) comes back after at most this long, instead of after the client's
default stream deadline of 60 s; a handler that runs longer keeps its message leased."""
MESSAGE_RETENTION_SECONDS: Final = 7 * 24 * 3600
DEDUP_WINDOW: Final = 100_000
RETRY_BASE_SECONDS: Final = 0.05
RETRY_CAP_SECONDS: Final = 10.0
PUBLISH_TIMEOUT_SECONDS: Final = 60.0


IAM_PERMISSIONS: Final = {
    "topic": ("pubsub.topics.get", "pubsub.topics.publish"),
    "subscription": ("pubsub.subscriptions.get", "pubsub.subscriptions.consume"),
}
"""What the adapter calls, per resource: ``get_topic``/``publish`` on the topic and on each
dead-letter topic; ``get_subscription``, streaming pull/pull, ack and modify-ack-deadline on
each group's subscription and dead-letter subscription.  (Creating missing resources is a
convenience for emulators: production credentials need not and should not have it.)"""
IAM_ROLES: Final = {
    "topic": ("roles/pubsub.publisher", "roles/pubsub.viewer"),
    "subscription": ("roles/pubsub.subscriber", "roles/pubsub.viewer"),
}
"""The predefined roles covering :data:`IAM_PERMISSIONS`, granted on each resource only."""


def subscription_id(topic: str, group: str) -> str:
    """The subscription of consumer group ``group`` on ``topic``."""
    return f"{topic}.{group}"


def dead_letter_topic_id(topic: str, group: str) -> str:
    """The dead-letter topic of ``group`` (its subscription has the same id)."""
    return f"{topic}.{group}{DEAD_LETTER_SUFFIX}"


def server_delivery_attempts(max_deliveries: int) -> int:
    """``max_delivery_attempts`` of the server-side policy for ``max_deliveries``."""
    return min(MAX_SERVER_DELIVERY_ATTEMPTS, max(MIN_SERVER_DELIVERY_ATTEMPTS, max_deliveries))


def parse_url(url: str) -> tuple[str, str, str | None]:
    """``(project, topic, emulator host:port or None)`` of a ``pubsub://`` URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "pubsub":
        raise ConfigurationError(f"not a pubsub:// URL: {url!r}")
    project = unquote(parts.netloc)
    topic = unquote(parts.path.strip("/"))
    if not project:
        raise ConfigurationError(f"{url!r}: the Google Cloud project is missing (pubsub://PROJECT/TOPIC)")
    if not topic or "/" in topic:
        raise ConfigurationError(f"{url!r}: the topic is missing or not one segment (pubsub://PROJECT/TOPIC)")
    query = parse_qs(parts.query)
    unknown = set(query) - {"emulator"}
    if unknown:
        raise ConfigurationError(f"{url!r}: unknown parameter(s) {sorted(unknown)}; known: emulator")
    return project, topic, query.get("emulator", [None])[0]


class _Seen:
    """A bounded, thread-safe set of the ids a group has settled (handled or dead-lettered)."""

    def __init__(self, size: int = DEDUP_WINDOW) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def __contains__(self, message_id: object) -> bool:
        with self._lock:
            return message_id in self._ids

    def add(self, message_id: str) -> None:
        with self._lock:
            self._ids[message_id] = None
            while len(self._ids) > self._size:
                self._ids.popitem(last=False)


def _confirmed(what: str, wait: Callable[[], None]) -> None:
    """``wait()``, a confirmation that does not come in time being a ``TransientError``."""
    try:
        wait()
    except futures.TimeoutError as e:
        raise TransientError(f"{what}: publish not confirmed in time") from e


class PubSubSubscription:
    """One streaming pull of a group; ``close`` stops it (unacked messages come back)."""

    def __init__(self, future: Any) -> None:
        self._future = future

    def close(self) -> None:
        """Cancel the streaming pull and wait until it has shut down."""
        self._future.cancel()
        try:
            self._future.result(timeout=30)
        except futures.CancelledError:
            pass  # the normal outcome of cancel()
        except futures.TimeoutError:
            log.warning("a Pub/Sub streaming pull did not shut down within 30 s")


class PubSubBroker:
    """The ``pubsub://`` broker (see the module docstring for how each guarantee is kept)."""

    features = frozenset({FEATURE_PUBLISH_BEGIN})

    def __init__(
        self,
        url: str,
        publisher: pubsub_v1.PublisherClient | None = None,
        subscriber: pubsub_v1.SubscriberClient | None = None,
    ) -> None:
        self._project, self._topic, self._emulator = parse_url(url)
        self.url = url
        self._publisher = publisher
        self._subscriber = subscriber
        self._lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}
        self._subscriptions: list[PubSubSubscription] = []
        self._ensured: set[str] = set()
        self.topic_path = f"projects/{self._project}/topics/{self._topic}"

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Parse ``url``; the clients are built on first use."""
        return cls(url)

    # -- clients ---------------------------------------------------------------------------

    def _client_kwargs(self, transport: type[Any]) -> dict[str, Any]:
        if self._emulator is None:
            return {}
        channel = grpc.insecure_channel(self._emulator)
        return {"transport": transport(channel=channel), "client_options": {"api_endpoint": self._emulator}}

    @property
    def publisher(self) -> pubsub_v1.PublisherClient:
        """The publisher client (message ordering on), built once."""
        with self._lock:
            if self._publisher is None:
                try:
                    self._publisher = pubsub_v1.PublisherClient(
                        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True),
                        **self._client_kwargs(PublisherGrpcTransport),
                    )
                except Exception as e:
                    raise translate(e, f"Pub/Sub in project {self._project}") from e
            return self._publisher

    @property
    def subscriber(self) -> pubsub_v1.SubscriberClient:
        """The subscriber client, built once."""
        with self._lock:
            if self._subscriber is None:
                try:
                    self._subscriber = pubsub_v1.SubscriberClient(**self._client_kwargs(SubscriberGrpcTransport))
                except Exception as e:
                    raise translate(e, f"Pub/Sub in project {self._project}") from e
            return self._subscriber

    # -- provisioning (a no-op where Pulumi declared everything) -----------------------------

    def _topic_path(self, topic: str) -> str:
        return f"projects/{self._project}/topics/{topic}"

    def _subscription_path(self, subscription: str) -> str:
        return f"projects/{self._project}/subscriptions/{subscription}"

    def _ensure_topic(self, path: str) -> None:
        if path in self._ensured:
            return
        try:
            call(lambda: self.publisher.get_topic(topic=path), f"Pub/Sub topic {path}")
        except ConfigurationError as e:
            if not isinstance(e.__cause__, gexc.NotFound):
                raise
            try:
                call(lambda: self.publisher.create_topic(name=path), f"Pub/Sub topic {path}")
            except ConfigurationError as created:
                if not isinstance(created.__cause__, gexc.AlreadyExists):
                    raise
        self._ensured.add(path)

    def _ensure_subscription(self, path: str, request: dict[str, Any]) -> None:
        if path in self._ensured:
            return
        try:
            call(lambda: self.subscriber.get_subscription(subscription=path), f"Pub/Sub subscription {path}")
        except ConfigurationError as e:
            if not isinstance(e.__cause__, gexc.NotFound):
                raise
            try:
                call(
                    lambda: self.subscriber.create_subscription(request={"name": path, **request}),
                    f"Pub/Sub subscription {path}",
                )
            except ConfigurationError as created:
                if not isinstance(created.__cause__, gexc.AlreadyExists):
                    raise
        self._ensured.add(path)

    def ensure_group(self, group: str, max_deliveries: int = 5) -> str:
        """Make sure the topic, the group's subscription and its dead-letter topic exist."""
        self._ensure_topic(self.topic_path)
        dead_topic = self._topic_path(dead_letter_topic_id(self._topic, group))
        self._ensure_topic(dead_topic)
        self._ensure_subscription(
            self._subscription_path(dead_letter_topic_id(self._topic, group)),
            {"topic": dead_topic, "message_retention_duration": {"seconds": MESSAGE_RETENTION_SECONDS}},
        )
        path = self._subscription_path(subscription_id(self._topic, group))
        self._ensure_subscription(
            path,
            {
                "topic": self.topic_path,
                "enable_message_ordering": True,
                "ack_deadline_seconds": ACK_DEADLINE_SECONDS,
                "message_retention_duration": {"seconds": MESSAGE_RETENTION_SECONDS},
                "dead_letter_policy": {
                    "dead_letter_topic": dead_topic,
                    "max_delivery_attempts": server_delivery_attempts(max_deliveries),
                },
                "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 60}},
            },
        )
        return path

    # -- publishing -----------------------------------------------------------------------------

    def _publish_to(self, topic_path: str, messages: Sequence[Message], ordered: bool) -> None:
        """Publish and wait, again from the start after a retryable error."""
        what = f"Pub/Sub topic {topic_path}"
        _confirmed(what, lambda: call(lambda: self._begin(topic_path, messages, ordered)(), what))

    def _begin(self, topic_path: str, messages: Sequence[Message], ordered: bool) -> Callable[[], None]:
        """Hand ``messages`` to the client; the waiter raises the first failure (its keys resumed)."""
        keys: list[str] = []
        if ordered:  # each key's messages together, in order: one batch per key, all keys in flight at once
            grouped: dict[str, list[Message]] = {}
            for m in messages:
                grouped.setdefault(m.key, []).append(m)
            messages = [m for group in grouped.values() for m in group]
            keys = list(grouped)

        def resume() -> None:
            # A failed ordered publish pauses its key in the client; resume so a retry can go.
            for key in keys:
                self.publisher.resume_publish(topic_path, key)

        pending = []
        try:
            for m in messages:
                pending.append(
                    self.publisher.publish(
                        topic_path,
                        m.body,
                        ordering_key=m.key if ordered else "",
                        **{**m.attributes, ID_ATTRIBUTE: m.id, KEY_ATTRIBUTE: m.key},
                    )
                )
        except PublishToPausedOrderingKeyException as e:  # a call begun before this one failed
            resume()
            earlier = f"an earlier publish of key {e.ordering_key!r} failed"
            raise TransientError(f"Pub/Sub topic {topic_path}: {earlier}") from e

        def wait() -> None:
            try:
                for future in pending:
                    future.result(timeout=PUBLISH_TIMEOUT_SECONDS)
            except Exception:
                resume()
                raise

        return wait

    def publish(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` in order per key; returns once Pub/Sub accepted all of them."""
        if not messages:
            return
        self._ensure_topic(self.topic_path)
        self._publish_to(self.topic_path, messages, ordered=True)

    def publish_begin(self, messages: Sequence[Message]) -> Callable[[], None]:
        """Hand ``messages`` to the client, which orders each key's messages across calls; the
        result waits for Pub/Sub's confirmation (no retry: a failed call is begun again)."""
        if not messages:
            return nothing_to_wait_for
        self._ensure_topic(self.topic_path)
        wait = self._begin(self.topic_path, messages, ordered=True)
        what = f"Pub/Sub topic {self.topic_path}"
        return lambda: _confirmed(what, lambda: call(wait, what, attempts=1))

    # -- consuming --------------------------------------------------------------------------------

    def _seen_of(self, group: str) -> _Seen:
        with self._lock:
            return self._seen.setdefault(group, _Seen())

    def subscribe(self, group: str, handler: MessageHandler, *, max_deliveries: int = 5) -> PubSubSubscription:
        """Start a streaming pull of ``group``'s subscription calling ``handler`` per message."""
        if max_deliveries < 1:
            raise ConfigurationError("max_deliveries must be at least 1")
        path = self.ensure_group(group, max_deliveries)
        dead_topic = self._topic_path(dead_letter_topic_id(self._topic, group))
        seen = self._seen_of(group)

        def on_message(received: Any) -> None:
            message_id = received.attributes.get(ID_ATTRIBUTE, received.message_id)
            if message_id in seen:
                received.ack()
                return
            attributes = dict(received.attributes)
            attributes.pop(ID_ATTRIBUTE, None)
            key = attributes.pop(KEY_ATTRIBUTE, None) or received.ordering_key
            earlier = max((received.delivery_attempt or 1) - 1, 0)
            attempt = earlier
            while True:
                attempt += 1
                message = Message(
                    id=message_id,
                    key=key,
                    body=bytes(received.data),
                    attributes=attributes,
                    delivery_attempt=attempt,
                )
                try:
                    handler(message)
                except Exception:
                    log.warning(
                        "handler failed on message %s (attempt %d of %d)",
                        message_id,
                        attempt,
                        max_deliveries,
                        exc_info=True,
                    )
                    if attempt >= max_deliveries:
                        try:
                            self._publish_to(dead_topic, [message], ordered=False)
                        except Exception:
                            log.exception("could not dead-letter message %s; it will be redelivered", message_id)
                            received.nack()
                            return
                        log.error("message %s dead-lettered after %d attempts", message_id, attempt)
                        seen.add(message_id)
                        received.ack()
                        return
                    time.sleep(
                        backoff_delay(attempt - earlier, RETRY_BASE_SECONDS, RETRY_CAP_SECONDS) + RETRY_BASE_SECONDS
                    )
                    continue
                seen.add(message_id)
                received.ack()
                return

        future = self.subscriber.subscribe(
            path,
            callback=on_message,
            flow_control=pubsub_v1.types.FlowControl(
                max_messages=100, max_duration_per_lease_extension=LEASE_EXTENSION_SECONDS
            ),
        )
        subscription = PubSubSubscription(future)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def dead_letters(self, group: str, limit: int = 100) -> list[Message]:
        """Messages dead-lettered for ``group``, read without removing them (nacked at once)."""
        path = self._subscription_path(dead_letter_topic_id(self._topic, group))
        self.ensure_group(group)
        response = call(
            lambda: self.subscriber.pull(request={"subscription": path, "max_messages": min(limit, 1000)}, timeout=10),
            f"Pub/Sub subscription {path}",
        )
        received = list(response.received_messages)
        if received:
            # Deadline 0 releases them for the next reader: reading does not consume.
            call(
                lambda: self.subscriber.modify_ack_deadline(
                    request={"subscription": path, "ack_ids": [r.ack_id for r in received], "ack_deadline_seconds": 0}
                ),
                f"Pub/Sub subscription {path}",
            )
        result: list[Message] = []
        for r in received:
            attrs = dict(r.message.attributes)
            message_id = attrs.pop(ID_ATTRIBUTE, r.message.message_id)
            result.append(
                Message(id=message_id, key=attrs.pop(KEY_ATTRIBUTE, ""), body=bytes(r.message.data), attributes=attrs)
            )
        return result

    def close(self) -> None:
        """Stop every subscription and close the clients' channels."""
        with self._lock:
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.close()
        with self._lock:
            publisher, self._publisher = self._publisher, None
            subscriber, self._subscriber = self._subscriber, None
        if publisher is not None:
            publisher.stop()
        if subscriber is not None:
            subscriber.close()
