"""The worker's heartbeat: touched on progress (rate-limited), aged by ``skyferry alive``."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from skyferry import heartbeat
from skyferry.adapters.brokers.memory import MemoryBroker
from skyferry.adapters.stores.memory import MemoryEventStore, MemoryViewStore
from skyferry.bootstrap import Ledger
from skyferry.cli import run
from skyferry.core.errors import ConfigurationError, TransientError
from skyferry.core.messages import NewEvent
from skyferry.core.ports import ANY
from skyferry.core.worker import Task, Worker
from skyferry.heartbeat import Heartbeat, age_seconds


def test_a_beat_creates_the_file_and_a_second_within_the_interval_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(heartbeat.time, "monotonic", lambda: clock[0])
    path = tmp_path / "hb"
    beat = Heartbeat(path)
    beat.beat()
    assert path.exists()
    assert age_seconds(path) < 5
    os.utime(path, (time.time() - 50, time.time() - 50))
    clock[0] += heartbeat.MIN_INTERVAL_SECONDS / 2
    beat.beat()
    assert age_seconds(path) >= 49  # rate-limited: not touched
    clock[0] += heartbeat.MIN_INTERVAL_SECONDS
    beat.beat()
    assert age_seconds(path) < 5


def test_an_unwritable_heartbeat_file_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "hb"
    with pytest.raises(ConfigurationError, match="missing-dir"):
        Heartbeat(path).beat()


def test_no_heartbeat_file_yet_is_transient() -> None:
    with pytest.raises(TransientError, match="no heartbeat"):
        age_seconds("/nonexistent/skyferry-heartbeat")


def _ledger() -> Ledger:
    return Ledger(MemoryEventStore(), MemoryViewStore(), MemoryBroker())


def test_a_long_catch_up_beats_on_every_batch() -> None:
    ledger = _ledger()
    for n in range(30):
        ledger.events.append(f"noise-{n}", [NewEvent("Noise", {"i": i}) for i in range(100)], ANY)
    positions_at_beats: list[str | None] = []
    handled = ledger.run_worker_once(lambda: positions_at_beats.append(ledger.read_models.checkpoint("balances")))
    assert handled >= 3000
    # beats came between the runners' batches (1,000 events each), not only before the catch-up began
    assert len(set(positions_at_beats)) >= 3
    ledger.close()


def test_a_hung_pass_stops_beating_and_a_backing_off_worker_keeps_beating() -> None:
    hang = threading.Event()
    fail = threading.Event()
    hanging = threading.Event()

    def step() -> int:
        if fail.is_set():
            raise TransientError("store unreachable (test)")
        hanging.set()
        hang.wait()  # a socket read that never returns, until the test lets go
        return 0

    beats: list[float] = []
    stop = threading.Event()
    fail.set()
    loop = Worker([Task("hangs", step)])
    worker = threading.Thread(
        target=loop.run,
        args=(stop,),
        kwargs={"poll_interval": 0.01, "max_backoff": 0.02, "beat": lambda: beats.append(1.0)},
    )
    worker.start()
    deadline = time.monotonic() + 30
    while len(beats) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(beats) >= 6  # failing passes, backing off: still beating
    fail.clear()
    assert hanging.wait(timeout=30)  # the worker entered a pass that hangs
    hung_at = len(beats)
    time.sleep(0.5)
    assert len(beats) == hung_at  # no progress, no beat
    stop.set()
    hang.set()
    worker.join(timeout=30)
    assert not worker.is_alive()


def test_alive_without_the_setting_is_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SKYFERRY_HEARTBEAT_FILE", raising=False)
    assert run(["alive"]) == 2
    assert "SKYFERRY_HEARTBEAT_FILE is not set" in capsys.readouterr().err


def test_alive_reads_the_age_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hb"
    monkeypatch.setenv("SKYFERRY_HEARTBEAT_FILE", str(path))
    assert run(["alive"]) == 3  # no worker has started
    assert "no heartbeat" in capsys.readouterr().err
    path.touch()
    assert run(["alive", "--max-age", "60"]) == 0
    assert "alive" in capsys.readouterr().out
    os.utime(path, (time.time() - 300, time.time() - 300))
    assert run(["alive", "--max-age", "60"]) == 1
    assert "heartbeat was 0:05:00 ago, over the limit of 0:01:00" in capsys.readouterr().err
    assert run(["alive", "--max-age", "0"]) == 2  # below the minimum of 1
