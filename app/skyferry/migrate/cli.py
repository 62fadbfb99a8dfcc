"""``skyferry export | import | verify | migrate``: the data-portability commands.

A Typer sub-app: ``app/skyferry/cli.py`` mounts it, and ``python -m skyferry.migrate`` runs it alone.
Every command reads ``--from`` and writes or compares ``--to``; shows its progress (a bar on a
terminal, a plain line now and then elsewhere, JSON lines with ``--json``:
:mod:`skyferry.migrate.progress`); ends with a summary whose counts add up and the next step;
and fails in the one shape of :mod:`skyferry.console`: exit 1 a difference (verification
failed, or the target holds other events), 2 bad input (a setting, a URL, a damaged archive,
a wrong key), 3 a transient failure (rerun the same command to resume), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from skyferry.adapters import registry
from skyferry.console import (
    Interrupted,
    count,
    duration,
    located,
    output,
    plural,
    rate,
    size,
)
from skyferry.core.errors import ConfigurationError
from skyferry.core.messages import Event, utc_now
from skyferry.core.ports import Archive, EventStore
from skyferry.migrate.chunks import CHUNK_EVENTS, read_chunk
from skyferry.migrate.crypto import ChunkCipher, load_key
from skyferry.migrate.errors import VerificationFailed
from skyferry.migrate.export import export as run_export
from skyferry.migrate.fence import FENCE_COLLECTION, FENCE_KEY, lift_fence
from skyferry.migrate.importer import import_archive, read_manifest
from skyferry.migrate.migrate import MigrateReport, Migration
from skyferry.migrate.options import default_archive, location
from skyferry.migrate.progress import Progress
from skyferry.migrate.sharding import Shard, owned
from skyferry.migrate.transforms import Transformer, dry_run_diff, load_transform
from skyferry.migrate.verify import VerifyReport, verify_archive, verify_stores
from skyferry.migrate.writer import CONCURRENCY, MAX_CONCURRENCY

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

app = typer.Typer(
    help="Move event data between stores and archives, and prove nothing changed.",
    rich_markup_mode=None,
    context_settings=CONTEXT,
)

MAX_GRACE = 600
"""The longest ``--grace`` (seconds): the source refuses every write while the cutover drains."""

RESUMES = "run the same command again: it resumes from its checkpoint in the target"
STARTS_OVER = "run the same command again: it starts over (it changes nothing)"

STORE = "store"
ARCHIVE = "archive"

KeyFile = Annotated[
    str | None, typer.Option("--key-file", metavar="FILE", help="AES-256 key file (64 hex characters or base64).")
]
KeyEnv = Annotated[
    str | None, typer.Option("--key-env", metavar="VARIABLE", help="Environment variable holding the AES-256 key.")
]
ShardOpt = Annotated[
    str | None, typer.Option("--shard", metavar="I/N", help="Only the streams of shard I of N (0-based).")
]
TransformOpt = Annotated[
    str | None, typer.Option("--transform", metavar="MODULE:FUNCTION", help="A function applied to each event.")
]
AllowCount = Annotated[
    bool, typer.Option("--allow-count-change", help="Let the transform drop or split events (renumbers).")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show a diff of the first changed events; write nothing.")]
DryRunLimit = Annotated[
    int, typer.Option("--dry-run-limit", metavar="N", min=1, help="How many changed events --dry-run shows.")
]
ConcurrencyOpt = Annotated[
    int,
    typer.Option(
        "--concurrency",
        metavar="N",
        min=1,
        max=MAX_CONCURRENCY,
        help="Writes in flight into the target (different streams side by side, each stream in order).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines on stdout: progress every second, then the summary.")]


def _url(option: str, what: str) -> Any:
    return typer.Option(option, metavar="URL", help=what)


def checked(url: str, *kinds: str) -> str:
    """``url`` when an adapter of ``kinds`` (store, archive) serves it; else a ConfigurationError saying what would."""
    error = registry.unknown_scheme(
        url, {kind: registry.EVENT_STORES if kind == STORE else registry.ARCHIVES for kind in kinds}
    )
    if error is not None:
        raise error
    return url


def is_store_url(url: str) -> bool:
    """Whether ``url`` names an event store (else it is read as an archive)."""
    return registry.scheme_of(url) in registry.EVENT_STORES


@contextlib.contextmanager
def _store(url: str, *, existing: bool = False) -> Iterator[EventStore]:
    store = registry.open_event_store(url, existing=existing)
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def _command(as_json: bool, again: str = RESUMES) -> Iterator[None]:
    """Every data command's frame: JSON when asked; Ctrl-C is an interrupt whose hint is ``again``."""
    output.json = as_json
    try:
        yield
    except KeyboardInterrupt as e:
        raise Interrupted(f"interrupted ({'SIGTERM' if isinstance(e, Terminated) else 'Ctrl-C'})", hint=again) from None


def _progress(label: str) -> Progress:
    return Progress(label, mode="json" if output.json else None)


def _cipher(key_file: str | None, key_env: str | None) -> ChunkCipher | None:
    with located("--key-file" if key_file else "--key-env"):
        key = load_key(key_file, key_env)
    return None if key is None else ChunkCipher(key)


def _transformer(spec: str | None, allow: bool) -> Transformer | None:
    if spec is None:
        if allow:
            raise ConfigurationError("--allow-count-change needs --transform", where="--allow-count-change")
        return None
    with located("--transform"):
        return Transformer(spec, load_transform(spec), allow_count_change=allow)


def _shard(text: str | None) -> Shard | None:
    with located("--shard"):
        return Shard.parse(text)


def _store_events(store: EventStore, shard: Shard | None) -> Iterator[Event]:
    after: str | None = None
    while batch := store.read_all(after=after, limit=1000):
        after = batch[-1].position
        yield from (event for event in batch if owned(shard, event.stream_id))


def _archive_events(archive: Archive, cipher: ChunkCipher | None, shard: Shard | None) -> Iterator[Event]:
    manifest = read_manifest(archive, cipher)
    for entry in manifest.chunks:
        yield from (event for event in read_chunk(archive, entry, cipher) if owned(shard, event.stream_id))


def _dry_run(transformer: Transformer | None, events: Callable[[], Iterator[Event]], limit: int) -> None:
    if transformer is None:
        raise ConfigurationError("--dry-run shows what --transform changes: give --transform", where="--dry-run")
    diff, seen = dry_run_diff(transformer, events(), limit)
    output.summary(
        {"command": "dry-run", "transform": transformer.spec, "events_read": seen, "diff": diff},
        [diff or "(the transform changes none of these events)", f"-- read {plural(seen, 'event')}, wrote nothing"],
    )


def counts(read: int, written: int, present: int, shard: Shard | None, transform: dict[str, Any] | None) -> str:
    """``40 read: 38 written, 2 already present`` -- parts that add up to the events read.

    Events of other shards and what a transform did are named when they apply: the
    transform's output is what was written or found already present.
    """
    if transform is None:
        others = read - written - present
        parts = [f"{count(written)} written", f"{count(present)} already present"]
        if shard is not None or others:
            parts.append(f"{count(others)} in other shards")
        return f"{count(read)} read: {', '.join(parts)}"
    into = int(transform.get("events_in", 0))
    parts = [f"{count(read - into)} in other shards"] if shard is not None else []
    return (
        f"{count(read)} read: {', '.join([*parts, f'{count(into)} transformed'])} "
        f"({count(int(transform.get('events_changed', 0)))} changed) into {count(written + present)}: "
        f"{count(written)} written, {count(present)} already present"
    )


@app.command("export", context_settings=CONTEXT)
def export_command(
    source: Annotated[str, _url("--from", "The store to export.")],
    target: Annotated[
        str | None,
        _url(
            "--to",
            "The archive: a directory, file://, s3://, az:// or gs://"
            " (default: a new export-<UTC time> under SKYFERRY_ARCHIVE_URL).",
        ),
    ] = None,
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    shard: ShardOpt = None,
    transform: TransformOpt = None,
    allow_count_change: AllowCount = False,
    dry_run: DryRun = False,
    dry_run_limit: DryRunLimit = 10,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export.")] = False,
    chunk_events: Annotated[
        int, typer.Option("--chunk-events", metavar="N", min=1, help="At most this many events per chunk.")
    ] = CHUNK_EVENTS,
    as_json: JsonOpt = False,
) -> None:
    """Export a store's events into an archive.

    The archive is a manifest and zstd CloudEvents chunks (docs/archive-format.md).
    """
    with _command(as_json, "run the same command again: an unfinished export (no manifest.json yet) starts over"):
        source = location(source, "--from")
        target = default_archive(utc_now()) if target is None else location(target, "--to")
        checked(source, STORE)
        checked(target, ARCHIVE)
        the_shard = _shard(shard)
        transformer = _transformer(transform, allow_count_change)
        started = time.monotonic()
        with _store(source, existing=True) as store:
            if dry_run:
                _dry_run(transformer, lambda: _store_events(store, the_shard), dry_run_limit)
                return
            cipher = _cipher(key_file, key_env)
            with _progress("export") as progress:
                report = run_export(
                    store,
                    registry.open_archive(target),
                    cipher=cipher,
                    shard=the_shard,
                    transformer=transformer,
                    overwrite=overwrite,
                    chunk_events=chunk_events,
                    progress=progress,
                    # a second process reads on another core; a memory:// store lives only in this one
                    reader_url=None if registry.scheme_of(source) == "memory" else source,
                )
        seconds = time.monotonic() - started
        scope = f" (shard {the_shard})" if the_shard is not None else ""
        output.summary(
            {**report.to_json(), "seconds": round(seconds, 3)},
            [
                f"exported {plural(report.events, 'event')} of {plural(report.streams, 'stream')}{scope} "
                f"from {report.source} to {report.archive} in {duration(seconds)}: "
                f"{plural(report.chunks, 'chunk')}, {size(report.bytes)}, digest {report.digest}",
                f"next: skyferry import --from {report.archive} --to STORE_URL, "
                f"then skyferry verify --from {report.archive} --to STORE_URL",
            ],
        )


@app.command("import", context_settings=CONTEXT)
def import_command(
    source: Annotated[str, _url("--from", "The archive: a directory, file://, s3://, az:// or gs://.")],
    target: Annotated[str, _url("--to", "The store to import into.")],
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    shard: ShardOpt = None,
    transform: TransformOpt = None,
    allow_count_change: AllowCount = False,
    dry_run: DryRun = False,
    dry_run_limit: DryRunLimit = 10,
    concurrency: ConcurrencyOpt = CONCURRENCY,
    as_json: JsonOpt = False,
) -> None:
    """Import an archive into a store (resumable, idempotent).

    After a crash, run it again: it resumes from its checkpoint in the target.
    """
    with _command(as_json):
        source, target = location(source, "--from"), location(target, "--to")
        checked(source, ARCHIVE)
        checked(target, STORE)
        the_shard = _shard(shard)
        transformer = _transformer(transform, allow_count_change)
        cipher = _cipher(key_file, key_env)
        archive = registry.open_archive(source)
        if dry_run:
            _dry_run(transformer, lambda: _archive_events(archive, cipher, the_shard), dry_run_limit)
            return
        started = time.monotonic()
        views = registry.open_view_store(target)
        try:
            with _store(target) as store, _progress("import") as progress:
                report = import_archive(
                    archive,
                    store,
                    views,
                    cipher=cipher,
                    shard=the_shard,
                    transformer=transformer,
                    progress=progress,
                    concurrency=concurrency,
                    archive_url=source,  # the chunks are read in a second process (skyferry.migrate.decoder)
                )
        finally:
            views.close()
        seconds = time.monotonic() - started
        read = report.events - report.resumed_events
        lines = [
            f"imported {report.archive} into {report.target} in {duration(seconds)}: "
            f"{counts(read, report.written, report.skipped, the_shard, report.transform)} "
            f"(write path {report.write_path})"
        ]
        if report.resumed_events:
            lines.append(
                f"resumed after chunk {report.resumed_at_chunk}: an earlier run had imported "
                f"{plural(report.resumed_events, 'event')}; {count(report.events)} in all"
            )
        lines.append(f"next: skyferry verify --from {report.archive} --to {report.target}")
        output.summary({**report.to_json(), "seconds": round(seconds, 3)}, lines)


def _verify_lines(report: VerifyReport) -> list[str]:
    compared = f"{plural(report.streams, 'stream')}, {plural(report.events, 'event')}"
    if report.ok:
        return [f"verified {report.source} against {report.target}: identical ({compared})"]
    listed = len(report.differences)
    more = f" (the first {listed} listed)" if listed < report.difference_count else ""
    return [
        f"{report.source} and {report.target} differ: {plural(report.difference_count, 'difference')} "
        f"in {compared}{more}:",
        *(f"  - {difference}" for difference in report.differences),
    ]


def _verify_failed(report: VerifyReport, hint: str) -> VerificationFailed:
    error = VerificationFailed(report.differences)
    error.hint = hint
    return error


@app.command("verify", context_settings=CONTEXT)
def verify_command(
    source: Annotated[str | None, _url("--from", "A store or an archive.")] = None,
    target: Annotated[str | None, _url("--to", "A store (or an archive, when --from is a store).")] = None,
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    shard: ShardOpt = None,
    as_json: JsonOpt = False,
    source_alias: Annotated[str | None, typer.Option("--source", hidden=True)] = None,
    target_alias: Annotated[str | None, typer.Option("--target", hidden=True)] = None,
) -> None:
    """Prove that a copy holds the same events as its source.

    Two stores, or an archive and a store: per-stream counts and hash chains; exit 1 listing every difference.
    """
    with _command(as_json, STARTS_OVER):
        source = location(_one("--from", source, "--source", source_alias), "--from")
        target = location(_one("--to", target, "--target", target_alias), "--to")
        checked(source, STORE, ARCHIVE)
        checked(target, STORE, ARCHIVE)
        the_shard = _shard(shard)
        cipher = _cipher(key_file, key_env)
        with _progress("verify") as progress:
            if is_store_url(source) and is_store_url(target):
                with _store(source, existing=True) as left, _store(target, existing=True) as right:
                    report = verify_stores(left, right, shard=the_shard, progress=progress)
            elif is_store_url(source) or is_store_url(target):
                archive_url, store_url = (target, source) if is_store_url(source) else (source, target)
                with _store(store_url, existing=True) as store:
                    report = verify_archive(
                        registry.open_archive(archive_url), store, cipher=cipher, shard=the_shard, progress=progress
                    )
            else:
                raise ConfigurationError(
                    "verify compares a store with a store or with an archive, not two archives",
                    where="--from and --to",
                    hint="import one of the archives into a store first",
                )
        output.summary(report.to_json(), _verify_lines(report))
        if not report.ok:
            raise _verify_failed(report, "the differences are listed above")


def _one(option: str, value: str | None, alias: str, alias_value: str | None) -> str:
    """The value of an option that has an old spelling (kept, hidden): one of them, not both."""
    if value is not None and alias_value is not None:
        raise ConfigurationError(f"{option} and {alias} are the same option: give one")
    chosen = value if value is not None else alias_value
    if chosen is None:
        raise ConfigurationError(
            f"missing option {option}", where="skyferry verify", hint="skyferry verify -h shows the options"
        )
    return chosen


@app.command("migrate", context_settings=CONTEXT)
def migrate_command(
    source: Annotated[str, _url("--from", "The source store.")],
    target: Annotated[str | None, _url("--to", "The target store.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep copying new events until SIGINT or SIGTERM (exit 0).")
    ] = False,
    cutover: Annotated[
        bool, typer.Option("--cutover", help="Make the source read-only, drain it, verify, report.")
    ] = False,
    unfence: Annotated[
        bool, typer.Option("--unfence", help="Make the source writable again (roll back a cutover) and exit.")
    ] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            metavar="SECONDS",
            min=0,
            max=MAX_GRACE,
            help=f"Cutover: this long without new events is drained (at most {MAX_GRACE}: the source is read-only).",
        ),
    ] = 2.0,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            metavar="N",
            min=1,
            help="Events per read and write, and per checkpoint [default: 5000; 20000 by copy_from].",
        ),
    ] = None,
    shard: ShardOpt = None,
    transform: TransformOpt = None,
    allow_count_change: AllowCount = False,
    dry_run: DryRun = False,
    dry_run_limit: DryRunLimit = 10,
    concurrency: ConcurrencyOpt = CONCURRENCY,
    as_json: JsonOpt = False,
) -> None:
    """Copy a store into another; follow it live and cut over.

    The copy uses the target's fastest write path and resumes from its checkpoint.
    """
    with _command(as_json):
        given = source
        source = location(source, "--from")
        target = None if target is None else location(target, "--to")
        checked(source, STORE)
        if unfence:
            _unfence(source)
            return
        if target is None:
            raise ConfigurationError(
                "migrate needs --to (or --unfence)", where="--to", hint="skyferry migrate -h shows the options"
            )
        checked(target, STORE)
        the_shard = _shard(shard)
        transformer = _transformer(transform, allow_count_change)
        started = time.monotonic()
        with _store(source, existing=True) as left:
            if dry_run:
                _dry_run(transformer, lambda: _store_events(left, the_shard), dry_run_limit)
                return
            with _store(target) as right, _progress("migrate") as progress:
                views = registry.open_view_store(target)
                try:
                    migration = Migration(
                        left,
                        right,
                        views,
                        shard=the_shard,
                        transformer=transformer,
                        batch=batch,
                        progress=progress,
                        concurrency=concurrency,
                    )
                    try:
                        _run_migration(migration, source, follow=follow, cutover=cutover, grace=grace)
                    except KeyboardInterrupt as e:
                        if migration.report.fenced:  # the source refuses writes until this ends, one way or the other
                            raise _interrupted_while_fenced(e, given) from None
                        raise
                    finally:
                        migration.close()
                finally:
                    views.close()
                report = migration.finish()
        _migrate_summary(report, the_shard, follow=follow, seconds=time.monotonic() - started)


def _migrate_summary(report: MigrateReport, shard: Shard | None, *, follow: bool, seconds: float) -> None:
    read = report.events - report.resumed_events
    copied = (
        f"this run {counts(read, report.written, report.skipped, shard, report.transform)}"
        + (f"; {count(report.events)} copied in all" if report.resumed_events else "")
        + f" (write path {report.write_path}, {duration(seconds)}"
        + (f", {rate(read / seconds)})" if seconds > 0 and read else ")")
    )
    lines = [f"migrated {report.source} to {report.target}: {copied}"]
    verify = report.verify
    if report.fenced:
        if verify is not None:
            lines[:0] = _verify_lines(verify)
        lines.append(f"the source {report.source} is now read-only: the API answers commands with 503")
        rollback = f"to roll back instead: skyferry migrate --from {report.source} --unfence"
        if verify is None:
            lines.append(
                "not verified: the transform changes events on purpose; verify the target against an export "
                "made with the same --transform"
            )
        if verify is not None and not verify.ok:
            output.summary(report.to_json(), lines)
            raise _verify_failed(verify, f"the differences are listed above; the source stays read-only; {rollback}")
        lines.append(f"next: point the app at {report.target} (SKYFERRY_STORE_URL) and restart it; {rollback}")
    elif follow:
        lines.append(
            f"stopped following; it was {'caught up' if report.caught_up else 'behind'} "
            f"(lag {duration(report.lag_seconds or 0.0)})"
        )
        lines.append(
            f"next: run it again to go on, or cut over when the lag stays near 0: "
            f"skyferry migrate --from {report.source} --to {report.target} --cutover"
        )
    else:
        lines.append(
            f"next: skyferry migrate --from {report.source} --to {report.target} --follow "
            "to copy new events as they come, then --cutover"
        )
    output.summary(report.to_json(), lines)


def _unfence(source: str) -> None:
    with _store(source, existing=True):  # the fence is in the source's view store: it must exist
        views = registry.open_view_store(source)
    try:
        fence = views.get(FENCE_COLLECTION, FENCE_KEY)
        was = fence is not None and fence.value.get("fenced") is True
        if was:
            lift_fence(views)
    finally:
        views.close()
    shown = registry.redact(source)
    if was and fence is not None:
        text = (
            f"write fence lifted: {shown} accepts commands again "
            f"(it was fenced since {fence.value.get('since')}: {fence.value.get('reason')})"
        )
    else:
        text = f"{shown} is not fenced: nothing to do (it accepts commands)"
    output.summary({"command": "unfence", "source": shown, "was_fenced": was}, [text])


class Terminated(KeyboardInterrupt):
    """SIGTERM stopped a cutover: it ends as Ctrl-C does, saying so (see :func:`_interrupted_while_fenced`)."""


def _terminate(signum: int, _: Any) -> None:
    raise Terminated(signal.Signals(signum).name)


def _interrupted_while_fenced(stop: KeyboardInterrupt, given: str) -> Interrupted:
    """The error of a cutover stopped after it fenced the source: the source is still read-only; what to do."""
    how = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
    return Interrupted(
        f"interrupted ({how}) during the cutover: the source is still read-only (fenced), the API answers "
        "commands with 503",
        hint=f"{RESUMES}, and finishes the cutover; or make the source writable again: "
        f"skyferry migrate --from {registry.redact(given)} --unfence",
    )


def _run_migration(migration: Migration, source_url: str, *, follow: bool, cutover: bool, grace: float) -> None:
    if cutover:
        on_term = signal.signal(signal.SIGTERM, _terminate)  # as Ctrl-C: the fenced source is reported
        source_views = registry.open_view_store(source_url)
        try:
            migration.cutover(source_views, grace=grace)
        finally:
            source_views.close()
            signal.signal(signal.SIGTERM, on_term)
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
    """Run the sub-app alone (``python -m skyferry.migrate``), with the error policy of ``skyferry``."""
    import sys

    from skyferry.console import run

    sys.exit(run(app, sys.argv[1:]))
