"""The four ports of skyferry and their exact semantics (docs/kernel.md).

Every adapter of a port passes ``tests/conformance``.  Optional abilities are separate
protocols, and an adapter lists the ones it offers in ``features``; the conformance suite
runs the optional cases for declared features only and checks that undeclared ones are
really absent (calling them raises :class:`~skyferry.core.errors.NotSupported`).

All ports are synchronous (``publish_begin`` hands messages over and returns a waiter) and
thread-safe: one instance may be shared by the threads of a process.  Adapters translate
their SDK's errors into :mod:`skyferry.core.errors`, chaining the original, and never
swallow an error from a constructor.  Constructors do no I/O;
``from_url`` parses a URL and may build (but not connect) a client.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol, runtime_checkable

from skyferry.core.errors import ConcurrencyError, ValidationError
from skyferry.core.messages import Event, JSONObject, NewEvent, encode_json

# ---------------------------------------------------------------------------------------
# Event store
# ---------------------------------------------------------------------------------------


class StreamState(enum.Enum):
    """The symbolic values of ``expected_version``."""

    ANY = "any"
    """Append whatever the stream's version (still atomic, still idempotent by id)."""
    NO_STREAM = "no_stream"
    """The stream must not exist yet (same as the integer 0)."""


ANY = StreamState.ANY
NO_STREAM = StreamState.NO_STREAM
ExpectedVersion = int | StreamState

FEATURE_BULK_APPEND = "bulk_append"
FEATURE_TEMPORAL = "temporal"
FEATURE_TRANSACTIONS_ACROSS_STREAMS = "transactions_across_streams"
FEATURE_COUNT = "count"
FEATURE_BULK_IN_FLIGHT = "bulk_in_flight"
FEATURE_COPY_FROM = "copy_from"
FEATURE_ROWS = "rows"
EVENT_STORE_FEATURES = frozenset(
    {
        FEATURE_BULK_APPEND,
        FEATURE_TEMPORAL,
        FEATURE_TRANSACTIONS_ACROSS_STREAMS,
        FEATURE_COUNT,
        FEATURE_BULK_IN_FLIGHT,
        FEATURE_COPY_FROM,
        FEATURE_ROWS,
    }
)
FEATURE_PUBLISH_BEGIN = "publish_begin"
BROKER_FEATURES = frozenset({FEATURE_PUBLISH_BEGIN})


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append wrote: versions ``first_version..last_version`` of the stream.

    ``idempotent`` is true when every event was already stored at those versions and the
    call wrote nothing.
    """

    stream_id: str
    first_version: int
    last_version: int
    idempotent: bool = False


def expected_as_int(expected: ExpectedVersion) -> int | None:
    """``expected_version`` as the version the stream must be at (``None`` for ANY)."""
    if expected is ANY:
        return None
    if expected is NO_STREAM:
        return 0
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
        raise ValueError(f"expected_version must be an int >= 0, NO_STREAM or ANY, not {expected!r}")
    return expected


def resolve_conflict(
    stream_id: str,
    events: Sequence[NewEvent],
    expected: ExpectedVersion,
    actual_version: int,
    stored_versions: Mapping[str, int],
) -> AppendResult:
    """Decide an append that could not be applied as asked: idempotent success or conflict.

    Adapters call this when the version check fails or an event id is already stored.
    ``stored_versions`` maps those of the events' ids that the stream already holds to the
    version each is stored at.  If every event is stored, contiguously, at exactly the
    versions this append would have given it, the append is an idempotent success;
    otherwise a :class:`ConcurrencyError` carrying ``actual_version`` is raised.
    """
    if stored_versions:
        versions = [stored_versions.get(event.id) for event in events]
        first = versions[0]
        want_first = expected_as_int(expected)
        contiguous = first is not None and all(v == first + i for i, v in enumerate(versions))
        if contiguous and first is not None and (want_first is None or want_first + 1 == first):
            return AppendResult(stream_id, first, first + len(events) - 1, idempotent=True)
        clash = next(e for e in events if e.id in stored_versions)
        raise ConcurrencyError(
            stream_id,
            expected.value if isinstance(expected, StreamState) else expected,
            actual_version,
            f"event id {clash.id} is already stored at version {stored_versions[clash.id]}",
        )
    raise ConcurrencyError(stream_id, expected.value if isinstance(expected, StreamState) else expected, actual_version)


@runtime_checkable
class EventStore(Protocol):
    """Append-only, per-stream event storage with one global read order.

    Guarantees every adapter keeps:

    * ``append`` is atomic: all the events are stored, or none.
    * Versions are 1-based and contiguous per stream.
    * ``read_all`` is complete and stable: a reader tailing it while others append never
      skips an event, and reading again from a position yields the same events in the
      same order.  Each stream's events appear in version order.
    * Events are validated (stream id, size limit, JSON objects) before anything is written.
    """

    url: str
    """The store's URL with secrets removed (for reports and logs)."""
    features: frozenset[str]
    """The optional features this adapter offers (subset of ``EVENT_STORE_FEATURES``)."""

    # An adapter whose atomic write has hard caps (DynamoDB: 100 items and 4 MB per
    # transaction; Firestore: 500 writes per commit) sets ``write_limits`` (a
    # :class:`WriteLimits`); a larger write raises ValidationError, writing nothing.  Read
    # them with :func:`write_limits` (absent means no cap); imports and migrations split
    # their writes to fit with :meth:`WriteLimits.split`.

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> AppendResult:
        """Append ``events`` to ``stream_id`` atomically.

        ``expected_version`` is the stream's current version (an int), ``NO_STREAM`` (same
        as 0) or ``ANY``.  A mismatch raises :class:`ConcurrencyError` with the actual
        version.  Re-appending events whose ids are already stored at the same versions
        writes nothing and succeeds (``idempotent=True``): this makes imports and retried
        commands safe.  An id already stored at another version raises
        :class:`ConcurrencyError`.  ``recorded_at`` is set to now for events that carry
        none, and kept for those that do (imports).  Raises ``ValidationError`` or
        ``EventTooLarge`` before writing anything, and ``TransientError`` when the
        outcome is unknown after a retryable failure (retrying the same call is safe).
        """
        ...

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[Event]:
        """The stream's events with ``from_version <= version <= to_version``.

        Ascending by version, or descending when ``backwards`` (then the range is read
        from ``to_version``, or the end, down to ``from_version``), at most ``limit``
        events.  A stream that does not exist reads as an empty list.
        """
        ...

    def stream_version(self, stream_id: str) -> int:
        """The stream's current version: its last event's version, or 0 if it does not exist."""
        ...

    def list_streams(self, prefix: str = "") -> Iterator[str]:
        """The ids of every stream whose id starts with ``prefix``, in ascending order."""
        ...

    def read_all(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Up to ``limit`` events after position ``after`` (from the start when ``None``).

        Events come in the store's global order, each with its ``position`` set; pass the
        last one's position as ``after`` to read on.  An empty list means "caught up for
        now", never "the end": more events may arrive.
        """
        ...

    def last_position(self) -> str | None:
        """The position of the last event ``read_all`` would return now (``None`` if empty)."""
        ...

    def close(self) -> None:
        """Release connections and threads.  The instance is not used afterwards."""
        ...


@runtime_checkable
class BulkAppendEventStore(EventStore, Protocol):
    """Feature ``bulk_append``: the fastest write path, for imports and migrations."""

    def bulk_append(self, events: Sequence[Event]) -> int:
        """Store already-versioned events (from an export) atomically; return how many were new.

        Each event keeps its ``id``, ``stream_id``, ``version`` and both timestamps.  For
        each stream the events must continue it contiguously from its current version, or
        be already stored with the same ids at the same versions (skipped, which makes an
        interrupted import resumable).  Anything else raises :class:`ConcurrencyError`
        naming the stream and version, and nothing of the call is stored.  The new events
        take global positions in the order given (not grouped by stream), so ``read_all``
        of the target follows the export's order: export -> import -> export is
        byte-identical.
        """
        ...


@runtime_checkable
class InFlightBulkEventStore(BulkAppendEventStore, Protocol):
    """Feature ``bulk_in_flight``: ``bulk_append`` of any size, its writes many in flight.

    For a store whose atomic write is small and far away (DynamoDB: 100 items a transaction,
    a round trip each).  The store cuts the call to its :class:`WriteLimits` itself, takes
    the positions of all the parts at once, in the order given, and writes up to
    ``in_flight`` parts side by side, each stream's parts in order.  Each part is atomic,
    the call is not: after a failure each stream is stored up to a point, never with a gap,
    and the positions of the parts not stored are passed over by ``read_all`` (positions
    stay ascending, not dense).  Calling it again stores the rest.
    """

    def bulk_append(self, events: Sequence[Event], in_flight: int = 1) -> int:
        """Store already-versioned events as :meth:`BulkAppendEventStore.bulk_append` does,
        ``in_flight`` writes at a time; return how many were new."""
        ...


@dataclass(frozen=True, slots=True)
class CopiedBatch:
    """What one :meth:`CopyingEventStore.copy_from` stored."""

    events: int
    """How many events were copied (0: the source has none after the position given)."""
    last_position: str | None
    """The source's position of the last event copied (the position given when none)."""
    last_recorded_at: datetime | None
    """The latest ``recorded_at`` of the events copied (``None`` when none), for the lag."""


StoredRow = tuple[Any, str, str, int, str, int, str, str, int, int]
"""An event as the SQL stores keep it: the source's own position (opaque), ``id``,
``stream_id``, ``version``, ``type``, ``schema_version``, ``data`` and ``metadata`` as the
JSON text the store was given, ``occurred_at`` and ``recorded_at`` in microseconds since the
epoch (UTC)."""


@runtime_checkable
class RowSource(Protocol):
    """What :meth:`CopyingEventStore.copy_from` reads: rows in a global order, each event
    already checked against the rules every store enforces (``NewEvent.validate``, a valid
    stream id).  A store with the feature ``rows`` is one; so is an import's checked chunk
    in memory.  It declares the feature ``rows``."""

    url: str
    """Where the rows come from, for messages."""

    def read_rows(self, after: str | None, limit: int) -> tuple[list[StoredRow], str | None]:
        """The (at most) ``limit`` rows after position ``after`` (``None``: from the first),
        and the position of the last (``after`` when none)."""
        ...


@runtime_checkable
class RowsEventStore(EventStore, RowSource, Protocol):
    """Feature ``rows``: ``read_all`` as the rows the store keeps, without decoding them,
    for another store's :meth:`CopyingEventStore.copy_from`."""

    def read_rows(self, after: str | None, limit: int) -> tuple[list[StoredRow], str | None]:
        """The (at most) ``limit`` events ``read_all(after, limit)`` would give, as
        :data:`StoredRow` tuples, and the position of the last (``after`` when none).
        Their JSON was validated when they were appended."""
        ...


@runtime_checkable
class CopyingEventStore(BulkAppendEventStore, Protocol):
    """Feature ``copy_from``: a migration's batch moved as the rows its source keeps,
    without building an event per event.

    The result is what ``bulk_append`` of the same events, read with ``read_all``, would
    store: the same fields, new positions in the source's order.  SQLite and PostgreSQL
    declare it and copy from any :class:`RowSource` (a store with the feature ``rows``, or
    an import's checked chunk); PostgreSQL copies from PostgreSQL server to server (binary
    ``COPY`` out of one, into the other), so its client does not even touch the fields.
    """

    def copies_from(self, source: EventStore | RowSource) -> bool:
        """Whether :meth:`copy_from` can read ``source``."""
        ...

    def copy_from(self, source: EventStore | RowSource, after: str | None, limit: int) -> CopiedBatch | None:
        """Store the next (at most) ``limit`` events of ``source``'s ``read_all(after)``
        atomically, as new events, checked as a batch: each stream of the batch must
        continue the target's stream from its current version.

        Returns ``None``, having written nothing, when the batch needs ``bulk_append``'s
        per-event checks instead: some of its events are at or below the target's head
        (a resumed copy), or a stream does not continue.  The caller then reads the
        batch and writes it with ``bulk_append``, which skips what is stored already and
        names any conflict.  An event id the target stores in another stream raises
        :class:`ConcurrencyError`, nothing of the call stored.
        """
        ...


@runtime_checkable
class TemporalEventStore(EventStore, Protocol):
    """Feature ``temporal``: read a stream as it was at a moment, using an index."""

    def read_stream_as_of(self, stream_id: str, as_of: datetime) -> list[Event]:
        """The stream's events with ``recorded_at <= as_of``, ascending, without a full scan."""
        ...


@runtime_checkable
class MultiStreamEventStore(EventStore, Protocol):
    """Feature ``transactions_across_streams``: one atomic append over several streams."""

    def append_many(self, batch: Sequence[tuple[str, Sequence[NewEvent], ExpectedVersion]]) -> list[AppendResult]:
        """Apply every ``(stream_id, events, expected_version)`` append, or none of them."""
        ...


@runtime_checkable
class CountingEventStore(EventStore, Protocol):
    """Feature ``count``: how many events ``read_all`` has to give, without reading them.

    Long commands use it for a total and an ETA (``export``, ``migrate``, ``verify``,
    ``rebuild``).  A store declares it only when the count costs a query or two, not a scan
    of its log.  It is a total for progress, not a check: a store whose bulk writes leave
    gaps in its positions (``bulk_in_flight``) counts them too.
    """

    def count_after(self, after: str | None = None) -> int:
        """How many events ``read_all`` would return now after position ``after`` (all when ``None``)."""
        ...


def count_after(store: EventStore, after: str | None = None) -> int | None:
    """``store.count_after(after)`` when ``store`` declares ``count``, else ``None`` (no total known)."""
    if FEATURE_COUNT not in features_of(store) or not isinstance(store, CountingEventStore):
        return None
    return store.count_after(after)


# ---------------------------------------------------------------------------------------
# View store
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Doc:
    """A read-model document and its revision (1 after the first write, +1 per write)."""

    value: JSONObject
    revision: int


@dataclass(frozen=True, slots=True)
class ViewChange:
    """One document write in a view commit.

    ``doc=None`` deletes the document.  ``expected_revision`` makes the write conditional:
    ``None`` writes whatever is stored, ``0`` requires the document to be absent, ``n``
    requires it at revision ``n``.
    """

    collection: str
    key: str
    doc: JSONObject | None
    expected_revision: int | None = None


@runtime_checkable
class ViewStore(Protocol):
    """Read models and projection checkpoints.

    Guarantees every adapter keeps:

    * ``commit`` writes all its document changes and the checkpoint atomically, or
      nothing; a failed ``expected_revision`` raises :class:`ConcurrencyError` and
      nothing of the commit is written.  This is what lets a projection apply each event
      exactly once in effect.
    * Collections are independent namespaces: blue/green rebuild writes a new collection
      beside the live one, then the kernel switches an alias and drops the old one.
    """

    url: str
    """The store's URL with secrets removed."""

    def get(self, collection: str, key: str) -> Doc | None:
        """The document at ``key``, or ``None``."""
        ...

    def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Doc]:
        """The documents that exist among ``keys`` (batched where the store can)."""
        ...

    def query(
        self,
        collection: str,
        *,
        prefix: str = "",
        where: tuple[str, str | int | bool] | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """Documents whose key starts with ``prefix`` and, if given, whose top-level field
        ``where[0]`` equals ``where[1]``; ascending by key, at most ``limit``."""
        ...

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: Mapping[str, str]) -> None:
        """Write ``changes`` and set the projection's checkpoint entries, atomically."""
        ...

    def get_checkpoint(self, projection: str, key: str = "$all") -> str | None:
        """The checkpoint value last committed for ``(projection, key)``, or ``None``."""
        ...

    def drop(self, collection: str) -> None:
        """Delete every document of ``collection`` (idempotent)."""
        ...

    def drop_checkpoints(self, projection: str) -> None:
        """Forget every checkpoint of ``projection`` (before a rebuild from the start)."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


# ---------------------------------------------------------------------------------------
# Broker
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One broker message.

    ``id`` is the deduplication id (the event id), ``key`` the ordering key (the stream
    id).  ``body`` is the encoded event (event-carried state transfer) or a reference to
    it (thin notification), see :mod:`skyferry.core.codec`.  ``attributes`` are small string
    headers (type, version, mode).  ``delivery_attempt`` counts from 1 on delivery.
    """

    id: str
    key: str
    body: bytes
    attributes: Mapping[str, str] = field(default_factory=dict)
    delivery_attempt: int = 1


MessageHandler = Callable[[Message], None]


class Subscription(Protocol):
    """A running consumer; ``close`` stops it after in-flight messages settle."""

    def close(self) -> None:
        """Stop receiving; unacknowledged messages are redelivered later."""
        ...


@runtime_checkable
class Broker(Protocol):
    """Publish events; deliver them to consumer groups.

    Guarantees every adapter keeps:

    * ``publish`` deduplicates by message id (within the broker's window) and keeps the
      order of messages with the same key.
    * Each group receives, at least once, every message published after the group was
      first subscribed (or provisioned by the infrastructure).  Within a group, messages with
      the same key are handled one at a time, in publish order; different keys may be
      handled in parallel.  Several ``subscribe`` calls with one group are competing
      consumers: each message goes to one of them.
    * A message is acknowledged only after its handler returns.  A handler that raises
      causes a redelivery after a backoff; after ``max_deliveries`` attempts the message
      goes to the group's dead-letter queue (``dead_letters``) and the key moves on.
    """

    url: str
    """The broker's URL with secrets removed."""

    def publish(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` durably; returns once the broker has accepted all of them.

        Raises ``TransientError`` if the broker is unreachable; publishing the same
        messages again is safe (deduplication by id).
        """
        ...

    def subscribe(self, group: str, handler: MessageHandler, *, max_deliveries: int = 5) -> Subscription:
        """Start a consumer of ``group`` calling ``handler`` from a background thread."""
        ...

    def dead_letters(self, group: str, limit: int = 100) -> list[Message]:
        """Messages dead-lettered for ``group`` (read without removing them)."""
        ...

    def close(self) -> None:
        """Stop every subscription and release connections."""
        ...


@runtime_checkable
class PipelinedBroker(Broker, Protocol):
    """A broker that takes publishes in flight (feature ``publish_begin``)."""

    def publish_begin(self, messages: Sequence[Message]) -> Callable[[], None]:
        """Hand ``messages`` to the broker and return without waiting for it; calling the
        result waits until the broker accepted all of them, raising as ``publish`` would.

        Calls keep their order per key: a key's messages of a later call are delivered after
        those of an earlier one, and once a call fails for a key, that key's messages of the
        calls begun after it fail too (they are never delivered out of order).  Every waiter
        must be called, failed calls' included, for the broker to take that key again.
        """
        ...


def publish_begin(broker: Broker, messages: Sequence[Message]) -> Callable[[], None]:
    """``broker.publish_begin(messages)`` when the broker declares it; else ``publish`` now and a no-op waiter."""
    if FEATURE_PUBLISH_BEGIN in features_of(broker) and isinstance(broker, PipelinedBroker):
        return broker.publish_begin(messages)
    broker.publish(messages)
    return nothing_to_wait_for


def nothing_to_wait_for() -> None:
    """The waiter of a publish that already returned, or that had no messages."""


# ---------------------------------------------------------------------------------------
# Archive
# ---------------------------------------------------------------------------------------


@runtime_checkable
class Archive(Protocol):
    """A place where exports are written: a directory, a bucket, a container.

    Object names are relative paths with ``/`` separators; an empty segment, ``.`` or
    ``..``, a leading ``/`` or a backslash is a ``ValidationError`` on every adapter
    (:func:`check_object_name`).  ``put`` is atomic: a reader
    sees the whole object or none of it, so an interrupted export never leaves a torn
    chunk.
    """

    url: str
    """The archive's URL with secrets removed."""

    def put(self, name: str, data: bytes) -> None:
        """Write the object ``name`` (replacing it) atomically."""
        ...

    def get(self, name: str, limit: int | None = None) -> bytes:
        """The object's bytes; raises :class:`~skyferry.core.errors.ObjectNotFound` if absent.

        With ``limit``, an object of more than ``limit`` bytes raises
        :class:`~skyferry.core.errors.ObjectTooLarge` naming it, having read at most
        ``limit + 1`` bytes: what a reader of untrusted archives bounds its memory with.
        """
        ...

    def exists(self, name: str) -> bool:
        """Whether the object exists."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Names of the objects under ``prefix``, sorted."""
        ...

    def delete(self, name: str) -> None:
        """Delete the object if it exists."""
        ...


def check_object_name(name: str) -> str:
    """Return ``name`` if it is a valid archive object name, else raise ``ValidationError``."""
    if not name or name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValidationError(f"archive object name {name!r} must be a relative path without '.', '..' or '//'")
    return name


EVENT_OVERHEAD_BYTES: Final = 512
"""What an event or a stream costs a store's atomic write beyond the text counted by
:func:`event_bytes` / :func:`stream_bytes`: keys, attribute names, numbers, document names."""


def event_bytes(payload: int, event_type: str, stream_id: str) -> int:
    """The bytes one event adds to an atomic write: ``payload`` (its data and metadata as
    JSON), its type, its stream id twice (the event and its id guard name it), the overhead."""
    return payload + len(event_type.encode()) + 2 * len(stream_id.encode()) + EVENT_OVERHEAD_BYTES


def stream_bytes(stream_id: str) -> int:
    """The bytes each stream a write touches adds to it (its head, or its version check)."""
    return 2 * len(stream_id.encode()) + EVENT_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class WriteLimits:
    """What one atomic write of a store (``append``, ``append_many``, ``bulk_append``) may carry.

    A write of ``n`` events over ``s`` streams fits when ``n * per_event + s * per_stream <=
    units`` (the store's own unit: Firestore's writes of a commit, DynamoDB's items of a
    transaction) and the sum of :func:`event_bytes` and :func:`stream_bytes` is at most
    ``bytes`` (``None``: no such cap).
    """

    units: int | None = None
    per_event: int = 1
    per_stream: int = 0
    bytes: int | None = None

    @property
    def per_append(self) -> int | None:
        """The most events of one stream's ``append`` (``None``: no cap)."""
        return None if self.units is None else (self.units - self.per_stream) // self.per_event

    def check(self, events: int, streams: Sequence[str], size: int, what: str) -> None:
        """Raise :class:`ValidationError` naming ``what`` unless the write fits."""
        if self.units is not None and events * self.per_event + len(streams) * self.per_stream > self.units:
            raise ValidationError(
                f"{what}: {events} events over {len(streams)} stream(s) in one atomic write; this store takes at "
                f"most {self.units} units (each event counting {self.per_event}, each stream {self.per_stream}): "
                "split the write"
            )
        if self.bytes is not None and size > self.bytes:
            raise ValidationError(
                f"{what}: one atomic write of about {size} bytes; this store takes at most {self.bytes}: "
                "split the write"
            )

    def split(self, events: Sequence[Event], fallback: int | None = None) -> Iterator[Sequence[Event]]:
        """``events`` cut, in order, into the longest runs that fit (at least one event each;
        ``fallback`` caps the events of a run where the store sets no cap)."""
        cap = self.units if self.units is not None else fallback
        per_event = self.per_event if self.units is not None else 1
        if not events:
            return
        if cap is None and self.bytes is None:
            yield events
            return
        start = count = size = 0
        streams: set[str] = set()
        for index, event in enumerate(events):
            stream_id = event.stream_id
            fresh = stream_id not in streams
            grow = 0
            if self.bytes is not None:
                grow = self._bytes(event) + (stream_bytes(stream_id) if fresh else 0)
            cost = per_event + (self.per_stream if fresh else 0)
            if index > start and (
                (cap is not None and count + cost > cap) or (self.bytes is not None and size + grow > self.bytes)
            ):
                yield events[start:index]
                if self.bytes is not None and not fresh:
                    grow += stream_bytes(stream_id)
                start, count, size, streams = index, 0, 0, set()
                cost = per_event + self.per_stream
            streams.add(stream_id)
            count += cost
            size += grow
        yield events[start:]

    def pack(self, events: Sequence[Event]) -> list[list[Event]]:
        """``events`` cut into writes that fit, each stream's events together and in order.

        Streams are taken whole, in the order they first appear, each into the current
        write if it fits there, else into a new one; only a stream too large for one write
        is cut, into writes of its own (its last one shared with the streams after it).  So
        writes that may run side by side seldom share a stream, where :meth:`split` of
        interleaved events would cut nearly every stream across two writes.
        """
        runs: dict[str, list[Event]] = {}
        for event in events:
            runs.setdefault(event.stream_id, []).append(event)
        sizes = {id(e): self._bytes(e) for e in events} if self.bytes is not None else {}
        writes: list[list[Event]] = []
        current: list[Event] = []
        units = size = 0
        for stream_id, run in runs.items():
            whole_units = len(run) * self.per_event + self.per_stream
            whole_size = sum(sizes.get(id(e), 0) for e in run) + (stream_bytes(stream_id) if sizes else 0)
            if current and not self._fits(units + whole_units, size + whole_size):
                writes.append(current)
                current, units, size = [], 0, 0
            fresh = True
            for event in run:
                cost = self.per_event + (self.per_stream if fresh else 0)
                grow = sizes.get(id(event), 0) + (stream_bytes(stream_id) if fresh and sizes else 0)
                if current and not self._fits(units + cost, size + grow):
                    writes.append(current)
                    current, units, size, fresh = [], 0, 0, True
                    cost = self.per_event + self.per_stream
                    grow = sizes.get(id(event), 0) + (stream_bytes(stream_id) if sizes else 0)
                current.append(event)
                units, size, fresh = units + cost, size + grow, False
        if current:
            writes.append(current)
        return writes

    def _fits(self, units: int, size: int) -> bool:
        return (self.units is None or units <= self.units) and (self.bytes is None or size <= self.bytes)

    @staticmethod
    def _bytes(event: Event) -> int:
        return event_bytes(len(encode_json(event.data)) + len(encode_json(event.metadata)), event.type, event.stream_id)


def write_limits(store: EventStore) -> WriteLimits:
    """The caps of one atomic write of ``store`` (:class:`WriteLimits`; none when it sets none)."""
    limits = getattr(store, "write_limits", None)
    return limits if isinstance(limits, WriteLimits) else WriteLimits()


def features_of(adapter: Any) -> frozenset[str]:
    """The declared optional features of an adapter (empty when it declares none)."""
    return frozenset(getattr(adapter, "features", frozenset()))
