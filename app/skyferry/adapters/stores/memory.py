"""In-process event store and view store: ``memory://`` and ``memory://NAME``.

URL fields (for tests and local use):

* ``memory://`` gives a fresh, empty instance each time it is opened.
* ``memory://NAME`` gives the process-wide instance called ``NAME`` (created on first
  use), so an API and a worker thread in one process share the same data.

Nothing is persisted: the data lives as long as the process.  Both stores are
thread-safe (one lock per instance) and keep every guarantee of the ports.  The global
order of ``read_all`` is the order of appends under the lock, so it is complete and
stable by construction; positions are the decimal index of the event in that order.

Like every other store, the event store keeps ``data`` and ``metadata`` as their JSON
text and decodes them on each read: a caller (or an upcaster) that changes what it read
changes its own copy, never the history, and values the JSON encoder converts (a tuple, a
``datetime``) come back as every store gives them back.  View documents are copied in and
out for the same reason.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import orjson

from skyferry.adapters.stores._common import check_limit, field_equals
from skyferry.core.errors import ConcurrencyError, ConfigurationError, ValidationError
from skyferry.core.messages import Event, NewEvent, check_append, encode_json, utc_now
from skyferry.core.ports import (
    FEATURE_BULK_APPEND,
    FEATURE_COUNT,
    FEATURE_TEMPORAL,
    FEATURE_TRANSACTIONS_ACROSS_STREAMS,
    AppendResult,
    Doc,
    ExpectedVersion,
    ViewChange,
    expected_as_int,
    resolve_conflict,
)

_registry_lock = threading.Lock()
_loads = orjson.loads
_new_tuple = tuple.__new__


def _kept(event: Event) -> Event:
    """``event`` as the store keeps it: ``data`` and ``metadata`` as canonical JSON bytes,
    timestamps in UTC."""
    return _new_tuple(
        Event,
        (
            *event[:5],
            encode_json(event.data),
            encode_json(event.metadata),
            event.occurred_at.astimezone(UTC),
            event.recorded_at.astimezone(UTC),
            event.position,
        ),
    )


def _fresh(kept: Event) -> Event:
    """A stored event as a reader gets it: its own ``data`` and ``metadata``, decoded anew."""
    data: Any = kept[5]  # the JSON bytes of _kept
    metadata: Any = kept[6]
    return _new_tuple(Event, (*kept[:5], _loads(data), _loads(metadata), *kept[7:]))


def _instance_name(url: str) -> str:
    """The ``NAME`` of ``memory://NAME`` ('' for a fresh instance)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "memory":
        raise ConfigurationError(f"not a memory:// URL: {url!r}")
    return parts.netloc + parts.path.rstrip("/")


class _Named:
    """Mixin: the process-wide named instances of one class."""

    _instances: ClassVar[dict[str, Any]]

    @classmethod
    def _named(cls, url: str, factory: Any, *, existing: bool = False) -> Any:
        name = _instance_name(url)
        if not name:
            if existing:
                raise ConfigurationError(
                    "memory:// is a new, empty store each time it is opened: nothing to read; "
                    "name one this process holds (memory://NAME)"
                )
            return factory()
        with _registry_lock:
            instance = cls._instances.get(name)
            if instance is None:
                if existing:
                    raise ConfigurationError(f"this process holds no store memory://{name}")
                instance = cls._instances[name] = factory()
            return instance

    @classmethod
    def forget(cls, name: str) -> None:
        """Drop the named instance ``name`` (tests call this to free memory)."""
        with _registry_lock:
            cls._instances.pop(name, None)


class MemoryEventStore(_Named):
    """An event store in a Python list; features ``bulk_append``, ``temporal``,
    ``transactions_across_streams``."""

    _instances: ClassVar[dict[str, Any]] = {}
    features: frozenset[str] = frozenset(
        {FEATURE_BULK_APPEND, FEATURE_COUNT, FEATURE_TEMPORAL, FEATURE_TRANSACTIONS_ACROSS_STREAMS}
    )

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self.identity = ("memory", _instance_name(url) or str(id(self)))
        self._lock = threading.RLock()
        self._log: list[Event] = []
        self._streams: dict[str, list[Event]] = {}
        self._ids: dict[str, tuple[str, int]] = {}

    @classmethod
    def from_url(cls, url: str, *, existing: bool = False) -> Self:
        """``memory://`` (fresh) or ``memory://NAME`` (the shared named instance); ``existing``:
        the named instance must be held already (a fresh one is refused)."""
        store: Self = cls._named(url, lambda: cls(url), existing=existing)
        return store

    # -- writing -------------------------------------------------------------------------

    def _plan(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion
    ) -> AppendResult | list[Event]:
        """Under the lock: the idempotent result, the events to store, or a raise."""
        check_append(stream_id, list(events))
        want = expected_as_int(expected_version)
        stream = self._streams.get(stream_id, [])
        actual = len(stream)
        known = {e.id: self._ids[e.id] for e in events if e.id in self._ids}
        if known or (want is not None and want != actual):
            others = [i for i, (s, _) in known.items() if s != stream_id]
            if others:
                raise ConcurrencyError(
                    stream_id,
                    expected_version if isinstance(expected_version, int) else expected_version.value,
                    actual,
                    f"event id {others[0]} is already stored in stream {known[others[0]][0]!r}",
                )
            return resolve_conflict(stream_id, events, expected_version, actual, {i: v for i, (_, v) in known.items()})
        now = utc_now()
        return [
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

    def _store(self, stored: list[Event]) -> AppendResult:
        stream = self._streams.setdefault(stored[0].stream_id, [])
        for event in stored:
            positioned = _kept(event.with_position(str(len(self._log))))
            self._log.append(positioned)
            stream.append(positioned)
            self._ids[event.id] = (event.stream_id, event.version)
        return AppendResult(stored[0].stream_id, stored[0].version, stored[-1].version)

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> AppendResult:
        """Append atomically with an optimistic-concurrency check (see ``EventStore.append``)."""
        with self._lock:
            planned = self._plan(stream_id, events, expected_version)
            if isinstance(planned, AppendResult):
                return planned
            return self._store(planned)

    def append_many(self, batch: Sequence[tuple[str, Sequence[NewEvent], ExpectedVersion]]) -> list[AppendResult]:
        """Apply every append of ``batch`` or none of them."""
        with self._lock:
            streams = [stream_id for stream_id, _, _ in batch]
            if len(set(streams)) != len(streams):
                raise ValidationError("append_many: a stream appears twice in one batch")
            plans = [self._plan(s, e, v) for s, e, v in batch]
            ids = [e.id for p in plans if not isinstance(p, AppendResult) for e in p]
            if len(set(ids)) != len(ids):
                raise ValidationError("append_many: an event id appears twice in one batch")
            return [p if isinstance(p, AppendResult) else self._store(p) for p in plans]

    def bulk_append(self, events: Sequence[Event]) -> int:
        """Store already-versioned events atomically; already-stored ones are skipped."""
        with self._lock:
            pending: list[Event] = []
            next_version: dict[str, int] = {}
            batch_ids: set[str] = set()
            for event in events:
                check_append(event.stream_id, [event.to_new()])
                current = next_version.get(event.stream_id, len(self._streams.get(event.stream_id, [])))
                stored = self._ids.get(event.id)
                if event.version <= current and event.id not in batch_ids:
                    if stored != (event.stream_id, event.version):
                        raise ConcurrencyError(
                            event.stream_id,
                            event.version - 1,
                            current,
                            f"version {event.version} holds another event than {event.id}",
                        )
                    continue
                if event.version != current + 1 or stored is not None or event.id in batch_ids:
                    raise ConcurrencyError(
                        event.stream_id,
                        event.version - 1,
                        current,
                        f"event {event.id} at version {event.version} does not continue the stream",
                    )
                next_version[event.stream_id] = event.version
                batch_ids.add(event.id)
                pending.append(event.with_position(None))
            for event in pending:
                self._store([event])
            return len(pending)

    # -- reading -------------------------------------------------------------------------

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[Event]:
        """The stream's events in ``[from_version, to_version]`` (see ``EventStore.read_stream``)."""
        check_limit(limit, minimum=0)
        with self._lock:
            stream = self._streams.get(stream_id, [])
            last = len(stream) if to_version is None else min(to_version, len(stream))
            selected = stream[max(from_version, 1) - 1 : max(last, 0)]
        if backwards:
            selected = selected[::-1]
        return [_fresh(e) for e in (selected if limit is None else selected[:limit])]

    def read_stream_as_of(self, stream_id: str, as_of: datetime) -> list[Event]:
        """The stream's events recorded at or before ``as_of``."""
        with self._lock:
            return [_fresh(e) for e in self._streams.get(stream_id, []) if e.recorded_at <= as_of]

    def stream_version(self, stream_id: str) -> int:
        """The stream's last version, 0 when it does not exist."""
        with self._lock:
            return len(self._streams.get(stream_id, []))

    def list_streams(self, prefix: str = "") -> Iterator[str]:
        """Stream ids starting with ``prefix``, ascending."""
        with self._lock:
            names = sorted(s for s in self._streams if s.startswith(prefix))
        return iter(names)

    def read_all(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Events after ``after`` in append order, each with its position."""
        check_limit(limit, minimum=1)
        start = 0 if after is None else _position(after) + 1
        with self._lock:
            return [_fresh(e) for e in self._log[start : start + limit]]

    def count_after(self, after: str | None = None) -> int:
        """How many events follow ``after`` (feature ``count``)."""
        start = 0 if after is None else _position(after) + 1
        with self._lock:
            return max(len(self._log) - start, 0)

    def last_position(self) -> str | None:
        """Position of the last stored event, ``None`` when empty."""
        with self._lock:
            return self._log[-1].position if self._log else None

    def close(self) -> None:
        """Nothing to release; a named instance keeps its data for the process's life."""


def _position(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise ValidationError(f"{text!r} is not a position of a memory:// store") from e
    if value < 0:
        raise ValidationError(f"{text!r} is not a position of a memory:// store")
    return value


class MemoryViewStore(_Named):
    """A view store in Python dicts; commits are atomic under one lock."""

    _instances: ClassVar[dict[str, Any]] = {}

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.RLock()
        self._collections: dict[str, dict[str, Doc]] = {}
        self._checkpoints: dict[str, dict[str, str]] = {}

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``memory://`` (fresh) or ``memory://NAME`` (the shared named instance)."""
        store: Self = cls._named(url, lambda: cls(url))
        return store

    def get(self, collection: str, key: str) -> Doc | None:
        """The document at ``key``, or ``None``."""
        with self._lock:
            doc = self._collections.get(collection, {}).get(key)
        return None if doc is None else Doc(copy.deepcopy(doc.value), doc.revision)

    def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Doc]:
        """The documents that exist among ``keys``."""
        with self._lock:
            docs = self._collections.get(collection, {})
            found = {k: docs[k] for k in keys if k in docs}
        return {k: Doc(copy.deepcopy(d.value), d.revision) for k, d in found.items()}

    def query(
        self,
        collection: str,
        *,
        prefix: str = "",
        where: tuple[str, str | int | bool] | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """Documents by key prefix and optional field equality, ascending by key."""
        with self._lock:
            items = sorted((k, d) for k, d in self._collections.get(collection, {}).items() if k.startswith(prefix))
        result: list[tuple[str, Doc]] = []
        for key, doc in items:
            if where is not None and not field_equals(doc.value, where):
                continue
            result.append((key, Doc(copy.deepcopy(doc.value), doc.revision)))
            if limit is not None and len(result) >= limit:
                break
        return result

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: Mapping[str, str]) -> None:
        """Apply every change and checkpoint entry, or none (a revision mismatch raises)."""
        with self._lock:
            staged: dict[tuple[str, str], Doc | None] = {}
            for change in changes:
                slot = (change.collection, change.key)
                current = (
                    staged[slot] if slot in staged else self._collections.get(change.collection, {}).get(change.key)
                )
                revision = current.revision if current is not None else 0
                if change.expected_revision is not None and change.expected_revision != revision:
                    raise ConcurrencyError(f"{change.collection}/{change.key}", change.expected_revision, revision)
                if change.doc is None:
                    staged[slot] = None
                else:
                    staged[slot] = Doc(copy.deepcopy(change.doc), revision + 1)
            for (collection, key), doc in staged.items():
                docs = self._collections.setdefault(collection, {})
                if doc is None:
                    docs.pop(key, None)
                else:
                    docs[key] = doc
            if checkpoint:
                self._checkpoints.setdefault(projection, {}).update(checkpoint)

    def get_checkpoint(self, projection: str, key: str = "$all") -> str | None:
        """The last committed checkpoint value of ``(projection, key)``."""
        with self._lock:
            return self._checkpoints.get(projection, {}).get(key)

    def drop(self, collection: str) -> None:
        """Delete every document of ``collection``."""
        with self._lock:
            self._collections.pop(collection, None)

    def drop_checkpoints(self, projection: str) -> None:
        """Forget the checkpoints of ``projection``."""
        with self._lock:
            self._checkpoints.pop(projection, None)

    def close(self) -> None:
        """Nothing to release; a named instance keeps its data for the process's life."""
