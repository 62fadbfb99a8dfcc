"""``skyferry demo``: exit 0 with every check passed, in-process and as the installed command."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from skyferry.bootstrap import Ledger
from skyferry.demo import run_demo


def test_the_demo_passes_every_check_and_reports_them() -> None:
    out = io.StringIO()
    assert run_demo(out=out) == 0, out.getvalue()
    report = out.getvalue()
    assert "FAIL" not in report
    for step in (
        "idempotency key",
        "concurrency conflict",
        "compensated",
        "temporal query",
        "rebuild balances: identical views",
        "money is conserved",
    ):
        assert step in report, step
    assert "checks passed" in report


def test_the_demo_keeps_its_data_in_the_given_store_and_runs_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/kept.db"
    assert run_demo(store=url, out=io.StringIO()) == 0
    out = io.StringIO()
    assert run_demo(store=url, out=out) == 0, out.getvalue()
    assert (tmp_path / "kept.db").stat().st_size > 0


def test_the_skyferry_command_runs_the_demo_and_exits_0() -> None:
    command = shutil.which("skyferry", path=str(Path(sys.executable).parent)) or "skyferry"
    done = subprocess.run(
        [command, "demo"], capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checks passed" in done.stdout


def test_the_demo_against_a_corrupt_store_fails_with_a_clear_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    command = shutil.which("skyferry", path=str(Path(sys.executable).parent)) or "skyferry"
    done = subprocess.run(
        [command, "demo", "--store", f"sqlite:///{corrupt}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert str(corrupt) in done.stderr
    assert "not a SQLite database" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failing_check_makes_the_demo_exit_1_and_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    def leaking(self: Ledger) -> dict[str, dict[str, Any]]:
        return {"EUR": {"held": "1.00", "deposited_minus_withdrawn": "2.00", "conserved": False}}

    monkeypatch.setattr(Ledger, "money_check", leaking)
    out = io.StringIO()
    assert run_demo(out=out) == 1
    report = out.getvalue()
    assert "[FAIL] EUR: balances + in transit == deposits - withdrawals" in report
    assert "1 check(s) FAILED" in report
