"""Firestore (native mode) event store and view store: ``firestore://PROJECT/DATABASE``.

URL fields
----------
``firestore://PROJECT/DATABASE?emulator=HOST:PORT``

* ``PROJECT`` (required): the Google Cloud project id.
* ``DATABASE`` (optional, default ``(default)``): the Firestore database id.
* ``emulator=HOST:PORT`` — *for tests and local use*: talk to the Firestore emulator
  over plain gRPC with no credentials.  Without it the client uses Application Default
  Credentials (on Cloud Run: the service's service account).

Data layout (the constants below are imported by ``providers/gcp`` so the indexes and
field settings Pulumi declares are the ones these queries need)
---------------------------------------------------------------------------------------
* ``skyferry_events/{event id}``: one document per event.  The document id *is* the
  event id, so a store-wide unique id is enforced by Firestore itself: events are written
  with ``create`` (a "must not exist" precondition).  Fields: ``stream_id``, ``version``,
  ``position``, ``type``, ``schema_version``, ``data`` and ``metadata`` (canonical JSON
  as bytes, exempt from indexing), ``occurred_at`` and ``recorded_at`` (microseconds
  since the epoch).
* ``skyferry_streams/{encoded stream id}``: the stream head (``stream_id``, ``version``).
* ``skyferry_meta/head``: ``position``, the global position of the last event stored.
* ``skyferry_events/gap-{position}``: a position no event took (``position`` only; see
  "Appends" below); ``skyferry_claims/{block}.{part}``: positions a bulk write took ahead
  for one part (``positions``, ``expires``).
* ``skyferry_views/{hex collection}/skyferry_view_docs/{hex key}``: read models
  (``key``, ``revision``, ``json``, and ``fields``: the top-level scalars, for
  ``query(where=...)``).  Hex document ids sort exactly like the keys' UTF-8 bytes, so a
  key-prefix query is a range on the document name and needs no composite index.
* ``skyferry_checkpoints/{hex projection}.{hex key}``: projection checkpoints.

Appends: optimistic concurrency in one transaction
--------------------------------------------------
``append`` runs one Firestore transaction that reads the stream head, the documents of
the events' ids and the global head; checks the expected version (a mismatch, or an id
already stored, is decided by :func:`~skyferry.core.ports.resolve_conflict`: idempotent
success or ``ConcurrencyError``); then ``create``\\ s the event documents, sets the stream
head and advances the global head.  Server-side transactions are serializable, so two
racing appends at one version cannot both commit; the loser is retried by the SDK and
then sees the conflict.  ``append_many`` is the same transaction over several streams
(feature ``transactions_across_streams``).

``bulk_append`` (imports and migrations) is optimistic instead, one round trip a call: a
single atomic batched write that ``create``\\ s the events and sets the stream heads, on
condition that the global head's update time is still the one its decision rests on.  Every
write of events moves the global head, so while it is unchanged nothing else is.  The
first call reads that state (the heads and the events' ids, one batched read); later calls
that continue the streams the last one left assume what it wrote, without reading.  A
failed condition (another writer, an id stored meanwhile) reads again and retries.

A ``bulk_append`` larger than one commit (feature ``bulk_in_flight``) takes positions
ahead (:mod:`skyferry.adapters.stores._blocks`): per block of up to :data:`BLOCK_EVENTS`
events, one batched write moves the global head past the new ones, on the same
condition, and creates one claim per part in ``skyferry_claims/{block}.{part}``
(``positions``, ``expires``).  The parts (each stream's events together, cut to
:data:`WRITE_LIMITS`) then go ``in_flight`` at a time (at most :data:`PARTS_IN_FLIGHT`),
each a batched write that creates its events, updates each stream head on condition of
the update time it was read or last written with (``create`` for a new stream), and
deletes its claim on condition it exists.  Parts share no document.  A failed condition
reads the heads and ids again: events stored as they are leave their positions as gaps
(``skyferry_events/gap-{position}``: a ``position`` and no stream), anything else is a
``ConcurrencyError``.

``read_all``: complete and stable, and the write-rate ceiling it costs
---------------------------------------------------------------------
Firestore has no global commit sequence that a query could follow: document update
times are not unique and a transaction that commits later may carry an earlier
timestamp than one a reader has already seen, so ordering by time would skip events.
Instead every append takes the next positions from one counter document,
``skyferry_meta/head``, *inside its transaction*.  Because each append reads and writes
that document, appends are serialized on it: the append holding positions ``n+1..m``
commits strictly after the one that wrote ``n``, atomically with its events.  A
strongly-consistent query ``position > after ORDER BY position`` therefore sees a
prefix of the global order, and positions never change (stable).  Parts of a bulk write
in flight commit out of order, so the reader follows the run of positions after
``after`` only while it is contiguous, passing over gaps, and stops at a hole: it is
complete.  At a hole it settles expired claims (a writer that died) once and reads on.
``last_position`` is the last event's position (a query, gaps passed over);
``count_after`` reads the counter, so gaps count too.

The price is a write-rate ceiling: Google documents a sustained rate of about **one
write per second per document** (a soft limit: bursts go higher, and contended
transactions are retried, and eventually fail with ``ABORTED``/contention).  All appends
of a database share the counter, so the store sustains roughly that many *append
transactions* per second (each may carry many events: an import batches hundreds).  That
suits a ledger-sized app; for higher rates use the ``postgresql://`` store (Cloud SQL),
or shard the app by database.

Errors: contention, deadline-exceeded and unavailable are retried with backoff, then
``TransientError``; a missing project, database or credentials is a
``ConfigurationError`` naming it.  Nothing is half-written: every write is one
transaction or one atomic commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Final, Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1 import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from skyferry.adapters import gcp
from skyferry.adapters.gcp import RETRYABLE, call, translate
from skyferry.adapters.stores import _blocks
from skyferry.core.errors import ConcurrencyError, ConfigurationError, TransientError, ValidationError
from skyferry.core.messages import (
    Event,
    NewEvent,
    check_append,
    encode_json,
    from_micros,
    to_micros,
    utc_now,
    validate_stream_id,
)
from skyferry.core.ports import (
    FEATURE_BULK_APPEND,
    FEATURE_BULK_IN_FLIGHT,
    FEATURE_COUNT,
    FEATURE_TEMPORAL,
    FEATURE_TRANSACTIONS_ACROSS_STREAMS,
    AppendResult,
    Doc,
    ExpectedVersion,
    ViewChange,
    WriteLimits,
    event_bytes,
    expected_as_int,
    resolve_conflict,
    stream_bytes,
)

T = TypeVar("T")
# -- what the infrastructure must match ---------------------------------------------------

EVENTS_COLLECTION: Final = "skyferry_events"
STREAMS_COLLECTION: Final = "skyferry_streams"
META_COLLECTION: Final = "skyferry_meta"
HEAD_DOCUMENT: Final = "head"
VIEWS_COLLECTION: Final = "skyferry_views"
VIEW_DOCS_COLLECTION: Final = "skyferry_view_docs"
CHECKPOINTS_COLLECTION: Final = "skyferry_checkpoints"
CLAIMS_COLLECTION: Final = "skyferry_claims"


@dataclass(frozen=True, slots=True)
class CompositeIndex:
    """A composite index: collection id and ``(field, "ASCENDING"|"DESCENDING")`` in order."""

    collection: str
    fields: tuple[tuple[str, str], ...]
    query_scope: str = "COLLECTION"


INDEX_STREAM_FORWARD: Final = CompositeIndex(EVENTS_COLLECTION, (("stream_id", "ASCENDING"), ("version", "ASCENDING")))
"""``read_stream``: ``stream_id == s AND version BETWEEN a AND b ORDER BY version``."""
INDEX_STREAM_BACKWARD: Final = CompositeIndex(
    EVENTS_COLLECTION, (("stream_id", "ASCENDING"), ("version", "DESCENDING"))
)
"""``read_stream(backwards=True)``: the same, ``ORDER BY version DESC``."""
INDEX_STREAM_AS_OF: Final = CompositeIndex(
    EVENTS_COLLECTION, (("stream_id", "ASCENDING"), ("recorded_at", "ASCENDING"))
)
"""``read_stream_as_of``: ``stream_id == s AND recorded_at <= t ORDER BY recorded_at``."""

COMPOSITE_INDEXES: Final = (INDEX_STREAM_FORWARD, INDEX_STREAM_BACKWARD, INDEX_STREAM_AS_OF)
"""Every composite index the adapter's queries need, and no other.  Every other query
(``read_all`` by ``position``, ``list_streams`` by ``stream_id``, checkpoints by
``projection``, view queries on one field ordered by document name) is served by
Firestore's automatic single-field indexes."""

UNINDEXED_FIELDS: Final = (
    (EVENTS_COLLECTION, "data"),
    (EVENTS_COLLECTION, "metadata"),
    (VIEW_DOCS_COLLECTION, "json"),
    (CLAIMS_COLLECTION, "positions"),
)
"""Fields never queried: exempt them from automatic indexing (cheaper writes, and no
1500-byte index-entry truncation on large payloads; a claim's up to 499 positions would
otherwise be as many index entries)."""

IAM_ROLES: Final = ("roles/datastore.user",)
"""What the app's service account needs: read, query, create, update and delete documents
(``datastore.entities.*``) and run transactions; granted on the project with an IAM
condition that limits it to the one database (Firestore has no per-database IAM policy)."""

MAX_WRITES_PER_COMMIT: Final = 500
"""Firestore's documented cap on writes in one transaction or batch; an append writes its
events plus one head per stream plus the global head, all in one commit."""
MAX_COMMIT_BYTES: Final = 4_000_000
"""Bytes of one commit as :func:`~skyferry.core.ports.event_bytes` and ``stream_bytes`` count
them: under the emulator's 4 MiB gRPC message (the service takes 10 MiB per request)."""
WRITE_LIMITS: Final = WriteLimits(units=MAX_WRITES_PER_COMMIT - 1, per_stream=1, bytes=MAX_COMMIT_BYTES)
"""Events plus streams (plus the global head) within 500 writes, and the bytes above."""

POSITION_WIDTH: Final = 16
RPC_TIMEOUT: Final = 30.0
"""Seconds one read may take before it counts as deadline-exceeded.  Reads are sent with the
SDK's own retry off: :func:`~skyferry.adapters.gcp.call` owns retrying, with a bounded
number of attempts, so an outage becomes a ``TransientError`` in seconds, not minutes."""
TRANSACTION_ATTEMPTS: Final = 10
"""Rounds of (up to 3) transaction attempts, with backoff between rounds, before TransientError."""
_MAX_CHAR: Final = "\U0010ffff"
_KNOWN_STREAMS: Final = 10_000
"""Stream heads a ``bulk_append`` remembers from the calls before (beyond, only its own call's)."""
BLOCK_EVENTS: Final = 10_000
"""Events whose positions one reservation takes (``bulk_append`` in flight; fewer when their
parts would be more than ``PARTS_PER_IN_FLIGHT`` per write in flight)."""
PARTS_IN_FLIGHT: Final = 4
"""The most parts of a bulk write in flight, whatever ``in_flight`` asks: each part is up to
499 writes, and the events' ``position`` index grows at one end, which Firestore serves at
a bounded rate (its guidance: about 500 writes a second to a collection with a
sequentially increasing indexed field).  Measured on the emulator at 20 ms: 4 in flight
gave 3,400-3,800 events/s, 32 gave 2,500-3,200."""
_GAP_PREFIX: Final = "gap-"
"""Document ids of gaps in the events collection (event ids are UUIDs: they never start so)."""


def parse_url(url: str) -> tuple[str, str, str | None]:
    """``(project, database, emulator host:port or None)`` of a ``firestore://`` URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "firestore":
        raise ConfigurationError(f"not a firestore:// URL: {url!r}")
    project = unquote(parts.netloc)
    if not project:
        raise ConfigurationError(f"{url!r}: the Google Cloud project is missing (firestore://PROJECT/DATABASE)")
    database = unquote(parts.path.strip("/")) or "(default)"
    if "/" in database:
        raise ConfigurationError(f"{url!r}: the database id must be one path segment")
    query = parse_qs(parts.query)
    unknown = set(query) - {"emulator"}
    if unknown:
        raise ConfigurationError(f"{url!r}: unknown parameter(s) {sorted(unknown)}; known: emulator")
    emulator = query.get("emulator", [None])[0]
    return project, database, emulator


def make_client(project: str, database: str, emulator: str | None) -> firestore.Client:
    """A Firestore client (no I/O yet); pointed at the emulator when ``emulator`` is set."""
    try:
        if emulator is None:
            return firestore.Client(project=project, database=database)
        client = firestore.Client(project=project, database=database, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    except Exception as e:
        raise translate(e, f"Firestore database projects/{project}/databases/{database}") from e
    if not hasattr(client, "_emulator_host"):
        raise ConfigurationError("this google-cloud-firestore version cannot be pointed at an emulator")
    # The SDK reads FIRESTORE_EMULATOR_HOST when constructed; setting the same attribute
    # keeps the process environment untouched (no global side effect).
    client._emulator_host = emulator
    return client


class _FirestoreBase:
    """Client handling shared by the event store and the view store."""

    def __init__(self, url: str, client: firestore.Client | None = None) -> None:
        self._project, self._database, self._emulator = parse_url(url)
        self.url = url
        self._client = client
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._what = f"Firestore database projects/{self._project}/databases/{self._database}"

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Parse ``url`` (see the module docstring); the client is built on first use."""
        return cls(url)

    @property
    def client(self) -> firestore.Client:
        """The Firestore client (built lazily, once)."""
        with self._lock:
            if self._client is None:
                self._client = make_client(self._project, self._database, self._emulator)
            return self._client

    def _call(self, fn: Callable[[], T]) -> T:
        return call(fn, self._what)

    def _transact(self, body: Callable[[Any], T]) -> T:
        """Run ``body(transaction)`` in a read-write transaction, retried on contention.

        The transactions of one instance run one at a time: they all touch the global head
        document anyway (the event store) so queuing them in-process, rather than letting
        them abort each other on the server, costs no throughput and avoids contention.
        """
        with self._write_lock:
            return self._transact_now(body)

    def _transact_now(self, body: Callable[[Any], T]) -> T:

        @firestore.transactional
        def run(transaction: Any) -> T:
            result: T = body(transaction)
            return result

        def once() -> T:
            try:
                outcome: T = run(self.client.transaction(max_attempts=3))
                return outcome
            except ValueError as e:
                # The SDK's way of saying "still contended after max_attempts": hand the
                # Aborted to call(), which backs off with jitter before the next round.
                if isinstance(e.__cause__, gexc.Aborted):
                    raise e.__cause__ from e
                if isinstance(e.__context__, RETRYABLE):
                    raise e.__context__ from e
                raise
            except Exception as e:
                # A failed commit makes the SDK roll back; if the rollback fails too, its
                # error hides the retryable one (the outcome is unknown: retry, idempotently).
                if not isinstance(e, RETRYABLE) and isinstance(e.__context__, RETRYABLE):
                    raise e.__context__ from e
                raise

        return call(once, self._what, attempts=TRANSACTION_ATTEMPTS)

    def close(self) -> None:
        """Close the client's channel."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]


# -- event store ----------------------------------------------------------------------------


def stream_doc_id(stream_id: str) -> str:
    """The document id of a stream head (``/`` is a path separator in Firestore)."""
    return "s:" + stream_id.replace("/", "%2F")


def format_position(position: int) -> str:
    """The opaque position string of global position ``position`` (sorts like the number)."""
    return str(position).zfill(POSITION_WIDTH)


def parse_position(text: str) -> int:
    """Inverse of :func:`format_position`; ``ValidationError`` for a foreign position."""
    if not text.isdigit():
        raise ValidationError(f"{text!r} is not a position of a firestore:// store")
    return int(text)


def _event_fields(event: Event, position: int) -> dict[str, Any]:
    return {
        "stream_id": event.stream_id,
        "version": event.version,
        "position": position,
        "type": event.type,
        "schema_version": event.schema_version,
        "data": encode_json(event.data),
        "metadata": encode_json(event.metadata),
        "occurred_at": to_micros(event.occurred_at),
        "recorded_at": to_micros(event.recorded_at),
    }


def _event_of(fields: Mapping[str, Any], event_id: str) -> Event:
    return Event(
        id=event_id,
        stream_id=fields["stream_id"],
        version=int(fields["version"]),
        type=fields["type"],
        schema_version=int(fields["schema_version"]),
        data=orjson.loads(fields["data"]),
        metadata=orjson.loads(fields["metadata"]),
        occurred_at=from_micros(int(fields["occurred_at"])),
        recorded_at=from_micros(int(fields["recorded_at"])),
        position=format_position(int(fields["position"])),
    )


@dataclass
class _BulkState:
    """What a write decides on: the global head (its update time, ``None`` before the first
    event, and position), stream heads, and which of its ids are stored where."""

    update_time: Any
    head: int
    versions: dict[str, int]
    stored: dict[str, tuple[str, int]]
    times: dict[str, Any] = field(default_factory=dict)
    """The update time of each stream head in ``versions`` that exists."""

    def continued_by(self, by_stream: Mapping[str, list[Event]]) -> bool:
        """Whether every run of ``by_stream`` continues its stream as this state has it (a
        stream not in it must be new), so that no stored event needs to be looked up."""
        for stream_id, run in by_stream.items():
            version = self.versions.get(stream_id, 0)
            if version and stream_id not in self.times:
                return False
            if [e.version for e in run] != list(range(version + 1, version + 1 + len(run))):
                return False
        return True


@dataclass
class _StreamPlan:
    """What one stream contributes to a transaction: events to create, or a result."""

    stream_id: str
    new: list[Event]
    result: AppendResult | None = None


class FirestoreEventStore(_FirestoreBase):
    """Event store on Firestore; features ``bulk_append``, ``temporal``,
    ``transactions_across_streams`` (see the module docstring for the design)."""

    def __init__(self, url: str, client: firestore.Client | None = None) -> None:
        super().__init__(url, client)
        self._bulk_known: _BulkState | None = None
        """What this instance's last ``bulk_append`` left (see :meth:`bulk_append`)."""
        self._parts = _blocks.PartPool("skyferry-firestore")
        """The threads of ``bulk_append``'s parts in flight."""

    @classmethod
    def from_url(cls, url: str, *, existing: bool = False) -> Self:
        """Parse ``url``; the client is built on first use.  The adapter never creates a
        database, so ``existing`` changes nothing: the service answers a read of a missing
        one with NotFound, a ``ConfigurationError`` naming it (the emulator has every database)."""
        return cls(url)

    @property
    def identity(self) -> tuple[str, ...]:
        """What tells this store from another: project, database, emulator."""
        return ("firestore", self._emulator or "", self._project, self._database)

    features: frozenset[str] = frozenset(
        {
            FEATURE_BULK_APPEND,
            FEATURE_BULK_IN_FLIGHT,
            FEATURE_COUNT,
            FEATURE_TEMPORAL,
            FEATURE_TRANSACTIONS_ACROSS_STREAMS,
        }
    )
    write_limits: WriteLimits = WRITE_LIMITS
    """One stream head per stream and the global head share the commit with the events."""

    @staticmethod
    def _check_writes(events: Sequence[tuple[str, NewEvent]]) -> None:
        """Refuse a commit over :data:`WRITE_LIMITS` before anything is sent."""
        streams = list(dict.fromkeys(stream_id for stream_id, _ in events))
        size = sum(event_bytes(event.encoded_size(), event.type, stream_id) for stream_id, event in events) + sum(
            stream_bytes(stream_id) for stream_id in streams
        )
        WRITE_LIMITS.check(len(events), streams, size, f"Firestore commit of stream {streams[0]!r}")

    # -- references ------------------------------------------------------------------------

    def _events(self) -> Any:
        return self.client.collection(EVENTS_COLLECTION)

    def _stream_ref(self, stream_id: str) -> Any:
        return self.client.collection(STREAMS_COLLECTION).document(stream_doc_id(stream_id))

    def _head_ref(self) -> Any:
        return self.client.collection(META_COLLECTION).document(HEAD_DOCUMENT)

    def _claim_ref(self, claim: _blocks.Claim) -> Any:
        return self.client.collection(CLAIMS_COLLECTION).document(claim.name)

    def _gap_ref(self, position: int) -> Any:
        return self._events().document(_GAP_PREFIX + format_position(position))

    # -- the one write path ------------------------------------------------------------------

    def _read_state(self, reader: Any, stream_ids: Sequence[str], event_ids: Sequence[str]) -> _BulkState:
        """One batched read, through ``reader`` (a transaction, which locks what it reads until
        its commit, or the client): the global head, the streams' heads, the stored ids."""
        head_ref = self._head_ref()
        refs = [head_ref, *(self._stream_ref(s) for s in stream_ids)]
        refs += [self._events().document(i) for i in event_ids]
        state = _BulkState(None, 0, dict.fromkeys(stream_ids, 0), {})
        for snap in reader.get_all(refs, retry=None, timeout=RPC_TIMEOUT):
            if not snap.exists:
                continue
            parent = snap.reference.parent.id
            if parent == EVENTS_COLLECTION:
                state.stored[snap.id] = (snap.get("stream_id"), int(snap.get("version")))
            elif parent == STREAMS_COLLECTION:
                state.versions[snap.get("stream_id")] = int(snap.get("version"))
                state.times[snap.get("stream_id")] = snap.update_time
            elif snap.reference.path == head_ref.path:
                state.update_time, state.head = snap.update_time, int(snap.get("position"))
        return state

    def _write(self, transaction: Any, plans: Sequence[_StreamPlan], head: int) -> list[AppendResult]:
        """In ``transaction``: create the planned events (global positions plan by plan), move
        stream heads and the global head."""
        results: list[AppendResult] = []
        position = head
        for event in (event for plan in plans for event in plan.new):
            position += 1
            transaction.create(self._events().document(event.id), _event_fields(event, position))
        for plan in plans:
            if plan.result is not None:
                results.append(plan.result)
                continue
            last = plan.new[-1]
            transaction.set(self._stream_ref(plan.stream_id), {"stream_id": plan.stream_id, "version": last.version})
            results.append(AppendResult(plan.stream_id, plan.new[0].version, last.version))
        if position != head:
            transaction.set(self._head_ref(), {"position": position})
        return results

    def _plan_append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion,
        actual: int,
        stored: Mapping[str, tuple[str, int]],
    ) -> _StreamPlan:
        want = expected_as_int(expected_version)
        known = {e.id: stored[e.id] for e in events if e.id in stored}
        if known or (want is not None and want != actual):
            foreign = [i for i, (s, _) in known.items() if s != stream_id]
            if foreign:
                raise ConcurrencyError(
                    stream_id,
                    expected_version if isinstance(expected_version, int) else expected_version.value,
                    actual,
                    f"event id {foreign[0]} is already stored in stream {known[foreign[0]][0]!r}",
                )
            result = resolve_conflict(
                stream_id, events, expected_version, actual, {i: v for i, (_, v) in known.items()}
            )
            return _StreamPlan(stream_id, [], result)
        now = utc_now()
        new = [
            Event(
                id=e.id,
                stream_id=stream_id,
                version=actual + n,
                type=e.type,
                schema_version=e.schema_version,
                data=e.data,
                metadata=e.metadata,
                occurred_at=e.occurred_at,
                recorded_at=e.recorded_at or now,
            )
            for n, e in enumerate(events, start=1)
        ]
        return _StreamPlan(stream_id, new)

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> AppendResult:
        """Append atomically with an optimistic-concurrency check (see ``EventStore.append``)."""
        return self.append_many([(stream_id, events, expected_version)])[0]

    def append_many(self, batch: Sequence[tuple[str, Sequence[NewEvent], ExpectedVersion]]) -> list[AppendResult]:
        """Apply every ``(stream_id, events, expected_version)`` append in one transaction, or none."""
        streams = [stream_id for stream_id, _, _ in batch]
        if len(set(streams)) != len(streams):
            raise ValidationError("append_many: a stream appears twice in one batch")
        ids: list[str] = []
        for stream_id, events, expected in batch:
            check_append(stream_id, list(events))
            expected_as_int(expected)
            ids += [e.id for e in events]
        if len(set(ids)) != len(ids):
            raise ValidationError("append_many: an event id appears twice in one batch")
        if ids:
            self._check_writes([(stream_id, e) for stream_id, events, _ in batch for e in events])

        def body(transaction: Any) -> list[AppendResult]:
            state = self._read_state(transaction, streams, ids)
            plans = [self._plan_append(s, e, v, state.versions[s], state.stored) for s, e, v in batch]
            return self._write(transaction, plans, state.head)

        return self._transact(body)

    def bulk_append(self, events: Sequence[Event], in_flight: int = 1) -> int:
        """Store already-versioned events; already-stored ones are skipped.

        A call that fits one commit (:data:`WRITE_LIMITS`) is one atomic batched write,
        optimistic, without a transaction: the stream heads, the events' ids and the global
        head are read in one batched read, and the write is on condition that the global
        head is still as read (every write of events moves it, so nothing the decision rests
        on has changed) and that every event id is new.  A failed condition reads again and
        retries.  What the write leaves is remembered: the next call that continues those
        streams (an import writes part after part) skips the read, one round trip in all.
        A larger call takes the positions of up to :data:`BLOCK_EVENTS` events ahead and
        writes their parts ``in_flight`` at a time (see the module docstring).
        """
        _blocks.check_events(events)
        by_stream = _blocks.by_stream(events)
        if not by_stream:
            return 0
        with self._write_lock:
            in_flight = min(in_flight, PARTS_IN_FLIGHT)
            most_parts = min(MAX_WRITES_PER_COMMIT - 1, _blocks.PARTS_PER_IN_FLIGHT * in_flight)
            blocks = list(_blocks.blocks(events, WRITE_LIMITS, BLOCK_EVENTS, most_parts))
            if len(blocks) > 1 or len(blocks[0][1]) > 1:
                return sum(self._bulk_block(block, parts, in_flight) for block, parts in blocks)
            self._check_writes([(event.stream_id, event.to_new()) for event in events])
            for attempt in range(TRANSACTION_ATTEMPTS):
                state, read = self._bulk_known, False
                if state is None or not state.continued_by(by_stream):
                    state, read = self._bulk_state(by_stream, [event.id for event in events]), True
                written = self._bulk_write(events, by_stream, state)
                if written is not None:
                    return written
                if read and attempt + 1 < TRANSACTION_ATTEMPTS:  # lost a race: back off
                    time.sleep(gcp.backoff_delay(attempt))
        raise TransientError(
            f"{self._what}: a bulk write of {len(events)} events lost the race for the global head "
            f"{TRANSACTION_ATTEMPTS} times; retry it"
        )

    def _bulk_state(self, by_stream: Mapping[str, list[Event]], event_ids: list[str]) -> _BulkState:
        """What ``bulk_append`` decides on, read now (outside any transaction)."""
        return self._call(lambda: self._read_state(self.client, list(by_stream), event_ids))

    @staticmethod
    def _decide(by_stream: Mapping[str, list[Event]], state: _BulkState) -> tuple[set[str], dict[str, int]]:
        """The ids of the events ``state`` says are new, and each known stream's version after
        them (:func:`_blocks.decide`)."""
        new_ids, decided = _blocks.decide(by_stream, state.versions, state.stored)
        after = dict(state.versions) if len(state.versions) < _KNOWN_STREAMS else {}
        after.update(decided)
        return new_ids, after

    @staticmethod
    def _commit(batch: Any) -> list[Any] | None:
        """Commit ``batch``; its write results, or ``None`` when a precondition failed."""
        try:
            return list(batch.commit(retry=None, timeout=RPC_TIMEOUT))
        except (gexc.FailedPrecondition, gexc.Conflict, gexc.NotFound):  # another writer, or a claim settled
            return None

    def _bulk_write(
        self, events: Sequence[Event], by_stream: Mapping[str, list[Event]], state: _BulkState
    ) -> int | None:
        """Write what ``state`` says is new; ``None`` when the global head or an id has changed
        since ``state`` (nothing written).  ``ConcurrencyError`` for an event that neither
        continues its stream nor is stored as it is."""
        self._bulk_known = None
        new_ids, after = self._decide(by_stream, state)
        times = dict(state.times) if len(state.times) < _KNOWN_STREAMS else {}
        if not new_ids:
            if state.update_time is not None:
                self._bulk_known = _BulkState(state.update_time, state.head, after, {}, times)
            return 0
        batch = self.client.batch()
        position = state.head
        for event in events:
            if event.id in new_ids:
                position += 1
                batch.create(self._events().document(event.id), _event_fields(event, position))
        moved = [stream_id for stream_id in by_stream if after[stream_id] != state.versions.get(stream_id, 0)]
        for stream_id in moved:
            fields = {"stream_id": stream_id, "version": after[stream_id]}
            if state.versions.get(stream_id, 0):
                batch.set(self._stream_ref(stream_id), fields)
            else:  # a new stream: its head must not exist yet
                batch.create(self._stream_ref(stream_id), fields)
        if state.update_time is None:  # the first events of the store
            batch.create(self._head_ref(), {"position": position})
        else:
            batch.update(
                self._head_ref(),
                {"position": position},
                option=self.client.write_option(last_update_time=state.update_time),
            )
        results = self._call(partial(self._commit, batch))
        if results is None:
            return None
        for stream_id, result in zip(moved, results[len(new_ids) :], strict=False):
            times[stream_id] = result.update_time
        self._bulk_known = _BulkState(results[-1].update_time, position, after, {}, times)
        return len(new_ids)

    # -- blocks: positions taken ahead, parts in flight --------------------------------------

    def _bulk_block(self, events: Sequence[Event], parts: list[list[Event]], in_flight: int) -> int:
        """The new ones of ``events``: their positions taken in one write, then their parts
        ``in_flight`` at a time (see :mod:`skyferry.adapters.stores._blocks`)."""
        by_stream = _blocks.by_stream(events)
        for attempt in range(TRANSACTION_ATTEMPTS):
            state, read = self._bulk_known, False
            if state is None or not state.continued_by(by_stream):
                state, read = self._bulk_state(by_stream, [event.id for event in events]), True
            self._bulk_known = None
            new_ids, after = self._decide(by_stream, state)
            new = [event for event in events if event.id in new_ids]
            if not new:
                return 0
            if len(new) < len(events):  # some are stored already: cut what is left
                parts = WRITE_LIMITS.pack(new)
            reserved = self._reserve(new, parts, state)
            if reserved is not None:
                break
            if read and attempt + 1 < TRANSACTION_ATTEMPTS:  # lost a race for the global head: back off
                time.sleep(gcp.backoff_delay(attempt))
        else:
            raise TransientError(
                f"{self._what}: taking the positions of {len(events)} events lost the race for the global head "
                f"{TRANSACTION_ATTEMPTS} times; retry it"
            )
        claims, head_time = reserved
        heads = {stream_id: (state.versions.get(stream_id, 0), state.times.get(stream_id)) for stream_id in by_stream}
        written = self._parts.run(parts, claims, in_flight, partial(self._write_part, heads=heads), self._settle)
        times = dict(state.times) if len(state.times) < _KNOWN_STREAMS else {}
        times.update({stream_id: at for stream_id, (_, at) in heads.items() if at is not None})
        self._bulk_known = _BulkState(head_time, state.head + len(new), after, {}, times)
        return written

    def _reserve(
        self, new: list[Event], parts: list[list[Event]], state: _BulkState
    ) -> tuple[list[_blocks.Claim], Any] | None:
        """Move the global head past ``new`` and create one claim per part, in one write on
        condition the head is as ``state`` has it: the claims and the head's new update time,
        or ``None`` when it moved."""
        position = {event.id: state.head + 1 + i for i, event in enumerate(new)}
        claims = _blocks.claims(state.head + 1, parts, position)
        batch = self.client.batch()
        head = {"position": state.head + len(new)}
        if state.update_time is None:
            batch.create(self._head_ref(), head)
        else:
            batch.update(self._head_ref(), head, option=self.client.write_option(last_update_time=state.update_time))
        for claim in claims:
            batch.create(self._claim_ref(claim), {"positions": list(claim.positions), "expires": claim.expires})
        results = self._call(partial(self._commit, batch))
        return None if results is None else (claims, results[0].update_time)

    def _write_part(self, part: Sequence[Event], claim: _blocks.Claim, heads: dict[str, tuple[int, Any]]) -> int:
        """One part at its reserved positions, in one batched write that deletes its claim.

        Each stream head is written on condition of its update time in ``heads`` (or that it
        does not exist), which this part then updates for the stream's next part.  A failed
        condition reads the heads and ids again: events stored as they are leave their
        positions as gaps, anything else is a ``ConcurrencyError``; a claim already gone
        means a reader settled it after it expired (:class:`TransientError`: run again)."""
        position = dict(zip((event.id for event in part), claim.positions, strict=True))
        pending = list(part)
        gaps: list[int] = []
        for attempt in range(TRANSACTION_ATTEMPTS):
            runs = _blocks.by_stream(pending)
            batch = self.client.batch()
            for event in pending:
                batch.create(self._events().document(event.id), _event_fields(event, position[event.id]))
            for stream_id, run in runs.items():
                fields = {"stream_id": stream_id, "version": run[-1].version}
                at = heads[stream_id][1]
                if at is None:
                    batch.create(self._stream_ref(stream_id), fields)
                else:
                    batch.update(
                        self._stream_ref(stream_id), fields, option=self.client.write_option(last_update_time=at)
                    )
            for gap in gaps:
                batch.set(self._gap_ref(gap), {"position": gap})
            batch.delete(self._claim_ref(claim), option=self.client.write_option(exists=True))
            results = self._call(partial(self._commit, batch))
            if results is not None:
                for (stream_id, run), result in zip(runs.items(), results[len(pending) :], strict=False):
                    heads[stream_id] = (run[-1].version, result.update_time)
                return len(pending)
            state = self._bulk_state(runs, [event.id for event in pending])
            new_ids, _ = self._decide(runs, state)
            if not self._call(lambda: self._claim_ref(claim).get(retry=None, timeout=RPC_TIMEOUT).exists):
                if not new_ids:
                    return 0  # stored, claim deleted: by this very write, whose reply was lost
                raise TransientError(
                    f"stream {part[0].stream_id!r}: the positions taken for this write expired before it was "
                    "stored and a reader passed over them; run the command again"
                )
            gaps += [position[event.id] for event in pending if event.id not in new_ids]
            pending = [event for event in pending if event.id in new_ids]
            for stream_id in runs:
                heads[stream_id] = (state.versions.get(stream_id, 0), state.times.get(stream_id))
            if attempt + 1 < TRANSACTION_ATTEMPTS:
                time.sleep(gcp.backoff_delay(attempt))
        raise TransientError(f"stream {part[0].stream_id!r}: the write kept failing its conditions; retry it")

    def _settle(self, claim: _blocks.Claim) -> bool:
        """Make ``claim``'s positions gaps and delete it, in one write conditioned on the
        claim; ``False`` when its part was stored first (or it was settled already)."""
        batch = self.client.batch()
        for gap in claim.positions:
            batch.set(self._gap_ref(gap), {"position": gap})
        batch.delete(self._claim_ref(claim), option=self.client.write_option(exists=True))
        return self._call(partial(self._commit, batch)) is not None

    def _settle_expired(self) -> bool:
        """Settle every expired claim (a writer that died mid-block); whether any was."""

        def listed() -> list[_blocks.Claim]:
            snaps = self._call(
                lambda: list(self.client.collection(CLAIMS_COLLECTION).stream(retry=None, timeout=RPC_TIMEOUT))
            )
            return [_blocks.Claim(snap.id, tuple(snap.get("positions")), int(snap.get("expires"))) for snap in snaps]

        return _blocks.settle_expired(listed, self._settle, self._what)

    def _query_events(self, query: Any) -> list[Event]:
        return self._call(
            lambda: [_event_of(snap.to_dict(), snap.id) for snap in query.stream(retry=None, timeout=RPC_TIMEOUT)]
        )

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[Event]:
        """The stream's events in ``[from_version, to_version]`` (index ``INDEX_STREAM_*``)."""
        validate_stream_id(stream_id)
        if limit is not None and limit <= 0:
            return []
        query = self._events().where(filter=FieldFilter("stream_id", "==", stream_id))
        if from_version > 1:
            query = query.where(filter=FieldFilter("version", ">=", from_version))
        if to_version is not None:
            if to_version < max(from_version, 1):
                return []
            query = query.where(filter=FieldFilter("version", "<=", to_version))
        direction = firestore.Query.DESCENDING if backwards else firestore.Query.ASCENDING
        query = query.order_by("version", direction=direction)
        if limit is not None:
            query = query.limit(limit)
        return self._query_events(query)

    def read_stream_as_of(self, stream_id: str, as_of: datetime) -> list[Event]:
        """The stream's events recorded at or before ``as_of`` (index ``INDEX_STREAM_AS_OF``)."""
        validate_stream_id(stream_id)
        query = (
            self._events()
            .where(filter=FieldFilter("stream_id", "==", stream_id))
            .where(filter=FieldFilter("recorded_at", "<=", to_micros(as_of)))
            .order_by("recorded_at")
        )
        return sorted(self._query_events(query), key=lambda e: e.version)

    def stream_version(self, stream_id: str) -> int:
        """The stream's last version, 0 when it does not exist."""
        validate_stream_id(stream_id)
        snap = self._call(lambda: self._stream_ref(stream_id).get(retry=None, timeout=RPC_TIMEOUT))
        return int(snap.get("version")) if snap.exists else 0

    def list_streams(self, prefix: str = "") -> Iterator[str]:
        """Stream ids starting with ``prefix``, ascending (single-field index on ``stream_id``)."""
        query: Any = self.client.collection(STREAMS_COLLECTION)
        if prefix:
            query = query.where(filter=FieldFilter("stream_id", ">=", prefix)).where(
                filter=FieldFilter("stream_id", "<", prefix + _MAX_CHAR)
            )
        query = query.order_by("stream_id")
        names = self._call(lambda: [snap.get("stream_id") for snap in query.stream(retry=None, timeout=RPC_TIMEOUT)])
        return iter(names)

    def read_all(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Events after ``after`` in global position order (complete and stable, see above).

        The run of positions after ``after`` is followed while it is contiguous, gaps passed
        over; at a hole (a part of a bulk write still in flight) it stops, after settling
        expired claims once (a writer that died) and reading on."""
        if limit <= 0:
            return []
        last = 0 if after is None else parse_position(after)
        events: list[Event] = []
        settled = False
        while len(events) < limit:
            want = limit - len(events)
            query = self._events().where(filter=FieldFilter("position", ">", last)).order_by("position").limit(want)
            snaps = self._call(partial(self._snapshots, query))
            hole = False
            for snap in snaps:
                fields = snap.to_dict()
                if int(fields["position"]) != last + 1:
                    hole = True
                    break
                last += 1
                if not snap.id.startswith(_GAP_PREFIX):
                    events.append(_event_of(fields, snap.id))
            if hole:
                if settled or not self._settle_expired():
                    break
                settled = True
            elif len(snaps) < want:
                break
        return events

    @staticmethod
    def _snapshots(query: Any) -> list[Any]:
        return list(query.stream(retry=None, timeout=RPC_TIMEOUT))

    def count_after(self, after: str | None = None) -> int:
        """How many positions follow ``after`` (feature ``count``: one read of the head; gaps count too)."""
        start = 0 if after is None else parse_position(after)
        snap = self._call(lambda: self._head_ref().get(retry=None, timeout=RPC_TIMEOUT))
        return max((int(snap.get("position")) if snap.exists else 0) - start, 0)

    def last_position(self) -> str | None:
        """The position of the last event (gaps passed over), ``None`` when empty.

        One document read while the last position holds an event (readiness probes call this
        every few seconds); gaps at the end are read past in pages of 100."""
        query = self._events().select(["position"]).order_by("position", direction=firestore.Query.DESCENDING)
        size = 1
        while snaps := self._call(partial(self._snapshots, query.limit(size))):
            for snap in snaps:
                if not snap.id.startswith(_GAP_PREFIX):
                    return format_position(int(snap.get("position")))
            query, size = query.start_after(snaps[-1]), 100
        return None

    def close(self) -> None:
        """Stop the threads of ``bulk_append``'s parts in flight and close the client's channel."""
        self._parts.close()
        super().close()


# -- view store -------------------------------------------------------------------------------


def hex_id(text: str) -> str:
    """A document id for any string that sorts like its UTF-8 bytes (``x`` + hex)."""
    return "x" + text.encode().hex()


def _scalars(value: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level fields a ``query(where=...)`` can match (str, int, bool, float)."""
    return {k: v for k, v in value.items() if isinstance(v, str | int | float | bool)}


class FirestoreViewStore(_FirestoreBase):
    """View store on Firestore: documents with revisions; checkpoints committed in the same
    transaction as the view changes."""

    def _docs(self, collection: str) -> Any:
        return self.client.collection(VIEWS_COLLECTION).document(hex_id(collection)).collection(VIEW_DOCS_COLLECTION)

    def _checkpoint_ref(self, projection: str, key: str) -> Any:
        return self.client.collection(CHECKPOINTS_COLLECTION).document(f"{hex_id(projection)}.{hex_id(key)}")

    @staticmethod
    def _doc_of(fields: Mapping[str, Any]) -> Doc:
        return Doc(orjson.loads(fields["json"]), int(fields["revision"]))

    def get(self, collection: str, key: str) -> Doc | None:
        """The document at ``key``, or ``None``."""
        snap = self._call(lambda: self._docs(collection).document(hex_id(key)).get(retry=None, timeout=RPC_TIMEOUT))
        return self._doc_of(snap.to_dict() or {}) if snap.exists else None

    def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Doc]:
        """The documents that exist among ``keys`` (one batched read)."""
        if not keys:
            return {}
        refs = [self._docs(collection).document(hex_id(k)) for k in dict.fromkeys(keys)]
        snaps = self._call(lambda: list(self.client.get_all(refs, retry=None, timeout=RPC_TIMEOUT)))
        return {s.get("key"): self._doc_of(s.to_dict() or {}) for s in snaps if s.exists}

    def query(
        self,
        collection: str,
        *,
        prefix: str = "",
        where: tuple[str, str | int | bool] | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """By key prefix (a document-name range) and optional field equality, ascending by key.

        ``where`` uses the automatic single-field index of ``fields.<name>`` merged with the
        document-name order, so no composite index is needed for any field.
        """
        if limit is not None and limit <= 0:
            return []
        docs = self._docs(collection)
        query: Any = docs
        if where is not None:
            name, wanted = where
            query = query.where(filter=FieldFilter(FieldPath("fields", name).to_api_repr(), "==", wanted))
        if prefix:
            start = hex_id(prefix)
            query = query.where(filter=FieldFilter("__name__", ">=", docs.document(start))).where(
                filter=FieldFilter("__name__", "<", docs.document(start + "~"))
            )
        query = query.order_by("__name__")
        if limit is not None:
            query = query.limit(limit)
        snaps = self._call(lambda: list(query.stream(retry=None, timeout=RPC_TIMEOUT)))
        result: list[tuple[str, Doc]] = []
        for snap in snaps:
            fields = snap.to_dict()
            if where is not None:
                found = fields["fields"].get(where[0])
                if isinstance(found, bool) != isinstance(where[1], bool):
                    continue
            result.append((fields["key"], self._doc_of(fields)))
        return result

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: Mapping[str, str]) -> None:
        """Apply every change and checkpoint entry in one transaction, or none (checkpoint
        entries alone: one atomic batched write, as there is nothing to read)."""
        slots = list(dict.fromkeys((c.collection, c.key) for c in changes))
        if not slots and not checkpoint:
            return
        if not slots:
            batch = self.client.batch()
            for key, value in checkpoint.items():
                batch.set(self._checkpoint_ref(projection, key), {"projection": projection, "key": key, "value": value})
            self._call(lambda: batch.commit(retry=None, timeout=RPC_TIMEOUT))
            return

        def body(transaction: Any) -> None:
            refs = {slot: self._docs(slot[0]).document(hex_id(slot[1])) for slot in slots}
            revisions = dict.fromkeys(slots, 0)
            by_path = {ref.path: slot for slot, ref in refs.items()}
            for snap in transaction.get_all(list(refs.values()), retry=None, timeout=RPC_TIMEOUT) if refs else ():
                if snap.exists:
                    revisions[by_path[snap.reference.path]] = int(snap.get("revision"))
            staged: dict[tuple[str, str], tuple[dict[str, Any] | None, int]] = {}
            for change in changes:
                slot = (change.collection, change.key)
                revision = staged[slot][1] if slot in staged else revisions[slot]
                if change.expected_revision is not None and change.expected_revision != revision:
                    raise ConcurrencyError(f"{change.collection}/{change.key}", change.expected_revision, revision)
                if change.doc is None:
                    staged[slot] = (None, 0)
                else:
                    staged[slot] = (dict(change.doc), revision + 1)
            for slot, (doc, revision) in staged.items():
                if doc is None:
                    transaction.delete(refs[slot])
                else:
                    transaction.set(
                        refs[slot],
                        {"key": slot[1], "revision": revision, "json": encode_json(doc), "fields": _scalars(doc)},
                    )
            for key, value in checkpoint.items():
                transaction.set(
                    self._checkpoint_ref(projection, key), {"projection": projection, "key": key, "value": value}
                )

        self._transact(body)

    def get_checkpoint(self, projection: str, key: str = "$all") -> str | None:
        """The last committed checkpoint value of ``(projection, key)``."""
        snap = self._call(lambda: self._checkpoint_ref(projection, key).get(retry=None, timeout=RPC_TIMEOUT))
        return str(snap.get("value")) if snap.exists else None

    def _delete_all(self, query: Any) -> None:
        """Delete what ``query`` matches, 400 documents per atomic batch (idempotent)."""
        while True:
            refs = self._call(
                lambda: [snap.reference for snap in query.select([]).limit(400).stream(retry=None, timeout=RPC_TIMEOUT)]
            )
            if not refs:
                return
            batch = self.client.batch()
            for ref in refs:
                batch.delete(ref)
            self._call(batch.commit)

    def drop(self, collection: str) -> None:
        """Delete every document of ``collection`` (idempotent)."""
        self._delete_all(self._docs(collection))

    def drop_checkpoints(self, projection: str) -> None:
        """Forget every checkpoint of ``projection``."""
        self._delete_all(
            self.client.collection(CHECKPOINTS_COLLECTION).where(filter=FieldFilter("projection", "==", projection))
        )
