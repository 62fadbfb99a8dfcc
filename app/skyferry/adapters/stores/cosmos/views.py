"""The Cosmos DB view store (``cosmos://``), in the views container.

View store design: every document and checkpoint of a view store lives in one logical
partition of the views container.  ``commit`` is atomic whatever its size, without relying
on transactional batches (a batch holds at most 100 operations, and the emulator applies
a batch's operations one by one, keeping those before a failure), using a **commit
record** as the commit point: the protocol of :mod:`skyferry.adapters.stores._commit`,
shared with the DynamoDB view store, which Cosmos DB runs so:

1. One query reads every document and checkpoint the commit writes (``ARRAY_CONTAINS``
   on their ids), together with any commit record left in the partition.  Locks of other
   commits found there are settled first (step 5).  ``expected_revision`` is checked on
   what was read: a mismatch raises ``ConcurrencyError`` before anything is written.
2. A commit of a single write (one document, or only one checkpoint entry) is that
   write, conditioned on the ETag read (create when absent): atomic by itself.
3. Otherwise each document is **locked**: rewritten (ETag precondition; a placeholder is
   created for an absent one) with its old value unchanged and the new value pending in
   ``next``/``next_rev`` under a fresh commit id ``tx``.  Locks go in batches of 100, but
   nothing depends on a batch being atomic: a failed precondition (a concurrent writer)
   makes the writer remove its own locks and raise ``ConcurrencyError``.
4. The writer **creates the commit record** ``t-<tx>`` (status ``committed``, listing the
   locked ids): a single-document create, atomic on the service and the emulator.  This
   is the commit point.  It then rolls every lock forward (batches of ETag-conditioned
   replaces/deletes) and deletes the record as the last operation of the last batch (no
   batch applies an operation after a failed one: the service applies all or none, the
   emulator stops at the first failure; besides, an ETag precondition there only fails
   on a document another writer already rolled forward).
5. Readers resolve a locked document through its record: the pending value if the record
   says ``committed``, the old value otherwise, so a commit is seen whole or not at all
   (a multi-document read that meets a committed record re-reads the documents that
   record lists, so it never mixes a commit's old and new values).  A writer meeting a
   lock whose record is ``committed`` rolls that whole commit forward and deletes the
   record; one meeting a lock without a record leaves it alone for ``lock_timeout``
   seconds (URL parameter, default :data:`~skyferry.adapters.stores._commit.LOCK_TIMEOUT_SECONDS`; raises
   ``ConcurrencyError`` meanwhile), then creates the record as ``aborted`` (the same
   single-document create, so the slow writer's own create then fails with 409 and it
   aborts) and restores the old values.  Aborted records are kept a day
   (:data:`ABORTED_RECORD_SECONDS`), so a writer that stalled past its commit point can
   never commit late.

So a crash at any step leaves either locks without a committed record (invisible, rolled
back by the next writer after ``lock_timeout``) or a committed record (visible whole,
rolled forward by the next commit).  **Cost:** a commit of ``W >= 2`` writes takes
``ceil(W / 100) + ceil((W + 1) / 100) + 2`` round trips, four up to 99 writes (one read query, the
lock batches, the record's create, the roll-forward batches ending with the record's
delete) and writes each document twice plus the record twice, about twice the request
units of one plain batch; a commit of one write takes two round trips
(``benchmarks/bench_cosmos.py`` counts them).  The previous design read each changed document with its own
query and wrote one batch per 100 writes, and was atomic only up to 100 writes and only
on the real service.  The one partition caps the views at 20 GB and 10,000 RU/s.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

from azure.core import MatchConditions
from azure.cosmos import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosBatchOperationError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from skyferry.adapters.registry import redact
from skyferry.adapters.stores._commit import ABORTED, COMMITTED, PENDING, Record, settle, write
from skyferry.adapters.stores.cosmos.client import (
    MAX_THROTTLE_RETRIES,
    CosmosLocation,
    _Containers,
    call,
)
from skyferry.adapters.stores.cosmos.layout import (
    MAX_BATCH_OPERATIONS,
    VIEWS_PARTITION,
    _checkpoint_id,
    _doc_id,
    _record_id,
)
from skyferry.core.errors import ConcurrencyError, TransientError
from skyferry.core.messages import (
    JSONObject,
)
from skyferry.core.ports import (
    Doc,
    ViewChange,
)

_T = TypeVar("_T")


_TX_FIELDS: Final = ("tx", "tx_at", "next", "next_rev")
ABORTED_RECORD_SECONDS: Final = 86_400.0
"""How long the record of an aborted view commit is kept (its writer may still try to commit)."""
_READ_CHUNK: Final = 500


def _clean(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` without the server's fields and without a lock."""
    return {k: v for k, v in raw.items() if not k.startswith("_") and k not in _TX_FIELDS}


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Locked(Exception):
    """A document is locked by a commit that is still in progress (not yet stale)."""


@dataclass(slots=True)
class _Write:
    """One document of a commit: what was read, and what it becomes (``None`` = absent)."""

    item: str
    original: dict[str, Any] | None
    body: dict[str, Any]
    value: Any
    revision: int


class CosmosViewStore:
    """``ViewStore`` on one logical partition of the views container (see the module docstring).

    ``commit`` is atomic whatever its size, on the service and on the emulator alike: a
    commit of one write is one conditional single-document write; a larger one locks
    every document with its new value pending, creates the commit record (the commit
    point) and rolls the values forward.  Readers resolve a pending value through its
    commit record.
    """

    def __init__(self, location: CosmosLocation, client: CosmosClient | None = None) -> None:
        self.location = location
        self.url = redact(f"cosmos://{location.account}/{location.database}/{location.container}")
        self._containers = _Containers(location, client)

    @classmethod
    def from_url(cls, url: str, client: CosmosClient | None = None) -> CosmosViewStore:
        """Parse ``url`` (no I/O)."""
        return cls(CosmosLocation.parse(url), client)

    @property
    def _c(self) -> ContainerProxy:
        return self._containers.get(self.location.views)

    # -- reading -------------------------------------------------------------------------

    def _read(self, item: str) -> dict[str, Any] | None:
        # A query rather than a point read: the emulator fails point reads of absent ids
        # in a container partitioned on /pk (500); on the real service both cost ~1 RU.
        rows = self._query("SELECT * FROM c WHERE c.id = @id", {"@id": item})
        return rows[0] if rows else None

    def _read_many(
        self, items: Sequence[str], records: list[dict[str, Any]] | None = None
    ) -> dict[str, dict[str, Any]]:
        """The existing items among ``items``, by id (one query per few hundred ids).

        Given a ``records`` list, the first query also collects every commit record of
        the partition into it (normally none: a finished commit deletes its record).
        """
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(items))
        for n, chunk in enumerate(_chunks(unique, _READ_CHUNK)):
            if n == 0 and records is not None:
                query = "SELECT * FROM c WHERE (ARRAY_CONTAINS(@ids, c.id) OR c.kind = 'tx')"
            else:
                query = "SELECT * FROM c WHERE ARRAY_CONTAINS(@ids, c.id)"
            for row in self._query(query, {"@ids": list(chunk)}):
                if row.get("kind") == "tx" and records is not None:
                    records.append(row)
                if row["id"] in chunk:
                    found[row["id"]] = row
        return found

    def _query(self, query: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        parameters = [{"name": k, "value": v} for k, v in params.items()]
        parameters.append({"name": "@pk", "value": VIEWS_PARTITION})
        scoped = query.replace(" WHERE ", " WHERE c.pk = @pk AND ", 1)
        return call(
            "querying views",
            lambda: list(self._c.query_items(scoped, parameters=parameters, partition_key=VIEWS_PARTITION)),
        )

    def _resolved(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Any, int]]:
        """Each row with its visible value and revision (``None`` = absent).

        A locked row shows its pending value if its commit record says ``committed``, and
        its old value otherwise.  Rows read before the commit locked them are read again
        when another row of the same read shows that commit as committed, so one read
        never mixes a commit's old and new values.
        """
        txs = {row["tx"] for row in rows if row.get("tx")}
        if not txs:
            return [(row, row.get("value"), int(row.get("rev", 0))) for row in rows]
        records = self._read_many([_record_id(tx) for tx in txs])
        committed = {r["tx"]: set(r.get("items", ())) for r in records.values() if r.get("status") == "committed"}
        stale = {
            row["id"] for row in rows for tx, items in committed.items() if row["id"] in items and row.get("tx") != tx
        }
        if stale:
            fresh = self._read_many(sorted(stale))
            rows = [fresh.get(row["id"], row) if row["id"] in stale else row for row in rows]
        out: list[tuple[dict[str, Any], Any, int]] = []
        for row in rows:
            if row.get("tx") in committed:
                out.append((row, row.get("next"), int(row.get("next_rev", 0))))
            else:
                out.append((row, row.get("value"), int(row.get("rev", 0))))
        return out

    def get(self, collection: str, key: str) -> Doc | None:
        """One query (plus the commit record of a locked document)."""
        raw = self._read(_doc_id(collection, key))
        if raw is None:
            return None
        [(_, value, revision)] = self._resolved([raw])
        return None if value is None else Doc(value, revision)

    def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Doc]:
        """One query per few hundred keys (only the documents that exist are returned)."""
        ids = {_doc_id(collection, key): key for key in dict.fromkeys(keys)}
        rows = list(self._read_many(list(ids)).values())
        return {ids[row["id"]]: Doc(value, rev) for row, value, rev in self._resolved(rows) if value is not None}

    def query(
        self,
        collection: str,
        *,
        prefix: str = "",
        where: tuple[str, str | int | bool] | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """A single-partition query by key prefix and, optionally, one top-level field."""
        query = "SELECT * FROM c WHERE c.kind = 'doc' AND c.collection = @c AND STARTSWITH(c.key, @p)"
        rows = self._query(query, {"@c": collection, "@p": prefix})
        found: list[tuple[str, Doc]] = []
        for row, value, revision in self._resolved(rows):
            if value is None:
                continue
            if where is not None:
                field, wanted = where
                if field not in value or value[field] != wanted or type(value[field]) is not type(wanted):
                    continue
            found.append((row["key"], Doc(value, revision)))
        found.sort(key=lambda kv: kv[0])
        return found if limit is None else found[: max(0, limit)]

    def get_checkpoint(self, projection: str, key: str = "$all") -> str | None:
        """One query (plus the commit record of a locked checkpoint)."""
        raw = self._read(_checkpoint_id(projection, key))
        if raw is None:
            return None
        [(_, value, _rev)] = self._resolved([raw])
        return None if value is None else str(value)

    # -- committing ----------------------------------------------------------------------

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: Mapping[str, str]) -> None:
        """Every change and checkpoint entry atomically, whatever their number.

        Changes apply in order (a later change of the same key sees the earlier one).
        Revisions are checked against what is read first (``ConcurrencyError``, nothing
        written); every write is then conditioned on the ETag read, so a concurrent
        writer makes this commit fail with ``ConcurrencyError`` and leave nothing visible.
        """
        if not changes and not checkpoint:
            return
        doc_ids = {(c.collection, c.key): _doc_id(c.collection, c.key) for c in changes}
        cp_ids = {key: _checkpoint_id(projection, key) for key in checkpoint}
        raws = self._settled([*doc_ids.values(), *cp_ids.values()], projection)
        state: dict[tuple[str, str], tuple[int, JSONObject | None]] = {}
        for change in changes:
            where = (change.collection, change.key)
            if where not in state:
                raw = raws.get(doc_ids[where])
                state[where] = (int(raw["rev"]), raw["value"]) if raw else (0, None)
            revision, _ = state[where]
            if change.expected_revision is not None and change.expected_revision != revision:
                raise ConcurrencyError(
                    f"{change.collection}/{change.key}",
                    change.expected_revision,
                    revision,
                    "view document is at another revision",
                )
            state[where] = (revision, None) if change.doc is None else (revision + 1, dict(change.doc))
        writes: list[_Write] = []
        for where, (revision, value) in state.items():
            item = doc_ids[where]
            original = raws.get(item)
            if value is None and original is None:
                continue
            body = {"id": item, "pk": VIEWS_PARTITION, "kind": "doc", "collection": where[0], "key": where[1]}
            writes.append(_Write(item, original, body, value, revision if value is not None else 0))
        for key, position in checkpoint.items():
            item = cp_ids[key]
            body = {"id": item, "pk": VIEWS_PARTITION, "kind": "checkpoint", "projection": projection, "key": key}
            writes.append(_Write(item, raws.get(item), body, position, 0))
        if not writes:
            return
        if len(writes) == 1:
            self._write_one(projection, writes[0])
        else:
            self._write_locked(projection, writes)

    def _settled(self, items: list[str], projection: str) -> dict[str, dict[str, Any]]:
        """Read ``items``, first finishing or undoing any commit whose lock is on one of them."""
        for _ in range(MAX_THROTTLE_RETRIES):
            records: list[dict[str, Any]] = []
            raws = self._read_many(items, records)
            # A committed record left behind by a writer that died after its commit point
            # (some documents may not have been read here): finish it now.
            wanted = set(items)
            touched = False
            for record in records:
                if record.get("status") == "committed":
                    self._settle(record["tx"], [])
                    touched = touched or not wanted.isdisjoint(record.get("items", ()))
                elif time.time() - float(record.get("at", 0)) > ABORTED_RECORD_SECONDS:
                    self._delete(record["id"])
            if touched:
                continue  # read again: the roll-forward changed what was read
            locked = {raw["tx"] for raw in raws.values() if raw.get("tx")}
            if not locked:
                return raws
            for tx in sorted(locked):
                try:
                    self._settle(tx, [raw for raw in raws.values() if raw.get("tx") == tx])
                except _Locked as e:
                    raise ConcurrencyError(
                        projection,
                        "no commit in progress",
                        0,
                        f"a view document is locked by commit {tx}, still in progress",
                    ) from e
        raise TransientError(f"projection {projection!r}: view documents kept changing while being read")

    def _write_one(self, projection: str, write: _Write) -> None:
        """A commit of one write: one conditional single-document write (atomic by itself)."""
        try:
            if write.original is None:
                body = {**write.body, "value": write.value, "rev": write.revision}
                call(f"committing projection {projection}", partial(self._c.create_item, body))
            elif write.value is None:
                call(
                    f"committing projection {projection}",
                    partial(self._c.delete_item, write.item, partition_key=VIEWS_PARTITION, **_if(write.original)),
                )
            else:
                body = {**write.body, "value": write.value, "rev": write.revision}
                call(
                    f"committing projection {projection}",
                    partial(self._c.replace_item, write.item, body, **_if(write.original)),
                )
        except (CosmosResourceExistsError, CosmosResourceNotFoundError) as e:
            raise _changed(projection, e) from e
        except CosmosHttpResponseError as e:
            if e.status_code != 412:
                raise
            raise _changed(projection, e) from e

    def _write_locked(self, projection: str, writes: list[_Write]) -> None:
        """Lock every document with its pending value, create the commit record, roll forward."""
        write(_LargeCommit(self, projection, writes))

    def _roll_forward(self, tx: str, locks: Mapping[str, dict[str, Any]], etags: Mapping[str, str]) -> None:
        """Replace each lock by its pending value (batches, each write ETag-conditioned), drop the record.

        The record's deletion is the last operation of the last batch: a batch never
        applies an operation after one that failed (the service applies all or none, the
        emulator stops at the first failure), so the record goes only once every
        document is rolled forward; after a failed batch it is deleted on its own.
        """
        operations: list[tuple[Any, ...]] = []
        for item, lock in locks.items():
            if lock["next"] is None:
                operations.append(("delete", (item,), {"if_match_etag": etags[item]}))
            else:
                body = {**_clean(lock), "value": lock["next"], "rev": lock["next_rev"]}
                operations.append(("replace", (item, body), {"if_match_etag": etags[item]}))
        record = _record_id(tx)
        operations.append(("delete", (record,)))
        for chunk in _chunks(operations, MAX_BATCH_OPERATIONS):
            try:
                call(
                    "rolling a view commit forward",
                    partial(self._c.execute_item_batch, list(chunk), partition_key=VIEWS_PARTITION),
                )
            except CosmosBatchOperationError:
                # Another writer rolled some of them forward already: finish one by one.
                rows = self._read_many([_operation_item(op) for op in chunk])
                for row in rows.values():
                    if row.get("tx") == tx:
                        self._roll_forward_row(row)
                if chunk[-1][1][0] == record:
                    self._delete(record)

    def _roll_forward_row(self, row: Mapping[str, Any]) -> None:
        """Make a committed lock's pending value the document's value (412: someone did)."""
        with contextlib.suppress(CosmosResourceNotFoundError, CosmosAccessConditionFailedError):
            if row.get("next") is None:
                call(
                    f"rolling {row['id']} forward",
                    partial(self._c.delete_item, row["id"], partition_key=VIEWS_PARTITION, **_if(row)),
                )
            else:
                body = {**_clean(row), "value": row["next"], "rev": row["next_rev"]}
                call(f"rolling {row['id']} forward", partial(self._c.replace_item, row["id"], body, **_if(row)))

    def _roll_back_row(self, row: Mapping[str, Any]) -> None:
        """Remove an uncommitted lock: restore the old value, or delete a placeholder."""
        with contextlib.suppress(CosmosResourceNotFoundError, CosmosAccessConditionFailedError):
            if row.get("value") is None:
                call(
                    f"rolling {row['id']} back",
                    partial(self._c.delete_item, row["id"], partition_key=VIEWS_PARTITION, **_if(row)),
                )
            else:
                call(f"rolling {row['id']} back", partial(self._c.replace_item, row["id"], _clean(row), **_if(row)))

    def _roll_back_own(self, tx: str, items: list[str]) -> None:
        """Undo this writer's locks after a failure before its commit point."""
        for row in self._read_many(items).values():
            if row.get("tx") == tx:
                self._roll_back_row(row)

    def _settle(self, tx: str, seen: list[dict[str, Any]]) -> None:
        """Finish (commit record present) or undo (record absent and stale, or aborted) ``tx``.

        Raises :class:`_Locked` if the commit is neither committed nor stale: its writer
        may still be locking.
        """
        if not settle(_MetLock(self, tx, seen), self.location.lock_timeout):
            raise _Locked(tx)

    def drop(self, collection: str) -> None:
        """Delete every document of the collection, one by one (idempotent)."""
        rows = self._query("SELECT c.id FROM c WHERE c.kind = 'doc' AND c.collection = @c", {"@c": collection})
        for row in rows:
            self._delete(row["id"])

    def drop_checkpoints(self, projection: str) -> None:
        """Delete the projection's checkpoint documents."""
        rows = self._query("SELECT c.id FROM c WHERE c.kind = 'checkpoint' AND c.projection = @p", {"@p": projection})
        for row in rows:
            self._delete(row["id"])

    def _delete(self, item: str) -> None:
        with contextlib.suppress(CosmosResourceNotFoundError):
            call(f"deleting {item}", lambda: self._c.delete_item(item, partition_key=VIEWS_PARTITION))

    def close(self) -> None:
        """Close the HTTP session of a client this store built."""
        self._containers.close()


@dataclass(slots=True)
class _LargeCommit:
    """A commit of several writes, in the steps of :func:`~skyferry.adapters.stores._commit.write`."""

    store: CosmosViewStore
    projection: str
    writes: list[_Write]
    tx: str = field(default_factory=lambda: uuid.uuid4().hex)
    locks: dict[str, dict[str, Any]] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)

    def begin(self) -> None:
        """Nothing: a Cosmos DB commit has no record before its commit point."""

    def lock(self) -> None:
        """Lock every document (ETag preconditions, batches of 100); a failed one is a ``ConcurrencyError``."""
        tx, at = self.tx, time.time()
        operations: list[tuple[Any, ...]] = []
        for change in self.writes:
            lock = {**change.body, "value": None, "rev": 0} if change.original is None else _clean(change.original)
            lock.update(tx=tx, tx_at=at, next=change.value, next_rev=change.revision)
            self.locks[change.item] = lock
            if change.original is None:
                operations.append(("create", (lock,)))
            else:
                operations.append(("replace", (change.item, lock), {"if_match_etag": change.original["_etag"]}))
        try:
            for chunk in _chunks(operations, MAX_BATCH_OPERATIONS):
                results = call(
                    f"committing projection {self.projection} (locking)",
                    partial(self.store._c.execute_item_batch, list(chunk), partition_key=VIEWS_PARTITION),
                )
                for operation, result in zip(chunk, results, strict=True):
                    self.etags[_operation_item(operation)] = result["eTag"]
        except CosmosBatchOperationError as e:
            raise _changed(self.projection, e) from e

    def commit_point(self) -> None:
        """Create the record ``committed``; a ``ConcurrencyError`` when another writer aborted the commit first."""
        record = {
            "id": _record_id(self.tx),
            "pk": VIEWS_PARTITION,
            "kind": "tx",
            "tx": self.tx,
            "status": COMMITTED,
            "projection": self.projection,
            "items": list(self.locks),
        }
        try:
            call(f"committing projection {self.projection}", partial(self.store._c.create_item, record))
        except CosmosResourceExistsError as e:
            # Another writer presumed this commit dead and aborted it first.
            raise ConcurrencyError(
                self.projection, "no abort", 0, f"commit {self.tx} was aborted as stale before its commit point"
            ) from e

    def roll_forward(self) -> None:
        """Roll every lock forward; the record goes with the last batch."""
        self.store._roll_forward(self.tx, self.locks, self.etags)

    def roll_back(self) -> None:
        """Remove this commit's own locks."""
        self.store._roll_back_own(self.tx, list(self.locks))


@dataclass(slots=True)
class _MetLock:
    """Locks of another commit that a writer met (``seen``), as :func:`~skyferry.adapters.stores._commit.settle`
    settles them."""

    store: CosmosViewStore
    tx: str
    seen: list[dict[str, Any]]
    found: dict[str, Any] | None = None

    def record(self) -> Record | None:
        """The record; without one the commit is pending since its newest lock, or settled when no lock is left."""
        store, record_id = self.store, _record_id(self.tx)
        record = store._read(record_id)
        if record is None and not self.seen:
            return None  # finished and deleted since its record was listed
        if record is None:
            # It may have finished (rolled forward, record deleted) since ``seen`` was read.
            rows = store._read_many([row["id"] for row in self.seen]).values()
            self.seen = [row for row in rows if row.get("tx") == self.tx]
            if not self.seen:
                return None
            record = store._read(record_id)
        if record is None:
            return Record(PENDING, max(float(row.get("tx_at", 0)) for row in self.seen))
        self.found = record
        return Record(COMMITTED if record.get("status") == COMMITTED else ABORTED, float(record.get("at", 0)))

    def abort(self) -> bool:
        """Create the record ``aborted``; ``False`` when the commit point (or another abort) created it first."""
        abort: dict[str, Any] = {
            "id": _record_id(self.tx),
            "pk": VIEWS_PARTITION,
            "kind": "tx",
            "tx": self.tx,
            "status": ABORTED,
            "at": time.time(),
        }
        try:
            call(f"aborting view commit {self.tx}", partial(self.store._c.create_item, abort))
        except CosmosResourceExistsError:
            return False
        return True

    def roll_forward(self) -> None:
        """Roll every lock the committed record lists forward, then delete the record."""
        assert self.found is not None  # read by record(), which found it committed
        rows = self.store._read_many(list(self.found.get("items", ())))
        for row in rows.values():
            if row.get("tx") == self.tx:
                self.store._roll_forward_row(row)
        self.store._delete(_record_id(self.tx))

    def roll_back(self) -> None:
        """Restore the locked documents met.  Aborted records stay: a late writer must still
        find its commit point taken."""
        for row in self.seen:
            self.store._roll_back_row(row)


def _if(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments making a single-document write conditional on ``raw``'s ETag."""
    return {"etag": raw["_etag"], "match_condition": MatchConditions.IfNotModified}


def _operation_item(operation: tuple[Any, ...]) -> str:
    """The item id a batch operation writes."""
    first = operation[1][0]
    return str(first["id"] if isinstance(first, dict) else first)


def _changed(projection: str, error: Exception) -> ConcurrencyError:
    message = getattr(error, "message", None) or str(error)
    return ConcurrencyError(
        projection, "unchanged view documents", 0, f"a view document changed during the commit: {message}"
    )
