"""Test service of the local-directory archive: a fresh temporary directory per test."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """``file://<tmp>/archive`` (the directory does not exist yet: ``put`` creates it)."""
    with tempfile.TemporaryDirectory(prefix="skyferry-archive-") as directory:
        yield f"file://{directory}/archive"
