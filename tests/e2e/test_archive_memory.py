"""Reading an archive takes bounded memory whatever it holds: ``import`` and ``verify`` run
as a user runs them, their peak RSS measured (``wait4``), against archives built to
exhaust memory.  Over-limit input exits 2 naming the file; the bound is
:data:`MEMORY_BOUND_MB` (``docs/operations.md``), under the 1 GiB of the chart's migration pods.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from skyferry.adapters import registry
from skyferry.adapters.archives.local import LocalArchive
from skyferry.core.messages import Event
from skyferry.migrate.manifest import MANIFEST_NAME, ChunkEntry, Manifest, StreamHead
from tests.integration.migrate_support import write_archive

MEMORY_BOUND_MB = 512
"""What ``docs/operations.md`` promises for ``import`` and ``verify`` of any archive."""
GIB = 1024**3
SKYFERRY = str(Path(sys.executable).with_name("skyferry"))
_MEASURE = (
    "import os, sys\n"
    "pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)
"""A small, fresh interpreter runs the command: ``ru_maxrss`` of a child counts the pages
of the process it was forked from, so the test process must not be that parent."""


def measured(*args: str) -> tuple[float, int, str]:
    """``(peak RSS in MB, exit code, stderr)`` of ``skyferry ARGS``."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, SKYFERRY, *args], capture_output=True, text=True, timeout=600
    )
    kib, code = result.stdout.split()[-2:]
    return int(kib) / 1024, int(code), result.stderr


def sealed(archive: Path, chunks: list[ChunkEntry], streams: dict[str, StreamHead]) -> None:
    manifest = Manifest(source={"url": "test://", "shard": None}, created_at="2026-01-01T00:00:00.000000Z")
    manifest.chunks, manifest.streams = chunks, streams
    archive.mkdir(parents=True, exist_ok=True)
    (archive / MANIFEST_NAME).write_bytes(manifest.to_bytes())


def entry(name: str, stored: bytes | int, events: int = 1) -> ChunkEntry:
    size = stored if isinstance(stored, int) else len(stored)
    digest = hashlib.sha256(stored if isinstance(stored, bytes) else b"").hexdigest()
    return ChunkEntry(name, events, size, digest, "1", "1")


def bomb() -> bytes:
    """A zstd frame of about 32 KB declaring and holding 1 GiB of zeros (compressed as it streams)."""
    sink = _Sink()
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    with compressor.stream_writer(sink, size=GIB, closefd=False) as writer:
        block = bytes(1024 * 1024)
        for _ in range(1024):
            writer.write(block)
    return bytes(sink.data)


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


@pytest.mark.parametrize("command", ["import", "verify"])
def test_a_chunk_that_expands_to_a_gibibyte_is_refused_in_bounded_memory(tmp_path: Path, command: str) -> None:
    archive = tmp_path / "archive"
    frame = bomb()
    assert len(frame) < 64 * 1024
    assert zstandard.frame_content_size(frame) == GIB
    (archive / "chunks").mkdir(parents=True)
    (archive / "chunks/000000.jsonl.zst").write_bytes(frame)
    sealed(archive, [entry("chunks/000000.jsonl.zst", frame)], {})
    peak, code, stderr = run_reader(command, archive, tmp_path)
    assert code == 2, stderr
    assert "chunks/000000.jsonl.zst: decompresses to more than" in stderr
    assert peak < MEMORY_BOUND_MB


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("8 GiB chunk, the manifest says so", "chunks/000000.jsonl.zst: the manifest says 8589934592 bytes"),
        ("8 GiB chunk, the manifest says 100 bytes", "chunks/000000.jsonl.zst: the object is larger than"),
        ("8 GiB manifest", "manifest.json: larger than"),
    ],
)
def test_sparse_files_of_eight_gibibytes_are_refused_before_they_are_read(
    tmp_path: Path, case: str, message: str
) -> None:
    archive = tmp_path / "archive"
    (archive / "chunks").mkdir(parents=True)
    chunk = archive / "chunks/000000.jsonl.zst"
    with chunk.open("wb") as f:
        f.truncate(8 * GIB)  # sparse: no disk used
    sealed(archive, [entry("chunks/000000.jsonl.zst", 8 * GIB if "says so" in case else 100)], {})
    if case == "8 GiB manifest":
        with (archive / MANIFEST_NAME).open("r+b") as f:
            f.truncate(8 * GIB)
    for command in ("import", "verify"):
        peak, code, stderr = run_reader(command, archive, tmp_path)
        assert code == 2, stderr
        assert message in stderr
        assert "Traceback" not in stderr
        assert peak < MEMORY_BOUND_MB


def test_chunks_at_the_caps_of_the_worst_data_import_and_verify_in_bounded_memory(tmp_path: Path) -> None:
    """Two chunks of about 20 MiB of events whose data is arrays of empty arrays: decoded, about
    24 times their text (900 MB for these two chunks), the worst ratio JSON gives."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    per_event = 60_000  # "[]," each: 180 KB of data, under the 192 KiB limit
    events = [
        Event(str(uuid.uuid4()), f"s{i % 3}", i // 3 + 1, "Worst", 1, {"a": [[]] * per_event}, {}, moment, moment)
        for i in range(200)
    ]
    write_archive(LocalArchive(tmp_path / "archive"), events, chunk_bytes=20 * 1024 * 1024)
    manifest = Manifest.from_bytes((tmp_path / "archive" / MANIFEST_NAME).read_bytes())
    assert len(manifest.chunks) == 2
    target = f"sqlite:///{tmp_path}/target.db"
    peak, code, stderr = measured("import", "--from", str(tmp_path / "archive"), "--to", target, "--json")
    assert code == 0, stderr
    # two chunks: the import reads them in its decoder process, and wait4 gives the peak of the
    # larger of the two processes, so half the bound bounds them together
    assert peak < MEMORY_BOUND_MB / 2
    peak, code, stderr = measured("verify", "--from", str(tmp_path / "archive"), "--to", target, "--json")
    assert code == 0, stderr
    assert peak < MEMORY_BOUND_MB


def run_reader(command: str, archive: Path, tmp_path: Path) -> tuple[float, int, str]:
    """``command`` (import or verify) reading ``archive``, measured; verify against an existing store."""
    target = f"sqlite:///{tmp_path}/target-{command}.db"
    if command == "import":
        return measured("import", "--from", str(archive), "--to", target, "--json")
    store = registry.open_event_store(target)
    store.last_position()  # creates it: verify reads only stores that exist
    store.close()
    return measured("verify", "--from", str(archive), "--to", target, "--json")
