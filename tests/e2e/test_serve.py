"""``skyferry serve`` as a process: listens on its port, answers with the token, runs the embedded worker."""

from __future__ import annotations

import os
import shutil
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
