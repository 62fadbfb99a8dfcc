"""Writing and reading the archive's chunks: zstd-compressed JSON Lines, optionally sealed.

A chunk is checked whole before any of its events is handed out: its ``sha256`` against
the manifest, then the AES-256-GCM tag, then zstd, then every line.  That is what lets an
import promise that nothing past the last verified checkpoint is written.

Reading is bounded whatever the archive holds, since an archive may come from anywhere:

* a chunk's stored size is checked against the manifest and :data:`MAX_CHUNK_BYTES` before
  it is read, and no more than that is ever read (:meth:`Archive.get` with a limit);
* decompression is streamed and stops at :data:`MAX_CHUNK_PLAINTEXT`, whatever size the
  zstd frame header declares, with a window of at most :data:`MAX_WINDOW`;
* no line may be longer than :data:`MAX_LINE_BYTES` (no valid event comes near it), and
  lines are decoded a segment of about :data:`SEGMENT_BYTES` at a time;
* decoded events are kept for the writer only when an upper estimate of their memory
  (:func:`estimated_memory`) is within :data:`DECODED_BUDGET`; otherwise the chunk is
  checked in a first pass that keeps nothing, and decoded again segment by segment as it
  is written.  Every chunk a ``skyferry export`` writes with the default of 10,000 events
  is kept decoded.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import zstandard

from skyferry.core.errors import ObjectNotFound, ObjectTooLarge
from skyferry.core.messages import Event
from skyferry.core.ports import Archive
from skyferry.migrate.crypto import ChunkCipher
from skyferry.migrate.errors import ArchiveError
from skyferry.migrate.format import Prepared, decode_lines, encode_line
from skyferry.migrate.manifest import ChunkEntry, chunk_name

ZSTD_LEVEL: Final = 3
CHUNK_EVENTS: Final = 10_000
CHUNK_BYTES: Final = 16 * 1024 * 1024
MIB: Final = 1024 * 1024
MAX_CHUNK_PLAINTEXT: Final = 2 * CHUNK_BYTES
"""A chunk decompressing to more is refused (a zstd bomb, or not our archive): a writer cuts
a chunk once it reaches :data:`CHUNK_BYTES`, so its plaintext is at most that plus a line."""
MAX_CHUNK_BYTES: Final = MAX_CHUNK_PLAINTEXT + MIB
"""The stored size a reader accepts: the plaintext cap, plus zstd's and AES-GCM's overhead."""
MAX_WINDOW: Final = 16 * MIB
"""The zstd window a reader allocates at most (level 3 writes 2 MiB or less)."""
MAX_LINE_BYTES: Final = MIB
"""The longest line a reader decodes: an event's data and metadata are at most 192 KiB, and
even escaped twice over no line of a valid event comes near this."""
SEGMENT_BYTES: Final = MIB
"""Lines are split and decoded about this many bytes at a time."""
DECODED_BUDGET: Final = 128 * MIB
"""The estimated memory of one chunk's decoded events that a reader keeps for the writer."""


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


def estimated_memory(plaintext: bytes) -> int:
    """An upper estimate of the memory of ``plaintext``'s events once decoded.

    Every JSON value follows a ``,``, a ``:`` or a ``[``, or is a key (one per ``:``) or a
    line's object (a line holds more than ten ``:``): each counts as an object of 80 bytes,
    and each ``:`` 70 bytes more for its line's envelope; three bytes per byte of text
    cover strings of four-byte characters.  Measured at 1.2 to 7.4 times the real figure, from
    arrays of empty arrays to the ledger's events; three byte counts, no parsing."""
    colons = plaintext.count(b":")
    return 3 * len(plaintext) + 80 * (plaintext.count(b",") + plaintext.count(b"[")) + 230 * colons


Decoder = Callable[[list[bytes], str, int], tuple[list[Any], list[bytes]]]
"""How a chunk's lines are decoded: :func:`~skyferry.migrate.format.decode_lines` (events) or
:func:`~skyferry.migrate.format.decode_rows` (the rows the SQL stores keep)."""


@dataclass(slots=True)
class CheckedChunk:
    """A chunk that passed every check; its events come out of :meth:`batches`, in order, as
    its decoder gives them.

    ``whole`` says the events were kept decoded (within :data:`DECODED_BUDGET`) and come as
    one batch; otherwise they are decoded again a segment at a time.
    """

    entry: ChunkEntry
    whole: bool
    _events: list[Any] | None
    _plaintext: bytes | None
    _decode: Decoder = decode_lines

    def batches(self) -> Iterator[list[Any]]:
        """The chunk's events: one list when ``whole``, else one per segment."""
        if self._events is not None:
            yield self._events
            return
        assert self._plaintext is not None
        for first, lines in segments(self._plaintext, self.entry.name):
            yield self._decode(lines, self.entry.name, first)[0]


def check_chunk(
    archive: Archive,
    entry: ChunkEntry,
    cipher: ChunkCipher | None,
    *,
    on_lines: Callable[[list[Any], list[bytes], bool], None] | None = None,
    keep: bool = True,
    decode: Decoder = decode_lines,
) -> CheckedChunk:
    """Read and check one chunk whole: size, sha256, tag, zstd, every line, the count.

    ``on_lines(events, canonical bytes, whole)`` is called for every segment as it is
    decoded by ``decode`` (to extend the hash chains, or validate events); ``whole`` tells
    whether the events are kept.  ``keep=False`` keeps nothing (a verification).  Raises
    :class:`ArchiveError` naming the object (and the line) on any problem.
    """
    plaintext = open_chunk(archive, entry, cipher)
    whole = keep and estimated_memory(plaintext) <= DECODED_BUDGET
    kept: list[Any] = []
    count = 0
    for first, lines in segments(plaintext, entry.name):
        events, canonicals = decode(lines, entry.name, first)
        count += len(events)
        if on_lines is not None:
            on_lines(events, canonicals, whole)
        if whole:
            kept += events
        del events, canonicals
    if count != entry.events:
        raise ArchiveError(entry.name, f"holds {count} events, the manifest says {entry.events}")
    if whole:
        return CheckedChunk(entry, True, kept, None, decode)
    return CheckedChunk(entry, False, None, plaintext if keep else b"", decode)


def read_chunk(archive: Archive, entry: ChunkEntry, cipher: ChunkCipher | None) -> list[Event]:
    """Every event of one chunk, after checking it whole; raises :class:`ArchiveError` naming the problem."""
    return [event for batch in check_chunk(archive, entry, cipher).batches() for event in batch]


def open_chunk(archive: Archive, entry: ChunkEntry, cipher: ChunkCipher | None) -> bytes:
    """The plaintext of one chunk after the checks of its bytes: size (before reading, and
    never reading more), sha256, tag, and zstd decompressed within :data:`MAX_CHUNK_PLAINTEXT`."""
    if not 0 <= entry.bytes <= MAX_CHUNK_BYTES:
        raise ArchiveError(
            entry.name, f"the manifest says {entry.bytes} bytes; a chunk holds at most {MAX_CHUNK_BYTES} (not read)"
        )
    try:
        stored = archive.get(entry.name, limit=entry.bytes)
    except ObjectNotFound as e:
        raise ArchiveError(entry.name, "the chunk is missing from the archive") from e
    except ObjectTooLarge as e:
        raise ArchiveError(entry.name, f"the object is larger than the {entry.bytes} bytes the manifest says") from e
    if len(stored) != entry.bytes:
        raise ArchiveError(entry.name, f"size is {len(stored)} bytes, the manifest says {entry.bytes} (truncated?)")
    digest = hashlib.sha256(stored).hexdigest()
    if digest != entry.sha256:
        raise ArchiveError(entry.name, f"sha256 {digest} does not match the manifest's {entry.sha256}")
    if cipher is not None:
        stored = cipher.open(entry.name, stored)
    return decompress(stored, entry.name)


def decompress(frame: bytes, name: str) -> bytes:
    """One zstd frame, at most :data:`MAX_CHUNK_PLAINTEXT` bytes of it whatever the frame's
    header declares: in one call when the header declares a size within the cap (the
    output buffer is that size, and a frame holding more fails), else streamed (the
    one-shot API trusts a declared size and ignores its own cap)."""
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise ArchiveError(name, f"not a valid zstd frame: {e}") from e
    if declared > MAX_CHUNK_PLAINTEXT:
        raise ArchiveError(name, f"decompresses to more than {MAX_CHUNK_PLAINTEXT} bytes, the most a chunk holds")
    if declared >= 0:
        try:
            return decompressor.decompress(frame, max_output_size=MAX_CHUNK_PLAINTEXT)
        except zstandard.ZstdError as e:
            raise ArchiveError(name, f"not a valid zstd frame: {e}") from e
    parts: list[bytes] = []
    total = 0
    try:
        with decompressor.stream_reader(frame, read_size=MIB) as reader:
            while block := reader.read(4 * MIB):
                total += len(block)
                if total > MAX_CHUNK_PLAINTEXT:
                    raise ArchiveError(
                        name, f"decompresses to more than {MAX_CHUNK_PLAINTEXT} bytes, the most a chunk holds"
                    )
                parts.append(block)
    except zstandard.ZstdError as e:
        raise ArchiveError(name, f"not a valid zstd frame: {e}") from e
    return b"".join(parts)


def segments(plaintext: bytes, name: str) -> Iterator[tuple[int, list[bytes]]]:
    """``(number of the first line, lines)``: the non-empty lines of ``plaintext`` about
    :data:`SEGMENT_BYTES` at a time, numbered from 1; a line over :data:`MAX_LINE_BYTES`
    raises :class:`ArchiveError` naming it, before it is parsed."""
    start, number, end = 0, 1, len(plaintext)
    while start < end:
        cut = plaintext.find(b"\n", min(start + SEGMENT_BYTES, end) - 1)
        stop = end if cut < 0 else cut + 1
        lines = chunk_lines(plaintext[start:stop])
        if lines and max(map(len, lines)) > MAX_LINE_BYTES:
            index = next(i for i, line in enumerate(lines) if len(line) > MAX_LINE_BYTES)
            raise ArchiveError(name, f"the line is longer than {MAX_LINE_BYTES} bytes", number + index)
        yield number, lines
        number += len(lines)
        start = stop


def chunk_lines(plaintext: bytes) -> list[bytes]:
    """The non-empty lines of a chunk (one ``split``; a list comprehension only when a line is empty
    besides the last)."""
    lines = plaintext.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return [line for line in lines if line] if b"" in lines else lines
