"""The ``skyferry`` command (Typer): serve, worker, alive, rebuild, parked, demo, plan, and the extensions.

Every command follows one error policy (:mod:`skyferry.console`, docs/cli.md): a command raises
a ``SkyferryError`` (its class carries the exit code: 1 a check failed, 2 bad input, 3
transient) and :func:`run` prints it as ``skyferry: error: <what> (<where>)`` plus a ``hint:``
line; 130 is an interrupt.  No command prints an error or exits with a code by itself.

Extensions: other packages add commands by defining a ``typer.Typer()`` called ``app``
in a module listed in :data:`EXTENSIONS`; its commands are mounted at the top level
(``skyferry export``, not ``skyferry migrate export``).  ``plan`` loads ``providers/``
only when called, so an app image without the infra dependencies still works.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import orjson
import typer

from skyferry.console import (
    EXIT_OK,
    CheckFailed,
    configure_logging,
    count,
    duration,
    located,
    output,
    plural,
)
from skyferry.console import run as run_command
from skyferry.core.errors import ConfigurationError, ValidationError
from skyferry.core.ports import count_after
from skyferry.core.worker import WorkerThread
from skyferry.runtime import tune_process
from skyferry.settings import Settings, load_settings

if TYPE_CHECKING:
    from skyferry.core.parking import ParkedEvent, ParkedEvents

log = logging.getLogger(__name__)

EXTENSIONS: Final = ("skyferry.migrate.cli",)
"""Modules whose ``app`` (a ``typer.Typer``) is mounted at the top level."""

CONTEXT: Final = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
"""Click settings of every command: ``-h`` is ``--help``."""

INFRA_INSTALL: Final = "uv sync --all-extras --group infra"
"""Adds the Pulumi side to the app's environment and keeps the database drivers (the extras)."""

MAX_HEARTBEAT_AGE: Final = 86_400
"""The largest ``alive --max-age`` (a day): a worker silent for longer is not alive by any measure."""

SERVE_HINT: Final = (
    "set it to a random secret, e.g. "
    "export SKYFERRY_API_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
)

cli = typer.Typer(
    name="skyferry",
    help="One event-sourced CQRS application on any cloud; move it and its data between clouds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=CONTEXT,
    epilog="Exit codes: 0 ok, 1 a check failed, 2 bad input, 3 transient (safe to run again), 130 interrupted. "
    "Settings: SKYFERRY_* environment variables. See docs/cli.md.",
)


def setting_default(name: str) -> str:
    """The help's ``[default: …]`` of an option that overrides the setting ``name``: its effective value."""
    from skyferry.adapters.registry import redact

    variable = f"SKYFERRY_{name.upper()}"
    value = os.environ.get(variable)
    if value is not None:
        return f"[default: {redact(value)}, from {variable}]"
    return f"[default: {Settings.model_fields[name].default}, or set {variable}]"


StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store", metavar="URL", help=f"Event and view store.  {setting_default('store_url')}", show_default=False
    ),
]
BrokerOpt = Annotated[
    str | None,
    typer.Option("--broker", metavar="URL", help=f"Broker.  {setting_default('broker_url')}", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON document instead of text.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"skyferry {importlib.metadata.version('skyferry')}")
        raise typer.Exit(EXIT_OK)


@cli.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_version, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs (also SKYFERRY_LOG_LEVEL=debug).")
    ] = False,
) -> None:
    """One event-sourced CQRS application on any cloud; move it and its data between clouds.

    Exit codes: 0 ok, 1 a check failed, 2 bad input, 3 transient failure (safe to run again),
    130 interrupted.  Settings: SKYFERRY_* environment variables (docs/cli.md).
    """
    if debug:
        output.debug = True


OPTION_OF: Final = {"store_url": "--store", "broker_url": "--broker", "host": "--host", "port": "--port"}
"""The option that overrides each setting (for messages)."""


def load(store: str | None = None, broker: str | None = None, **more: Any) -> Settings:
    """The settings, with the options given overriding the environment; a bad one is a ConfigurationError.

    An option not given is ``None``; any other value is used as given (``--port 0``: any free
    port), and an empty text (``--store ""``) is refused naming the option, never replaced by
    the default.
    """
    given = {"store_url": store, "broker_url": broker, **more}
    for name, value in given.items():
        not_empty(OPTION_OF.get(name, f"--{name.replace('_', '-')}"), value)
    return load_settings(**{k: v for k, v in given.items() if v is not None})


def not_empty(option: str, value: object) -> None:
    """Refuse an empty text given to ``option``: it is a mistake (an unset shell variable), not "the default"."""
    if isinstance(value, str) and not value.strip():
        wanted = "an address (0.0.0.0 listens on every one)" if option == "--host" else "a URL"
        raise ConfigurationError(f"{option} is empty: give {wanted}, or leave the option out", where=option)


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, debug=output.debug)


def _heartbeat(settings: Settings) -> Callable[[], None]:
    """The worker's heartbeat: touches ``SKYFERRY_HEARTBEAT_FILE`` (nothing when it is unset)."""
    from skyferry.heartbeat import Heartbeat, no_beat

    return Heartbeat(settings.heartbeat_file).beat if settings.heartbeat_file else no_beat


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop``: a command that runs until stopped then ends cleanly (exit 0)."""

    def handler(signum: int, _: Any) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free one); a taken address is a ConfigurationError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        taken = e.errno == 98 or "in use" in str(e.strerror)
        hint = (
            "another process listens there: stop it, or choose another port (--port or SKYFERRY_PORT)"
            if taken
            else "choose an address of this machine (--host or SKYFERRY_HOST)"
        )
        reason = (e.strerror or str(e)).lower()
        raise ConfigurationError(f"cannot listen: {reason}", where=f"{host}:{port}", hint=hint) from e
    return sock


@cli.command(context_settings=CONTEXT)
def serve(
    store: StoreOpt = None,
    broker: BrokerOpt = None,
    host: Annotated[
        str | None,
        typer.Option(metavar="ADDRESS", help=f"Address to listen on.  {setting_default('host')}", show_default=False),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT", min=0, max=65535, help=f"Port to listen on.  {setting_default('port')}", show_default=False
        ),
    ] = None,
    worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker",
            help="Run the worker in this process too.  [default: --worker with the memory:// broker, else --no-worker]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (needs SKYFERRY_API_TOKEN).

    It checks the store and the port first; SIGINT or SIGTERM stops it (exit 0).
    """
    import uvicorn

    from skyferry.api.app import create_app
    from skyferry.bootstrap import bootstrap

    settings = load(store, broker, host=host, port=port)
    _configure_logging(settings)
    with located(hint=SERVE_HINT):
        settings.require_token()
    listening = listen_socket(settings.host, settings.port)
    ledger = bootstrap(settings)
    stop = threading.Event()
    thread: WorkerThread | None = None
    try:
        ledger.events.last_position()  # fail fast on a corrupt, read-only or unreachable store
        ledger.views.get_checkpoint("$startup-check")
        app = create_app(settings, ledger)
        if worker if worker is not None else settings.broker_url.startswith("memory:"):
            thread = ledger.start_worker(
                stop, settings.worker_interval, beat=_heartbeat(settings), max_idle=settings.worker_max_idle
            )
        _stop_on_signals(stop)  # uvicorn handles the signals while it serves, then passes them here
        host, port = listening.getsockname()[:2]
        log.info("serve: listening on http://%s:%d, store %s (Ctrl-C to stop)", host, port, ledger.events.url)
        config = uvicorn.Config(app, log_level=settings.log_level, log_config=None)
        uvicorn.Server(config).run(sockets=[listening])
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=30)
        ledger.close()
        listening.close()


@cli.command(context_settings=CONTEXT)
def worker(
    store: StoreOpt = None,
    broker: BrokerOpt = None,
    once: Annotated[bool, typer.Option("--once", help="One pass until caught up, then exit.")] = False,
) -> None:
    """Run the relay, the transfer process manager and the projections.

    Until SIGINT or SIGTERM (exit 0), backing off while a service is unreachable; --once: until caught up.
    """
    from skyferry.bootstrap import bootstrap
    from skyferry.heartbeat import health_endpoint

    settings = load(store, broker)
    _configure_logging(settings)
    with health_endpoint(settings.heartbeat_file, settings.health_port, settings.health_max_age):
        beat = _heartbeat(settings)
        beat()  # a fresh start: a file left by an earlier run of this container must not count
        ledger = bootstrap(settings)
        try:
            if once:
                handled = ledger.run_worker_once()
                typer.echo(
                    f"worker: caught up ({count(handled)} event handlings by the relay, the transfer process "
                    f"manager and the {len(ledger.projections)} read models)"
                )
                return
            stop = threading.Event()
            _stop_on_signals(stop)
            log.info("worker: running on %s (Ctrl-C to stop)", ledger.events.url)
            ledger.run_worker(stop, settings.worker_interval, beat=beat, max_idle=settings.worker_max_idle)
        finally:
            ledger.close()


@cli.command(context_settings=CONTEXT)
def alive(
    max_age: Annotated[
        float,
        typer.Option(
            "--max-age",
            metavar="SECONDS",
            min=1,
            max=MAX_HEARTBEAT_AGE,
            help=f"Seconds since the worker's last heartbeat that still count (1 to {MAX_HEARTBEAT_AGE}).",
        ),
    ] = 120,
) -> None:
    """Liveness probe: exit 0 when the worker's heartbeat is fresh.

    Exit 0 when the worker touched SKYFERRY_HEARTBEAT_FILE within --max-age seconds, 1 when it did not.
    """
    from skyferry.heartbeat import age_seconds

    settings = load()
    if not settings.heartbeat_file:
        raise ConfigurationError(
            "the worker keeps no heartbeat to check",
            where="SKYFERRY_HEARTBEAT_FILE is not set",
            hint="set SKYFERRY_HEARTBEAT_FILE to the same file for the worker and for this check",
        )
    with located("SKYFERRY_HEARTBEAT_FILE", "start the worker with the same SKYFERRY_HEARTBEAT_FILE"):
        age = age_seconds(settings.heartbeat_file)
    if age > max_age:
        raise CheckFailed(
            f"not alive: the worker's last heartbeat was {duration(age)} ago, over the limit of {duration(max_age)}",
            where=f"SKYFERRY_HEARTBEAT_FILE {settings.heartbeat_file}",
            hint="the worker has hung or stopped; restarting it is safe",
        )
    typer.echo(f"alive: the worker's last heartbeat was {duration(age)} ago (limit {duration(max_age)})")


@cli.command(context_settings=CONTEXT)
def rebuild(
    projection: Annotated[
        str, typer.Argument(metavar="READ_MODEL", help="balances, history, daily_totals or transfers.")
    ],
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Blue/green rebuild of a read model.

    It builds the next version beside the live one, switches, and drops the old.
    """
    from skyferry.adapters.registry import open_event_store
    from skyferry.bootstrap import bootstrap
    from skyferry.migrate.progress import Progress

    output.json = json_output
    settings = load(store, "memory://")
    open_event_store(settings.store_url, existing=True).close()  # a rebuild reads: it never creates a store
    ledger = bootstrap(settings)
    try:
        with located("READ_MODEL"), Progress("rebuild", mode="json" if json_output else None) as progress:
            progress.total = count_after(ledger.events)
            report = ledger.rebuild(projection, on_progress=progress.advance)
            progress.finish()
    finally:
        ledger.close()
    output.summary(
        report.to_dict(),
        [
            f"rebuilt {report.projection}: generation {report.old_generation} -> {report.new_generation}, "
            f"{count(report.events)} events read, {count(report.documents)} documents written, "
            f"in {duration(report.seconds)}",
            "the live read model now serves the new generation; the old one is dropped",
        ],
    )


parked_cli = typer.Typer(
    help="Events a handler kept failing on (parked): list them, retry them after a fix, or skip them.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=CONTEXT,
)
cli.add_typer(parked_cli, name="parked")
KeysArg = Annotated[
    list[str], typer.Argument(metavar="KEY...", help="Keys of parked events, as `skyferry parked list` shows them.")
]


@contextlib.contextmanager
def _parked_events(store: str | None) -> Iterator[ParkedEvents]:
    """The parked events of the store ``--store`` names; a store that does not exist is refused, not created."""
    from skyferry.adapters.registry import open_event_store
    from skyferry.bootstrap import bootstrap

    settings = load(store, "memory://")
    open_event_store(settings.store_url, existing=True).close()  # a typo must not give an empty store
    ledger = bootstrap(settings)
    try:
        yield ledger.parked
    finally:
        ledger.close()


def _checked_keys(parked: ParkedEvents, keys: list[str], doing: str) -> list[str]:
    """``keys`` without repeats, once every one names a parked event: a bad key changes nothing."""
    wanted = list(dict.fromkeys(keys))
    missing = [key for key in wanted if not parked.exists(key)]
    if missing:
        hint = f"nothing was {doing}: every KEY must name a parked event" if len(wanted) > 1 else None
        raise ValidationError(
            f"no parked event {', '.join(repr(key) for key in missing)} (see skyferry parked list)",
            where="KEY" if len(wanted) > 1 else None,
            hint=hint,
        )
    return wanted


@parked_cli.command("list", context_settings=CONTEXT)
def parked_list(store: StoreOpt = None, json_output: JsonOpt = False) -> None:
    """List the parked events, oldest first: which runner, which event, the error."""
    output.json = json_output
    with _parked_events(store) as parked:
        found = parked.list()
    if output.json:
        typer.echo(orjson.dumps([one.to_dict() for one in found]).decode())
        return
    for one in found:
        typer.echo(
            f"{one.key}  {one.stream_id} v{one.version} {one.type}  "
            f"parked {one.parked_at} after {plural(one.attempts, 'attempt')}: {one.error}"
        )
    typer.echo(f"{count(len(found))} parked event(s)")


@parked_cli.command("retry", context_settings=CONTEXT)
def parked_retry(keys: KeysArg, store: StoreOpt = None, json_output: JsonOpt = False) -> None:
    """Apply parked events again, one by one (after a fix is deployed); exit 1 if any fails again.

    Every key is checked first: a key that names no parked event changes nothing.
    """
    output.json = json_output
    outcomes: dict[str, str | None] = {}
    with _parked_events(store) as parked:
        wanted = _checked_keys(parked, keys, "retried")
        try:
            for key in wanted:
                with located(f"KEY {key}"):
                    again = parked.retry(key)
                outcomes[key] = None if again is None else again.error
        finally:  # what was done is said, even when a later key failed
            if output.json:
                typer.echo(
                    orjson.dumps([{"key": k, "applied": e is None, "error": e} for k, e in outcomes.items()]).decode()
                )
            else:
                for key, error in outcomes.items():
                    typer.echo(f"{key}: applied" if error is None else f"{key}: failed again, still parked: {error}")
    failed = [key for key, error in outcomes.items() if error is not None]
    if failed:
        raise CheckFailed(
            f"{plural(len(failed), 'parked event')} failed again: {', '.join(failed)}",
            hint="fix the handler and retry, or skip them (skyferry parked skip KEY...)",
        )


@parked_cli.command("skip", context_settings=CONTEXT)
def parked_skip(keys: KeysArg, store: StoreOpt = None, json_output: JsonOpt = False) -> None:
    """Release parked events without applying them (the runner never will).

    Every key is checked first: a key that names no parked event changes nothing.
    """
    output.json = json_output
    skipped: list[ParkedEvent] = []
    with _parked_events(store) as parked:
        wanted = _checked_keys(parked, keys, "skipped")
        try:
            for key in wanted:
                with located(f"KEY {key}"):
                    skipped.append(parked.skip(key))
        finally:  # what was done is said, even when a later key failed
            if output.json:
                typer.echo(orjson.dumps([one.to_dict() for one in skipped]).decode())
            else:
                for one in skipped:
                    typer.echo(f"{one.key}: skipped")


@cli.command(context_settings=CONTEXT)
def demo(
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            metavar="URL",
            help="Keep the data in this store.  [default: a fresh SQLite file in a temporary directory]",
            show_default=False,
        ),
    ] = None,
    broker: Annotated[
        str | None, typer.Option("--broker", metavar="URL", help="Broker.  [default: memory://]", show_default=False)
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary SQLite files and print their paths.")
    ] = False,
) -> None:
    """The main job on the embedded default, checked end to end.

    The API, a workload through HTTP, a live move to a second store; exit 1 if any check fails.
    """
    from skyferry.demo import run_demo

    not_empty("--store", store)
    not_empty("--broker", broker)
    failed = run_demo(store=store, broker=broker, keep=keep)
    if failed:
        raise CheckFailed(f"{len(failed)} demo check(s) failed: {', '.join(failed)}", hint="the report above says why")


@cli.command(context_settings=CONTEXT)
def plan(
    stack: Annotated[str, typer.Option("--stack", metavar="NAME", help="Stack name (stacks/Pulumi.<NAME>.yaml).")],
    format: Annotated[
        Literal["table", "json", "mermaid"],
        typer.Option("--format", metavar="FORMAT", help="table, json or mermaid."),
    ] = "table",
) -> None:
    """Offline: what `pulumi up` would create, with policy findings.

    Needs the infra dependency group: uv run --group infra skyferry plan --stack NAME.
    """
    checkout = Path(__file__).resolve().parents[2]  # app/skyferry/cli.py -> the repository
    if not (checkout / "providers" / "plan.py").is_file():
        raise ConfigurationError(
            "`skyferry plan` runs in a checkout of the repository (it reads providers/ and stacks/) "
            "with the infra dependency group; this skyferry is installed without them",
            hint="in the checkout: uv run --group infra skyferry plan --stack NAME",
        )
    if str(checkout) not in sys.path:
        sys.path.append(str(checkout))  # providers/ is not part of the installed package
    try:
        from providers.plan import RENDERERS, make_plan
    except ImportError as e:
        raise ConfigurationError(
            f"`skyferry plan` needs the infra dependency group, which is not installed ({e.name} is missing)",
            hint=f"{INFRA_INSTALL}  (or run it as: uv run --group infra skyferry plan ...)",
        ) from e
    with located("--stack"):
        the_plan = make_plan(stack)
    typer.echo(RENDERERS[format](the_plan))
    if the_plan.findings:
        raise CheckFailed(f"{len(the_plan.findings)} policy finding(s) in stack {stack!r}", hint="listed above")


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


def run(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) of ``skyferry``, extensions mounted; the exit code.

    Any failure is printed in the one shape (:func:`skyferry.console.run`).
    """
    mount_extensions(cli)
    return run_command(cli, sys.argv[1:] if argv is None else list(argv))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``skyferry`` (``skyferry.cli:main``): tunes the process, runs ``argv``."""
    tune_process()
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
