"""Worker liveness: a file the worker touches while it makes progress, and the check of its age.

A worker that hangs (a socket read that never returns, a deadlock) stops touching the
file; ``skyferry alive --max-age S``, run by a liveness probe, then exits 1 and the
platform restarts the container.  The worker touches the file when it starts, on every
pass and on every batch within a pass, so a long catch-up counts as progress; a worker
backing off from an unreachable store keeps touching it too (a restart would not help).

The file is named by ``SKYFERRY_HEARTBEAT_FILE``; without it nothing is written and
``skyferry alive`` refuses to guess (exit 2).  Only the file's modification time matters.

Platforms whose probes only speak HTTP (Cloud Run, Container Apps) ask the worker itself:
with ``SKYFERRY_HEALTH_PORT`` set, :func:`health_endpoint` serves ``GET /healthz`` on that
port from a thread of the worker, answering what ``skyferry alive`` answers: 200 while the
heartbeat is younger than ``SKYFERRY_HEALTH_MAX_AGE`` seconds, 503 otherwise.  A worker that
is stopped answers nothing, which a probe counts as a failure too.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from skyferry.core.errors import ConfigurationError, TransientError
from skyferry.core.worker import no_beat

__all__ = ["MIN_INTERVAL_SECONDS", "Heartbeat", "age_seconds", "no_beat"]

MIN_INTERVAL_SECONDS: Final = 1.0
"""The file is touched at most this often, however fast the worker loops."""


class Heartbeat:
    """Touches ``path`` (creating it) at most once per :data:`MIN_INTERVAL_SECONDS`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._last = -MIN_INTERVAL_SECONDS

    def beat(self) -> None:
        """Record progress now; an unwritable file is a ``ConfigurationError`` naming it."""
        now = time.monotonic()
        if now - self._last < MIN_INTERVAL_SECONDS:
            return
        try:
            self.path.touch()
        except OSError as e:
            raise ConfigurationError(f"SKYFERRY_HEARTBEAT_FILE {self.path}: cannot write it ({e.strerror})") from e
        self._last = now


def age_seconds(path: str | os.PathLike[str]) -> float:
    """Seconds since ``path`` was last touched; ``TransientError`` when it does not exist yet."""
    try:
        modified = os.stat(path).st_mtime
    except FileNotFoundError as e:
        raise TransientError(f"no heartbeat at {path}: the worker has not started (or writes elsewhere)") from e
    return max(0.0, time.time() - modified)


HEALTH_PATH: Final = "/healthz"


def _health_handler(path: Path, max_age: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != HEALTH_PATH:
                self._answer(404, {"status": "not found"})
                return
            try:
                age = age_seconds(path)
            except TransientError as e:
                self._answer(503, {"status": "starting", "detail": str(e)})
                return
            alive = age <= max_age
            self._answer(200 if alive else 503, {"status": "alive" if alive else "stale", "age_seconds": round(age)})

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes every few seconds: not worth a log line each."""

    return Handler


@contextlib.contextmanager
def health_endpoint(
    heartbeat_file: str | None, port: int | None, max_age: float, host: str = "0.0.0.0"
) -> Iterator[int | None]:
    """Serve ``GET /healthz`` from the heartbeat's age on ``port`` while the block runs (nothing without a port).

    Yields the port listened on (``0`` picks a free one), or ``None`` when there is none to serve.
    """
    if port is None:
        yield None
        return
    if not heartbeat_file:
        raise ConfigurationError("SKYFERRY_HEALTH_PORT needs SKYFERRY_HEARTBEAT_FILE: the endpoint answers from it")
    try:
        server = ThreadingHTTPServer((host, port), _health_handler(Path(heartbeat_file), max_age))
    except OSError as e:
        raise ConfigurationError(f"SKYFERRY_HEALTH_PORT {port}: cannot listen ({e.strerror})") from e
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="health", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
