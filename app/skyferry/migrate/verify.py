"""Verify: compare two event histories stream by stream and list every difference.

Each side is read once, in its global order (``read_all``, as an export reads it: a page of
many events per request, whatever the number of streams), and reduced to one hash-chain
head and event count per stream (``docs/archive-format.md``).  Streams whose heads differ
are then read stream by stream on both sides to name the first differing version and
fields.  An archive's side is checked whole first (manifest digest, each chunk, each
stream's chain), and its heads are the manifest's.

A side that gives back an event that cannot be encoded (a number a store changed beyond
what JSON holds), or a stream whose versions jump, is a difference of that stream, not a
crash.  Memory: one page per side, plus about 300 bytes per stream per side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from skyferry.core.messages import Event
from skyferry.core.ports import Archive, EventStore, count_after
from skyferry.migrate.chunks import check_chunk
from skyferry.migrate.crypto import ChunkCipher
from skyferry.migrate.errors import ArchiveError
from skyferry.migrate.export import HeadTracker
from skyferry.migrate.format import CHAIN_START, canonical_bytes
from skyferry.migrate.importer import read_manifest
from skyferry.migrate.manifest import MANIFEST_NAME, StreamHead
from skyferry.migrate.options import distinct
from skyferry.migrate.pipeline import ReadAhead
from skyferry.migrate.progress import Progress
from skyferry.migrate.reader import batches
from skyferry.migrate.sharding import Shard

READ_PAGE = 5000
"""The most events per ``read_all`` (or ``read_stream``) of each side."""
PAGE_BUDGET = 64 * 1024 * 1024
"""The decoded memory one page of events may take, at most."""
DECODED_PER_BYTE = 24
"""The most memory one byte of an event's JSON takes once decoded (an array of empty arrays:
three bytes, ``[],``, become a 72-byte list): how a page is sized from the events seen."""
MAX_LISTED = 1000
"""At most this many differences are listed (the count is always exact)."""


@dataclass(slots=True)
class VerifyReport:
    """The outcome: ``differences`` is empty when both sides hold the same events."""

    source: str
    target: str
    streams: int = 0
    events: int = 0
    difference_count: int = 0
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether both sides are identical."""
        return self.difference_count == 0

    @property
    def full(self) -> bool:
        """Whether no more differences are listed (they are still counted)."""
        return len(self.differences) >= MAX_LISTED

    def differ(self, text: str) -> None:
        """Record one difference."""
        self.difference_count += 1
        if not self.full:
            self.differences.append(text)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "command": "verify",
            "source": self.source,
            "target": self.target,
            "ok": self.ok,
            "streams": self.streams,
            "events": self.events,
            "difference_count": self.difference_count,
            "differences": self.differences,
        }


class Paging:
    """Page sizes that bound a page's decoded memory by :data:`PAGE_BUDGET`: from 16 events,
    growing fourfold a page up to :data:`READ_PAGE`, never past what the largest event seen
    so far allows (an event's JSON size times :data:`DECODED_PER_BYTE`)."""

    def __init__(self) -> None:
        self.size = 16
        self.largest = 0

    def seen(self, json_bytes: int) -> None:
        """Count an event of ``json_bytes`` bytes (its canonical envelope)."""
        if json_bytes > self.largest:
            self.largest = json_bytes

    def next(self) -> int:
        """The size of the next page (the first pages stay small until events have been seen)."""
        if self.largest:
            fits = PAGE_BUDGET // (DECODED_PER_BYTE * self.largest)
            self.size = max(1, min(READ_PAGE, self.size * 4, fits))
        return self.size


class Chains:
    """Each stream's event count and hash-chain head, from one side's events in its order.

    Unlike :class:`~skyferry.migrate.export.HeadTracker` (an archive's, where a gap is a
    damaged file), a stream whose versions jump or whose event cannot be encoded is marked
    ``broken`` with the reason, and the reading goes on.
    """

    def __init__(self) -> None:
        self.heads: dict[str, StreamHead] = {}
        self.broken: dict[str, str] = {}
        self.paging = Paging()

    def add(self, events: list[Event]) -> None:
        """Extend the chains by ``events`` (each stream's in version order)."""
        heads, broken, sha256 = self.heads, self.broken, hashlib.sha256
        for event in events:
            stream_id = event.stream_id
            if stream_id in broken:
                continue
            head = heads.get(stream_id)
            if head is None:
                head = heads[stream_id] = StreamHead(0, CHAIN_START, 0)
            if event.version != head.last_version + 1:
                broken[stream_id] = f"its versions jump from {head.last_version} to {event.version}"
                continue
            try:
                canonical = canonical_bytes(event)
            except (TypeError, ValueError) as e:
                broken[stream_id] = f"version {event.version} holds a value that is not valid JSON ({e})"
                continue
            self.paging.seen(len(canonical))
            head.events += 1
            head.last_version = event.version
            head.head = sha256(head.head.encode() + canonical).hexdigest()


def _chains(store: EventStore, shard: Shard | None, progress: Progress | None = None) -> Chains:
    """The chains of ``store`` (of ``shard``) up to its last position when called."""
    chains = Chains()
    if progress is not None and shard is None:
        progress.total = count_after(store)
    pages = batches(store, store.last_position(), shard, None, limit=chains.paging.next)
    for events, _ in ReadAhead(pages, depth=1):  # two pages in memory: the one hashed, the one read
        chains.add(events)
        if progress is not None:
            progress.advance(len(events))
    return chains


def _pages(store: EventStore, stream_id: str, paging: Paging) -> Iterator[tuple[Event, bytes | str]]:
    """The stream's events, each with its canonical bytes (or why it has none)."""
    version = 1
    while True:
        limit = paging.next()
        page = store.read_stream(stream_id, from_version=version, limit=limit)
        for event in page:
            canonical = _canonical(event)
            paging.seen(len(canonical))
            yield event, canonical
        if len(page) < limit:
            return
        version = page[-1].version + 1


def _canonical(event: Event) -> bytes | str:
    """The event's canonical bytes, or why it has none."""
    try:
        return canonical_bytes(event)
    except (TypeError, ValueError) as e:
        return f"a value that is not valid JSON ({e})"


def _locate(report: VerifyReport, source: EventStore, target: EventStore, stream_id: str) -> bool:
    """Compare one stream event by event; record its first difference and return ``True``, or
    ``False`` when read this way it shows none."""
    theirs = _pages(target, stream_id, Paging())
    count = 0
    for mine, a in _pages(source, stream_id, Paging()):
        count += 1
        pair = next(theirs, None)
        if pair is None:
            report.differ(
                f"stream {stream_id!r}: target ends at version {mine.version - 1}, source continues to "
                f"version {source.stream_version(stream_id)}"
            )
            return True
        other, b = pair
        if isinstance(a, str):
            report.differ(f"stream {stream_id!r} version {mine.version}: the source's event holds {a}")
            return True
        if isinstance(b, str):
            report.differ(f"stream {stream_id!r} version {mine.version}: the target's event holds {b}")
            return True
        if a != b:
            fields = [k for k, v in mine.to_dict().items() if other.to_dict()[k] != v]
            report.differ(f"stream {stream_id!r} version {mine.version}: differs in {', '.join(fields)}")
            return True
    extra = next(theirs, None)
    if extra is not None:
        report.differ(
            f"stream {stream_id!r}: target has extra events from version {extra[0].version} "
            f"(source ends at version {count})"
        )
        return True
    return False


def _same(a: StreamHead | None, b: StreamHead | None) -> bool:
    return a is not None and b is not None and (a.events, a.head) == (b.events, b.head)


def verify_stores(
    source: EventStore, target: EventStore, *, shard: Shard | None = None, progress: Progress | None = None
) -> VerifyReport:
    """Compare two stores (of ``shard`` only, if given): each read once in its global order."""
    distinct(source, target, "verify")
    report = VerifyReport(source=source.url, target=target.url)
    mine = _chains(source, shard, progress)
    theirs = _chains(target, shard)
    streams = sorted({*mine.heads, *mine.broken, *theirs.heads, *theirs.broken})
    for stream_id in streams:
        report.streams += 1
        left, right = mine.heads.get(stream_id), theirs.heads.get(stream_id)
        report.events += left.events if left is not None else 0
        if stream_id not in mine.broken and stream_id not in theirs.broken and _same(left, right):
            continue
        if left is None and stream_id not in mine.broken:
            report.differ(f"stream {stream_id!r}: only in the target ({right.events if right else 0} events)")
        elif right is None and stream_id not in theirs.broken:
            report.differ(f"stream {stream_id!r}: missing in the target ({left.events if left else 0} events)")
        elif report.full:
            report.differ(f"stream {stream_id!r}: differs")
        elif not _locate(report, source, target, stream_id):
            why = mine.broken.get(stream_id) or theirs.broken.get(stream_id) or "its events differ"
            report.differ(f"stream {stream_id!r}: read in the global order, {why}")
    if progress is not None:
        progress.finish()
    return report


def _chain_lines(heads: HeadTracker, name: str, events: list[Event], canonicals: list[bytes], whole: bool) -> None:
    heads.add_many(zip(events, canonicals, strict=True), name)


def check_archive(
    archive: Archive, cipher: ChunkCipher | None, progress: Progress | None = None
) -> dict[str, StreamHead]:
    """Read the whole archive, checking every chunk and every stream's hash chain; return the
    manifest's (so verified) heads."""
    manifest = read_manifest(archive, cipher)
    heads = HeadTracker()
    if progress is not None:
        progress.total = manifest.event_count
    for entry in manifest.chunks:
        chain = partial(_chain_lines, heads, entry.name)
        check_chunk(archive, entry, cipher, on_lines=chain, keep=False)
        if progress is not None:
            progress.advance(entry.events)
    for stream_id, recorded in manifest.streams.items():
        computed = heads.heads.get(stream_id)
        if computed is None or (computed.events, computed.head) != (recorded.events, recorded.head):
            raise ArchiveError(MANIFEST_NAME, f"stream {stream_id!r}: the chunks do not match its hash-chain head")
    if len(heads.heads) != len(manifest.streams):
        raise ArchiveError(MANIFEST_NAME, "the chunks hold streams the manifest does not list")
    return manifest.streams


def verify_archive(
    archive: Archive,
    store: EventStore,
    *,
    cipher: ChunkCipher | None = None,
    shard: Shard | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Compare an archive with a store: per-stream counts and hash-chain heads."""
    recorded = check_archive(archive, cipher, progress)
    report = VerifyReport(source=archive.url, target=store.url)
    chains = _chains(store, shard)
    for stream_id in sorted({*(s for s in recorded if shard is None or shard.owns(s)), *chains.heads, *chains.broken}):
        report.streams += 1
        mine, theirs = recorded.get(stream_id), chains.heads.get(stream_id)
        if mine is not None:
            report.events += mine.events
        if stream_id in chains.broken:
            report.differ(f"stream {stream_id!r}: in the target, {chains.broken[stream_id]}")
        elif theirs is None:
            report.differ(
                f"stream {stream_id!r}: missing in the target ({mine.events if mine else 0} events in the archive)"
            )
        elif mine is None:
            report.differ(f"stream {stream_id!r}: only in the target ({theirs.events} events)")
        elif theirs.events != mine.events:
            report.differ(f"stream {stream_id!r}: archive has {mine.events} events, target has {theirs.events}")
        elif theirs.head != mine.head:
            report.differ(f"stream {stream_id!r}: same count ({theirs.events}) but the hash chains differ")
    if progress is not None:
        progress.finish()
    return report
