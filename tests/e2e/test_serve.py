"""``skyferry serve`` as a process: listens on its port, answers with the token, runs the embedded worker."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.e2e.conftest import TOKEN
from tests.services import free_port, started


def test_serve_answers_commands_and_its_worker_projects_them(tmp_path: Path) -> None:
    command = shutil.which("skyferry", path=str(Path(sys.executable).parent)) or "skyferry"
    port = free_port()
    env = {
        **os.environ,
        "SKYFERRY_API_TOKEN": TOKEN,
        "SKYFERRY_STORE_URL": f"sqlite:///{tmp_path}/serve.db",
        "SKYFERRY_WORKER_INTERVAL": "0.05",
    }
    with (
        started([command, "serve", "--port", str(port)], port, env=env, log=str(tmp_path / "serve.log")),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}) as client,
    ):
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/readyz").json()["status"] == "ready"
        opened = client.post("/accounts", json={"account_id": "a1", "owner": "A", "currency": "EUR"})
        assert opened.status_code == 201
        assert client.post("/accounts/a1/deposits", json={"amount": "3.00", "currency": "EUR"}).status_code == 201
        # The read model is eventually consistent: wait (generously) for the embedded worker.
        deadline = time.monotonic() + 60
        balance = client.get("/accounts/a1/balance")
        while balance.status_code != 200 or balance.json()["balance"] != "3.00":
            assert time.monotonic() < deadline, balance.text
            time.sleep(0.05)
            balance = client.get("/accounts/a1/balance")
        assert client.get("/accounts/a1", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_serve_port_0_listens_on_a_free_port_not_the_default(tmp_path: Path) -> None:
    """``--port 0`` is a value (any free port), not "not given": SKYFERRY_PORT (taken here) does not apply."""
    command = shutil.which("skyferry", path=str(Path(sys.executable).parent)) or "skyferry"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = int(holder.getsockname()[1])
        env = {
            **os.environ,
            "SKYFERRY_API_TOKEN": TOKEN,
            "SKYFERRY_STORE_URL": f"sqlite:///{tmp_path}/serve.db",
            "SKYFERRY_PORT": str(taken),
        }
        server = subprocess.Popen(
            [command, "serve", "--port", "0", "--no-worker"], env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            assert server.stderr is not None
            lines = []
            for line in server.stderr:
                lines.append(line)
                if "listening on http://" in line:
                    break
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", "".join(lines))
            assert found is not None, "".join(lines)
            port = int(found.group(1))
            assert port not in (0, taken, 8000)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()["status"] == "ok"
        finally:
            server.terminate()
            server.communicate(timeout=30)
        assert server.returncode == 0
