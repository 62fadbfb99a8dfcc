"""The DynamoDB event store (``dynamodb://``).

Appends: one conditional ``TransactWriteItems``
-----------------------------------------------
An append of ``k`` events to a stream at version ``v`` is one transaction of ``2k + 2``
items: the ``k`` event items (``attribute_not_exists``: nobody wrote those versions),
``k`` id guards (``attribute_not_exists``: the ids are new in the whole table), a
condition that the stream is at ``v`` (the item of version ``v`` exists, or the stream is
new: its index entry is put with ``attribute_not_exists``), and the global counter,
updated from ``n`` to ``n + k`` on condition that it is still ``n``.  The events get the
global positions ``n+1 .. n+k``.  The transaction is all-or-nothing, so an append is
atomic, and every position it takes is used by exactly one of its events.
DynamoDB caps a transaction at 100 items and 4 MB, hence :data:`MAX_APPEND_EVENTS` (49)
and :data:`MAX_APPEND_BYTES` (counted as :func:`skyferry.core.ports.event_bytes` and
``stream_bytes``), declared as the store's ``write_limits``; a larger append raises
``ValidationError`` and writes nothing (imports and migrations split their writes to fit).
A cancelled transaction is decided from its cancellation reasons: a changed counter
(another stream appended meanwhile) is retried with backoff; a version or id clash is
resolved by :func:`skyferry.core.ports.resolve_conflict` (idempotent success or
``ConcurrencyError``) after reading the id guards.  ``append_many`` (feature ``transactions_across_streams``)
puts several streams' parts in the same transaction, under the same limits; so does
``bulk_append`` (feature ``bulk_append``: imports and migrations) with already-versioned
events, positions in the order given, assuming the counter its own last call left (one
round trip a call while nobody else writes; a wrong guess fails the counter's condition).

Bulk writes in flight: positions taken ahead
--------------------------------------------
Every transaction that moves the one counter waits for the one before it (DynamoDB refuses
a transaction on an item another one holds), so a ``bulk_append`` larger than one
transaction (feature ``bulk_in_flight``: imports and migrations) takes its positions ahead
instead.  Per block of up to :data:`BLOCK_EVENTS` events, one transaction moves the
counter past all of them and puts one *claim* per part (partition ``x#claims``: the
part's positions and an expiry, ``CLAIM_SECONDS``: 30 s).  The parts (each stream's events
together, cut to :data:`WRITE_LIMITS`) then go ``in_flight`` at a time, each stream's in
order; a part is one transaction of its events, id guards and version checks that deletes
its claim on condition it is still there.  Parts share no item, so they do not conflict,
and a block costs one round trip plus its parts side by side instead of one after another.

Positions a part does not use become *gaps* (partition ``x#gaps``: an index entry with no
event): those of events already stored (a resumed import) in the part's own transaction;
those of parts not stored when the block fails, released by the writer.  A writer that
dies mid-block leaves holes in the index; a reader that stops at a hole settles every
expired claim (gaps and the claim's delete, in one transaction conditioned on the claim),
so a dead writer stalls readers for ``CLAIM_SECONDS`` at most, and its late part, if
it ever arrives, is refused with its claim gone.  Positions therefore stay unique and
ascending, but are no longer dense after a failed or resumed bulk write.

``read_all``: a global sequence plus a gap-aware reader
------------------------------------------------------
The global index ``by_position`` (hash ``g`` = ``"all"``, range ``p``, projecting every
attribute) lists events by global position.  A GSI is eventually consistent: a reader may
see position 12 before 11.  Every position up to the counter is taken by an event, a gap
or a live claim, so the reader returns only the contiguous run after ``after`` (passing
over gaps) and stops before the first hole; the hole is a committed event whose index
entry has not arrived yet, or a part still in flight, so a later call returns it.  Hence
``read_all`` is complete (a tailing reader never skips) and stable (positions and order
never change).  The position is the decimal global sequence number.  ``count_after``
reads the counter, so after gaps it counts them too (a progress bar's total, no more).

Throughput ceiling
------------------
Every append updates the one counter item, so appends are serialized across the table:
one item takes at most 1,000 WCU/s, and a transactional write costs 2 WCU per KB, so the
hard ceiling is about 500 appends/s; in practice contention (a read of the counter and a
conditional transaction per attempt, about two round trips) bounds it near
``1 / (2 * RTT)`` appends/s per table, roughly 100-250 appends/s in-region.  Events/s
scale with the events per append (up to 49).  The ``by_position`` index uses one
partition key value, which DynamoDB splits by heat on the sort key.  Readers are not
limited by the counter.  A higher write rate needs sharded counters with a merge reader,
or DynamoDB Streams feeding a sequencer: not needed for the ledger.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Final

import orjson

from skyferry.adapters import aws
from skyferry.adapters.stores import _blocks
from skyferry.adapters.stores.dynamodb.client import _CONFLICT_ATTEMPTS, _cancellation_codes, _parse, _redacted, _Table
from skyferry.adapters.stores.dynamodb.layout import (
    _CLAIMS,
    _COUNTER_SK,
    _GAPS,
    _GLOBAL,
    _MAX_VERSION_KEY,
    _STREAMS,
    _VERSION_DIGITS,
    ALL,
    MAX_APPEND_BYTES,
    MAX_APPEND_EVENTS,
    MAX_TRANSACTION_ITEMS,
    POSITION_INDEX,
    POSITION_INDEX_HASH,
    POSITION_INDEX_RANGE,
    WRITE_LIMITS,
    _n,
    _s,
    _vkey,
)
from skyferry.core.errors import ConcurrencyError, TransientError, ValidationError
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
    FEATURE_TRANSACTIONS_ACROSS_STREAMS,
    AppendResult,
    ExpectedVersion,
    StreamState,
    WriteLimits,
    event_bytes,
    expected_as_int,
    resolve_conflict,
    stream_bytes,
)

BLOCK_EVENTS: Final = 1000
"""Events whose positions one reservation takes (fewer when their parts would be more than
:data:`MAX_BLOCK_PARTS`, or more than ``PARTS_PER_IN_FLIGHT`` per write in flight)."""
MAX_BLOCK_PARTS: Final = MAX_TRANSACTION_ITEMS - 1
"""Parts of one block: the reservation holds the counter and one claim per part."""


@dataclass(frozen=True, slots=True)
class _Plan:
    versions: int
    counter: int


class DynamoDBEventStore:
    """Event store on one DynamoDB table: conditional transactions, one global sequence.

    See the module docstring for the ``read_all`` design and its throughput ceiling, and
    :mod:`skyferry.adapters.stores.dynamodb.layout` for the item layout.  ``client`` is a
    boto3 DynamoDB client (tests hand in one pointed at moto); without it one is built on
    first use from the URL's options.
    """

    features: frozenset[str] = frozenset(
        {FEATURE_BULK_APPEND, FEATURE_BULK_IN_FLIGHT, FEATURE_COUNT, FEATURE_TRANSACTIONS_ACROSS_STREAMS}
    )
    write_limits: WriteLimits = WRITE_LIMITS

    def __init__(self, table: str, *, client: Any | None = None, options: aws.AwsOptions | None = None) -> None:
        options = options or aws.AwsOptions()
        self.url = _redacted(table, options)
        self.identity = ("dynamodb", options.region or "", options.endpoint or "", table)
        self._table = _Table(table, client, options, self.url)
        self._bulk_counter: int | None = None  # the counter after this instance's last bulk_append
        self._parts = _blocks.PartPool("skyferry-dynamodb")  # bulk_append's parts in flight
        self._bulk_lock = threading.Lock()  # one bulk_append at a time: its counter guess, its pool

    @classmethod
    def from_url(cls, url: str, *, existing: bool = False) -> DynamoDBEventStore:
        """Open ``dynamodb://TABLE?region=...`` (no I/O).  The adapter never creates its table,
        so ``existing`` changes nothing: a missing table is a ``ConfigurationError`` naming it."""
        table, options = _parse(url)
        return cls(table, options=options)

    # --- writing ---------------------------------------------------------------------------

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> AppendResult:
        """Append atomically with one conditional ``TransactWriteItems`` (see the module docstring)."""
        return self._append_batch([(stream_id, events, expected_version)])[0]

    def append_many(self, batch: Sequence[tuple[str, Sequence[NewEvent], ExpectedVersion]]) -> list[AppendResult]:
        """Several streams' appends in one transaction: all of them, or none.

        The same limits as one append hold for the whole batch: ``2 * events + streams + 1``
        items (at most 100) and :data:`MAX_APPEND_BYTES`.
        """
        if not batch:
            return []
        return self._append_batch(list(batch))

    def _append_batch(self, batch: list[tuple[str, Sequence[NewEvent], ExpectedVersion]]) -> list[AppendResult]:
        recorded = utc_now()
        plans: list[tuple[str, Sequence[NewEvent], ExpectedVersion, int | None, list[tuple[NewEvent, str, str]]]] = []
        size = 0
        for stream_id, events, expected_version in batch:
            check_append(stream_id, list(events))
            encoded = []
            for event in events:
                data, metadata = encode_json(event.data), encode_json(event.metadata)
                size += event_bytes(len(data) + len(metadata), event.type, stream_id)
                encoded.append((event, data.decode(), metadata.decode()))
            size += stream_bytes(stream_id)
            plans.append((stream_id, events, expected_version, expected_as_int(expected_version), encoded))
        names = [plan[0] for plan in plans]
        if len(set(names)) != len(names):
            raise ValidationError("append_many: a stream appears twice in one batch; merge its events")
        total = sum(len(plan[1]) for plan in plans)
        if 2 * total + len(plans) + 1 > MAX_TRANSACTION_ITEMS:
            raise ValidationError(
                f"stream {names[0]!r}: {total} events in one append; DynamoDB transactions hold at most "
                f"{MAX_APPEND_EVENTS} events (write_limits): split the append"
            )
        WriteLimits(bytes=MAX_APPEND_BYTES).check(total, names, size, f"stream {names[0]!r}")
        results: dict[int, AppendResult] = {}
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            pending = [i for i in range(len(plans)) if i not in results]
            if not pending:
                break
            versions: dict[int, int] = {}
            for i in pending:
                wanted = plans[i][3]
                versions[i] = wanted if wanted is not None else self.stream_version(plans[i][0])
            counter = self._counter()
            items: list[dict[str, Any]] = []
            segments: dict[int, tuple[int, int]] = {}
            position = counter
            for i in pending:
                stream_id, _, _, _, encoded = plans[i]
                segments[i] = (len(items), len(encoded))
                items += self._stream_items(stream_id, encoded, recorded, versions[i], position)
                position += len(encoded)
            items.append(self._counter_item(counter, position))
            cancelled = self._table.transact(items)
            if cancelled is None:
                for i in pending:
                    results[i] = AppendResult(plans[i][0], versions[i] + 1, versions[i] + len(plans[i][1]))
                break
            codes = _cancellation_codes(cancelled)
            settled = False
            unexplained = False
            for i in pending:
                start, k = segments[i]
                segment = codes[start : start + 2 * k + 1]
                guard_clash = any(c == "ConditionalCheckFailed" for c in segment[k : 2 * k])
                version_clash = any(c == "ConditionalCheckFailed" for c in segment[:k] + segment[2 * k :])
                if guard_clash or (version_clash and plans[i][3] is not None):
                    stream_id, events, expected_version, _, _ = plans[i]
                    # raises ConcurrencyError, or the stream's part is already stored (idempotent)
                    results[i] = self._resolve(stream_id, events, expected_version, cancelled)
                    settled = True
                elif any(c not in ("None", "TransactionConflict", "ConditionalCheckFailed") for c in segment):
                    unexplained = True
            if unexplained and not settled:
                raise TransientError(f"stream {names[0]!r}: DynamoDB cancelled the append for reasons {codes}") from (
                    cancelled
                )
            if not settled:
                time.sleep(aws.backoff(attempt, base=0.01, cap=0.5))
        else:
            raise TransientError(
                f"stream {names[0]!r}: the append lost the race for the global counter {_CONFLICT_ATTEMPTS} times"
            )
        return [results[i] for i in range(len(plans))]

    def bulk_append(self, events: Sequence[Event], in_flight: int = 1) -> int:
        """Store already-versioned events of several streams; return how many were new.

        Positions follow the order given (an import keeps its archive's global order).  Events
        already stored with the same ids at the same versions are skipped (a resumed import).
        A call that fits one transaction (:data:`WRITE_LIMITS`) is one transaction, atomic,
        that moves the counter itself; the counter this instance left is assumed still current
        (one round trip per call while nobody else writes; a wrong guess fails the counter's
        condition, which re-reads it).  A larger call is cut into blocks of positions taken
        ahead, whose parts go ``in_flight`` at a time (see the module docstring).
        """
        _blocks.check_events(events)
        if not events:
            return 0
        with self._bulk_lock:
            return self._bulk_append(events, in_flight)

    def _bulk_append(self, events: Sequence[Event], in_flight: int) -> int:
        most_parts = min(MAX_BLOCK_PARTS, _blocks.PARTS_PER_IN_FLIGHT * in_flight)
        blocks = list(_blocks.blocks(events, WRITE_LIMITS, BLOCK_EVENTS, most_parts))
        if len(blocks) == 1 and len(blocks[0][1]) == 1:
            return self._bulk_transaction(list(events))
        recorded = utc_now()
        return sum(self._bulk_block(block, parts, in_flight, recorded) for block, parts in blocks)

    def _bulk_transaction(self, events: list[Event]) -> int:
        """``events`` (one transaction's worth) in one transaction that moves the counter too."""
        pending = events
        streams = list(dict.fromkeys(event.stream_id for event in pending))
        size = sum(
            event_bytes(len(encode_json(e.data)) + len(encode_json(e.metadata)), e.type, e.stream_id) for e in pending
        ) + sum(stream_bytes(stream_id) for stream_id in streams)
        WriteLimits(bytes=MAX_APPEND_BYTES).check(len(pending), streams, size, f"stream {streams[0]!r}")
        recorded = utc_now()
        total = len(pending)
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            _blocks.check_contiguous(pending, self.stream_version)
            by_stream = _blocks.by_stream(pending)
            counter = self._bulk_counter if self._bulk_counter is not None else self._counter()
            position = {event.id: counter + 1 + i for i, event in enumerate(pending)}
            items = self._runs_items(by_stream, position, recorded)
            items.append(self._counter_item(counter, counter + len(pending)))
            cancelled = self._table.transact(items)
            if cancelled is None:
                self._bulk_counter = counter + len(pending)
                return len(pending)
            codes = _cancellation_codes(cancelled)
            if "ConditionalCheckFailed" in codes[:-1]:  # an event, an id or a version is taken
                pending = self._bulk_unstored(pending, cancelled)
                if not pending:
                    return 0
                total = len(pending)
                continue
            if any(c not in ("None", "TransactionConflict", "ConditionalCheckFailed") for c in codes):
                raise TransientError(f"stream {streams[0]!r}: DynamoDB cancelled the write for reasons {codes}") from (
                    cancelled
                )
            self._bulk_counter = None  # the counter moved (another writer): read it again
            if codes and codes[-1] != "ConditionalCheckFailed":
                time.sleep(aws.backoff(attempt, base=0.01, cap=0.5))
        raise TransientError(
            f"stream {streams[0]!r}: the write lost the race for the global counter {_CONFLICT_ATTEMPTS} times "
            f"({total} events)"
        )

    def _runs_items(
        self, by_stream: dict[str, list[Event]], position: dict[str, int], recorded: datetime
    ) -> list[dict[str, Any]]:
        """The items of each stream's run: its events at ``position``, their id guards, its version check."""
        items: list[dict[str, Any]] = []
        for stream_id, run in by_stream.items():
            encoded = [(e.to_new(), encode_json(e.data).decode(), encode_json(e.metadata).decode()) for e in run]
            positions = [position[e.id] for e in run]
            items += self._stream_items(stream_id, encoded, recorded, run[0].version - 1, 0, positions)
        return items

    # --- blocks: positions taken ahead, parts in flight --------------------------------------

    def _bulk_block(self, events: Sequence[Event], parts: list[list[Event]], in_flight: int, recorded: datetime) -> int:
        """Take the positions of ``events`` (one reservation), then write ``parts`` ``in_flight`` at a time."""
        _blocks.check_contiguous(events, self.stream_version)
        claims = self._reserve(events, parts)
        return self._parts.run(parts, claims, in_flight, partial(self._write_part, recorded=recorded), self._settle)

    def _reserve(self, events: Sequence[Event], parts: list[list[Event]]) -> list[_blocks.Claim]:
        """Move the counter past ``events`` and put one claim per part, in one transaction."""
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            counter = self._bulk_counter if self._bulk_counter is not None else self._counter()
            position = {event.id: counter + 1 + i for i, event in enumerate(events)}
            claims = _blocks.claims(counter + 1, parts, position)
            items = [self._counter_item(counter, counter + len(events))]
            for claim in claims:
                item = {
                    **self._claim_key(claim),
                    "ps": {"NS": [str(p) for p in claim.positions]},
                    "exp": _n(claim.expires),
                }
                items.append({"Put": {"TableName": self._table.name, "Item": item}})
            cancelled = self._table.transact(items)
            if cancelled is None:
                self._bulk_counter = counter + len(events)
                return claims
            codes = _cancellation_codes(cancelled)
            if any(c not in ("None", "TransactionConflict", "ConditionalCheckFailed") for c in codes):
                raise TransientError(
                    f"{self.url}: DynamoDB cancelled the reservation of {len(events)} positions for reasons {codes}"
                ) from cancelled
            self._bulk_counter = None  # the counter moved (another writer): read it again
            if codes[0] != "ConditionalCheckFailed":
                time.sleep(aws.backoff(attempt, base=0.01, cap=0.5))
        raise TransientError(
            f"{self.url}: the reservation of {len(events)} positions lost the race for the global counter "
            f"{_CONFLICT_ATTEMPTS} times"
        )

    def _write_part(self, part: Sequence[Event], claim: _blocks.Claim, recorded: datetime) -> int:
        """One part at its reserved positions, in one transaction that deletes its claim.

        Events already stored as they are (a resumed import) leave their positions as gaps.
        A claim already gone means a reader settled it after it expired: the part is not
        stored, and :class:`TransientError` says to run the command again."""
        position = dict(zip((event.id for event in part), claim.positions, strict=True))
        pending = list(part)
        gaps: list[int] = []
        codes: list[str] = []
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            items = self._runs_items(_blocks.by_stream(pending), position, recorded)
            items += [self._gap_item(p) for p in gaps]
            items.append(self._claim_delete(claim))
            cancelled = self._table.transact(items)
            if cancelled is None:
                return len(pending)
            codes = _cancellation_codes(cancelled)
            if "ConditionalCheckFailed" in codes[:-1]:  # an event, an id or a version is taken
                left = self._bulk_unstored(pending, cancelled)
                if codes[-1] == "ConditionalCheckFailed":  # the claim is gone
                    if not left:
                        return 0  # stored, claim deleted: by this very write, whose reply was lost
                    raise self._expired(part) from cancelled
                kept = {event.id for event in left}
                gaps += [position[event.id] for event in pending if event.id not in kept]
                pending = left
                continue
            if codes[-1] == "ConditionalCheckFailed":
                raise self._expired(part) from cancelled
            if any(c not in ("None", "TransactionConflict") for c in codes):
                raise TransientError(
                    f"stream {part[0].stream_id!r}: DynamoDB cancelled the write for reasons {codes}"
                ) from cancelled
            time.sleep(aws.backoff(attempt, base=0.01, cap=0.5))
        raise TransientError(f"stream {part[0].stream_id!r}: DynamoDB kept cancelling the write ({codes})")

    @staticmethod
    def _expired(part: Sequence[Event]) -> TransientError:
        return TransientError(
            f"stream {part[0].stream_id!r}: the positions taken for this write expired before it was stored "
            "and a reader passed over them; run the command again"
        )

    @staticmethod
    def _claim_key(claim: _blocks.Claim) -> dict[str, Any]:
        return {"pk": _s(_CLAIMS), "sk": _s(claim.name)}

    def _claim_delete(self, claim: _blocks.Claim) -> dict[str, Any]:
        """Delete ``claim``, on condition that it is still there (nobody settled it)."""
        return {
            "Delete": {
                "TableName": self._table.name,
                "Key": self._claim_key(claim),
                "ConditionExpression": "attribute_exists(pk)",
            }
        }

    def _gap_item(self, position: int) -> dict[str, Any]:
        """A position that holds no event, in the ``by_position`` index (``read_all`` passes it)."""
        return {
            "Put": {
                "TableName": self._table.name,
                "Item": {
                    "pk": _s(_GAPS),
                    "sk": _s(f"{position:020d}"),
                    POSITION_INDEX_HASH: _s(ALL),
                    POSITION_INDEX_RANGE: _n(position),
                },
            }
        }

    def _settle(self, claim: _blocks.Claim) -> bool:
        """Make ``claim``'s positions gaps and delete it, in one transaction; ``False`` when
        its part was stored first (or it was settled already)."""
        return self._table.transact([*(self._gap_item(p) for p in claim.positions), self._claim_delete(claim)]) is None

    def _settle_expired(self) -> bool:
        """Settle every expired claim (a writer that died mid-block); whether any was."""

        def listed() -> Iterator[_blocks.Claim]:
            for item in self._table.query_pages(
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": _s(_CLAIMS)},
                ConsistentRead=True,
            ):
                positions = tuple(sorted(int(p) for p in item["ps"]["NS"]))
                yield _blocks.Claim(item["sk"]["S"], positions, int(item["exp"]["N"]))

        return _blocks.settle_expired(listed, self._settle, self.url)

    def _bulk_unstored(self, events: list[Event], cause: Exception) -> list[Event]:
        """``events`` less those already stored as they are; ``ConcurrencyError`` when one clashes."""
        guards = self._table.batch_get(
            [{"pk": _s(f"e#{event.id}"), "sk": _s("id")} for event in events], projection="pk, st, v"
        )
        stored = {item["pk"]["S"][2:]: (item["st"]["S"], int(item["v"]["N"])) for item in guards}
        left: list[Event] = []
        for event in events:
            at = stored.get(event.id)
            if at is None:
                left.append(event)
            elif at != (event.stream_id, event.version):
                raise ConcurrencyError(
                    event.stream_id,
                    event.version - 1,
                    self.stream_version(event.stream_id),
                    f"event id {event.id} is already stored in stream {at[0]!r} at version {at[1]}",
                ) from cause
        if len(left) == len(events):  # nothing of it stored: a stream is not where the events continue it
            firsts = {event.stream_id: event for event in reversed(events)}
            for stream_id, first in reversed(firsts.items()):
                actual = self.stream_version(stream_id)
                if actual != first.version - 1:
                    raise ConcurrencyError(
                        stream_id,
                        first.version - 1,
                        actual,
                        f"event {first.id} at version {first.version} does not continue the stream",
                    ) from cause
            raise TransientError(f"stream {events[0].stream_id!r}: DynamoDB refused the write; retry it") from cause
        return left

    def _resolve(
        self, stream_id: str, events: Sequence[NewEvent], expected: ExpectedVersion, cause: Exception
    ) -> AppendResult:
        guards = self._table.batch_get(
            [{"pk": _s(f"e#{event.id}"), "sk": _s("id")} for event in events], projection="pk, st, v"
        )
        stored = {
            item["pk"]["S"][2:]: int(item["v"]["N"]) for item in guards if item.get("st", {}).get("S") == stream_id
        }
        actual = self.stream_version(stream_id)
        if guards and not stored:
            raise ConcurrencyError(
                stream_id,
                expected.value if isinstance(expected, StreamState) else expected,
                actual,
                "an event id is already stored in another stream",
            ) from cause
        try:
            return resolve_conflict(stream_id, events, expected, actual, stored)
        except ConcurrencyError as e:
            raise e from cause

    def _stream_items(
        self,
        stream_id: str,
        encoded: list[tuple[NewEvent, str, str]],
        recorded: datetime,
        versions: int,
        counter: int,
        positions: Sequence[int] | None = None,
    ) -> list[dict[str, Any]]:
        """One stream's part of an append: events, id guards, then the version check (the
        events take the positions after ``counter``, or ``positions`` when given)."""
        plan = _Plan(versions, counter)
        table = self._table.name
        pk = _s(f"s#{stream_id}")
        not_exists = "attribute_not_exists(pk)"
        events: list[dict[str, Any]] = []
        guards: list[dict[str, Any]] = []
        for i, (event, data, metadata) in enumerate(encoded):
            version = plan.versions + 1 + i
            events.append(
                {
                    "Put": {
                        "TableName": table,
                        "Item": {
                            "pk": pk,
                            "sk": _s(_vkey(version)),
                            "id": _s(event.id),
                            "t": _s(event.type),
                            "sv": _n(event.schema_version),
                            "d": _s(data),
                            "m": _s(metadata),
                            "oa": _n(to_micros(event.occurred_at)),
                            "ra": _n(to_micros(event.recorded_at or recorded)),
                            POSITION_INDEX_HASH: _s(ALL),
                            POSITION_INDEX_RANGE: _n(plan.counter + 1 + i if positions is None else positions[i]),
                        },
                        "ConditionExpression": not_exists,
                    }
                }
            )
            guards.append(
                {
                    "Put": {
                        "TableName": table,
                        "Item": {"pk": _s(f"e#{event.id}"), "sk": _s("id"), "st": _s(stream_id), "v": _n(version)},
                        "ConditionExpression": not_exists,
                    }
                }
            )
        if plan.versions == 0:
            stream_check: dict[str, Any] = {
                "Put": {
                    "TableName": table,
                    "Item": {"pk": _s(_STREAMS), "sk": _s(stream_id)},
                    "ConditionExpression": not_exists,
                }
            }
        else:
            stream_check = {
                "ConditionCheck": {
                    "TableName": table,
                    "Key": {"pk": pk, "sk": _s(_vkey(plan.versions))},
                    "ConditionExpression": "attribute_exists(pk)",
                }
            }
        return [*events, *guards, stream_check]

    def _counter_item(self, old: int, new: int) -> dict[str, Any]:
        """The global counter moved from ``old`` to ``new``, on condition it is still ``old``."""
        table = self._table.name
        not_exists = "attribute_not_exists(pk)"
        counter_key = {"pk": _s(_GLOBAL), "sk": _s(_COUNTER_SK)}
        new_counter = _n(new)
        if old == 0:
            counter: dict[str, Any] = {
                "Put": {
                    "TableName": table,
                    "Item": {**counter_key, "p": new_counter},
                    "ConditionExpression": not_exists,
                }
            }
        else:
            counter = {
                "Update": {
                    "TableName": table,
                    "Key": counter_key,
                    "UpdateExpression": "SET p = :new",
                    "ConditionExpression": "p = :old",
                    "ExpressionAttributeValues": {":new": new_counter, ":old": _n(old)},
                }
            }
        return counter

    def _counter(self) -> int:
        response = self._table.call("get_item", Key={"pk": _s(_GLOBAL), "sk": _s(_COUNTER_SK)}, ConsistentRead=True)
        item = response.get("Item")
        return int(item["p"]["N"]) if item else 0

    # --- reading ---------------------------------------------------------------------------

    @staticmethod
    def _event(item: dict[str, Any], stream_id: str | None = None) -> Event:
        sid = stream_id if stream_id is not None else item["pk"]["S"][2:]
        return Event(
            id=item["id"]["S"],
            stream_id=sid,
            version=int(item["sk"]["S"]),
            type=item["t"]["S"],
            schema_version=int(item["sv"]["N"]),
            data=orjson.loads(item["d"]["S"]),
            metadata=orjson.loads(item["m"]["S"]),
            occurred_at=from_micros(int(item["oa"]["N"])),
            recorded_at=from_micros(int(item["ra"]["N"])),
        )

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[Event]:
        """The stream's events in a version range (consistent ``Query`` pages)."""
        validate_stream_id(stream_id)
        low = max(from_version, 1)
        high = to_version if to_version is not None else 10**_VERSION_DIGITS - 1
        if high < low or (limit is not None and limit <= 0):
            return []
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {
                ":pk": _s(f"s#{stream_id}"),
                ":low": _s(_vkey(low)),
                ":high": _s(_vkey(high)),
            },
            "ConsistentRead": True,
            "ScanIndexForward": not backwards,
        }
        if limit is not None:
            kwargs["Limit"] = limit
        events: list[Event] = []
        for item in self._table.query_pages(**kwargs):
            events.append(self._event(item, stream_id))
            if limit is not None and len(events) >= limit:
                break
        return events

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event (one consistent ``Query`` of one item)."""
        validate_stream_id(stream_id)
        response = self._table.call(
            "query",
            KeyConditionExpression="pk = :pk AND sk <= :high",
            ExpressionAttributeValues={":pk": _s(f"s#{stream_id}"), ":high": _s(_MAX_VERSION_KEY)},
            ProjectionExpression="sk",
            ConsistentRead=True,
            ScanIndexForward=False,
            Limit=1,
        )
        items = response.get("Items", [])
        return int(items[0]["sk"]["S"]) if items else 0

    def list_streams(self, prefix: str = "") -> Iterator[str]:
        """Stream ids from the stream index partition, ascending."""
        values: dict[str, Any] = {":pk": _s(_STREAMS)}
        condition = "pk = :pk"
        if prefix:
            condition += " AND begins_with(sk, :prefix)"
            values[":prefix"] = _s(prefix)
        for item in self._table.query_pages(
            KeyConditionExpression=condition, ExpressionAttributeValues=values, ConsistentRead=True
        ):
            yield item["sk"]["S"]

    def read_all(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """The contiguous run of events after ``after`` from the ``by_position`` index.

        Gaps (positions a failed bulk write did not use) are passed over.  At a hole, expired
        claims are settled once (a writer died mid-block) and the index is read again."""
        if limit <= 0:
            return []
        try:
            last = int(after) if after is not None else 0
        except ValueError as e:
            raise ValidationError(f"{after!r} is not a position of {self.url}") from e
        events: list[Event] = []
        settled = False
        while True:
            hole = False
            for item in self._table.query_pages(
                IndexName=POSITION_INDEX,
                KeyConditionExpression="g = :g AND p > :after",
                ExpressionAttributeValues={":g": _s(ALL), ":after": _n(last)},
                Limit=min(limit, 1000),
            ):
                position = int(item[POSITION_INDEX_RANGE]["N"])
                if position != last + 1:
                    hole = True  # a committed event not yet in the index, or a part still in flight
                    break
                last = position
                if "id" not in item:
                    continue  # a gap
                events.append(self._event(item).with_position(str(position)))
                if len(events) >= limit:
                    break
            if not hole or settled or not self._settle_expired():
                return events
            settled = True

    def count_after(self, after: str | None = None) -> int:
        """How many positions follow ``after`` (feature ``count``: one read of the counter; gaps count too)."""
        try:
            last = int(after) if after is not None else 0
        except ValueError as e:
            raise ValidationError(f"{after!r} is not a position of {self.url}") from e
        return max(self._counter() - last, 0)

    def last_position(self) -> str | None:
        """The position of the last event in the ``by_position`` index (gaps passed over).

        One item read while the last position holds an event (readiness probes call this
        every few seconds); gaps at the end are read past in pages of 100."""
        kwargs: dict[str, Any] = {
            "IndexName": POSITION_INDEX,
            "KeyConditionExpression": "g = :g",
            "ExpressionAttributeValues": {":g": _s(ALL)},
            "ProjectionExpression": "#p, #id",
            "ExpressionAttributeNames": {"#p": POSITION_INDEX_RANGE, "#id": "id"},
            "ScanIndexForward": False,
            "Limit": 1,
        }
        while True:
            page = self._table.call("query", **kwargs)
            for item in page.get("Items", []):
                if "id" in item:
                    return str(item[POSITION_INDEX_RANGE]["N"])
            if not page.get("LastEvaluatedKey"):
                return None
            kwargs.update(ExclusiveStartKey=page["LastEvaluatedKey"], Limit=100)

    def close(self) -> None:
        """Stop the threads of ``bulk_append``'s parts in flight (boto3 clients hold pooled connections only)."""
        self._parts.close()
