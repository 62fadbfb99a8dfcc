"""``skyferry worker`` with ``SKYFERRY_HEALTH_PORT``: the HTTP probe Cloud Run and Container Apps run.

The endpoint answers from the worker's heartbeat: 200 while the worker makes progress, and no
answer once the process hangs (SIGSTOP), which a probe counts as a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from skyferry.core.errors import ConfigurationError
from skyferry.heartbeat import health_endpoint


def _skyferry() -> str:
    return shutil.which("skyferry", path=str(Path(sys.executable).parent)) or "skyferry"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str = "/healthz") -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_worker_answers_its_probe_while_it_runs_and_not_once_it_hangs(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "SKYFERRY_STORE_URL": f"sqlite:///{tmp_path}/w.db",
        "SKYFERRY_WORKER_INTERVAL": "0.05",
        "SKYFERRY_HEARTBEAT_FILE": str(tmp_path / "worker.heartbeat"),
        "SKYFERRY_HEALTH_PORT": str(port),
        "SKYFERRY_HEALTH_MAX_AGE": "30",
    }
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([_skyferry(), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            try:
                status, body = _get(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "the worker never listened on SKYFERRY_HEALTH_PORT"
                time.sleep(0.1)
        assert status == 200, body
        assert body["status"] == "alive"
        assert _get(port, "/other")[0] == 404
        worker.send_signal(signal.SIGSTOP)
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            _get(port)  # a hung worker answers nothing: the probe fails
        worker.send_signal(signal.SIGCONT)
        assert _get(port)[0] == 200
        deadline = time.monotonic() + 60  # the endpoint answers from the start; SIGTERM is handled once it runs
        while "worker: running" not in (tmp_path / "worker.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.terminate()
        assert worker.wait(timeout=30) == 0


def test_a_stale_heartbeat_is_503_and_a_port_without_heartbeat_file_is_refused(tmp_path: Path) -> None:
    heartbeat = tmp_path / "hb"
    with health_endpoint(str(heartbeat), 0, max_age=5, host="127.0.0.1") as port:
        assert port
        assert _get(port)[0] == 503  # no beat yet: starting
        heartbeat.write_text("")
        assert _get(port)[1]["status"] == "alive"
        os.utime(heartbeat, (time.time() - 60, time.time() - 60))
        status, body = _get(port)
        assert (status, body["status"]) == (503, "stale")
    with health_endpoint(None, None, max_age=5) as nothing:
        assert nothing is None
    with pytest.raises(ConfigurationError, match="SKYFERRY_HEARTBEAT_FILE"), health_endpoint(None, 0, max_age=5):
        pass
