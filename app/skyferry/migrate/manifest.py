"""The archive's ``manifest.json``: what an export holds, and the digest that seals it.

The manifest is written last, so an archive without one is an unfinished export.  Its
``digest`` is ``sha256`` over the canonical JSON of every other field; since the fields
include each chunk's ``sha256`` and each stream's hash-chain head, the digest covers the
whole archive.  See ``docs/archive-format.md``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, Final

import orjson

from skyferry.core.errors import ValidationError
from skyferry.core.messages import encode_json
from skyferry.core.ports import check_object_name
from skyferry.migrate.errors import ArchiveError

FORMAT: Final = "skyferry-archive"
FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "manifest.json"
CHUNK_PREFIX: Final = "chunks/"


def tool_version() -> str:
    """The installed skyferry version (``0+unknown`` when run from a bare checkout)."""
    try:
        return importlib_metadata.version("skyferry")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def chunk_name(index: int) -> str:
    """The object name of chunk ``index`` (0-based): ``chunks/000000.jsonl.zst``."""
    return f"{CHUNK_PREFIX}{index:06d}.jsonl.zst"


@dataclass(slots=True)
class ChunkEntry:
    """One chunk: its object name, event count, stored size, ``sha256`` of the stored bytes."""

    name: str
    events: int
    bytes: int
    sha256: str
    first_position: str | None
    last_position: str | None

    def to_json(self) -> dict[str, Any]:
        """The entry as it appears in the manifest."""
        return {
            "name": self.name,
            "events": self.events,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "first_position": self.first_position,
            "last_position": self.last_position,
        }


@dataclass(slots=True)
class StreamHead:
    """A stream's event count and hash-chain head (see :func:`skyferry.migrate.format.chain_next`)."""

    events: int
    head: str
    last_version: int = 0


@dataclass(slots=True)
class Manifest:
    """The parsed manifest; :meth:`to_bytes` writes it with its digest."""

    source: dict[str, Any]
    created_at: str
    chunks: list[ChunkEntry] = field(default_factory=list)
    streams: dict[str, StreamHead] = field(default_factory=dict)
    encryption: dict[str, Any] | None = None
    transform: dict[str, Any] | None = None
    tool: str = field(default_factory=tool_version)
    digest: str = ""

    @property
    def event_count(self) -> int:
        """Events in the archive."""
        return sum(chunk.events for chunk in self.chunks)

    @property
    def first_position(self) -> str | None:
        """The source position of the first event (``None`` for an empty archive)."""
        return self.chunks[0].first_position if self.chunks else None

    @property
    def last_position(self) -> str | None:
        """The source position of the last event."""
        return self.chunks[-1].last_position if self.chunks else None

    def body(self) -> dict[str, Any]:
        """Every field but ``digest``, as JSON types."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool_version": self.tool,
            "created_at": self.created_at,
            "source": self.source,
            "event_count": self.event_count,
            "stream_count": len(self.streams),
            "first_position": self.first_position,
            "last_position": self.last_position,
            "encryption": self.encryption,
            "transform": self.transform,
            "chunks": [chunk.to_json() for chunk in self.chunks],
            "streams": {
                stream_id: {"events": head.events, "last_version": head.last_version, "head": head.head}
                for stream_id, head in sorted(self.streams.items())
            },
        }

    def to_bytes(self) -> bytes:
        """The manifest file: the body plus ``digest``, indented for people."""
        body = self.body()
        self.digest = "sha256:" + hashlib.sha256(encode_json(body)).hexdigest()
        return orjson.dumps({**body, "digest": self.digest}, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Parse and check a manifest: format, version, digest, fields, chunk names (each a
        relative object name inside the archive); raises :class:`ArchiveError`."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ArchiveError(MANIFEST_NAME, f"not JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ArchiveError(MANIFEST_NAME, f"not a skyferry archive manifest (format is not {FORMAT!r})")
        if doc.get("format_version") != FORMAT_VERSION:
            raise ArchiveError(
                MANIFEST_NAME,
                f"unknown format_version {doc.get('format_version')!r}; this skyferry reads version {FORMAT_VERSION}",
            )
        digest = doc.pop("digest", None)
        expected = "sha256:" + hashlib.sha256(encode_json(doc)).hexdigest()
        if digest != expected:
            raise ArchiveError(MANIFEST_NAME, f"digest mismatch: recorded {digest!r}, computed {expected!r}")
        try:
            manifest = cls(
                source=dict(doc["source"]),
                created_at=str(doc["created_at"]),
                chunks=[
                    ChunkEntry(
                        name=str(c["name"]),
                        events=int(c["events"]),
                        bytes=int(c["bytes"]),
                        sha256=str(c["sha256"]),
                        first_position=c["first_position"],
                        last_position=c["last_position"],
                    )
                    for c in doc["chunks"]
                ],
                streams={
                    str(k): StreamHead(int(v["events"]), str(v["head"]), int(v["last_version"]))
                    for k, v in doc["streams"].items()
                },
                encryption=doc.get("encryption"),
                transform=doc.get("transform"),
                tool=str(doc.get("tool_version", "")),
                digest=str(digest),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArchiveError(MANIFEST_NAME, f"malformed field: {e!r}") from e
        if manifest.event_count != doc.get("event_count"):
            raise ArchiveError(MANIFEST_NAME, "event_count does not match the chunks' counts")
        for index, entry in enumerate(manifest.chunks):
            try:
                check_object_name(entry.name)
            except ValidationError as e:
                raise ArchiveError(MANIFEST_NAME, f"chunk {index}: {e}") from e
        return manifest
