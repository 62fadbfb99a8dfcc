"""Command handling: load an aggregate, decide, append, with the kernel's guarantees.

An :class:`Application` owns an event store and a view store.  Command handlers are plain
functions ``decide(aggregate, command) -> new events`` registered per command type with
the aggregate class they act on and how to find the aggregate id in the command.

Guarantees of :meth:`Application.execute`:

* **Validation first.**  Commands are validated when built (pydantic models); the domain's
  rules run in ``decide`` and raise :class:`~skyferry.core.errors.DomainError` subclasses.
  Either way nothing is stored.
* **Optimistic concurrency.**  Events are appended at the version the aggregate was loaded
  at.  When the caller passes ``expected_version`` and the stream is elsewhere, a
  :class:`~skyferry.core.errors.ConcurrencyError` carrying the actual version is raised before
  deciding.  Without ``expected_version``, a command registered ``retry_safe`` is reloaded
  and decided again on a conflict, at most ``max_conflict_retries`` times.
* **Idempotency.**  With an ``idempotency_key`` the events get ids derived from
  ``(stream, key, index)``, and a record in the reserved view collection
  ``$idempotency`` binds the key to the request's fingerprint (the command's type, which
  is the route, and all its fields: the target and the body) *before* anything is decided:
  the binding is one conditional write, so of concurrent requests with one key only one
  binds it.  A repeat of the request (same fingerprint) returns the first result with
  ``replayed=True`` and stores nothing; so does a concurrent duplicate (the store sees the
  same ids at the same versions, or the ids already in the stream), and so does a repeat
  against an imported copy of the store that has no record (the ids are found in the
  stream).  The key with another fingerprint raises :class:`IdempotencyKeyReused`, even
  while the first request is still running.  Keys that start with a prefix reserved by
  :meth:`Application.reserve_keys` belong to the application itself (a process manager
  passes them as ``internal_key``): a client's ``idempotency_key`` can never be one.
* **Snapshots** are written to the reserved view collection ``$snapshots`` every
  ``snapshot_every`` events and used when loading; they never change a result (a snapshot
  of another aggregate class or ``snapshot_schema`` is ignored).  An in-process cache of
  the latest state per stream (``cache_size`` entries) avoids re-reading whole streams;
  it is refreshed from the store on every load, so other writers are always seen.  With
  ``fastforward=False`` a retry-safe command without ``expected_version`` is decided on the
  cached state without reading the stream first: the append's version check detects a
  stale cache (then the kernel reloads and decides again), and a rejection or an empty
  decision is re-checked on fresh state.  This saves one read per command where one
  process writes most of the time, and costs a failed append when another process wrote.
* **Temporal queries.**  :meth:`Application.load` gives an aggregate as it was at a
  version or at a moment (``recorded_at``).
* **The write guard.**  Every command, whoever sends it (the API, the worker's process
  manager, a CLI command), first calls ``write_guard``; it raises
  :class:`~skyferry.core.errors.WriteFenced` while writes are paused (a migration
  cutover), and nothing is stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

import orjson

from skyferry.core.aggregate import Aggregate
from skyferry.core.errors import (
    ConcurrencyError,
    ConfigurationError,
    DomainError,
    SkyferryError,
    StreamNotFound,
    ValidationError,
)
from skyferry.core.messages import Event, JSONObject, NewEvent, utc_now, validate_stream_id
from skyferry.core.ports import FEATURE_TEMPORAL, Doc, EventStore, ViewChange, ViewStore, features_of
from skyferry.core.upcasting import Upcasters

log = logging.getLogger(__name__)

SNAPSHOTS: Final = "$snapshots"
"""Reserved view collection of aggregate snapshots (key: stream id)."""
IDEMPOTENCY: Final = "$idempotency"
"""Reserved view collection of idempotency records (key: hash of the idempotency key)."""
IDEMPOTENCY_KEY_MAX: Final = 200
MAX_VERSION: Final = 2**63 - 1
"""The largest stream version (every store keeps versions as signed 64-bit integers)."""

_ID_NAMESPACE: Final = uuid.UUID("5b0c7e9e-3f57-4c55-9d59-6b8f0e1d2a41")

AggregateT = TypeVar("AggregateT", bound=Aggregate)
Decision = Sequence[NewEvent] | NewEvent | None
Decider = Callable[[Any, Any], Decision]


class IdempotencyKeyReused(ValidationError):
    """An idempotency key is bound to another request (another route, target or body); nothing was stored."""

    def __init__(self, key: str, command: str) -> None:
        self.key = key
        super().__init__(
            f"idempotency key {key!r} was already used for another request (not this {command} "
            "with this target and body); use a new key for a new request"
        )


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a command stored: versions ``first_version..last_version`` of ``stream_id``.

    ``events`` are the stored events (with the stored ids, versions and timestamps).
    ``replayed`` is true when the result is that of an earlier request with the same
    idempotency key and nothing was stored now.  A command that decided no event has
    ``events == []`` and ``first_version == last_version ==`` the aggregate's version.
    """

    stream_id: str
    first_version: int
    last_version: int
    events: list[Event]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class CommandHandler:
    """How one command type is handled.

    ``decide(aggregate, command)`` returns the new events (a sequence, one event or
    ``None``) and raises a ``DomainError`` to reject the command; it must not change the
    aggregate.  ``retry_safe`` allows the automatic reload-and-decide-again on a conflict
    (true for commands whose decision depends only on the aggregate's current state).
    """

    command_type: type[Any]
    aggregate_type: type[Aggregate]
    aggregate_id: Callable[[Any], str]
    decide: Decider
    retry_safe: bool = True


def deterministic_event_id(stream_id: str, idempotency_key: str, index: int) -> str:
    """The id of the ``index``-th event a keyed command stores in ``stream_id``."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{stream_id}\x00{idempotency_key}\x00{index}"))


def command_payload(command: Any) -> JSONObject:
    """A command as JSON types: pydantic models, dataclasses and mappings are understood."""
    dump = getattr(command, "model_dump", None)
    if callable(dump):
        payload: JSONObject = dump(mode="json")
        return payload
    if dataclasses.is_dataclass(command) and not isinstance(command, type):
        return {k: str(v) for k, v in dataclasses.asdict(command).items()}
    if isinstance(command, Mapping):
        return {str(k): str(v) for k, v in command.items()}
    raise ConfigurationError(f"cannot read the fields of command {type(command).__name__}")


def _fingerprint(command: Any) -> str:
    body = orjson.dumps(
        {"type": type(command).__name__, "payload": command_payload(command)}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(body).hexdigest()


def _record_key(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


class Application:
    """The command side of an event-sourced application (see the module docstring)."""

    def __init__(
        self,
        events: EventStore,
        views: ViewStore,
        *,
        snapshot_every: int = 100,
        upcasters: Upcasters | None = None,
        max_conflict_retries: int = 3,
        cache_size: int = 10_000,
        fastforward: bool = True,
        write_guard: Callable[[], None] | None = None,
    ) -> None:
        if snapshot_every < 0 or max_conflict_retries < 0 or cache_size < 0:
            raise ConfigurationError("snapshot_every, max_conflict_retries and cache_size must be >= 0")
        self.events = events
        self.views = views
        self.snapshot_every = snapshot_every
        self.upcasters = upcasters if upcasters is not None else Upcasters()
        self.max_conflict_retries = max_conflict_retries
        self.cache_size = cache_size
        self.fastforward = fastforward
        self.write_guard = write_guard
        """Called before every command; raises ``WriteFenced`` while writes are paused."""
        self._handlers: dict[type[Any], CommandHandler] = {}
        self._reserved_keys: tuple[str, ...] = ()
        # stream id -> the aggregate at its latest known version.  An entry is checked out
        # (removed) while a command uses it, so no two threads ever share one object.
        self._cache: dict[str, Aggregate] = {}
        self._cache_lock = threading.Lock()
        self._temporal = FEATURE_TEMPORAL in features_of(events)
        self.snapshots_written = 0
        """How many snapshots this instance wrote (for reports and tests)."""

    # -- registration ----------------------------------------------------------------------

    def register(
        self,
        command_type: type[Any],
        aggregate_type: type[Aggregate],
        aggregate_id: Callable[[Any], str],
        decide: Decider,
        *,
        retry_safe: bool = True,
    ) -> None:
        """Register the handler of ``command_type`` (one handler per command type)."""
        self.add_handler(CommandHandler(command_type, aggregate_type, aggregate_id, decide, retry_safe))

    def add_handler(self, handler: CommandHandler) -> None:
        """Register ``handler``; a second handler for the same command type is a ConfigurationError."""
        if handler.command_type in self._handlers:
            raise ConfigurationError(f"command {handler.command_type.__name__} already has a handler")
        self._handlers[handler.command_type] = handler

    def reserve_keys(self, prefix: str) -> None:
        """Reserve the idempotency keys starting with ``prefix`` (``"transfer-process:"``) for this application.

        Only ``execute(..., internal_key=...)`` may use them; a client's ``idempotency_key``
        that starts with a reserved prefix is a ``ValidationError``.
        """
        if not prefix:
            raise ConfigurationError("a reserved idempotency key prefix must not be empty")
        self._reserved_keys = (*self._reserved_keys, prefix)

    @property
    def command_types(self) -> dict[str, type[Any]]:
        """The registered command types by class name."""
        return {cls.__name__: cls for cls in self._handlers}

    def stream_id_of(self, command: Any) -> str:
        """The stream the command acts on."""
        handler = self._handler(command)
        return handler.aggregate_type.stream_id_for(handler.aggregate_id(command))

    def _handler(self, command: Any) -> CommandHandler:
        handler = self._handlers.get(type(command))
        if handler is None:
            raise ConfigurationError(f"no handler is registered for command {type(command).__name__}")
        return handler

    # -- commands --------------------------------------------------------------------------

    def execute(
        self,
        command: Any,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        internal_key: str | None = None,
    ) -> CommandResult:
        """Handle ``command``: load, decide, append (see the module docstring for guarantees).

        ``idempotency_key`` is a client's key; ``internal_key`` the key of a command the
        application sends itself, which must start with a prefix reserved by
        :meth:`reserve_keys` (at most one of the two).  ``metadata`` (correlation_id,
        causation_id, actor ...) is added to every event.
        Raises ``DomainError`` (rejected), ``ConcurrencyError`` (conflict not retried),
        ``IdempotencyKeyReused``, ``ValidationError``, ``WriteFenced`` (writes are paused,
        nothing stored), ``TransientError`` (outcome unknown: retry with the same idempotency
        key to be safe).
        """
        handler = self._handler(command)
        if self.write_guard is not None:
            self.write_guard()
        aggregate_type = handler.aggregate_type
        aggregate_id = handler.aggregate_id(command)
        # The store validates the stream id before writing anything.
        stream_id = aggregate_type.stream_id_for(aggregate_id)
        if expected_version is not None and (
            isinstance(expected_version, bool) or not 0 <= expected_version <= MAX_VERSION
        ):
            raise ValidationError(f"expected_version must be an int from 0 to {MAX_VERSION}, not {expected_version!r}")
        fingerprint = ""
        bound = 0  # the revision of the key's record this request saw or wrote
        if idempotency_key is not None and internal_key is not None:
            raise ConfigurationError("give idempotency_key (a client's) or internal_key, not both")
        if idempotency_key is not None:
            self._check_client_key(idempotency_key)
            fingerprint = _fingerprint(command)
            recorded, bound = self._bind(idempotency_key, fingerprint, type(command).__name__)
            if recorded is not None:
                return recorded
        elif internal_key is not None:
            if not internal_key.startswith(self._reserved_keys) or len(internal_key) > IDEMPOTENCY_KEY_MAX:
                raise ConfigurationError(f"internal key {internal_key!r} does not start with a reserved prefix")
            idempotency_key = internal_key
            fingerprint = _fingerprint(command)
            recorded = self._replay(
                self.views.get(IDEMPOTENCY, _record_key(internal_key)),
                internal_key,
                fingerprint,
                type(command).__name__,
            )
            if recorded is not None:
                return recorded
        base_metadata = self._metadata(command, idempotency_key, metadata)
        attempts = 0
        # Without fast-forward, a retry-safe command is decided on the cached state and the
        # append's version check catches a stale cache (then: reload and decide again).
        trust_cache = not self.fastforward and expected_version is None and handler.retry_safe
        while True:
            aggregate = self._load_current(aggregate_type, aggregate_id, stream_id, read_tail=not trust_cache)
            loaded_version = aggregate.version
            if expected_version is not None and loaded_version != expected_version:
                raise ConcurrencyError(stream_id, expected_version, loaded_version)
            try:
                decision = handler.decide(aggregate, command)
            except DomainError:
                self._checkin(aggregate)  # deciding does not change the aggregate
                if trust_cache:
                    trust_cache = False  # the rejection may come from a stale cache: decide on fresh state
                    continue
                if idempotency_key is not None:
                    found = self._find_in_stream(stream_id, idempotency_key)
                    if found is not None:
                        return found
                raise
            new_events = self._prepare(decision, stream_id, idempotency_key, base_metadata)
            if not new_events:
                self._checkin(aggregate)
                if trust_cache:
                    trust_cache = False
                    continue
                return CommandResult(stream_id, loaded_version, loaded_version, [], False)
            try:
                appended = self.events.append(stream_id, new_events, loaded_version)
            except ConcurrencyError:
                self._forget(stream_id)
                if trust_cache:
                    # The cache was stale: not a conflict to count.  Deciding again on fresh
                    # state also finds an earlier request with this key, if any.
                    trust_cache = False
                    continue
                if idempotency_key is not None:
                    found = self._find_in_stream(stream_id, idempotency_key)
                    if found is not None:
                        return found
                if expected_version is None and handler.retry_safe and attempts < self.max_conflict_retries:
                    attempts += 1
                    continue
                raise
            break
        if appended.idempotent:
            # A concurrent duplicate stored these very ids at these very versions first.
            self._forget(stream_id)
            stored = self.upcasters.upcast_all(
                self.events.read_stream(stream_id, appended.first_version, appended.last_version)
            )
            result = CommandResult(stream_id, appended.first_version, appended.last_version, stored, True)
        else:
            stored = [
                Event(
                    e.id,
                    stream_id,
                    loaded_version + i,
                    e.type,
                    e.schema_version,
                    e.data,
                    e.metadata,
                    e.occurred_at,
                    e.recorded_at or e.occurred_at,
                )
                for i, e in enumerate(new_events, start=1)
            ]
            aggregate.apply_all(stored)
            self._after_append(aggregate, loaded_version)
            result = CommandResult(stream_id, appended.first_version, appended.last_version, stored, False)
        if idempotency_key is not None:
            self._record(idempotency_key, fingerprint, type(command).__name__, result, bound)
        return result

    def _metadata(self, command: Any, idempotency_key: str | None, metadata: Mapping[str, Any] | None) -> JSONObject:
        merged: JSONObject = {"command": type(command).__name__}
        if idempotency_key is not None:
            merged["idempotency_key"] = idempotency_key
        if metadata:
            merged.update(metadata)
        return merged

    def _prepare(
        self, decision: Decision, stream_id: str, idempotency_key: str | None, metadata: JSONObject
    ) -> list[NewEvent]:
        if decision is None:
            return []
        decided = [decision] if isinstance(decision, NewEvent) else list(decision)
        now = utc_now()
        # Built directly: dataclasses.replace costs more than the rest of a command's kernel work.
        return [
            NewEvent(
                event.type,
                event.data,
                {**metadata, **event.metadata} if event.metadata else metadata,
                deterministic_event_id(stream_id, idempotency_key, index) if idempotency_key is not None else event.id,
                event.schema_version,
                event.occurred_at,
                now,
            )
            for index, event in enumerate(decided)
        ]

    # -- idempotency -------------------------------------------------------------------------

    def _check_client_key(self, key: str) -> None:
        if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
            raise ValidationError(f"idempotency key must be 1 to {IDEMPOTENCY_KEY_MAX} characters")
        if key.startswith(self._reserved_keys):
            reserved = next(prefix for prefix in self._reserved_keys if key.startswith(prefix))
            raise ValidationError(f"idempotency keys starting with {reserved!r} are reserved; choose another key")

    def _bind(self, key: str, fingerprint: str, command: str) -> tuple[CommandResult | None, int]:
        """Bind ``key`` to ``fingerprint`` unless it is bound already: ``(earlier result or None, revision)``.

        The binding is a conditional write (``expected_revision=0``): of concurrent requests
        with one key exactly one writes it, the others read it and are checked against it.
        """
        record_key = _record_key(key)
        doc = self.views.get(IDEMPOTENCY, record_key)
        if doc is None:
            claim = {"fingerprint": fingerprint, "command": command}
            try:
                self.views.commit(IDEMPOTENCY, [ViewChange(IDEMPOTENCY, record_key, claim, expected_revision=0)], {})
                return None, 1
            except ConcurrencyError:
                doc = self.views.get(IDEMPOTENCY, record_key)
                if doc is None:  # written and deleted in between: nothing to compare with
                    raise
        return self._replay(doc, key, fingerprint, command), doc.revision

    def _replay(self, doc: Doc | None, key: str, fingerprint: str, command: str) -> CommandResult | None:
        """The result recorded for ``key``; ``None`` when there is none yet.

        Raises ``IdempotencyKeyReused`` when the key is bound to another request.
        """
        if doc is None:
            return None
        record = doc.value
        if record.get("fingerprint") != fingerprint:
            raise IdempotencyKeyReused(key, command)
        if "stream_id" not in record:
            return None  # bound by a request still running (or one that stored nothing): decide
        stream_id = str(record["stream_id"])
        first, last = int(record["first_version"]), int(record["last_version"])
        stored = self.upcasters.upcast_all(self.events.read_stream(stream_id, first, last)) if last >= first else []
        if first <= last and len(stored) != last - first + 1:
            raise StreamNotFound(stream_id)
        return CommandResult(stream_id, first, last, stored, True)

    def _find_in_stream(self, stream_id: str, idempotency_key: str) -> CommandResult | None:
        """The events an earlier request with this key stored in ``stream_id``, if any."""
        first_id = deterministic_event_id(stream_id, idempotency_key, 0)
        history = self.events.read_stream(stream_id)
        for position, event in enumerate(history):
            if event.id == first_id:
                found = [event]
                for index, later in enumerate(history[position + 1 :], start=1):
                    if later.id != deterministic_event_id(stream_id, idempotency_key, index):
                        break
                    found.append(later)
                stored = self.upcasters.upcast_all(found)
                return CommandResult(stream_id, found[0].version, found[-1].version, stored, True)
        return None

    def _record(self, idempotency_key: str, fingerprint: str, command: str, result: CommandResult, bound: int) -> None:
        """Record the result under the key, if the record is still at revision ``bound`` (0: absent)."""
        record = {
            "fingerprint": fingerprint,
            "command": command,
            "stream_id": result.stream_id,
            "first_version": result.first_version,
            "last_version": result.last_version,
        }
        change = ViewChange(IDEMPOTENCY, _record_key(idempotency_key), record, expected_revision=bound)
        try:
            self.views.commit(IDEMPOTENCY, [change], {})
        except ConcurrencyError:
            # A concurrent duplicate (same fingerprint) recorded the same result first: nothing to do.
            log.debug("idempotency record for %r already written", idempotency_key)

    # -- loading -----------------------------------------------------------------------------

    def load(
        self,
        aggregate_type: type[AggregateT],
        aggregate_id: str,
        *,
        as_of: datetime | None = None,
        at_version: int | None = None,
    ) -> AggregateT:
        """The aggregate as it is now, or as it was at ``at_version`` / at the moment ``as_of``.

        ``as_of`` compares with the events' ``recorded_at``; ``at_version`` beyond the
        stream's end gives the latest state (check ``.version``).  Raises ``StreamNotFound``
        when the aggregate had no event at that point, ``ValidationError`` for a naive
        ``as_of`` or a version below 1.
        """
        stream_id = validate_stream_id(aggregate_type.stream_id_for(aggregate_id))
        if as_of is None and at_version is None:
            current = self._load_current(aggregate_type, aggregate_id, stream_id)
            # The caller gets a copy: the cached object stays private to commands.
            aggregate = aggregate_type(aggregate_id)
            if current.version:
                aggregate.restore(orjson.loads(orjson.dumps(current.snapshot())), current.version)
            self._checkin(current)
        elif as_of is not None:
            if as_of.tzinfo is None:
                raise ValidationError("as_of must be timezone-aware (UTC)")
            aggregate = aggregate_type(aggregate_id)
            if self._temporal:
                history = self.events.read_stream_as_of(stream_id, as_of)  # type: ignore[attr-defined]
            else:
                history = [e for e in self.events.read_stream(stream_id) if e.recorded_at <= as_of]
            if at_version is not None:
                history = [e for e in history if e.version <= at_version]
            aggregate.apply_all(self.upcasters.upcast_all(history))
        else:
            assert at_version is not None
            if not 1 <= at_version <= MAX_VERSION:
                raise ValidationError(f"at_version must be from 1 to {MAX_VERSION}, not {at_version}")
            aggregate = aggregate_type(aggregate_id)
            self._restore_snapshot(aggregate, stream_id, at_version)
            if aggregate.version < at_version:
                history = self.events.read_stream(stream_id, aggregate.version + 1, at_version)
                aggregate.apply_all(self.upcasters.upcast_all(history))
        if aggregate.version == 0:
            raise StreamNotFound(stream_id)
        return aggregate

    def _load_current(
        self, aggregate_type: type[AggregateT], aggregate_id: str, stream_id: str, *, read_tail: bool = True
    ) -> AggregateT:
        """The aggregate at the stream's latest version, checked out of the cache (see :meth:`_checkin`)."""
        cached = self._checkout(stream_id)
        if cached is not None and type(cached) is aggregate_type:
            aggregate: AggregateT = cached
            if not read_tail:
                return aggregate
        else:
            aggregate = aggregate_type(aggregate_id)
            if self.snapshot_every:
                self._restore_snapshot(aggregate, stream_id, None)
        history = self.events.read_stream(stream_id, aggregate.version + 1)
        if history:
            aggregate.apply_all(self.upcasters.upcast_all(history))
        return aggregate

    def _restore_snapshot(self, aggregate: Aggregate, stream_id: str, at_most: int | None) -> None:
        if not self.snapshot_every:
            return
        doc = self.views.get(SNAPSHOTS, stream_id)
        if doc is None:
            return
        snap = doc.value
        if snap.get("type") != type(aggregate).__name__ or snap.get("schema") != aggregate.snapshot_schema:
            return
        version = int(snap["version"])
        if at_most is not None and version > at_most:
            return
        aggregate.restore(snap["state"], version)

    def _after_append(self, aggregate: Aggregate, previous_version: int) -> None:
        self._checkin(aggregate)
        every = self.snapshot_every
        if every and aggregate.version // every > previous_version // every:
            self._write_snapshot(aggregate)

    def _write_snapshot(self, aggregate: Aggregate) -> None:
        doc = {
            "type": type(aggregate).__name__,
            "schema": aggregate.snapshot_schema,
            "version": aggregate.version,
            "state": aggregate.snapshot(),
        }
        try:
            self.views.commit(SNAPSHOTS, [ViewChange(SNAPSHOTS, aggregate.stream_id, doc)], {})
        except SkyferryError:
            # The command is stored; a missing snapshot only costs a longer load later.
            log.warning("could not write the snapshot of %s", aggregate.stream_id, exc_info=True)
            return
        self.snapshots_written += 1

    def snapshot(self, aggregate_type: type[Aggregate], aggregate_id: str) -> int:
        """Write a snapshot of the aggregate now; return its version."""
        stream_id = aggregate_type.stream_id_for(aggregate_id)
        aggregate = self._load_current(aggregate_type, aggregate_id, stream_id)
        self._checkin(aggregate)
        if aggregate.version == 0:
            raise StreamNotFound(stream_id)
        self._write_snapshot(aggregate)
        return aggregate.version

    # -- cache -------------------------------------------------------------------------------

    def _checkout(self, stream_id: str) -> Aggregate | None:
        if not self.cache_size:
            return None
        with self._cache_lock:
            return self._cache.pop(stream_id, None)

    def _checkin(self, aggregate: Aggregate) -> None:
        """Put an aggregate back in the cache; only its user may change it until then."""
        if not self.cache_size or not aggregate.version:
            return
        with self._cache_lock:
            cache = self._cache
            cache.pop(aggregate.stream_id, None)
            if len(cache) >= self.cache_size:
                del cache[next(iter(cache))]
            cache[aggregate.stream_id] = aggregate

    def _forget(self, stream_id: str) -> None:
        with self._cache_lock:
            self._cache.pop(stream_id, None)
