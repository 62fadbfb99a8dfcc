"""A JetStream-enabled nats-server for the ``nats://`` broker.

Where the server is, first that answers: the URL in ``.cache/nats.url`` (written by
``scripts/ensure-services.sh``), ``nats://127.0.0.1:4222``, else a private
``nats-server -js -sd DIR`` started on a free port for this session (stopped by PID at
the end).  Each test gets its own JetStream stream, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.services import free_port, on_session_end, started, unavailable

_ROOT = Path(__file__).resolve().parents[2]
_server: str | None = None
_failure: str | None = None


async def _has_jetstream(server: str) -> bool:
    import nats

    try:
        nc = await nats.connect(servers=[server], connect_timeout=2, allow_reconnect=False)
    except Exception:
        return False
    try:
        await nc.jetstream().account_info()
        return True
    except Exception:
        return False
    finally:
        await nc.close()


def _binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).exists()), None
    )


class PrivateServer:
    """A nats-server with JetStream that a test owns: it can stop and restart it (same port, same data).

    With ``password``, it lets in only ``user`` with that password, as the chart's in-chart NATS
    does: an ``authorization`` block whose password nats-server reads from ``NATS_PASSWORD``.
    """

    def __init__(self, jetstream: bool = True, password: str | None = None, user: str = "skyferry") -> None:
        binary = _binary()
        if binary is None:
            unavailable("no nats-server binary (apt-get install -y nats-server, or run scripts/ensure-services.sh)")
        self.data = tempfile.mkdtemp(prefix="skyferry-nats-")
        self.port = free_port()
        self.args = [binary, "-a", "127.0.0.1", "-p", str(self.port)]
        if jetstream:
            self.args += ["-js", "-sd", self.data]
        self.env: dict[str, str] | None = None
        if password is not None:
            config = Path(self.data) / "auth.conf"
            config.write_text(f'authorization {{\n  user: "{user}"\n  password: $NATS_PASSWORD\n}}\n')
            self.args += ["-c", str(config)]
            self.env = {**os.environ, "NATS_PASSWORD": password}
        self.url = f"nats://127.0.0.1:{self.port}"
        self._stack: contextlib.ExitStack | None = None

    def start(self) -> None:
        """Start the server (again) and wait until it owns its port."""
        assert self._stack is None
        stack = contextlib.ExitStack()
        stack.enter_context(started(self.args, self.port, env=self.env))
        self._stack = stack

    def stop(self) -> None:
        """Stop the server by PID (its data stays)."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def remove(self) -> None:
        """Stop the server and delete its data."""
        self.stop()
        shutil.rmtree(self.data, True)


@contextlib.contextmanager
def private_server(jetstream: bool = True, password: str | None = None) -> Iterator[PrivateServer]:
    """A started :class:`PrivateServer` (with ``password``: letting in only its user), removed afterwards."""
    server = PrivateServer(jetstream, password)
    try:
        server.start()
        yield server
    finally:
        server.remove()


def _start_private() -> str:
    binary = _binary()
    if binary is None:
        raise RuntimeError("no nats-server binary (apt-get install -y nats-server, or run scripts/ensure-services.sh)")
    data = tempfile.mkdtemp(prefix="skyferry-nats-")
    port = free_port()
    stack = contextlib.ExitStack()
    stack.enter_context(started([binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", data], port))
    stack.callback(shutil.rmtree, data, True)
    on_session_end(stack.close)
    return f"nats://127.0.0.1:{port}"


def server_url() -> str:
    """The base URL (no stream) of a JetStream server, found or started once per session."""
    global _server, _failure
    if _server is None and _failure is None:
        candidates = []
        cached = _ROOT / ".cache" / "nats.url"
        if cached.exists():
            candidates.append(cached.read_text().strip())
        candidates.append("nats://127.0.0.1:4222")
        for candidate in candidates:
            if candidate and asyncio.run(_has_jetstream(candidate)):
                _server = candidate
                break
        else:
            try:
                _server = _start_private()
            except RuntimeError as e:
                _failure = str(e)
    if _server is None:
        unavailable(f"no JetStream nats-server: {_failure}")
    return _server


async def _delete_stream(server: str, stream: str) -> None:
    import nats
    import nats.js.errors

    nc = await nats.connect(servers=[server], connect_timeout=5, allow_reconnect=False)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


@contextlib.contextmanager
def fresh_stream(query: str = "") -> Iterator[str]:
    """A broker URL with a stream of its own, deleted afterwards."""
    server = server_url()
    stream = f"T{uuid.uuid4().hex[:20]}"
    try:
        yield f"{server}/{stream}{'?' + query if query else ''}"
    finally:
        asyncio.run(_delete_stream(server, stream))


def provide(kind: str, scheme: str) -> contextlib.AbstractContextManager[str]:
    """A broker URL with a fresh stream (see ``tests/services/__init__.py``)."""
    if kind != "broker":
        raise ValueError(f"NATS serves brokers, not {kind}")
    return fresh_stream()
