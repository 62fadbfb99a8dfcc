"""Broker on Azure Service Bus topics with sessions (``azure-servicebus``).

**Never run against a real Service Bus here.**  No Service Bus emulator installs from a
package registry, so this adapter is tested only through an in-memory fake of the SDK's
sender and session receiver (``tests/services/servicebus_fake.py``) that enforces the
documented rules: duplicate detection by message id, session ordering, exclusive session
locks, delivery counts, dead-lettering.  See ``docs/azure.md`` for what remains to check
on a real namespace.

URL::

    servicebus://NAMESPACE/TOPIC[?workers=4][&retry_backoff=1.0][&provision=true][&client=NAME]

* ``NAMESPACE`` -- the namespace; its host is ``NAMESPACE.servicebus.windows.net`` (a
  name with a dot is taken as the full host).  The adapter signs in with
  ``DefaultAzureCredential`` (the managed identity, holding "Azure Service Bus Data
  Sender" and "Azure Service Bus Data Receiver" on the topic only).
* ``TOPIC`` -- one topic per application (``providers/azure`` creates it with duplicate
  detection); each consumer group is a subscription of it, created by the
  infrastructure with sessions required and dead-lettering on.
* ``workers`` -- session receivers per ``subscribe`` (sessions handled in parallel).
* ``retry_backoff`` -- seconds before the first redelivery of a failed message; doubles
  per attempt, capped at 30 times the base.
* ``provision=true`` -- create a missing subscription through the administration API,
  *for tests and local use* (it needs the Manage right the deployed identity lacks).
* ``client=NAME`` -- use the client factory registered under ``NAME`` with
  :func:`register_client_factory`, *for tests only* (the Service Bus fake).

Mapping of the ``Broker`` port: the message id (the event id) is the Service Bus
``message_id``, so the topic's duplicate detection drops a re-publish within its window;
the ordering key (the stream id) is the ``session_id`` (hashed when longer than Service
Bus's 128 characters; the key itself travels in an application property), so a
subscription delivers one stream's messages in order, to one receiver at a time.  Each
worker accepts the next available session, receives one message at a time (so a failed
message never makes the ones behind it count a delivery), calls the handler, and only
then completes the message.  A handler that raises makes the worker wait the backoff and
abandon the message (the service redelivers it first in its session, with the delivery
count raised); at ``max_deliveries`` attempts the worker dead-letters it explicitly, and
the session moves on.  The subscription's own ``max_delivery_count`` is a backstop for
crashed consumers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
    SessionCannotBeLockedError,
)

from skyferry.adapters import azure
from skyferry.adapters.registry import redact
from skyferry.core.errors import ConfigurationError, ValidationError
from skyferry.core.ports import Message, MessageHandler

log = logging.getLogger(__name__)

SESSION_ID_MAX: Final = 128
"""Service Bus's longest session id; longer ordering keys are hashed."""
KEY_PROPERTY: Final = "skyferry-key"
"""Application property carrying the ordering key (the stream id) unchanged."""
MAX_BATCH_BYTES: Final = 200 * 1024
"""Bytes of bodies per send call (the standard tier takes 256 KB per batch)."""
DEFAULT_WORKERS: Final = 4
DEFAULT_RETRY_BACKOFF: Final = 1.0
MAX_BACKOFF_FACTOR: Final = 30.0
SUBSCRIPTION_MAX_DELIVERY_COUNT: Final = 10
"""The backstop delivery count ``providers/azure`` sets on every subscription."""
DUPLICATE_DETECTION_WINDOW: Final = "PT10M"
"""The topic's duplicate-detection window (ISO 8601), set by ``providers/azure``."""
SENDER_ROLE: Final = "Azure Service Bus Data Sender"
RECEIVER_ROLE: Final = "Azure Service Bus Data Receiver"
SERVICE: Final = "Service Bus"

ClientFactory = Callable[["ServiceBusLocation"], tuple[Any, Any]]
"""Builds ``(ServiceBusClient, ServiceBusAdministrationClient)`` for a location."""

_factories: dict[str, ClientFactory] = {}


def register_client_factory(name: str, factory: ClientFactory) -> None:
    """Make ``servicebus://...?client=NAME`` use ``factory`` (for tests only)."""
    _factories[name] = factory


def unregister_client_factory(name: str) -> None:
    """Forget the factory registered under ``name`` (for tests only)."""
    _factories.pop(name, None)


def session_id_for(key: str) -> str:
    """The session id of an ordering key: the key itself, or a hash if it is too long."""
    if len(key) <= SESSION_ID_MAX:
        return key
    return "h-" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ServiceBusLocation:
    """A parsed ``servicebus://`` URL."""

    namespace: str
    topic: str
    workers: int
    retry_backoff: float
    provision: bool
    client_name: str | None

    @property
    def host(self) -> str:
        """The fully qualified namespace host."""
        return self.namespace if "." in self.namespace else f"{self.namespace}.servicebus.windows.net"

    @classmethod
    def parse(cls, url: str) -> ServiceBusLocation:
        """Parse ``url``; raises ``ConfigurationError`` naming what is missing or wrong."""
        parts = urlsplit(url)
        if parts.scheme != "servicebus":
            raise ConfigurationError(f"not a servicebus:// URL: {redact(url)!r}")
        topic = parts.path.strip("/")
        if not parts.hostname or not topic or "/" in topic:
            raise ConfigurationError(f"{redact(url)!r} must name a namespace and a topic: servicebus://NAMESPACE/TOPIC")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"workers", "retry_backoff", "provision", "client"}
        if unknown:
            raise ConfigurationError(
                f"servicebus:// URL has unknown options {sorted(unknown)}; "
                "known: workers, retry_backoff, provision, client"
            )
        try:
            workers = int(query.get("workers", DEFAULT_WORKERS))
            backoff = float(query.get("retry_backoff", DEFAULT_RETRY_BACKOFF))
        except ValueError as e:
            raise ConfigurationError(f"servicebus:// URL options workers and retry_backoff are numbers: {e}") from e
        if workers < 1 or backoff < 0:
            raise ConfigurationError("servicebus:// needs workers >= 1 and retry_backoff >= 0")
        return cls(
            namespace=parts.hostname,
            topic=topic,
            workers=workers,
            retry_backoff=backoff,
            provision=query.get("provision", "false").lower() in {"true", "1", "yes"},
            client_name=query.get("client"),
        )

    def clients(self) -> tuple[Any, Any]:
        """``(ServiceBusClient, ServiceBusAdministrationClient)`` (no I/O)."""
        if self.client_name is not None:
            factory = _factories.get(self.client_name)
            if factory is None:
                raise ConfigurationError(f"servicebus:// client={self.client_name!r} is not registered")
            return factory(self)
        from azure.servicebus import ServiceBusClient
        from azure.servicebus.management import ServiceBusAdministrationClient

        credential = azure.credential(None, scheme="servicebus")
        return ServiceBusClient(self.host, credential), ServiceBusAdministrationClient(self.host, credential)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _body(raw: Any) -> bytes:
    body = raw.body
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return b"".join(bytes(section) for section in body)


def to_servicebus(message: Message) -> ServiceBusMessage:
    """The Service Bus message for a port message (id, session, key and attributes)."""
    properties: dict[str | bytes, Any] = {str(k): str(v) for k, v in message.attributes.items()}
    properties[KEY_PROPERTY] = message.key
    return ServiceBusMessage(
        message.body,
        message_id=message.id,
        session_id=session_id_for(message.key),
        application_properties=properties,
        subject=message.attributes.get("type"),
    )


def from_servicebus(raw: Any) -> Message:
    """The port message for a received Service Bus message.

    ``delivery_count`` is the AMQP header's count of earlier failed deliveries (0 on the
    first), so the attempt number is one more.
    """
    properties = {_text(k): _text(v) for k, v in (raw.application_properties or {}).items()}
    key = properties.pop(KEY_PROPERTY, None) or _text(raw.session_id)
    return Message(
        id=_text(raw.message_id),
        key=key,
        body=_body(raw),
        attributes=properties,
        delivery_attempt=int(raw.delivery_count or 0) + 1,
    )


def _translate(e: Exception, what: str) -> Exception:
    if isinstance(e, MessagingEntityNotFoundError):
        return azure.missing(SERVICE, what, e)
    if isinstance(e, ServiceBusAuthenticationError | ServiceBusAuthorizationError):
        return azure.refused(SERVICE, what, f"{SENDER_ROLE!r} / {RECEIVER_ROLE!r} on the topic", e)
    return azure.failed(SERVICE, what, e)


class _Consumer:
    """The worker threads of one ``subscribe`` call."""

    def __init__(self, broker: ServiceBusBroker, group: str, handler: MessageHandler, max_deliveries: int) -> None:
        self.broker = broker
        self.group = group
        self.handler = handler
        self.max_deliveries = max_deliveries
        self.stopped = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, name=f"servicebus-{group}-{n}", daemon=True)
            for n in range(broker.location.workers)
        ]
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        """Stop after the messages in hand settle; the sessions are released."""
        self.stopped.set()
        for thread in self.threads:
            thread.join()

    def _run(self) -> None:
        client = self.broker.client
        while not self.stopped.is_set():
            try:
                receiver = client.get_subscription_receiver(
                    self.broker.location.topic,
                    self.group,
                    session_id=NEXT_AVAILABLE_SESSION,
                    max_wait_time=0.5,
                    prefetch_count=0,
                )
                with receiver:
                    self._drain(receiver)
            except (OperationTimeoutError, SessionCannotBeLockedError):
                continue  # no session free right now
            except ServiceBusError as e:
                error = _translate(e, f"subscription {self.group!r} of topic {self.broker.location.topic!r}")
                log.warning("servicebus consumer %s: %s", self.group, error)
                self.stopped.wait(self.broker.location.retry_backoff or 0.1)

    def _drain(self, receiver: Any) -> None:
        """Handle the session's messages one by one, then release it for others."""
        for _ in range(100):  # bounded turn per session, for fairness
            if self.stopped.is_set():
                return
            received = receiver.receive_messages(max_message_count=1, max_wait_time=0.2)
            if not received:
                return
            raw = received[0]
            message = from_servicebus(raw)
            try:
                self.handler(message)
            except Exception as e:
                log.warning(
                    "handler of %s failed on message %s (attempt %d): %s",
                    self.group,
                    message.id,
                    message.delivery_attempt,
                    e,
                )
                if message.delivery_attempt >= self.max_deliveries:
                    receiver.dead_letter_message(raw, reason="MaxDeliveriesExceeded", error_description=str(e)[:1000])
                    continue
                base = self.broker.location.retry_backoff
                delay = min(base * 2 ** (message.delivery_attempt - 1), base * MAX_BACKOFF_FACTOR)
                self.stopped.wait(delay)
                receiver.abandon_message(raw)
                return  # let the session be accepted again, redelivering this message first
            receiver.complete_message(raw)


class ServiceBusBroker:
    """``Broker`` on one Service Bus topic (see the module docstring)."""

    def __init__(self, location: ServiceBusLocation, client: Any | None = None, admin: Any | None = None) -> None:
        self.location = location
        self.url = f"servicebus://{location.namespace}/{location.topic}"
        self._client = client
        self._admin = admin
        self._consumers: list[_Consumer] = []
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> ServiceBusBroker:
        """Parse ``url`` (no I/O)."""
        return cls(ServiceBusLocation.parse(url))

    def _build(self) -> None:
        if self._client is None:
            self._client, admin = self.location.clients()
            self._admin = self._admin or admin

    @property
    def client(self) -> Any:
        """The ``ServiceBusClient`` (built on first use)."""
        with self._lock:
            self._build()
            return self._client

    @property
    def admin(self) -> Any:
        """The ``ServiceBusAdministrationClient`` (used only with ``provision=true``)."""
        with self._lock:
            self._build()
            return self._admin

    def publish(self, messages: Sequence[Message]) -> None:
        """Send in order, in batches under the tier's batch size; duplicates are dropped by the topic."""
        if not messages:
            return
        for message in messages:
            if not message.id or len(message.id) > SESSION_ID_MAX:
                raise ValidationError(f"message id {message.id!r} must be 1 to {SESSION_ID_MAX} characters")
        try:
            with self.client.get_topic_sender(self.location.topic) as sender:
                for batch in _batches(messages):
                    sender.send_messages([to_servicebus(m) for m in batch])
        except ServiceBusError as e:
            raise _translate(e, f"topic {self.location.topic!r}") from e

    def _ensure_subscription(self, group: str) -> None:
        if not self.location.provision:
            return
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        try:
            self.admin.get_subscription(self.location.topic, group)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                self.admin.create_subscription(
                    self.location.topic,
                    group,
                    requires_session=True,
                    max_delivery_count=SUBSCRIPTION_MAX_DELIVERY_COUNT,
                    dead_lettering_on_message_expiration=True,
                )

    def subscribe(self, group: str, handler: MessageHandler, *, max_deliveries: int = 5) -> _Consumer:
        """Start ``workers`` session receivers on the group's subscription."""
        if not group or len(group) > 50:
            raise ValidationError(f"consumer group {group!r} must be 1 to 50 characters (a subscription name)")
        if max_deliveries < 1:
            raise ValidationError("max_deliveries must be >= 1")
        self._ensure_subscription(group)
        consumer = _Consumer(self, group, handler, max_deliveries)
        with self._lock:
            self._consumers.append(consumer)
        return consumer

    def dead_letters(self, group: str, limit: int = 100) -> list[Message]:
        """Peek the subscription's dead-letter queue (nothing is removed)."""
        try:
            with self.client.get_subscription_receiver(
                self.location.topic, group, sub_queue=ServiceBusSubQueue.DEAD_LETTER
            ) as receiver:
                return [from_servicebus(raw) for raw in receiver.peek_messages(max_message_count=limit)]
        except ServiceBusError as e:
            raise _translate(e, f"dead-letter queue of subscription {group!r}") from e

    def close(self) -> None:
        """Stop every consumer, then close the client."""
        with self._lock:
            consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            consumer.close()
        if self._client is not None:
            self._client.close()


def _batches(messages: Iterable[Message]) -> Iterable[list[Message]]:
    batch: list[Message] = []
    size = 0
    for message in messages:
        if batch and size + len(message.body) > MAX_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += len(message.body)
    if batch:
        yield batch
