"""The machine's PostgreSQL for the ``postgresql://`` / ``postgres://`` stores.

The server is ``SKYFERRY_TEST_POSTGRES_DSN`` when set, else the DSN in
``.cache/postgres.dsn`` (written by ``scripts/ensure-services.sh`` when it had to create
a local test role), else ``postgresql://postgres@127.0.0.1:5432/postgres``; the script
also starts the machine's cluster when it is down.  Each test gets its own schema, dropped
afterwards.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from skyferry.adapters.registry import redact
from tests.services import unavailable

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
CACHED_DSN = Path(__file__).resolve().parents[2] / ".cache" / "postgres.dsn"


def admin_dsn() -> str:
    """The DSN of the test server (no ``schema=``)."""
    if dsn := os.environ.get("SKYFERRY_TEST_POSTGRES_DSN"):
        return dsn
    if CACHED_DSN.exists():
        return CACHED_DSN.read_text().strip()
    return DEFAULT_DSN


def check() -> None:
    """Call :func:`tests.services.unavailable` unless the server answers."""
    import psycopg

    try:
        with psycopg.connect(admin_dsn(), connect_timeout=5, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        unavailable(f"PostgreSQL at {redact(admin_dsn())} is not reachable ({e}); run scripts/ensure-services.sh")


def drop_schema(schema: str) -> None:
    """Drop ``schema`` and everything in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_dsn(), connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def url_with_schema(schema: str, scheme: str = "postgresql", **params: str) -> str:
    """The test server's URL pointing at ``schema``."""
    parts = urlsplit(admin_dsn())
    query = "&".join([p for p in [parts.query] if p] + [f"schema={schema}"] + [f"{k}={v}" for k, v in params.items()])
    return urlunsplit((scheme, parts.netloc, parts.path, query, ""))


@contextlib.contextmanager
def fresh_schema(scheme: str = "postgresql", **params: str) -> Iterator[str]:
    """A URL with a schema of its own, dropped afterwards."""
    check()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        yield url_with_schema(schema, scheme, **params)
    finally:
        drop_schema(schema)


def provide(kind: str, scheme: str) -> contextlib.AbstractContextManager[str]:
    """A store URL with a fresh schema (see ``tests/services/__init__.py``)."""
    if kind not in {"event_store", "view_store"}:
        raise ValueError(f"PostgreSQL serves stores, not {kind}")
    return fresh_schema(scheme)
