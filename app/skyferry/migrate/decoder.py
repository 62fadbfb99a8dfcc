"""Checking and decoding an archive's chunks for an import, in a second process on another core.

An import into a store that copies rows (SQLite, PostgreSQL) spends about as much CPU on
reading the chunks (sha256, AES-GCM, zstd, every line parsed, checked against the rules
and encoded as the store's row, the hash chains) as the store's writes take, and in one
process the GIL makes the two take turns.  So when
:func:`~skyferry.migrate.importer.import_archive` is given the archive's URL, the rows
come from :class:`DecoderProcess` (a :class:`~skyferry.migrate.child.ChildProcess`, whose
safety rules it follows): ``python -m skyferry.migrate.decoder`` opens the same archive
(the key, if any, comes with the request on its stdin), checks the manifest is the one the
parent read, and checks and decodes every chunk as the import in one process does
(:func:`~skyferry.migrate.chunks.check_chunk` with
:func:`~skyferry.migrate.format.decode_rows`).  It sends the rows of each chunk from the
one the import resumes at, as ``marshal`` frames, then every stream's hash-chain head;
it ends by saying how many chunks it read.  A chunk is sent only once it has been checked
whole, so a chunk holding one bad line still writes nothing.
"""

from __future__ import annotations

import marshal
from collections.abc import Callable, Iterator
from typing import Any

from skyferry.core.ports import StoredRow
from skyferry.migrate.child import ChildProcess, serve
from skyferry.migrate.manifest import StreamHead
from skyferry.migrate.sharding import Shard, owned_rows


class DecoderProcess(ChildProcess):
    """The rows of the chunks of the archive at ``url`` (the manifest with ``digest``, opened
    with ``key``) from chunk ``start`` on, of ``shard``, checked and decoded by a child
    process; iterate once, and leave the ``with`` block to stop it early.

    Each item is ``(chunk index, rows, last)``, ``last`` true on a chunk's final part (a
    chunk too large to keep decoded comes in parts); then :attr:`heads` holds every
    stream's hash-chain head, computed over every chunk.
    """

    def __init__(
        self, url: str, *, digest: str, key: bytes | None, start: int, chunks: int, shard: Shard | None
    ) -> None:
        request = {
            "url": url,
            "digest": digest,
            "key": None if key is None else key.hex(),
            "start": start,
            "shard": None if shard is None else str(shard),
        }
        super().__init__(
            "skyferry.migrate.decoder", request, end=str(chunks), name="the import's decoder process", command="import"
        )
        self.heads: dict[str, StreamHead] = {}

    def __iter__(self) -> Iterator[tuple[int, list[StoredRow], bool]]:
        for body in self._bodies():
            frame = marshal.loads(body)  # noqa: S302  # our own child, a private pipe
            if frame[0] == "heads":
                self.heads = {stream: StreamHead(*head) for stream, head in frame[1].items()}
            else:
                yield frame[1], frame[2], frame[3]


def _decode(request: dict[str, Any], send: Callable[[bytes], None]) -> str:
    """The child's work: the rows of each chunk from ``start`` on, then the heads; returns
    the number of chunks read."""
    from skyferry.adapters import registry
    from skyferry.migrate.chunks import check_chunk
    from skyferry.migrate.crypto import ChunkCipher
    from skyferry.migrate.errors import ArchiveError
    from skyferry.migrate.export import HeadTracker
    from skyferry.migrate.format import decode_rows
    from skyferry.migrate.importer import read_manifest
    from skyferry.migrate.manifest import MANIFEST_NAME

    archive = registry.open_archive(request["url"])
    cipher = None if request["key"] is None else ChunkCipher(bytes.fromhex(request["key"]))
    manifest = read_manifest(archive, cipher)
    if manifest.digest != request["digest"]:
        raise ArchiveError(MANIFEST_NAME, "changed while the import was reading the archive; run the import again")
    shard, start = Shard.parse(request["shard"]), request["start"]
    heads = HeadTracker()
    for index, entry in enumerate(manifest.chunks):

        def chain(rows: list[StoredRow], canonicals: list[bytes], whole: bool, name: str = entry.name) -> None:
            heads.add_many(zip(rows, canonicals, strict=True), name, rows=True)

        chunk = check_chunk(archive, entry, cipher, on_lines=chain, keep=index >= start, decode=decode_rows)
        if index < start:
            continue  # done by an earlier run: checked for the chains, not sent
        parts = chunk.batches()
        part = next(parts, [])
        for following in parts:
            send(marshal.dumps(("rows", index, owned_rows(shard, part), False)))
            part = following
        send(marshal.dumps(("rows", index, owned_rows(shard, part), True)))
    send(marshal.dumps(("heads", {stream: (h.events, h.head, h.last_version) for stream, h in heads.heads.items()})))
    return str(len(manifest.chunks))


def main() -> None:
    """The child: :func:`~skyferry.migrate.child.serve` with :func:`_decode`."""
    serve(_decode, "the import's decoder process")


if __name__ == "__main__":
    main()
