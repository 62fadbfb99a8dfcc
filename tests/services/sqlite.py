"""Test service of the SQLite stores: a fresh database file in a temporary directory per test."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """``sqlite:///<tmp>/test.db`` (absolute path, hence four slashes); removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="skyferry-sqlite-") as directory:
        yield f"sqlite:///{directory}/test.db"
