"""Test service of the in-process adapters (``memory://`` stores and broker).

Each test gets its own named instance (``memory://test-<uuid>``), so the event store
and the view store of one test, or a store opened twice, share their data; the instance
is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from skyferry.adapters.brokers.memory import MemoryBroker
from skyferry.adapters.stores.memory import MemoryEventStore, MemoryViewStore

FAST_RETRY_BACKOFF = 0.05
"""Seconds before a redelivery in tests (the production default is 1.0)."""


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """A fresh ``memory://NAME`` URL for one test; the named instance is forgotten afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    if kind == "broker":
        try:
            yield f"memory://{name}?retry_backoff={FAST_RETRY_BACKOFF}"
        finally:
            MemoryBroker.forget(name)
        return
    try:
        yield f"memory://{name}"
    finally:
        MemoryEventStore.forget(name)
        MemoryViewStore.forget(name)
