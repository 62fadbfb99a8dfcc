"""The Cosmos DB (NoSQL) emulator for ``cosmos://`` stores: npm ``@vercel/cosmosdb-server``.

Started once per session on a free loopback port by ``cosmos_server.js``, with keep-alive
on as the service has it (HTTPS with a self-signed certificate, hence ``verify=false`` in
the URLs it hands out, for tests only), and answering a point read of a missing document
404 as the service does (the emulator's own handler fails it with 500).  Each test gets its own
database holding the events and views containers, created here through the SDK the
way the Pulumi component creates them (same partition key paths), and deleted after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests import services

EMULATOR_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
"""The well-known public key of the Cosmos DB emulators (not a secret)."""

_ROOT = Path(__file__).resolve().parents[2]
_endpoint: str | None = None


def emulator_command(port: int) -> list[str] | None:
    """The command that serves the emulator on ``127.0.0.1:port``; ``None`` when it is not installed.

    ``cosmos_server.js`` starts the package ``make deps`` installs, with keep-alive on.
    """
    node = shutil.which("node")
    if node is None or not (_ROOT / "node_modules" / "@vercel" / "cosmosdb-server").is_dir():
        return None
    return [node, str(Path(__file__).with_name("cosmos_server.js")), str(port), "127.0.0.1"]


def endpoint() -> str:
    """The HTTPS endpoint of the session's emulator, starting it on first use."""
    global _endpoint
    if _endpoint is not None:
        return _endpoint
    port = services.free_port()
    command = emulator_command(port)
    if command is None:
        services.unavailable("cosmosdb-server (npm @vercel/cosmosdb-server) or node is not installed: run `make deps`")
    cm = services.started(command, port, env=dict(os.environ))
    cm.__enter__()

    def stop() -> None:
        cm.__exit__(None, None, None)

    services.on_session_end(stop)
    _endpoint = f"https://127.0.0.1:{port}/"
    return _endpoint


def url_for(database: str, container: str = "events") -> str:
    """A ``cosmos://`` URL for ``database``/``container`` on the session's emulator."""
    return f"cosmos://localhost/{database}/{container}?endpoint={endpoint()}&key={EMULATOR_KEY}&verify=false"


def admin_client() -> object:
    """An SDK client on the emulator, for creating and dropping test databases."""
    from azure.cosmos import CosmosClient

    return CosmosClient(endpoint(), credential=EMULATOR_KEY, connection_verify=False)


@contextlib.contextmanager
def fresh_database(create_containers: bool = True) -> Iterator[str]:
    """A new database (with the events and views containers unless told not to); dropped after."""
    from azure.cosmos import CosmosClient, PartitionKey

    from skyferry.adapters.stores import cosmos

    client = admin_client()
    assert isinstance(client, CosmosClient)
    name = f"t{uuid.uuid4().hex[:16]}"
    database = client.create_database(name)
    if create_containers:
        database.create_container("events", partition_key=PartitionKey(path=cosmos.EVENTS_PARTITION_KEY_PATH))
        database.create_container(
            cosmos.views_container_name("events"), partition_key=PartitionKey(path=cosmos.VIEWS_PARTITION_KEY_PATH)
        )
    try:
        yield name
    finally:
        client.delete_database(name)


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """A fresh database on the emulator for one test (stores only)."""
    if kind not in {"event_store", "view_store"}:
        raise ValueError(f"the Cosmos DB test service provides stores, not {kind}")
    with fresh_database() as name:
        yield url_for(name)
