"""What the ``skyferry`` command prints: errors in one shape, numbers in one format, logs on one line.

Errors (docs/cli.md).  Every failure is one line on stderr, ``skyferry: error: <what> (<where>)``,
and, when something useful can be said, one ``hint: <what to do>`` line; with ``--json`` the
same goes to stdout as a JSON line.  :func:`problem_of` turns any exception into a
:class:`Problem` (its exit code comes from the error's class: ``SkyferryError.exit_code``), and
:func:`report` prints it.  ``--debug`` or ``SKYFERRY_LOG_LEVEL=debug`` adds the traceback;
only an unexpected exception (a bug) shows one without.

Logs.  :func:`configure_logging` puts every record on one line: an expected error (a
``SkyferryError`` or an ``OSError``) attached to a record shows as its first line instead of a
traceback, and :class:`OutageFilter` logs a retrying loop's failure once per change of state.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TextIO

import orjson
import typer

from skyferry.core.errors import SkyferryError

EXIT_OK: Final = 0
EXIT_CHECK_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_TRANSIENT: Final = 3
EXIT_INTERNAL: Final = 70
EXIT_INTERRUPTED: Final = 130

TRANSIENT_HINT: Final = "running the same command again is safe once the service answers (nothing was half-written)"
INTERNAL_HINT: Final = "this is a bug in skyferry: the traceback above shows where; please report it"


class CheckFailed(SkyferryError):
    """A check the command exists to make did not pass (a demo check, a stale heartbeat, a policy finding)."""

    exit_code: ClassVar[int] = EXIT_CHECK_FAILED


class Interrupted(SkyferryError):
    """The command was stopped by Ctrl-C (SIGINT) before it finished."""

    exit_code: ClassVar[int] = EXIT_INTERRUPTED


# -- numbers -------------------------------------------------------------------------------------


def count(n: int) -> str:
    """A count, the one way every output writes it: ``200,000``."""
    return f"{n:,}"


def plural(n: int, noun: str) -> str:
    """``1 event``, ``200,000 events``."""
    return f"{count(n)} {noun}{'' if n == 1 else 's'}"


def rate(per_second: float, noun: str = "events") -> str:
    """``4,321 events/s``."""
    return f"{per_second:,.0f} {noun}/s"


def duration(seconds: float) -> str:
    """``0.4 s``, ``12.3 s`` under a minute; ``1:02:03`` (h:mm:ss) from a minute on."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def size(n: int) -> str:
    """``1,657 bytes`` below a megabyte, ``12.3 MB`` from there on."""
    return plural(n, "byte") if n < 1_000_000 else f"{n / 1_000_000:,.1f} MB"


# -- output --------------------------------------------------------------------------------------


class Output:
    """Where a command writes: text for people, or (``--json``) one JSON document per line on stdout."""

    def __init__(self) -> None:
        self.json = False
        self.debug = False

    def reset(self, *, debug: bool = False) -> None:
        """Back to text (each run of a command starts here)."""
        self.json = False
        self.debug = debug or os.environ.get("SKYFERRY_LOG_LEVEL", "").lower() == "debug"

    def emit(self, kind: str, doc: Mapping[str, Any]) -> None:
        """Write ``{"kind": kind, **doc}`` as one JSON line on stdout (``kind``: progress, summary, error)."""
        sys.stdout.write(orjson.dumps({"kind": kind, **doc}).decode() + "\n")
        sys.stdout.flush()

    def summary(self, doc: Mapping[str, Any], lines: Iterable[str]) -> None:
        """The command's result: ``doc`` as a JSON line with ``--json``, else ``lines`` on stdout."""
        if self.json:
            self.emit("summary", doc)
            return
        for line in lines:
            typer.echo(line)


output: Final = Output()
"""The output of this process's command (a process runs one command)."""


# -- errors --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """A failure as the command prints it."""

    what: str
    where: str | None
    hint: str | None
    exit_code: int

    def lines(self) -> list[str]:
        """The one error line (the where left out when the what names it already), and the hint line."""
        named = not self.where or self.where in self.what
        first = f"skyferry: error: {self.what}" + ("" if named else f" ({self.where})")
        return [first] if not self.hint else [first, f"hint: {self.hint}"]

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"error": self.what, "where": self.where, "hint": self.hint, "exit_code": self.exit_code}


_BAD_INPUT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def inputs_of(argv: Iterable[str], environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The user's inputs that can name a place: ``(--option, value)`` from ``argv``, then ``SKYFERRY_*`` settings.

    Only values that look like a URL or a path (they hold ``/`` or ``:``) count.
    """
    found: list[tuple[str, str]] = []
    args = list(argv)
    for index, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg.partition("=")
        if not eq:
            following = args[index + 1] if index + 1 < len(args) else ""
            if following.startswith("-"):
                continue
            value = following
        found.append((name, value))
    environ = os.environ if environ is None else environ
    found += [(name, value) for name, value in sorted(environ.items()) if name.startswith("SKYFERRY_")]
    return [(name, value) for name, value in found if len(value) >= 3 and ("/" in value or ":" in value)]


def _locate(what: str, inputs: Iterable[tuple[str, str]]) -> tuple[str, str | None]:
    """``what`` and the input it names; a message that starts with the input (``URL: ...``) moves it to the where.

    A URL is found by its part after any credentials, which messages print redacted, and a
    ``sqlite:///`` URL by its file's path too.
    """
    head, colon, rest = what.partition(": ")
    for name, value in inputs:
        tail = value.rpartition("@")[2].partition("?")[0] if "://" in value else value
        path = value.partition(":///")[2] if value.startswith("sqlite:///") else ""
        scheme = value.partition("://")[0] + "://"
        if colon and (head == value or (tail != value and head.startswith(scheme) and head.endswith(tail))):
            return rest, f"{name} {head}"
        escaped = value.encode("utf-8", "backslashreplace").decode()  # bytes that are not UTF-8, as repr() shows them
        if any(len(shown) >= 3 and shown in what for shown in (value, tail, path, escaped)):
            return what, name
    return what, None


def _first_lower(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _then(first: str | None, second: str) -> str:
    """Two pieces of advice as one hint."""
    if not first:
        return second
    return f"{first}{'' if first[-1] in '.?!' else '.'} {second[:1].upper()}{second[1:]}"


def problem_of(error: BaseException, inputs: Iterable[tuple[str, str]] = ()) -> Problem:
    """How ``error`` is printed: its message's first line as the what, the input it names as the where.

    A message's further lines (libpq adds a second one) become the hint when the error has none.
    """
    if isinstance(error, SkyferryError):
        first, *rest = str(error).strip().splitlines() or [type(error).__name__]
        extra = " ".join(line.strip() for line in rest) or None
        what, where = _locate(first, inputs) if error.where is None else (first, error.where)
        hint = error.hint or (_then(extra, TRANSIENT_HINT) if error.exit_code == EXIT_TRANSIENT else extra)
        return Problem(what, where, hint, error.exit_code)
    if isinstance(error, KeyboardInterrupt):
        return Problem("interrupted (Ctrl-C)", None, None, EXIT_INTERRUPTED)
    if isinstance(error, typer.TyperException):
        return _usage_problem(error)
    if isinstance(error, OSError):
        code = EXIT_BAD_INPUT if isinstance(error, _BAD_INPUT_OS_ERRORS) else EXIT_TRANSIENT
        what = _first_lower(error.strerror or str(error) or type(error).__name__)
        where = str(error.filename) if error.filename is not None else None
        return Problem(what, where, _then(None, TRANSIENT_HINT) if code == EXIT_TRANSIENT else None, code)
    return Problem(f"unexpected {type(error).__name__}: {error}", None, INTERNAL_HINT, EXIT_INTERNAL)


def _usage_problem(error: typer.TyperException) -> Problem:
    """A command-line mistake (Typer's usage errors): what, which option, and where to read about it."""
    ctx = getattr(error, "ctx", None)
    path = ctx.command_path if ctx is not None else "skyferry"
    hint = f"{path} -h shows the options"
    param = getattr(error, "param", None)
    option = getattr(error, "option_name", None) or (
        "/".join(param.opts) if param is not None and getattr(param, "opts", None) else None
    )
    message = error.message
    if param is not None and param.param_type_name == "argument":
        option = param.metavar or (param.name or "").upper()
    if type(error).__name__ == "MissingParameter":
        kind = "argument" if param is not None and param.param_type_name == "argument" else "option"
        return Problem(f"missing {kind} {option or ''}".rstrip(), path, hint, EXIT_BAD_INPUT)
    if type(error).__name__ == "NoSuchOption":
        close = difflib.get_close_matches(option or "", list(getattr(error, "possibilities", None) or ()), n=1)
        if close:
            hint = f"did you mean {close[0]}? ({hint})"
        return Problem(f"no such option {option}", path, hint, EXIT_BAD_INPUT)
    if message.startswith("No such command"):
        what, _, suggestion = message.rstrip(".").partition(". ")
        hint = f"{path} -h lists the commands"
        return Problem(
            _first_lower(what), path, f"{_first_lower(suggestion)} ({hint})" if suggestion else hint, EXIT_BAD_INPUT
        )
    if param is not None:
        message = message.removeprefix("Value error, ").rstrip(".")
        return Problem(_first_lower(message), option, hint, EXIT_BAD_INPUT)
    return Problem(_first_lower(message.rstrip(".")), path, hint, int(getattr(error, "exit_code", EXIT_BAD_INPUT)))


def report(error: BaseException, inputs: Iterable[tuple[str, str]] = (), err: TextIO | None = None) -> int:
    """Print ``error`` in the one shape (stderr; and stdout with ``--json``); return its exit code."""
    err = err or sys.stderr
    problem = problem_of(error, inputs)
    if output.debug or problem.exit_code == EXIT_INTERNAL:
        traceback.print_exception(error, file=err)
    err.write("\n".join(problem.lines()) + "\n")
    err.flush()
    if output.json:
        output.emit("error", problem.to_json())
    return problem.exit_code


@contextmanager
def located(where: str | None = None, hint: str | None = None) -> Iterator[None]:
    """Name the input at fault (and what to do) for a ``SkyferryError`` raised inside, unless it names one."""
    try:
        yield
    except SkyferryError as e:
        if e.where is None:
            e.where = where
        if e.hint is None:
            e.hint = hint
        raise


def run(command: typer.Typer, argv: list[str]) -> int:
    """Run ``command`` on ``argv``; print any failure in the one shape; return the exit code.

    Typer's own handling is bypassed (``standalone_mode=False``) so that usage errors, the
    command's errors and Ctrl-C (which Typer turns into 130) all go through :func:`report`.
    """
    output.reset()
    click_command = typer.main.get_command(command)
    try:
        code = click_command.main(args=argv, prog_name="skyferry", standalone_mode=False)
    except SystemExit as e:  # shell completion exits by itself
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_BAD_INPUT)
    except typer.Exit as e:
        return e.exit_code
    except BaseException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            typer.echo(click_command.get_help(e.ctx))  # type: ignore[attr-defined]
            return EXIT_OK
        if isinstance(e, typer.TyperException) and "--json" in argv:
            output.json = True  # a usage error comes before the command could say so
        return report(e, inputs_of(argv))
    if code == EXIT_INTERRUPTED:  # Typer turns Ctrl-C into this code
        return report(KeyboardInterrupt(), inputs_of(argv))
    return int(code) if isinstance(code, int) else EXIT_OK


# -- logs ----------------------------------------------------------------------------------------

EXPECTED: Final = (SkyferryError, OSError)
"""Errors that are a fact of operations (bad input, an outage), not a bug: logged without a traceback."""


class OneLineFormatter(logging.Formatter):
    """``time LEVEL logger: message``; an expected error attached to a record adds its first line, not a traceback.

    With ``debug`` every traceback is kept.  Unexpected errors (bugs) keep theirs always.
    """

    def __init__(self, *, debug: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        """The record on one line (see the class): a message of several lines (libpq's) is joined."""
        error = record.exc_info[1] if record.exc_info else None
        if self.debug or (error is not None and not isinstance(error, EXPECTED)):
            return super().format(record)
        message = " ".join(part.strip() for part in record.getMessage().splitlines() if part.strip())
        if error is not None:
            message += f": {type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        line = logging.LogRecord(
            record.name, record.levelno, record.pathname, record.lineno, message, None, None, record.funcName
        )
        line.created, line.msecs = record.created, record.msecs
        return super().format(line)


class OutageFilter(logging.Filter):
    """Logs a retrying loop's failure once per change of state, not once per attempt.

    A warning (or worse) is let through when it starts an outage or when its error (or, for
    a record without one, its text) changes; repeats from the same place are dropped.  A
    record below warning from the same logger (the loop saying it recovered), or ``quiet``
    seconds without a repeat, ends the outage, so that the next failure is logged again.
    """

    def __init__(self, quiet: float = 120.0) -> None:
        super().__init__()
        self.quiet = quiet
        self._outages: dict[tuple[str, str], tuple[str, float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is logged."""
        if record.levelno < logging.WARNING:
            for key in [key for key in self._outages if key[0] == record.name]:
                del self._outages[key]
            return True
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and not isinstance(error, EXPECTED):
            return True  # a bug: every occurrence counts
        key = (record.name, str(record.msg))
        if error is None:
            signature = record.getMessage()
        else:
            signature = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        now = time.monotonic()
        seen = self._outages.get(key)
        self._outages[key] = (signature, now)
        return seen is None or seen[0] != signature or now - seen[1] > self.quiet


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is logged (a test may have replaced it)."""

    @property
    def stream(self) -> TextIO:
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


CHATTY_SDK_LOGGERS = ("azure", "urllib3", "httpx")
"""Loggers of SDKs that log each request at INFO: kept at WARNING unless debugging."""


def configure_logging(level: str, *, debug: bool = False) -> None:
    """One handler on stderr with :class:`OneLineFormatter` and :class:`OutageFilter` (uvicorn's logs too)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    handler = StderrHandler()
    handler.setFormatter(OneLineFormatter(debug=debug))
    handler.addFilter(OutageFilter())
    root.addHandler(handler)
    root.setLevel("DEBUG" if debug else level.upper())
    # SDKs that log every request at INFO (Azure's logs each HTTP request with its headers):
    # at the app's default level that is a log line, and a log bill, per store call.
    for name in CHATTY_SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
