"""Bad archives: each is a clear error naming the file (and line), and nothing past the
last verified checkpoint is imported."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import zstandard

from skyferry.adapters.archives.local import LocalArchive
from skyferry.core.ports import EventStore, ViewStore
from skyferry.migrate import checkpoints
from skyferry.migrate.crypto import ChunkCipher
from skyferry.migrate.errors import ArchiveError, WrongKey
from skyferry.migrate.export import export
from skyferry.migrate.importer import import_archive
from skyferry.migrate.manifest import MANIFEST_NAME, Manifest
from tests.integration.migrate_support import fill, opened, store_url

KEY = bytes(range(32))


@pytest.fixture
def exported(tmp_path: Path) -> tuple[LocalArchive, Manifest]:
    """An archive of 36 events in 4 chunks of 10, 10, 10 and 6."""
    archive = LocalArchive(tmp_path / "a")
    with store_url("memory") as url, opened(url) as (source, _):
        fill(source, streams=6, per_stream=6)
        export(source, archive, chunk_events=10)
    return archive, Manifest.from_bytes(archive.get(MANIFEST_NAME))


@pytest.fixture
def target() -> Iterator[tuple[EventStore, ViewStore]]:
    with store_url("sqlite") as url, opened(url) as pair:
        yield pair


def reseal(archive: LocalArchive, manifest: Manifest, index: int, plaintext: bytes) -> None:
    """Replace chunk ``index`` as a buggy writer would: valid digests around bad content."""
    entry = manifest.chunks[index]
    stored = zstandard.ZstdCompressor().compress(plaintext)
    archive.put(entry.name, stored)
    entry.bytes, entry.sha256 = len(stored), hashlib.sha256(stored).hexdigest()
    archive.put(MANIFEST_NAME, manifest.to_bytes())


def damage(archive: LocalArchive, name: str, change: Callable[[bytes], bytes]) -> None:
    archive.put(name, change(archive.get(name)))


@pytest.fixture(params=[False, True], ids=["in-process", "decoder-process"])
def in_child(request: pytest.FixtureRequest) -> bool:
    """Whether the import reads the chunks in a second process (given the archive's URL)."""
    return bool(request.param)


def flip(data: bytes, at: int = 30) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated chunk", r"chunks/000002\.jsonl\.zst: size is \d+ bytes, the manifest says \d+"),
        ("flipped byte", r"chunks/000002\.jsonl\.zst: sha256 [0-9a-f]+ does not match"),
        ("missing chunk", r"chunks/000002\.jsonl\.zst: the chunk is missing"),
        ("malformed line", r"chunks/000002\.jsonl\.zst, line 4: not JSON"),
        ("missing attribute", r"chunks/000002\.jsonl\.zst, line 1: missing CloudEvents attribute\(s\) streamversion"),
    ],
)
def test_a_bad_chunk_stops_the_import_after_the_last_good_chunk(
    exported: tuple[LocalArchive, Manifest],
    target: tuple[EventStore, ViewStore],
    case: str,
    message: str,
    in_child: bool,
) -> None:
    archive, manifest = exported
    name = manifest.chunks[2].name
    if case == "truncated chunk":
        damage(archive, name, lambda b: b[: len(b) // 2])
    elif case == "flipped byte":
        damage(archive, name, flip)
    elif case == "missing chunk":
        archive.delete(name)
    else:
        lines = zstandard.ZstdDecompressor().decompress(archive.get(name)).splitlines()
        if case == "malformed line":
            lines[3] = lines[3][:-5]
        else:
            raw = orjson.loads(lines[0])
            del raw["streamversion"]
            lines[0] = orjson.dumps(raw)
        reseal(archive, manifest, 2, b"\n".join(lines) + b"\n")
    store, views = target
    with pytest.raises(ArchiveError, match=message):
        import_archive(archive, store, views, archive_url=archive.url if in_child else None)
    imported = store.read_all(limit=1000)
    assert len(imported) == 20  # chunks 0 and 1, verified and checkpointed; nothing of chunk 2
    key = checkpoints.job_key("import", Manifest.from_bytes(archive.get(MANIFEST_NAME)).digest, None, None)
    assert checkpoints.load(views, key) == {"chunks": 2, "events": 20}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda doc: doc.update(event_count=99), r"manifest\.json: digest mismatch"),
        (lambda doc: doc["chunks"][0].update(sha256="0" * 64), r"manifest\.json: digest mismatch"),
        (lambda doc: doc.update(format_version=2), r"manifest\.json: unknown format_version 2"),
        (lambda doc: doc.update(format="tarball"), r"manifest\.json: not a skyferry archive"),
    ],
    ids=["count", "chunk-digest", "format-version", "format"],
)
def test_a_bad_manifest_stops_before_anything_is_imported(
    exported: tuple[LocalArchive, Manifest],
    target: tuple[EventStore, ViewStore],
    edit: Callable[[dict[str, object]], None],
    message: str,
) -> None:
    archive, _ = exported
    doc = orjson.loads(archive.get(MANIFEST_NAME))
    edit(doc)
    archive.put(MANIFEST_NAME, orjson.dumps(doc))
    store, views = target
    with pytest.raises(ArchiveError, match=message):
        import_archive(archive, store, views)
    assert store.last_position() is None


def test_an_archive_without_a_manifest_is_an_unfinished_export(
    exported: tuple[LocalArchive, Manifest], target: tuple[EventStore, ViewStore]
) -> None:
    archive, _ = exported
    archive.delete(MANIFEST_NAME)
    with pytest.raises(ArchiveError, match=r"manifest\.json: missing: not an archive, or an unfinished export"):
        import_archive(archive, *target)


def test_encrypted_archives_need_the_right_key(
    tmp_path: Path, target: tuple[EventStore, ViewStore], in_child: bool
) -> None:
    archive = LocalArchive(tmp_path / "sealed")
    with store_url("memory") as url, opened(url) as (source, _):
        count = fill(source, streams=3, per_stream=4)
        export(source, archive, cipher=ChunkCipher(KEY), chunk_events=5)
    store, views = target
    with pytest.raises(WrongKey, match=r"manifest\.json: wrong encryption key"):
        import_archive(archive, store, views, cipher=ChunkCipher(bytes(32)))
    with pytest.raises(WrongKey, match="the archive is encrypted: give --key-file or --key-env"):
        import_archive(archive, store, views)
    assert store.last_position() is None
    url = archive.url if in_child else None
    report = import_archive(archive, store, views, cipher=ChunkCipher(KEY), archive_url=url)
    assert report.written == count
    manifest = Manifest.from_bytes(archive.get(MANIFEST_NAME))
    assert manifest.encryption is not None
    assert manifest.encryption["algorithm"] == "AES-256-GCM"
    damage(archive, manifest.chunks[1].name, flip)
    with pytest.raises(ArchiveError, match=r"chunks/000001\.jsonl\.zst: sha256"):
        import_archive(archive, store, views, cipher=ChunkCipher(KEY), archive_url=url)
