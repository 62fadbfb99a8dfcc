"""The relay (transactional outbox): events from the store to the broker, none lost.

The relay tails ``EventStore.read_all`` from its checkpoint (``ViewStore`` checkpoint
``$relay``, key ``$all``), publishes each batch, and advances the checkpoint only after
the broker accepted the whole batch.  If the broker fails mid-batch, the checkpoint stays
where it was and the whole batch is published again on the next pass: the broker
deduplicates by message id (the event id) and consumers' checkpoints absorb any
duplicate that gets through.  Losing the relay process loses nothing for the same reason.

With a broker that takes publishes in flight (the ``publish_begin`` feature: Pub/Sub,
SNS+SQS), up to ``in_flight`` batches are handed over before the oldest must be confirmed,
so a round trip to the broker is paid once per ``in_flight`` batches, not once per batch;
the checkpoint still only moves past batches the broker confirmed, in order, and a failure
forgets the batches in flight (they are published again from the checkpoint).

When nobody consumes from the broker (the read models and the process manager are fed from
the store), the application does not publish at all: it only keeps the relay's checkpoint
level with the process manager (:meth:`Relay.mark`), so that a later switch to broker-fed
consumers publishes exactly what they have not handled yet.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Final

from skyferry.core.codec import MessageMode, check_mode, encode
from skyferry.core.errors import ConfigurationError
from skyferry.core.ports import FEATURE_PUBLISH_BEGIN, Broker, EventStore, ViewStore, features_of, publish_begin
from skyferry.core.worker import Task, Worker

RELAY_CHECKPOINT: Final = "$relay"
IN_FLIGHT: Final = 4
"""Batches a pipelining broker holds before the relay waits for the oldest (``in_flight``)."""

log = logging.getLogger(__name__)


class Relay:
    """Publishes every stored event to ``broker`` in ``mode`` (``full`` or ``thin``).

    ``name`` names the checkpoint (two relays with different names publish independently,
    for example to two brokers during a migration).  ``published`` counts messages sent
    by this instance, duplicates after a failure included.  ``in_flight`` bounds the batches
    handed to a pipelining broker and not yet confirmed (1 with any other broker).
    """

    def __init__(
        self,
        events: EventStore,
        views: ViewStore,
        broker: Broker,
        mode: str = "full",
        *,
        batch_size: int = 500,
        name: str = RELAY_CHECKPOINT,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        if in_flight < 1:
            raise ConfigurationError(f"in_flight must be at least 1, not {in_flight}")
        self.events = events
        self.views = views
        self.broker = broker
        self.mode: MessageMode = check_mode(mode)
        self.batch_size = batch_size
        self.name = name
        self.published = 0
        self.in_flight = in_flight if FEATURE_PUBLISH_BEGIN in features_of(broker) else 1
        self._marked: str | None = None
        self._pending: deque[tuple[Callable[[], None], str]] = deque()  # (waiter, last position), oldest first
        self._read_to: str | None = None  # the position read up to while batches are in flight

    def position(self) -> str | None:
        """The position of the last event the broker accepted (``None``: nothing yet)."""
        return self.views.get_checkpoint(self.name)

    def run_once(self, max_batches: int | None = None) -> int:
        """Publish what was stored after the checkpoint; return how many events were handed over.

        Returns with every batch confirmed and checkpointed once it found nothing more to
        read, and always when ``max_batches`` is ``None``; with a ``max_batches`` it may leave
        up to ``in_flight - 1`` batches in flight for the next call.  Raises whatever the
        broker or the stores raise (``TransientError`` when the broker is unreachable); the
        batches in flight are then waited out and forgotten, and the checkpoint stays at the
        last batch the broker confirmed.
        """
        position = self._read_to if self._pending else self.position()
        handed = 0
        batches = 0
        mode = self.mode
        try:
            while max_batches is None or batches < max_batches:
                batch = self.events.read_all(after=position, limit=self.batch_size)
                if not batch:
                    break
                last = batch[-1].position
                if last is None:
                    raise ConfigurationError(f"{self.events.url}: read_all returned an event without a position")
                waiter = publish_begin(self.broker, [encode(event, mode) for event in batch])
                self.published += len(batch)
                self._pending.append((waiter, last))
                position = self._read_to = last
                handed += len(batch)
                batches += 1
                while len(self._pending) >= self.in_flight:
                    self._confirm_oldest()
            if max_batches is None or batches < max_batches:
                self.settle()
        except BaseException:
            self._forget_in_flight()
            raise
        return handed

    def settle(self) -> None:
        """Wait for the batches in flight and move the checkpoint past them, oldest first."""
        while self._pending:
            self._confirm_oldest()

    def close(self) -> None:
        """Settle what is in flight, if the broker still confirms it (else it is published again later)."""
        try:
            self.settle()
        except Exception as e:
            log.warning("relay %s: batches in flight not confirmed (%s); they will be published again", self.name, e)
            self._forget_in_flight()

    def _confirm_oldest(self) -> None:
        waiter, last = self._pending[0]
        waiter()
        self._pending.popleft()
        self.views.commit(self.name, [], {"$all": last})

    def _forget_in_flight(self) -> None:
        """Wait out every batch in flight, failed or not (so the broker takes their keys again); forget them."""
        pending, self._pending, self._read_to = self._pending, deque(), None
        for waiter, _ in pending:
            with contextlib.suppress(Exception):
                waiter()

    def mark(self, position: str | None) -> int:
        """Move the checkpoint to ``position`` without publishing anything; returns 0 (events relayed).

        Used while nothing reads the broker: the checkpoint then follows whoever handles the
        events instead (``None``, nobody has yet, leaves it where it is).
        """
        if position is not None and position != self._marked:
            self.views.commit(self.name, [], {"$all": position})
            self._marked = position
        return 0

    def run(self, stop: threading.Event, *, poll_interval: float = 0.2, max_backoff: float = 10.0) -> None:
        """Relay until ``stop`` is set: poll when idle, back off while the broker is unreachable."""
        task = Task(f"relay {self.name}", lambda: self.run_once(max_batches=1))
        Worker([task], name=task.name).run(stop, poll_interval=poll_interval, max_backoff=max_backoff)
        self.close()
