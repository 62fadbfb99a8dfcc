"""Every command's bad input, as a user meets it: the whole of stdout and stderr, and the exit code.

One error shape everywhere (docs/cli.md): ``skyferry: error: <what> (<where>)`` and, when
something useful can be said, one ``hint:`` line; no traceback, no help dump, no log lines.
Paths of the test's directory print as ``$TMP``; a port chosen at run time as ``$PORT``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.migrate_support import fill, opened

SKYFERRY = str(Path(sys.executable).with_name("skyferry"))
STORES = "cosmos://, dynamodb://, firestore://, memory://, postgres://, postgresql://, sqlite://"
ARCHIVES = "a directory, az://, file://, gs://, s3://"
IPV6 = "its host has an unmatched '[' or ']' (an IPv6 address is written in brackets: [::1])"
SQLITE_URL = "sqlite:///relative.db or sqlite:////absolute/path.db"

# (id, arguments, environment, exit code, stdout, stderr); {tmp} and {port} are filled in.
CASES: list[tuple[str, list[str], dict[str, str], int, str, str]] = [
    (
        "unknown-command",
        ["deploy"],
        {},
        2,
        "",
        "skyferry: error: no such command 'deploy' (skyferry)\n"
        "hint: did you mean 'demo'? (skyferry -h lists the commands)\n",
    ),
    (
        "unknown-option",
        ["worker", "--onse"],
        {},
        2,
        "",
        "skyferry: error: no such option --onse (skyferry worker)\n"
        "hint: did you mean --once? (skyferry worker -h shows the options)\n",
    ),
    (
        "serve-without-token",
        ["serve", "--store", "sqlite:///{tmp}/s.db"],
        {},
        2,
        "",
        "skyferry: error: SKYFERRY_API_TOKEN must be set to a secret of at least 16 characters to serve the API\n"
        "hint: set it to a random secret, e.g. "
        "export SKYFERRY_API_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')\n",
    ),
    (
        "serve-port-out-of-range",
        ["serve", "--port", "70000"],
        {},
        2,
        "",
        "skyferry: error: input should be less than or equal to 65535 (--port)\n"
        "hint: skyferry serve -h shows the options\n",
    ),
    (
        "serve-port-taken",
        ["serve", "--port", "{port}", "--store", "sqlite:///{tmp}/s.db"],
        {"SKYFERRY_API_TOKEN": "0123456789abcdef0123"},
        2,
        "",
        "skyferry: error: cannot listen: address already in use (127.0.0.1:$PORT)\n"
        "hint: another process listens there: stop it, or choose another port (--port or SKYFERRY_PORT)\n",
    ),
    (
        "bad-setting",
        ["serve"],
        {"SKYFERRY_PORT": "eighty"},
        2,
        "",
        "skyferry: error: bad settings: SKYFERRY_PORT: Input should be a valid integer, unable to parse string as an "
        "integer\n",
    ),
    (
        "worker-unknown-scheme",
        ["worker", "--once", "--store", "mongodb://db/x"],
        {},
        2,
        "",
        "skyferry: error: unknown event store URL scheme 'mongodb' in 'mongodb://db/x' (--store)\n"
        f"hint: an event store: {STORES}\n",
    ),
    (
        "worker-sqlite-without-slashes",
        ["worker", "--once", "--store", "sqlite:{tmp}/w.db"],
        {},
        2,
        "",
        "skyferry: error: 'sqlite:$TMP/w.db' is not a URL: '//' is missing after 'sqlite:' (--store)\n"
        f"hint: {SQLITE_URL}\n",
    ),
    (
        "worker-store-unreachable",
        ["worker", "--once", "--store", "postgresql://postgres@127.0.0.1:1/postgres"],
        {},
        3,
        "",
        'skyferry: error: PostgreSQL is not reachable: connection failed: connection to server at "127.0.0.1", '
        "port 1 failed: Connection refused (--store postgresql://postgres@127.0.0.1:1/postgres)\n"
        "hint: Is the server running on that host and accepting TCP/IP connections? "
        "Running the same command again is safe once the service answers (nothing was half-written)\n",
    ),
    (
        "worker-store-broken-ipv6-host",
        ["worker", "--once", "--store", "sqlite://[x"],
        {},
        2,
        "",
        f"skyferry: error: 'sqlite://[x' is not a valid URL: {IPV6} (--store)\n",
    ),
    (
        "worker-broker-broken-ipv6-host",
        ["worker", "--once", "--broker", "nats://[x", "--store", "sqlite:///{tmp}/w.db"],
        {},
        2,
        "",
        f"skyferry: error: 'nats://[x' is not a valid URL: {IPV6} (--broker)\n",
    ),
    (
        "worker-port-out-of-range",
        ["worker", "--once", "--store", "postgresql://h:99999/db"],
        {},
        2,
        "",
        "skyferry: error: 'postgresql://h:99999/db' is not a valid URL: its port must be a number from 0 to 65535 "
        "(--store)\n",
    ),
    (
        "worker-port-not-a-number-in-a-setting",
        ["worker", "--once"],
        {"SKYFERRY_STORE_URL": "postgresql://h:abc/db"},
        2,
        "",
        "skyferry: error: 'postgresql://h:abc/db' is not a valid URL: its port must be a number from 0 to 65535 "
        "(SKYFERRY_STORE_URL)\n",
    ),
    (
        "worker-empty-store",
        ["worker", "--once", "--store", ""],
        {},
        2,
        "",
        "skyferry: error: --store is empty: give a URL, or leave the option out\n",
    ),
    (
        "worker-empty-broker",
        ["worker", "--once", "--broker", "", "--store", "sqlite:///{tmp}/w.db"],
        {},
        2,
        "",
        "skyferry: error: --broker is empty: give a URL, or leave the option out\n",
    ),
    (
        "serve-empty-host",
        ["serve", "--host", "", "--store", "sqlite:///{tmp}/s.db"],
        {"SKYFERRY_API_TOKEN": "0123456789abcdef0123"},
        2,
        "",
        "skyferry: error: --host is empty: give an address (0.0.0.0 listens on every one), or leave the option out\n",
    ),
    (
        "demo-empty-store",
        ["demo", "--store", ""],
        {},
        2,
        "",
        "skyferry: error: --store is empty: give a URL, or leave the option out\n",
    ),
    (
        "parked-empty-store",
        ["parked", "list", "--store", ""],
        {},
        2,
        "",
        "skyferry: error: --store is empty: give a URL, or leave the option out\n",
    ),
    (
        "alive-without-heartbeat-file",
        ["alive"],
        {},
        2,
        "",
        "skyferry: error: the worker keeps no heartbeat to check (SKYFERRY_HEARTBEAT_FILE is not set)\n"
        "hint: set SKYFERRY_HEARTBEAT_FILE to the same file for the worker and for this check\n",
    ),
    (
        "alive-before-the-worker-started",
        ["alive"],
        {"SKYFERRY_HEARTBEAT_FILE": "{tmp}/heartbeat"},
        3,
        "",
        "skyferry: error: no heartbeat at $TMP/heartbeat: the worker has not started (or writes elsewhere) "
        "(SKYFERRY_HEARTBEAT_FILE)\nhint: start the worker with the same SKYFERRY_HEARTBEAT_FILE\n",
    ),
    (
        "alive-max-age-too-small",
        ["alive", "--max-age", "0"],
        {},
        2,
        "",
        "skyferry: error: input should be greater than or equal to 1 (--max-age)\n"
        "hint: skyferry alive -h shows the options\n",
    ),
    (
        "rebuild-unknown-read-model",
        ["rebuild", "balance", "--store", "sqlite:///{tmp}/source.db"],
        {},
        2,
        "",
        "skyferry: error: unknown read model 'balance'; known: balances, daily_totals, history, transfers "
        "(READ_MODEL)\n",
    ),
    (
        "rebuild-without-read-model",
        ["rebuild"],
        {},
        2,
        "",
        "skyferry: error: missing argument READ_MODEL (skyferry rebuild)\n"
        "hint: skyferry rebuild -h shows the options\n",
    ),
    (
        "parked-unknown-key",
        ["parked", "skip", "nosuch", "--store", "sqlite:///{tmp}/source.db"],
        {},
        2,
        "",
        "skyferry: error: no parked event 'nosuch' (see skyferry parked list)\n",
    ),
    (
        "parked-retry-without-keys",
        ["parked", "retry"],
        {},
        2,
        "",
        "skyferry: error: missing argument KEY... (skyferry parked retry)\n"
        "hint: skyferry parked retry -h shows the options\n",
    ),
    (
        "demo-corrupt-store",
        ["demo", "--store", "sqlite:///{tmp}/corrupt.db"],
        {},
        2,
        "",
        "skyferry: error: SQLite file $TMP/corrupt.db is corrupt or not a SQLite database: file is not a database "
        "(--store)\n",
    ),
    (
        "plan-misspelt-stack",
        ["plan", "--stack", "awz"],
        {},
        2,
        "",
        "skyferry: error: no stack 'awz': Pulumi.awz.yaml not found in stacks/ (known: aws, azure, gcp, kubernetes) "
        "(--stack)\n"
        "hint: did you mean --stack aws?\n",
    ),
    (
        "plan-unknown-format",
        ["plan", "--stack", "kubernetes", "--format", "yaml"],
        {},
        2,
        "",
        "skyferry: error: 'yaml' is not one of 'table', 'json', 'mermaid' (--format)\n"
        "hint: skyferry plan -h shows the options\n",
    ),
    (
        "export-without-from",
        ["export", "--to", "{tmp}/archive"],
        {},
        2,
        "",
        "skyferry: error: missing option --from (skyferry export)\nhint: skyferry export -h shows the options\n",
    ),
    (
        "export-unknown-archive-scheme",
        ["export", "--from", "sqlite:///{tmp}/source.db", "--to", "s4://bucket/x"],
        {},
        2,
        "",
        "skyferry: error: unknown archive URL scheme 's4' in 's4://bucket/x' (--to)\n"
        f"hint: did you mean s3://? an archive: {ARCHIVES}\n",
    ),
    (
        "export-chunk-events-zero",
        ["export", "--from", "sqlite:///{tmp}/source.db", "--to", "{tmp}/archive", "--chunk-events", "0"],
        {},
        2,
        "",
        "skyferry: error: input should be greater than or equal to 1 (--chunk-events)\n"
        "hint: skyferry export -h shows the options\n",
    ),
    (
        "import-concurrency-zero",
        ["import", "--from", "{tmp}/archive", "--to", "sqlite:///{tmp}/target.db", "--concurrency", "0"],
        {},
        2,
        "",
        "skyferry: error: input should be greater than or equal to 1 (--concurrency)\n"
        "hint: skyferry import -h shows the options\n",
    ),
    (
        "migrate-concurrency-too-many",
        ["migrate", "--from", "sqlite:///{tmp}/source.db", "--to", "sqlite:///{tmp}/target.db", "--concurrency", "65"],
        {},
        2,
        "",
        "skyferry: error: input should be less than or equal to 64 (--concurrency)\n"
        "hint: skyferry migrate -h shows the options\n",
    ),
    (
        "import-not-an-archive",
        ["import", "--from", "{tmp}/nothing", "--to", "sqlite:///{tmp}/target.db"],
        {},
        2,
        "",
        "skyferry: error: $TMP/nothing/manifest.json: missing: not an archive, or an unfinished export (--from)\n",
    ),
    (
        "import-not-an-archive-json",
        ["import", "--from", "{tmp}/nothing", "--to", "sqlite:///{tmp}/target.db", "--json"],
        {},
        2,
        '{"kind":"error","error":"$TMP/nothing/manifest.json: missing: not an archive, or an unfinished export",'
        '"where":"--from","hint":null,"exit_code":2}\n',
        "skyferry: error: $TMP/nothing/manifest.json: missing: not an archive, or an unfinished export (--from)\n",
    ),
    (
        "verify-typo-in-scheme",
        ["verify", "--from", "postgresq://db/x", "--to", "sqlite:///{tmp}/source.db"],
        {},
        2,
        "",
        "skyferry: error: unknown store or archive URL scheme 'postgresq' in 'postgresq://db/x' (--from)\n"
        f"hint: did you mean postgresql://? a store: {STORES}; an archive: {ARCHIVES}\n",
    ),
    (
        "verify-broken-ipv6-host",
        ["verify", "--from", "postgresql://u:pw@[::1:5432/x", "--to", "sqlite:///{tmp}/source.db"],
        {},
        2,
        "",
        f"skyferry: error: 'postgresql://u:***@[::1:5432/x' is not a valid URL: {IPV6} (--from)\n",
    ),
    (
        "export-archive-broken-ipv6-host",
        ["export", "--from", "sqlite:///{tmp}/source.db", "--to", "s3://[x"],
        {},
        2,
        "",
        f"skyferry: error: 's3://[x' is not a valid URL: {IPV6} (--to)\n",
    ),
    (
        "verify-sqlite-broken-ipv6-host",
        ["verify", "--from", "sqlite://[x/a.db", "--to", "{tmp}/a"],
        {},
        2,
        "",
        f"skyferry: error: 'sqlite://[x/a.db' is not a valid URL: {IPV6} (--from)\n",
    ),
    (
        "verify-old-and-new-spelling",
        ["verify", "--from", "{tmp}/a", "--source", "{tmp}/b", "--to", "sqlite:///{tmp}/source.db"],
        {},
        2,
        "",
        "skyferry: error: --from and --source are the same option: give one\n",
    ),
    (
        "verify-two-archives",
        ["verify", "--from", "{tmp}/a", "--to", "{tmp}/b"],
        {},
        2,
        "",
        "skyferry: error: verify compares a store with a store or with an archive, not two archives "
        "(--from and --to)\nhint: import one of the archives into a store first\n",
    ),
    (
        "migrate-negative-grace",
        [
            "migrate",
            "--from",
            "sqlite:///{tmp}/source.db",
            "--to",
            "sqlite:///{tmp}/t.db",
            "--cutover",
            "--grace",
            "-1",
        ],
        {},
        2,
        "",
        "skyferry: error: input should be greater than or equal to 0 (--grace)\n"
        "hint: skyferry migrate -h shows the options\n",
    ),
    (
        "migrate-grace-not-a-number",
        ["migrate", "--from", "sqlite:///{tmp}/source.db", "--to", "sqlite:///{tmp}/t.db", "--grace", "abc"],
        {},
        2,
        "",
        "skyferry: error: input should be a valid number, unable to parse string as a number (--grace)\n"
        "hint: skyferry migrate -h shows the options\n",
    ),
    (
        "migrate-without-to",
        ["migrate", "--from", "sqlite:///{tmp}/source.db"],
        {},
        2,
        "",
        "skyferry: error: migrate needs --to (or --unfence)\nhint: skyferry migrate -h shows the options\n",
    ),
    (
        "migrate-bad-shard",
        ["migrate", "--from", "sqlite:///{tmp}/source.db", "--to", "sqlite:///{tmp}/t.db", "--shard", "3/3"],
        {},
        2,
        "",
        "skyferry: error: --shard '3/3': expected i/n with 0 <= i < n, for example 0/4\n",
    ),
    (
        "export-raw-key-file",
        ["export", "--from", "sqlite:///{tmp}/source.db", "--to", "{tmp}/archive", "--key-file", "rawkey"],
        {},
        2,
        "",
        "skyferry: error: --key-file rawkey: the file holds raw bytes, not the key written as 64 hex characters or "
        "base64\nhint: write it as 64 hex characters: xxd -p -c 64 rawkey > rawkey.hex\n",
    ),
    (
        "verify-from-a-binary-file",
        ["verify", "--from", "@rawkey", "--to", "sqlite:///{tmp}/source.db"],
        {},
        2,
        "",
        "skyferry: error: --from @rawkey: the file is not text (it should hold one URL)\n",
    ),
    (
        "worker-sqlite-name-not-utf8",
        ["worker", "--once", "--store", "sqlite:///{tmp}/w\udcff.db"],
        {},
        2,
        "",
        "skyferry: error: 'sqlite:///$TMP/w\\udcff.db': the file name is not UTF-8, which SQLite needs: rename the "
        "file (--store)\n",
    ),
    (
        "import-to-sqlite-name-not-utf8",
        ["import", "--from", "{tmp}/archive", "--to", "sqlite:///{tmp}/w\udcff.db"],
        {},
        2,
        "",
        "skyferry: error: 'sqlite:///$TMP/w\\udcff.db': the file name is not UTF-8, which SQLite needs: rename the "
        "file (--to)\n",
    ),
    (
        "migrate-to-sqlite-name-not-utf8",
        ["migrate", "--from", "sqlite:///{tmp}/source.db", "--to", "sqlite:///{tmp}/w\udcff.db"],
        {},
        2,
        "",
        "skyferry: error: 'sqlite:///$TMP/w\\udcff.db': the file name is not UTF-8, which SQLite needs: rename the "
        "file (--to)\n",
    ),
    (
        "migrate-transform-relative",
        ["migrate", "--from", "sqlite:///{tmp}/source.db", "--to", "sqlite:///{tmp}/t.db", "--transform", "..x:f"],
        {},
        2,
        "",
        "skyferry: error: --transform '..x:f': '..x' is a relative module name; give the whole name (package.module)\n",
    ),
    (
        "migrate-transform-syntax-error",
        ["migrate", "--from", "sqlite:///{tmp}/source.db", "--to", "sqlite:///{tmp}/t.db", "--transform", "badmod:f"],
        {},
        2,
        "",
        "skyferry: error: --transform 'badmod:f': importing 'badmod' raised SyntaxError: invalid syntax "
        "(badmod.py, line 1)\nhint: fix badmod (--debug shows the traceback)\n",
    ),
    (
        "export-transform-raises-on-import",
        ["export", "--from", "sqlite:///{tmp}/source.db", "--to", "{tmp}/archive", "--transform", "raising:f"],
        {},
        2,
        "",
        "skyferry: error: --transform 'raising:f': importing 'raising' raised RuntimeError: no config at import\n"
        "hint: fix raising (--debug shows the traceback)\n",
    ),
    (
        "verify-empty-from",
        ["verify", "--from", "", "--to", "sqlite:///{tmp}/source.db"],
        {},
        2,
        "",
        "skyferry: error: --from is empty: give a store URL or an archive\n",
    ),
    (
        "verify-sqlite-directory",
        ["verify", "--from", "sqlite:///{tmp}", "--to", "{tmp}/a"],
        {},
        2,
        "",
        "skyferry: error: SQLite file $TMP is a directory: name a database file in it (--from)\n",
    ),
    (
        "export-to-a-directory-that-cannot-be-made",
        ["export", "--from", "sqlite:///{tmp}/source.db", "--to", "/proc/nope"],
        {},
        2,
        "",
        "skyferry: error: archive path /proc/nope/chunks/000000.jsonl.zst: No such file or directory (--to)\n",
    ),
    (
        "migrate-shard-with-a-space",
        ["migrate", "--from", "sqlite:///{tmp}/source.db", "--to", "sqlite:///{tmp}/t.db", "--shard", " 1/2"],
        {},
        2,
        "",
        "skyferry: error: --shard ' 1/2': expected i/n with 0 <= i < n, for example 0/4\n",
    ),
    (
        "migrate-shard-non-ascii-digits",
        ["migrate", "--from", "sqlite:///{tmp}/source.db", "--to", "sqlite:///{tmp}/t.db", "--shard", "\u0661/\u0662"],
        {},
        2,
        "",
        "skyferry: error: --shard '\u0661/\u0662': expected i/n with 0 <= i < n, for example 0/4\n",
    ),
    (
        "export-shard-count-absurd",
        [
            "export",
            "--from",
            "sqlite:///{tmp}/source.db",
            "--to",
            "{tmp}/archive",
            "--shard",
            "0/99999999999999999999999",
        ],
        {},
        2,
        "",
        "skyferry: error: --shard '0/99999999999999999999999': at most 1024 shards\n",
    ),
    (
        "migrate-transform-not-found",
        ["migrate", "--from", "sqlite:///{tmp}/source.db", "--to", "sqlite:///{tmp}/t.db", "--transform", "nosuch:f"],
        {},
        2,
        "",
        "skyferry: error: --transform 'nosuch:f': cannot import 'nosuch' (No module named 'nosuch')\n",
    ),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A source store of 40 events, a file that is no database, a raw key, and transforms that fail to import."""
    with opened(f"sqlite:///{tmp_path}/source.db") as (store, _):
        fill(store, streams=5, per_stream=8)
    (tmp_path / "corrupt.db").write_bytes(b"this is not a database" * 100)
    (tmp_path / "rawkey").write_bytes(bytes(range(200, 232)))  # a key as raw bytes (head -c32 /dev/urandom)
    (tmp_path / "badmod.py").write_text("def f(:\n")
    (tmp_path / "raising.py").write_text("raise RuntimeError('no config at import')\n")
    return tmp_path


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize(("argv", "env", "code", "stdout", "stderr"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_prints_one_error_line_and_a_hint(
    workdir: Path, taken_port: int, argv: list[str], env: dict[str, str], code: int, stdout: str, stderr: str
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SKYFERRY_")}
    environ.update({"COLUMNS": "100", **{k: v.format(tmp=workdir) for k, v in env.items()}})
    args = [arg.format(tmp=workdir, port=taken_port) for arg in argv]
    done = subprocess.run([SKYFERRY, *args], capture_output=True, text=True, timeout=120, env=environ, cwd=workdir)

    def shown(text: str) -> str:
        return text.replace(str(workdir), "$TMP").replace(f":{taken_port}", ":$PORT")

    assert (done.returncode, shown(done.stdout), shown(done.stderr)) == (code, stdout, stderr)


def test_an_empty_option_creates_nothing(workdir: Path) -> None:
    """``--store ""`` (an unset shell variable) once fell back to the default ./skyferry.db and created it."""
    before = sorted(os.listdir(workdir))
    for argv in (["worker", "--once", "--store", ""], ["rebuild", "balances", "--store", ""]):
        done = subprocess.run([SKYFERRY, *argv], capture_output=True, text=True, timeout=120, cwd=workdir)
        assert done.returncode == 2, done.stderr
    assert sorted(os.listdir(workdir)) == before
