"""``skyferry worker`` as a process keeps a heartbeat; ``skyferry alive`` (the probe) sees it stop when it hangs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def _skyferry() -> str:
    return shutil.which("skyferry", path=str(Path(sys.executable).parent)) or "skyferry"


def _alive(env: dict[str, str], max_age: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_skyferry(), "alive", "--max-age", str(max_age)], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_probe_passes_while_the_worker_runs_and_fails_once_it_hangs(tmp_path: Path) -> None:
    heartbeat = tmp_path / "worker.heartbeat"
    heartbeat.write_text("")
    os.utime(heartbeat, (time.time() - 3600, time.time() - 3600))  # left by an earlier run of the container
    env = {
        **os.environ,
        "SKYFERRY_STORE_URL": f"sqlite:///{tmp_path}/w.db",
        "SKYFERRY_WORKER_INTERVAL": "0.05",
        "SKYFERRY_HEARTBEAT_FILE": str(heartbeat),
    }
    assert _alive(env, 60).returncode == 1  # the stale file does not count
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([_skyferry(), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while _alive(env, 60).returncode != 0:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "the worker never beat"
            time.sleep(0.1)
        worker.send_signal(signal.SIGSTOP)  # hung: no progress from here on
        time.sleep(3.5)
        stale = _alive(env, 2)
        assert stale.returncode == 1, stale.stdout + stale.stderr
        assert "not alive" in stale.stderr
        worker.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while _alive(env, 2).returncode != 0:
            assert time.monotonic() < deadline, "the worker did not beat again after it resumed"
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.terminate()
        assert worker.wait(timeout=30) == 0  # SIGTERM stops the worker cleanly


def test_the_probe_refuses_an_infinite_or_absurd_max_age_naming_it(tmp_path: Path) -> None:
    heartbeat = tmp_path / "worker.heartbeat"
    heartbeat.write_text("")  # fresh: any limit would pass
    env = {**os.environ, "SKYFERRY_HEARTBEAT_FILE": str(heartbeat)}
    for max_age in ("inf", "1e400", "86401"):
        result = subprocess.run(
            [_skyferry(), "alive", "--max-age", max_age], env=env, capture_output=True, text=True, timeout=60
        )
        assert (result.returncode, result.stdout, result.stderr) == (
            2,
            "",
            "skyferry: error: input should be less than or equal to 86400 (--max-age)\n"
            "hint: skyferry alive -h shows the options\n",
        ), max_age
