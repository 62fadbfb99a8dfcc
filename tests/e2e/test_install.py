"""What the README's commands install: `uv run skyferry ...` after `make demo` adds nothing.

`make demo` installs the app with every extra (`make deps-app`); a plain `uv run` then syncs
the project's default groups without removing anything.  So the default groups must hold
nothing beyond the app, which uv's own export of the lock shows.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.skip("uv is not installed (make uv)")
    return found


def locked(*selection: str) -> set[str]:
    """The locked packages (``name==version``) that ``uv sync`` with ``selection`` would install."""
    done = subprocess.run(
        [_uv(), "export", "--frozen", "--no-hashes", "--format", "requirements-txt", "--no-emit-project", *selection],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    return {line.split(" ;")[0] for line in done.stdout.splitlines() if re.match(r"[A-Za-z0-9]", line)}


def test_the_default_sync_is_the_app_alone() -> None:
    default, app = locked(), locked("--no-default-groups")
    assert default == app
    names = {package.split("==")[0] for package in default}
    assert not names & {"pulumi", "pytest", "moto", "checkov", "mypy", "boto3"}
    assert {"fastapi", "uvicorn", "typer", "rich"} <= names


def test_make_demo_installs_what_a_plain_uv_run_needs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    deps_app = re.search(r"^deps-app:.*\n\t\$\(UV\) sync (.*)$", makefile, re.MULTILINE)
    assert deps_app is not None
    selection = [arg for arg in deps_app.group(1).split() if arg != "--frozen"]
    assert locked() <= locked(*selection)
    assert re.search(r"^demo: deps-app .*\n\t\$\(UV\) run skyferry demo$", makefile, re.MULTILINE)


def test_the_plan_hint_keeps_the_database_drivers() -> None:
    from skyferry.cli import INFRA_INSTALL

    args = INFRA_INSTALL.split()[2:]
    drivers = {"psycopg", "psycopg-binary", "nats-py", "boto3", "azure-cosmos", "google-cloud-firestore"}
    installed = {package.split("==")[0] for package in locked(*args)}
    assert drivers <= installed
    assert "pulumi" in installed


def test_plan_runs_as_the_readme_says_from_any_directory(tmp_path: Path) -> None:
    """providers/ is not in the installed package: `skyferry plan` finds it in the checkout."""
    pytest.importorskip("pulumi", reason="the infra dependency group is not installed (make deps)")
    skyferry = str(Path(sys.executable).with_name("skyferry"))
    done = subprocess.run(
        [skyferry, "plan", "--stack", "kubernetes", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stack"] == "kubernetes"
