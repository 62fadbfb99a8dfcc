"""The one write path of imports and migrations: already-versioned events into a target store.

It uses the target's fastest path: ``bulk_append`` when the store declares it, else one
``append`` per run of consecutive events of one stream (which keeps the source's global
order, so that a re-export is byte-identical).  Every write is idempotent by event id and
version, so a resumed copy re-writes its last batch harmlessly; an event that differs from
what the target holds raises :class:`TargetConflict` naming the stream and version.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from skyferry.core.errors import ConcurrencyError
from skyferry.core.messages import Event
from skyferry.core.ports import (
    FEATURE_BULK_APPEND,
    BulkAppendEventStore,
    EventStore,
    append_limit,
    features_of,
)
from skyferry.migrate.errors import TargetConflict
from skyferry.migrate.format import canonical_bytes


class TargetWriter:
    """Writes versioned events into ``store``; counts what was new."""

    def __init__(self, store: EventStore, *, use_bulk: bool = True) -> None:
        self.store = store
        self.bulk = use_bulk and FEATURE_BULK_APPEND in features_of(store)
        self.limit = append_limit(store) or 1000
        self.written = 0
        self.skipped = 0

    @property
    def path(self) -> str:
        """The write path in use, for reports."""
        return "bulk_append" if self.bulk else "append"

    def write(self, events: Sequence[Event]) -> int:
        """Store ``events`` (each continuing its stream contiguously, or already stored); return new ones."""
        if not events:
            return 0
        if self.bulk:
            assert isinstance(self.store, BulkAppendEventStore)
            try:
                new = self.store.bulk_append(events)
            except ConcurrencyError as e:
                raise self._explain(e, events) from e
        else:
            new = 0
            for stream_id, run in groupby(events, key=lambda event: event.stream_id):
                whole = list(run)
                for start in range(0, len(whole), self.limit):
                    new += self._append_run(stream_id, whole[start : start + self.limit])
        self.written += new
        self.skipped += len(events) - new
        return new

    def _append_run(self, stream_id: str, run: list[Event]) -> int:
        first = run[0].version
        try:
            result = self.store.append(stream_id, [e.to_new() for e in run], first - 1)
        except ConcurrencyError as e:
            stored = self.store.read_stream(stream_id, from_version=first, to_version=run[-1].version)
            same = 0
            for mine, theirs in zip(run, stored, strict=False):
                if mine.version != theirs.version or canonical_bytes(mine) != canonical_bytes(theirs):
                    break
                same += 1
            if same == len(run):
                return 0
            if same == 0 or same < len(stored):
                raise self._explain(e, run) from e
            return self._append_run(stream_id, run[same:])
        return 0 if result.idempotent else len(run)

    def _explain(self, error: ConcurrencyError, events: Sequence[Event]) -> TargetConflict:
        """The first event of ``error``'s stream that the target holds differently, in words."""
        stream_id = error.stream_id
        mine = [event for event in events if event.stream_id == stream_id] or list(events)
        stored = {e.version: e for e in self.store.read_stream(stream_id, mine[0].version, mine[-1].version)}
        for event in mine:
            theirs = stored.get(event.version)
            if theirs is None:
                if event.version > error.actual + 1:
                    return TargetConflict(
                        stream_id,
                        event.version,
                        f"the target stream ends at version {error.actual}, the copy continues at "
                        f"{event.version} (events missing in between)",
                    )
                continue
            if canonical_bytes(theirs) != canonical_bytes(event):
                fields = [k for k, v in event.to_dict().items() if theirs.to_dict()[k] != v]
                return TargetConflict(
                    stream_id,
                    event.version,
                    f"the target holds event {theirs.id} there, which differs in {', '.join(fields)}",
                )
        return TargetConflict(stream_id, mine[0].version, str(error))
