"""The composition root: the app's adapters opened from its settings, and wired.

:func:`bootstrap` opens the event store and the view store at ``settings.store_url`` and
the broker at ``settings.broker_url`` through the adapter registry and wires a
:class:`Ledger` on them: the one application object the API, the CLI and the demo use.
Tests and benchmarks that open their own adapters hand them to :class:`Ledger` directly.

What is wired where:

* the command side: an :class:`~skyferry.core.application.Application` with the ledger's
  handlers (:mod:`skyferry.ledger.handlers`);
* the queries (:class:`~skyferry.ledger.queries.LedgerQueries`, which :class:`Ledger` is);
* the worker (:class:`~skyferry.core.worker.Worker`): the relay, the transfer process
  manager (:mod:`skyferry.ledger.process`) and the read models
  (:mod:`skyferry.ledger.projections`), fed from the store or the broker as
  ``projections_from`` says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from skyferry.adapters import registry
from skyferry.core.application import Application, CommandResult
from skyferry.core.errors import ConfigurationError, WriteFenced
from skyferry.core.messages import utc_now
from skyferry.core.parking import DEFAULT_RETRY, ParkedEvents, RetryPolicy
from skyferry.core.ports import Broker, EventStore, Subscription, ViewStore
from skyferry.core.projections import (
    Projection,
    ProjectionConsumer,
    ProjectionRunner,
    ReadModels,
    RebuildReport,
    checkpoint_name,
    rebuild,
)
from skyferry.core.relay import Relay
from skyferry.core.upcasting import Upcasters
from skyferry.core.worker import Beat, Task, Worker, WorkerThread, no_beat
from skyferry.ledger.handlers import register_handlers
from skyferry.ledger.process import TransferProcess
from skyferry.ledger.projections import ledger_projections
from skyferry.ledger.queries import LedgerQueries
from skyferry.migrate.fence import is_fenced
from skyferry.settings import ProjectionsFrom, Settings

EMBEDDED_SCHEMES = frozenset({"sqlite", "memory"})
"""Store URL schemes where one process usually writes (``bootstrap`` turns fast-forward off)."""


def write_fence(views: ViewStore) -> Callable[[], None]:
    """The write guard of every command: ``WriteFenced`` while a cutover fences the store.

    The fence is the document of :mod:`skyferry.migrate.fence` in the store's own view
    store, so every process on the store (API, worker, CLI) sees it.
    """

    def check() -> None:
        if is_fenced(views):
            raise WriteFenced("writes are paused: the store is fenced for a migration cutover; retry later")

    return check


@dataclass(frozen=True, slots=True)
class RunnerStatus:
    """How far one runner is behind and how many events it has parked (see :meth:`Ledger.runners`)."""

    name: str
    lag_seconds: float | None
    parked: int

    def to_dict(self) -> dict[str, object]:
        """As JSON types."""
        return {"name": self.name, "lag_seconds": self.lag_seconds, "parked": self.parked}


class Ledger(LedgerQueries):
    """The ledger application: commands in, read models out, and its worker.

    Reads of the read models are eventually consistent: they reflect the events the
    worker (:meth:`run_worker_once` / :meth:`run_worker`) has processed.
    :meth:`account_state` reads the event store and is always current.
    """

    def __init__(
        self,
        events: EventStore,
        views: ViewStore,
        broker: Broker,
        *,
        snapshot_every: int = 100,
        message_mode: str = "full",
        upcasters: Upcasters | None = None,
        batch_size: int = 1000,
        fastforward: bool = True,
        projections_from: ProjectionsFrom = "store",
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        sources = get_args(ProjectionsFrom)
        if projections_from not in sources:
            raise ConfigurationError(f"projections_from must be one of {', '.join(sources)}, not {projections_from!r}")
        self.projections_from = projections_from
        self.events = events
        self.views = views
        self.broker = broker
        self.upcasters = upcasters if upcasters is not None else Upcasters()
        app = Application(
            events,
            views,
            snapshot_every=snapshot_every,
            upcasters=self.upcasters,
            fastforward=fastforward,
            write_guard=write_fence(views),
        )
        register_handlers(app)
        super().__init__(ReadModels(views), app)
        self.relay = Relay(events, views, broker, message_mode)
        self.process = TransferProcess(app)
        self.projections: dict[str, Projection] = {p.name: p for p in ledger_projections()}
        self.retry = retry
        self._runners = [
            ProjectionRunner(events, views, p, upcasters=self.upcasters, batch_size=batch_size, retry=retry)
            for p in [self.process, *self.projections.values()]
        ]
        self.parked = ParkedEvents(events, views, {r.projection.name: r.reapply for r in self._runners})
        """The events the runners and consumers parked (``skyferry parked``)."""
        self.worker_thread: WorkerThread | None = None
        self._subscriptions: list[Subscription] = []
        if projections_from == "store":
            # Nobody reads the broker: publish nothing, keep the relay level with the process manager.
            process_runner = self._runners[0]
            tasks = [Task(runner.projection.name, self._step_of(runner)) for runner in self._runners]
            tasks.append(Task("relay", lambda: self.relay.mark(process_runner.last_position)))
        else:
            tasks = [Task("relay", lambda: self.relay.run_once(max_batches=1))]
        self.worker = Worker(tasks)

    @staticmethod
    def _step_of(runner: ProjectionRunner) -> Callable[[], int]:
        return lambda: runner.run_once(max_events=runner.batch_size)

    # -- commands ------------------------------------------------------------------------------

    def execute(
        self,
        command: Any,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CommandResult:
        """Handle a command (see :meth:`Application.execute` for every guarantee)."""
        return self.app.execute(
            command, idempotency_key=idempotency_key, expected_version=expected_version, metadata=metadata
        )

    # -- worker --------------------------------------------------------------------------------

    def run_worker_once(self, beat: Beat = no_beat) -> int:
        """One worker pass; the number of events handled.

        ``projections_from="store"``: the process manager and the projections, each from
        ``read_all``, until nothing is left; nothing is published (nobody would read it),
        the relay's checkpoint only follows the process manager.
        ``projections_from="broker"``: make sure the broker consumers run
        (:meth:`start_consumers`) and relay everything; read models then update
        asynchronously, as the broker delivers.  Each step is one batch of each, and
        ``beat`` is called before every step (see :mod:`skyferry.heartbeat`), so a long
        catch-up beats too.  A step that fails does not hold up the others (see
        :class:`~skyferry.core.worker.Worker`); its error is raised at the end.
        """
        if self.projections_from == "broker":
            self.start_consumers()
        return self.worker.run_once(beat)

    def run_worker(
        self,
        stop: threading.Event,
        poll_interval: float = 0.2,
        max_backoff: float = 10.0,
        beat: Beat = no_beat,
        max_idle: float = 2.0,
    ) -> None:
        """Run the worker until ``stop`` is set; back off and retry after a transient failure or a conflict.

        ``beat`` is called on every pass and every batch, backing off included: it tells a
        liveness probe that the loop has not hung (see :mod:`skyferry.heartbeat`).
        """
        if self.projections_from == "broker":
            self.start_consumers()
        self.worker.run(stop, poll_interval=poll_interval, max_idle=max_idle, max_backoff=max_backoff, beat=beat)

    def start_worker(
        self, stop: threading.Event, poll_interval: float = 0.2, beat: Beat = no_beat, max_idle: float = 2.0
    ) -> WorkerThread:
        """Run the worker on a thread of this process (``serve --worker``), restarted whenever it dies.

        :meth:`worker_status` (and so ``/readyz``) reports it down while it waits to restart.
        """
        self.worker_thread = WorkerThread(
            lambda halt: self.run_worker(halt, poll_interval, beat=beat, max_idle=max_idle), stop, name="worker"
        ).start()
        return self.worker_thread

    def worker_status(self) -> dict[str, object] | None:
        """The in-process worker's state (``up``, ``restarts``, ``last_error``); ``None`` without one."""
        return None if self.worker_thread is None else self.worker_thread.status()

    def runners(self) -> list[RunnerStatus]:
        """Each runner's lag and parked events, read from the stores (so from any process).

        ``lag_seconds`` is the age of the oldest event the runner has not handled (0 when
        caught up); it is ``None`` for broker consumers, whose backlog is the broker's.
        """
        parked = self.parked.counts()
        now = utc_now()
        found: list[RunnerStatus] = []
        for runner in self._runners:
            name = checkpoint_name(runner.projection.name, self.read_models.live_generation(runner.projection.name))
            lag = self._lag(runner.committed_position(), now) if self.projections_from == "store" else None
            found.append(RunnerStatus(runner.projection.name, lag, parked.get(name, 0)))
        if self.projections_from == "broker":
            found.append(RunnerStatus("relay", self._lag(self.relay.position(), now), 0))
        return found

    def _lag(self, position: str | None, now: datetime) -> float:
        waiting = self.events.read_all(after=position, limit=1)
        return max(0.0, (now - waiting[0].recorded_at).total_seconds()) if waiting else 0.0

    def rebuild(self, name: str, on_progress: Callable[[int], None] | None = None) -> RebuildReport:
        """Blue/green rebuild of the read model ``name``; ``ConfigurationError`` for an unknown name.

        ``on_progress`` is called with the number of events read after each batch."""
        projection = self.projections.get(name)
        if projection is None:
            known = ", ".join(sorted(self.projections))
            raise ConfigurationError(f"unknown read model {name!r}; known: {known}")
        with self.worker.lock:
            return rebuild(
                self.events,
                self.views,
                projection,
                upcasters=self.upcasters,
                stream_checkpoints=self.projections_from == "broker",
                on_progress=on_progress,
            )

    def outdated_read_models(self) -> list[str]:
        """Read models whose live generation was built by another ``version`` of their projection."""
        return [
            name
            for name, projection in sorted(self.projections.items())
            if self.read_models.built_version(name) != projection.version
        ]

    def rebuild_outdated(self) -> list[RebuildReport]:
        """Rebuild every outdated read model (after a deployment that bumped a projection's version)."""
        return [self.rebuild(name) for name in self.outdated_read_models()]

    def start_consumers(self) -> None:
        """Subscribe the process manager and every projection to the broker (once).

        Groups are named after the projections.  Projections dedupe with per-stream
        checkpoints (:class:`~skyferry.core.projections.ProjectionConsumer`); the process
        manager needs none (its commands are idempotent).  Each consumer parks an event it
        keeps failing on at the ``retry.attempts``-th delivery; the broker's dead letters
        (one delivery later) only catch what could not even be parked.
        """
        if self._subscriptions:
            return
        deliveries = self.retry.attempts + 1
        process = ProjectionConsumer(
            self.events,
            self.views,
            self.process,
            upcasters=self.upcasters,
            generation=1,
            stream_checkpoints=False,
            retry=self.retry,
        )
        self._subscriptions.append(self.broker.subscribe(self.process.name, process.handle, max_deliveries=deliveries))
        for projection in self.projections.values():
            consumer = ProjectionConsumer(
                self.events, self.views, projection, upcasters=self.upcasters, retry=self.retry
            )
            self._subscriptions.append(
                self.broker.subscribe(projection.name, consumer.handle, max_deliveries=deliveries)
            )

    def stop_consumers(self) -> None:
        """Stop the broker consumers started by :meth:`start_consumers`."""
        while self._subscriptions:
            self._subscriptions.pop().close()

    def close(self) -> None:
        """Stop the consumers; settle the relay's publishes in flight; close the broker and both stores."""
        self.stop_consumers()
        self.relay.close()
        self.broker.close()
        self.views.close()
        self.events.close()


def bootstrap(settings: Settings) -> Ledger:
    """The ledger wired as ``settings`` say, on the adapters their URLs name.

    Fast-forward (see :class:`~skyferry.core.application.Application`) is off for the
    embedded stores (``sqlite://``, ``memory://``), where one process usually writes and
    reading each stream's tail before deciding is wasted work, and on for shared
    databases written by several replicas, where a cached state is often stale.  Both
    are correct; only the cost differs.
    """
    fastforward = registry.scheme_of(settings.store_url) not in EMBEDDED_SCHEMES
    events = registry.open_event_store(settings.store_url)
    views = registry.open_view_store(settings.store_url)
    broker = registry.open_broker(settings.broker_url)
    return Ledger(
        events,
        views,
        broker,
        snapshot_every=settings.snapshot_every,
        message_mode=settings.message_mode,
        fastforward=fastforward,
        projections_from=settings.projections_from,
    )
