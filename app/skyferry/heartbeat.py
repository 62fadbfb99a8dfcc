"""Worker liveness: a file the worker touches while it makes progress, and the check of its age.

A worker that hangs (a socket read that never returns, a deadlock) stops touching the
file; ``skyferry alive --max-age S``, run by a liveness probe, then exits 1 and the
platform restarts the container.  The worker touches the file when it starts, on every
pass and on every batch within a pass, so a long catch-up counts as progress; a worker
backing off from an unreachable store keeps touching it too (a restart would not help).

The file is named by ``SKYFERRY_HEARTBEAT_FILE``; without it nothing is written and
``skyferry alive`` refuses to guess (exit 2).  Only the file's modification time matters.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final

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
