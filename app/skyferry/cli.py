"""The ``skyferry`` command (Typer): ``serve``, ``worker``, ``alive``, ``rebuild``, ``parked``, ``demo``, extensions.

Exit codes (docs/cli.md): 0 ok, 1 a check failed, 2 bad input (a setting, a URL,
a corrupt or read-only file), 3 a transient failure (safe to run again).

Extensions: other packages add commands by defining a ``typer.Typer()`` called ``app``
in a module listed in :data:`EXTENSIONS`; its commands are mounted at the top level
(``skyferry export``, not ``skyferry migrate export``).  ``plan`` loads ``providers/``
only when called, so an app image without the infra dependencies still works.  See
``docs/cli.md``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Final, NoReturn

import orjson
import typer

from skyferry.core.errors import (
    ConcurrencyError,
    ConfigurationError,
    SkyferryError,
    TransientError,
    ValidationError,
)
from skyferry.core.worker import WorkerThread
from skyferry.runtime import tune_process
from skyferry.settings import Settings, load_settings

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_CHECK_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_TRANSIENT: Final = 3

EXTENSIONS: Final = ("skyferry.migrate.cli",)
"""Modules whose ``app`` (a ``typer.Typer``) is mounted at the top level."""

cli = typer.Typer(
    name="skyferry",
    help="One event-sourced CQRS application on any cloud; move it and its data between clouds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Store URL (default: SKYFERRY_STORE_URL or sqlite:///skyferry.db).")
]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="Broker URL (default: SKYFERRY_BROKER_URL or memory://).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON document instead of text.")]


def exit_code_of(error: BaseException) -> int:
    """The exit code for an error: 3 transient, 1 concurrency (a check), 2 everything else we raise."""
    if isinstance(error, TransientError):
        return EXIT_TRANSIENT
    if isinstance(error, ConcurrencyError):
        return EXIT_CHECK_FAILED
    return EXIT_BAD_INPUT


def fail(error: BaseException) -> NoReturn:
    """Print ``error`` on stderr (one clear line) and exit with its code."""
    kind = {EXIT_TRANSIENT: "transient failure (safe to retry)", EXIT_CHECK_FAILED: "check failed"}.get(
        exit_code_of(error), "error"
    )
    typer.echo(f"skyferry: {kind}: {error}", err=True)
    raise typer.Exit(exit_code_of(error))


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Turn skyferry errors into a message and an exit code (no traceback for expected failures)."""
    try:
        yield
    except SkyferryError as e:
        fail(e)


def _settings(store: str | None = None, broker: str | None = None, **more: Any) -> Settings:
    overrides: dict[str, Any] = {k: v for k, v in {"store_url": store, "broker_url": broker, **more}.items() if v}
    with translated_errors():
        return load_settings(**overrides)


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=False
    )


def _heartbeat(settings: Settings) -> Callable[[], None]:
    """The worker's heartbeat: touches ``SKYFERRY_HEARTBEAT_FILE`` (nothing when it is unset)."""
    from skyferry.heartbeat import Heartbeat, no_beat

    return Heartbeat(settings.heartbeat_file).beat if settings.heartbeat_file else no_beat


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


@cli.command()
def serve(
    store: StoreOpt = None,
    broker: BrokerOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default SKYFERRY_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default SKYFERRY_PORT).")] = None,
    worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker",
            help="Run the worker in this process too (default: yes with the in-process memory:// broker).",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (needs SKYFERRY_API_TOKEN)."""
    import uvicorn

    from skyferry.api.app import create_app
    from skyferry.bootstrap import bootstrap

    settings = _settings(store, broker, host=host, port=port)
    _configure_logging(settings)
    with translated_errors():
        settings.require_token()
        ledger = bootstrap(settings)
    stop = threading.Event()
    thread: WorkerThread | None = None
    try:
        with translated_errors():
            ledger.events.last_position()  # fail fast on a corrupt, read-only or unreachable store
            ledger.views.get_checkpoint("$startup-check")
        app = create_app(settings, ledger)
        if worker if worker is not None else settings.broker_url.startswith("memory:"):
            thread = ledger.start_worker(stop, settings.worker_interval, beat=_heartbeat(settings))
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=30)
        ledger.close()


@cli.command()
def worker(
    store: StoreOpt = None,
    broker: BrokerOpt = None,
    once: Annotated[bool, typer.Option("--once", help="One pass until caught up, then exit.")] = False,
) -> None:
    """Run the relay, the transfer process manager and the projections."""
    from skyferry.bootstrap import bootstrap

    settings = _settings(store, broker)
    _configure_logging(settings)
    with translated_errors():
        beat = _heartbeat(settings)
        beat()  # a fresh start: a file left by an earlier run of this container must not count
        ledger = bootstrap(settings)
        try:
            if once:
                handled = ledger.run_worker_once()
                typer.echo(f"worker: handled {handled} event(s); caught up")
                return
            stop = threading.Event()
            _stop_on_signals(stop)
            log.info("worker: running on %s (Ctrl-C to stop)", ledger.events.url)
            ledger.run_worker(stop, settings.worker_interval, beat=beat)
        finally:
            ledger.close()


@cli.command()
def alive(
    max_age: Annotated[
        float, typer.Option("--max-age", min=1, help="Seconds since the worker's last heartbeat that still count.")
    ] = 120,
) -> None:
    """Liveness check for probes: exit 0 when the worker touched SKYFERRY_HEARTBEAT_FILE within --max-age seconds."""
    from skyferry.heartbeat import age_seconds

    settings = _settings()
    with translated_errors():
        if not settings.heartbeat_file:
            raise ConfigurationError("SKYFERRY_HEARTBEAT_FILE is not set: the worker keeps no heartbeat to check")
        age = age_seconds(settings.heartbeat_file)
    if age > max_age:
        typer.echo(f"not alive: the worker's last heartbeat was {age:.0f} s ago (limit {max_age:g} s)", err=True)
        raise typer.Exit(EXIT_CHECK_FAILED)
    typer.echo(f"alive: the worker's last heartbeat was {age:.0f} s ago")


@cli.command()
def rebuild(
    projection: Annotated[str, typer.Argument(help="Read model: balances, history, daily_totals, transfers.")],
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Blue/green rebuild of a read model: build the next version beside the live one, switch, drop the old."""
    from skyferry.bootstrap import bootstrap

    settings = _settings(store, "memory://")
    with translated_errors():
        ledger = bootstrap(settings)
        try:
            report = ledger.rebuild(projection)
        finally:
            ledger.close()
    if json_output:
        typer.echo(orjson.dumps(report.to_dict()).decode())
        return
    typer.echo(
        f"rebuilt {report.projection}: generation {report.old_generation} -> {report.new_generation}, "
        f"{report.events:,} events, {report.documents:,} documents, {report.seconds:.2f} s "
        f"({report.events_per_second:,.0f} events/s)"
    )


parked_cli = typer.Typer(
    help="Events a handler kept failing on (parked): list them, retry them after a fix, or skip them.",
    no_args_is_help=True,
)
cli.add_typer(parked_cli, name="parked")
KeysArg = Annotated[list[str], typer.Argument(help="Keys of parked events, as `skyferry parked list` shows them.")]


@parked_cli.command("list")
def parked_list(store: StoreOpt = None, json_output: JsonOpt = False) -> None:
    """List the parked events, oldest first: which runner, which event, the error."""
    from skyferry.bootstrap import bootstrap

    with translated_errors():
        ledger = bootstrap(_settings(store, "memory://"))
        try:
            found = ledger.parked.list()
        finally:
            ledger.close()
    if json_output:
        typer.echo(orjson.dumps([parked.to_dict() for parked in found]).decode())
        return
    for parked in found:
        typer.echo(
            f"{parked.key}  {parked.stream_id} v{parked.version} {parked.type}  "
            f"parked {parked.parked_at} after {parked.attempts} attempt(s): {parked.error}"
        )
    typer.echo(f"{len(found)} parked event(s)")


@parked_cli.command("retry")
def parked_retry(keys: KeysArg, store: StoreOpt = None, json_output: JsonOpt = False) -> None:
    """Apply parked events again, one by one (after a fix is deployed); exit 1 if any fails again."""
    from skyferry.bootstrap import bootstrap

    outcomes: dict[str, Any] = {}
    with translated_errors():
        ledger = bootstrap(_settings(store, "memory://"))
        try:
            for key in keys:
                again = ledger.parked.retry(key)
                outcomes[key] = None if again is None else again.error
        finally:
            ledger.close()
    if json_output:
        typer.echo(orjson.dumps([{"key": k, "applied": e is None, "error": e} for k, e in outcomes.items()]).decode())
    else:
        for key, error in outcomes.items():
            typer.echo(f"{key}: applied" if error is None else f"{key}: failed again, still parked: {error}")
    if any(error is not None for error in outcomes.values()):
        raise typer.Exit(EXIT_CHECK_FAILED)


@parked_cli.command("skip")
def parked_skip(keys: KeysArg, store: StoreOpt = None, json_output: JsonOpt = False) -> None:
    """Release parked events without applying them (the runner never will)."""
    from skyferry.bootstrap import bootstrap

    with translated_errors():
        ledger = bootstrap(_settings(store, "memory://"))
        try:
            skipped = [ledger.parked.skip(key) for key in keys]
        finally:
            ledger.close()
    if json_output:
        typer.echo(orjson.dumps([parked.to_dict() for parked in skipped]).decode())
        return
    for parked in skipped:
        typer.echo(f"{parked.key}: skipped")


@cli.command()
def demo(
    store: Annotated[
        str | None, typer.Option("--store", help="Keep the data in this store (default: a fresh SQLite file).")
    ] = None,
    broker: Annotated[str | None, typer.Option("--broker", help="Broker URL (default memory://).")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary SQLite file and print its path.")] = False,
) -> None:
    """The main job on the embedded default: API on a free port, a workload through HTTP, checks, a report."""
    from skyferry.demo import run_demo

    with translated_errors():
        code = run_demo(store=store, broker=broker, keep=keep)
    raise typer.Exit(code)


@cli.command()
def plan(
    stack: Annotated[str, typer.Option("--stack", help="Stack name (stacks/Pulumi.<NAME>.yaml).")],
    format: Annotated[str, typer.Option("--format", help="table, json or mermaid.")] = "table",
) -> None:
    """Offline: what `pulumi up` would create for a stack, with policy findings (needs the infra group)."""
    try:
        from providers.plan import command
    except ImportError as e:
        fail(ConfigurationError(f"`skyferry plan` needs the infra dependencies ({e.name}): uv sync --group infra"))
    with translated_errors():
        code = command(stack, format)
    raise typer.Exit(code)


_mounted: set[tuple[int, str]] = set()


def mount_extensions(target: typer.Typer, modules: tuple[str, ...] = EXTENSIONS) -> list[str]:
    """Mount each module's ``app`` on ``target`` at the top level; return the modules mounted.

    A module that is not there yet is skipped (a partial checkout); any other import
    error is raised, so that a broken extension is noticed.
    """
    mounted = []
    for name in modules:
        if (id(target), name) in _mounted:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue
            raise
        sub: typer.Typer = module.app
        target.add_typer(sub)
        _mounted.add((id(target), name))
        mounted.append(name)
    return mounted


def run(argv: list[str] | None = None, entry: Callable[..., Any] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    if entry is None:
        mount_extensions(cli)
        entry = cli
    try:
        entry(args=argv, prog_name="skyferry", standalone_mode=True)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else EXIT_BAD_INPUT)
    except (ConfigurationError, ValidationError) as e:
        typer.echo(f"skyferry: error: {e}", err=True)
        return EXIT_BAD_INPUT
    except TransientError as e:
        typer.echo(f"skyferry: transient failure (safe to retry): {e}", err=True)
        return EXIT_TRANSIENT
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``skyferry`` (``skyferry.cli:main``): tunes the process, runs ``argv``."""
    tune_process()
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
