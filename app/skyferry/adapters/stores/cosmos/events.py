"""The Cosmos DB event store (``cosmos://``).

Event store design (every write is one single-document operation, so nothing relies on
transactional batches, which the emulator does not make atomic):

* **One commit document per append**, in the stream's partition (partition key = stream
  id), with id ``c-<first version, zero padded>``.  Two appends that saw the same stream
  version both try to create the same id: Cosmos DB accepts one and answers 409 to the
  other, which makes the optimistic-concurrency check atomic.  A stream's version only
  ever moves from one commit boundary to the next, so a writer holding a stale version
  always collides with the commit that moved it.  Events over ~1.5 MB in one append go
  to part documents written *before* the commit document that references them; parts
  of an append that lost the race are unreferenced and invisible (and deleted).
* **The global order is a dense log** of slot documents in the reserved partition
  ``$log`` (``$`` cannot occur in a stream id): slot ``n`` (id ``s-<n>``) names one commit.
  A slot is created with number "highest + 1" and a create that collides retries, so
  slots are gap-free, and a reader tailing the log from slot ``n`` never skips one (the
  sequence-gap problem cannot arise: a slot exists before anyone can read past it).
  After the commit document exists, the writer creates its slot and then records the
  slot number in the commit (a conditional replace).  The commit's recorded slot is the
  one that counts: ``read_all`` skips a slot whose commit names another slot (two
  helpers raced), and fills in a missing record itself.  A commit is only given a slot
  once every earlier commit of its stream has one, so per-stream order holds in the log.
  If a writer dies between its commit and its slot, the next append to that stream, or
  ``read_all``'s periodic sweep of unslotted commits (``sweep_after`` seconds old), slots
  it; a failed slotting makes ``append`` raise ``TransientError`` (retrying is an
  idempotent success that finishes the slotting).
* **Group commit.**  Creating slots is sequential (each is "highest + 1"), one round trip
  each, so the commits an instance's threads slot at the same moment share one slot: it
  names them all (``commits``, in order; a slot of one commit names it as ``stream`` and
  ``commit``), and each commit records it.  A commit waits for a slot only once every
  earlier commit of its stream has recorded one, so per-stream order holds across slots.
  Positions are ``"<slot>:<version>"``, or ``"<slot>.<member>:<version>"`` for the second
  and later commits a slot names.  An instance tries the slot number after the one it
  created last (a collision with another process reads the highest again).  A reader of
  a version before group commit cannot read a shared slot (it fails on it, it does not
  skip it): deploy readers and writers of one store at the same version.
* **An append is three requests** in the common case: the commit, the (shared) slot, the
  record.  An append to a new stream (expected version 0) reads nothing first (its commit
  of version 1 collides if the stream exists), and the query for earlier unslotted commits
  is skipped when the stream's last commit has its slot.
* **Bulk writes take their slot first** (feature ``bulk_in_flight``: imports and
  migrations).  Per block of a ``bulk_append``, one read of the block's streams (none for
  streams this instance's bulk writes left where the block continues them), then one
  *block slot*, created before its commits: it names every commit the block will create
  (one per stream, of up to :data:`COMMIT_EVENTS` events) and carries an expiry
  (``expires``, Unix seconds, ``_blocks.CLAIM_SECONDS`` ahead).  Each commit is then
  created with its slot already recorded and each event's place in the block
  (``places``), ``in_flight`` streams at a time: one request a stream of the block, where
  ``append`` takes three an append.  ``read_all`` reads a block's commits and gives their
  events by place, so the log keeps the order given; a position in a block is
  ``"<slot>.<place>:<version>"``.  A block slot's member counts only if the commit at its
  id records that slot.  ``read_all`` stops at the first place no commit holds while a
  member is not yet created and the slot has not expired, as it would at a commit still
  being written; once it has, the reader creates a *void* document at the commit's id
  (kind ``void``, naming the slot), so the dead writer's late commit collides and is
  refused, and reads on.  A failed block voids its own unwritten members.  Voids hold no
  event and no query of commits sees them; an append that collides with one replaces it.
  Positions stay unique and ascending; a voided member's places are positions no event
  took.
* Each event keeps its ``data`` and ``metadata`` as canonical JSON text (fields ``d`` and
  ``m``), not as native JSON: Cosmos DB stores every number as a double, which would
  change ``-0.0``, ``1.0``, ``1e16``, ``2**53 + 1`` or ``2**63 - 1``.  Events written by
  earlier versions, with native ``data`` / ``metadata``, are still read.
* The log partition caps the write rate at one logical partition's throughput
  (10,000 RU/s, roughly a thousand appends a second); the change feed would scale
  further, but its order across physical partitions is not one global order and the
  emulator does not implement it, so it could not be tested here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from functools import partial
from typing import Any, Final, NamedTuple

from azure.core import MatchConditions
from azure.cosmos import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import (
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from skyferry.adapters.registry import redact
from skyferry.adapters.stores import _blocks
from skyferry.adapters.stores.cosmos.client import (
    CosmosLocation,
    _Containers,
    call,
)
from skyferry.adapters.stores.cosmos.layout import (
    _VERSION_DIGITS,
    INLINE_LIMIT,
    LOG_PARTITION,
    _commit_id,
    _event_body,
    _event_of,
    _slot_id,
)
from skyferry.core.errors import ConcurrencyError, ConfigurationError, TransientError, ValidationError
from skyferry.core.messages import (
    Event,
    NewEvent,
    check_append,
    encode_json,
    format_timestamp,
    utc_now,
)
from skyferry.core.ports import (
    FEATURE_BULK_APPEND,
    FEATURE_BULK_IN_FLIGHT,
    AppendResult,
    ExpectedVersion,
    expected_as_int,
    resolve_conflict,
)

_log = logging.getLogger(__name__)

LAST_SLOTS: Final = 1
"""Slots ``last_position`` reads first (the newest): a readiness probe reads two documents, whatever the log."""
BLOCK_EVENTS: Final = 10_000
"""The most events of one block of a ``bulk_append`` (one block slot)."""
COMMIT_EVENTS: Final = 1_000
"""The most events of one commit of a bulk write (a commit also lists its event ids and
their places in the block).  A block slot names at most ``_blocks.PARTS_PER_IN_FLIGHT *
in_flight`` streams, so with :data:`BLOCK_EVENTS` at most 266 commits: far below Cosmos
DB's 2 MB item limit."""
HEADS_PER_QUERY: Final = 100
"""The most streams one query of a bulk write's heads names."""
PART_ATTEMPTS: Final = 3
"""Tries of one commit of a bulk write before its block fails."""
_KNOWN_STREAMS: Final = 100_000
"""The most streams whose version an instance's bulk writes remember (then it forgets them all)."""


class CosmosEventStore:
    """``EventStore`` on one Cosmos DB container (see the module docstring for the design)."""

    features: frozenset[str] = frozenset({FEATURE_BULK_APPEND, FEATURE_BULK_IN_FLIGHT})

    def __init__(self, location: CosmosLocation, client: CosmosClient | None = None) -> None:
        self.location = location
        self.url = redact(f"cosmos://{location.account}/{location.database}/{location.container}")
        self.identity = ("cosmos", location.endpoint, location.database, location.container)
        self._containers = _Containers(location, client)
        self._slotting = threading.Condition()
        self._leading = False
        self._waiting: list[_Waiting] = []
        self._next_slot: int | None = None
        self._bulk_lock = threading.Lock()
        self._bulk_versions: dict[str, int] = {}  # streams this instance's bulk writes left, and their versions
        self._written_block: tuple[int, str] | None = None  # the last block slot this instance wrote whole, its end
        self._parts = _blocks.PartPool("skyferry-cosmos-bulk")

    @classmethod
    def from_url(cls, url: str, client: CosmosClient | None = None, *, existing: bool = False) -> CosmosEventStore:
        """Parse ``url`` (no I/O).  The adapter never creates a database or a container, so
        ``existing`` changes nothing: a missing one is a ``ConfigurationError`` naming it."""
        return cls(CosmosLocation.parse(url), client)

    @property
    def _c(self) -> ContainerProxy:
        return self._containers.get(self.location.container)

    # -- reading -------------------------------------------------------------------------

    def _query(self, what: str, query: str, params: Mapping[str, Any], partition: str | None) -> list[Any]:
        parameters = [{"name": k, "value": v} for k, v in params.items()]
        if partition is None:
            return call(
                what,
                lambda: list(self._c.query_items(query, parameters=parameters, enable_cross_partition_query=True)),
            )
        # The partition filter is also in the text: the emulator demands it there.
        scoped = query.replace(" WHERE ", " WHERE c.stream_id = @pk AND ", 1)
        parameters.append({"name": "@pk", "value": partition})
        return call(what, lambda: list(self._c.query_items(scoped, parameters=parameters, partition_key=partition)))

    def _commits(self, stream_id: str, low: int = 1, high: int | None = None) -> list[dict[str, Any]]:
        """The stream's commit documents overlapping versions low..high, by first version."""
        query = "SELECT * FROM c WHERE c.kind = 'commit' AND c.last >= @low"
        params: dict[str, Any] = {"@low": low}
        if high is not None:
            query += " AND c.first <= @high"
            params["@high"] = high
        rows = self._query(f"reading stream {stream_id}", query, params, stream_id)
        return sorted(rows, key=lambda r: int(r["first"]))

    def _head(self, stream_id: str) -> dict[str, Any] | None:
        rows = self._query(
            f"reading the version of {stream_id}",
            "SELECT TOP 1 * FROM c WHERE c.kind = 'commit' ORDER BY c.first DESC",
            {},
            stream_id,
        )
        return rows[0] if rows else None

    def _events_of(self, commit: Mapping[str, Any], position: str | None = None) -> list[Event]:
        bodies: list[dict[str, Any]] = list(commit.get("events") or [])
        for part_id in commit.get("parts") or []:
            part = call(f"reading {part_id}", partial(self._c.read_item, part_id, partition_key=commit["stream_id"]))
            bodies.extend(part["events"])
        first = int(commit["first"])
        return [_event_of(body, commit["stream_id"], first + i) for i, body in enumerate(bodies)]

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[Event]:
        """The stream's events in the range, one single-partition query."""
        low = max(1, from_version)
        events = [
            e
            for commit in self._commits(stream_id, low, to_version)
            for e in self._events_of(commit)
            if e.version >= low and (to_version is None or e.version <= to_version)
        ]
        if backwards:
            events.reverse()
        return events if limit is None else events[: max(0, limit)]

    def stream_version(self, stream_id: str) -> int:
        """The last commit's last version, or 0."""
        head = self._head(stream_id)
        return int(head["last"]) if head else 0

    def list_streams(self, prefix: str = "") -> Iterator[str]:
        """Stream ids with ``prefix``: a cross-partition query on the streams' first commits."""
        rows = self._query(
            "listing streams",
            "SELECT c.stream_id FROM c WHERE c.kind = 'commit' AND c.first = 1 AND STARTSWITH(c.stream_id, @prefix)",
            {"@prefix": prefix},
            None,
        )
        return iter(sorted({row["stream_id"] for row in rows}))

    # -- appending -----------------------------------------------------------------------

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> AppendResult:
        """Append atomically: one conditional create of the commit document (see module doc)."""
        events = list(events)
        check_append(stream_id, events)
        want = expected_as_int(expected_version)
        ids = [e.id for e in events]
        new_stream = want == 0  # nothing to read first: the commit of version 1 collides if it exists
        while True:
            head = None if new_stream else self._head(stream_id)
            actual = int(head["last"]) if head else 0
            stored = self._find_ids(stream_id, ids) if head else {}
            if stored or (want is not None and actual != want):
                result = resolve_conflict(stream_id, events, expected_version, actual, stored)
                self._slot_stream(stream_id)  # an idempotent retry finishes a slotting that failed
                return result
            first = actual + 1
            try:
                commit = self._write_commit(stream_id, first, events)
            except _Collision:
                new_stream = False
                continue  # another append took this version: decide again from the new head
            if head is None or head.get("slot") is not None:
                # Every earlier commit has its slot (a commit gets one only after those before
                # it): this one is the stream's only commit without, no query needed.
                self._slot_in_order(stream_id, [commit])
            else:
                self._slot_stream(stream_id)
            return AppendResult(stream_id, first, first + len(events) - 1)

    def _find_ids(self, stream_id: str, ids: list[str]) -> dict[str, int]:
        """The versions at which the stream already holds any of ``ids``."""
        stored: dict[str, int] = {}
        wanted = set(ids)
        for start in range(0, len(ids), 50):
            chunk = ids[start : start + 50]
            clauses = " OR ".join(f"ARRAY_CONTAINS(c.event_ids, @i{n})" for n in range(len(chunk)))
            rows = self._query(
                f"checking event ids in {stream_id}",
                f"SELECT c.first, c.event_ids FROM c WHERE c.kind = 'commit' AND ({clauses})",
                {f"@i{n}": i for n, i in enumerate(chunk)},
                stream_id,
            )
            for row in rows:
                for offset, event_id in enumerate(row["event_ids"]):
                    if event_id in wanted:
                        stored[event_id] = int(row["first"]) + offset
        return stored

    def _write_commit(
        self,
        stream_id: str,
        first: int,
        events: Sequence[NewEvent | Event],
        slot: int | None = None,
        places: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Create the commit of ``events`` at version ``first``; a void at its id is replaced.
        ``_Collision`` when another document holds the id.  A bulk write's commit comes with
        its block ``slot`` and each event's place in the block (``places``)."""
        now = format_timestamp(utc_now())
        bodies = [_event_body(e, format_timestamp(e.recorded_at) if e.recorded_at else now) for e in events]
        commit: dict[str, Any] = {
            "id": _commit_id(first),
            "kind": "commit",
            "stream_id": stream_id,
            "first": first,
            "last": first + len(events) - 1,
            "slot": slot,
            "created": now,
            "event_ids": [e.id for e in events],
        }
        if places is not None:
            commit["places"] = list(places)
        parts: list[str] = []
        if len(encode_json(bodies)) > INLINE_LIMIT:
            token = uuid.uuid4().hex[:12]
            chunk: list[dict[str, Any]] = []
            size = 0
            for body in bodies:
                body_size = len(encode_json(body))
                if chunk and size + body_size > INLINE_LIMIT:
                    parts.append(self._write_chunk(stream_id, first, token, len(parts), chunk))
                    chunk, size = [], 0
                chunk.append(body)
                size += body_size
            parts.append(self._write_chunk(stream_id, first, token, len(parts), chunk))
            commit["parts"] = parts
        else:
            commit["events"] = bodies
        while True:
            try:
                created: dict[str, Any] = call(f"appending to {stream_id}", lambda: self._c.create_item(commit))
                return created
            except CosmosResourceExistsError:
                held = self._read(commit["id"], stream_id)
            if held is not None and held.get("kind") == "void" and (slot is None or held.get("slot") != slot):
                # A position no event took: the id is free.
                replaced = self._replace_unchanged(f"appending to {stream_id}", commit, held["_etag"])
                if replaced is not None:
                    return replaced
                continue  # changed since it was read
            if held is None:
                continue  # deleted since: try again
            for part_id in parts:
                self._delete(part_id, stream_id)
            raise _Collision(held)

    def _replace_unchanged(self, what: str, body: dict[str, Any], etag: str) -> dict[str, Any] | None:
        """Replace the document ``body`` names by ``body`` unless it changed since ``etag``
        (then ``None``)."""
        try:
            replaced: dict[str, Any] = call(
                what,
                partial(
                    self._c.replace_item, body["id"], body, etag=etag, match_condition=MatchConditions.IfNotModified
                ),
            )
        except CosmosHttpResponseError as e:
            if e.status_code != 412:
                raise
            return None
        return replaced

    def _read(self, item: str, partition: str) -> dict[str, Any] | None:
        """The document ``item`` of ``partition``, or ``None``."""
        try:
            found: dict[str, Any] = call(f"reading {item}", lambda: self._c.read_item(item, partition_key=partition))
        except CosmosResourceNotFoundError:
            return None
        return found

    def _write_chunk(self, stream_id: str, first: int, token: str, n: int, chunk: list[dict[str, Any]]) -> str:
        part_id = f"p-{first:0{_VERSION_DIGITS}d}-{token}-{n}"
        body = {"id": part_id, "kind": "part", "stream_id": stream_id, "events": chunk}
        call(f"appending to {stream_id}", lambda: self._c.create_item(body))
        return part_id

    def _delete(self, item: str, partition: str) -> None:
        with contextlib.suppress(CosmosResourceNotFoundError):
            call(f"deleting {item}", lambda: self._c.delete_item(item, partition_key=partition))

    # -- bulk writes: the slot first ------------------------------------------------------

    def bulk_append(self, events: Sequence[Event], in_flight: int = 1) -> int:
        """Store already-versioned events of several streams; return how many were new.

        Positions follow the order given (an import keeps its archive's global order).
        Events already stored with the same ids at the same versions are skipped (a resumed
        import).  Per block (:data:`BLOCK_EVENTS`, at most ``_blocks.PARTS_PER_IN_FLIGHT``
        streams per write in flight): one read of the streams it does not know, one block
        slot, then one commit per stream, ``in_flight`` streams at a time (see the module
        docstring).  A conflict found by the read writes
        nothing; after a failure while writing, each stream holds a prefix of its events.
        """
        _blocks.check_events(events)
        if not events:
            return 0
        _blocks.check_contiguous(events, self.stream_version)
        most_streams = _blocks.PARTS_PER_IN_FLIGHT * in_flight
        with self._bulk_lock:
            try:
                return sum(self._bulk_block(block, in_flight) for block in _bulk_blocks(events, most_streams))
            except BaseException:
                self._bulk_versions.clear()
                raise

    def _bulk_block(self, block: Sequence[Event], in_flight: int) -> int:
        """Write one block: decide what is new, create its slot, then its commits."""
        by_stream = _blocks.by_stream(block)
        # each writer thread's client (connection, TLS, account read) is built while the heads are read
        self._parts.warm(in_flight, len(by_stream), lambda: self._c)
        versions, stored = self._bulk_state(by_stream)
        new_ids, after = _blocks.decide(by_stream, versions, stored)
        fresh = [event for event in block if event.id in new_ids]
        if not fresh:
            return 0
        commits = _block_commits(fresh)
        members = [[commit.events[0].stream_id, _commit_id(commit.events[0].version)] for commit in commits]
        expires = int(_blocks.now() + _blocks.CLAIM_SECONDS)
        with self._leadership():
            n = self._create_slot(members, {"expires": expires, "lasts": [commit.places[-1] for commit in commits]})
        mine: dict[str, list[int]] = {}
        for member, commit in enumerate(commits):
            mine.setdefault(commit.events[0].stream_id, []).append(member)
        parts = [[event for member in part for event in commits[member].events] for part in mine.values()]
        claims = [_blocks.Claim(f"{n:020d}.{i:04d}", tuple(part), expires) for i, part in enumerate(mine.values())]
        written: set[int] = set()
        count = self._parts.run(
            parts,
            claims,
            in_flight,
            partial(self._write_part, n=n, commits=commits, written=written),
            partial(self._settle, n=n, commits=commits, written=written),
        )
        last = max(commits, key=lambda commit: commit.places[-1])
        self._written_block = (n, _position(n, last.places[-1], last.events[-1].version))
        if len(self._bulk_versions) + len(after) > _KNOWN_STREAMS:
            self._bulk_versions.clear()
        self._bulk_versions.update(after)
        return count

    def _bulk_state(self, by_stream: Mapping[str, list[Event]]) -> tuple[dict[str, int], dict[str, tuple[str, int]]]:
        """Each stream's version and where the ids already stored are: read (one query) for
        the streams whose block does not continue what this instance's bulk writes left."""
        versions: dict[str, int] = {}
        unknown: list[str] = []
        for stream_id, run in by_stream.items():
            known = self._bulk_versions.get(stream_id)
            if known is not None and run[0].version == known + 1:
                versions[stream_id] = known
            else:
                unknown.append(stream_id)
        stored: dict[str, tuple[str, int]] = {}
        if not unknown:
            return versions, stored
        rows: list[Any] = []
        for start in range(0, len(unknown), HEADS_PER_QUERY):
            # Each stream's commits from the head its events continue to their last version:
            # what decides them, not the whole stream.
            clauses: list[str] = []
            params: dict[str, Any] = {}
            for i, stream_id in enumerate(unknown[start : start + HEADS_PER_QUERY]):
                run = by_stream[stream_id]
                clauses.append(f"(c.stream_id = @s{i} AND c.last >= @l{i} AND c.first <= @h{i})")
                params |= {f"@s{i}": stream_id, f"@l{i}": run[0].version - 1, f"@h{i}": run[-1].version}
            rows += self._query(
                "reading the streams of a bulk write",
                "SELECT c.stream_id, c.first, c.last, c.slot, c.event_ids FROM c "
                f"WHERE c.kind = 'commit' AND ({' OR '.join(clauses)})",
                params,
                None,
            )
        heads = {stream_id: 0 for stream_id in unknown}
        unslotted: set[str] = set()
        for row in rows:
            stream_id = row["stream_id"]
            heads[stream_id] = max(heads[stream_id], int(row["last"]))
            if row.get("slot") is None:
                unslotted.add(stream_id)
            for offset, event_id in enumerate(row["event_ids"]):
                stored[event_id] = (stream_id, int(row["first"]) + offset)
        for stream_id in sorted(unslotted):  # a writer died before slotting them: earlier in the log than ours
            self._slot_stream(stream_id)
        for stream_id, head in heads.items():
            if head == 0 and by_stream[stream_id][0].version > 1:  # it does not continue: say where the stream is
                heads[stream_id] = self.stream_version(stream_id)
        versions.update(heads)
        return versions, stored

    def _write_part(
        self, part: Sequence[Event], claim: _blocks.Claim, *, n: int, commits: list[_BlockCommit], written: set[int]
    ) -> int:
        """Create one stream's commits of block slot ``n`` (``claim.positions``: their members), in order."""
        for member in claim.positions:
            run, places = commits[member]
            stream_id, first = run[0].stream_id, run[0].version
            try:
                self._write_commit_retried(stream_id, first, run, n, places)
            except _Collision as e:
                held = e.held
                ours = held.get("slot") == n
                if held.get("kind") == "void" and ours:
                    raise TransientError(
                        f"stream {stream_id!r}: the positions this import took (slot {n}) expired before its "
                        "events were written, and were passed over; run the command again"
                    ) from e
                if not (ours and held.get("event_ids") == [event.id for event in run]):  # else: our reply was lost
                    raise ConcurrencyError(
                        stream_id, first - 1, int(held.get("last", first)), "another writer appended meanwhile"
                    ) from e
            written.add(member)
        return len(part)

    def _write_commit_retried(
        self, stream_id: str, first: int, run: Sequence[Event], n: int, places: Sequence[int]
    ) -> None:
        """``_write_commit`` with its slot, tried again after a transient failure: a commit
        whose reply was lost then collides with itself, which ``_write_part`` recognises."""
        for attempt in range(1, PART_ATTEMPTS + 1):
            try:
                self._write_commit(stream_id, first, run, slot=n, places=places)
                return
            except TransientError:
                if attempt == PART_ATTEMPTS:
                    raise
                time.sleep(0.2 * attempt)

    def _settle(self, claim: _blocks.Claim, *, n: int, commits: list[_BlockCommit], written: set[int]) -> None:
        """Void the commits of ``claim`` not written (a failed block: readers pass over them)."""
        for member in claim.positions:
            if member not in written:
                first = commits[member].events[0]
                self._void(first.stream_id, _commit_id(first.version), n)

    @contextlib.contextmanager
    def _leadership(self) -> Iterator[None]:
        """Lead the slotting (see ``_slot_commit``): nobody else creates a slot meanwhile."""
        with self._slotting:
            while self._leading:
                self._slotting.wait()
            self._leading = True
        try:
            yield
        finally:
            with self._slotting:
                self._leading = False
                self._slotting.notify_all()

    # -- the global log ------------------------------------------------------------------

    def _slot_stream(self, stream_id: str) -> None:
        """Give every unslotted commit of the stream a slot, in version order."""
        rows = self._query(
            f"positioning {stream_id}",
            "SELECT * FROM c WHERE c.kind = 'commit' AND IS_NULL(c.slot)",
            {},
            stream_id,
        )
        self._slot_in_order(stream_id, sorted(rows, key=lambda r: int(r["first"])))

    def _slot_in_order(self, stream_id: str, commits: list[dict[str, Any]]) -> None:
        """Slot the stream's ``commits`` one after another, in version order."""
        try:
            for commit in commits:
                self._slot_commit(commit)
        except ConfigurationError:
            raise
        except Exception as e:
            raise TransientError(
                f"stream {stream_id!r}: the events are stored but not yet in the global log; "
                "retry the append (it is idempotent) or let read_all's sweep position them"
            ) from e

    def _top_slot(self) -> int:
        rows = self._query(
            "reading the global log",
            "SELECT TOP 1 c.n FROM c WHERE c.kind = 'slot' ORDER BY c.n DESC",
            {},
            LOG_PARTITION,
        )
        return int(rows[0]["n"]) if rows else 0

    def _slot_commit(self, commit: dict[str, Any]) -> int:
        """Give ``commit`` a slot and record it there; returns the slot that counts.

        Group commit: the commits this instance's threads are slotting at the same moment
        share one slot, in the order they arrived.  One thread at a time creates a slot for
        every commit waiting (the others wait for it), then each thread records the slot in
        its own commit.  Each waiting commit's earlier commits are recorded already (its
        thread slots its stream's commits one after another), so per-stream order holds.
        A slot is created one round trip after the one before, so without sharing, one
        appending process could give out only one slot per round trip."""
        ticket = _Waiting(commit)
        with self._slotting:
            self._waiting.append(ticket)
            while not ticket.done and self._leading:
                self._slotting.wait()
            batch: list[_Waiting] = []
            if not ticket.done:
                self._leading = True
                batch, self._waiting = self._waiting, []
        if batch:
            try:
                members = dict.fromkeys((w.commit["stream_id"], w.commit["id"]) for w in batch)
                n = self._create_slot([list(member) for member in members])
                for waiting in batch:
                    waiting.slot = n
            except BaseException as e:
                for waiting in batch:
                    waiting.error = e
                raise
            finally:
                with self._slotting:
                    for waiting in batch:
                        waiting.done = True
                    self._leading = False
                    self._slotting.notify_all()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.slot is not None
        return self._record_slot(commit["stream_id"], commit["id"], ticket.slot, commit)

    def _create_slot(self, members: list[list[str]], block: Mapping[str, Any] | None = None) -> int:
        """Create the next slot of the log naming ``members`` (``[stream, commit id]``, in
        that order); returns its number.  ``block``: a block slot's own fields (``expires``,
        and ``lasts``, each member's last place), created before its commits (see the module
        docstring).  Only the thread leading the slotting calls it.

        Tried first: the number after the one this instance created last (one request, no
        query); a collision (another process) reads the highest slot again."""
        n = self._next_slot if self._next_slot is not None else self._top_slot() + 1
        self._next_slot = None
        while True:
            slot: dict[str, Any] = {"id": _slot_id(n), "kind": "slot", "stream_id": LOG_PARTITION, "n": n}
            if len(members) == 1 and block is None:
                slot["stream"], slot["commit"] = members[0]
            else:
                slot["commits"] = members
            slot.update(block or {})
            try:
                call("appending to the global log", partial(self._c.create_item, slot))
            except CosmosResourceExistsError:
                n = self._top_slot() + 1
                continue
            self._next_slot = n + 1
            return n

    def _record_slot(self, stream_id: str, commit_id: str, n: int, known: dict[str, Any] | None = None) -> int:
        """Set the commit's slot to ``n`` unless it has one; returns the slot that counts.

        ``known``: the commit as last read (its etag is tried first, saving a read)."""
        current = known
        while True:
            if current is None:
                current = call(f"reading {commit_id}", lambda: self._c.read_item(commit_id, partition_key=stream_id))
            if current.get("slot") is not None:
                return int(current["slot"])
            updated = {k: v for k, v in current.items() if not k.startswith("_")}
            updated["slot"] = n
            if self._replace_unchanged(f"positioning {commit_id}", updated, current["_etag"]) is not None:
                return n
            current = None  # changed since it was read: read it again

    def read_all(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Events in log order after ``after`` (a position ``"<slot>:<version>"``, or
        ``"<slot>.<member>:<version>"`` for a slot shared by several commits, or
        ``"<slot>.<place>:<version>"`` in a bulk write's block slot)."""
        slot_after, member_after, version_after = _parse_position(after)
        out: list[Event] = []
        next_slot = max(slot_after, 1)
        while len(out) < limit:
            rows = self._query(
                "reading the global log",
                f"SELECT TOP {int(limit)} * FROM c WHERE c.kind = 'slot' AND c.n >= @n ORDER BY c.n",
                {"@n": next_slot},
                LOG_PARTITION,
            )
            if not rows:
                break
            for slot in rows:
                n = int(slot["n"])
                if "expires" in slot:  # a block slot: its events by their place in the block
                    present, pending = self._block_events(slot)
                    for i, (place, event) in enumerate(present):
                        if pending and place != i:
                            break  # the first place no commit holds yet may be the pending one's
                        if (n, place) <= (slot_after, member_after):
                            continue
                        out.append(event.with_position(_position(n, place, event.version)))
                        if len(out) >= limit:
                            return out
                    if pending:
                        return out  # a block's commit still being written: caught up for now
                    continue
                for member, (stream_id, commit_id) in enumerate(_members(slot)):
                    if (n, member) < (slot_after, member_after):
                        continue
                    commit = self._counting_commit(slot, stream_id, commit_id)
                    if not isinstance(commit, dict):
                        continue
                    for event in self._events_of(commit):
                        if (n, member) == (slot_after, member_after) and event.version <= version_after:
                            continue
                        out.append(event.with_position(_position(n, member, event.version)))
                        if len(out) >= limit:
                            return out
            next_slot = int(rows[-1]["n"]) + 1
        self._sweep()
        return out

    def _counting_commit(
        self, slot: Mapping[str, Any], stream_id: str, commit_id: str, *, settle: bool = True
    ) -> dict[str, Any] | _Hole | None:
        """The commit ``slot`` names, if ``slot`` is the one that counts for it (recorded
        there now when its writer has not yet); ``None`` when it does not count.

        A block slot's member counts only if its commit was created with the slot.  A
        member not yet created is ``_HOLE`` while the slot has not expired; after, it is
        voided (its late commit will collide) and does not count (unless ``settle`` is
        false: then it stays ``_HOLE``)."""
        n = int(slot["n"])
        commit = self._read(commit_id, stream_id)
        expires = slot.get("expires")
        if expires is None:  # created after its commit
            if commit is None:
                raise TransientError(f"slot {n} of the global log names {stream_id}/{commit_id}, which is missing")
            recorded = commit.get("slot")
            if recorded is None:
                recorded = self._record_slot(stream_id, commit_id, n, commit)
            return commit if int(recorded) == n else None
        if commit is None:
            if not settle or int(expires) >= _blocks.now():
                return _HOLE
            commit = self._void(stream_id, commit_id, n)
        counts = commit.get("kind") == "commit" and commit.get("slot") == n
        return commit if counts else None

    def _block_events(self, slot: Mapping[str, Any]) -> tuple[list[tuple[int, Event]], bool]:
        """The events of block ``slot``'s commits that count, each with its place in the
        block, by place; and whether a commit is still pending (``_HOLE``).  One
        cross-partition query finds the commits that count; only the members it does not
        return are read one by one.  A block read whole is kept (one, the last), so a
        reader paging through it reads it once."""
        n = int(slot["n"])
        kept = self._kept_block
        if kept is not None and kept[0] == n:
            return kept[1], False
        rows = self._query(  # the block's commits that count, one query whatever their number
            "reading the global log", "SELECT * FROM c WHERE c.kind = 'commit' AND c.slot = @n", {"@n": n}, None
        )
        counting = {(row["stream_id"], row["id"]): row for row in rows}
        present: list[tuple[int, Event]] = []
        pending = False
        for stream_id, commit_id in _members(slot):
            commit = counting.get((stream_id, commit_id))
            if commit is None:  # not yet created (a hole), a void, or another writer's commit
                commit = self._counting_commit(slot, stream_id, commit_id)
            if isinstance(commit, _Hole):
                pending = True
            elif commit is not None:
                present.extend(zip(commit["places"], self._events_of(commit), strict=True))
        present.sort(key=lambda placed: placed[0])
        if not pending:
            self._kept_block = (n, present)
        return present, pending

    _kept_block: tuple[int, list[tuple[int, Event]]] | None = None

    def _void(self, stream_id: str, commit_id: str, n: int) -> dict[str, Any]:
        """Mark the commit id ``commit_id`` a position of block slot ``n`` no event took,
        unless a document holds it already; the document that holds it now."""
        void = {"id": commit_id, "kind": "void", "stream_id": stream_id, "slot": n}
        while True:
            try:
                created: dict[str, Any] = call(f"settling {commit_id}", partial(self._c.create_item, void))
                _log.info("slot %d: %s/%s was not written in time; passed over", n, stream_id, commit_id)
                return created
            except CosmosResourceExistsError:
                held = self._read(commit_id, stream_id)
                if held is not None:
                    return held

    _last_sweep: float = 0.0

    def _sweep(self) -> None:
        """Slot commits whose writer died before slotting them (at most every few seconds)."""
        now = time.monotonic()
        if now - self._last_sweep < min(5.0, self.location.sweep_after):
            return
        self._last_sweep = now
        cutoff = format_timestamp(utc_now() - timedelta(seconds=self.location.sweep_after))
        streams = self._query(
            "sweeping unpositioned commits",
            "SELECT c.stream_id FROM c WHERE c.kind = 'commit' AND IS_NULL(c.slot) AND c.created <= @cutoff",
            {"@cutoff": cutoff},
            None,
        )
        for stream_id in sorted({row["stream_id"] for row in streams}):
            self._slot_stream(stream_id)

    def last_position(self) -> str | None:
        """The position of the last event of the last slot that counts.

        Constant cost whatever the log's length (readiness probes call it every few seconds,
        under an RU cap): the newest slot and its commit; older slots, a page at a time, only
        when none of its commits counts (it lost a repair race, or a block's commits are
        still being written).  When the newest slot is a block this instance wrote whole
        (an import after each chunk), its end is known: the query alone.
        """
        size, below = LAST_SLOTS, None
        while True:
            query = f"SELECT TOP {size} * FROM c WHERE c.kind = 'slot'"
            params: dict[str, Any] = {}
            if below is not None:
                query += " AND c.n < @below"
                params["@below"] = below
            rows = self._query("reading the global log", query + " ORDER BY c.n DESC", params, LOG_PARTITION)
            written = self._written_block
            for slot in rows:
                n = int(slot["n"])
                if written is not None and written[0] == n:  # a block this instance wrote whole: no read
                    return written[1]
                if "expires" in slot:  # the counting commit holding the block's last place: one read
                    members = _members(slot)
                    for member in sorted(range(len(members)), key=lambda m: -int(slot["lasts"][m])):
                        commit = self._counting_commit(slot, *members[member], settle=False)
                        if isinstance(commit, dict):
                            return _position(n, int(commit["places"][-1]), int(commit["last"]))
                    continue
                for member, (stream_id, commit_id) in reversed(list(enumerate(_members(slot)))):
                    commit = self._counting_commit(slot, stream_id, commit_id, settle=False)
                    if isinstance(commit, dict):
                        return _position(n, member, int(commit["last"]))
            if len(rows) < size:
                return None
            size, below = 100, int(rows[-1]["n"])

    def close(self) -> None:
        """Stop the bulk writes' threads; close the HTTP sessions of the clients this store built."""
        self._parts.close()
        self._containers.close()


class _Collision(Exception):
    """The commit document already exists: another append won the version."""

    def __init__(self, held: dict[str, Any]) -> None:
        super().__init__(held.get("id"))
        self.held = held


class _Hole:
    """A block slot's commit not yet created (see ``CosmosEventStore._counting_commit``)."""


_HOLE: Final = _Hole()


class _Waiting:
    """A commit waiting for its slot (see ``CosmosEventStore._slot_commit``)."""

    def __init__(self, commit: dict[str, Any]) -> None:
        self.commit = commit
        self.done = False
        self.slot: int | None = None
        self.error: BaseException | None = None


def _bulk_blocks(events: Sequence[Event], most_streams: int) -> Iterator[Sequence[Event]]:
    """``events`` cut, in order, into blocks of at most :data:`BLOCK_EVENTS` events and
    ``most_streams`` streams."""
    start, streams = 0, set[str]()
    for i, event in enumerate(events):
        if i > start and (
            i - start >= BLOCK_EVENTS or (event.stream_id not in streams and len(streams) >= most_streams)
        ):
            yield events[start:i]
            start, streams = i, set()
        streams.add(event.stream_id)
    if start < len(events):
        yield events[start:]


class _BlockCommit(NamedTuple):
    """One commit of a block: a stream's events in it (in version order), each one's place in the block."""

    events: list[Event]
    places: list[int]


def _block_commits(block: Sequence[Event]) -> list[_BlockCommit]:
    """The commits of ``block``: each stream's events, by stream as first seen, in chunks of
    at most :data:`COMMIT_EVENTS`, each event with its place in ``block``."""
    commits: list[_BlockCommit] = []
    last: dict[str, _BlockCommit] = {}
    for place, event in enumerate(block):
        commit = last.get(event.stream_id)
        if commit is None or len(commit.events) >= COMMIT_EVENTS:
            commit = last[event.stream_id] = _BlockCommit([], [])
            commits.append(commit)
        commit.events.append(event)
        commit.places.append(place)
    return commits


def _members(slot: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``(stream, commit id)`` pairs a slot names, in log order."""
    if "commits" in slot:
        return [(str(stream_id), str(commit_id)) for stream_id, commit_id in slot["commits"]]
    return [(str(slot["stream"]), str(slot["commit"]))]


def _position(slot: int, member: int, version: int) -> str:
    return f"{slot}.{member}:{version}" if member else f"{slot}:{version}"


def _parse_position(position: str | None) -> tuple[int, int, int]:
    if position is None:
        return 0, 0, 0
    try:
        where, _, version = position.partition(":")
        slot, _, member = where.partition(".")
        return int(slot), int(member or 0), int(version)
    except ValueError as e:
        raise ValidationError(f"{position!r} is not a cosmos:// read_all position") from e
