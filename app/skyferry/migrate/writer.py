"""The one write path of imports and migrations: already-versioned events into a target store.

It uses the target's fastest path: ``bulk_append`` when the store declares it, else one
``append`` per run of consecutive events of one stream (which keeps the source's global
order, so that a re-export is byte-identical).  Writes are cut to the target's own limits
(:class:`~skyferry.core.ports.WriteLimits`: DynamoDB's 100 items and 4 MB per transaction,
Firestore's 500 writes per commit), in order, so each stream's versions stay contiguous;
no option is needed for that.  When a call is cut, every event of it is validated before
the first is written: a batch holding one invalid event writes nothing.  Every write is
idempotent by event id and version, so a resumed copy re-writes its last batch harmlessly;
an event that differs from what the target holds raises :class:`TargetConflict` naming
the stream and version.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from typing import Final

from skyferry.core.errors import ConcurrencyError
from skyferry.core.messages import Event, validate_stream_id
from skyferry.core.ports import (
    FEATURE_BULK_APPEND,
    BulkAppendEventStore,
    EventStore,
    features_of,
    write_limits,
)
from skyferry.migrate.errors import TargetConflict
from skyferry.migrate.format import canonical_bytes

APPEND_EVENTS: Final = 1000
"""Events per ``append`` where the target sets no cap of its own."""


def validate_all(events: Sequence[Event]) -> None:
    """Raise the store's error for the first event of ``events`` no store may hold."""
    for event in events:
        validate_stream_id(event.stream_id)
        event.to_new().validate()


class TargetWriter:
    """Writes versioned events into ``store``; counts what was new."""

    def __init__(self, store: EventStore, *, use_bulk: bool = True) -> None:
        self.store = store
        self.bulk = use_bulk and FEATURE_BULK_APPEND in features_of(store)
        self.limits = write_limits(store)
        self.written = 0
        self.skipped = 0

    @property
    def path(self) -> str:
        """The write path in use, for reports."""
        return "bulk_append" if self.bulk else "append"

    def write(self, events: Sequence[Event], *, validated: bool = False) -> int:
        """Store ``events`` (each continuing its stream contiguously, or already stored); return
        the new ones.  Nothing is written unless every event is valid (``validated``: the
        caller checked them already)."""
        if not events:
            return 0
        new = 0
        if self.bulk:
            assert isinstance(self.store, BulkAppendEventStore)
            parts = list(self.limits.split(events))
            if len(parts) > 1 and not validated:
                validate_all(events)  # one call validates its own events; several must not write a part
            for part in parts:
                try:
                    new += self.store.bulk_append(part)
                except ConcurrencyError as e:
                    raise self._explain(e, part) from e
        else:
            if not validated:
                validate_all(events)
            for stream_id, run in groupby(events, key=lambda event: event.stream_id):
                for part in self.limits.split(list(run), fallback=APPEND_EVENTS):
                    new += self._append_run(stream_id, list(part))
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
