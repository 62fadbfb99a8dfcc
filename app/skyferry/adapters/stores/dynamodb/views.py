"""The DynamoDB view store (``dynamodb://``), on the same table as the event store.

View store
----------
Documents live in ``v#<collection>``; ``query`` reads that partition in key order
(``begins_with`` on the key for a prefix) and filters on ``where`` as it reads, the same
cost as a DynamoDB filter expression.  ``commit`` is one ``TransactWriteItems`` with every
document change (conditional on ``expected_revision``) and every checkpoint entry when
they fit DynamoDB's 100 items; a larger commit follows the commit-record protocol of
:mod:`skyferry.adapters.stores._commit`, with the record ``t#<id>``: put it ``pending``,
lock every document in transactions of 100 (the lock holds the new value and checks the
revision), flip the record to ``committed`` together with the checkpoint (the commit
point), roll the values forward, delete the record.  Readers resolve a locked document
through its record, so a commit is seen whole or not at all, and a crash at any step
leaves either nothing or a committed record that the next writer rolls forward.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from skyferry.adapters import aws
from skyferry.adapters.stores._commit import (
    ABORTED,
    COMMITTED,
    LOCK_TIMEOUT_SECONDS,
    PENDING,
    Record,
    settle,
    write,
)
from skyferry.adapters.stores.dynamodb.client import _CONFLICT_ATTEMPTS, _cancellation_codes, _parse, _redacted, _Table
from skyferry.adapters.stores.dynamodb.layout import (
    MAX_COMMIT_ITEMS,
    _doc_key,
    _n,
    _s,
    _tx_key,
)
from skyferry.core.errors import ConcurrencyError, TransientError, ValidationError
from skyferry.core.messages import (
    encode_json,
)
from skyferry.core.ports import (
    Doc,
    ViewChange,
)


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
    back one whose committer died (record missing, or pending for :data:`LOCK_TIMEOUT_SECONDS`),
    and otherwise conflicts.  ``client`` as for the event store.
    """

    max_commit_items: int = MAX_COMMIT_ITEMS
    lock_timeout: float = LOCK_TIMEOUT_SECONDS
    """Seconds after which a pending large commit is presumed dead (see :mod:`~skyferry.adapters.stores._commit`)."""

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
        if "tx" in item and self._status(item["tx"]["S"], cache)[0] == COMMITTED:
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
        write(_LargeCommit(self, projection, changes, checkpoint_items))

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
        return settle(_MetLock(self, item["tx"]["S"], collection, key), self.lock_timeout)

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


@dataclass(slots=True)
class _LargeCommit:
    """A commit larger than one transaction, in the steps of :func:`~skyferry.adapters.stores._commit.write`."""

    store: DynamoDBViewStore
    projection: str
    changes: list[tuple[ViewChange, int]]
    checkpoint_items: list[dict[str, Any]]
    txid: str = field(default_factory=lambda: uuid.uuid4().hex)
    locked: list[ViewChange] = field(default_factory=list)

    def begin(self) -> None:
        """Put the record, ``pending`` since now."""
        item = {**_tx_key(self.txid), "status": _s(PENDING), "at": _n(int(time.time()))}
        self.store._table.call("put_item", Item=item)

    def lock(self) -> None:
        """Lock the documents in transactions of :data:`MAX_COMMIT_ITEMS`, settling locks met."""
        store, projection = self.store, self.projection
        for start in range(0, len(self.changes), MAX_COMMIT_ITEMS):
            chunk = self.changes[start : start + MAX_COMMIT_ITEMS]
            items = [store._lock_item(change, writes, self.txid) for change, writes in chunk]
            for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
                cancelled = store._table.transact(items)
                if cancelled is None:
                    break
                codes = _cancellation_codes(cancelled)
                failed = [i for i, code in enumerate(codes) if code == "ConditionalCheckFailed"]
                if failed:
                    change = chunk[failed[0]][0]
                    if store._settle(change.collection, change.key):
                        continue
                    raise store._conflict(change, cancelled)
                if any(code not in ("None", "TransactionConflict") for code in codes):
                    raise TransientError(f"projection {projection!r}: DynamoDB cancelled a lock: {codes}")
                time.sleep(aws.backoff(attempt, base=0.01, cap=0.5))
            else:
                raise TransientError(f"projection {projection!r}: locking kept conflicting")
            self.locked.extend(change for change, _ in chunk)

    def commit_point(self) -> None:
        """Flip the record to ``committed`` (if still ``pending``) and write the checkpoint, in one transaction."""
        flip = {
            "Update": {
                "TableName": self.store._table.name,
                "Key": _tx_key(self.txid),
                "UpdateExpression": "SET #s = :committed",
                "ConditionExpression": "#s = :pending",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":committed": _s(COMMITTED), ":pending": _s(PENDING)},
            }
        }
        cancelled = self.store._table.transact([flip, *self.checkpoint_items])
        if cancelled is not None:
            raise TransientError(
                f"projection {self.projection!r}: the commit record was aborted as stale before the commit point"
            ) from cancelled

    def roll_forward(self) -> None:
        """Roll every document forward, then delete the record."""
        self.store._roll_forward(self.txid, [change for change, _ in self.changes])
        self.store._table.call("delete_item", Key=_tx_key(self.txid))

    def roll_back(self) -> None:
        """Roll back the documents this commit locked, then delete its record."""
        self.store._roll_back(self.txid, self.locked)
        self.store._table.call("delete_item", Key=_tx_key(self.txid))


@dataclass(slots=True)
class _MetLock:
    """The lock of another commit on one document, as :func:`~skyferry.adapters.stores._commit.settle` settles it."""

    store: DynamoDBViewStore
    txid: str
    collection: str
    key: str

    def record(self) -> Record:
        """The record; a missing one is ``aborted`` (its writer rolled back and deleted it)."""
        status, started = self.store._status(self.txid)
        return Record(ABORTED if status == "missing" else status, started)

    def abort(self) -> bool:
        """Flip the record from ``pending`` to ``aborted``; ``False`` when it was no longer pending."""
        from botocore.exceptions import ClientError

        try:
            self.store._table.call(
                "update_item",
                Key=_tx_key(self.txid),
                UpdateExpression="SET #s = :aborted",
                ConditionExpression="#s = :pending",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":aborted": _s(ABORTED), ":pending": _s(PENDING)},
            )
        except ClientError as e:
            if aws.error_code(e) != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def roll_forward(self) -> None:
        """Roll this document forward (the others when they are met, or by their writer)."""
        self.store._apply_one(self.txid, self.collection, self.key, forward=True)

    def roll_back(self) -> None:
        """Roll this document back."""
        self.store._apply_one(self.txid, self.collection, self.key, forward=False)
