"""Data portability: export, import and migrate against the raw limit of the same work.

Each figure is an event rate of a skyferry command's code path, printed beside the most
direct way to do the same work with the raw driver in the same run (goal: >= 60 %):

* **SQLite -> archive**: ``export`` vs. a paged ``SELECT`` + orjson lines + zstd chunks.
* **archive -> SQLite**: ``import`` vs. zstd + orjson + ``executemany`` into the same table.
* **PostgreSQL -> archive**: ``export`` vs. a server-side cursor + orjson + zstd chunks.
* **archive -> PostgreSQL**: ``import`` vs. ``COPY FROM STDIN`` of the decoded lines.
* **PostgreSQL -> PostgreSQL**: ``migrate`` vs. ``COPY TO STDOUT`` piped into ``COPY FROM STDIN``.

And the peak RSS of a ``skyferry migrate`` subprocess (SQLite -> SQLite) for 100k and 1M
events (``--quick``: 10k and 100k), measured with ``wait4``: goal <= 200 MB and flat.
PostgreSQL figures need the server of ``SKYFERRY_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); without it they are left out, saying so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import zstandard

from benchmarks.bench_sqlite import raw_connection
from benchmarks.figures import Figure, compare
from skyferry.adapters import registry
from skyferry.adapters.archives.local import LocalArchive
from skyferry.adapters.stores.sqlite import open_connection
from skyferry.core.messages import to_micros
from skyferry.migrate.chunks import CHUNK_EVENTS
from skyferry.migrate.export import export
from skyferry.migrate.importer import import_archive
from skyferry.migrate.migrate import Migration

GOAL = 0.6
DATA = {"amount": "12.50", "currency": "EUR", "account_id": "acc-0001", "note": "benchmark payload"}
META = {"correlation_id": "9b1f0c9e-2f7a-4a53-9d9e-1f0f4c2b7a11", "actor": "bench"}
STREAMS = 1000
_SQLITE_INSERT = (
    "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at, "
    "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _rows(count: int) -> Iterator[tuple[Any, ...]]:
    now = to_micros(datetime.now(UTC))
    data, meta = orjson.dumps(DATA).decode(), orjson.dumps(META).decode()
    for i in range(count):
        yield (str(uuid.uuid4()), f"bench-{i % STREAMS}", i // STREAMS + 1, "MoneyDeposited", 1, data, meta, now, now)


def sqlite_source(path: Path, count: int) -> str:
    """A SQLite store of ``count`` events, created by the adapter and filled with raw inserts."""
    url = f"sqlite:///{path}"
    store = registry.open_event_store(url)
    store.last_position()  # creates the schema
    store.close()
    db = open_connection(str(path))
    db.execute("BEGIN IMMEDIATE")
    db.executemany(_SQLITE_INSERT, _rows(count))
    db.execute("COMMIT")
    db.close()
    return url


def _raw_sqlite_export(path: Path, out: Path) -> None:
    db = open_connection(str(path))
    out.mkdir(parents=True, exist_ok=True)
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    after, lines, index = 0, [], 0
    while rows := list(
        db.execute(
            "SELECT position, id, stream_id, version, type, schema_version, data, metadata, occurred_at, recorded_at"
            " FROM events WHERE position > ? ORDER BY position LIMIT 5000",
            (after,),
        )
    ):
        for r in rows:
            lines.append(
                orjson.dumps(
                    {
                        "position": r[0],
                        "id": r[1],
                        "stream_id": r[2],
                        "version": r[3],
                        "type": r[4],
                        "schema_version": r[5],
                        "data": orjson.loads(r[6]),
                        "metadata": orjson.loads(r[7]),
                        "occurred_at": r[8],
                        "recorded_at": r[9],
                    }
                )
            )
            if len(lines) == CHUNK_EVENTS:
                (out / f"{index:06d}.zst").write_bytes(compressor.compress(b"\n".join(lines)))
                lines, index = [], index + 1
        after = rows[-1][0]
    if lines:
        (out / f"{index:06d}.zst").write_bytes(compressor.compress(b"\n".join(lines)))
    db.close()


def _raw_lines(archive_dir: Path) -> Iterator[dict[str, Any]]:
    """The raw read of an archive: every chunk decompressed, every line parsed."""
    for chunk in sorted((archive_dir / "chunks").iterdir()):
        for line in zstandard.ZstdDecompressor().decompress(chunk.read_bytes()).splitlines():
            yield orjson.loads(line)


def _raw_sqlite_import(archive_dir: Path, url: str) -> None:
    path = url.removeprefix("sqlite:///")
    store = registry.open_event_store(url)
    store.last_position()
    store.close()
    db = raw_connection(path)
    batch: list[tuple[Any, ...]] = []

    def flush() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_SQLITE_INSERT, batch)
        db.execute("COMMIT")
        batch.clear()

    for e in _raw_lines(archive_dir):
        batch.append(
            (
                e["id"],
                e["streamid"],
                e["streamversion"],
                e["type"],
                e["schemaversion"],
                orjson.dumps(e["data"]).decode(),
                e["metadata"],
                to_micros(datetime.fromisoformat(e["time"])),
                to_micros(datetime.fromisoformat(e["recordedtime"])),
            )
        )
        if len(batch) == CHUNK_EVENTS:
            flush()
    if batch:
        flush()
    db.close()


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def sqlite_figures(directory: Path, count: int) -> list[Figure]:
    """SQLite -> archive and archive -> SQLite."""
    source = directory / "source.db"
    url = sqlite_source(source, count)
    runs = _Counter()

    def do_export() -> None:
        store = registry.open_event_store(url)
        export(store, LocalArchive(directory / f"export-{runs.next()}"), reader_url=url)  # as the CLI does
        store.close()

    ours, raw = compare(count, do_export, lambda: _raw_sqlite_export(source, directory / f"raw-{runs.next()}"))
    figures = [Figure("export SQLite -> archive", ours, "events/s", raw, "SELECT+orjson+zstd", GOAL)]
    archive = directory / "export-2"

    def do_import() -> None:
        target = f"sqlite:///{directory}/import-{runs.next()}.db"
        store, views = registry.open_event_store(target), registry.open_view_store(target)
        import_archive(LocalArchive(archive), store, views, archive_url=str(archive))  # as the CLI does
        views.close()
        store.close()

    ours, raw = compare(
        count, do_import, lambda: _raw_sqlite_import(archive, f"sqlite:///{directory}/raw-{runs.next()}.db")
    )
    figures.append(Figure("import archive -> SQLite", ours, "events/s", raw, "zstd+orjson+executemany", GOAL))
    return figures


def _pg_dsn() -> str:
    return os.environ.get("SKYFERRY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_figures(directory: Path, count: int) -> list[Figure]:
    """PostgreSQL -> archive, archive -> PostgreSQL, PostgreSQL -> PostgreSQL."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        return [Figure("PostgreSQL figures", 0, "-", note="psycopg not installed: skipped")]
    dsn = _pg_dsn()
    try:
        admin = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.Error as e:
        return [Figure("PostgreSQL figures", 0, "-", note=f"server not reachable ({e.__class__.__name__}): skipped")]
    schemas: list[str] = []
    cols = "id, stream_id, version, type, schema_version, data, metadata, occurred_at, recorded_at"

    def fresh() -> tuple[str, str]:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        schemas.append(schema)
        sep = "&" if "?" in dsn else "?"
        url = f"{dsn}{sep}schema={schema}"
        store = registry.open_event_store(url)
        store.last_position()
        store.close()
        return schema, url

    try:
        src_schema, src_url = fresh()
        with admin.cursor().copy(
            sql.SQL("COPY {}.events ({}) FROM STDIN").format(sql.Identifier(src_schema), sql.SQL(cols))
        ) as copy:
            for r in _rows(count):
                copy.write_row(
                    (*r[:7], datetime.fromtimestamp(r[7] / 1e6, UTC), datetime.fromtimestamp(r[8] / 1e6, UTC))
                )
        admin.execute(sql.SQL("ANALYZE {}.events").format(sql.Identifier(src_schema)))
        runs = _Counter()

        def do_export() -> None:
            store = registry.open_event_store(src_url)
            export(store, LocalArchive(directory / f"pg-export-{runs.next()}"), reader_url=src_url)  # as the CLI does
            store.close()

        def raw_export() -> None:
            out = directory / f"pg-raw-{runs.next()}"
            out.mkdir()
            compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
            lines: list[bytes] = []
            index = 0
            with psycopg.connect(dsn) as conn, conn.cursor(name="bench") as cursor:
                cursor.itersize = 5000
                cursor.execute(
                    sql.SQL("SELECT position, {} FROM {}.events ORDER BY position").format(
                        sql.SQL(cols), sql.Identifier(src_schema)
                    )
                )
                for r in cursor:
                    lines.append(
                        orjson.dumps(
                            {
                                "position": r[0],
                                "id": r[1],
                                "stream_id": r[2],
                                "version": r[3],
                                "type": r[4],
                                "schema_version": r[5],
                                "data": r[6],
                                "metadata": r[7],
                                "occurred_at": r[8],
                                "recorded_at": r[9],
                            }
                        )
                    )
                    if len(lines) == CHUNK_EVENTS:
                        (out / f"{index:06d}.zst").write_bytes(compressor.compress(b"\n".join(lines)))
                        lines, index = [], index + 1
            if lines:
                (out / f"{index:06d}.zst").write_bytes(compressor.compress(b"\n".join(lines)))

        ours, raw = compare(count, do_export, raw_export)
        figures = [Figure("export PostgreSQL -> archive", ours, "events/s", raw, "server cursor+orjson+zstd", GOAL)]
        archive = directory / "pg-export-2"

        def do_import() -> None:
            _, url = fresh()
            store, views = registry.open_event_store(url), registry.open_view_store(url)
            import_archive(LocalArchive(archive), store, views, archive_url=str(archive))  # as the CLI does
            views.close()
            store.close()

        def raw_import() -> None:
            schema, _ = fresh()
            with (
                psycopg.connect(dsn) as conn,
                conn.cursor().copy(
                    sql.SQL("COPY {}.events ({}) FROM STDIN").format(sql.Identifier(schema), sql.SQL(cols))
                ) as copy,
            ):
                for e in _raw_lines(archive):
                    copy.write_row(
                        (
                            e["id"],
                            e["streamid"],
                            e["streamversion"],
                            e["type"],
                            e["schemaversion"],
                            orjson.dumps(e["data"]).decode(),
                            e["metadata"],
                            e["time"],
                            e["recordedtime"],
                        )
                    )

        ours, raw = compare(count, do_import, raw_import)
        figures.append(Figure("import archive -> PostgreSQL", ours, "events/s", raw, "COPY FROM STDIN", GOAL))

        def do_migrate() -> None:
            _, url = fresh()
            source = registry.open_event_store(src_url)
            target, views = registry.open_event_store(url), registry.open_view_store(url)
            Migration(source, target, views).catch_up()
            for closable in (views, target, source):
                closable.close()

        def raw_migrate() -> None:
            schema, _ = fresh()
            with psycopg.connect(dsn) as reader, psycopg.connect(dsn) as writer:
                out = sql.SQL("COPY (SELECT {} FROM {}.events ORDER BY position) TO STDOUT").format(
                    sql.SQL(cols), sql.Identifier(src_schema)
                )
                into = sql.SQL("COPY {}.events ({}) FROM STDIN").format(sql.Identifier(schema), sql.SQL(cols))
                with reader.cursor().copy(out) as source, writer.cursor().copy(into) as target:
                    for block in source:
                        target.write(block)

        ours, raw = compare(count, do_migrate, raw_migrate)
        figures.append(Figure("migrate PostgreSQL -> PostgreSQL", ours, "events/s", raw, "piped COPY", GOAL))
        return figures
    finally:
        for schema in schemas:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        admin.close()


_MEASURE = (
    "import os, sys\n"
    "pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)
"""Runs a command from a small, fresh interpreter and prints its peak RSS (KiB) and exit code.

``ru_maxrss`` of a child counts the pages of the process it was forked from, so the
benchmark (large after building data) must not be that parent: this tiny one is."""


def peak_rss_mb(*command: str) -> float:
    """Peak RSS (MB) of ``command`` run as a subprocess, measured with ``wait4``."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True)
    kib, code = result.stdout.split()[-2:]  # after whatever the command printed
    if int(code) != 0:
        raise RuntimeError(f"{command[1:4]} exited with {code}")
    return int(kib) / 1024


def rss_figures(directory: Path, quick: bool) -> list[Figure]:
    """Peak RSS of a migration at two sizes (10x apart): bounded and flat."""
    small, large = (10_000, 100_000) if quick else (100_000, 1_000_000)
    results = {}
    for count in (small, large):
        source = sqlite_source(directory / f"rss-source-{count}.db", count)
        target = f"sqlite:///{directory}/rss-target-{count}.db"
        results[count] = peak_rss_mb(
            sys.executable, "-m", "skyferry.migrate", "migrate", "--from", source, "--to", target, "--json"
        )
    baseline = peak_rss_mb(sys.executable, "-c", "import skyferry.migrate.cli")
    flat = results[large] / results[small]
    return [
        Figure(
            f"peak RSS, migrate {count:,} events",
            results[count],
            "MB",
            baseline,
            "interpreter + imports",
            note=f"goal <= 200 MB: {'ok' if results[count] <= 200 else 'OVER'}",
        )
        for count in (small, large)
    ] + [Figure(f"RSS growth {small:,} -> {large:,} events", flat, "x", note="goal: flat (about 1x)")]


def run(args: argparse.Namespace) -> list[Figure]:
    """The data-portability figures."""
    quick = bool(getattr(args, "quick", False))
    count = 20_000 if quick else 200_000
    with tempfile.TemporaryDirectory(prefix="skyferry-bench-migrate-") as name:
        directory = Path(name)
        return sqlite_figures(directory, count) + postgres_figures(directory, count) + rss_figures(directory, quick)
