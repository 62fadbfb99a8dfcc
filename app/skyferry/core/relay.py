"""The relay (transactional outbox): events from the store to the broker, none lost.

The relay tails ``EventStore.read_all`` from its checkpoint (``ViewStore`` checkpoint
``$relay``, key ``$all``), publishes each batch, and advances the checkpoint only after
the broker accepted the whole batch.  If the broker fails mid-batch, the checkpoint stays
where it was and the whole batch is published again on the next pass: the broker
deduplicates by message id (the event id) and consumers' checkpoints absorb any
duplicate that gets through.  Losing the relay process loses nothing for the same reason.

When nobody consumes from the broker (the read models and the process manager are fed from
the store), the application does not publish at all: it only keeps the relay's checkpoint
level with the process manager (:meth:`Relay.mark`), so that a later switch to broker-fed
consumers publishes exactly what they have not handled yet.
"""

from __future__ import annotations

import threading
from typing import Final

from skyferry.core.codec import MessageMode, check_mode, encode
from skyferry.core.errors import ConfigurationError
from skyferry.core.ports import Broker, EventStore, ViewStore
from skyferry.core.worker import Task, Worker

RELAY_CHECKPOINT: Final = "$relay"


class Relay:
    """Publishes every stored event to ``broker`` in ``mode`` (``full`` or ``thin``).

    ``name`` names the checkpoint (two relays with different names publish independently,
    for example to two brokers during a migration).  ``published`` counts messages sent
    by this instance, duplicates after a failure included.
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
    ) -> None:
        self.events = events
        self.views = views
        self.broker = broker
        self.mode: MessageMode = check_mode(mode)
        self.batch_size = batch_size
        self.name = name
        self.published = 0
        self._marked: str | None = None

    def position(self) -> str | None:
        """The position of the last event the broker accepted (``None``: nothing yet)."""
        return self.views.get_checkpoint(self.name)

    def run_once(self, max_batches: int | None = None) -> int:
        """Publish everything after the checkpoint; return how many events were relayed.

        Raises whatever the broker or the stores raise (``TransientError`` when the broker
        is unreachable); the checkpoint then stays at the last fully published batch.
        """
        position = self.position()
        total = 0
        batches = 0
        mode = self.mode
        while max_batches is None or batches < max_batches:
            batch = self.events.read_all(after=position, limit=self.batch_size)
            if not batch:
                break
            self.broker.publish([encode(event, mode) for event in batch])
            self.published += len(batch)
            last = batch[-1].position
            if last is None:
                raise ConfigurationError(f"{self.events.url}: read_all returned an event without a position")
            self.views.commit(self.name, [], {"$all": last})
            position = last
            total += len(batch)
            batches += 1
        return total

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
