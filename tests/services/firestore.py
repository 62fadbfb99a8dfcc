"""Firestore for tests: Google's emulator, one fresh project per test (emptied afterwards)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import httpx

from tests.services import gcloud_emulators


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """A ``firestore://`` URL on an empty project of the session's emulator."""
    host = gcloud_emulators.host("firestore")
    project = f"t-{uuid.uuid4().hex[:20]}"
    try:
        yield f"firestore://{project}/(default)?emulator={host}"
    finally:
        httpx.delete(
            f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents", timeout=30
        ).raise_for_status()
