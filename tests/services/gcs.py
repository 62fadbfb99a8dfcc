"""Cloud Storage for tests: ``gcp-storage-emulator`` (PyPI, dev group), a fresh bucket per test.

The server runs in memory, once per session, on a free loopback port; it speaks the
GCS JSON API (simple, multipart and resumable uploads), so the real
google-cloud-storage client is exercised end to end.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests import services

_lock = threading.Lock()
_endpoint: list[str] = []


def _stop(manager: contextlib.AbstractContextManager[object]) -> None:
    manager.__exit__(None, None, None)


def endpoint() -> str:
    """``http://127.0.0.1:PORT`` of the session's storage emulator (started on first use)."""
    with _lock:
        if _endpoint:
            return _endpoint[0]
        try:
            import gcp_storage_emulator  # noqa: F401
        except ImportError:
            services.unavailable("gcp-storage-emulator is not installed (uv sync --all-groups)")
        port = services.free_port()
        log = os.path.join(tempfile.gettempdir(), f"skyferry-gcs-emulator-{port}.log")
        command = [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
        ]
        manager = services.started(command, port, log=log)
        try:
            manager.__enter__()
        except RuntimeError as e:
            services.unavailable(f"gcp-storage-emulator did not start: {e} (log: {log})")
        services.on_session_end(lambda: _stop(manager))
        _endpoint.append(f"http://127.0.0.1:{port}")
        return _endpoint[0]


def client(url: str) -> storage.Client:
    """A storage client on the emulator at ``url``."""
    anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
    return storage.Client(project="local", credentials=anonymous, client_options={"api_endpoint": url})


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """A ``gs://`` URL on a new, empty bucket (with a prefix); bucket deleted afterwards."""
    url = endpoint()
    gcs = client(url)
    bucket = gcs.create_bucket(f"t-{uuid.uuid4().hex[:20]}")
    try:
        yield f"gs://{bucket.name}/exports/run-1?endpoint={url}"
    finally:
        for blob in gcs.list_blobs(bucket.name):
            with contextlib.suppress(gexc.NotFound):
                blob.delete()
        bucket.delete()
