"""The ``curl`` lines of docs/api.md, run as they are written against ``skyferry serve``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import TOKEN
from tests.services import free_port, started

DOC = Path(__file__).parents[2] / "docs" / "api.md"
DOCUMENTED = "http://127.0.0.1:8000"


def curl_lines() -> list[str]:
    """Every line of the doc's shell blocks that runs curl."""
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


def test_every_curl_line_with_a_body_says_it_is_json() -> None:
    lines = curl_lines()
    assert len(lines) >= 10
    for line in lines:
        assert (
            line.startswith(f"curl -sS {DOCUMENTED}")
            or line.startswith(f'curl -sS "{DOCUMENTED}')
            or (line.startswith(f"curl -sS -X POST {DOCUMENTED}"))
        ), line
        if " -d " in line:
            assert '-H "Content-Type: application/json"' in line, line
        if "/readyz" not in line and "/healthz" not in line:
            assert '-H "Authorization: Bearer $SKYFERRY_API_TOKEN"' in line, line


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_documented_curl_lines_work_against_serve(tmp_path: Path) -> None:
    command = str(Path(sys.executable).with_name("skyferry"))
    port = free_port()
    env = {
        **os.environ,
        "SKYFERRY_API_TOKEN": TOKEN,
        "SKYFERRY_STORE_URL": f"sqlite:///{tmp_path}/api.db",
        "SKYFERRY_WORKER_INTERVAL": "0.05",
    }
    with started([command, "serve", "--port", str(port)], port, env=env, log=str(tmp_path / "serve.log")) as serve:
        for line in curl_lines():
            runnable = line.replace(DOCUMENTED, f"http://127.0.0.1:{port}") + " -w '\\n%{http_code}'"
            deadline = time.monotonic() + 60  # a read model follows its commands within a moment
            while True:
                done = subprocess.run(["bash", "-c", runnable], capture_output=True, text=True, env=env, timeout=60)
                body, _, status = done.stdout.rpartition("\n")
                if status.startswith("2") or line.startswith("curl -sS -X POST") or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert status.startswith("2"), f"{line}\n-> {status} {body} {done.stderr}"
    assert serve.returncode == 0  # SIGTERM stops serve cleanly
