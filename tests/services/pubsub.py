"""Pub/Sub for tests: Google's emulator, one fresh project (hence fresh topics) per test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from tests.services import gcloud_emulators


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """A ``pubsub://`` URL on a project of its own: its topics and subscriptions are new."""
    host = gcloud_emulators.host("pubsub")
    # The emulator keeps projects in memory and has no per-project reset; a fresh project
    # per test isolates them, and the emulator is stopped at the end of the session.
    yield f"pubsub://t-{uuid.uuid4().hex[:20]}/events?emulator={host}"
