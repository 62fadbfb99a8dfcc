"""A store opened to be read (``registry.open_event_store(url, existing=True)``: the source of
an export or a migration, both sides of a verify, a rebuild) must already exist: a missing
file, database, schema, table or container is a ``ConfigurationError`` naming it, and
nothing is created.  A store opened to be written creates itself where it can, as before."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from skyferry.adapters import registry
from skyferry.adapters.stores.memory import MemoryEventStore
from skyferry.core.errors import ConfigurationError
from skyferry.core.messages import NewEvent
from skyferry.core.ports import NO_STREAM
from tests.services import cosmos as cosmos_service
from tests.services import dynamodb as dynamodb_service
from tests.services import postgres as postgres_service


def opened_for_reading(url: str) -> None:
    registry.open_event_store(url, existing=True).close()


def test_sqlite_a_missing_file_or_an_empty_one_is_named_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(ConfigurationError, match=rf"SQLite file {missing} does not exist"):
        opened_for_reading(f"sqlite:///{missing}")
    assert not missing.exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(ConfigurationError, match=rf"SQLite file {empty} holds no skyferry store \(no table 'events'\)"):
        opened_for_reading(f"sqlite:///{empty}")
    assert empty.stat().st_size == 0
    assert sorted(os.listdir(tmp_path)) == ["empty.db"]  # no journal, WAL or shared-memory file either


def written_then_read(url: str) -> None:
    """A store created by a writer opens to be read, and reads what was written."""
    store = registry.open_event_store(url)
    store.append("s-1", [NewEvent(type="T", data={})], NO_STREAM)
    store.close()
    reader = registry.open_event_store(url, existing=True)
    try:
        assert reader.stream_version("s-1") == 1
    finally:
        reader.close()


def test_sqlite_an_existing_store_opens_and_reads(tmp_path: Path) -> None:
    written_then_read(f"sqlite:///{tmp_path}/there.db")


def test_postgres_a_missing_schema_or_database_is_named_and_nothing_is_created() -> None:
    postgres_service.check()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres_service.url_with_schema(schema)
    with pytest.raises(ConfigurationError, match=rf"the database has no schema '{schema}'"):
        opened_for_reading(url)
    import psycopg

    with psycopg.connect(postgres_service.admin_dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone() is None
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        with pytest.raises(ConfigurationError, match=rf"schema '{schema}' holds no skyferry store"):
            opened_for_reading(url)
        with psycopg.connect(postgres_service.admin_dsn(), autocommit=True) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", [schema]).fetchone()
            assert tables == (0,)
    finally:
        postgres_service.drop_schema(schema)
    database = f"nosuch_{uuid.uuid4().hex[:8]}"
    parts = url.split("?", 1)
    elsewhere = parts[0].rsplit("/", 1)[0] + f"/{database}?" + parts[1]
    with pytest.raises(ConfigurationError, match=rf'database "{database}" does not exist'):
        opened_for_reading(elsewhere)


def test_postgres_an_existing_store_opens_and_reads() -> None:
    with postgres_service.fresh_schema() as url:
        written_then_read(url)


def test_dynamodb_a_missing_table_is_named_and_nothing_is_created() -> None:
    table = f"skyferry-typo-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigurationError, match=rf"DynamoDB table '{table}' does not exist"):
        opened_for_reading(dynamodb_service.url_for(table))
    assert table not in dynamodb_service.client().list_tables()["TableNames"]


def test_cosmos_a_missing_container_is_named_and_nothing_is_created() -> None:
    with cosmos_service.fresh_database(create_containers=False) as database:
        with pytest.raises(ConfigurationError, match=rf"has no container 'events' in database '{database}'"):
            opened_for_reading(cosmos_service.url_for(database))
        client = cosmos_service.admin_client()
        assert list(client.get_database_client(database).list_containers()) == []  # type: ignore[attr-defined]


def test_memory_a_name_this_process_does_not_hold_is_refused_and_not_created() -> None:
    name = f"typo-{uuid.uuid4().hex}"
    with pytest.raises(ConfigurationError, match=rf"this process holds no store memory://{name}"):
        opened_for_reading(f"memory://{name}")
    assert name not in MemoryEventStore._instances
    with pytest.raises(ConfigurationError, match="a new, empty store each time"):
        opened_for_reading("memory://")


def test_the_same_store_is_recognised_however_its_url_is_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    a = registry.open_event_store(f"sqlite:///{tmp_path}/x.db")
    b = registry.open_event_store("sqlite:///./x.db?synchronous=normal")
    c = registry.open_event_store(f"sqlite:///{tmp_path}/y.db")
    try:
        assert registry.same_store(a, b)
        assert not registry.same_store(a, c)
    finally:
        for store in (a, b, c):
            store.close()
    p1 = registry.open_event_store("postgresql://u:one@db.example:5432/ledger?schema=s1&pool_max=3")
    p2 = registry.open_event_store("postgres://u:two@db.example/ledger?schema=s1")
    p3 = registry.open_event_store("postgresql://u@db.example/ledger?schema=s2")
    assert registry.same_store(p1, p2)
    assert not registry.same_store(p1, p3)
    fresh, other = registry.open_event_store("memory://"), registry.open_event_store("memory://")
    assert not registry.same_store(fresh, other)
    assert registry.same_store(fresh, fresh)
