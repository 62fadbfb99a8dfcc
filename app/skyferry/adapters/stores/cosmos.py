"""Event store and view store on Azure Cosmos DB for NoSQL (``azure-cosmos``).

URL::

    cosmos://ACCOUNT/DATABASE/CONTAINER[?views=NAME][&endpoint=URL][&key=KEY][&verify=false]

* ``ACCOUNT`` -- the Cosmos DB account; the endpoint is ``https://ACCOUNT.documents.azure.com:443/``.
* ``DATABASE`` / ``CONTAINER`` -- the database and the events container (partition key
  :data:`EVENTS_PARTITION_KEY_PATH`).  The containers are created by the infrastructure
  (``providers/azure``), never by the adapter: a missing one is a ``ConfigurationError``.
* ``views`` -- the view-store container (partition key :data:`VIEWS_PARTITION_KEY_PATH`),
  default ``CONTAINER-views``.
* ``endpoint`` -- another endpoint, *for tests and local use* (the emulator).
* ``key`` -- an account key, *for tests and local use*; without it the adapter signs in
  with ``DefaultAzureCredential`` (the managed identity on Azure), as the account has
  local (key) auth disabled.
* ``verify=false`` -- accept the emulator's self-signed certificate, *for tests only*.

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
* Each event keeps its ``data`` and ``metadata`` as canonical JSON text (fields ``d`` and
  ``m``), not as native JSON: Cosmos DB stores every number as a double, which would
  change ``-0.0``, ``1.0``, ``1e16``, ``2**53 + 1`` or ``2**63 - 1``.  Events written by
  earlier versions, with native ``data`` / ``metadata``, are still read.
* The log partition caps the write rate at one logical partition's throughput
  (10,000 RU/s, roughly a thousand appends a second); the change feed would scale
  further, but its order across physical partitions is not one global order and the
  emulator does not implement it, so it could not be tested here.

View store design: every document and checkpoint of a view store lives in one logical
partition of the views container.  ``commit`` is atomic whatever its size, without relying
on transactional batches (a batch holds at most 100 operations, and the emulator applies
a batch's operations one by one, keeping those before a failure), using a **commit
record** as the commit point, as the DynamoDB view store does:

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
   seconds (URL parameter, default :data:`DEFAULT_LOCK_TIMEOUT`; raises
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

Throttling (429) is retried after the server's ``x-ms-retry-after-ms``, up to
``MAX_THROTTLE_RETRIES`` times, then raised as ``TransientError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ClientAuthenticationError, ServiceRequestError
from azure.cosmos import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosBatchOperationError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from skyferry.adapters.registry import redact
from skyferry.core.errors import ConcurrencyError, ConfigurationError, TransientError, ValidationError
from skyferry.core.messages import (
    Event,
    JSONObject,
    NewEvent,
    check_append,
    encode_json,
    format_timestamp,
    utc_now,
)
from skyferry.core.ports import (
    AppendResult,
    Doc,
    ExpectedVersion,
    StreamState,
    ViewChange,
    expected_as_int,
    resolve_conflict,
)

EVENTS_PARTITION_KEY_PATH: Final = "/stream_id"
"""Partition key path of the events container (imported by ``providers/azure``)."""
VIEWS_PARTITION_KEY_PATH: Final = "/pk"
"""Partition key path of the views container (imported by ``providers/azure``)."""
LOG_PARTITION: Final = "$log"
"""The partition of the events container holding the global log (not a valid stream id)."""
LAST_SLOTS: Final = 1
"""Slots ``last_position`` reads first (the newest): a readiness probe reads two documents, whatever the log."""
VIEWS_PARTITION: Final = "views"
"""The one logical partition of the views container."""
MAX_BATCH_OPERATIONS: Final = 100
"""Cosmos DB's limit on the operations of one transactional batch."""
INLINE_LIMIT: Final = 1_500_000
"""Bytes of events kept inside the commit document; more go to part documents (2 MB item limit)."""
MAX_THROTTLE_RETRIES: Final = 8
DEFAULT_SWEEP_AFTER: Final = 30.0
DEFAULT_LOCK_TIMEOUT: Final = 120.0
"""Seconds after which a view commit that locked documents but never reached its commit
point is presumed dead and rolled back by the next writer that meets one of its locks."""

_VERSION_DIGITS: Final = 12
_T = TypeVar("_T")


def views_container_name(events_container: str) -> str:
    """The default views container beside ``events_container``."""
    return f"{events_container}-views"


@dataclass(frozen=True, slots=True)
class CosmosLocation:
    """A parsed ``cosmos://`` URL."""

    account: str
    database: str
    container: str
    views: str
    endpoint: str
    key: str | None
    verify: bool
    sweep_after: float
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT

    @classmethod
    def parse(cls, url: str) -> CosmosLocation:
        """Parse ``url``; raises ``ConfigurationError`` naming what is missing."""
        parts = urlsplit(url)
        if parts.scheme != "cosmos":
            raise ConfigurationError(f"not a cosmos:// URL: {redact(url)!r}")
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not parts.hostname:
            raise ConfigurationError(f"{redact(url)!r} names no Cosmos DB account (cosmos://ACCOUNT/DB/CONTAINER)")
        if len(path) != 2:
            raise ConfigurationError(
                f"{redact(url)!r} must name a database and a container: cosmos://ACCOUNT/DATABASE/CONTAINER"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        account = parts.hostname
        return cls(
            account=account,
            database=path[0],
            container=path[1],
            views=query.get("views", views_container_name(path[1])),
            endpoint=query.get("endpoint", f"https://{account}.documents.azure.com:443/"),
            key=query.get("key"),
            verify=query.get("verify", "true").lower() not in {"false", "0", "no"},
            sweep_after=float(query.get("sweep_after", DEFAULT_SWEEP_AFTER)),
            lock_timeout=float(query.get("lock_timeout", DEFAULT_LOCK_TIMEOUT)),
        )

    def client(self) -> CosmosClient:
        """A client for this account (no I/O until first use)."""
        credential: Any
        if self.key is not None:
            credential = self.key
        else:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError as e:  # pragma: no cover - azure-identity is in the azure extra
                raise ConfigurationError("cosmos:// without key= needs azure-identity (extra 'azure')") from e
            credential = DefaultAzureCredential()
        return CosmosClient(
            self.endpoint,
            credential=credential,
            connection_verify=self.verify,
            raw_request_hook=_batch_partition_keys,
        )


def _batch_partition_keys(request: Any) -> None:
    """Copy a batch's partition key into each operation, as the JavaScript SDK does.

    The service reads the batch's header; the emulator reads each operation's field.
    """
    http = request.http_request
    header = http.headers.get("x-ms-documentdb-partitionkey")
    if not header or http.headers.get("x-ms-cosmos-is-batch-request", "").lower() != "true":
        return
    operations = json.loads(http.body)
    for operation in operations:
        operation.setdefault("partitionKey", header)
    http.set_json_body(operations)


def _retry_after(error: CosmosHttpResponseError) -> float:
    headers = error.headers or {}
    raw = headers.get("x-ms-retry-after-ms") or headers.get("x-ms-retry-after")
    try:
        return max(0.0, float(raw) / 1000.0) if raw is not None else 1.0
    except ValueError:
        return 1.0


def call(what: str, fn: Callable[[], _T], *, sleep: Callable[[float], None] = time.sleep) -> _T:
    """Run one SDK call: retry 429 after the server's retry-after, translate errors.

    Errors the caller handles itself (404, 409, 412) are re-raised unchanged.
    """
    for attempt in range(MAX_THROTTLE_RETRIES + 1):
        try:
            return fn()
        except (CosmosResourceNotFoundError, CosmosResourceExistsError):
            raise
        except CosmosBatchOperationError:
            raise
        except CosmosHttpResponseError as e:
            if e.status_code == 412:
                raise
            if e.status_code == 429:
                if attempt < MAX_THROTTLE_RETRIES:
                    sleep(_retry_after(e))
                    continue
                raise TransientError(f"Cosmos DB throttled {what} (429) {attempt + 1} times") from e
            if e.status_code in {401, 403}:
                raise ConfigurationError(
                    f"Cosmos DB refused the credentials for {what} ({e.status_code}): grant the identity "
                    "the 'Cosmos DB Built-in Data Contributor' role on the account"
                ) from e
            if e.status_code in {408, 410, 449, 500, 502, 503} or e.status_code is None:
                raise TransientError(f"Cosmos DB failed {what} ({e.status_code}): {e.message}") from e
            raise
        except ClientAuthenticationError as e:
            raise ConfigurationError(f"no usable Azure credentials for Cosmos DB ({what}): {e}") from e
        except ServiceRequestError as e:
            raise TransientError(f"Cosmos DB unreachable during {what}: {e}") from e
        except AzureError as e:
            raise TransientError(f"Cosmos DB failed {what}: {e}") from e
    raise AssertionError("unreachable")  # pragma: no cover


class _Containers:
    """The two containers of one URL, checked once on first use, through one client per thread.

    The SDK's client is not safe to share between threads: every call writes the shared
    ``client_connection.last_response_headers``, which the SDK itself iterates, so
    concurrent calls fail now and then with "OrderedDict mutated during iteration" (the
    SDK's maintainers call those headers not thread-safe: azure-sdk-for-python #33496,
    #35791).  So each thread that uses the store gets its own client, built on its first
    call; a thread's client goes when the thread does.  A client handed in is used by every
    thread as it is: the caller's choice.
    """

    def __init__(self, location: CosmosLocation, client: CosmosClient | None) -> None:
        self.location = location
        self._client = client
        self._owned: weakref.WeakSet[CosmosClient] = weakref.WeakSet()
        self._local = threading.local()
        self._checked: set[str] = set()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the clients this instance built (a client handed in stays open)."""
        with self._lock:
            for client in list(self._owned):
                client.close()
            self._owned.clear()
            self._checked.clear()
            self._local = threading.local()

    def get(self, name: str) -> ContainerProxy:
        local = self._local
        proxies: dict[str, ContainerProxy] | None = getattr(local, "proxies", None)
        if proxies is None:
            proxies = local.proxies = {}
        container = proxies.get(name)
        if container is not None:
            return container
        client = self._client
        if client is None:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = self.location.client()
                with self._lock:
                    self._owned.add(client)
        container = client.get_database_client(self.location.database).get_container_client(name)
        with self._lock:
            checked = name in self._checked
        if not checked:
            try:
                call(f"reading container {name}", container.read)
            except CosmosResourceNotFoundError as e:
                raise ConfigurationError(
                    f"Cosmos DB account {self.location.account!r} has no container {name!r} in database "
                    f"{self.location.database!r} (created by providers/azure)"
                ) from e
            with self._lock:
                self._checked.add(name)
        proxies[name] = container
        return container


def _commit_id(first: int) -> str:
    return f"c-{first:0{_VERSION_DIGITS}d}"


def _slot_id(slot: int) -> str:
    return f"s-{slot:0{_VERSION_DIGITS}d}"


def _event_body(event: NewEvent, recorded_at: str) -> dict[str, Any]:
    """One event inside a commit or part document; ``data`` and ``metadata`` as their canonical
    JSON text (``d``, ``m``): Cosmos DB keeps numbers as doubles, so a native JSON value would
    come back changed (``-0.0``, ``1.0``, ``1e16``, ``2**53 + 1``, ``2**63 - 1``)."""
    return {
        "id": event.id,
        "type": event.type,
        "schema_version": event.schema_version,
        "d": encode_json(event.data).decode(),
        "m": encode_json(event.metadata).decode(),
        "occurred_at": format_timestamp(event.occurred_at),
        "recorded_at": recorded_at,
    }


def _event_of(body: Mapping[str, Any], stream_id: str, version: int) -> Event:
    """The event of a body written by :func:`_event_body` (or, before JSON text, with the
    native ``data`` / ``metadata`` of earlier versions)."""
    if "d" in body:
        body = {**body, "data": orjson.loads(body["d"]), "metadata": orjson.loads(body["m"])}
    return Event.from_dict({**body, "stream_id": stream_id, "version": version})


class CosmosEventStore:
    """``EventStore`` on one Cosmos DB container (see the module docstring for the design)."""

    features: frozenset[str] = frozenset()

    def __init__(self, location: CosmosLocation, client: CosmosClient | None = None) -> None:
        self.location = location
        self.url = redact(f"cosmos://{location.account}/{location.database}/{location.container}")
        self.identity = ("cosmos", location.endpoint, location.database, location.container)
        self._containers = _Containers(location, client)

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
        while True:
            head = self._head(stream_id)
            actual = int(head["last"]) if head else 0
            stored = self._find_ids(stream_id, ids) if head else {}
            if stored or (want is not None and actual != want):
                result = resolve_conflict(stream_id, events, expected_version, actual, stored)
                self._slot_stream(stream_id)  # an idempotent retry finishes a slotting that failed
                return result
            first = actual + 1
            try:
                self._write_commit(stream_id, first, events)
            except _Collision:
                continue  # another append took this version: decide again from the new head
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

    def _write_commit(self, stream_id: str, first: int, events: list[NewEvent]) -> None:
        now = format_timestamp(utc_now())
        bodies = [_event_body(e, format_timestamp(e.recorded_at) if e.recorded_at else now) for e in events]
        commit: dict[str, Any] = {
            "id": _commit_id(first),
            "kind": "commit",
            "stream_id": stream_id,
            "first": first,
            "last": first + len(events) - 1,
            "slot": None,
            "created": now,
            "event_ids": [e.id for e in events],
        }
        parts: list[str] = []
        if len(encode_json(bodies)) > INLINE_LIMIT:
            token = uuid.uuid4().hex[:12]
            chunk: list[dict[str, Any]] = []
            size = 0
            for body in bodies:
                body_size = len(encode_json(body))
                if chunk and size + body_size > INLINE_LIMIT:
                    parts.append(self._write_part(stream_id, first, token, len(parts), chunk))
                    chunk, size = [], 0
                chunk.append(body)
                size += body_size
            parts.append(self._write_part(stream_id, first, token, len(parts), chunk))
            commit["parts"] = parts
        else:
            commit["events"] = bodies
        try:
            call(f"appending to {stream_id}", lambda: self._c.create_item(commit))
        except CosmosResourceExistsError as e:
            for part_id in parts:
                self._delete(part_id, stream_id)
            raise _Collision from e

    def _write_part(self, stream_id: str, first: int, token: str, n: int, chunk: list[dict[str, Any]]) -> str:
        part_id = f"p-{first:0{_VERSION_DIGITS}d}-{token}-{n}"
        body = {"id": part_id, "kind": "part", "stream_id": stream_id, "events": chunk}
        call(f"appending to {stream_id}", lambda: self._c.create_item(body))
        return part_id

    def _delete(self, item: str, partition: str) -> None:
        with contextlib.suppress(CosmosResourceNotFoundError):
            call(f"deleting {item}", lambda: self._c.delete_item(item, partition_key=partition))

    # -- the global log ------------------------------------------------------------------

    def _slot_stream(self, stream_id: str) -> None:
        """Give every unslotted commit of the stream a slot, in version order."""
        rows = self._query(
            f"positioning {stream_id}",
            "SELECT * FROM c WHERE c.kind = 'commit' AND IS_NULL(c.slot)",
            {},
            stream_id,
        )
        try:
            for commit in sorted(rows, key=lambda r: int(r["first"])):
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
        """Create the next slot for ``commit`` and record it there; returns the slot that counts."""
        while True:
            n = self._top_slot() + 1
            slot = {
                "id": _slot_id(n),
                "kind": "slot",
                "stream_id": LOG_PARTITION,
                "n": n,
                "stream": commit["stream_id"],
                "commit": commit["id"],
            }
            try:
                call("appending to the global log", partial(self._c.create_item, slot))
            except CosmosResourceExistsError:
                continue
            return self._record_slot(commit["stream_id"], commit["id"], n)

    def _record_slot(self, stream_id: str, commit_id: str, n: int) -> int:
        """Set the commit's slot to ``n`` unless it has one; returns the slot that counts."""
        while True:
            current = call(f"reading {commit_id}", lambda: self._c.read_item(commit_id, partition_key=stream_id))
            if current.get("slot") is not None:
                return int(current["slot"])
            updated = {k: v for k, v in current.items() if not k.startswith("_")}
            updated["slot"] = n
            try:
                call(
                    f"positioning {commit_id}",
                    partial(
                        self._c.replace_item,
                        commit_id,
                        updated,
                        etag=current["_etag"],
                        match_condition=MatchConditions.IfNotModified,
                    ),
                )
                return n
            except CosmosHttpResponseError as e:
                if e.status_code != 412:
                    raise

    def read_all(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Events in log order after ``after`` (a position ``"<slot>:<version>"``)."""
        slot_after, version_after = _parse_position(after)
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
                commit = self._commit_for_slot(slot)
                if commit is None:
                    continue
                for event in self._events_of(commit):
                    if n == slot_after and event.version <= version_after:
                        continue
                    out.append(event.with_position(f"{n}:{event.version}"))
                    if len(out) >= limit:
                        return out
            next_slot = int(rows[-1]["n"]) + 1
        self._sweep()
        return out

    def _commit_for_slot(self, slot: Mapping[str, Any]) -> dict[str, Any] | None:
        """The commit a slot names, if the slot is the one that counts for it."""
        commit: dict[str, Any] = call(
            f"reading {slot['commit']}",
            lambda: self._c.read_item(slot["commit"], partition_key=slot["stream"]),
        )
        n = int(slot["n"])
        recorded = commit.get("slot")
        if recorded is None:
            recorded = self._record_slot(slot["stream"], slot["commit"], n)
        return commit if int(recorded) == n else None

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
        under an RU cap): the newest slot and its commit; the whole log only in the rare case
        where that slot does not count (it lost a repair race).
        """
        for query in (
            f"SELECT TOP {LAST_SLOTS} * FROM c WHERE c.kind = 'slot' ORDER BY c.n DESC",
            "SELECT * FROM c WHERE c.kind = 'slot' ORDER BY c.n DESC",
        ):
            rows = self._query("reading the global log", query, {}, LOG_PARTITION)
            for slot in rows:
                commit = self._commit_for_slot(slot)
                if commit is not None:
                    return f"{int(slot['n'])}:{int(commit['last'])}"
            if len(rows) < LAST_SLOTS:
                return None
        return None

    def close(self) -> None:
        """Close the HTTP session of a client this store built."""
        self._containers.close()


class _Collision(Exception):
    """The commit document already exists: another append won the version."""


def _parse_position(position: str | None) -> tuple[int, int]:
    if position is None:
        return 0, 0
    try:
        slot, _, version = position.partition(":")
        return int(slot), int(version)
    except ValueError as e:
        raise ValidationError(f"{position!r} is not a cosmos:// read_all position") from e


# ---------------------------------------------------------------------------------------
# View store
# ---------------------------------------------------------------------------------------


def _doc_id(collection: str, key: str) -> str:
    digest = hashlib.sha256(f"{collection}\x00{key}".encode()).hexdigest()[:40]
    return f"d-{digest}"


def _checkpoint_id(projection: str, key: str) -> str:
    digest = hashlib.sha256(f"{projection}\x00{key}".encode()).hexdigest()[:40]
    return f"k-{digest}"


_TX_FIELDS: Final = ("tx", "tx_at", "next", "next_rev")
ABORTED_RECORD_SECONDS: Final = 86_400.0
"""How long the record of an aborted view commit is kept (its writer may still try to commit)."""
_READ_CHUNK: Final = 500


def _record_id(tx: str) -> str:
    return f"t-{tx}"


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
        tx = uuid.uuid4().hex
        at = time.time()
        locks: dict[str, dict[str, Any]] = {}
        operations: list[tuple[Any, ...]] = []
        for write in writes:
            lock = {**write.body, "value": None, "rev": 0} if write.original is None else _clean(write.original)
            lock.update(tx=tx, tx_at=at, next=write.value, next_rev=write.revision)
            locks[write.item] = lock
            if write.original is None:
                operations.append(("create", (lock,)))
            else:
                operations.append(("replace", (write.item, lock), {"if_match_etag": write.original["_etag"]}))
        etags: dict[str, str] = {}
        try:
            for chunk in _chunks(operations, MAX_BATCH_OPERATIONS):
                results = call(
                    f"committing projection {projection} (locking)",
                    partial(self._c.execute_item_batch, list(chunk), partition_key=VIEWS_PARTITION),
                )
                for operation, result in zip(chunk, results, strict=True):
                    etags[_operation_item(operation)] = result["eTag"]
        except CosmosBatchOperationError as e:
            self._roll_back_own(tx, list(locks))
            raise _changed(projection, e) from e
        except Exception:
            with contextlib.suppress(Exception):
                self._roll_back_own(tx, list(locks))
            raise
        record = {
            "id": _record_id(tx),
            "pk": VIEWS_PARTITION,
            "kind": "tx",
            "tx": tx,
            "status": "committed",
            "projection": projection,
            "items": list(locks),
        }
        try:
            call(f"committing projection {projection}", partial(self._c.create_item, record))
        except CosmosResourceExistsError as e:
            # Another writer presumed this commit dead and aborted it first.
            self._roll_back_own(tx, list(locks))
            raise ConcurrencyError(
                projection, "no abort", 0, f"commit {tx} was aborted as stale before its commit point"
            ) from e
        self._roll_forward(tx, locks, etags)

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
        record = self._read(_record_id(tx))
        if record is None and not seen:
            return  # finished and deleted since its record was listed
        if record is None:
            # It may have finished (rolled forward, record deleted) since ``seen`` was read.
            seen = [row for row in self._read_many([row["id"] for row in seen]).values() if row.get("tx") == tx]
            if not seen:
                return
            record = self._read(_record_id(tx))
        if record is None:
            if any(time.time() - float(row.get("tx_at", 0)) < self.location.lock_timeout for row in seen):
                raise _Locked(tx)
            abort: dict[str, Any] = {
                "id": _record_id(tx),
                "pk": VIEWS_PARTITION,
                "kind": "tx",
                "tx": tx,
                "status": "aborted",
                "at": time.time(),
            }
            try:
                call(f"aborting view commit {tx}", partial(self._c.create_item, abort))
                record = abort
            except CosmosResourceExistsError:
                record = self._read(_record_id(tx))
                if record is None:  # committed, rolled forward and deleted meanwhile
                    return
        if record.get("status") == "committed":
            rows = self._read_many(list(record.get("items", ())))
            for row in rows.values():
                if row.get("tx") == tx:
                    self._roll_forward_row(row)
            self._delete(_record_id(tx))
        else:
            # Aborted records stay: a late writer must still find its commit point taken.
            for row in seen:
                self._roll_back_row(row)

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


__all__ = [
    "EVENTS_PARTITION_KEY_PATH",
    "LOG_PARTITION",
    "VIEWS_PARTITION",
    "VIEWS_PARTITION_KEY_PATH",
    "CosmosEventStore",
    "CosmosLocation",
    "CosmosViewStore",
    "StreamState",
    "call",
    "views_container_name",
]
