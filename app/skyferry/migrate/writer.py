"""The one write path of imports and migrations: already-versioned events into a target store.

It uses the target's fastest path: ``bulk_append`` when the store declares it, else one
``append`` per run of consecutive events of one stream (which keeps the source's global
order, so that a re-export is byte-identical).  An import's events decoded as rows go, into
a store that copies rows (SQLite, PostgreSQL), as one ``copy_from`` of a :class:`RowBatch`
(:meth:`TargetWriter.write_rows`).  Writes are cut to the target's own limits
(:class:`~skyferry.core.ports.WriteLimits`: DynamoDB's 100 items and 4 MB per transaction,
Firestore's 500 writes per commit), in order, so each stream's versions stay contiguous;
no option is needed for that.  When a call is cut, every event of it is validated before
the first is written: a batch holding one invalid event writes nothing.  Every write is
idempotent by event id and version, so a resumed copy re-writes its last batch harmlessly;
an event that differs from what the target holds raises :class:`TargetConflict` naming
the stream and version.

Many writes in flight (``concurrency``, the ``--concurrency`` option of ``import`` and
``migrate``): the cut parts go through an :class:`~skyferry.core.inflight.OrderedPool`, in
which the parts of one stream run one at a time, in order, and parts of different streams
run side by side; :meth:`TargetWriter.write` returns once every part of its call is
stored, so the callers' checkpoints (after each chunk, after each batch) still never pass
an unwritten event, and a failure leaves each stream written up to a point, never with a
gap.  On the ``append`` path (a store without ``bulk_append``; every store of skyferry's
own has it) each stream's
events of one call are then merged into as few appends as its limits allow, so the target's
log interleaves the streams differently from the source (each stream's order is kept);
``concurrency=1`` keeps the source's global order there.  ``bulk_append`` keeps positions in
the order given, so its parts stay in order, one at a time: those stores take their
positions from one global head (SQLite, PostgreSQL), where concurrent writes would only
queue behind each other or collide.  A store with ``bulk_in_flight`` (DynamoDB, Firestore,
Cosmos DB) takes the whole call and ``concurrency``, and keeps its own parts in flight on positions
it took ahead (:class:`~skyferry.core.ports.InFlightBulkEventStore`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from itertools import groupby
from typing import Final

from skyferry.core.errors import ConcurrencyError, ConfigurationError
from skyferry.core.inflight import MAX_IN_FLIGHT, OrderedPool
from skyferry.core.messages import Event, validate_stream_id
from skyferry.core.ports import (
    FEATURE_BULK_APPEND,
    FEATURE_BULK_IN_FLIGHT,
    FEATURE_COPY_FROM,
    FEATURE_ROWS,
    BulkAppendEventStore,
    CopyingEventStore,
    EventStore,
    InFlightBulkEventStore,
    StoredRow,
    features_of,
    write_limits,
)
from skyferry.migrate.errors import TargetConflict
from skyferry.migrate.format import canonical_bytes, events_of_rows

APPEND_EVENTS: Final = 1000
"""Events per ``append`` where the target sets no cap of its own."""
CONCURRENCY: Final = 32
"""Writes in flight by default (``--concurrency``): enough to hide a cloud store's round trips
on the ``append`` path (Cosmos DB: three requests an append, one after another)."""
MAX_CONCURRENCY: Final = MAX_IN_FLIGHT
"""The most writes in flight ``--concurrency`` accepts (each is a thread and a connection)."""
_IN_ORDER: Final = "\x00in order"
"""The key every ``bulk_append`` part shares: they run one at a time, in order."""


def check_concurrency(value: int) -> int:
    """``value`` if it is a valid ``--concurrency`` (1 to :data:`MAX_CONCURRENCY`), else ``ConfigurationError``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ConfigurationError(f"--concurrency must be from 1 to {MAX_CONCURRENCY}, not {value!r}")
    return value


def validate_all(events: Sequence[Event]) -> None:
    """Raise the store's error for the first event of ``events`` no store may hold."""
    for event in events:
        validate_stream_id(event.stream_id)
        event.to_new().validate()


class RowBatch:
    """Rows in memory, already checked against the rules every store enforces
    (:func:`~skyferry.migrate.format.decode_rows`), as the
    :class:`~skyferry.core.ports.RowSource` a target's ``copy_from`` reads; its positions
    are the rows' indexes."""

    features: Final = frozenset({FEATURE_ROWS})

    def __init__(self, rows: Sequence[StoredRow], url: str) -> None:
        self.rows = rows
        self.url = url

    def read_rows(self, after: str | None, limit: int) -> tuple[list[StoredRow], str | None]:
        """The (at most) ``limit`` rows after index ``after``, and the index after the last."""
        start = 0 if after is None else int(after)
        part = list(self.rows[start : start + limit])
        return part, str(start + len(part)) if part else after


class TargetWriter:
    """Writes versioned events into ``store``, ``concurrency`` writes in flight; counts what was new.

    :meth:`close` stops the writer's threads (there are none with ``concurrency=1``).
    """

    def __init__(self, store: EventStore, *, use_bulk: bool = True, concurrency: int = CONCURRENCY) -> None:
        self.store = store
        self.bulk = use_bulk and FEATURE_BULK_APPEND in features_of(store)
        self.bulk_in_flight = self.bulk and FEATURE_BULK_IN_FLIGHT in features_of(store)
        self.copies_rows = (
            self.bulk
            and FEATURE_COPY_FROM in features_of(store)
            and isinstance(store, CopyingEventStore)
            and store.copies_from(RowBatch((), store.url))
        )
        """Whether :meth:`write_rows` copies rows (SQLite, PostgreSQL) rather than writing events."""
        self.limits = write_limits(store)
        self.concurrency = check_concurrency(concurrency)
        # bulk_append parts run one at a time, in order: in the caller's thread (a pool of one),
        # not beside idle threads that every submission would wake.  (A store with
        # bulk_in_flight keeps its own parts in flight: the whole call goes to it.)
        self.pool: OrderedPool[int] = OrderedPool(1 if self.bulk else self.concurrency, name="skyferry-writer")
        self.written = 0
        self.skipped = 0

    def close(self) -> None:
        """Stop the writer's threads (idempotent)."""
        self.pool.close()

    @property
    def in_flight(self) -> bool:
        """Whether writes go many at a time to a store that keeps them in flight itself
        (``bulk_in_flight``, ``concurrency`` above 1): round trips a checkpoint can hide behind."""
        return self.bulk_in_flight and self.concurrency > 1

    @property
    def path(self) -> str:
        """The write path in use, for reports."""
        return "bulk_append" if self.bulk else "append"

    def write(self, events: Sequence[Event], *, validated: bool = False) -> int:
        """Store ``events`` (each continuing its stream contiguously, or already stored); return
        the new ones.  Nothing is written unless every event is valid (``validated``: the
        caller checked them already)."""
        if not events:
            return 0
        if self.bulk:
            parts = [events] if self.bulk_in_flight else list(self.limits.split(events))
            if len(parts) > 1 and not validated:
                validate_all(events)  # one call validates its own events; several must not write a part
            for part in parts:
                self.pool.submit((_IN_ORDER,), partial(self._bulk_part, part))
        else:
            if not validated:
                validate_all(events)
            if self.concurrency == 1:  # runs of consecutive events: the source's global order
                runs = [(stream_id, list(run)) for stream_id, run in groupby(events, key=lambda e: e.stream_id)]
            else:  # each stream's events together: fewer appends, run side by side
                grouped: dict[str, list[Event]] = {}
                for event in events:
                    grouped.setdefault(event.stream_id, []).append(event)
                runs = list(grouped.items())
            for stream_id, run in runs:
                for part in self.limits.split(run, fallback=APPEND_EVENTS):
                    self.pool.submit((stream_id,), partial(self._append_run, stream_id, list(part)))
        new = sum(self.pool.drain())
        self.written += new
        self.skipped += len(events) - new
        return new

    def write_rows(self, rows: Sequence[StoredRow], source: str) -> int:
        """:meth:`write` of the events of ``rows`` (from :func:`~skyferry.migrate.format.decode_rows`,
        of ``source``); return the new ones.

        Where the target :attr:`copies_rows`, they go as one ``copy_from``: one transaction,
        checked as a batch, no event built.  A batch it cannot take so (events the target
        holds already: a resumed import; an id stored elsewhere) writes nothing there and
        goes through :meth:`write`, which skips what is stored and names any conflict.
        """
        if not rows:
            return 0
        if self.copies_rows:
            assert isinstance(self.store, CopyingEventStore)
            try:
                copied = self.store.copy_from(RowBatch(rows, source), None, len(rows))
            except ConcurrencyError:
                copied = None
            if copied is not None:
                self.written += copied.events
                return copied.events
        return self.write(events_of_rows(rows), validated=True)

    def _bulk_part(self, part: Sequence[Event]) -> int:
        try:
            if self.bulk_in_flight:
                assert isinstance(self.store, InFlightBulkEventStore)
                return self.store.bulk_append(part, in_flight=self.concurrency)
            assert isinstance(self.store, BulkAppendEventStore)
            return self.store.bulk_append(part)
        except ConcurrencyError as e:
            raise self._explain(e, part) from e

    def _append_run(self, stream_id: str, run: list[Event]) -> int:
        first = run[0].version
        try:
            result = self.store.append(stream_id, [e.to_new() for e in run], first - 1)
        except ConcurrencyError as e:
            stored = self.store.read_stream(stream_id, from_version=first, to_version=run[-1].version)
            same = 0
            for mine, theirs in zip(run, stored, strict=False):
                if mine.version != theirs.version or canonical_bytes(mine) != canonical_bytes(theirs):
                    break
                same += 1
            if same == len(run):
                return 0
            if same == 0 or same < len(stored):
                raise self._explain(e, run) from e
            return self._append_run(stream_id, run[same:])
        return 0 if result.idempotent else len(run)

    def _explain(self, error: ConcurrencyError, events: Sequence[Event]) -> TargetConflict:
        """The first event of ``error``'s stream that the target holds differently, in words."""
        stream_id = error.stream_id
        mine = [event for event in events if event.stream_id == stream_id] or list(events)
        stored = {e.version: e for e in self.store.read_stream(stream_id, mine[0].version, mine[-1].version)}
        for event in mine:
            theirs = stored.get(event.version)
            if theirs is None:
                if event.version > error.actual + 1:
                    return TargetConflict(
                        stream_id,
                        event.version,
                        f"the target stream ends at version {error.actual}, the copy continues at "
                        f"{event.version} (events missing in between)",
                    )
                continue
            if canonical_bytes(theirs) != canonical_bytes(event):
                fields = [k for k, v in event.to_dict().items() if theirs.to_dict()[k] != v]
                return TargetConflict(
                    stream_id,
                    event.version,
                    f"the target holds event {theirs.id} there, which differs in {', '.join(fields)}",
                )
        return TargetConflict(stream_id, mine[0].version, str(error))
