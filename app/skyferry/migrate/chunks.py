"""Writing and reading the archive's chunks: zstd-compressed JSON Lines, optionally sealed.

A chunk is checked whole before any of its events is handed out: its ``sha256`` against
the manifest, then the AES-256-GCM tag, then zstd, then every line.  That is what lets an
import promise that nothing past the last verified checkpoint is written.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Final

import zstandard

from skyferry.core.errors import ObjectNotFound
from skyferry.core.messages import Event
from skyferry.core.ports import Archive
from skyferry.migrate.crypto import ChunkCipher
from skyferry.migrate.errors import ArchiveError
from skyferry.migrate.format import Prepared, decode_lines, encode_line
from skyferry.migrate.manifest import ChunkEntry, chunk_name

ZSTD_LEVEL: Final = 3
CHUNK_EVENTS: Final = 10_000
CHUNK_BYTES: Final = 16 * 1024 * 1024
MAX_CHUNK_PLAINTEXT: Final = 1024 * 1024 * 1024
"""A decompressed chunk larger than this is refused (a zstd bomb, or not our archive)."""


class ChunkWriter:
    """Accumulates event lines and writes a chunk every ``chunk_events`` events or ``chunk_bytes``.

    A full chunk is compressed, sealed, hashed and stored in a background thread (zstd,
    AES-GCM, sha256 and file writes release the GIL) while the next one fills; at most one
    chunk is in flight, so memory stays bounded.  :meth:`flush` (or :meth:`close`) returns
    once every chunk is stored and listed in :attr:`entries`, and raises a failed write.
    """

    def __init__(
        self,
        archive: Archive,
        cipher: ChunkCipher | None = None,
        *,
        chunk_events: int = CHUNK_EVENTS,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self._archive = archive
        self._cipher = cipher
        self._chunk_events = chunk_events
        self._chunk_bytes = chunk_bytes
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        self._lines: list[bytes] = []
        self._size = 0
        self._first: str | None = None
        self._last: str | None = None
        self._shipped = 0
        self._in_flight: tuple[threading.Thread, list[ChunkEntry | BaseException]] | None = None
        self.entries: list[ChunkEntry] = []

    def add(self, event: Event, line: bytes | None = None) -> None:
        """Add one event (``line`` is its encoded line, if already made); writes the chunk when full."""
        if line is None:
            line = encode_line(event)
        if not self._lines:
            self._first = event.position
        self._last = event.position
        self._lines.append(line)
        self._size += len(line) + 1
        if len(self._lines) >= self._chunk_events or self._size >= self._chunk_bytes:
            self._ship()

    def add_many(self, events: Sequence[Event] | Sequence[Prepared], lines: Sequence[bytes]) -> None:
        """:meth:`add` of each event with its line: the same chunks, cut at the same events."""
        index, count = 0, len(lines)
        while index < count:
            part = lines[index : index + self._chunk_events - len(self._lines)]
            size = self._size + sum(map(len, part)) + len(part)
            if size >= self._chunk_bytes:  # the byte limit falls inside: cut after the line reaching it
                size = self._size
                for taken, line in enumerate(part, 1):
                    size += len(line) + 1
                    if size >= self._chunk_bytes:
                        part = part[:taken]
                        break
            if not self._lines:
                self._first = events[index].position
            index += len(part)
            self._last = events[index - 1].position
            self._lines.extend(part)
            self._size = size
            if len(self._lines) >= self._chunk_events or size >= self._chunk_bytes:
                self._ship()

    def _ship(self) -> None:
        """Hand the pending lines to a background thread as the next chunk (after the previous is stored)."""
        self._wait()
        name = chunk_name(self._shipped)
        self._shipped += 1
        lines, first, last = self._lines, self._first, self._last
        self._lines = []
        self._size = 0
        result: list[ChunkEntry | BaseException] = []

        def store() -> None:
            try:
                result.append(self._store(name, lines, first, last))
            except BaseException as e:  # re-raised by _wait in the caller's thread
                result.append(e)

        thread = threading.Thread(target=store, name="skyferry-chunk-writer", daemon=True)
        self._in_flight = (thread, result)
        thread.start()

    def _store(self, name: str, lines: list[bytes], first: str | None, last: str | None) -> ChunkEntry:
        plaintext = b"\n".join(lines) + b"\n"
        events = len(lines)
        del lines[:]
        stored = self._compressor.compress(plaintext)
        del plaintext
        if self._cipher is not None:
            stored = self._cipher.seal(name, stored)
        self._archive.put(name, stored)
        return ChunkEntry(
            name=name,
            events=events,
            bytes=len(stored),
            sha256=hashlib.sha256(stored).hexdigest(),
            first_position=first,
            last_position=last,
        )

    def _wait(self) -> None:
        if self._in_flight is None:
            return
        thread, result = self._in_flight
        thread.join()
        self._in_flight = None
        outcome = result[0]
        if isinstance(outcome, BaseException):
            raise outcome
        self.entries.append(outcome)

    def flush(self) -> None:
        """Write the pending lines as one chunk (nothing when there are none) and wait until every chunk is stored."""
        if self._lines:
            self._ship()
        self._wait()

    def close(self) -> None:
        """:meth:`flush`: every chunk stored and listed in :attr:`entries`."""
        self.flush()


def read_chunk(archive: Archive, entry: ChunkEntry, cipher: ChunkCipher | None) -> list[Event]:
    """Every event of one chunk, after checking it whole; raises :class:`ArchiveError` naming the problem."""
    return read_chunk_canonical(archive, entry, cipher)[0]


def read_chunk_canonical(
    archive: Archive, entry: ChunkEntry, cipher: ChunkCipher | None
) -> tuple[list[Event], list[bytes]]:
    """Like :func:`read_chunk`, with the events' canonical bytes (for the hash chain) in a second list."""
    try:
        stored = archive.get(entry.name)
    except ObjectNotFound as e:
        raise ArchiveError(entry.name, "the chunk is missing from the archive") from e
    if len(stored) != entry.bytes:
        raise ArchiveError(entry.name, f"size is {len(stored)} bytes, the manifest says {entry.bytes} (truncated?)")
    digest = hashlib.sha256(stored).hexdigest()
    if digest != entry.sha256:
        raise ArchiveError(entry.name, f"sha256 {digest} does not match the manifest's {entry.sha256}")
    if cipher is not None:
        stored = cipher.open(entry.name, stored)
    try:
        plaintext = zstandard.ZstdDecompressor().decompress(stored, max_output_size=MAX_CHUNK_PLAINTEXT)
    except zstandard.ZstdError as e:
        raise ArchiveError(entry.name, f"not a valid zstd frame: {e}") from e
    events, canonicals = decode_lines(chunk_lines(plaintext), entry.name)
    if len(events) != entry.events:
        raise ArchiveError(entry.name, f"holds {len(events)} events, the manifest says {entry.events}")
    return events, canonicals


def chunk_lines(plaintext: bytes) -> list[bytes]:
    """The non-empty lines of a chunk (one ``split``; a list comprehension only when a line is empty
    besides the last)."""
    lines = plaintext.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return [line for line in lines if line] if b"" in lines else lines
