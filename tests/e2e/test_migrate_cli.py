"""``skyferry export | import | verify | migrate`` as a user runs them: exit codes, summaries, JSON lines, progress."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from skyferry.adapters import registry
from skyferry.core.messages import Event, NewEvent
from skyferry.core.ports import ANY
from skyferry.migrate.crypto import new_key
from skyferry.migrate.fence import is_fenced
from skyferry.migrate.manifest import MANIFEST_NAME, Manifest
from tests.e2e.terminal import ctrl_c_as_at_a_terminal
from tests.integration.migrate_support import fill, fill_many, opened

SKYFERRY = str(Path(sys.executable).with_name("skyferry"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SKYFERRY, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    doc = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/source.db"
    with opened(url) as (store, _):
        fill(store, streams=5, per_stream=8)
    return url


def test_export_import_verify_through_the_cli(tmp_path: Path, source: str) -> None:
    archive, target = str(tmp_path / "archive"), f"sqlite:///{tmp_path}/target.db"
    exported = run("export", "--from", source, "--to", archive, "--chunk-events", "7", "--json")
    assert exported.returncode == 0, exported.stderr
    assert summary(exported)["events"] == 40
    assert summary(exported)["chunks"] == 6
    imported = run("import", "--from", archive, "--to", target, "--json")
    assert imported.returncode == 0, imported.stderr
    assert (summary(imported)["written"], summary(imported)["skipped"]) == (40, 0)
    assert summary(imported)["write_path"] == "copy_from"  # the lines decoded into the rows SQLite keeps
    again = run("import", "--from", archive, "--to", target, "--json")
    assert summary(again)["written"] == 0
    for left, right in ((source, target), (archive, target)):
        verified = run("verify", "--from", left, "--to", right)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout == f"verified {left} against {right}: identical (5 streams, 40 events)\n"
    old_spelling = run("verify", "--source", archive, "--target", target)  # kept, hidden from the help
    assert (old_spelling.returncode, old_spelling.stdout) == (0, verified.stdout)


def test_an_export_without_to_goes_to_a_new_archive_under_the_deployments(tmp_path: Path, source: str) -> None:
    """Every stack sets SKYFERRY_ARCHIVE_URL to its archive; an export run in a pod needs no --to,
    and a second one replaces nothing."""
    base = tmp_path / "exports"
    env = {"SKYFERRY_ARCHIVE_URL": str(base)}
    first = run("export", "--from", source, "--json", env=env)
    assert first.returncode == 0, first.stderr
    archive = str(summary(first)["archive"])
    assert re.fullmatch(re.escape(str(base)) + r"/export-\d{8}T\d{6}Z", archive), archive
    assert (Path(archive) / MANIFEST_NAME).is_file()
    assert run("verify", "--from", source, "--to", archive).returncode == 0
    time.sleep(1.1)  # the name has the second
    second = run("export", "--from", source, "--json", env=env)
    assert second.returncode == 0, second.stderr
    assert summary(second)["archive"] != archive
    assert sorted(p.name for p in base.iterdir()) == sorted(
        Path(str(a)).name for a in (archive, summary(second)["archive"])
    )


def test_a_large_export_reads_in_a_second_process_from_any_directory(tmp_path: Path) -> None:
    url, archive = f"sqlite:///{tmp_path}/big.db", str(tmp_path / "archive")
    with opened(url) as (store, _):
        fill_many(store)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exported = subprocess.run(
        [SKYFERRY, "export", "--from", url, "--to", archive, "--json"], capture_output=True, text=True, cwd=elsewhere
    )
    assert exported.returncode == 0, exported.stderr
    assert summary(exported)["events"] == 11_234
    verified = run("verify", "--from", archive, "--to", url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "identical (37 streams, 11,234 events)" in verified.stdout


def test_verify_exits_1_with_a_readable_list(tmp_path: Path, source: str) -> None:
    target = f"sqlite:///{tmp_path}/target.db"
    assert run("migrate", "--from", source, "--to", target).returncode == 0
    with opened(target) as (store, _):
        store.append("acct:1", [NewEvent(type="Extra", data={})], ANY)
    result = run("verify", "--from", source, "--to", target)
    assert result.returncode == 1
    difference = "stream 'acct:1': target has extra events from version 9 (source ends at version 8)"
    assert result.stdout == f"{source} and {target} differ: 1 difference in 5 streams, 40 events:\n  - {difference}\n"
    assert result.stderr == f"skyferry: error: 1 difference(s): {difference}\nhint: the differences are listed above\n"
    as_json = run("verify", "--from", source, "--to", target, "--json")
    assert as_json.returncode == 1
    lines = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    assert [line["kind"] for line in lines][-2:] == ["summary", "error"]
    assert (lines[-2]["difference_count"], lines[-1]["exit_code"]) == (1, 1)


def test_bad_input_exits_2_naming_the_file_or_setting(tmp_path: Path, source: str) -> None:
    archive, target = tmp_path / "archive", f"sqlite:///{tmp_path}/target.db"
    key_file = tmp_path / "key"
    key_file.write_text(new_key())
    assert run("export", "--from", source, "--to", str(archive), "--key-file", str(key_file)).returncode == 0
    wrong = run(
        "import", "--from", str(archive), "--to", target, "--key-env", "WRONG_KEY", env={"WRONG_KEY": new_key()}
    )
    assert wrong.returncode == 2
    assert "manifest.json: wrong encryption key" in wrong.stderr
    chunk = archive / Manifest.from_bytes((archive / MANIFEST_NAME).read_bytes()).chunks[0].name
    chunk.write_bytes(chunk.read_bytes()[:-3])
    damaged = run("import", "--from", str(archive), "--to", target, "--key-file", str(key_file), "--json")
    assert damaged.returncode == 2
    assert "chunks/000000.jsonl.zst: size is" in damaged.stderr
    assert summary(damaged)["exit_code"] == 2
    assert summary(damaged)["kind"] == "error"
    assert run("export", "--from", source, "--to", str(archive)).returncode == 2  # already holds an export
    bad_shard = run("migrate", "--from", source, "--to", target, "--shard", "3/3")
    assert (bad_shard.returncode, "--shard '3/3'" in bad_shard.stderr) == (2, True)
    bad_scheme = run("migrate", "--from", source, "--to", "nosuch://x")
    assert (bad_scheme.returncode, "unknown store URL scheme 'nosuch'" in bad_scheme.stderr) == (2, True)
    bad_transform = run("migrate", "--from", source, "--to", target, "--transform", "nosuch_module:f")
    assert (bad_transform.returncode, "--transform 'nosuch_module:f'" in bad_transform.stderr) == (2, True)
    with opened(target) as (store, _):
        assert store.last_position() is None


def test_an_unreachable_target_exits_3(tmp_path: Path, source: str) -> None:
    archive = str(tmp_path / "archive")
    assert run("export", "--from", source, "--to", archive).returncode == 0
    result = run("import", "--from", archive, "--to", "postgresql://postgres@127.0.0.1:1/postgres")
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("skyferry: error: PostgreSQL is not reachable: ")
    assert result.stderr.endswith(
        "Running the same command again is safe once the service answers (nothing was half-written)\n"
    )
    assert "Traceback" not in result.stderr


def test_a_transform_dry_run_shows_a_diff_and_writes_nothing(tmp_path: Path, source: str) -> None:
    target = f"sqlite:///{tmp_path}/target.db"
    result = run(
        "migrate",
        "--from",
        source,
        "--to",
        target,
        "--dry-run",
        "--dry-run-limit",
        "3",
        "--transform",
        "tests.integration.migrate_transforms:upcast_deposits",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("--- source ") == 3
    assert '+  "schema_version": 9,' in result.stdout
    assert "wrote nothing" in result.stdout
    with opened(target) as (store, _):
        assert store.last_position() is None


def test_migrate_follow_json_can_be_monitored_live_until_sigterm(tmp_path: Path, source: str) -> None:
    target = f"sqlite:///{tmp_path}/target.db"
    follower = subprocess.Popen(
        [SKYFERRY, "migrate", "--from", source, "--to", target, "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    try:
        live = orjson.loads(follower.stdout.readline())  # while it runs, not at its end
        assert live["kind"] == "progress"
        assert live["command"] == "migrate"
        while live["lag_seconds"] != 0.0:
            live = orjson.loads(follower.stdout.readline())
        assert (live["events"], live["total"]) == (40, 40)
        with opened(source) as (store, _):
            store.append("late", [NewEvent(type="Late", data={"n": 1})], ANY)
        while live["events"] != 41:
            live = orjson.loads(follower.stdout.readline())
        assert live["total"] == 41  # the total follows a source that keeps taking writes
        assert set(live) == {
            "kind",
            "command",
            "events",
            "total",
            "events_per_second",
            "eta_seconds",
            "lag_seconds",
            "elapsed_seconds",
        }
    finally:
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    report = orjson.loads(out.strip().splitlines()[-1])
    assert report["kind"] == "summary"
    assert (report["events"], report["caught_up"], report["lag_seconds"]) == (41, True, 0.0)


def test_cutover_fences_the_source_and_unfence_lifts_it(tmp_path: Path, source: str) -> None:
    target = f"sqlite:///{tmp_path}/target.db"
    result = run("migrate", "--from", source, "--to", target, "--cutover", "--grace", "0.3", "--json")
    assert result.returncode == 0, result.stderr
    report = summary(result)
    assert report["fenced"] is True
    assert report["verify"]["ok"] is True  # type: ignore[index]
    views = registry.open_view_store(source)
    try:
        assert is_fenced(views)
        assert run("migrate", "--from", source, "--unfence").returncode == 0
        assert not is_fenced(views)
    finally:
        views.close()


def on_a_terminal(*args: str) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """Run ``skyferry *args`` with stderr on a pseudo-terminal; return the result and what it drew."""
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run([SKYFERRY, *args], stdout=subprocess.PIPE, stderr=secondary, text=True, timeout=120)
        os.close(secondary)
        drawn = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(primary)
    return result, drawn


def test_progress_is_drawn_on_a_terminal(tmp_path: Path, source: str) -> None:
    result, drawn = on_a_terminal("export", "--from", source, "--to", str(tmp_path / "a"))
    assert result.returncode == 0
    assert b"export" in drawn
    assert b"\xe2\x94\x81" in drawn  # the bar
    assert b"40 of 40 events (100 %), " in drawn  # the store counts its events: a total, so an ETA
    assert b"events/s, ETA " in drawn
    assert b"\x1b[?25h" in drawn  # the cursor is back
    assert "exported 40 events of 5 streams" in result.stdout


def test_rebuild_draws_its_progress_with_a_total(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path}/ledger.db"
    with opened(source) as (store, _):
        for n in range(40):  # events no read model handles: the rebuild reads them all, fails on none
            store.append(f"note-{n % 5}", [NewEvent(type="Noted", data={"n": n})], ANY)
    result, drawn = on_a_terminal("rebuild", "balances", "--store", source)
    assert result.returncode == 0, drawn
    assert b"rebuild" in drawn
    assert b"40 of 40 events (100 %), " in drawn
    assert b"\x1b[?25h" in drawn
    assert "rebuilt balances: generation 1 -> 2, 40 events read" in result.stdout


def test_a_migrated_ledger_never_repeats_a_side_effect(tmp_path: Path) -> None:
    from decimal import Decimal

    from skyferry.bootstrap import bootstrap
    from skyferry.ledger.commands import Deposit, OpenAccount, TransferMoney
    from skyferry.settings import Settings

    source, target = f"sqlite:///{tmp_path}/ledger.db", f"sqlite:///{tmp_path}/moved.db"
    ledger = bootstrap(Settings(store_url=source, broker_url="memory://"))
    try:
        for account in ("alice", "bob"):
            ledger.execute(OpenAccount(account_id=account, owner=account, currency="EUR"))
        ledger.execute(Deposit(account_id="alice", amount="100.00", currency="EUR"))
        ledger.execute(
            TransferMoney(transfer_id="t1", from_account="alice", to_account="bob", amount="30.00", currency="EUR")
        )
        while ledger.run_worker_once():
            pass
        # started on the source, not yet carried out: the target's worker finishes it, once
        ledger.execute(
            TransferMoney(transfer_id="t2", from_account="alice", to_account="bob", amount="20.00", currency="EUR")
        )
    finally:
        ledger.close()
    assert run("migrate", "--from", source, "--to", target).returncode == 0
    moved = bootstrap(Settings(store_url=target, broker_url="memory://"))
    try:
        for _ in range(2):  # a second pass, as after a restart, changes nothing either
            while moved.run_worker_once():
                pass
        assert moved.balance("alice")["balance"] == "50.00"
        assert moved.balance("bob")["balance"] == "50.00"
        assert moved.total_money() == {"EUR": Decimal("100.00")}
        debits = [e for e in moved_events(target) if e.type == "TransferDebited"]
        assert sorted(e.data["transfer_id"] for e in debits) == ["t1", "t2"]
    finally:
        moved.close()


def moved_events(url: str) -> list[Event]:
    with opened(url) as (store, _):
        return store.read_all(limit=10_000)


def _text(result: subprocess.CompletedProcess[str]) -> str:
    """stdout with the timings (``0.1 s``, ``1,234 events/s``) written as ``T``."""
    assert result.returncode == 0, result.stderr
    return re.sub(r"\d[\d,]*(\.\d+)? (s|events/s)\b", "T", result.stdout)


def test_summaries_say_what_happened_with_counts_that_add_up_and_what_next(tmp_path: Path, source: str) -> None:
    target, archive = f"sqlite:///{tmp_path}/target.db", str(tmp_path / "archive")
    assert _text(run("migrate", "--from", source, "--to", target)) == (
        f"migrated {source} to {target}: this run 40 read: 40 written, 0 already present "
        "(write path copy_from, T, T)\n"
        f"next: skyferry migrate --from {source} --to {target} --follow to copy new events as they come, "
        "then --cutover\n"
    )
    with opened(source) as (store, _):
        store.append("late", [NewEvent(type="Late", data={"n": 1})], ANY)
    assert _text(run("migrate", "--from", source, "--to", target)).startswith(
        f"migrated {source} to {target}: this run 1 read: 1 written, 0 already present; 41 copied in all "
    )
    assert run("export", "--from", source, "--to", archive).returncode == 0
    assert _text(run("import", "--from", archive, "--to", target)) == (
        f"imported {archive} into {target} in T: 41 read: 0 written, 41 already present (write path copy_from)\n"
        f"next: skyferry verify --from {archive} --to {target}\n"
    )
    assert _text(run("import", "--from", archive, "--to", target)) == (
        f"imported {archive} into {target} in T: 0 read: 0 written, 0 already present (write path copy_from)\n"
        "resumed after chunk 1: an earlier run had imported 41 events; 41 in all\n"
        f"next: skyferry verify --from {archive} --to {target}\n"
    )
    sharded = _text(run("migrate", "--from", source, "--to", f"sqlite:///{tmp_path}/half.db", "--shard", "0/2"))
    found = re.search(r"this run 41 read: (\d+) written, 0 already present, (\d+) in other shards", sharded)
    assert found, sharded
    assert int(found[1]) + int(found[2]) == 41
    assert 0 < int(found[1]) < 41


def test_cutover_says_the_source_is_read_only_and_unfence_says_what_it_did(tmp_path: Path, source: str) -> None:
    target = f"sqlite:///{tmp_path}/target.db"
    cutover = _text(run("migrate", "--from", source, "--to", target, "--cutover", "--grace", "0.1"))
    assert cutover.splitlines()[0] == f"verified {source} against {target}: identical (5 streams, 40 events)"
    assert cutover.splitlines()[2:] == [
        f"the source {source} is now read-only: the API answers commands with 503",
        f"next: point the app at {target} (SKYFERRY_STORE_URL) and restart it; "
        f"to roll back instead: skyferry migrate --from {source} --unfence",
    ]
    lifted = run("migrate", "--from", source, "--unfence")
    assert re.fullmatch(
        rf"write fence lifted: {re.escape(source)} accepts commands again \(it was fenced since \S+Z: "
        rf"migration cutover to {re.escape(target)}\)\n",
        lifted.stdout,
    ), lifted.stdout
    again = run("migrate", "--from", source, "--unfence", "--json")
    assert summary(again) == {"kind": "summary", "command": "unfence", "source": source, "was_fenced": False}
    assert run("migrate", "--from", source, "--unfence").stdout == (
        f"{source} is not fenced: nothing to do (it accepts commands)\n"
    )


def test_progress_in_a_log_and_the_summary_on_stdout(tmp_path: Path, source: str) -> None:
    """Not a terminal: no bar, no escape codes; a command this short prints no progress line at all."""
    result = run("export", "--from", source, "--to", str(tmp_path / "a"))
    assert result.stderr == ""
    assert "\x1b" not in result.stdout
    assert result.stdout.startswith(f"exported 40 events of 5 streams from {source} to {tmp_path / 'a'} in ")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_cutover_stopped_while_the_source_is_fenced_says_so_and_how_to_lift_it(
    tmp_path: Path, source: str, stop: signal.Signals
) -> None:
    target = f"sqlite:///{tmp_path}/target.db"
    cutover = subprocess.Popen(
        [SKYFERRY, "migrate", "--from", source, "--to", target, "--cutover", "--grace", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )
    views = registry.open_view_store(source)
    try:
        deadline = time.monotonic() + 60
        while not is_fenced(views) and time.monotonic() < deadline and cutover.poll() is None:
            time.sleep(0.05)
        assert is_fenced(views)
        cutover.send_signal(stop)
        out, err = cutover.communicate(timeout=30)
        assert cutover.returncode == 130, err
        how = "Ctrl-C" if stop == signal.SIGINT else "SIGTERM"
        assert out == ""
        assert err.splitlines()[-2:] == [  # after any progress line
            f"skyferry: error: interrupted ({how}) during the cutover: the source is still read-only (fenced), "
            "the API answers commands with 503",
            "hint: run the same command again: it resumes from its checkpoint in the target, and finishes the "
            f"cutover; or make the source writable again: skyferry migrate --from {source} --unfence",
        ]
        assert is_fenced(views)
        assert run("migrate", "--from", source, "--unfence").returncode == 0  # the hint's command works
        assert not is_fenced(views)
    finally:
        if cutover.poll() is None:
            cutover.kill()
            cutover.communicate()
        views.close()


@pytest.mark.parametrize("grace", ["inf", "1e400", "601"])
def test_a_cutover_grace_is_finite_and_at_most_ten_minutes(tmp_path: Path, source: str, grace: str) -> None:
    target = f"sqlite:///{tmp_path}/target.db"
    result = run("migrate", "--from", source, "--to", target, "--cutover", "--grace", grace)
    assert result.returncode == 2
    assert result.stderr == (
        "skyferry: error: input should be less than or equal to 600 (--grace)\n"
        "hint: skyferry migrate -h shows the options\n"
    )
    assert not (tmp_path / "target.db").exists()
    views = registry.open_view_store(source)
    try:
        assert not is_fenced(views)
    finally:
        views.close()
