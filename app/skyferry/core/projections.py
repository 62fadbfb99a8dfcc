"""Projections: read models built from events, with exactly-once effect.

A :class:`Projection` names the event types it handles and the logical collections it
writes, and applies one event at a time to a :class:`ViewBatch` (reads see the batch's
own writes).  Two ways feed it:

* :class:`ProjectionRunner` catches up from ``EventStore.read_all`` in batches: it applies
  a whole batch in memory, then commits the final documents and the ``$all`` checkpoint
  in one ``ViewStore.commit``, so a crash replays at most one uncommitted batch and never
  applies an event twice.  Each commit also rewrites a fence document on the condition
  that no other runner committed since this one read it, so two runners of the same
  projection cannot both commit a batch; documents read are written with
  ``expected_revision`` too, which guards against broker consumers of the same generation.
* :class:`ProjectionConsumer` handles broker messages: a per-stream checkpoint document
  (in ``$streams_<projection>_g<generation>``, key: the stream id) is written with
  ``expected_revision`` together with the view changes,
  so duplicates are skipped and two competing consumers cannot double-apply; a gap in a
  stream's versions (a message dead-lettered or lost) is filled from the event store.

Blue/green: the documents of generation *g* of projection *p* live in the physical
collections ``<collection>_g<g>``, and the live generation is an alias document in
``$aliases``.  :class:`ReadModels` resolves it for queries; :func:`rebuild` builds
generation *g + 1* beside the live one from the start of ``read_all``, switches the alias,
then drops generation *g*.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from skyferry.core.codec import decode
from skyferry.core.errors import ConcurrencyError, ConfigurationError
from skyferry.core.messages import Event, JSONObject
from skyferry.core.parking import (
    DEFAULT_RETRY,
    NOT_THE_EVENTS_FAULT,
    ParkedEvent,
    RetryPolicy,
    describe,
    drop_parked,
    park,
)
from skyferry.core.ports import EventStore, Message, ViewChange, ViewStore
from skyferry.core.upcasting import Upcasters

log = logging.getLogger(__name__)

ALIASES: Final = "$aliases"
"""Reserved view collection: the live generation of each projection (key: projection name)."""
STREAM_CHECKPOINTS: Final = "$streams"
"""Logical collection of the per-stream checkpoints of broker-fed consumers (key: stream id);
one physical collection per projection generation, see :func:`stream_checkpoint_collection`."""


class Projection:
    """Base of a read model.

    Subclasses set ``name`` (unique), ``version`` (bump when the code changes what it
    builds, then rebuild), ``handles`` (event types applied; others are skipped) and
    ``collections`` (the logical collections written), and implement :meth:`apply`.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    handles: ClassVar[frozenset[str]] = frozenset()
    collections: ClassVar[tuple[str, ...]] = ()

    def apply(self, event: Event, views: ViewBatch) -> None:
        """Apply one event through ``views`` (``get``/``put``/``delete``); must be deterministic."""
        raise NotImplementedError


def physical_collection(collection: str, generation: int) -> str:
    """The view-store collection holding ``collection`` of generation ``generation``."""
    return f"{collection}_g{generation}"


FENCE_KEY: Final = "$all"
"""Key of a catch-up runner's fence document in the generation's ``$streams_...`` collection
(never a stream id: ``$`` is not allowed in stream ids)."""


def stream_checkpoint_collection(projection: str, generation: int) -> str:
    """The view-store collection of one generation's per-stream checkpoints."""
    return f"{STREAM_CHECKPOINTS}_{projection}_g{generation}"


def generation_collections(projection: Projection, generation: int) -> dict[str, str]:
    """Logical -> physical collection names of one generation (per-stream checkpoints included)."""
    mapping = {c: physical_collection(c, generation) for c in projection.collections}
    mapping[STREAM_CHECKPOINTS] = stream_checkpoint_collection(projection.name, generation)
    return mapping


def checkpoint_name(projection: str, generation: int) -> str:
    """The checkpoint (and ``commit`` projection) name of one generation of a projection."""
    return f"{projection}_g{generation}"


class ViewBatch:
    """The documents one batch of events reads and writes, committed at the end.

    ``get`` returns the batch's own latest write, else the stored document (fetched once
    and remembered with its revision).  ``put`` replaces a document and ``delete`` removes
    it; the returned dicts belong to the batch: change them, then ``put`` them.  A write
    to a document read first is conditional on the revision read (``expected_revision``).
    Collection names are logical; they map to the projection generation's physical names.
    """

    __slots__ = ("_cache", "_dirty", "_mapping", "_views")

    def __init__(
        self,
        views: ViewStore,
        mapping: Mapping[str, str],
        cache: dict[tuple[str, str], list[Any]] | None = None,
    ) -> None:
        self._views = views
        self._mapping = mapping
        # (physical collection, key) -> [doc or None, revision or None (unknown)]
        self._cache: dict[tuple[str, str], list[Any]] = cache if cache is not None else {}
        self._dirty: set[tuple[str, str]] = set()

    def get(self, collection: str, key: str) -> JSONObject | None:
        """The document at ``key`` as this batch sees it, or ``None``."""
        slot = (self._mapping.get(collection, collection), key)
        entry = self._cache.get(slot)
        if entry is None:
            stored = self._views.get(slot[0], key)
            entry = [None, 0] if stored is None else [stored.value, stored.revision]
            self._cache[slot] = entry
        doc: JSONObject | None = entry[0]
        return doc

    def put(self, collection: str, key: str, doc: JSONObject | None) -> None:
        """Write ``doc`` at ``key`` (committed with the batch); ``None`` deletes the document."""
        # Inlined: this runs once per event during catch-up and rebuild.
        slot = (self._mapping.get(collection, collection), key)
        entry = self._cache.get(slot)
        if entry is None:
            self._cache[slot] = [doc, None]
        else:
            entry[0] = doc
        self._dirty.add(slot)

    def delete(self, collection: str, key: str) -> None:
        """Delete the document at ``key`` (committed with the batch)."""
        self.put(collection, key, None)

    def changes(self) -> list[ViewChange]:
        """The view changes of this batch: one per document written, its final value."""
        cache = self._cache
        return [ViewChange(slot[0], slot[1], cache[slot][0], cache[slot][1]) for slot in self._dirty]

    def committed(self) -> int:
        """Record that :meth:`changes` were committed; return how many documents were written."""
        cache = self._cache
        for slot in self._dirty:
            entry = cache[slot]
            if entry[1] is None:
                # Written without reading it first: its revision is unknown, so a later batch
                # must read it again (another writer may change it in between).
                del cache[slot]
            else:
                entry[1] = 0 if entry[0] is None else entry[1] + 1
        written = len(self._dirty)
        self._dirty = set()
        return written


class ReadModels:
    """Queries over the live generation of projections (resolved from ``$aliases``)."""

    def __init__(self, views: ViewStore) -> None:
        self.views = views

    def live(self, projection: str) -> tuple[int, int]:
        """``(live generation, alias revision)`` of ``projection`` (generation 1, revision 0 if never switched)."""
        doc = self.views.get(ALIASES, projection)
        if doc is None:
            return 1, 0
        return int(doc.value["generation"]), doc.revision

    def built_version(self, projection: str) -> int:
        """The ``Projection.version`` that built the live generation (1 if never rebuilt)."""
        doc = self.views.get(ALIASES, projection)
        return 1 if doc is None else int(doc.value.get("version", 1))

    def live_generation(self, projection: str) -> int:
        """The generation queries of ``projection`` read."""
        return self.live(projection)[0]

    def collection(self, projection: str, collection: str) -> str:
        """The physical collection of the live generation of ``projection``'s ``collection``."""
        return physical_collection(collection, self.live_generation(projection))

    def get(self, projection: str, collection: str, key: str) -> JSONObject | None:
        """A document of the live generation, or ``None``."""
        doc = self.views.get(self.collection(projection, collection), key)
        return None if doc is None else doc.value

    def query(
        self,
        projection: str,
        collection: str,
        *,
        prefix: str = "",
        where: tuple[str, str | int | bool] | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, JSONObject]]:
        """Documents of the live generation by key prefix / field, ascending by key."""
        found = self.views.query(self.collection(projection, collection), prefix=prefix, where=where, limit=limit)
        return [(key, doc.value) for key, doc in found]

    def checkpoint(self, projection: str) -> str | None:
        """The ``$all`` position the live generation of ``projection`` has reached."""
        return self.views.get_checkpoint(checkpoint_name(projection, self.live_generation(projection)))


class ProjectionRunner:
    """Catches one projection up from ``read_all`` (see the module docstring).

    ``generation=None`` follows the live generation (resolved on every :meth:`run_once`);
    a number pins one (used by :func:`rebuild`).  ``cache_limit`` bounds the documents
    remembered between batches.  A batch (``batch_size`` events, one commit) is read in
    pages of ``page_size`` events.

    ``stream_checkpoints=True`` also keeps the per-stream checkpoint documents of
    :class:`ProjectionConsumer` (and skips events they say are applied), so that a
    generation built from ``read_all`` (a rebuild) can be continued by broker consumers,
    or run beside them, without applying an event twice.
    """

    def __init__(
        self,
        events: EventStore,
        views: ViewStore,
        projection: Projection,
        *,
        upcasters: Upcasters | None = None,
        batch_size: int = 1000,
        page_size: int = 100,
        generation: int | None = None,
        cache_limit: int = 50_000,
        max_conflicts: int = 5,
        stream_checkpoints: bool = False,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if not projection.name:
            raise ConfigurationError(f"{type(projection).__name__} has no name")
        self.events = events
        self.views = views
        self.projection = projection
        self.upcasters = upcasters if upcasters else None
        self.batch_size = batch_size
        self.page_size = max(1, min(page_size, batch_size))
        self.generation = generation
        self.cache_limit = cache_limit
        self.max_conflicts = max_conflicts
        self.stream_checkpoints = stream_checkpoints
        self.retry = retry
        self.docs_written = 0
        self.parked = 0
        """Events this instance parked."""
        self.last_position: str | None = None
        """The position this runner last found committed or committed itself (``None``: not run yet)."""
        self._cache: dict[tuple[str, str], list[Any]] = {}
        self._cached_generation = 0

    def run_once(self, max_events: int | None = None) -> int:
        """Apply every event after the checkpoint (at most ``max_events``); return how many were read.

        When an event (or the commit of its batch) fails, the batch is taken again one event
        per commit: the failing event is retried, then parked (:mod:`skyferry.core.parking`),
        and the runner goes on.
        """
        projection = self.projection
        generation = self._generation()
        if generation != self._cached_generation:
            self._cache = {}
            self._cached_generation = generation
        mapping = generation_collections(projection, generation)
        name = checkpoint_name(projection.name, generation)
        fence_collection = mapping[STREAM_CHECKPOINTS]
        handles = projection.handles
        apply = projection.apply
        upcast = self.upcasters.upcast if self.upcasters is not None else None
        position, fence = self._start(name, fence_collection)
        total = 0
        conflicts = 0
        isolate = 0  # after a failure: how many events to take one per commit
        read_all = self.events.read_all
        page_size = self.page_size
        while max_events is None or total < max_events:
            want = self.batch_size if max_events is None else min(self.batch_size, max_events - total)
            if len(self._cache) > self.cache_limit:
                self._cache = {}
            views = ViewBatch(self.views, mapping, self._cache)
            read = fetched = 0
            last = position
            try:
                if isolate:
                    position, fence, read = self._one_at_a_time(generation, name, position, fence, isolate)
                    isolate = 0
                    total += read
                    continue
                # Several pages per commit: small pages keep the decoded events short-lived,
                # dead before the garbage collector promotes them (pages of 1,000 made it
                # run full collections: a third slower), one commit per batch keeps writes few.
                while read < want:
                    limit = min(page_size, want - read)
                    page = read_all(after=last, limit=limit)
                    if not page:
                        break
                    fetched = read + len(page)
                    end = page[-1].position
                    if end is None:
                        raise ConfigurationError(f"{self.events.url}: read_all returned an event without a position")
                    if self.stream_checkpoints:
                        for event in page:
                            key = event.stream_id
                            applied = views.get(STREAM_CHECKPOINTS, key)
                            if applied is not None and event.version <= applied["version"]:
                                continue
                            if event.type in handles:
                                apply(upcast(event) if upcast is not None else event, views)
                            views.put(STREAM_CHECKPOINTS, key, {"stream_id": key, "version": event.version})
                    else:
                        for event in page:
                            if event.type in handles:
                                apply(upcast(event) if upcast is not None else event, views)
                    read += len(page)
                    last = end
                    if len(page) < limit:
                        break  # caught up: commit what there is
                if not read or last is None:
                    break
                changes = views.changes()
                changes.append(ViewChange(fence_collection, FENCE_KEY, {"position": last}, expected_revision=fence))
                self.views.commit(name, changes, {"$all": last})
            except BaseException as e:
                # The remembered documents hold this batch's uncommitted changes: forget them.
                self._cache = {}
                if isinstance(e, ConcurrencyError):
                    # Another runner of this projection committed first: start again from its checkpoint.
                    conflicts += 1
                    if conflicts > self.max_conflicts:
                        raise
                    log.info("projection %s: conflict at commit, reloading from the checkpoint", name)
                    position, fence = self._start(name, fence_collection)
                    isolate = 0
                    continue
                if isinstance(e, Exception) and not isinstance(e, NOT_THE_EVENTS_FAULT) and not isolate and fetched:
                    # An event of this batch, or the batch's commit, failed: find which, one by one.
                    log.warning("projection %s: a batch failed (%s); taking it one event at a time", name, describe(e))
                    isolate = fetched
                    continue
                raise
            self.docs_written += views.committed()
            position = last
            fence += 1
            total += read
        self.last_position = position
        return total

    def _generation(self) -> int:
        return self.generation or ReadModels(self.views).live_generation(self.projection.name)

    def _one_at_a_time(
        self, generation: int, name: str, position: str | None, fence: int, count: int
    ) -> tuple[str | None, int, int]:
        """Take the next ``count`` events one per commit (see :meth:`_take_alone`).

        Returns ``(position, fence revision, events read)``.
        """
        read = 0
        while read < count:
            page = self.events.read_all(after=position, limit=min(self.page_size, count - read))
            if not page:
                break
            if page[-1].position is None:
                raise ConfigurationError(f"{self.events.url}: read_all returned an event without a position")
            for event in page:
                self._take_alone(generation, name, event, fence)
                fence += 1
                position = event.position
            read += len(page)
        return position, fence, read

    def _take_alone(self, generation: int, name: str, event: Event, fence: int) -> None:
        """Apply ``event`` in a commit of its own; retry it, then park it, while it keeps failing.

        A failure to apply it and a failure to store what it wrote (a store that refuses a
        document) count alike.  The parking commit writes none of the event's documents.
        """
        mapping = generation_collections(self.projection, generation)
        position = str(event.position)
        fenced = ViewChange(mapping[STREAM_CHECKPOINTS], FENCE_KEY, {"position": position}, expected_revision=fence)
        failures = 0
        while True:
            views = ViewBatch(self.views, mapping)
            try:
                self._apply_alone(event, views)
                changes = views.changes()
                self.views.commit(name, [*changes, fenced], {"$all": position})
            except NOT_THE_EVENTS_FAULT:
                raise
            except Exception as e:
                failures += 1
                if failures < self.retry.attempts:
                    log.debug("%s: event %s failed (attempt %d)", name, event.id, failures, exc_info=True)
                    self.retry.sleep(self.retry.backoff(failures))
                    continue
                error = e
                break
            self.docs_written += len(changes)
            return
        parking = ViewBatch(self.views, mapping)
        if self.stream_checkpoints:
            parking.put(STREAM_CHECKPOINTS, event.stream_id, _stream_checkpoint(event))
        changes = parking.changes()
        changes.append(park(self.views, name, self.projection.name, generation, event, error, failures, self.retry))
        self.views.commit(name, [*changes, fenced], {"$all": position})
        self.parked += 1

    def _apply_alone(self, event: Event, views: ViewBatch) -> None:
        if self.stream_checkpoints:
            applied = views.get(STREAM_CHECKPOINTS, event.stream_id)
            if applied is not None and event.version <= applied["version"]:
                return
        if event.type in self.projection.handles:
            self.projection.apply(self.upcasters.upcast(event) if self.upcasters is not None else event, views)
        if self.stream_checkpoints:
            views.put(STREAM_CHECKPOINTS, event.stream_id, _stream_checkpoint(event))

    def reapply(self, parked: ParkedEvent, event: Event) -> list[ViewChange]:
        """Apply a parked ``event`` again, alone, to the generation that parked it; the changes to commit.

        Used by :class:`~skyferry.core.parking.ParkedEvents` to retry it; the runner's
        checkpoints are already past the event and stay as they are.
        """
        views = ViewBatch(self.views, generation_collections(self.projection, parked.generation))
        if event.type in self.projection.handles:
            self.projection.apply(self.upcasters.upcast(event) if self.upcasters is not None else event, views)
        return views.changes()

    def committed_position(self) -> str | None:
        """The position the live (or pinned) generation has committed, as stored (any process)."""
        generation = self._generation()
        name = checkpoint_name(self.projection.name, generation)
        return self._start(name, generation_collections(self.projection, generation)[STREAM_CHECKPOINTS])[0]

    def _start(self, name: str, fence_collection: str) -> tuple[str | None, int]:
        """Where this generation stands: ``(position, fence revision)``.

        Every batch commit rewrites the fence document on the condition that it is still at
        the revision this runner read, so of two runners that start from one position only
        one can commit: the other reloads.  That also covers documents written without
        being read first.  The fence is read before the checkpoint, so a commit landing in
        between makes this runner's first commit fail rather than apply a batch twice.
        """
        fence = self.views.get(fence_collection, FENCE_KEY)
        if fence is not None:
            return str(fence.value["position"]), fence.revision
        return self.views.get_checkpoint(name), 0


class ProjectionConsumer:
    """Applies a projection from broker messages, one message per commit.

    Use :meth:`handle` as the broker handler.  Raises (so that the broker redelivers) on a
    revision conflict with a competing consumer, any store failure, and an event the
    projection fails on; on the ``retry.attempts``-th delivery such an event is parked
    instead (:mod:`skyferry.core.parking`): its record and the stream's checkpoint past it
    are committed together, and the message is acknowledged.  Subscribe with
    ``max_deliveries`` above ``retry.attempts``, so that the broker's dead letters only
    catch what could not even be parked.

    ``stream_checkpoints=False`` is for a handler whose effects are idempotent by
    themselves (the process manager): no per-stream checkpoint is kept, messages of
    types the projection does not handle are skipped from their headers, and a gap in a
    stream is not filled.
    """

    def __init__(
        self,
        events: EventStore,
        views: ViewStore,
        projection: Projection,
        *,
        upcasters: Upcasters | None = None,
        generation: int | None = None,
        stream_checkpoints: bool = True,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.events = events
        self.views = views
        self.projection = projection
        self.upcasters = upcasters
        self.generation = generation
        self.stream_checkpoints = stream_checkpoints
        self.retry = retry
        self.applied = 0
        self.duplicates = 0
        self.parked = 0

    def handle(self, message: Message) -> None:
        """Apply the event of ``message`` (and any earlier event of its stream not yet applied)."""
        generation = self.generation or ReadModels(self.views).live_generation(self.projection.name)
        try:
            self._handle(message, generation)
        except NOT_THE_EVENTS_FAULT:
            raise
        except Exception as error:
            if message.delivery_attempt < self.retry.attempts:
                raise  # the broker redelivers it after its backoff
            self._handle_alone(message, generation, error)

    def _handle(self, message: Message, generation: int) -> None:
        views = ViewBatch(self.views, generation_collections(self.projection, generation))
        pending = self._pending(message, views)
        if not pending:
            return
        for item in pending:
            if item.type in self.projection.handles:
                self.projection.apply(item, views)
        if self.stream_checkpoints:
            views.put(STREAM_CHECKPOINTS, pending[-1].stream_id, _stream_checkpoint(pending[-1]))
        changes = views.changes()
        if changes:
            self.views.commit(checkpoint_name(self.projection.name, generation), changes, {})
        self.applied += len(pending)

    def _pending(self, message: Message, views: ViewBatch) -> list[Event]:
        """The events ``message`` brings that are not applied yet, in stream order (``[]``: none)."""
        if not self.stream_checkpoints:
            if message.attributes.get("type", "") not in ("", *self.projection.handles):
                return []
            return [decode(message, self.events, self.upcasters)]
        checkpoint_key = message.key
        checkpoint = views.get(STREAM_CHECKPOINTS, checkpoint_key)
        applied_version = int(checkpoint["version"]) if checkpoint else 0
        announced = message.attributes.get("version", "")
        if announced.isdigit() and int(announced) <= applied_version:
            self.duplicates += 1  # known from the headers: a thin duplicate costs no store read
            return []
        event = decode(message, self.events, self.upcasters)
        if event.stream_id != checkpoint_key:
            checkpoint_key = event.stream_id
            checkpoint = views.get(STREAM_CHECKPOINTS, checkpoint_key)
            applied_version = int(checkpoint["version"]) if checkpoint else 0
        if event.version <= applied_version:
            self.duplicates += 1
            return []
        if event.version == applied_version + 1:
            return [event]
        missing = self.events.read_stream(event.stream_id, applied_version + 1, event.version - 1)
        if self.upcasters is not None:
            missing = self.upcasters.upcast_all(missing)
        return [*missing, event]

    def _handle_alone(self, message: Message, generation: int, error: Exception) -> None:
        """The last delivery failed too: apply its events one per commit, parking each that fails."""
        mapping = generation_collections(self.projection, generation)
        name = checkpoint_name(self.projection.name, generation)
        try:
            pending = self._pending(message, ViewBatch(self.views, mapping))
        except NOT_THE_EVENTS_FAULT:
            raise
        except Exception as e:
            # The message cannot even be decoded: park it as it came, and let it go.
            record = park(
                self.views, name, self.projection.name, generation, message, e, message.delivery_attempt, self.retry
            )
            self.views.commit(name, [record], {})
            self.parked += 1
            return
        for item in pending:
            views = ViewBatch(self.views, mapping)
            try:
                if item.type in self.projection.handles:
                    self.projection.apply(item, views)
                if self.stream_checkpoints:
                    views.put(STREAM_CHECKPOINTS, item.stream_id, _stream_checkpoint(item))
                changes = views.changes()
                if changes:
                    self.views.commit(name, changes, {})
            except NOT_THE_EVENTS_FAULT:
                raise
            except Exception as e:
                parking = ViewBatch(self.views, mapping)
                if self.stream_checkpoints:
                    parking.put(STREAM_CHECKPOINTS, item.stream_id, _stream_checkpoint(item))
                changes = parking.changes()
                changes.append(
                    park(
                        self.views,
                        name,
                        self.projection.name,
                        generation,
                        item,
                        e,
                        message.delivery_attempt,
                        self.retry,
                    )
                )
                self.views.commit(name, changes, {})
                self.parked += 1
                continue
            self.applied += 1


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """The outcome of a blue/green rebuild."""

    projection: str
    old_generation: int
    new_generation: int
    events: int
    documents: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        """Events read per second of rebuild."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> JSONObject:
        """The report as JSON types."""
        return {
            "projection": self.projection,
            "old_generation": self.old_generation,
            "new_generation": self.new_generation,
            "events": self.events,
            "documents": self.documents,
            "seconds": self.seconds,
            "events_per_second": self.events_per_second,
        }


def rebuild(
    events: EventStore,
    views: ViewStore,
    projection: Projection,
    *,
    upcasters: Upcasters | None = None,
    batch_size: int = 20_000,
    stream_checkpoints: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> RebuildReport:
    """Build the next generation of ``projection`` from the start, switch to it, drop the old one.

    Queries keep reading the live generation until the switch, which is one conditional
    write of the alias (two concurrent rebuilds: the second raises ``ConcurrencyError``).
    Leftovers of an interrupted rebuild are dropped first.  Pass ``stream_checkpoints=True``
    when the projection is fed by broker consumers (:class:`ProjectionConsumer`), so that
    they continue the new generation where the rebuild left each stream.  ``on_progress``
    is called with the number of events read after each batch of ``batch_size``.
    """
    started = time.perf_counter()
    read_models = ReadModels(views)
    old, alias_revision = read_models.live(projection.name)
    new = old + 1
    _drop_generation(views, projection, new)
    runner = ProjectionRunner(
        events,
        views,
        projection,
        upcasters=upcasters,
        batch_size=batch_size,
        generation=new,
        stream_checkpoints=stream_checkpoints,
    )
    count = _catch_up(runner, batch_size, on_progress)
    alias = {"generation": new, "version": projection.version}
    views.commit(ALIASES, [ViewChange(ALIASES, projection.name, alias, expected_revision=alias_revision)], {})
    count += _catch_up(runner, batch_size, on_progress)
    _drop_generation(views, projection, old)
    seconds = time.perf_counter() - started
    return RebuildReport(projection.name, old, new, count, runner.docs_written, seconds)


def _catch_up(runner: ProjectionRunner, batch_size: int, on_progress: Callable[[int], None] | None) -> int:
    """Run ``runner`` to the end of the log, one commit of ``batch_size`` events at a time."""
    count = 0
    while True:
        read = runner.run_once(max_events=batch_size)
        count += read
        if on_progress is not None:
            on_progress(read)
        if read < batch_size:
            return count


def _drop_generation(views: ViewStore, projection: Projection, generation: int) -> None:
    for collection in projection.collections:
        views.drop(physical_collection(collection, generation))
    views.drop(stream_checkpoint_collection(projection.name, generation))
    drop_parked(views, checkpoint_name(projection.name, generation))
    views.drop_checkpoints(checkpoint_name(projection.name, generation))


def _stream_checkpoint(event: Event) -> JSONObject:
    return {"stream_id": event.stream_id, "version": event.version}


def run_projections(runners: Sequence[ProjectionRunner]) -> int:
    """One catch-up pass of every runner; the number of events read in total."""
    return sum(runner.run_once() for runner in runners)
