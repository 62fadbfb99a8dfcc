"""What the data commands refuse before reading or writing anything, as a user meets it: a
store to read that does not exist (a typo must not give an empty, "successful" copy), a
number out of range, a source that is its own target; and URLs whose secrets come from
the environment or a file rather than the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from skyferry.adapters import registry
from tests.integration.migrate_support import filled, opened

SKYFERRY = str(Path(sys.executable).with_name("skyferry"))


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SKYFERRY, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}, cwd=cwd
    )


@pytest.fixture
def source(tmp_path: Path) -> str:
    """A SQLite store of 12 events in 3 streams."""
    return filled(f"sqlite:///{tmp_path}/source.db", streams=3, per_stream=4)


def test_a_store_to_read_that_does_not_exist_exits_2_naming_it_and_creates_nothing(tmp_path: Path, source: str) -> None:
    typo, target = tmp_path / "typo.db", f"sqlite:///{tmp_path}/target.db"
    commands = [
        ("export", "--from", f"sqlite:///{typo}", "--to", str(tmp_path / "archive")),
        ("verify", "--from", f"sqlite:///{typo}", "--to", source),
        ("verify", "--from", source, "--to", f"sqlite:///{typo}"),
        ("migrate", "--from", f"sqlite:///{typo}", "--to", target),
        ("migrate", "--from", f"sqlite:///{typo}", "--to", target, "--cutover", "--grace", "0"),
        ("migrate", "--from", f"sqlite:///{typo}", "--unfence"),
        ("rebuild", "balances", "--store", f"sqlite:///{typo}"),
    ]
    for command in commands:
        result = run(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert f"SQLite file {typo} does not exist" in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(["source.db", "source.db-wal", "source.db-shm"]) or not typo.exists()
    assert not typo.exists()
    assert not (tmp_path / "target.db").exists(), "the target is not touched when the source is missing"
    assert not (tmp_path / "archive").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("export", "--to", "{archive}", "--chunk-events", "0"),
        ("export", "--to", "{archive}", "--chunk-events", "-5"),
        ("migrate", "--to", "{target}", "--batch", "0"),
        ("migrate", "--to", "{target}", "--cutover", "--grace", "-1"),
        ("migrate", "--to", "{target}", "--cutover", "--grace", "nan"),
        ("migrate", "--to", "{target}", "--dry-run", "--transform", "json:loads", "--dry-run-limit", "0"),
    ],
)
def test_every_number_is_range_checked_before_anything_is_written(
    tmp_path: Path, source: str, args: tuple[str, ...]
) -> None:
    archive, target = str(tmp_path / "archive"), f"sqlite:///{tmp_path}/target.db"
    command, *rest = (arg.format(archive=archive, target=target) for arg in args)
    result = run(command, "--from", source, *rest)
    assert result.returncode == 2, result.stderr
    assert args[-2] in result.stderr  # names the option
    assert not (tmp_path / "archive").exists()
    assert not (tmp_path / "target.db").exists()


def test_the_data_layer_range_checks_what_it_is_given(tmp_path: Path, source: str) -> None:
    """The same checks where the commands' code is called directly (the CLI checks first)."""
    from skyferry.adapters.archives.local import LocalArchive
    from skyferry.core.errors import ConfigurationError
    from skyferry.migrate.export import export
    from skyferry.migrate.migrate import Migration
    from skyferry.migrate.transforms import Transformer, dry_run_diff

    with opened(source) as (store, _), opened(f"sqlite:///{tmp_path}/target.db") as (target, views):
        with pytest.raises(ConfigurationError, match="--chunk-events must be at least 1, not 0"):
            export(store, LocalArchive(tmp_path / "archive"), chunk_events=0)
        with pytest.raises(ConfigurationError, match="--batch must be at least 1, not 0"):
            Migration(store, target, views, batch=0)
        with pytest.raises(ConfigurationError, match="--dry-run-limit must be at least 1, not 0"):
            dry_run_diff(Transformer("t:f", lambda e: e), iter([]), 0)
    assert not (tmp_path / "archive").exists()


def test_a_source_that_is_its_own_target_is_refused(tmp_path: Path, source: str) -> None:
    for other in (source, f"sqlite:///./{Path(source.removeprefix('sqlite:///')).name}?synchronous=normal"):
        result = run("migrate", "--from", source, "--to", other, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "the source and the target are the same store" in result.stderr
        same = run("verify", "--from", source, "--to", other, cwd=tmp_path)
        assert (same.returncode, "the same store" in same.stderr) == (2, True)
    with opened(source) as (store, _):
        assert store.last_position() == "12"  # nothing written


def test_urls_with_secrets_come_from_the_environment_or_a_file(tmp_path: Path, source: str) -> None:
    archive = tmp_path / "archive"
    secret = tmp_path / "to-url"
    target = f"sqlite:///{tmp_path}/target.db"
    secret.write_text(target + "\n")
    exported = run(
        "export", "--from", "env:SKYFERRY_TEST_FROM", "--to", str(archive), env={"SKYFERRY_TEST_FROM": source}
    )
    assert exported.returncode == 0, exported.stderr
    imported = run("import", "--from", str(archive), "--to", f"@{secret}")
    assert imported.returncode == 0, imported.stderr
    verified = run(
        "verify", "--from", "env:SKYFERRY_TEST_FROM", "--to", f"@{secret}", env={"SKYFERRY_TEST_FROM": source}
    )
    assert verified.returncode == 0, verified.stderr
    unset = run("migrate", "--from", "env:SKYFERRY_TEST_UNSET", "--to", target)
    assert (unset.returncode, "the environment variable 'SKYFERRY_TEST_UNSET' is not set" in unset.stderr) == (2, True)
    missing = run("migrate", "--from", source, "--to", f"@{tmp_path}/nosuch")
    assert (missing.returncode, f"--to @{tmp_path}/nosuch: cannot read the file" in missing.stderr) == (2, True)


def test_reports_hide_every_secret_query_parameter() -> None:
    url = (
        "postgresql://u:pw@h/db?sslmode=verify-full&sslpassword=s1&password=s2&PassFile=/p&client_secret=s3"
        "&AccountKey=s4&sig=s5&token=s6&application_name=skyferry"
    )
    redacted = registry.redact(url)
    for secret in ("pw", "s1", "s2", "s3", "s4", "s5", "s6", "/p"):
        assert f"={secret}" not in redacted
        assert f":{secret}@" not in redacted
    assert "sslmode=verify-full" in redacted
    assert "application_name=skyferry" in redacted
    assert redacted.startswith("postgresql://u:***@h/db?")
