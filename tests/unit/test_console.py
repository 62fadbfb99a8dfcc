"""The command line's one error policy, its log lines and its progress (``skyferry.console``, ``migrate.progress``)."""

from __future__ import annotations

import importlib
import io
import logging
import pkgutil
import threading

import orjson
import pytest

import skyferry
from skyferry.console import (
    CHATTY_SDK_LOGGERS,
    EXIT_INTERNAL,
    CheckFailed,
    Interrupted,
    OneLineFormatter,
    OutageFilter,
    Problem,
    configure_logging,
    count,
    duration,
    inputs_of,
    located,
    output,
    problem_of,
    report,
    size,
)
from skyferry.core.errors import (
    ConcurrencyError,
    ConfigurationError,
    SkyferryError,
    TransientError,
    ValidationError,
)
from skyferry.core.worker import Task, Worker
from skyferry.migrate.errors import ArchiveError, TargetConflict, VerificationFailed, WrongKey
from skyferry.migrate.progress import Progress


def _every_error_class() -> set[type[SkyferryError]]:
    for module in pkgutil.walk_packages(skyferry.__path__, "skyferry."):
        if not module.name.startswith("skyferry.adapters.") and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: set[type[SkyferryError]] = set()
    todo: list[type[SkyferryError]] = [SkyferryError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return found


def test_the_exit_code_is_a_property_of_the_error_class() -> None:
    expected = {
        ConfigurationError: 2,
        ValidationError: 2,
        ArchiveError: 2,
        WrongKey: 2,
        TransientError: 3,
        ConcurrencyError: 1,
        TargetConflict: 1,
        VerificationFailed: 1,
        CheckFailed: 1,
        Interrupted: 130,
    }
    for cls, code in expected.items():
        assert cls.exit_code == code, cls
    assert {cls.exit_code for cls in _every_error_class()} <= {1, 2, 3, 130}


def test_a_second_line_of_the_message_becomes_the_hint_and_the_input_named_becomes_the_where() -> None:
    url = "postgresql://app:secret@db:5432/ledger"
    error = TransientError(
        "postgresql://app:***@db:5432/ledger: PostgreSQL is not reachable: Connection refused\n"
        "\tIs the server running on that host and accepting TCP/IP connections?"
    )
    problem = problem_of(error, inputs_of(["migrate", "--from", "sqlite:///a.db", "--to", url], environ={}))
    assert problem == Problem(
        "PostgreSQL is not reachable: Connection refused",
        "--to postgresql://app:***@db:5432/ledger",
        "Is the server running on that host and accepting TCP/IP connections? "
        "Running the same command again is safe once the service answers (nothing was half-written)",
        3,
    )
    assert "secret" not in "\n".join(problem.lines())


def test_a_setting_in_the_environment_can_be_the_where() -> None:
    inputs = inputs_of(["worker"], environ={"SKYFERRY_STORE_URL": "sqlite:///data/x.db", "HOME": "/root"})
    problem = problem_of(ConfigurationError("SQLite file data/x.db is corrupt"), inputs)
    assert problem.lines() == ["skyferry: error: SQLite file data/x.db is corrupt (SKYFERRY_STORE_URL)"]


def test_the_where_is_left_out_when_the_what_names_it() -> None:
    error = ConfigurationError("--shard '3/3': expected i/n", where="--shard")
    assert problem_of(error).lines() == ["skyferry: error: --shard '3/3': expected i/n"]


def test_located_names_the_input_unless_the_error_names_one() -> None:
    with pytest.raises(ConfigurationError) as caught, located("--stack", hint="see stacks/"):
        raise ConfigurationError("no stack 'x'")
    assert (caught.value.where, caught.value.hint) == ("--stack", "see stacks/")
    with pytest.raises(ConfigurationError) as kept, located("--stack"):
        raise ConfigurationError("bad", where="the stack file")
    assert kept.value.where == "the stack file"


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (FileNotFoundError(2, "No such file or directory", "/k/key"), 2, "no such file or directory (/k/key)"),
        (PermissionError(13, "Permission denied", "/data"), 2, "permission denied (/data)"),
        (ConnectionResetError(104, "Connection reset by peer"), 3, "connection reset by peer"),
        (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
    ],
)
def test_errors_that_are_not_skyferrys_get_the_same_shape(error: BaseException, code: int, line: str) -> None:
    problem = problem_of(error)
    assert (problem.exit_code, problem.lines()[0]) == (code, f"skyferry: error: {line}")


def test_a_bug_prints_its_traceback_and_exits_70() -> None:
    err = io.StringIO()
    try:
        raise RuntimeError("the demo API did not start")
    except RuntimeError as e:
        code = report(e, err=err)
    assert code == EXIT_INTERNAL
    text = err.getvalue()
    assert text.startswith("Traceback (most recent call last):")
    assert text.endswith(
        "skyferry: error: unexpected RuntimeError: the demo API did not start\n"
        "hint: this is a bug in skyferry: the traceback above shows where; please report it\n"
    )


def test_debug_shows_the_traceback_of_an_expected_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYFERRY_LOG_LEVEL", "debug")
    output.reset()
    err = io.StringIO()
    try:
        raise ConfigurationError("bad URL")
    except ConfigurationError as e:
        code = report(e, err=err)
    assert code == 2
    monkeypatch.delenv("SKYFERRY_LOG_LEVEL")
    output.reset()
    assert "Traceback" in err.getvalue()
    assert err.getvalue().endswith("skyferry: error: bad URL\n")


def test_with_json_the_error_is_also_a_json_line_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    output.reset()
    output.json = True
    try:
        report(ConfigurationError("bad key", where="--key-env", hint="64 hex characters"))
    finally:
        output.reset()
    captured = capsys.readouterr()
    assert orjson.loads(captured.out) == {
        "kind": "error",
        "error": "bad key",
        "where": "--key-env",
        "hint": "64 hex characters",
        "exit_code": 2,
    }
    assert captured.err == "skyferry: error: bad key (--key-env)\nhint: 64 hex characters\n"


def test_numbers_are_written_one_way() -> None:
    assert (count(200000), duration(2.46), duration(3725), size(1657), size(12_345_678)) == (
        "200,000",
        "2.5 s",
        "1:02:05",
        "1,657 bytes",
        "12.3 MB",
    )


# -- logs --------------------------------------------------------------------------------------


def _log_to(stream: io.StringIO) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter())
    handler.addFilter(OutageFilter())
    return handler


def test_an_expected_error_logs_one_line_and_a_bug_its_traceback() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test.console.lines")
    logger.addHandler(handler := _log_to(stream))
    try:
        try:
            raise TransientError("store unreachable\nsecond line")
        except TransientError:
            logger.warning("pass failed", exc_info=True)
        try:
            raise KeyError("bug")
        except KeyError:
            logger.error("unexpected", exc_info=True)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(" WARNING test.console.lines: pass failed: TransientError: store unreachable")
    assert lines[1].endswith(" ERROR test.console.lines: unexpected")
    assert lines[2] == "Traceback (most recent call last):"


def test_a_retrying_worker_logs_each_outage_once_on_one_line_each() -> None:
    """Five failed steps and a recovery: one line when the outage starts, one when it ends."""
    stop = threading.Event()
    calls = [0]

    def flaky() -> int:
        calls[0] += 1
        if calls[0] <= 5:
            raise TransientError("postgresql://db/x: PostgreSQL is not reachable\n\tIs the server running?")
        stop.set()
        return 0

    stream = io.StringIO()
    logger = logging.getLogger("skyferry.core.worker")
    logger.addHandler(handler := _log_to(stream))
    try:
        Worker([Task("relay", flaky)]).run(stop, poll_interval=0.001, max_backoff=0.002)
    finally:
        logger.removeHandler(handler)
    lines = [line.split(" skyferry.core.worker: ")[1] for line in stream.getvalue().splitlines()]
    assert len(lines) == 2, lines
    assert lines[0] == (
        "worker: relay: failing (TransientError: postgresql://db/x: PostgreSQL is not reachable "
        "Is the server running?); retrying with backoff"
    )
    assert lines[1].startswith("worker: relay: recovered after 5 failed attempt(s) in ")


def test_a_different_failure_is_logged_again() -> None:
    log_filter = OutageFilter()

    def record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord("w", logging.WARNING, __file__, 1, "pass failed", None, (type(error), error, None))

    decisions = [
        log_filter.filter(record(error))
        for error in (
            TransientError("a"),
            TransientError("a"),
            TransientError("b"),
            TransientError("b"),
            TransientError("a"),
        )
    ]
    assert decisions == [True, False, True, False, True]


def test_a_repeated_warning_without_an_error_is_logged_once_until_the_logger_says_more() -> None:
    """A client library's reconnect warnings, every half second, make one line per outage."""
    log_filter = OutageFilter()

    def record(level: int, text: str) -> logging.LogRecord:
        return logging.LogRecord("nats", level, __file__, 1, "NATS connection: %s", (text,), None)

    refused = "ConnectionRefusedError: [Errno 111] Connect call failed"
    decisions = [
        log_filter.filter(record(level, text))
        for level, text in (
            (logging.WARNING, refused),
            (logging.WARNING, refused),
            (logging.WARNING, refused),
            (logging.INFO, "connected"),
            (logging.WARNING, refused),
        )
    ]
    assert decisions == [True, False, False, True, True]


# -- progress ----------------------------------------------------------------------------------


def test_progress_in_a_log_is_a_plain_line_now_and_then() -> None:
    out = io.StringIO()
    progress = Progress("import", total=1000, mode="lines", out=out, interval=0.001)
    progress.resume(400)
    for _ in range(3):
        threading.Event().wait(0.002)
        progress.advance(100)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[-1].startswith("import: 700 of 1,000 events (70 %), ")
    assert " events/s, ETA " in lines[-1]


def test_a_short_command_in_a_log_prints_no_progress() -> None:
    out = io.StringIO()
    progress = Progress("export", mode="lines", out=out)
    progress.advance(5)
    progress.finish()
    assert out.getvalue() == ""


def test_json_progress_lines_carry_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress("migrate", mode="json", interval=0.0)
    progress.advance(10, lag=1.5)
    progress.advance(0, lag=0.0)
    progress.finish()
    docs = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [doc["kind"] for doc in docs] == ["progress"] * 3
    assert [(doc["events"], doc["lag_seconds"]) for doc in docs] == [(10, 1.5), (10, 0.0), (10, 0.0)]
    assert (docs[0]["total"], docs[0]["eta_seconds"]) == (None, None)


def test_the_rate_leaves_out_what_an_earlier_run_did() -> None:
    progress = Progress("import", total=10_000, mode="off")
    progress.resume(9_000)
    threading.Event().wait(0.05)
    progress.advance(10)
    assert progress.rate < 10 / 0.05 * 1.5  # not 9,010 events in 50 ms
    assert "9,010 of 10,000 events (90 %)" in progress.figures()


def test_sdks_that_log_every_request_are_quiet_unless_debugging() -> None:
    sdk_request_log = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    root = logging.getLogger()
    before = (root.level, list(root.handlers), {name: logging.getLogger(name).level for name in CHATTY_SDK_LOGGERS})
    try:
        configure_logging("info")
        assert logging.getLogger("skyferry.worker").isEnabledFor(logging.INFO)
        assert not sdk_request_log.isEnabledFor(logging.INFO), "one log line per Azure request at the default level"
        assert sdk_request_log.isEnabledFor(logging.WARNING)
        configure_logging("info", debug=True)
        assert sdk_request_log.isEnabledFor(logging.DEBUG)
    finally:
        level, handlers, sdk_levels = before
        root.setLevel(level)
        root.handlers[:] = handlers
        for name, sdk_level in sdk_levels.items():
            logging.getLogger(name).setLevel(sdk_level)
