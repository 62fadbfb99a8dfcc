"""Azurite (npm ``azurite``, Blob service) for the ``az://`` archive.

Started once per session on a free loopback port, in memory; each test gets a fresh
container (deleted afterwards) and a URL with a prefix, so prefix handling is exercised.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from tests import services

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's well-known development key (public, not a secret)."""

_ROOT = Path(__file__).resolve().parents[2]
_endpoint: str | None = None


def endpoint() -> str:
    """The blob endpoint of the session's Azurite, starting it on first use."""
    global _endpoint
    if _endpoint is not None:
        return _endpoint
    local = _ROOT / "node_modules" / ".bin" / "azurite-blob"
    binary = str(local) if local.exists() else shutil.which("azurite-blob")
    if binary is None or shutil.which("node") is None:
        services.unavailable("azurite (npm) is not installed: run `make deps`")
    port = services.free_port()
    workdir = tempfile.mkdtemp(prefix="azurite-")  # its debug log and extent metadata, if any
    args = [
        binary,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--loose",
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    cm = services.started(args, port, env=dict(os.environ), log=os.path.join(workdir, "azurite.log"))
    cm.__enter__()

    def stop() -> None:
        cm.__exit__(None, None, None)
        shutil.rmtree(workdir, ignore_errors=True)

    services.on_session_end(stop)
    _endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
    return _endpoint


@contextlib.contextmanager
def fresh_container() -> Iterator[str]:
    """A new container on Azurite, deleted afterwards."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient(endpoint(), credential={"account_name": ACCOUNT, "account_key": KEY})
    name = f"t{uuid.uuid4().hex[:16]}"
    service.create_container(name)
    try:
        yield name
    finally:
        service.delete_container(name)


def url_for(container: str, prefix: str = "exports/run-1") -> str:
    """An ``az://`` URL for ``container`` on the session's Azurite."""
    return f"az://{ACCOUNT}/{container}/{prefix}?endpoint={quote(endpoint(), safe=':/')}&key={quote(KEY, safe='')}"


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """A fresh container for one archive test."""
    if kind != "archive":
        raise ValueError(f"the blob test service provides archives, not {kind}")
    with fresh_container() as name:
        yield url_for(name)
