"""How the tests reach each technology: one module per adapter module, same name.

``tests/services/<name>.py`` serves the adapters of ``app/skyferry/adapters/*/<name>.py``.  It
defines::

    def provide(kind: str, scheme: str) -> contextlib.AbstractContextManager[str]:
        '''Yield the URL of a fresh, empty instance for one test; clean it up afterwards.'''

``kind`` is one of ``"event_store"``, ``"view_store"``, ``"broker"``, ``"archive"``.  For
stores, the event store and view store of one test share a URL (they live side by side).
A module that needs an emulator or a server starts it lazily, once per test session, on
a free loopback port (port 0), checks that its own process answers, and registers
``stop`` with :func:`on_session_end`.  When a service cannot be had, it calls
:func:`unavailable` with the reason: the test is skipped with that reason printed, or
fails when ``SKYFERRY_REQUIRE_SERVICES=1`` (Google's emulators excepted: they come with
some machine images only and no package registry).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

import pytest

_finalizers: list[Callable[[], None]] = []


def on_session_end(stop: Callable[[], None]) -> None:
    """Run ``stop`` when the test session ends (emulators, private servers)."""
    _finalizers.append(stop)


def stop_all() -> None:
    """Called by the session fixture in ``tests/conftest.py``."""
    while _finalizers:
        with contextlib.suppress(Exception):
            _finalizers.pop()()


def unavailable(reason: str, *, may_skip_in_ci: bool = False) -> NoReturn:
    """Skip the test with ``reason``, or fail it where services are required."""
    if os.environ.get("SKYFERRY_REQUIRE_SERVICES") == "1" and not may_skip_in_ci:
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def provide(kind: str, adapter_path: str, scheme: str) -> contextlib.AbstractContextManager[str]:
    """A fresh URL for the adapter ``module:Class`` (from the production registry)."""
    module_name = adapter_path.partition(":")[0].rsplit(".", 1)[-1]
    try:
        service = importlib.import_module(f"tests.services.{module_name}")
    except ModuleNotFoundError as e:
        if e.name != f"tests.services.{module_name}":
            raise
        pytest.fail(f"adapter {adapter_path} has no test service module tests/services/{module_name}.py")
    cm: contextlib.AbstractContextManager[str] = service.provide(kind, scheme)
    return cm


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float = 60.0) -> None:
    """Wait until something listens on ``port``; fail early if ``process`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def listening_ports(pid: int) -> set[int]:
    """TCP ports that ``pid`` or a descendant of it listens on (Linux /proc), in the network
    namespace of ``pid`` (so also for a process inside a namespace of its own)."""
    pids = {pid}
    for _ in range(3):  # children, grandchildren, great-grandchildren
        for parent in list(pids):
            with contextlib.suppress(OSError), open(f"/proc/{parent}/task/{parent}/children") as f:
                pids.update(int(p) for p in f.read().split())
    inodes: dict[str, int] = {}
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    inodes[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    ports = set()
    for owner in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{owner}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{owner}/fd/{fd}")
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        ports.add(inodes[target[8:-1]])
    return ports


def owns_port(process: subprocess.Popen[bytes] | int, port: int) -> bool:
    """Whether ``process`` (a Popen or a PID) or a descendant of it is the one listening on ``port`` (Linux /proc)."""
    return port in listening_ports(process if isinstance(process, int) else process.pid)


@contextlib.contextmanager
def started(
    args: list[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    log: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` (which must listen on ``port``), check it owns the port, stop it by PID."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for_port(port, process, timeout)
        if not owns_port(process, port):
            raise RuntimeError(f"port {port} is answered by another process than {args[0]}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            out.close()  # type: ignore[union-attr]
