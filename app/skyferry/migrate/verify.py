"""Verify: compare two event histories stream by stream and list every difference.

Store against store: both stores' streams are walked in ascending id order, side by side,
and compared event by event, so a difference is reported at its stream and version.
Archive against store: the archive is checked whole (manifest digest, each chunk, each
stream's hash chain), then each store stream's count and hash-chain head is compared with
the manifest's.  Memory is bounded by one page per side (plus the manifest's heads).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from skyferry.core.messages import Event
from skyferry.core.ports import Archive, EventStore
from skyferry.migrate.chunks import read_chunk_canonical
from skyferry.migrate.crypto import ChunkCipher
from skyferry.migrate.errors import ArchiveError
from skyferry.migrate.export import HeadTracker
from skyferry.migrate.format import CHAIN_START, canonical_bytes, chain_next
from skyferry.migrate.importer import read_manifest
from skyferry.migrate.manifest import MANIFEST_NAME
from skyferry.migrate.progress import Progress
from skyferry.migrate.sharding import Shard, owned

PAGE = 1000
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

    def differ(self, text: str) -> None:
        """Record one difference."""
        self.difference_count += 1
        if len(self.differences) < MAX_LISTED:
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


def _streams(store: EventStore, shard: Shard | None) -> Iterator[str]:
    return (stream_id for stream_id in store.list_streams() if owned(shard, stream_id))


def _pages(store: EventStore, stream_id: str) -> Iterator[Event]:
    version = 1
    while True:
        page = store.read_stream(stream_id, from_version=version, limit=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        version = page[-1].version + 1


def _chain(store: EventStore, stream_id: str) -> tuple[int, str]:
    count, head = 0, CHAIN_START
    for event in _pages(store, stream_id):
        count += 1
        head = chain_next(head, event)
    return count, head


def _merge(left: Iterator[str], right: Iterator[str]) -> Iterator[tuple[str | None, str | None]]:
    """Pairs of equal ids from two ascending iterators; ``None`` where one side lacks it."""
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a < b):
            yield a, None
            a = next(left, None)
        elif a is None or b < a:
            yield None, b
            b = next(right, None)
        else:
            yield a, b
            a, b = next(left, None), next(right, None)


def _compare_stream(report: VerifyReport, source: EventStore, target: EventStore, stream_id: str) -> None:
    theirs = _pages(target, stream_id)
    count = 0
    for mine in _pages(source, stream_id):
        count += 1
        other = next(theirs, None)
        if other is None:
            report.differ(
                f"stream {stream_id!r}: target ends at version {mine.version - 1}, source continues to "
                f"version {source.stream_version(stream_id)}"
            )
            break
        if canonical_bytes(mine) != canonical_bytes(other):
            fields = [k for k, v in mine.to_dict().items() if other.to_dict()[k] != v]
            report.differ(f"stream {stream_id!r} version {mine.version}: differs in {', '.join(fields)}")
            break
    else:
        extra = next(theirs, None)
        if extra is not None:
            report.differ(
                f"stream {stream_id!r}: target has extra events from version {extra.version} "
                f"(source ends at version {count})"
            )
    report.events += count


def verify_stores(
    source: EventStore, target: EventStore, *, shard: Shard | None = None, progress: Progress | None = None
) -> VerifyReport:
    """Compare two stores event by event (of ``shard`` only, if given)."""
    report = VerifyReport(source=source.url, target=target.url)
    for mine, theirs in _merge(_streams(source, shard), _streams(target, shard)):
        report.streams += 1
        if theirs is None:
            report.differ(f"stream {mine!r}: missing in the target ({source.stream_version(mine or '')} events)")
        elif mine is None:
            report.differ(f"stream {theirs!r}: only in the target ({target.stream_version(theirs)} events)")
        else:
            before = report.events
            _compare_stream(report, source, target, mine)
            if progress is not None:
                progress.advance(report.events - before)
    if progress is not None:
        progress.finish()
    return report


def check_archive(archive: Archive, cipher: ChunkCipher | None, progress: Progress | None = None) -> HeadTracker:
    """Read the whole archive, checking every chunk and every stream's hash chain."""
    manifest = read_manifest(archive, cipher)
    heads = HeadTracker()
    if progress is not None:
        progress.total = manifest.event_count
    for entry in manifest.chunks:
        events, canonicals = read_chunk_canonical(archive, entry, cipher)
        heads.add_many(zip(events, canonicals, strict=True), entry.name)
        if progress is not None:
            progress.advance(len(events))
    for stream_id, recorded in manifest.streams.items():
        computed = heads.heads.get(stream_id)
        if computed is None or (computed.events, computed.head) != (recorded.events, recorded.head):
            raise ArchiveError(MANIFEST_NAME, f"stream {stream_id!r}: the chunks do not match its hash-chain head")
    if len(heads.heads) != len(manifest.streams):
        raise ArchiveError(MANIFEST_NAME, "the chunks hold streams the manifest does not list")
    return heads


def verify_archive(
    archive: Archive,
    store: EventStore,
    *,
    cipher: ChunkCipher | None = None,
    shard: Shard | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Compare an archive with a store: per-stream counts and hash-chain heads."""
    heads = check_archive(archive, cipher, progress).heads
    report = VerifyReport(source=archive.url, target=store.url)
    in_archive = iter(sorted(s for s in heads if owned(shard, s)))
    for mine, theirs in _merge(in_archive, _streams(store, shard)):
        report.streams += 1
        if theirs is None:
            assert mine is not None
            report.differ(f"stream {mine!r}: missing in the target ({heads[mine].events} events in the archive)")
        elif mine is None:
            report.differ(f"stream {theirs!r}: only in the target ({store.stream_version(theirs)} events)")
        else:
            count, head = _chain(store, mine)
            report.events += count
            recorded = heads[mine]
            if count != recorded.events:
                report.differ(f"stream {mine!r}: archive has {recorded.events} events, target has {count}")
            elif head != recorded.head:
                report.differ(f"stream {mine!r}: same count ({count}) but the hash chains differ")
    if progress is not None:
        progress.finish()
    return report
