"""Import: an archive into an event store, resumable, idempotent, verified chunk by chunk.

Before anything is written the manifest's digest (and the encryption key) is checked.
Each chunk is then checked whole (size, sha256, tag, zstd, every line, per-stream hash
chain, and every event against the rules of every store) before any of its events is
written, and the number of chunks done is committed to the target's view store after
each chunk (a chunk's writes, many in flight, all stored before that).  Memory stays
bounded whatever the archive holds: the manifest is read only
up to :data:`MAX_MANIFEST_BYTES`, each chunk within the caps of
:mod:`skyferry.migrate.chunks`, and at most two chunks are in memory at once (the one
being written, the one being checked).  A rerun of a killed import skips the done
chunks and re-writes the interrupted one, which is harmless: writes are idempotent by
event id and version.  A target that holds different events stops the import with
:class:`~skyferry.migrate.errors.TargetConflict` naming the stream and version.

Into a store that copies rows (SQLite, PostgreSQL), unless transformed, the lines are
decoded straight into its rows (:func:`~skyferry.migrate.format.decode_rows`) and each
chunk is written with ``copy_from`` (:meth:`~skyferry.migrate.writer.TargetWriter.write_rows`);
given the archive's URL, the chunks of such an import are then read, checked and decoded
in a second process (:mod:`skyferry.migrate.decoder`) while this one writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

from skyferry.core.errors import EventTooLarge, ObjectTooLarge, ValidationError
from skyferry.core.ports import Archive, EventStore, ViewStore
from skyferry.migrate import checkpoints
from skyferry.migrate.chunks import CheckedChunk, check_chunk
from skyferry.migrate.crypto import ChunkCipher
from skyferry.migrate.decoder import DecoderProcess
from skyferry.migrate.errors import ArchiveError, WrongKey
from skyferry.migrate.export import HeadTracker
from skyferry.migrate.format import decode_lines, decode_rows
from skyferry.migrate.manifest import MANIFEST_NAME, ChunkEntry, Manifest
from skyferry.migrate.pipeline import ReadAhead
from skyferry.migrate.progress import Progress
from skyferry.migrate.sharding import Shard, owned, owned_rows
from skyferry.migrate.transforms import Transformer
from skyferry.migrate.writer import CONCURRENCY, TargetWriter, check_concurrency, validate_all

MAX_MANIFEST_BYTES: Final = 64 * 1024 * 1024
"""The largest manifest a reader accepts (about 400,000 streams); a larger store is exported
in shards (``--shard i/n``), each its own archive."""


@dataclass(slots=True)
class ImportReport:
    """What an import did; ``positions`` maps each chunk's last source position to the target's."""

    archive: str
    target: str
    digest: str
    events: int = 0
    resumed_events: int = 0
    written: int = 0
    skipped: int = 0
    chunks: int = 0
    resumed_at_chunk: int = 0
    write_path: str = "append"
    positions: list[dict[str, Any]] = field(default_factory=list)
    transform: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "command": "import",
            "archive": self.archive,
            "target": self.target,
            "digest": self.digest,
            "events": self.events,
            "resumed_events": self.resumed_events,
            "written": self.written,
            "skipped": self.skipped,
            "chunks": self.chunks,
            "resumed_at_chunk": self.resumed_at_chunk,
            "write_path": self.write_path,
            "positions": self.positions,
            "transform": self.transform,
        }


def read_manifest(archive: Archive, cipher: ChunkCipher | None) -> Manifest:
    """The archive's manifest, checked (digest, format version, encryption key)."""
    if not archive.exists(MANIFEST_NAME):
        raise ArchiveError(f"{archive.url}/{MANIFEST_NAME}", "missing: not an archive, or an unfinished export")
    try:
        raw = archive.get(MANIFEST_NAME, limit=MAX_MANIFEST_BYTES)
    except ObjectTooLarge as e:
        raise ArchiveError(
            f"{archive.url}/{MANIFEST_NAME}",
            f"larger than {MAX_MANIFEST_BYTES} bytes, the most a reader accepts (not read); export in shards",
        ) from e
    manifest = Manifest.from_bytes(raw)
    del raw
    if manifest.encryption is not None:
        if cipher is None:
            raise WrongKey(MANIFEST_NAME, "the archive is encrypted: give --key-file or --key-env")
        cipher.check(manifest.encryption)
    elif cipher is not None:
        raise WrongKey(MANIFEST_NAME, "a key was given but the archive is not encrypted")
    return manifest


def import_archive(
    archive: Archive,
    store: EventStore,
    views: ViewStore,
    *,
    cipher: ChunkCipher | None = None,
    shard: Shard | None = None,
    transformer: Transformer | None = None,
    progress: Progress | None = None,
    concurrency: int = CONCURRENCY,
    archive_url: str | None = None,
) -> ImportReport:
    """Import ``archive`` into ``store``, keeping the checkpoint in ``views`` (the target's);
    ``concurrency`` writes in flight (:class:`~skyferry.migrate.writer.TargetWriter`).

    ``archive_url`` is the URL ``archive`` was opened from: given, an import of more than one
    chunk into a store that copies rows reads and checks the chunks in a second process, on
    another core (:mod:`skyferry.migrate.decoder`); the store ends up the same.
    """
    check_concurrency(concurrency)
    manifest = read_manifest(archive, cipher)
    key = checkpoints.job_key(
        "import", manifest.digest, None if shard is None else str(shard), transformer.spec if transformer else None
    )
    writer = TargetWriter(store, concurrency=concurrency)
    saver = checkpoints.Saver(views, key, background=writer.in_flight)
    try:
        return _import(archive, store, manifest, writer, saver, cipher, shard, transformer, progress, archive_url)
    finally:
        saver.close()
        writer.close()


def _import(
    archive: Archive,
    store: EventStore,
    manifest: Manifest,
    writer: TargetWriter,
    saver: checkpoints.Saver,
    cipher: ChunkCipher | None,
    shard: Shard | None,
    transformer: Transformer | None,
    progress: Progress | None,
    archive_url: str | None,
) -> ImportReport:
    if transformer is not None and transformer.allow_count_change:
        transformer = Transformer(transformer.spec, transformer.function, allow_count_change=True, target=store)
    heads = HeadTracker()
    # into a store that copies rows, untransformed: the lines decoded straight into its rows
    rows = transformer is None and writer.copies_rows

    def checked(events: list[Any], canonicals: list[bytes], whole: bool, name: str) -> None:
        heads.add_many(zip(events, canonicals, strict=True), name, rows=rows)
        if not whole and not rows:  # written in parts: every event must be known valid before the first is
            validate_all(events)  # (decode_rows checked each row already)

    def verified_chunks() -> Iterator[tuple[ChunkEntry, CheckedChunk]]:
        # runs in the read-ahead thread: read, check, decode and chain the next chunk
        for entry in manifest.chunks:
            on_lines = partial(checked, name=entry.name)
            decode = decode_rows if rows else decode_lines
            yield entry, check_chunk(archive, entry, cipher, on_lines=on_lines, decode=decode)

    def write(chunk: CheckedChunk) -> None:
        for events in chunk.batches():
            if rows:
                writer.write_rows(owned_rows(shard, events), archive.url)
                continue
            mine = events if shard is None else [event for event in events if owned(shard, event.stream_id)]
            if transformer is not None:
                mine = transformer.apply(mine)
            writer.write(mine, validated=not chunk.whole)

    # a second process reads and checks the chunks where it can (it needs the archive's URL)
    # and there is more than one; otherwise a thread does, at depth 1: the chunk being written
    # and the one being checked are all that is in memory
    in_child = rows and archive_url is not None and len(manifest.chunks) > 1
    chunks = None if in_child else ReadAhead(verified_chunks(), depth=1)
    if chunks is not None:
        chunks.start()  # the first is read and checked while the checkpoint is read (a round trip or more away)
    try:
        done = checkpoints.load(saver.views, saver.key) or {"chunks": 0, "events": 0}
    except BaseException:
        if chunks is not None:
            chunks.close()
        raise
    start = int(done["chunks"])
    report = ImportReport(
        archive=archive.url,
        target=store.url,
        digest=manifest.digest,
        resumed_at_chunk=start,
        write_path="copy_from" if rows else writer.path,
        events=int(done["events"]),
        resumed_events=int(done["events"]),
    )
    if progress is not None:
        progress.total = manifest.event_count
        progress.resume(int(done["events"]))

    def written(index: int, entry: ChunkEntry) -> None:
        report.events += entry.events
        report.chunks += 1
        state: dict[str, Any] = {"chunks": index + 1, "events": report.events}
        if transformer is not None:
            state["transform"] = transformer.record()
        saver.save(state)  # first: committed in the background, it overlaps the read below
        report.positions.append({"chunk": entry.name, "source": entry.last_position, "target": store.last_position()})
        if progress is not None:
            progress.advance(entry.events)

    try:
        if chunks is not None:
            for index, (entry, chunk) in enumerate(chunks):
                if index >= start:
                    write(chunk)
                    written(index, entry)
        else:
            assert archive_url is not None
            with DecoderProcess(
                archive_url,
                digest=manifest.digest,
                key=None if cipher is None else cipher.key,
                start=start,
                chunks=len(manifest.chunks),
                shard=shard,
            ) as decoder:
                for index, part, last in decoder:
                    writer.write_rows(part, archive.url)
                    if last:
                        written(index, manifest.chunks[index])
            heads.heads = decoder.heads
    except ArchiveError:
        raise
    except (ValidationError, EventTooLarge) as e:  # an event no store may hold: nothing of the chunk written
        raise ArchiveError(manifest.chunks[report.chunks + start].name, f"holds an event no store may hold: {e}") from e
    saver.flush()
    for stream_id, head in heads.heads.items():
        recorded = manifest.streams.get(stream_id)
        if recorded is None or recorded.head != head.head or recorded.events != head.events:
            raise ArchiveError(MANIFEST_NAME, f"stream {stream_id!r}: the chunks do not match its hash-chain head")
    if len(heads.heads) != len(manifest.streams):
        raise ArchiveError(MANIFEST_NAME, "lists streams that no chunk holds")
    report.written = writer.written
    report.skipped = writer.skipped
    report.transform = transformer.record() if transformer is not None else None
    if progress is not None:
        progress.finish()
    return report
