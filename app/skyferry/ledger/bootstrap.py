"""The one place where adapters are wired into the ledger: :func:`bootstrap`.

``bootstrap(store_url, broker_url)`` opens the event store and view store at
``store_url`` and the broker at ``broker_url`` through the adapter registry, registers
the command handlers, and returns a :class:`Ledger`: the facade the API, the CLI and the
demo use.  Tests hand in ready-made adapters through :meth:`Ledger.from_adapters`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from skyferry.adapters import registry
from skyferry.core.application import Application, CommandResult
from skyferry.core.codec import decode
from skyferry.core.errors import ConcurrencyError, ConfigurationError, StreamNotFound, TransientError
from skyferry.core.ports import Broker, EventStore, Message, Subscription, ViewStore
from skyferry.core.projections import (
    Projection,
    ProjectionConsumer,
    ProjectionRunner,
    ReadModels,
    RebuildReport,
    rebuild,
)
from skyferry.core.relay import Relay
from skyferry.core.upcasting import Upcasters
from skyferry.heartbeat import no_beat
from skyferry.ledger import account as acc
from skyferry.ledger import commands as cmd
from skyferry.ledger import transfer as tr
from skyferry.ledger.errors import AccountNotFound, TransferNotFound
from skyferry.ledger.money import format_amount
from skyferry.ledger.projections import history_key, ledger_projections
from skyferry.settings import Settings

log = logging.getLogger(__name__)

EMBEDDED_SCHEMES = frozenset({"sqlite", "memory"})
"""Store URL schemes where one process usually writes (``bootstrap`` turns fast-forward off)."""

CONSUME_MODES = ("store", "broker")
"""Where the worker's process manager and projections read events: ``read_all``, or the broker."""


def register_handlers(app: Application) -> None:
    """Register every ledger command handler on ``app``."""
    account_id, transfer_id = acc.account_id_of, tr.transfer_id_of
    app.register(cmd.OpenAccount, acc.Account, account_id, acc.open_account)
    app.register(cmd.Deposit, acc.Account, account_id, acc.deposit)
    app.register(cmd.Withdraw, acc.Account, account_id, acc.withdraw)
    app.register(cmd.CloseAccount, acc.Account, account_id, acc.close_account)
    app.register(cmd.DebitForTransfer, acc.Account, account_id, acc.debit_for_transfer)
    app.register(cmd.CreditForTransfer, acc.Account, account_id, acc.credit_for_transfer)
    app.register(cmd.RefundTransfer, acc.Account, account_id, acc.refund_transfer)
    app.register(cmd.TransferMoney, tr.Transfer, transfer_id, tr.start_transfer)
    app.register(cmd.MarkTransferDebited, tr.Transfer, transfer_id, tr.mark_debited)
    app.register(cmd.CompleteTransfer, tr.Transfer, transfer_id, tr.complete_transfer)
    app.register(cmd.FailTransfer, tr.Transfer, transfer_id, tr.fail_transfer)


class Ledger:
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
        consume: str = "store",
    ) -> None:
        if consume not in CONSUME_MODES:
            raise ConfigurationError(f"consume must be one of {', '.join(CONSUME_MODES)}, not {consume!r}")
        self.consume = consume
        self.events = events
        self.views = views
        self.broker = broker
        self.upcasters = upcasters if upcasters is not None else Upcasters()
        self.app = Application(
            events, views, snapshot_every=snapshot_every, upcasters=self.upcasters, fastforward=fastforward
        )
        register_handlers(self.app)
        self.read_models = ReadModels(views)
        self.relay = Relay(events, views, broker, message_mode)
        self.process = tr.TransferProcess(self.app)
        self.projections: dict[str, Projection] = {p.name: p for p in ledger_projections()}
        self._runners = [
            ProjectionRunner(events, views, p, upcasters=self.upcasters, batch_size=batch_size)
            for p in [self.process, *self.projections.values()]
        ]
        self._worker_lock = threading.Lock()
        self._subscriptions: list[Subscription] = []

    @classmethod
    def from_adapters(cls, events: EventStore, views: ViewStore, broker: Broker, **options: Any) -> Ledger:
        """A ledger over adapters the caller opened (tests, benchmarks)."""
        return cls(events, views, broker, **options)

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

    # -- queries -------------------------------------------------------------------------------

    def balance(self, account_id: str) -> dict[str, Any]:
        """The balances document of an account; ``AccountNotFound`` if the view has none."""
        doc = self.read_models.get("balances", "balances", account_id)
        if doc is None:
            raise AccountNotFound(f"account {account_id!r} does not exist (or is not projected yet)")
        return doc

    def history(self, account_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The account's events, newest first, at most ``limit``."""
        prefix = history_key(account_id, 0).rsplit("/", 1)[0] + "/"
        return [doc for _, doc in self.read_models.query("history", "history", prefix=prefix, limit=limit)]

    def daily_totals(self, day: date | str) -> list[dict[str, Any]]:
        """The totals of ``day`` (``YYYY-MM-DD``), one document per currency."""
        text = day.isoformat() if isinstance(day, date) else day
        return [doc for _, doc in self.read_models.query("daily_totals", "daily_totals", prefix=f"{text}/")]

    def transfer(self, transfer_id: str) -> dict[str, Any]:
        """Where a transfer stands (from the transfers view); ``TransferNotFound`` if absent."""
        doc = self.read_models.get("transfers", "transfers", transfer_id)
        if doc is None:
            raise TransferNotFound(f"transfer {transfer_id!r} does not exist (or is not projected yet)")
        return doc

    def account_state(
        self, account_id: str, as_of: datetime | None = None, at_version: int | None = None
    ) -> dict[str, Any]:
        """The account as it is, or was at ``as_of`` / ``at_version``, from its events."""
        try:
            account = self.app.load(acc.Account, account_id, as_of=as_of, at_version=at_version)
        except StreamNotFound as e:
            raise AccountNotFound(f"account {account_id!r} does not exist at that point") from e
        return account.to_dict()

    def total_money(self) -> dict[str, Decimal]:
        """Per currency: the sum of the balances plus the money in transit (debited, not credited).

        Equal to deposits minus withdrawals (see :meth:`money_check`) once the worker is
        caught up.
        """
        totals: dict[str, Decimal] = {}
        for _, doc in self.read_models.query("balances", "balances"):
            totals[doc["currency"]] = totals.get(doc["currency"], Decimal(0)) + Decimal(doc["balance"])
        for _, doc in self.read_models.query("transfers", "transfers", where=("status", "debited")):
            totals[doc["currency"]] = totals.get(doc["currency"], Decimal(0)) + Decimal(doc["amount"])
        return totals

    def money_check(self) -> dict[str, dict[str, Any]]:
        """Per currency: total money vs. deposits minus withdrawals (from daily totals), and whether equal."""
        held = self.total_money()
        flows: dict[str, Decimal] = {}
        for _, doc in self.read_models.query("daily_totals", "daily_totals"):
            net = Decimal(doc["deposited"]) - Decimal(doc["withdrawn"])
            flows[doc["currency"]] = flows.get(doc["currency"], Decimal(0)) + net
        report: dict[str, dict[str, Any]] = {}
        for currency in sorted(set(held) | set(flows)):
            have, expected = held.get(currency, Decimal(0)), flows.get(currency, Decimal(0))
            report[currency] = {
                "held": format_amount(have, currency),
                "deposited_minus_withdrawn": format_amount(expected, currency),
                "conserved": have == expected,
            }
        return report

    # -- worker --------------------------------------------------------------------------------

    def run_worker_once(self, beat: Callable[[], None] = no_beat) -> int:
        """One worker pass; the number of events handled.

        ``consume="store"``: relay, process manager and projections, each from ``read_all``,
        until nothing is left.  ``consume="broker"``: make sure the broker consumers run
        (:meth:`start_consumers`) and relay everything; read models then update
        asynchronously, as the broker delivers.  Each step is one batch of each, and ``beat``
        is called before every step (see :mod:`skyferry.heartbeat`), so a long catch-up beats too.
        """
        total = 0
        with self._worker_lock:
            if self.consume == "broker":
                self.start_consumers()
                while True:
                    beat()
                    relayed = self.relay.run_once(max_batches=1)
                    if not relayed:
                        return total
                    total += relayed
            while True:
                beat()
                handled = self.relay.run_once(max_batches=1)
                for runner in self._runners:
                    handled += runner.run_once(max_events=runner.batch_size)
                if not handled:
                    return total
                total += handled

    def run_worker(
        self,
        stop: threading.Event,
        poll_interval: float = 0.2,
        max_backoff: float = 10.0,
        beat: Callable[[], None] = no_beat,
    ) -> None:
        """Run the worker until ``stop`` is set; back off and retry after a transient failure or a conflict.

        ``beat`` is called on every pass and every batch, backing off included: it tells a
        liveness probe that the loop has not hung (see :mod:`skyferry.heartbeat`).
        """
        backoff = poll_interval
        while not stop.is_set():
            try:
                handled = self.run_worker_once(beat)  # it beats before every step, a failing one too
            except (TransientError, ConcurrencyError):
                # Unreachable service, or a process-manager command that kept losing races with
                # other writers: nothing was half-applied (checkpoints did not move), so retry.
                log.warning("worker: pass failed, retrying in %.1fs", backoff, exc_info=True)
                stop.wait(backoff)
                backoff = min(backoff * 2, max_backoff)
                continue
            backoff = poll_interval
            if not handled:
                stop.wait(poll_interval)

    def rebuild(self, name: str) -> RebuildReport:
        """Blue/green rebuild of the read model ``name``; ``ConfigurationError`` for an unknown name."""
        projection = self.projections.get(name)
        if projection is None:
            known = ", ".join(sorted(self.projections))
            raise ConfigurationError(f"unknown read model {name!r}; known: {known}")
        with self._worker_lock:
            return rebuild(
                self.events,
                self.views,
                projection,
                upcasters=self.upcasters,
                stream_checkpoints=self.consume == "broker",
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
        manager needs none (its commands are idempotent).
        """
        if self._subscriptions:
            return
        self._subscriptions.append(self.broker.subscribe(self.process.name, self._handle_process_message))
        for projection in self.projections.values():
            consumer = ProjectionConsumer(self.events, self.views, projection, upcasters=self.upcasters)
            self._subscriptions.append(self.broker.subscribe(projection.name, consumer.handle))

    def _handle_process_message(self, message: Message) -> None:
        if message.attributes.get("type", "") not in ("", *self.process.handles):
            return
        self.process.handle(decode(message, self.events, self.upcasters))

    def stop_consumers(self) -> None:
        """Stop the broker consumers started by :meth:`start_consumers`."""
        while self._subscriptions:
            self._subscriptions.pop().close()

    def close(self) -> None:
        """Stop the consumers; close the broker and both stores."""
        self.stop_consumers()
        self.broker.close()
        self.views.close()
        self.events.close()


def bootstrap(
    store_url: str,
    broker_url: str = "memory://",
    *,
    snapshot_every: int = 100,
    message_mode: str = "full",
    upcasters: Upcasters | None = None,
    fastforward: bool | None = None,
    consume: str = "store",
) -> Ledger:
    """Open the adapters named by the URLs and wire the ledger on them.

    ``fastforward`` (see :class:`~skyferry.core.application.Application`): ``None`` chooses
    ``False`` for the embedded stores (``sqlite://``, ``memory://``), where one process
    usually writes and reading each stream's tail before deciding is wasted work, and
    ``True`` for shared databases written by several replicas, where a cached state is
    often stale.  Both are correct; only the cost differs.
    """
    if fastforward is None:
        fastforward = registry.scheme_of(store_url) not in EMBEDDED_SCHEMES
    events = registry.open_event_store(store_url)
    views = registry.open_view_store(store_url)
    broker = registry.open_broker(broker_url)
    return Ledger(
        events,
        views,
        broker,
        snapshot_every=snapshot_every,
        message_mode=message_mode,
        upcasters=upcasters,
        fastforward=fastforward,
        consume=consume,
    )


def from_settings(settings: Settings, *, broker_url: str | None = None) -> Ledger:
    """The ledger wired as ``settings`` say: the one call of the commands and the demo."""
    return bootstrap(
        settings.store_url,
        broker_url or settings.broker_url,
        snapshot_every=settings.snapshot_every,
        message_mode=settings.message_mode,
        consume=settings.projections_from,
    )
