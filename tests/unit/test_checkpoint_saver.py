"""``checkpoints.Saver``: a job's checkpoints committed in order, inline or behind the next batch
(and, in an import, beside its read of the target's position)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skyferry.adapters.archives.local import LocalArchive
from skyferry.adapters.stores.memory import MemoryEventStore, MemoryViewStore
from skyferry.core.errors import TransientError
from skyferry.core.messages import Event, new_event_id
from skyferry.core.ports import FEATURE_BULK_IN_FLIGHT, ViewChange
from skyferry.migrate import checkpoints
from skyferry.migrate.export import export
from skyferry.migrate.importer import ImportReport, import_archive

KEY = "import:test"


class GatedViews(MemoryViewStore):
    """A view store whose commits wait for a gate, and that records which thread made each."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.started = threading.Event()
        self.threads: list[str] = []
        self.readers: list[str] = []
        self.fail_next = False

    def get_checkpoint(self, projection: str, key: str = "$all") -> str | None:
        self.readers.append(threading.current_thread().name)
        return super().get_checkpoint(projection, key)

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: Mapping[str, str]) -> None:
        self.threads.append(threading.current_thread().name)
        self.started.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.fail_next:
            self.fail_next = False
            raise TransientError("the view store is away")
        super().commit(projection, changes, checkpoint)


def test_inline_each_checkpoint_is_committed_before_save_returns() -> None:
    views = GatedViews()
    views.gate.set()
    saver = checkpoints.Saver(views, KEY, background=False)
    saver.save({"chunks": 1})
    assert checkpoints.load(views, KEY) == {"chunks": 1}
    assert views.threads == [threading.current_thread().name]
    assert views.readers == [threading.current_thread().name], "only the test's own read"
    saver.close()


def test_in_the_background_its_thread_reads_the_checkpoint_once_at_start() -> None:
    """That read builds what the store needs on that thread (a Cosmos DB client: a connection,
    a handshake) beside the job's first batch, not on the way to its first commit."""
    views = GatedViews()
    saver = checkpoints.Saver(views, KEY, background=True)
    saver.flush()
    assert views.readers == ["skyferry-checkpoint_0"]
    saver.close()


def test_in_the_background_save_returns_while_its_commit_runs_and_the_next_waits_for_it() -> None:
    views = GatedViews()
    saver = checkpoints.Saver(views, KEY, background=True)
    saver.save({"chunks": 1})  # returns at once: the commit waits behind the gate on its own thread
    assert views.started.wait(10)
    assert checkpoints.load(views, KEY) is None

    second = threading.Thread(target=saver.save, args=({"chunks": 2},))
    second.start()
    second.join(0.2)
    assert second.is_alive(), "a save waits until the one before it is committed"
    views.gate.set()
    second.join(10)
    saver.flush()
    assert checkpoints.load(views, KEY) == {"chunks": 2}
    assert views.threads == ["skyferry-checkpoint_0"] * 2
    saver.close()


def test_the_value_is_copied_when_saved() -> None:
    views = GatedViews()
    saver = checkpoints.Saver(views, KEY, background=True)
    state = {"chunks": 1}
    saver.save(state)
    state["chunks"] = 99  # the caller goes on with its own dict
    views.gate.set()
    saver.flush()
    assert checkpoints.load(views, KEY) == {"chunks": 1}
    saver.close()


def test_a_failed_commit_is_raised_by_the_next_save_or_flush() -> None:
    views = GatedViews()
    views.gate.set()
    views.fail_next = True
    saver = checkpoints.Saver(views, KEY, background=True)
    saver.save({"chunks": 1})
    with pytest.raises(TransientError, match="away"):
        saver.save({"chunks": 2})
    assert checkpoints.load(views, KEY) is None, "nothing after a failed checkpoint is saved by that call"
    saver.save({"chunks": 2})
    saver.flush()
    assert checkpoints.load(views, KEY) == {"chunks": 2}
    saver.close()


def test_close_lets_the_last_commit_finish_and_logs_its_failure(caplog: pytest.LogCaptureFixture) -> None:
    views = GatedViews()
    saver = checkpoints.Saver(views, KEY, background=True)
    saver.save({"chunks": 1})
    assert views.started.wait(10)
    threading.Timer(0.1, views.gate.set).start()
    saver.close()  # waits for the commit behind the gate
    assert checkpoints.load(views, KEY) == {"chunks": 1}

    views.fail_next = True
    failing = checkpoints.Saver(views, KEY, background=True)
    failing.save({"chunks": 2})
    with caplog.at_level(logging.WARNING, logger="skyferry.migrate.checkpoints"):
        failing.close()  # a job closed by its own failure raises that one, not this
    assert "could not be saved: the view store is away" in caplog.text
    assert checkpoints.load(views, KEY) == {"chunks": 1}
    failing.close()  # idempotent


class InFlightStore(MemoryEventStore):
    """A store that keeps its bulk writes in flight (as the cloud stores), whose
    ``last_position`` records whether the checkpoint's commit had started by then, and then
    lets it finish."""

    features = MemoryEventStore.features | {FEATURE_BULK_IN_FLIGHT}

    def __init__(self, views: GatedViews) -> None:
        super().__init__()
        self.views = views
        self.commit_started: list[bool] = []

    def bulk_append(self, events: Sequence[Event], in_flight: int = 1) -> int:
        return super().bulk_append(events)

    def last_position(self) -> str | None:
        self.commit_started.append(self.views.started.wait(10))
        self.views.gate.set()
        return super().last_position()


def test_an_imports_checkpoint_commit_overlaps_its_read_of_the_targets_position(tmp_path: Path) -> None:
    """Both are round trips to a cloud target: the commit starts first, behind the read."""
    source = MemoryEventStore()
    now = datetime.now(UTC)
    source.bulk_append([Event(new_event_id(), "s", n, "Happened", 1, {"n": n}, {}, now, now) for n in range(1, 11)])
    archive = LocalArchive(tmp_path / "archive")
    export(source, archive)
    views = GatedViews()
    target = InFlightStore(views)
    report = import_archive(archive, target, views, concurrency=4)
    assert report.written == 10
    assert target.commit_started == [True]
    assert checkpoints.load(views, report_key(report)) == {"chunks": 1, "events": 10}


def report_key(report: ImportReport) -> str:
    return checkpoints.job_key("import", report.digest, None, None)
