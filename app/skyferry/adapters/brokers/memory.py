"""The in-process broker: ``memory://`` and ``memory://NAME``.

URL fields (for tests and local use):

* ``memory://`` gives a fresh broker each time it is opened; ``memory://NAME`` the
  process-wide broker called ``NAME``, shared by an API and a worker in one process.
* ``?retry_backoff=SECONDS`` (default 1.0): the delay before the first redelivery of a
  message whose handler raised; it doubles per attempt, capped at 30 times the base.
* ``?retain=MESSAGES`` (default 100,000): how many published messages the broker keeps
  for groups that subscribe later, which is also its deduplication window.  Memory stays
  bounded in a long-running process; groups already subscribed get every message.

Semantics (the ``Broker`` port): ``publish`` deduplicates by message id (within the
retained window) and appends to one log; a new group receives the retained log from its
start (like a JetStream consumer with ``deliver_all``), then everything published.
Within a group, each ordering key is handled by one consumer at a time, in publish
order; different keys run in parallel on the group's competing consumers (one thread per
``subscribe``).  A message is removed only after its handler returns.  A handler that
raises is logged with the message id and redelivered after the backoff; after
``max_deliveries`` attempts the message goes to the group's dead letters and its key
moves on.  Nothing is persisted: messages live as long as the process (the relay's
checkpoint in the view store is what makes the outbox durable).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Final, Self
from urllib.parse import parse_qs, urlsplit

from skyferry.core.errors import ConfigurationError, ValidationError
from skyferry.core.ports import Message, MessageHandler

log = logging.getLogger(__name__)

DEFAULT_RETRY_BACKOFF: Final = 1.0
DEFAULT_RETAIN: Final = 100_000
MAX_BACKOFF_FACTOR: Final = 30.0
_IDLE_WAIT: Final = 0.5

_registry_lock = threading.Lock()


@dataclass(slots=True)
class _Pending:
    message: Message
    attempts: int = 0


@dataclass(slots=True)
class _Group:
    """The delivery state of one consumer group.

    Invariant: a key with pending messages is in exactly one of ``ready`` (waiting for a
    consumer), ``busy`` (its head is being handled) or ``delayed`` (backing off).
    """

    name: str
    cond: threading.Condition
    queues: dict[str, deque[_Pending]] = field(default_factory=dict)
    ready: deque[str] = field(default_factory=deque)
    busy: set[str] = field(default_factory=set)
    delayed: dict[str, float] = field(default_factory=dict)
    dead: list[Message] = field(default_factory=list)

    def enqueue(self, message: Message) -> None:
        queue = self.queues.get(message.key)
        if queue is None:
            self.queues[message.key] = deque([_Pending(message)])
            self.ready.append(message.key)
        else:
            queue.append(_Pending(message))

    def take(self) -> tuple[str, _Pending] | float:
        """The next ``(key, head)`` to handle (the key becomes busy), or seconds to wait."""
        now = time.monotonic()
        wait = _IDLE_WAIT
        for key, due in list(self.delayed.items()):
            if due <= now:
                del self.delayed[key]
                self.ready.append(key)
            else:
                wait = min(wait, due - now)
        if not self.ready:
            return wait
        key = self.ready.popleft()
        self.busy.add(key)
        return key, self.queues[key][0]

    def settle(self, key: str, done: bool, retry_at: float = 0.0) -> None:
        """Finish handling ``key``'s head: remove it (``done``) or delay the key to ``retry_at``."""
        self.busy.discard(key)
        queue = self.queues[key]
        if done:
            queue.popleft()
            if queue:
                self.ready.append(key)
            else:
                del self.queues[key]
        else:
            self.delayed[key] = retry_at


class _MemorySubscription:
    """One competing consumer of a group: a daemon thread; ``close`` stops it."""

    def __init__(self, broker: MemoryBroker, group: _Group, handler: MessageHandler, max_deliveries: int) -> None:
        self._broker = broker
        self._group = group
        self._handler = handler
        self._max_deliveries = max_deliveries
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"memory-broker-{group.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        group = self._group
        while not self._stop.is_set():
            with group.cond:
                taken = group.take()
                if isinstance(taken, float):
                    group.cond.wait(taken)
                    continue
            key, pending = taken
            pending.attempts += 1
            message = replace(pending.message, delivery_attempt=pending.attempts)
            try:
                self._handler(message)
            except Exception:
                log.warning(
                    "handler of group %s failed on message %s (key %s, attempt %d of %d)",
                    group.name,
                    message.id,
                    key,
                    pending.attempts,
                    self._max_deliveries,
                    exc_info=True,
                )
                with group.cond:
                    if pending.attempts >= self._max_deliveries:
                        log.error("message %s dead-lettered in group %s", message.id, group.name)
                        group.dead.append(message)
                        group.settle(key, done=True)
                    else:
                        delay = self._broker.retry_backoff * min(2 ** (pending.attempts - 1), MAX_BACKOFF_FACTOR)
                        group.settle(key, done=False, retry_at=time.monotonic() + delay)
                    group.cond.notify_all()
                continue
            with group.cond:
                group.settle(key, done=True)
                group.cond.notify_all()

    def close(self) -> None:
        """Stop after the message in hand (if any) is settled; unhandled ones stay queued."""
        self._stop.set()
        with self._group.cond:
            self._group.cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()


class MemoryBroker:
    """A broker inside the process (see the module docstring for its guarantees)."""

    _instances: ClassVar[dict[str, MemoryBroker]] = {}

    def __init__(
        self, url: str = "memory://", *, retry_backoff: float = DEFAULT_RETRY_BACKOFF, retain: int = DEFAULT_RETAIN
    ) -> None:
        if retry_backoff < 0:
            raise ConfigurationError(f"{url!r}: retry_backoff must be >= 0")
        if retain < 1:
            raise ConfigurationError(f"{url!r}: retain must be >= 1")
        self.url = url
        self.retry_backoff = retry_backoff
        self.retain = retain
        self._lock = threading.Lock()
        self._log: deque[Message] = deque()
        self._seen: set[str] = set()
        self._groups: dict[str, _Group] = {}
        self._subscriptions: list[_MemorySubscription] = []

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``memory://[NAME][?retry_backoff=SECONDS][&retain=MESSAGES]``."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "memory":
            raise ConfigurationError(f"not a memory:// URL: {url!r}")
        query = parse_qs(parts.query)
        try:
            backoff = float(query.pop("retry_backoff", [str(DEFAULT_RETRY_BACKOFF)])[-1])
        except ValueError as e:
            raise ConfigurationError(f"{url!r}: retry_backoff must be a number of seconds") from e
        try:
            retain = int(query.pop("retain", [str(DEFAULT_RETAIN)])[-1])
        except ValueError as e:
            raise ConfigurationError(f"{url!r}: retain must be a number of messages") from e
        if query:
            raise ConfigurationError(f"{url!r}: unknown parameter(s) {', '.join(sorted(query))}")
        name = parts.netloc + parts.path.rstrip("/")
        if not name:
            return cls(url, retry_backoff=backoff, retain=retain)
        with _registry_lock:
            broker = cls._instances.get(name)
            if broker is None:
                broker = cls._instances[name] = cls(url, retry_backoff=backoff, retain=retain)
        if not isinstance(broker, cls):
            raise ConfigurationError(f"{url!r}: the name is taken by another kind of broker")
        return broker

    @classmethod
    def forget(cls, name: str) -> None:
        """Close and drop the named broker ``name`` (tests call this)."""
        with _registry_lock:
            broker = cls._instances.pop(name, None)
        if broker is not None:
            broker.close()

    def publish(self, messages: Sequence[Message]) -> None:
        """Append ``messages`` (new ids only) to the log and to every group's queues."""
        for message in messages:
            if not message.id or not message.key:
                raise ValidationError("a message needs an id (deduplication) and a key (ordering)")
        with self._lock:
            fresh = []
            for message in messages:
                if message.id not in self._seen:
                    self._seen.add(message.id)
                    fresh.append(replace(message, delivery_attempt=1))
            self._log.extend(fresh)
            while len(self._log) > self.retain:
                # Bounded memory in a long-running process: the oldest message leaves the
                # log (groups created later will not see it) and the dedup window.
                self._seen.discard(self._log.popleft().id)
            # Filled under the broker lock: concurrent publishes keep their order per key,
            # and a group created concurrently gets each message once (log copy or here).
            for group in self._groups.values():
                with group.cond:
                    for message in fresh:
                        group.enqueue(message)
                    group.cond.notify_all()

    def _group(self, name: str) -> _Group:
        with self._lock:
            group = self._groups.get(name)
            if group is None:
                group = _Group(name, threading.Condition())
                for message in self._log:
                    group.enqueue(message)
                self._groups[name] = group
            return group

    def subscribe(self, group: str, handler: MessageHandler, *, max_deliveries: int = 5) -> _MemorySubscription:
        """Start a competing consumer of ``group`` on a daemon thread."""
        if max_deliveries < 1:
            raise ValidationError("max_deliveries must be >= 1")
        subscription = _MemorySubscription(self, self._group(group), handler, max_deliveries)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def dead_letters(self, group: str, limit: int = 100) -> list[Message]:
        """The messages dead-lettered in ``group``, oldest first."""
        with self._lock:
            found = self._groups.get(group)
        if found is None:
            return []
        with found.cond:
            return list(found.dead[:limit])

    def pending(self, group: str) -> int:
        """How many messages ``group`` has not settled yet (for tests and the demo)."""
        with self._lock:
            found = self._groups.get(group)
            if found is None:
                return len(self._log)
        with found.cond:
            return sum(len(q) for q in found.queues.values())

    def close(self) -> None:
        """Stop every subscription (a named broker keeps its messages)."""
        with self._lock:
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.close()
