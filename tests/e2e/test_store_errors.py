"""A corrupt or read-only SQLite file: a clear error naming the file, from the API and the CLI, and nothing stored."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from pydantic import SecretStr

from skyferry.adapters.registry import open_event_store
from skyferry.api.app import create_app
from skyferry.bootstrap import bootstrap
from skyferry.cli import cli, mount_extensions, run
from skyferry.settings import Settings
from tests.e2e.conftest import AUTH, TOKEN

EUR = {"currency": "EUR"}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def corrupt(tmp_path: Path) -> Path:
    """A file that is not a SQLite database."""
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"SQLite format 2\x00" + os.urandom(4096))
    return path


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A valid ledger database holding one account, marked read-only."""
    path = tmp_path / "readonly.db"
    ledger = bootstrap(Settings(store_url=f"sqlite:///{path}", broker_url="memory://"))
    with TestClient(create_app(Settings(api_token=SecretStr(TOKEN)), ledger), headers=AUTH) as client:
        assert client.post("/accounts", json={"account_id": "alice", "owner": "A", **EUR}).status_code == 201
    ledger.close()
    for leftover in (tmp_path / "readonly.db-wal", tmp_path / "readonly.db-shm"):
        assert not leftover.exists() or leftover.stat().st_size >= 0
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    yield path
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)


@pytest.mark.parametrize("fixture", ["corrupt", "read_only"])
def test_the_api_names_the_file_and_stores_nothing(request: pytest.FixtureRequest, fixture: str) -> None:
    path: Path = request.getfixturevalue(fixture)
    before = _digest(path)
    ledger = bootstrap(Settings(store_url=f"sqlite:///{path}", broker_url="memory://"))
    try:
        with TestClient(create_app(Settings(api_token=SecretStr(TOKEN)), ledger), headers=AUTH) as client:
            response = client.post("/accounts", json={"account_id": "bob", "owner": "B", **EUR})
            assert response.status_code == 500
            body = response.json()
            assert body["error"] == "configuration_error"
            assert str(path) in body["message"]
            assert ("read-only" if fixture == "read_only" else "not a SQLite database") in body["message"]
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert str(path) in ready.json()["detail"]
    finally:
        ledger.close()
    assert _digest(path) == before


@pytest.mark.parametrize("fixture", ["corrupt", "read_only"])
@pytest.mark.parametrize("command", [["serve"], ["worker", "--once"], ["rebuild", "balances"]])
def test_the_cli_exits_2_naming_the_file(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fixture: str,
    command: list[str],
) -> None:
    path: Path = request.getfixturevalue(fixture)
    monkeypatch.setenv("SKYFERRY_API_TOKEN", TOKEN)
    before = _digest(path)
    assert run([*command, "--store", f"sqlite:///{path}"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "Traceback" not in err
    assert _digest(path) == before


def test_serve_without_a_token_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SKYFERRY_API_TOKEN", raising=False)
    assert run(["serve", "--store", f"sqlite:///{tmp_path}/x.db"]) == 2
    assert "SKYFERRY_API_TOKEN" in capsys.readouterr().err


def test_a_bad_setting_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKYFERRY_SNAPSHOT_EVERY", "often")
    assert run(["worker", "--once", "--store", "memory://"]) == 2
    assert "SKYFERRY_SNAPSHOT_EVERY" in capsys.readouterr().err


def test_an_unknown_store_scheme_exits_2_listing_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["worker", "--once", "--store", "mongodb://x"]) == 2
    assert "sqlite://" in capsys.readouterr().err


def test_rebuild_names_the_known_read_models(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    assert run(["rebuild", "balances", "--store", url]) == 2  # a rebuild reads: the store must exist
    assert f"SQLite file {tmp_path}/r.db does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()
    store = open_event_store(url)
    store.last_position()  # creates it
    store.close()
    assert run(["rebuild", "nonsense", "--store", url]) == 2
    assert "balances" in capsys.readouterr().err
    assert run(["rebuild", "balances", "--store", url, "--json"]) == 0
    assert '"projection":"balances"' in capsys.readouterr().out


def test_worker_once_catches_up_and_exits_0(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    assert run(["worker", "--once", "--store", url]) == 0
    assert "caught up" in capsys.readouterr().out


def test_extensions_are_mounted_once_at_the_top_level() -> None:
    mount_extensions(cli)
    mount_extensions(cli)
    assert len([group for group in cli.registered_groups if group.name != "parked"]) == 1
    commands = set(typer.main.get_command(cli).commands)  # type: ignore[attr-defined]
    assert {"serve", "worker", "rebuild", "parked", "demo", "plan", "export", "import", "verify", "migrate"} <= commands
