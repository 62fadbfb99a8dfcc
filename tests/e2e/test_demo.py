"""``skyferry demo``: exit 0 with every check passed (the move included), in-process and as the installed command."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from skyferry.bootstrap import Ledger
from skyferry.demo import run_demo
from tests.e2e.terminal import ctrl_c_as_at_a_terminal


def test_the_demo_passes_every_check_and_reports_them() -> None:
    out = io.StringIO()
    assert run_demo(out=out) == [], out.getvalue()
    report = out.getvalue()
    assert "FAIL" not in report
    for step in (
        "idempotency key",
        "concurrency conflict",
        "compensated",
        "temporal query",
        "rebuild balances: identical views",
        "money is conserved",
        "[ok  ] the API takes writes while the copy follows the live store",
        "[ok  ] cutover: the source is read-only, a command gets 503  (HTTP 503 read_only)",
        "[ok  ] the copy is verified identical to the fenced source",
        "on the new store, as on the old",
        "[ok  ] the new store takes writes",
    ):
        assert step in report, step
    assert re.search(r"^all \d+ checks passed in \d+\.\d s$", report, re.MULTILINE), report


def test_the_worker_line_explains_its_count() -> None:
    """The worker's count is of handlings by its tasks, not of events: the line says both."""
    out = io.StringIO()
    assert run_demo(out=out) == []
    line = next(line for line in out.getvalue().splitlines() if "the worker caught up" in line)
    found = re.search(r"caught up on (\d+) new events .* its tasks \((.+)\) each .*: (\d+) handlings in all$", line)
    assert found, line
    events, tasks, handlings = int(found[1]), found[2].split(", "), int(found[3])
    assert "balances" in tasks
    assert events <= handlings <= events * len(tasks)


def test_the_demo_keeps_its_data_in_the_given_store_and_runs_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/kept.db"
    assert run_demo(store=url, out=io.StringIO()) == []
    out = io.StringIO()
    assert run_demo(store=url, out=out) == [], out.getvalue()
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
    assert done.stderr == (
        f"skyferry: error: SQLite file {corrupt} is corrupt or not a SQLite database: file is not a database "
        "(--store)\n"
    )


def test_a_failing_check_makes_the_demo_exit_1_and_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    def leaking(self: Ledger) -> dict[str, dict[str, Any]]:
        return {"EUR": {"held": "1.00", "deposited_minus_withdrawn": "2.00", "conserved": False}}

    monkeypatch.setattr(Ledger, "money_check", leaking)
    out = io.StringIO()
    failed = run_demo(out=out)
    assert failed == [
        "EUR: balances + in transit == deposits - withdrawals",
        "EUR on the new store: balances + in transit == deposits - withdrawals",
    ]
    report = out.getvalue()
    assert "[FAIL] EUR: balances + in transit == deposits - withdrawals" in report
    assert re.search(r"^2 of \d+ checks FAILED in ", report, re.MULTILINE), report


def test_a_failing_check_makes_the_command_exit_1_in_the_one_error_shape(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from skyferry.cli import run

    monkeypatch.setattr("skyferry.demo.run_demo", lambda **_: ["one", "two"])
    assert run(["demo"]) == 1
    assert capsys.readouterr().err == (
        "skyferry: error: 2 demo check(s) failed: one, two\nhint: the report above says why\n"
    )


def test_ctrl_c_stops_the_demo_with_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from skyferry.cli import run

    def interrupted(**_: Any) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr("skyferry.demo.run_demo", interrupted)
    assert run(["demo"]) == 130
    assert capsys.readouterr().err == "skyferry: error: interrupted (Ctrl-C)\n"


def test_ctrl_c_on_the_running_command_exits_130_with_one_line() -> None:
    command = shutil.which("skyferry", path=str(Path(sys.executable).parent)) or "skyferry"
    demo = subprocess.Popen(
        [command, "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )
    assert demo.stdout is not None
    assert demo.stdout.readline().startswith("skyferry demo: API on http://127.0.0.1:")
    demo.send_signal(signal.SIGINT)
    _, err = demo.communicate(timeout=60)
    assert (demo.returncode, err) == (130, "skyferry: error: interrupted (Ctrl-C)\n")
