"""Migrate: copy one store into another, then (``--follow``) keep tailing it; cutover.

The copy tails the source's ``read_all`` from the checkpoint kept in the target's view
store, writes through :class:`~skyferry.migrate.writer.TargetWriter` (``bulk_append`` when the
target has it, ``concurrency`` writes in flight) and commits the source position after each
batch, once every write of it is stored, so a killed migration
resumes where it stopped.  Where the target copies from the source (feature
``copy_from``: SQLite and PostgreSQL, from each other and themselves) and the migration
neither shards nor transforms, each batch goes as the rows the source keeps instead
(write path ``copy_from``; PostgreSQL into PostgreSQL from server to server), checked as
a batch; a batch that needs checking event by event (the first one of a resumed copy)
still goes the first way.  With ``follow`` it keeps polling once caught up, reporting the
lag; a cutover fences writes on the source, drains what is left, verifies, and reports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from skyferry.core.messages import Event, utc_now
from skyferry.core.ports import FEATURE_COPY_FROM, CopyingEventStore, EventStore, ViewStore, count_after, features_of
from skyferry.migrate import checkpoints
from skyferry.migrate.fence import set_fence
from skyferry.migrate.options import at_least, distinct
from skyferry.migrate.pipeline import ReadAhead
from skyferry.migrate.progress import Progress
from skyferry.migrate.sharding import Shard, owned
from skyferry.migrate.transforms import Transformer
from skyferry.migrate.verify import VerifyReport, verify_stores
from skyferry.migrate.writer import CONCURRENCY, TargetWriter, check_concurrency

READ_BATCH = 5000
COPY_BATCH = 20_000
"""Events per batch on the ``copy_from`` path, which holds a page of rows at a time, or none
(memory does not grow with it): fewer checkpoints and commits a copy."""
FIRST_BATCH = 1000
"""The first read of a catch-up is smaller, so that the writer starts while the reader fetches more."""


@dataclass(slots=True)
class MigrateReport:
    """What a migration did."""

    source: str
    target: str
    events: int = 0
    resumed_events: int = 0
    written: int = 0
    skipped: int = 0
    batches: int = 0
    write_path: str = "append"
    last_position: str | None = None
    lag_seconds: float | None = None
    caught_up: bool = False
    fenced: bool = False
    verify: VerifyReport | None = None
    transform: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "command": "migrate",
            "source": self.source,
            "target": self.target,
            "events": self.events,
            "resumed_events": self.resumed_events,
            "written": self.written,
            "skipped": self.skipped,
            "write_path": self.write_path,
            "last_position": self.last_position,
            "caught_up": self.caught_up,
            "lag_seconds": self.lag_seconds,
            "fenced": self.fenced,
            "verify": None if self.verify is None else self.verify.to_json(),
            "transform": self.transform,
        }


class Migration:
    """One store-to-store copy job; :meth:`copy_once` moves one batch."""

    def __init__(
        self,
        source: EventStore,
        target: EventStore,
        target_views: ViewStore,
        *,
        shard: Shard | None = None,
        transformer: Transformer | None = None,
        batch: int | None = None,
        progress: Progress | None = None,
        concurrency: int = CONCURRENCY,
    ) -> None:
        if batch is not None:
            at_least(batch, 1, "--batch")
        check_concurrency(concurrency)
        distinct(source, target, "migrate")
        self.source = source
        self.target = target
        self.views = target_views
        self.shard = shard
        self.progress = progress
        if transformer is not None and transformer.allow_count_change:
            transformer = Transformer(transformer.spec, transformer.function, allow_count_change=True, target=target)
        self.transformer = transformer
        self.writer = TargetWriter(target, concurrency=concurrency)
        self.direct: CopyingEventStore | None = None
        if (
            shard is None
            and transformer is None
            and FEATURE_COPY_FROM in features_of(target)
            and isinstance(target, CopyingEventStore)
            and target.copies_from(source)
        ):
            self.direct = target
        self.batch = batch if batch is not None else READ_BATCH if self.direct is None else COPY_BATCH
        self.key = checkpoints.job_key(
            "migrate", source.url, None if shard is None else str(shard), transformer.spec if transformer else None
        )
        state = checkpoints.load(target_views, self.key) or {}
        self.saver = checkpoints.Saver(target_views, self.key, background=self.writer.in_flight)
        self.position: str | None = state.get("position")
        self.report = MigrateReport(
            source=source.url,
            target=target.url,
            write_path=self.writer.path if self.direct is None else "copy_from",
            last_position=self.position,
            events=int(state.get("events", 0)),
            resumed_events=int(state.get("events", 0)),
        )
        if progress is not None:
            ahead = count_after(source, self.position)
            progress.resume(self.report.resumed_events)
            progress.total = None if ahead is None else self.report.resumed_events + ahead

    def copy_once(self, batch: list[Event] | None = None, limit: int | None = None) -> int:
        """Copy the next batch (read now, or given: read with ``limit``, default the batch size);
        return how many source events it had (0: caught up)."""
        limit = self.batch if limit is None else limit
        if batch is None and self.direct is not None:
            copied = self.direct.copy_from(self.source, self.position, limit)
            if copied is not None:
                self.report.written += copied.events
                return self._advance(copied.events, copied.last_position, copied.last_recorded_at, limit)
            limit = min(limit, READ_BATCH)  # read into memory, event by event: the usual batch
        if batch is None:
            batch = self.source.read_all(after=self.position, limit=limit)
        if not batch:
            return self._advance(0, self.position, None, limit)
        mine = [event for event in batch if owned(self.shard, event.stream_id)]
        if self.transformer is not None:
            mine = self.transformer.apply(mine)
        new = self.writer.write(mine)
        self.report.written += new
        self.report.skipped += len(mine) - new
        return self._advance(len(batch), batch[-1].position, batch[-1].recorded_at, limit)

    def _advance(self, events: int, position: str | None, recorded_at: datetime | None, limit: int) -> int:
        """Record a batch of ``events`` source events copied up to ``position`` (the
        checkpoint, the report, the progress); return ``events``."""
        if not events:
            self.saver.flush()  # caught up: the checkpoint is the last batch's
            self.report.caught_up = True
            self.report.lag_seconds = 0.0
            return 0
        self.position = position
        self.report.events += events
        self.report.batches += 1
        self.report.last_position = position
        state: dict[str, Any] = {"position": position, "events": self.report.events}
        if self.transformer is not None:
            state["transform"] = self.transformer.record()
        self.saver.save(state)
        self.report.caught_up = events < limit
        lag = 0.0 if self.report.caught_up or recorded_at is None else (utc_now() - recorded_at).total_seconds()
        self.report.lag_seconds = max(lag, 0.0)
        if self.progress is not None:
            self.progress.advance(events, lag=self.report.lag_seconds)
        return events

    def _batches(self) -> Iterator[tuple[list[Event], int]]:
        """Batches read ahead, each with the limit it was read with."""
        position = self.position
        limit = min(FIRST_BATCH, self.batch)
        while batch := self.source.read_all(after=position, limit=limit):
            yield batch, limit
            position = batch[-1].position
            if len(batch) < limit:
                return
            limit = self.batch

    def catch_up(self) -> None:
        """Copy until the source has nothing more (for now), reading one batch ahead (on the
        ``copy_from`` path the target reads its own pages ahead)."""
        if self.direct is None:
            for batch, limit in ReadAhead(self._batches()):
                self.copy_once(batch, limit)
        while self.copy_once():
            pass

    def follow(self, stop: threading.Event, *, poll: float = 0.5) -> None:
        """Catch up, then keep copying new events until ``stop`` is set (then the checkpoint
        is the last batch's)."""
        while not stop.is_set():
            if not self.copy_once():
                if self.progress is not None:
                    self.progress.advance(0, lag=0.0)
                stop.wait(poll)
        self.saver.flush()

    def cutover(self, source_views: ViewStore, *, grace: float = 2.0) -> VerifyReport | None:
        """Fence the source, drain until quiet for ``grace`` seconds, verify; return the verification.

        With a transform the two histories differ on purpose, so nothing is verified
        (``None``): verify the target against an export made with the same transform.
        """
        self.catch_up()
        set_fence(source_views, f"migration cutover to {self.target.url}")
        self.report.fenced = True
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < grace:
            if self.copy_once():
                quiet_since = time.monotonic()
            else:
                time.sleep(min(0.2, grace))
        if self.transformer is not None:
            return None
        self.report.verify = verify_stores(self.source, self.target, shard=self.shard)
        return self.report.verify

    def close(self) -> None:
        """Let the last checkpoint be committed, stop the threads (idempotent)."""
        self.saver.close()
        self.writer.close()

    def finish(self) -> MigrateReport:
        """The report, with the transform's counts; the checkpoint committed, the threads stopped."""
        self.saver.flush()
        self.close()
        if self.transformer is not None:
            self.report.transform = self.transformer.record()
        if self.progress is not None:
            self.progress.finish()
        return self.report
