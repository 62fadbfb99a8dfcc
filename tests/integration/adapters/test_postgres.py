"""PostgreSQL store: schema migrations, bad settings, missing privileges, dropped connections.

Everything runs against the machine's PostgreSQL (see ``tests/services/postgres.py``),
each test in its own schema (and, where it needs one, its own login role), dropped
afterwards.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from skyferry.adapters.registry import open_event_store, open_view_store
from skyferry.adapters.stores.postgres import SCHEMA_VERSION, PostgresEventStore, PostgresViewStore
from skyferry.core.errors import ConfigurationError, TransientError
from skyferry.core.messages import NewEvent
from skyferry.core.ports import NO_STREAM, ViewChange
from tests.services import free_port, postgres


def admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(postgres.admin_dsn(), autocommit=True)


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1].split("&")[0]


def with_netloc(url: str, netloc: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@pytest.fixture
def url() -> Iterator[str]:
    with postgres.fresh_schema() as fresh:
        yield fresh


@pytest.fixture
def role() -> Iterator[str]:
    """A login role with no privileges of its own (dropped afterwards)."""
    postgres.check()
    name = f"t_role_{uuid.uuid4().hex[:10]}"
    with admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with admin() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def events(n: int = 1) -> list[NewEvent]:
    return [NewEvent(type="T", data={"i": i}) for i in range(n)]


# --- schema and migrations ------------------------------------------------------------------


def test_the_schema_is_created_on_first_use_and_its_version_recorded(url: str) -> None:
    store = PostgresEventStore(url)
    try:
        store.append("s-1", events(), NO_STREAM)
    finally:
        store.close()
    with admin() as conn:
        rows = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_version").format(sql.Identifier(schema_of(url)))
        ).fetchall()
    assert rows == [(SCHEMA_VERSION,)]


def test_processes_opening_a_new_schema_at_once_migrate_it_once(url: str) -> None:
    stores = [PostgresEventStore(url) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def first_use(store: PostgresEventStore) -> None:
        barrier.wait()
        try:
            store.stream_version("x")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=first_use, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert not errors, errors
    with admin() as conn:
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.schema_version").format(sql.Identifier(schema_of(url)))
        ).fetchone()
    assert count == (SCHEMA_VERSION,)


def test_a_schema_written_by_a_newer_skyferry_is_refused(url: str) -> None:
    store = PostgresEventStore(url)
    store.append("s-1", events(), NO_STREAM)
    store.close()
    with admin() as conn:
        conn.execute(
            sql.SQL("INSERT INTO {}.schema_version (version) VALUES (%s)").format(sql.Identifier(schema_of(url))),
            [SCHEMA_VERSION + 1],
        )
    newer = PostgresEventStore(url)
    with pytest.raises(ConfigurationError) as caught:
        newer.stream_version("s-1")
    newer.close()
    assert f"version {SCHEMA_VERSION + 1}" in str(caught.value)
    assert schema_of(url) in str(caught.value)


def test_both_stores_share_one_schema_through_the_registry(url: str) -> None:
    alias = url.replace("postgresql://", "postgres://", 1)
    event_store, view_store = open_event_store(alias), open_view_store(alias)
    try:
        assert isinstance(event_store, PostgresEventStore)
        assert isinstance(view_store, PostgresViewStore)
        event_store.append("s-1", events(2), NO_STREAM)
        view_store.commit("p", [ViewChange("c", "k", {"v": 1})], {"$all": event_store.last_position() or ""})
        assert view_store.get_checkpoint("p") == event_store.last_position()
    finally:
        event_store.close()
        view_store.close()


# --- bad settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["Upper", "1digit", "semi;colon", "x" * 64, "dash-ed"])
def test_a_bad_schema_name_is_refused_naming_the_setting(schema: str) -> None:
    with pytest.raises(ConfigurationError, match="schema="):
        PostgresEventStore(f"postgresql://u@127.0.0.1:5432/db?schema={schema}")


def test_a_bad_pool_size_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="pool_max"):
        PostgresEventStore("postgresql://u@127.0.0.1:5432/db?pool_max=0")
    with pytest.raises(ConfigurationError, match="pool_m"):
        PostgresViewStore("postgresql://u@127.0.0.1:5432/db?pool_min=lots")


def test_an_unreachable_server_is_a_transient_error_naming_it(url: str) -> None:
    port = free_port()
    store = PostgresEventStore(with_netloc(url, f"postgres@127.0.0.1:{port}").replace("?", "?connect_timeout=2&", 1))
    with pytest.raises(TransientError) as caught:
        store.stream_version("s")
    store.close()
    assert str(port) in str(caught.value)


def test_an_unknown_database_is_a_configuration_error(url: str) -> None:
    parts = urlsplit(url)
    missing = urlunsplit((parts.scheme, parts.netloc, f"/no_such_db_{uuid.uuid4().hex[:6]}", parts.query, ""))
    store = PostgresEventStore(missing)
    with pytest.raises(ConfigurationError, match="does not exist"):
        store.stream_version("s")
    store.close()


def test_an_unknown_role_is_a_configuration_error_and_the_password_is_not_shown(url: str) -> None:
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    store = PostgresEventStore(with_netloc(url, f"nobody_{uuid.uuid4().hex[:6]}:s3cret@{netloc}"))
    with pytest.raises(ConfigurationError) as caught:
        store.stream_version("s")
    store.close()
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


def test_an_unknown_libpq_option_is_a_configuration_error(url: str) -> None:
    store = PostgresEventStore(url + "&no_such_option=1")
    with pytest.raises(ConfigurationError, match="no_such_option"):
        store.stream_version("s")
    store.close()


# --- privileges ---------------------------------------------------------------------------------


def test_a_user_who_may_not_create_the_schema_gets_a_clear_error(url: str, role: str) -> None:
    # A new role has no CREATE on the database (PostgreSQL's default for PUBLIC).
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    store = PostgresEventStore(with_netloc(url, f"{role}@{netloc}"))
    with pytest.raises(ConfigurationError, match="privilege") as caught:
        store.append("s-1", events(), NO_STREAM)
    store.close()
    assert schema_of(url) in str(caught.value)


def test_a_user_with_read_only_grants_can_read_but_not_append(url: str, role: str) -> None:
    owner = PostgresEventStore(url)
    owner.append("s-1", events(2), NO_STREAM)
    owner.close()
    s = sql.Identifier(schema_of(url))
    with admin() as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(s, sql.Identifier(role)))
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    reader = PostgresEventStore(with_netloc(url, f"{role}@{netloc}"))
    try:
        assert [e.version for e in reader.read_stream("s-1")] == [1, 2]
        with pytest.raises(ConfigurationError, match="privilege"):
            reader.append("s-1", events(), 2)
    finally:
        reader.close()


# --- connection dropped mid-append -------------------------------------------------------------


def test_a_connection_dropped_mid_append_is_transient_writes_nothing_and_a_retry_succeeds(url: str) -> None:
    name = f"victim-{uuid.uuid4().hex[:8]}"
    store = PostgresEventStore(f"{url}&application_name={name}")
    store.append("s-1", events(), NO_STREAM)
    schema = schema_of(url)
    batch = events(3)
    outcome: list[BaseException | None] = []

    def append() -> None:
        try:
            store.append("s-1", batch, 1)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    with admin() as blocker:
        # Hold the append lock, so the victim's append stops inside its transaction, insert pending.
        blocker.execute("BEGIN")
        blocker.execute("SELECT pg_advisory_xact_lock(hashtext('skyferry-append'), hashtext(%s))", [schema])
        thread = threading.Thread(target=append)
        thread.start()
        with admin() as watcher:
            pid = None
            for _ in range(3000):
                row = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                    [name],
                ).fetchone()
                if row:
                    pid = row[0]
                    break
                threading.Event().wait(0.01)
            assert pid is not None, "the append never reached the lock"
            watcher.execute("SELECT pg_terminate_backend(%s)", [pid])
        thread.join(60)
        blocker.execute("COMMIT")

    assert len(outcome) == 1
    assert isinstance(outcome[0], TransientError), outcome
    assert [e.version for e in store.read_stream("s-1")] == [1]
    result = store.append("s-1", batch, 1)
    assert (result.first_version, result.last_version) == (2, 4)
    assert [e.id for e in store.read_stream("s-1", from_version=2)] == [e.id for e in batch]
    store.close()


# --- listing by prefix -------------------------------------------------------------------------------


def test_list_streams_pages_through_more_than_a_page_and_stops_at_the_prefix(url: str) -> None:
    from datetime import UTC, datetime

    from skyferry.adapters.stores.postgres import prefix_end
    from skyferry.core.messages import Event

    now = datetime.now(UTC)
    names = [f"acct-{i:05d}" for i in range(1050)] + ["acct.", "acct/ü", "acct", "acc", "acct\U0002a6d6z", "b"]
    store = PostgresEventStore(url)
    try:
        store.bulk_append([Event(str(uuid.uuid4()), n, 1, "T", 1, {}, {}, now, now) for n in names])
        assert list(store.list_streams("acct")) == sorted(n for n in names if n.startswith("acct"))
        assert list(store.list_streams("acct-0104")) == [f"acct-0104{i}" for i in range(10)]
        assert list(store.list_streams()) == sorted(names)
        assert list(store.list_streams("zz")) == []
    finally:
        store.close()
    assert prefix_end("abc") == "abd"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("") is None


def test_bulk_append_of_an_id_stored_in_another_stream_is_refused_whole(url: str) -> None:
    from datetime import UTC, datetime

    from skyferry.core.errors import ConcurrencyError
    from skyferry.core.messages import Event

    now = datetime.now(UTC)
    store = PostgresEventStore(url)
    try:
        taken = str(uuid.uuid4())
        store.bulk_append([Event(taken, "first", 1, "T", 1, {}, {}, now, now)])
        batch = [
            Event(str(uuid.uuid4()), "second", 1, "T", 1, {}, {}, now, now),
            Event(taken, "second", 2, "T", 1, {}, {}, now, now),
        ]
        with pytest.raises(ConcurrencyError, match=taken):
            store.bulk_append(batch)
        assert store.stream_version("second") == 0
        assert [e.id for e in store.read_all()] == [taken]
    finally:
        store.close()


def test_after_every_pooled_connection_is_killed_one_call_fails_and_the_next_succeeds(url: str) -> None:
    name = f"pool-{uuid.uuid4().hex[:8]}"
    store = PostgresEventStore(f"{url}&application_name={name}&pool_min=4&pool_max=4")
    try:
        store.append("s-1", events(), NO_STREAM)
        with admin() as conn:
            for _ in range(300):  # the pool fills in the background: wait for its 4 connections
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name]
                ).fetchone()
                if row and row[0] == 4:
                    break
                threading.Event().wait(0.02)
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [name])
        with pytest.raises(TransientError):
            store.stream_version("s-1")
        assert store.stream_version("s-1") == 1
        assert store.append("s-1", events(), 1).last_version == 2
    finally:
        store.close()


def test_bulk_append_keeps_the_given_order_and_every_character_through_copy(url: str) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from skyferry.core.errors import ValidationError
    from skyferry.core.messages import Event

    now = datetime(2026, 11, 27, 7, 0, 0, 123456, tzinfo=UTC)
    tricky = {"text": 'tab\tnew\nline\rback\\slash "q" \u00e9\u2028', "list": [1, 2.5, None, True]}
    upper = str(uuid.uuid4()).upper()  # not canonical: PostgreSQL would give it back in lower case
    batch = [
        Event(str(uuid.uuid4()), "b", 1, "Type with\\odd \u00e9 chars", 1, tricky, {"m": "\\"}, now, now),
        Event(str(uuid.uuid4()), "a", 1, "T", 2, {}, {}, now, now),
        Event(str(uuid.uuid4()), "b", 2, "T", 1, {"k": 1}, {}, now.astimezone(timezone(timedelta(hours=2))), now),
        Event(str(uuid.uuid4()), "a", 2, "T", 1, {}, {}, now, now),
    ]
    store = PostgresEventStore(url)
    try:
        with pytest.raises(ValidationError, match="canonical form"):
            store.bulk_append([*batch[:2], batch[2]._replace(id=upper)])
        assert store.read_all() == []
        assert store.bulk_append(batch) == 4
        stored = store.read_all()
        assert [(e.stream_id, e.version) for e in stored] == [("b", 1), ("a", 1), ("b", 2), ("a", 2)]
        assert [e.with_position(None) for e in stored] == batch
        assert store.bulk_append([e.with_position(None) for e in stored]) == 0  # idempotent
    finally:
        store.close()


def test_bulk_append_rejects_what_validate_rejects_and_stores_nothing(url: str) -> None:
    from datetime import UTC, datetime

    from skyferry.core.errors import EventTooLarge, ValidationError
    from skyferry.core.messages import EVENT_SIZE_LIMIT, Event

    now = datetime.now(UTC)
    good = Event(str(uuid.uuid4()), "s", 1, "T", 1, {}, {}, now, now)
    bad = [
        (Event("not-a-uuid", "s", 2, "T", 1, {}, {}, now, now), ValidationError, "not a UUID"),
        (Event(str(uuid.uuid4()), "s", 2, "", 1, {}, {}, now, now), ValidationError, "event type"),
        (Event(str(uuid.uuid4()), "s", 2, "T", 0, {}, {}, now, now), ValidationError, "schema_version"),
        (Event(str(uuid.uuid4()), "s", 2, "T", 1, [], {}, now, now), ValidationError, "JSON objects"),  # type: ignore[arg-type]
        (Event(str(uuid.uuid4()), "s", 2, "T", 1, {"x": {1, 2}}, {}, now, now), ValidationError, "serializable"),
        (Event(str(uuid.uuid4()), "s", 2, "T", 1, {}, {}, now.replace(tzinfo=None), now), ValidationError, "aware"),
        (Event(str(uuid.uuid4()), "s", 2, "T", 1, {"x": "y" * EVENT_SIZE_LIMIT}, {}, now, now), EventTooLarge, "limit"),
    ]
    store = PostgresEventStore(url)
    try:
        for event, error, text in bad:
            with pytest.raises(error, match=text):
                store.bulk_append([good, event])
        assert store.read_all() == []
    finally:
        store.close()
