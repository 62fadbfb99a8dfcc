"""``skyferry export | import | verify | migrate``: the data-portability commands.

A Typer sub-app: ``app/skyferry/cli.py`` mounts it, and ``python -m skyferry.migrate`` runs it alone.
Every command prints progress on a terminal, a JSON summary with ``--json``, and exits
with 0 (ok), 1 (a difference: verification failed, or the target holds other events),
2 (bad input: a setting, a URL, a damaged archive, a wrong key) or 3 (a transient
failure: rerun the same command to resume).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any, NoReturn

import orjson
import typer

from skyferry.adapters import registry
from skyferry.core.errors import (
    ConcurrencyError,
    ConfigurationError,
    EventTooLarge,
    NotSupported,
    ObjectNotFound,
    SkyferryError,
    TransientError,
    ValidationError,
)
from skyferry.core.messages import Event
from skyferry.core.ports import Archive, EventStore
from skyferry.migrate.chunks import CHUNK_EVENTS, read_chunk
from skyferry.migrate.crypto import ChunkCipher, load_key
from skyferry.migrate.errors import TargetConflict, VerificationFailed
from skyferry.migrate.export import export as run_export
from skyferry.migrate.fence import lift_fence
from skyferry.migrate.importer import import_archive, read_manifest
from skyferry.migrate.migrate import Migration
from skyferry.migrate.progress import Progress
from skyferry.migrate.sharding import Shard, owned
from skyferry.migrate.transforms import Transformer, dry_run_diff, load_transform
from skyferry.migrate.verify import VerifyReport, verify_archive, verify_stores

EXIT_OK, EXIT_DIFFERENCE, EXIT_BAD_INPUT, EXIT_TRANSIENT = 0, 1, 2, 3

app = typer.Typer(help="Move event data between stores and archives, and prove nothing changed.")

KeyFile = Annotated[str | None, typer.Option("--key-file", help="AES-256 key file (64 hex chars or base64).")]
KeyEnv = Annotated[str | None, typer.Option("--key-env", help="Environment variable holding the AES-256 key.")]
ShardOpt = Annotated[str | None, typer.Option("--shard", help="Only the streams of shard i/n (0-based).")]
TransformOpt = Annotated[str | None, typer.Option("--transform", help="module:function applied to each event.")]
AllowCount = Annotated[
    bool, typer.Option("--allow-count-change", help="Let the transform drop or split events (renumbers).")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show a diff of the first changed events; write nothing.")]
DryRunLimit = Annotated[int, typer.Option("--dry-run-limit", help="How many changed events --dry-run shows.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of progress.")]


def exit_code_of(error: BaseException) -> int:
    """The exit code for an error (docs/cli.md)."""
    if isinstance(error, VerificationFailed | TargetConflict | ConcurrencyError):
        return EXIT_DIFFERENCE
    if isinstance(error, TransientError | OSError):
        return EXIT_TRANSIENT
    return EXIT_BAD_INPUT


def _fail(error: BaseException, as_json: bool) -> NoReturn:
    code = exit_code_of(error)
    message = str(error)
    if as_json:
        sys.stdout.write(orjson.dumps({"error": message, "exit_code": code}).decode() + "\n")
    kind = {1: "difference", 2: "bad input", 3: "transient failure (rerun to resume)"}[code]
    sys.stderr.write(f"error ({kind}): {message}\n")
    raise typer.Exit(code)


@contextlib.contextmanager
def _handled(as_json: bool) -> Iterator[None]:
    try:
        yield
    except (
        SkyferryError,
        ConfigurationError,
        ValidationError,
        EventTooLarge,
        NotSupported,
        ObjectNotFound,
        OSError,
    ) as e:
        _fail(e, as_json)


def _emit(summary: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        sys.stdout.write(text + "\n")


def _progress(label: str, as_json: bool) -> Progress:
    return Progress(label, enabled=False if as_json else None)


def _cipher(key_file: str | None, key_env: str | None) -> ChunkCipher | None:
    key = load_key(key_file, key_env)
    return None if key is None else ChunkCipher(key)


def _transformer(spec: str | None, allow: bool) -> Transformer | None:
    if spec is None:
        if allow:
            raise ConfigurationError("--allow-count-change needs --transform")
        return None
    return Transformer(spec, load_transform(spec), allow_count_change=allow)


def is_store_url(url: str) -> bool:
    """Whether ``url`` names an event store (else it is read as an archive)."""
    return registry.scheme_of(url) in registry.EVENT_STORES


@contextlib.contextmanager
def _store(url: str) -> Iterator[EventStore]:
    store = registry.open_event_store(url)
    try:
        yield store
    finally:
        store.close()


def _store_events(store: EventStore, shard: Shard | None) -> Iterator[Event]:
    after: str | None = None
    while batch := store.read_all(after=after, limit=1000):
        after = batch[-1].position
        yield from (event for event in batch if owned(shard, event.stream_id))


def _archive_events(archive: Archive, cipher: ChunkCipher | None, shard: Shard | None) -> Iterator[Event]:
    manifest = read_manifest(archive, cipher)
    for entry in manifest.chunks:
        yield from (event for event in read_chunk(archive, entry, cipher) if owned(shard, event.stream_id))


def _dry_run(transformer: Transformer | None, events: Callable[[], Iterator[Event]], limit: int, as_json: bool) -> None:
    if transformer is None:
        raise ConfigurationError("--dry-run shows what --transform changes: give --transform")
    diff, seen = dry_run_diff(transformer, events(), limit)
    _emit(
        {"command": "dry-run", "transform": transformer.spec, "events_read": seen, "diff": diff},
        as_json,
        (diff or "(the transform changes none of these events)") + f"\n-- read {seen} events, wrote nothing",
    )


@app.command("export")
def export_command(
    source: Annotated[str, typer.Option("--from", help="Store URL to export.")],
    target: Annotated[str, typer.Option("--to", help="Archive URL (a directory, s3://, az://, gs://).")],
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    shard: ShardOpt = None,
    transform: TransformOpt = None,
    allow_count_change: AllowCount = False,
    dry_run: DryRun = False,
    dry_run_limit: DryRunLimit = 10,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export.")] = False,
    chunk_events: Annotated[int, typer.Option("--chunk-events", help="Events per chunk.")] = CHUNK_EVENTS,
    as_json: JsonOpt = False,
) -> None:
    """Export a store's events into an archive (manifest + zstd CloudEvents chunks)."""
    with _handled(as_json):
        the_shard = Shard.parse(shard)
        transformer = _transformer(transform, allow_count_change)
        with _store(source) as store:
            if dry_run:
                _dry_run(transformer, lambda: _store_events(store, the_shard), dry_run_limit, as_json)
                return
            report = run_export(
                store,
                registry.open_archive(target),
                cipher=_cipher(key_file, key_env),
                shard=the_shard,
                transformer=transformer,
                overwrite=overwrite,
                chunk_events=chunk_events,
                progress=_progress("export", as_json),
                # a second process reads on another core; a memory:// store lives only in this one
                reader_url=None if registry.scheme_of(source) == "memory" else source,
            )
        _emit(
            report.to_json(),
            as_json,
            f"exported {report.events} events of {report.streams} streams in {report.chunks} chunks "
            f"({report.bytes} bytes) to {report.archive}; digest {report.digest}",
        )


@app.command("import")
def import_command(
    source: Annotated[str, typer.Option("--from", help="Archive URL to import.")],
    target: Annotated[str, typer.Option("--to", help="Store URL to import into.")],
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    shard: ShardOpt = None,
    transform: TransformOpt = None,
    allow_count_change: AllowCount = False,
    dry_run: DryRun = False,
    dry_run_limit: DryRunLimit = 10,
    as_json: JsonOpt = False,
) -> None:
    """Import an archive into a store: resumable (rerun after a crash), idempotent."""
    with _handled(as_json):
        the_shard = Shard.parse(shard)
        transformer = _transformer(transform, allow_count_change)
        cipher = _cipher(key_file, key_env)
        archive = registry.open_archive(source)
        if dry_run:
            _dry_run(transformer, lambda: _archive_events(archive, cipher, the_shard), dry_run_limit, as_json)
            return
        views = registry.open_view_store(target)
        try:
            with _store(target) as store:
                report = import_archive(
                    archive,
                    store,
                    views,
                    cipher=cipher,
                    shard=the_shard,
                    transformer=transformer,
                    progress=_progress("import", as_json),
                )
        finally:
            views.close()
        _emit(
            report.to_json(),
            as_json,
            f"imported {report.events} events from {report.archive} into {report.target}: {report.written} "
            f"new, {report.skipped} already there (resumed at chunk {report.resumed_at_chunk}, "
            f"write path {report.write_path})",
        )


def _print_verify(report: VerifyReport, as_json: bool) -> None:
    lines = [f"compared {report.streams} streams, {report.events} events: {report.source} vs {report.target}"]
    if report.ok:
        lines.append("identical")
    else:
        lines.append(f"{report.difference_count} difference(s):")
        lines += [f"  - {d}" for d in report.differences]
    _emit(report.to_json(), as_json, "\n".join(lines))


@app.command("verify")
def verify_command(
    source: Annotated[str, typer.Option("--source", help="Store or archive URL.")],
    target: Annotated[str, typer.Option("--target", help="Store URL (or archive, against a store).")],
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    shard: ShardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare per-stream counts and hash chains; exit 1 listing every difference."""
    with _handled(as_json):
        the_shard = Shard.parse(shard)
        progress = _progress("verify", as_json)
        cipher = _cipher(key_file, key_env)
        if is_store_url(source) and is_store_url(target):
            with _store(source) as left, _store(target) as right:
                report = verify_stores(left, right, shard=the_shard, progress=progress)
        elif is_store_url(source) or is_store_url(target):
            archive_url, store_url = (target, source) if is_store_url(source) else (source, target)
            with _store(store_url) as store:
                report = verify_archive(
                    registry.open_archive(archive_url), store, cipher=cipher, shard=the_shard, progress=progress
                )
        else:
            raise ConfigurationError("verify compares a store with a store or an archive: give a store URL")
        _print_verify(report, as_json)
        if not report.ok:
            raise typer.Exit(EXIT_DIFFERENCE)


@app.command("migrate")
def migrate_command(
    source: Annotated[str, typer.Option("--from", help="Source store URL.")],
    target: Annotated[str | None, typer.Option("--to", help="Target store URL.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep copying new events until stopped.")] = False,
    cutover: Annotated[
        bool, typer.Option("--cutover", help="Fence writes on the source, drain, verify, report.")
    ] = False,
    unfence: Annotated[bool, typer.Option("--unfence", help="Lift the source's write fence and exit.")] = False,
    grace: Annotated[float, typer.Option("--grace", help="Cutover: seconds without new events = drained.")] = 2.0,
    batch: Annotated[int, typer.Option("--batch", help="Events per read and write.")] = 5000,
    shard: ShardOpt = None,
    transform: TransformOpt = None,
    allow_count_change: AllowCount = False,
    dry_run: DryRun = False,
    dry_run_limit: DryRunLimit = 10,
    as_json: JsonOpt = False,
) -> None:
    """Copy a store into another (fastest write path), optionally follow it and cut over."""
    with _handled(as_json):
        if unfence:
            views = registry.open_view_store(source)
            try:
                lift_fence(views)
            finally:
                views.close()
            _emit({"command": "unfence", "source": registry.redact(source)}, as_json, "write fence lifted")
            return
        if target is None:
            raise ConfigurationError("migrate needs --to (or --unfence)")
        the_shard = Shard.parse(shard)
        transformer = _transformer(transform, allow_count_change)
        with _store(source) as left:
            if dry_run:
                _dry_run(transformer, lambda: _store_events(left, the_shard), dry_run_limit, as_json)
                return
            with _store(target) as right:
                views = registry.open_view_store(target)
                try:
                    migration = Migration(
                        left,
                        right,
                        views,
                        shard=the_shard,
                        transformer=transformer,
                        batch=batch,
                        progress=_progress("migrate", as_json),
                    )
                    _run_migration(migration, source, follow=follow, cutover=cutover, grace=grace)
                finally:
                    views.close()
                report = migration.finish()
        summary = report.to_json()
        text = (
            f"migrated {report.events} events from {report.source} to {report.target}: {report.written} new, "
            f"{report.skipped} already there (write path {report.write_path})"
        )
        if report.verify is not None and not as_json:
            _print_verify(report.verify, as_json=False)
        _emit(summary, as_json, text)
        if report.verify is not None and not report.verify.ok:
            raise typer.Exit(EXIT_DIFFERENCE)


def _run_migration(migration: Migration, source_url: str, *, follow: bool, cutover: bool, grace: float) -> None:
    if cutover:
        source_views = registry.open_view_store(source_url)
        try:
            migration.cutover(source_views, grace=grace)
        finally:
            source_views.close()
    elif follow:
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            migration.follow(stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    else:
        migration.catch_up()


def main() -> None:
    """Run the sub-app alone (``python -m skyferry.migrate``)."""
    app()
