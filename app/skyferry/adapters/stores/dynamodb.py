"""DynamoDB event store and view store (``dynamodb://``), on one table.

URL
---
``dynamodb://TABLE?region=eu-west-1``

``TABLE``
    The table (created by ``providers/aws`` from :func:`table_spec`; tests and local use
    call :func:`create_table`).
``region``, ``profile``, ``attempts``
    See :mod:`skyferry.adapters.aws`.
``endpoint``
    A custom endpoint (moto server, DynamoDB Local): **for tests and local use**.

Table layout (single-table design; ``pk`` and ``sk`` are strings)
-----------------------------------------------------------------
=====================  =====================  =================================================
pk                     sk                     what
=====================  =====================  =================================================
``s#<stream id>``      version, 10 digits     one event (``id``, ``t``, ``sv``, ``d``, ``m``,
                                              ``oa``, ``ra`` and its global position ``p``)
``e#<event id>``       ``id``                 id guard: where the event id is stored
``x#streams``          stream id              the stream index (``list_streams``)
``x#global``           ``position``           the global counter ``p`` (last position used)
``v#<collection>``     document key           a read-model document ``d`` with revision ``r``
``c#<projection>``     checkpoint key         a projection checkpoint ``val``
=====================  =====================  =================================================

``data`` and ``metadata`` are kept as canonical JSON text (``d``, ``m``), so numbers,
``null`` and empty objects round-trip exactly (a DynamoDB map would turn floats into
decimals).  An event item is at most 192 KiB of payload plus a bounded envelope, well
under DynamoDB's 400 KB item limit.

Appends: one conditional ``TransactWriteItems``
-----------------------------------------------
An append of ``k`` events to a stream at version ``v`` is one transaction of ``2k + 2``
items: the ``k`` event items (``attribute_not_exists``: nobody wrote those versions),
``k`` id guards (``attribute_not_exists``: the ids are new in the whole table), a
condition that the stream is at ``v`` (the item of version ``v`` exists, or the stream is
new: its index entry is put with ``attribute_not_exists``), and the global counter,
updated from ``n`` to ``n + k`` on condition that it is still ``n``.  The events get the
global positions ``n+1 .. n+k``.  The transaction is all-or-nothing, so an append is
atomic and positions are dense: every position is used by exactly one committed event.
DynamoDB caps a transaction at 100 items and 4 MB, hence :data:`MAX_APPEND_EVENTS` (49)
and :data:`MAX_APPEND_BYTES` (counted as :func:`skyferry.core.ports.event_bytes` and
``stream_bytes``), declared as the store's ``write_limits``; a larger append raises
``ValidationError`` and writes nothing (imports and migrations split their writes to fit).
A cancelled transaction is decided from its cancellation reasons: a changed counter
(another stream appended meanwhile) is retried with backoff; a version or id clash is
resolved by :func:`skyferry.core.ports.resolve_conflict` (idempotent success or
``ConcurrencyError``) after reading the id guards.  ``append_many`` (feature ``transactions_across_streams``)
puts several streams' parts in the same transaction, under the same limits.

``read_all``: a global sequence plus a gap-aware reader
------------------------------------------------------
The global index ``by_position`` (hash ``g`` = ``"all"``, range ``p``, projecting every
attribute) lists events by global position.  A GSI is eventually consistent: a reader may
see position 12 before 11.  Because positions are dense, the reader returns only the
contiguous run after ``after`` and stops before the first hole; the hole is a committed
event whose index entry has not arrived yet, so the next call returns it.  Hence
``read_all`` is complete (a tailing reader never skips) and stable (positions and order
never change).  The position is the decimal global sequence number.

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

Requests (measured by ``tests/integration/adapters/test_dynamodb.py``)
----------------------------------------------------------------------
* append with an explicit expected version: 2 requests (``GetItem`` of the counter,
  ``TransactWriteItems``); with ``ANY``: 3 (plus a ``Query`` for the version).
  1,000 events in appends of 10 events: 200 requests; in appends of 49: 42.
* ``read_stream`` and ``read_all``: one ``Query`` per 1 MB page (or per ``limit``).
* views: ``get_many`` one ``BatchGetItem`` per 100 keys; ``commit`` one
  ``TransactWriteItems``; ``drop`` one ``Query`` page plus one ``BatchWriteItem`` per 25.

View store
----------
Documents live in ``v#<collection>``; ``query`` reads that partition in key order
(``begins_with`` on the key for a prefix) and filters on ``where`` as it reads, the same
cost as a DynamoDB filter expression.  ``commit`` is one ``TransactWriteItems`` with every
document change (conditional on ``expected_revision``) and every checkpoint entry when
they fit DynamoDB's 100 items; a larger commit goes through a commit record
(``t#<id>``): lock every document in transactions of 100 (the lock holds the new value and
checks the revision), flip the record to ``committed`` together with the checkpoint (the
commit point), roll the values forward, delete the record.  Readers resolve a locked
document through its record, so a commit is seen whole or not at all, and a crash at any
step leaves either nothing or a committed record that the next writer rolls forward.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

import orjson

from skyferry.adapters import aws
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
    FEATURE_COUNT,
    FEATURE_TRANSACTIONS_ACROSS_STREAMS,
    AppendResult,
    Doc,
    ExpectedVersion,
    StreamState,
    ViewChange,
    WriteLimits,
    event_bytes,
    expected_as_int,
    resolve_conflict,
    stream_bytes,
)

# --- the table: imported by providers/aws so that infra and adapter cannot drift ----------

PARTITION_KEY: Final = "pk"
SORT_KEY: Final = "sk"
POSITION_INDEX: Final = "by_position"
POSITION_INDEX_HASH: Final = "g"
POSITION_INDEX_RANGE: Final = "p"
ALL: Final = "all"

ATTRIBUTE_DEFINITIONS: Final = (
    {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
    {"AttributeName": SORT_KEY, "AttributeType": "S"},
    {"AttributeName": POSITION_INDEX_HASH, "AttributeType": "S"},
    {"AttributeName": POSITION_INDEX_RANGE, "AttributeType": "N"},
)
KEY_SCHEMA: Final = (
    {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
    {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
)
GLOBAL_SECONDARY_INDEXES: Final[tuple[dict[str, Any], ...]] = (
    {
        "IndexName": POSITION_INDEX,
        "KeySchema": [
            {"AttributeName": POSITION_INDEX_HASH, "KeyType": "HASH"},
            {"AttributeName": POSITION_INDEX_RANGE, "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    },
)

#: The API operations the adapters in this module call, and the IAM actions each needs
#: (a transaction is authorized per item: put, update, delete, condition check).
IAM_ACTIONS_BY_OPERATION: Final[dict[str, tuple[str, ...]]] = {
    "GetItem": ("dynamodb:GetItem",),
    "Query": ("dynamodb:Query",),
    "BatchGetItem": ("dynamodb:BatchGetItem",),
    "BatchWriteItem": ("dynamodb:BatchWriteItem",),
    "TransactWriteItems": (
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:ConditionCheckItem",
    ),
}
#: Every IAM action the task role needs on the table and its index.
IAM_ACTIONS: Final = tuple(sorted({a for actions in IAM_ACTIONS_BY_OPERATION.values() for a in actions}))

MAX_TRANSACTION_ITEMS: Final = 100
MAX_APPEND_EVENTS: Final = (MAX_TRANSACTION_ITEMS - 2) // 2
#: Bytes of one append as :func:`event_bytes` / :func:`stream_bytes` count them (DynamoDB:
#: 4 MB per transaction, keys and attribute names included; the rest is the counter's).
MAX_APPEND_BYTES: Final = 3_800_000
#: What the writes of imports and migrations are cut to (one stream's append: 2k + 2 items).
WRITE_LIMITS: Final = WriteLimits(events=MAX_APPEND_EVENTS + 1, per_stream=1, bytes=MAX_APPEND_BYTES)
MAX_COMMIT_ITEMS: Final = MAX_TRANSACTION_ITEMS

_VERSION_DIGITS: Final = 10
_MAX_VERSION_KEY: Final = "9" * _VERSION_DIGITS
_STREAMS: Final = "x#streams"
_GLOBAL: Final = "x#global"
_COUNTER_SK: Final = "position"
_CONFLICT_ATTEMPTS: Final = 64
#: A large view commit whose record stays pending this long is presumed dead and rolled back.
STALE_LOCK_SECONDS: Final = 120


def table_spec(name: str) -> dict[str, Any]:
    """The ``CreateTable`` arguments of the table the adapters expect (on-demand billing)."""
    return {
        "TableName": name,
        "AttributeDefinitions": [dict(a) for a in ATTRIBUTE_DEFINITIONS],
        "KeySchema": [dict(k) for k in KEY_SCHEMA],
        "GlobalSecondaryIndexes": [
            {**index, "KeySchema": [dict(k) for k in index["KeySchema"]]} for index in GLOBAL_SECONDARY_INDEXES
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_table(client: Any, name: str) -> None:
    """Create the table and wait until it is active: for tests and local use."""
    client.create_table(**table_spec(name))
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})


def _vkey(version: int) -> str:
    return f"{version:0{_VERSION_DIGITS}d}"


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _cancellation_codes(error: Exception) -> list[str]:
    reasons = getattr(error, "response", {}).get("CancellationReasons", [])
    return [str(reason.get("Code", "None")) for reason in reasons]


class _Table:
    """The client, table name and retry policy shared by the event and view stores."""

    def __init__(self, table: str, client: Any | None, options: aws.AwsOptions, url: str) -> None:
        if not table:
            raise ConfigurationError("dynamodb:// URL names no table: dynamodb://TABLE?region=...")
        self.name = table
        self.options = options
        self.url = url
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.make_client("dynamodb", self.options)
        return self._client

    def call(self, operation: str, **kwargs: Any) -> Any:
        """Call ``operation`` on the table with retries and error translation."""
        what = f"DynamoDB table {self.name!r} ({operation})"
        try:
            return aws.call(getattr(self.client, operation), what, self.options.attempts, TableName=self.name, **kwargs)
        except ConfigurationError as e:
            if aws.error_code(e.__cause__ or e) == "ResourceNotFoundException":
                raise ConfigurationError(
                    f"DynamoDB table {self.name!r} does not exist in region "
                    f"{self.client.meta.region_name}: create it (pulumi up) or fix the URL"
                ) from e.__cause__
            raise

    def raw(self, operation: str, **kwargs: Any) -> Any:
        """Call an operation that names its tables itself (transactions, batches)."""
        what = f"DynamoDB table {self.name!r} ({operation})"
        return aws.call(getattr(self.client, operation), what, self.options.attempts, **kwargs)

    def query_pages(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every item of a ``Query``, page by page (``Limit`` is per page)."""
        while True:
            page = self.call("query", **kwargs)
            yield from page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    def batch_get(self, keys: Sequence[dict[str, Any]], projection: str | None = None) -> list[dict[str, Any]]:
        """``BatchGetItem`` with consistent reads, 100 keys per request, unprocessed keys retried."""
        items: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {"Keys": list(keys[start : start + 100]), "ConsistentRead": True}
            if projection:
                request["ProjectionExpression"] = projection
            pending: dict[str, Any] = {self.name: request}
            attempt = 0
            while pending:
                response = self.raw("batch_get_item", RequestItems=pending)
                items.extend(response.get("Responses", {}).get(self.name, []))
                pending = response.get("UnprocessedKeys") or {}
                if pending:
                    attempt += 1
                    if attempt >= self.options.attempts:
                        raise TransientError(f"DynamoDB table {self.name!r}: BatchGetItem kept throttling")
                    time.sleep(aws.backoff(attempt))
        return items

    def batch_delete(self, keys: Sequence[dict[str, Any]]) -> None:
        """``BatchWriteItem`` deletes, 25 per request, unprocessed items retried."""
        for start in range(0, len(keys), 25):
            pending: dict[str, Any] = {self.name: [{"DeleteRequest": {"Key": key}} for key in keys[start : start + 25]]}
            attempt = 0
            while pending:
                response = self.raw("batch_write_item", RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if pending:
                    attempt += 1
                    if attempt >= self.options.attempts:
                        raise TransientError(f"DynamoDB table {self.name!r}: BatchWriteItem kept throttling")
                    time.sleep(aws.backoff(attempt))

    def transact(self, items: list[dict[str, Any]]) -> Exception | None:
        """Run ``TransactWriteItems``; return the cancellation (with its reasons) or ``None``."""
        from botocore.exceptions import ClientError

        try:
            self.raw("transact_write_items", TransactItems=items)
        except ClientError as e:
            if aws.error_code(e) == "TransactionCanceledException":
                return e
            raise
        return None


def _parse(url: str) -> tuple[str, aws.AwsOptions]:
    netloc, path, options = aws.parse_options(url)
    table = netloc or path
    unknown = sorted(options.extra or {})
    if unknown:
        raise ConfigurationError(
            f"dynamodb:// URL has unknown options {unknown}; known: region, endpoint, profile, attempts"
        )
    return table, options


def _redacted(table: str, options: aws.AwsOptions) -> str:
    query = "&".join(
        f"{k}={quote(v, safe=':/')}" for k, v in (("region", options.region), ("endpoint", options.endpoint)) if v
    )
    return f"dynamodb://{table}" + (f"?{query}" if query else "")


@dataclass(frozen=True, slots=True)
class _Plan:
    versions: int
    counter: int


class DynamoDBEventStore:
    """Event store on one DynamoDB table: conditional transactions, a dense global sequence.

    See the module docstring for the item layout, the ``read_all`` design and its
    throughput ceiling.  ``client`` is a boto3 DynamoDB client (tests hand in one pointed at
    moto); without it one is built on first use from the URL's options.
    """

    features: frozenset[str] = frozenset({FEATURE_COUNT, FEATURE_TRANSACTIONS_ACROSS_STREAMS})
    write_limits: WriteLimits = WRITE_LIMITS

    def __init__(self, table: str, *, client: Any | None = None, options: aws.AwsOptions | None = None) -> None:
        options = options or aws.AwsOptions()
        self.url = _redacted(table, options)
        self.identity = ("dynamodb", options.region or "", options.endpoint or "", table)
        self._table = _Table(table, client, options, self.url)

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
        self, stream_id: str, encoded: list[tuple[NewEvent, str, str]], recorded: datetime, versions: int, counter: int
    ) -> list[dict[str, Any]]:
        """One stream's part of an append: events, id guards, then the version check."""
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
                            POSITION_INDEX_RANGE: _n(plan.counter + 1 + i),
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
        """The contiguous run of events after ``after`` from the ``by_position`` index."""
        if limit <= 0:
            return []
        try:
            last = int(after) if after is not None else 0
        except ValueError as e:
            raise ValidationError(f"{after!r} is not a position of {self.url}") from e
        events: list[Event] = []
        for item in self._table.query_pages(
            IndexName=POSITION_INDEX,
            KeyConditionExpression="g = :g AND p > :after",
            ExpressionAttributeValues={":g": _s(ALL), ":after": _n(last)},
            Limit=min(limit, 1000),
        ):
            position = int(item[POSITION_INDEX_RANGE]["N"])
            if position != last + 1:
                break  # a committed event not yet in the index: stop before the hole
            events.append(self._event(item).with_position(str(position)))
            last = position
            if len(events) >= limit:
                break
        return events

    def count_after(self, after: str | None = None) -> int:
        """How many events follow ``after`` (feature ``count``: positions are dense, one read of the counter)."""
        try:
            last = int(after) if after is not None else 0
        except ValueError as e:
            raise ValidationError(f"{after!r} is not a position of {self.url}") from e
        return max(self._counter() - last, 0)

    def last_position(self) -> str | None:
        """The global counter: the position of the last committed event."""
        counter = self._counter()
        return str(counter) if counter else None

    def close(self) -> None:
        """Nothing to release: boto3 clients hold pooled connections only."""


def _tx_key(txid: str) -> dict[str, Any]:
    return {"pk": _s(f"t#{txid}"), "sk": _s("tx")}


def _doc_key(collection: str, key: str) -> dict[str, Any]:
    return {"pk": _s(f"v#{collection}"), "sk": _s(key)}


def _matches(value: Mapping[str, Any], where: tuple[str, str | int | bool] | None) -> bool:
    if where is None:
        return True
    field, wanted = where
    if field not in value:
        return False
    found = value[field]
    return bool(found == wanted and isinstance(found, bool) == isinstance(wanted, bool))


class DynamoDBViewStore:
    """View store on the same DynamoDB table: documents with revisions, atomic commits.

    A commit of at most :data:`MAX_COMMIT_ITEMS` items (document changes plus checkpoint
    entries) is one ``TransactWriteItems``.  A larger one uses a commit record: the
    documents are locked in transactions of 100 (each lock holds the new value and checks
    ``expected_revision``), then one transaction flips the record to ``committed`` and
    writes the checkpoint (the commit point), then the new values are rolled forward and the
    record deleted.  Readers resolve a locked document through its record, so they see the
    commit whole or not at all; a writer meeting a lock rolls a committed one forward, rolls
    back one whose committer died (record missing, or pending for :data:`STALE_LOCK_SECONDS`),
    and otherwise conflicts.  ``client`` as for the event store.
    """

    max_commit_items: int = MAX_COMMIT_ITEMS

    def __init__(self, table: str, *, client: Any | None = None, options: aws.AwsOptions | None = None) -> None:
        options = options or aws.AwsOptions()
        self.url = _redacted(table, options)
        self._table = _Table(table, client, options, self.url)

    @classmethod
    def from_url(cls, url: str) -> DynamoDBViewStore:
        """Open ``dynamodb://TABLE?region=...`` (no I/O)."""
        table, options = _parse(url)
        return cls(table, options=options)

    # --- reading through locks ------------------------------------------------------------------

    def _status(self, txid: str, cache: dict[str, tuple[str, int]] | None = None) -> tuple[str, int]:
        """``(status, started)`` of a large commit's record (``("missing", 0)`` when gone)."""
        if cache is not None and txid in cache:
            return cache[txid]
        item = self._table.call("get_item", Key=_tx_key(txid), ConsistentRead=True).get("Item")
        found = (item["status"]["S"], int(item["at"]["N"])) if item else ("missing", 0)
        if cache is not None:
            cache[txid] = found
        return found

    def _visible(self, item: dict[str, Any], cache: dict[str, tuple[str, int]]) -> Doc | None:
        if "tx" in item and self._status(item["tx"]["S"], cache)[0] == "committed":
            if "ndel" in item:
                return None
            return Doc(value=orjson.loads(item["nd"]["S"]), revision=int(item["nr"]["N"]))
        if "d" not in item:
            return None
        return Doc(value=orjson.loads(item["d"]["S"]), revision=int(item["r"]["N"]))

    def get(self, collection: str, key: str) -> Doc | None:
        """One consistent ``GetItem`` (plus the commit record of a locked document)."""
        item = self._table.call("get_item", Key=_doc_key(collection, key), ConsistentRead=True).get("Item")
        return self._visible(item, {}) if item else None

    def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Doc]:
        """Consistent ``BatchGetItem`` requests of 100 keys."""
        unique = list(dict.fromkeys(keys))
        items = self._table.batch_get([_doc_key(collection, key) for key in unique])
        cache: dict[str, tuple[str, int]] = {}
        found = {item["sk"]["S"]: self._visible(item, cache) for item in items}
        return {key: doc for key, doc in found.items() if doc is not None}

    def query(
        self,
        collection: str,
        *,
        prefix: str = "",
        where: tuple[str, str | int | bool] | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """The collection's partition in key order, filtered on ``where`` while reading."""
        values: dict[str, Any] = {":pk": _s(f"v#{collection}")}
        condition = "pk = :pk"
        if prefix:
            condition += " AND begins_with(sk, :prefix)"
            values[":prefix"] = _s(prefix)
        found: list[tuple[str, Doc]] = []
        if limit is not None and limit <= 0:
            return found
        cache: dict[str, tuple[str, int]] = {}
        for item in self._table.query_pages(
            KeyConditionExpression=condition, ExpressionAttributeValues=values, ConsistentRead=True
        ):
            doc = self._visible(item, cache)
            if doc is not None and _matches(doc.value, where):
                found.append((item["sk"]["S"], doc))
                if limit is not None and len(found) >= limit:
                    break
        return found

    # --- writing ------------------------------------------------------------------------------

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: Mapping[str, str]) -> None:
        """Every change and checkpoint entry atomically: one transaction, or a commit record."""
        merged: dict[tuple[str, str], tuple[ViewChange, int]] = {}
        for change in changes:
            slot = (change.collection, change.key)
            if slot in merged:
                first, count = merged[slot]
                # one item may appear once per transaction: keep the first condition, the last value
                merged[slot] = (
                    ViewChange(change.collection, change.key, change.doc, first.expected_revision),
                    count + 1,
                )
            else:
                merged[slot] = (change, 1)
        table = self._table.name
        checkpoint_items = [
            {"Put": {"TableName": table, "Item": {"pk": _s(f"c#{projection}"), "sk": _s(k), "val": _s(v)}}}
            for k, v in checkpoint.items()
        ]
        if len(checkpoint_items) >= MAX_COMMIT_ITEMS:
            raise ValidationError(
                f"projection {projection!r}: {len(checkpoint_items)} checkpoint entries in one commit; at most "
                f"{MAX_COMMIT_ITEMS - 1} fit DynamoDB's transaction"
            )
        if len(merged) + len(checkpoint_items) > MAX_COMMIT_ITEMS:
            self._commit_large(projection, list(merged.values()), checkpoint_items)
            return
        items = [self._change_item(change, writes) for change, writes in merged.values()] + checkpoint_items
        if not items:
            return
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            cancelled = self._table.transact(items)
            if cancelled is None:
                return
            codes = _cancellation_codes(cancelled)
            failed = [i for i, code in enumerate(codes) if code == "ConditionalCheckFailed"]
            if failed:
                change, _ = list(merged.values())[failed[0]]
                if self._settle(change.collection, change.key):
                    continue  # a finished or dead large commit held the document: try again
                raise self._conflict(change, cancelled)
            if any(code not in ("None", "TransactionConflict") for code in codes):
                raise TransientError(
                    f"projection {projection!r}: DynamoDB cancelled the commit: {codes}"
                ) from cancelled
            time.sleep(aws.backoff(attempt, base=0.01, cap=0.5))
        raise TransientError(f"projection {projection!r}: the commit kept conflicting with concurrent writers")

    def _conflict(self, change: ViewChange, cause: Exception) -> ConcurrencyError:
        current = self.get(change.collection, change.key)
        error = ConcurrencyError(
            f"{change.collection}/{change.key}",
            change.expected_revision,
            current.revision if current else 0,
            "view document revision (or a concurrent large commit)",
        )
        error.__cause__ = cause
        return error

    @staticmethod
    def _revision_condition(expected: int | None, absent: str) -> tuple[str, dict[str, Any]]:
        if expected == 0:
            return absent, {}
        if expected is not None:
            return "r = :expected", {":expected": _n(expected)}
        return "", {}

    def _change_item(self, change: ViewChange, writes: int) -> dict[str, Any]:
        table = self._table.name
        key = _doc_key(change.collection, change.key)
        expected = change.expected_revision
        revision, values = self._revision_condition(expected, "attribute_not_exists(pk)")
        condition = " AND ".join(c for c in ("attribute_not_exists(tx)", revision) if c)
        if change.doc is None:
            delete: dict[str, Any] = {"TableName": table, "Key": key, "ConditionExpression": condition}
            if values:
                delete["ExpressionAttributeValues"] = values
            return {"Delete": delete}
        values = {**values, ":d": _s(encode_json(change.doc).decode()), ":writes": _n(writes)}
        if expected is None or expected == 0:
            values[":zero"] = _n(0)
            update = "SET d = :d, r = if_not_exists(r, :zero) + :writes"
        else:
            update = "SET d = :d, r = :expected + :writes"
        return {
            "Update": {
                "TableName": table,
                "Key": key,
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeValues": values,
            }
        }

    def _lock_item(self, change: ViewChange, writes: int, txid: str) -> dict[str, Any]:
        revision, values = self._revision_condition(change.expected_revision, "attribute_not_exists(d)")
        condition = " AND ".join(c for c in ("attribute_not_exists(tx)", revision) if c)
        values = {**values, ":tx": _s(txid)}
        if change.doc is None:
            update = "SET tx = :tx, ndel = :true"
            values[":true"] = {"BOOL": True}
        else:
            values[":nd"] = _s(encode_json(change.doc).decode())
            values[":writes"] = _n(writes)
            if change.expected_revision:
                update = "SET tx = :tx, nd = :nd, nr = :expected + :writes"
            else:
                values[":zero"] = _n(0)
                update = "SET tx = :tx, nd = :nd, nr = if_not_exists(r, :zero) + :writes"
        return {
            "Update": {
                "TableName": self._table.name,
                "Key": _doc_key(change.collection, change.key),
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeValues": values,
            }
        }

    def _commit_large(
        self, projection: str, changes: list[tuple[ViewChange, int]], checkpoint_items: list[dict[str, Any]]
    ) -> None:
        txid = uuid.uuid4().hex
        self._table.call("put_item", Item={**_tx_key(txid), "status": _s("pending"), "at": _n(int(time.time()))})
        locked: list[ViewChange] = []
        try:
            for start in range(0, len(changes), MAX_COMMIT_ITEMS):
                chunk = changes[start : start + MAX_COMMIT_ITEMS]
                items = [self._lock_item(change, writes, txid) for change, writes in chunk]
                for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
                    cancelled = self._table.transact(items)
                    if cancelled is None:
                        break
                    codes = _cancellation_codes(cancelled)
                    failed = [i for i, code in enumerate(codes) if code == "ConditionalCheckFailed"]
                    if failed:
                        change = chunk[failed[0]][0]
                        if self._settle(change.collection, change.key):
                            continue
                        raise self._conflict(change, cancelled)
                    if any(code not in ("None", "TransactionConflict") for code in codes):
                        raise TransientError(f"projection {projection!r}: DynamoDB cancelled a lock: {codes}")
                    time.sleep(aws.backoff(attempt, base=0.01, cap=0.5))
                else:
                    raise TransientError(f"projection {projection!r}: locking kept conflicting")
                locked.extend(change for change, _ in chunk)
            flip = {
                "Update": {
                    "TableName": self._table.name,
                    "Key": _tx_key(txid),
                    "UpdateExpression": "SET #s = :committed",
                    "ConditionExpression": "#s = :pending",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {":committed": _s("committed"), ":pending": _s("pending")},
                }
            }
            cancelled = self._table.transact([flip, *checkpoint_items])
            if cancelled is not None:
                raise TransientError(
                    f"projection {projection!r}: the commit record was aborted as stale before the commit point"
                ) from cancelled
        except BaseException:
            self._roll_back(txid, locked)
            self._table.call("delete_item", Key=_tx_key(txid))
            raise
        self._roll_forward(txid, [change for change, _ in changes])
        self._table.call("delete_item", Key=_tx_key(txid))

    def _apply_one(self, txid: str, collection: str, key: str, forward: bool) -> None:
        """Roll one locked document forward or back; a lock already gone is fine."""
        from botocore.exceptions import ClientError

        doc_key = _doc_key(collection, key)
        owned = {"ConditionExpression": "tx = :tx", "ExpressionAttributeValues": {":tx": _s(txid)}}
        try:
            item = self._table.call("get_item", Key=doc_key, ConsistentRead=True).get("Item")
            if not item or item.get("tx", {}).get("S") != txid:
                return
            if forward and "ndel" in item:
                self._table.call("delete_item", Key=doc_key, **owned)
            elif forward:
                self._table.call(
                    "update_item",
                    Key=doc_key,
                    UpdateExpression="SET d = nd, r = nr REMOVE tx, nd, nr",
                    **owned,
                )
            elif "d" not in item:
                self._table.call("delete_item", Key=doc_key, **owned)
            else:
                self._table.call("update_item", Key=doc_key, UpdateExpression="REMOVE tx, nd, nr, ndel", **owned)
        except ClientError as e:
            if aws.error_code(e) != "ConditionalCheckFailedException":
                raise

    def _roll_forward(self, txid: str, changes: list[ViewChange]) -> None:
        owned = "tx = :tx"
        for start in range(0, len(changes), MAX_COMMIT_ITEMS):
            chunk = changes[start : start + MAX_COMMIT_ITEMS]
            items: list[dict[str, Any]] = []
            for change in chunk:
                key = _doc_key(change.collection, change.key)
                values = {":tx": _s(txid)}
                if change.doc is None:
                    items.append(
                        {
                            "Delete": {
                                "TableName": self._table.name,
                                "Key": key,
                                "ConditionExpression": owned,
                                "ExpressionAttributeValues": values,
                            }
                        }
                    )
                else:
                    items.append(
                        {
                            "Update": {
                                "TableName": self._table.name,
                                "Key": key,
                                "UpdateExpression": "SET d = nd, r = nr REMOVE tx, nd, nr",
                                "ConditionExpression": owned,
                                "ExpressionAttributeValues": values,
                            }
                        }
                    )
            if self._table.transact(items) is not None:
                # someone settled part of it already: finish item by item
                for change in chunk:
                    self._apply_one(txid, change.collection, change.key, forward=True)

    def _roll_back(self, txid: str, changes: list[ViewChange]) -> None:
        for change in changes:
            self._apply_one(txid, change.collection, change.key, forward=False)

    def _settle(self, collection: str, key: str) -> bool:
        """Resolve a lock left on a document; ``True`` when the document is free now."""
        item = self._table.call("get_item", Key=_doc_key(collection, key), ConsistentRead=True).get("Item")
        if not item or "tx" not in item:
            return False  # not a lock: a genuine revision conflict
        txid = item["tx"]["S"]
        status, started = self._status(txid)
        if status == "committed":
            self._apply_one(txid, collection, key, forward=True)
            return True
        if status == "pending" and time.time() - started > STALE_LOCK_SECONDS:
            from botocore.exceptions import ClientError

            try:
                self._table.call(
                    "update_item",
                    Key=_tx_key(txid),
                    UpdateExpression="SET #s = :aborted",
                    ConditionExpression="#s = :pending",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":aborted": _s("aborted"), ":pending": _s("pending")},
                )
            except ClientError as e:
                if aws.error_code(e) != "ConditionalCheckFailedException":
                    raise
                return False  # it committed meanwhile: the next attempt rolls it forward
            status = "aborted"
        if status in ("missing", "aborted"):
            self._apply_one(txid, collection, key, forward=False)
            return True
        return False

    def get_checkpoint(self, projection: str, key: str = "$all") -> str | None:
        """One consistent ``GetItem``."""
        item = self._table.call("get_item", Key={"pk": _s(f"c#{projection}"), "sk": _s(key)}, ConsistentRead=True).get(
            "Item"
        )
        return str(item["val"]["S"]) if item else None

    def _drop_partition(self, pk: str) -> None:
        keys = [
            {"pk": item["pk"], "sk": item["sk"]}
            for item in self._table.query_pages(
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": _s(pk)},
                ProjectionExpression="pk, sk",
                ConsistentRead=True,
            )
        ]
        self._table.batch_delete(keys)

    def drop(self, collection: str) -> None:
        """Delete the collection's partition (``BatchWriteItem`` of 25 deletes)."""
        self._drop_partition(f"v#{collection}")

    def drop_checkpoints(self, projection: str) -> None:
        """Delete the projection's checkpoint partition."""
        self._drop_partition(f"c#{projection}")

    def close(self) -> None:
        """Nothing to release."""
