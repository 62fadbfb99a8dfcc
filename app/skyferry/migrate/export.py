"""Export: an event store's history (or one shard of it) into an archive.

Reads ``read_all`` in batches up to the position that was last when the export started
(so exporting a live store ends; :func:`skyferry.migrate.reader.batches`), past the first batch
in a second process when given the store's URL (:mod:`skyferry.migrate.reader`), writes chunks
as they fill, and writes the manifest last: an archive without a manifest is an
unfinished export.  Memory stays bounded by a few batches, one chunk and one hash-chain
head per stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from skyferry.core.errors import ConfigurationError
from skyferry.core.messages import format_timestamp, utc_now
from skyferry.core.ports import Archive, EventStore, count_after
from skyferry.migrate.chunks import CHUNK_BYTES, CHUNK_EVENTS, ChunkWriter
from skyferry.migrate.crypto import ChunkCipher
from skyferry.migrate.errors import ArchiveError
from skyferry.migrate.format import CHAIN_START, Prepared, encode_prepared, prepare_events
from skyferry.migrate.manifest import CHUNK_PREFIX, MANIFEST_NAME, Manifest, StreamHead
from skyferry.migrate.options import at_least
from skyferry.migrate.pipeline import ReadAhead
from skyferry.migrate.progress import Progress
from skyferry.migrate.reader import READ_BATCH, ReaderProcess, batches
from skyferry.migrate.sharding import Shard
from skyferry.migrate.transforms import Transformer


@dataclass(slots=True)
class ExportReport:
    """What an export wrote."""

    archive: str
    source: str
    events: int = 0
    streams: int = 0
    chunks: int = 0
    bytes: int = 0
    digest: str = ""
    first_position: str | None = None
    last_position: str | None = None
    transform: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "command": "export",
            "archive": self.archive,
            "source": self.source,
            "events": self.events,
            "streams": self.streams,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "digest": self.digest,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "transform": self.transform,
        }


class HeadTracker:
    """Per-stream hash-chain heads, checking versions stay contiguous."""

    def __init__(self) -> None:
        self.heads: dict[str, StreamHead] = {}

    def add_many(
        self,
        pairs: Iterable[tuple[Any, bytes]],
        location: str | Callable[[Any], str],
        *,
        rows: bool = False,
    ) -> None:
        """Extend the chain of each event's stream by its canonical bytes (:func:`~skyferry.migrate.format.chain_next`);
        a version gap raises :class:`ArchiveError` at ``location`` (or ``location(event)``).
        The events are :class:`~skyferry.core.messages.Event` or
        :class:`~skyferry.migrate.format.Prepared` tuples, or :data:`~skyferry.core.ports.StoredRow`
        tuples when ``rows``."""
        heads, sha256 = self.heads, hashlib.sha256
        at = 2 if rows else 1  # a row's own position comes first
        for event, canonical in pairs:
            stream_id: str = event[at]
            version: int = event[at + 1]
            head = heads.get(stream_id)
            if head is None:
                head = heads[stream_id] = StreamHead(0, CHAIN_START, 0)
            if version != head.last_version + 1:
                raise ArchiveError(
                    location if isinstance(location, str) else location(event),
                    f"stream {stream_id!r} jumps from version {head.last_version} to {version}",
                )
            head.events += 1
            head.last_version = version
            head.head = sha256(head.head.encode() + canonical).hexdigest()


def _prepared(
    store: EventStore,
    end: str | None,
    shard: Shard | None,
    transformer: Transformer | None,
    reader_url: str | None,
    limit: int,
) -> Iterator[list[Prepared]]:
    """The events to export, prepared to encode: read here, or past the first batch in a
    :class:`ReaderProcess` on ``reader_url`` (when given and there is no transformer)."""
    source = batches(store, end, shard, transformer, limit=limit)
    if reader_url is None or transformer is not None:
        # The read-ahead thread reads while this one encodes (drivers release the GIL while
        # the database works; the rest is CPU work under the GIL wherever it runs).
        for events, _ in ReadAhead(source):
            yield prepare_events(events)
        return
    first = next(source, None)
    if first is None or end is None:
        return
    events, read_to = first
    if read_to == end:  # one batch held everything
        yield prepare_events(events)
        return
    # the child boots while the first batch is encoded
    with ReaderProcess(reader_url, after=read_to, end=end, shard=shard, limit=limit) as reader:
        yield prepare_events(events)
        yield from reader


def export(
    store: EventStore,
    archive: Archive,
    *,
    cipher: ChunkCipher | None = None,
    shard: Shard | None = None,
    transformer: Transformer | None = None,
    overwrite: bool = False,
    chunk_events: int = CHUNK_EVENTS,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Progress | None = None,
    reader_url: str | None = None,
    read_batch: int = READ_BATCH,
) -> ExportReport:
    """Write ``store``'s events (of ``shard``, through ``transformer``) to ``archive``.

    ``reader_url`` is the URL ``store`` was opened from (with its credentials): given, an
    export of more than one batch reads the rest in a second process, on another core
    (:mod:`skyferry.migrate.reader`); the archive is the same byte for byte.  ``read_batch`` is
    the ``limit`` of each ``read_all``.
    """
    at_least(chunk_events, 1, "--chunk-events")
    at_least(chunk_bytes, 1, "chunk_bytes")
    at_least(read_batch, 1, "read_batch")
    if archive.exists(MANIFEST_NAME) and not overwrite:
        raise ConfigurationError(
            f"{archive.url} already holds an export (manifest.json); choose another archive or --overwrite"
        )
    if overwrite:
        archive.delete(MANIFEST_NAME)
    end = store.last_position()
    if progress is not None and shard is None and transformer is None:
        progress.total = count_after(store)  # None where the store cannot count cheaply: no ETA
    writer = ChunkWriter(archive, cipher, chunk_events=chunk_events, chunk_bytes=chunk_bytes)
    heads = HeadTracker()
    location = f"source {store.url}"
    where = lambda event: f"{location} at position {event.position}"  # noqa: E731
    for prepared in _prepared(store, end, shard, transformer, reader_url, read_batch):
        lines, canonicals = encode_prepared(prepared)
        heads.add_many(zip(prepared, canonicals, strict=True), where)
        writer.add_many(prepared, lines)
        if progress is not None:
            progress.advance(len(prepared))
    writer.close()
    for stale in archive.list(CHUNK_PREFIX):
        if stale not in {entry.name for entry in writer.entries}:
            archive.delete(stale)
    manifest = Manifest(
        source={"url": store.url, "shard": None if shard is None else str(shard)},
        created_at=format_timestamp(utc_now()),
        chunks=writer.entries,
        streams=heads.heads,
        encryption=cipher.header() if cipher is not None else None,
        transform=transformer.record() if transformer is not None else None,
    )
    archive.put(MANIFEST_NAME, manifest.to_bytes())
    if progress is not None:
        progress.finish()
    return ExportReport(
        archive=archive.url,
        source=store.url,
        events=manifest.event_count,
        streams=len(heads.heads),
        chunks=len(writer.entries),
        bytes=sum(entry.bytes for entry in writer.entries),
        digest=manifest.digest,
        first_position=manifest.first_position,
        last_position=manifest.last_position,
        transform=manifest.transform,
    )
