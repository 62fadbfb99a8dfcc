"""Export with a reader process (``skyferry.migrate.reader``): the same archive as reading in-process,
errors raised with their type, and a child that never outlives its parent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from skyferry.adapters.archives.local import LocalArchive
from skyferry.core.errors import ConfigurationError, TransientError
from skyferry.migrate import export as export_module
from skyferry.migrate.export import export
from skyferry.migrate.manifest import MANIFEST_NAME, Manifest
from skyferry.migrate.reader import READ_BATCH, ReaderProcess
from skyferry.migrate.sharding import Shard
from tests.integration.migrate_support import fill_many, opened, store_schemes, store_url


def _archive_bytes(archive: LocalArchive) -> tuple[dict[str, Any], list[bytes]]:
    manifest = Manifest.from_bytes(archive.get(MANIFEST_NAME))
    doc = manifest.body()
    doc.pop("created_at")
    return doc, [archive.get(entry.name) for entry in manifest.chunks]


@pytest.mark.parametrize("scheme", [s for s in store_schemes() if s != "memory"])
def test_every_store_can_be_read_by_a_reader_process(
    tmp_path: Path, scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "ReaderProcess", _Counted)
    _Counted.events = 0
    with store_url(scheme) as url, opened(url) as (store, _):
        fill_many(store, count=130, streams=1)  # one stream: a few appends where there is no bulk_append
        here = export(store, LocalArchive(tmp_path / "here"), read_batch=40)
        there = export(store, LocalArchive(tmp_path / "there"), reader_url=url, read_batch=40)
    assert there.events == here.events == 130
    assert _Counted.events == 90  # all but the first batch came from the child, opened on the URL alone
    assert _archive_bytes(LocalArchive(tmp_path / "there")) == _archive_bytes(LocalArchive(tmp_path / "here"))


@pytest.mark.parametrize("scheme", ["sqlite", "postgresql"])
@pytest.mark.parametrize("shard", [None, Shard(1, 3)], ids=["all", "shard-1-of-3"])
def test_a_reader_process_writes_the_same_archive(
    tmp_path: Path, scheme: str, shard: Shard | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "ReaderProcess", _Counted)
    _Counted.events = 0
    with store_url(scheme) as url, opened(url) as (store, _):
        fill_many(store)
        here = export(store, LocalArchive(tmp_path / "here"), shard=shard, chunk_events=3000)
        assert _Counted.events == 0
        there = export(store, LocalArchive(tmp_path / "there"), shard=shard, chunk_events=3000, reader_url=url)
    assert there.events == here.events > 0
    assert 0 < _Counted.events < there.events  # the first batch was read here, the rest by the child
    assert _archive_bytes(LocalArchive(tmp_path / "there")) == _archive_bytes(LocalArchive(tmp_path / "here"))


def test_the_child_ignores_packages_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoy = tmp_path / "project" / "app"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the user's own app package')\n")
    (decoy.parent / "orjson.py").write_text("raise ImportError('a module of the working directory')\n")
    monkeypatch.setattr(export_module, "ReaderProcess", _Counted)
    _Counted.events = 0
    with store_url("sqlite") as url, opened(url) as (store, _):
        fill_many(store, count=130, streams=7)
        monkeypatch.chdir(decoy.parent)
        report = export(store, LocalArchive(tmp_path / "a"), reader_url=url, read_batch=40)
    assert (report.events, _Counted.events) == (130, 90)


def test_a_child_that_stops_short_is_an_error_not_a_shorter_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "ReaderProcess", _Beyond)
    with store_url("sqlite") as url, opened(url) as (store, _):
        fill_many(store, count=130, streams=7)
        # the child waits READ_PATIENCE for position 131 (an index may lag), then says it is missing
        with pytest.raises(
            TransientError, match=r"read_all gave nothing after position 130 .* before the last position 131"
        ):
            export(store, LocalArchive(tmp_path / "a"), reader_url=url, read_batch=40)
    assert not LocalArchive(tmp_path / "a").exists(MANIFEST_NAME)


def test_an_error_in_the_reader_is_raised_with_its_type(tmp_path: Path) -> None:
    with store_url("sqlite") as url, opened(url) as (store, _):
        fill_many(store)
        with pytest.raises(ConfigurationError, match="unknown event store URL scheme 'nosuch'"):
            export(store, LocalArchive(tmp_path / "a"), reader_url="nosuch://x")
    assert not LocalArchive(tmp_path / "a").exists(MANIFEST_NAME)  # nothing claims to be an export


class _Counted(ReaderProcess):
    """A reader counting the events its child sent."""

    events = 0

    def _frames(self) -> Any:
        for frame in super()._frames():
            _Counted.events += len(frame)
            yield frame


class _Beyond(ReaderProcess):
    """A reader asked for one position past the store's end: its child stops short of it."""

    def __init__(self, url: str, *, after: str, end: str, shard: Shard | None, limit: int) -> None:
        super().__init__(url, after=after, end=str(int(end) + 1), shard=shard, limit=limit)


class _Killed(ReaderProcess):
    """A reader whose child is killed after its first frame."""

    def _frames(self) -> Any:
        for number, frame in enumerate(super()._frames()):
            if number == 0:
                self._process.kill()
            yield frame


def test_a_reader_that_dies_is_a_transient_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "ReaderProcess", _Killed)
    with store_url("sqlite") as url, opened(url) as (store, _):
        fill_many(store, count=6 * READ_BATCH)
        with pytest.raises(
            TransientError, match=r"reader process ended \(exit code -9\) before it finished; .* run the export again$"
        ):
            export(store, LocalArchive(tmp_path / "a"), reader_url=url)
    assert not LocalArchive(tmp_path / "a").exists(MANIFEST_NAME)


_PARENT = """
import sys, time
from skyferry.migrate.reader import ReaderProcess
reader = ReaderProcess(sys.argv[1], after="0", end=sys.argv[2], shard=None)
print(reader._process.pid, flush=True)
time.sleep(60)  # never reads: the child blocks on the full pipe
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_the_reader_dies_with_its_parent(tmp_path: Path) -> None:
    with store_url("sqlite") as url, opened(url) as (store, _):
        fill_many(store)
        end = store.last_position()
        assert end is not None
        parent = subprocess.Popen(
            [sys.executable, "-c", _PARENT, url, end], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
        )
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and waiting to be reaped by init, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux only")
def test_the_reader_may_write_a_mebibyte_ahead(tmp_path: Path) -> None:
    import fcntl

    with store_url("sqlite") as url, opened(url) as (store, _):
        fill_many(store, count=10)
        end = store.last_position()
        assert end is not None
        with ReaderProcess(url, after="0", end=end, shard=None) as reader:
            pipe = reader._process.stdout
            assert pipe is not None
            assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) == 1 << 20
            assert sum(len(frame) for frame in reader) == 10
