"""PostgreSQL store beyond the conformance suite.

* schema migrations, bad settings, missing privileges, dropped connections;
* ``append`` by its two paths: many events by binary COPY after the version check, few by
  one pipelined INSERT.  Appends of ``_COPY_FROM`` events or more go by COPY; every
  guarantee of ``append`` must hold on both paths: the same stored events, the version
  check, idempotent repeats, an id stored in another stream refused, ``ANY``, validation
  before anything is written;
* the sequence-gap problem: a reader tailing ``read_all`` never skips an event.  Commit
  delays are injected inside PostgreSQL: a deferred constraint trigger runs at COMMIT,
  after the row's position was assigned and before it becomes visible, and sleeps for
  ``data.sleep`` seconds.  That is exactly the window in which a later position can commit
  first.  The last test removes the adapter's gap protection and checks that the detector
  used by the others does report the skipped event, so these tests can fail.

Everything runs against the machine's PostgreSQL (see ``tests/services/postgres.py``),
each test in its own schema (and, where it needs one, its own login role), dropped
afterwards.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from skyferry.adapters.registry import open_event_store, open_view_store
from skyferry.adapters.stores.postgres import SCHEMA_VERSION, PostgresEventStore, PostgresViewStore
from skyferry.adapters.stores.postgres.rows import (
    _COPY_BINARY_HEADER,
    _COPY_BINARY_TRAILER,
    _COPY_BLOCK_ROWS,
    _COPY_FROM,
    _appended_copy_data,
    _binary_appendable,
    _binary_storable,
    _stored_copy_data,
)
from skyferry.core.errors import ConcurrencyError, ConfigurationError, EventTooLarge, TransientError, ValidationError
from skyferry.core.messages import Event, NewEvent
from skyferry.core.ports import ANY, NO_STREAM, CopiedBatch, ViewChange
from tests.integration.migrate_support import awkward_history as history
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


def test_libpq_parameters_reach_the_server_as_libpq_reads_them(url: str) -> None:
    # libpq percent-decodes a URI and keeps "+" as it is: a space is %20, never "+"
    store = PostgresEventStore(url + "&options=-c%20statement_timeout%3D4321&application_name=a+b%20c")
    with store.db.connection("reading settings") as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
        assert conn.execute("SHOW application_name").fetchone() == ("a+b c",)
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


def test_bulk_append_reads_heads_again_only_after_another_write(url: str) -> None:
    """A batch after this instance's own reads no heads (the heads query is made to fail to
    show it); once another writer has written, the heads are read again, and a batch that
    no longer continues its stream is refused by its version, not by the unique index."""
    now = datetime.now(UTC)

    def event(stream: str, version: int) -> Event:
        return Event(str(uuid.uuid4()), stream, version, "T", 1, {}, {}, now, now)

    importer, other = PostgresEventStore(url), PostgresEventStore(url)
    try:
        assert importer.bulk_append([event("a", 1), event("b", 1), event("a", 2)]) == 3
        heads_sql = importer._heads_sql
        # What follows must not read the heads of "a" or "b": reading them fails.
        importer._heads_sql = b"SELECT 'x', 1 / 0 FROM unnest(%s::text[])"
        assert importer.bulk_append([event("b", 2), event("a", 3)]) == 2
        with pytest.raises(ValidationError, match="division by zero"):  # a stream it has not written: read
            importer.bulk_append([event("c", 1)])
        other.append("a", [NewEvent("T", {})], ANY)  # a write of another instance: read again
        with pytest.raises(ValidationError, match="division by zero"):
            importer.bulk_append([event("a", 4)])
        importer._heads_sql = heads_sql
        with pytest.raises(ConcurrencyError, match="version 4 holds another event"):
            importer.bulk_append([event("b", 3), event("a", 4)])
        assert importer.bulk_append([event("b", 3), event("a", 5)]) == 2
        assert [(e.stream_id, e.version) for e in importer.read_all()][-2:] == [("b", 3), ("a", 5)]
        assert importer.stream_version("a") == 5
    finally:
        importer.close()
        other.close()


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


# --- copy_from: a migration's batch from server to server ---------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[PostgresEventStore, PostgresEventStore]]:
    """A source and a target store, each in a schema of its own."""
    with postgres.fresh_schema() as source_url, postgres.fresh_schema() as target_url:
        source, target = PostgresEventStore(source_url), PostgresEventStore(target_url)
        try:
            yield source, target
        finally:
            source.close()
            target.close()


def test_copy_from_stores_what_bulk_append_of_the_read_events_would(
    pair: tuple[PostgresEventStore, PostgresEventStore], url: str
) -> None:
    source, target = pair
    reference = PostgresEventStore(url)
    try:
        source.bulk_append(history(5, 6))
        prior = [e._replace(stream_id=f"prior.{i}") for i, e in enumerate(history(2, 1))]
        reference.bulk_append(prior)  # both targets start with other events
        target.bulk_append(prior)
        reference.bulk_append([e.with_position(None) for e in source.read_all(after=None, limit=1000)])
        assert target.copies_from(source)
        first = target.copy_from(source, None, 7)
        assert first is not None
        assert (first.events, first.last_position) == (7, source.read_all(limit=7)[-1].position)
        assert first.last_recorded_at == max(e.recorded_at for e in source.read_all(limit=7))
        rest = target.copy_from(source, first.last_position, 1000)
        assert rest is not None
        assert rest.events == 23
        assert rest.last_position == source.last_position()
        assert target.copy_from(source, rest.last_position, 1000) == CopiedBatch(0, rest.last_position, None)
        assert target.read_all(limit=1000) == reference.read_all(limit=1000)  # fields, order, positions
        assert target.stream_version("tenant/ü.s0") == 6
    finally:
        reference.close()


def test_copy_from_leaves_a_batch_that_needs_event_checks_to_bulk_append(
    pair: tuple[PostgresEventStore, PostgresEventStore],
) -> None:
    """A batch overlapping what the target holds (a resumed copy), or one whose stream would
    not continue the target's, is not written: ``None``."""
    source, target = pair
    events = history(2, 3)
    source.bulk_append(events)
    target.bulk_append(events[:3])  # one stream at version 2, the other at 1: a resumed copy
    assert target.copy_from(source, None, 1000) is None
    assert len(target.read_all(limit=1000)) == 3
    assert target.bulk_append(events) == 3  # bulk_append skips what is stored
    later = history(2, 4)[6:]  # version 4 of both streams
    source.bulk_append(later)
    target.bulk_append([later[0]._replace(id=str(uuid.uuid4()))])  # the target's own version 4
    assert target.copy_from(source, source.read_all(limit=6)[-1].position, 1000) is None
    assert target.stream_version("s-1") == 3


def test_copy_from_of_an_id_stored_in_another_stream_is_refused_whole(
    pair: tuple[PostgresEventStore, PostgresEventStore],
) -> None:
    source, target = pair
    events = history(3, 2)
    source.bulk_append(events)
    target.bulk_append([events[4]._replace(stream_id="elsewhere", version=1)])
    with pytest.raises(ConcurrencyError, match=events[4].id):
        target.copy_from(source, None, 1000)
    assert [e.stream_id for e in target.read_all(limit=1000)] == ["elsewhere"]


def test_copy_from_refuses_a_store_without_rows_and_checks_its_limit(
    pair: tuple[PostgresEventStore, PostgresEventStore],
) -> None:
    source, target = pair
    other = open_event_store("memory://")
    try:
        assert not target.copies_from(other)
        with pytest.raises(ValidationError, match="PostgreSQL stores and stores with rows"):
            target.copy_from(other, None, 10)
        with pytest.raises(ValidationError, match="limit"):
            target.copy_from(source, None, 0)
    finally:
        other.close()


def test_copy_from_that_fails_midway_stores_nothing_and_a_rerun_copies_all(
    pair: tuple[PostgresEventStore, PostgresEventStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target's connection dies while the rows stream into its COPY: its transaction
    rolls back, the error is transient, and the same call again copies the batch."""
    source, target = pair
    source.bulk_append(history(20, 50))
    name = f"copy-{uuid.uuid4().hex[:8]}"
    dying = PostgresEventStore(f"{target.url}&application_name={name}&pool_min=1&pool_max=1")
    killed = threading.Event()

    def kill_when_copying() -> None:
        with admin() as conn:
            for _ in range(5000):
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
                    " AND query LIKE 'COPY%%'",
                    [name],
                ).fetchone()
                if row:
                    conn.execute("SELECT pg_terminate_backend(%s)", [row[0]])
                    killed.set()
                    return
                time.sleep(0.001)

    write = psycopg.Copy.write

    def slow_write(self: psycopg.Copy, data: bytes) -> None:
        time.sleep(0.0005)  # rows trickle: the COPY stays open until the killer has seen it
        write(self, data)

    try:
        monkeypatch.setattr(psycopg.Copy, "write", slow_write)
        killer = threading.Thread(target=kill_when_copying)
        killer.start()
        with pytest.raises(TransientError):
            dying.copy_from(source, None, 1000)
        killer.join(10)
        assert killed.is_set()
        monkeypatch.undo()
        assert target.read_all(limit=10) == []
        copied = dying.copy_from(source, None, 1000)
        assert copied is not None
        assert copied.events == 1000
        assert [e.id for e in target.read_all(limit=1000)] == [e.id for e in source.read_all(limit=1000)]
    finally:
        dying.close()


# --- append: binary COPY and pipelined INSERT ------------------------------------------------


TRICKY = {"text": 'tab\there, newline\n, back\\slash, quote", ünïcödé, 🚀', "nested": {"a": [1, 2.5, None, True]}}


@pytest.fixture
def store() -> Iterator[PostgresEventStore]:
    with postgres.fresh_schema() as url:
        s = PostgresEventStore(url)
        yield s
        s.close()


def tricky_events(count: int, **data: object) -> list[NewEvent]:
    return [NewEvent("Happened", {"n": n, **TRICKY, **data}, {"m": n}) for n in range(count)]


@pytest.mark.parametrize("count", [_COPY_FROM - 1, _COPY_FROM, 1000])
def test_both_paths_store_the_same_events(store: PostgresEventStore, count: int) -> None:
    first = tricky_events(count)
    recorded = datetime(2020, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)
    first[0] = NewEvent("Imported", {"x": 1}, recorded_at=recorded, schema_version=3)
    result = store.append("s-1", first, NO_STREAM)
    assert (result.first_version, result.last_version, result.idempotent) == (1, count, False)
    stored = store.read_stream("s-1")
    assert [e.version for e in stored] == list(range(1, count + 1))
    for new, old in zip(first, stored, strict=True):
        assert (old.id, old.type, old.schema_version, old.data, old.metadata, old.occurred_at) == (
            new.id,
            new.type,
            new.schema_version,
            new.data,
            new.metadata,
            new.occurred_at,
        )
    assert stored[0].recorded_at == recorded
    assert len({e.recorded_at for e in stored[1:]}) <= 1  # one append, one time of recording


def test_a_stale_expected_version_is_a_conflict_and_stores_nothing(store: PostgresEventStore) -> None:
    store.append("s-1", tricky_events(3), NO_STREAM)
    with pytest.raises(ConcurrencyError) as caught:
        store.append("s-1", tricky_events(_COPY_FROM), 1)
    assert caught.value.actual == 3
    assert store.stream_version("s-1") == 3


def test_the_same_append_again_is_idempotent(store: PostgresEventStore) -> None:
    batch = tricky_events(_COPY_FROM * 2)
    store.append("s-1", batch, NO_STREAM)
    again = store.append("s-1", batch, NO_STREAM)
    assert (again.first_version, again.last_version, again.idempotent) == (1, len(batch), True)
    assert store.stream_version("s-1") == len(batch)


def test_an_id_stored_in_another_stream_is_refused_and_nothing_stored(store: PostgresEventStore) -> None:
    batch = tricky_events(_COPY_FROM)
    store.append("s-1", batch[:1], NO_STREAM)
    with pytest.raises(ConcurrencyError, match=r"already stored in stream .s-1."):
        store.append("s-2", batch, NO_STREAM)
    assert store.stream_version("s-2") == 0


def test_any_appends_after_whatever_is_there(store: PostgresEventStore) -> None:
    store.append("s-1", tricky_events(2), NO_STREAM)
    result = store.append("s-1", tricky_events(_COPY_FROM), ANY)
    assert (result.first_version, result.last_version) == (3, 2 + _COPY_FROM)
    assert [e.version for e in store.read_stream("s-1")] == list(range(1, 3 + _COPY_FROM))


def test_an_invalid_event_anywhere_refuses_the_whole_append_before_writing(store: PostgresEventStore) -> None:
    batch = tricky_events(_COPY_FROM * 2)
    batch[-1] = NewEvent("Bad", {"big": "x" * 300_000})
    with pytest.raises(EventTooLarge):
        store.append("s-1", batch, NO_STREAM)
    assert store.stream_version("s-1") == 0


def test_rows_the_binary_format_cannot_hold_exactly_go_by_insert() -> None:
    batch = tricky_events(2)
    assert _binary_appendable(batch)
    assert not _binary_appendable([batch[0], NewEvent("Happened", {}, schema_version=2**31)])


def test_rows_of_another_store_the_binary_format_cannot_hold_exactly_go_by_bulk_append() -> None:
    row = (None, str(uuid.uuid4()), "s", 1, "T", 1, "{}", "{}", 0, 0)
    assert _binary_storable([row])
    assert not _binary_storable([row, (None, str(uuid.uuid4()).upper(), *row[2:])])
    assert not _binary_storable([row, (*row[:3], 2**31, *row[4:])])
    assert not _binary_storable([row, (*row[:5], 2**31, *row[6:])])
    blocks = list(_stored_copy_data([row] * (_COPY_BLOCK_ROWS * 2 + 1)))
    assert len(blocks) == 3
    assert blocks[0].startswith(_COPY_BINARY_HEADER)
    assert blocks[-1].endswith(_COPY_BINARY_TRAILER)


def test_an_append_is_sent_in_blocks_that_make_one_copy_stream() -> None:
    now = datetime.now(UTC)
    count = _COPY_BLOCK_ROWS * 2 + 1
    batch = tricky_events(count)
    encoded = [(b"{}", b"{}")] * count
    blocks = list(_appended_copy_data("s", 1, batch, encoded, now))
    assert len(blocks) == 3  # the server can store one block while the next is built
    whole = b"".join(blocks)
    assert whole.startswith(_COPY_BINARY_HEADER)
    assert whole.endswith(_COPY_BINARY_TRAILER)
    assert all(whole.count(bytes.fromhex(e.id.replace("-", ""))) == 1 for e in batch)
    assert blocks[-1].count(bytes.fromhex(batch[-1].id.replace("-", ""))) == 1  # the last event, last


@pytest.mark.parametrize("count", [1, _COPY_FROM])
def test_after_a_refused_append_the_connection_is_idle_and_the_next_append_succeeds(
    store: PostgresEventStore, count: int
) -> None:
    batch = tricky_events(count)
    store.append("s-1", batch[:1], NO_STREAM)
    with pytest.raises(ConcurrencyError):
        store.append("s-2", batch, NO_STREAM)  # the INSERT (or COPY) fails on the unique id
    with pytest.raises(ConcurrencyError):
        store.append("s-1", tricky_events(count), 0)  # the version check fails
    with store.db.connection("checking") as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert store.append("s-3", tricky_events(count), NO_STREAM).last_version == count
    assert [e.version for e in store.read_stream("s-1")] == [1]


def test_an_id_stored_elsewhere_in_the_last_block_of_a_streamed_copy_refuses_the_whole_append(
    store: PostgresEventStore,
) -> None:
    batch = tricky_events(_COPY_BLOCK_ROWS * 2 + 1)  # three blocks; the last holds the duplicate
    store.append("s-1", batch[-1:], NO_STREAM)
    with pytest.raises(ConcurrencyError, match="already stored in stream 's-1'"):
        store.append("s-2", batch, NO_STREAM)
    assert store.stream_version("s-2") == 0
    with store.db.connection("checking") as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert store.append("s-2", batch[:-1], NO_STREAM).last_version == len(batch) - 1


# --- the sequence gap: a tailing reader never skips an event -----------------------------------


def install_commit_delay(url: str, schema: str) -> None:
    """Make every COMMIT that inserted an event with ``data.sleep`` wait that long."""
    with psycopg.connect(postgres.admin_dsn(), autocommit=True) as conn:
        s = sql.Identifier(schema)
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {}.commit_delay() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN PERFORM pg_sleep(coalesce((NEW.data->>'sleep')::float8, 0)); RETURN NULL; END $$"
            ).format(s)
        )
        conn.execute(
            sql.SQL(
                "CREATE CONSTRAINT TRIGGER commit_delay AFTER INSERT ON {}.events"
                " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {}.commit_delay()"
            ).format(s, s)
        )


@pytest.fixture
def delayed_url() -> Iterator[tuple[str, str]]:
    """A fresh schema whose commits can be delayed per event."""
    with postgres.fresh_schema() as url:
        schema = url.rsplit("schema=", 1)[1].split("&")[0]
        store = PostgresEventStore(url)
        try:
            store.stream_version("warm-up")  # creates the schema
        finally:
            store.close()
        install_commit_delay(url, schema)
        yield url, schema


class Tail:
    """A reader tailing ``read_all`` the way the relay does, keeping everything it saw."""

    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        self.seen: list[Event] = []
        self.after = store.last_position()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while True:
            done = self.stop.is_set()
            batch = self.store.read_all(after=self.after, limit=20)
            self.seen.extend(batch)
            if batch:
                self.after = batch[-1].position
            elif done:
                return
            else:
                time.sleep(0.001)

    def __enter__(self) -> Tail:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)

    def skipped(self, prefix: str) -> list[Event]:
        """Stored events of streams under ``prefix`` that the tail never saw."""
        seen = {e.id for e in self.seen}
        stored = [e for sid in self.store.list_streams(prefix) for e in self.store.read_stream(sid)]
        return [e for e in stored if e.id not in seen]


def test_tailing_reader_sees_every_event_under_random_commit_delays(delayed_url: tuple[str, str]) -> None:
    url, _ = delayed_url
    store = PostgresEventStore(url + "&pool_max=12")
    tag = f"gap-{uuid.uuid4().hex[:8]}-"
    writers, appends = 8, 20
    errors: list[BaseException] = []

    def write(w: int) -> None:
        rng = random.Random(w)
        try:
            for i in range(appends):
                sid = f"{tag}{rng.randrange(4)}"
                batch = [
                    NewEvent(type="T", data={"w": w, "i": i, "sleep": rng.choice([0, 0, 0.001, 0.004, 0.02])})
                    for _ in range(rng.choice([1, 1, 2]))
                ]
                try:
                    store.append(sid, batch, store.stream_version(sid) if rng.random() < 0.5 else ANY)
                except ConcurrencyError:
                    store.append(sid, batch, ANY)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    try:
        with Tail(store) as tail:
            threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, errors
        mine = [e for e in tail.seen if e.stream_id.startswith(tag)]
        assert len(mine) >= writers * appends
        assert tail.skipped(tag) == [], "the tailing reader skipped events"
        assert len({e.id for e in mine}) == len(mine), "an event was seen twice"
        for sid in {e.stream_id for e in mine}:
            assert [e.version for e in mine if e.stream_id == sid] == list(range(1, store.stream_version(sid) + 1))
    finally:
        store.close()


def wait_for_sleeping_commit(application_name: str) -> None:
    """Block until a session of ``application_name`` sleeps inside its COMMIT (bounded poll)."""
    with psycopg.connect(postgres.admin_dsn(), autocommit=True) as conn:
        for _ in range(3000):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event = 'PgSleep'",
                [application_name],
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    pytest.fail(f"the slow writer {application_name} never reached its COMMIT")


def slow_then_fast(store_class: type[PostgresEventStore], url: str, tag: str) -> Tail:
    """Writer A takes a position and commits slowly; writer B takes a later one and commits at once."""
    slow_name = f"slow-{tag}".rstrip("-")
    slow_store, fast_store = store_class(f"{url}&application_name={slow_name}"), store_class(url)
    try:
        with Tail(fast_store) as tail:
            slow = threading.Thread(
                target=slow_store.append, args=(f"{tag}a", [NewEvent(type="T", data={"sleep": 1.0})], 0)
            )
            slow.start()
            wait_for_sleeping_commit(slow_name)
            fast_store.append(f"{tag}b", [NewEvent(type="T", data={})], 0)
            slow.join()
        return tail
    finally:
        slow_store.close()


def test_a_later_position_never_becomes_visible_before_an_earlier_one(delayed_url: tuple[str, str]) -> None:
    tag = f"order-{uuid.uuid4().hex[:8]}-"
    tail = slow_then_fast(PostgresEventStore, delayed_url[0], tag)
    try:
        assert tail.skipped(tag) == []
        assert [e.stream_id for e in tail.seen] == [f"{tag}a", f"{tag}b"]
    finally:
        tail.store.close()


class UnprotectedStore(PostgresEventStore):
    """The adapter with its gap protection removed: what the tests above must catch."""

    def _append_lock(self) -> sql.Composable:
        return sql.SQL("SELECT 1")


def test_the_detector_catches_a_gap_when_the_protection_is_removed(delayed_url: tuple[str, str]) -> None:
    tag = f"teeth-{uuid.uuid4().hex[:8]}-"
    tail = slow_then_fast(UnprotectedStore, delayed_url[0], tag)
    try:
        assert [e.stream_id for e in tail.skipped(tag)] == [f"{tag}a"]
    finally:
        tail.store.close()


# --- long reads, streamed -------------------------------------------------------------------


class _StreamSpy:
    """Counts the statements the store streams (``Cursor.stream``), and can fail a streamed
    read after its first row, as a decoding error would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, fail: bool = False) -> None:
        self.calls = 0
        original = psycopg.Cursor.stream
        spy = self

        def stream(cursor: psycopg.Cursor[object], *args: object, **kwargs: object) -> Iterator[object]:
            spy.calls += 1
            for number, row in enumerate(original(cursor, *args, **kwargs)):  # type: ignore[arg-type]
                if fail and number == 1:
                    raise RuntimeError("decoding failed")
                yield row

        monkeypatch.setattr(psycopg.Cursor, "stream", stream)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "libpq-before-17"])
def test_long_reads_are_streamed_and_give_what_short_reads_give(
    store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    from skyferry.adapters.stores.postgres import rows

    monkeypatch.setattr(rows, "_CHUNKED", chunked)
    store.append("long", tricky_events(rows.STREAM_FIRST * 3), NO_STREAM)
    store.append("short", tricky_events(rows.STREAM_FIRST - 1), NO_STREAM)
    pages = []
    after = None
    while page := store.read_all(after=after, limit=rows.STREAM_FIRST):  # never more: never streamed
        pages += page
        after = page[-1].position
    spy = _StreamSpy(monkeypatch)
    assert store.read_stream("short") == [e._replace(position=None) for e in pages if e.stream_id == "short"]
    assert store.read_all(after=pages[-5].position, limit=1000) == pages[-4:]  # a tail: a few new events
    assert spy.calls == 0  # reads within the first rows: one prepared statement each
    assert store.read_stream("long") == [e._replace(position=None) for e in pages if e.stream_id == "long"]
    assert store.read_all(limit=1000) == pages
    assert store.read_all(after=pages[9].position, limit=250) == pages[10:260]
    assert spy.calls == (3 if chunked else 0)
    # 389 events after the tenth, in pages of 120: the first streams past its 100th event;
    # each of the three after it continues a full page, so streams whole (the last holds 29)
    backlog = [store.read_all(after=pages[9].position, limit=120)]
    while len(backlog[-1]) == 120:
        backlog.append(store.read_all(after=backlog[-1][-1].position, limit=120))
    assert [len(page) for page in backlog] == [120, 120, 120, 29]
    assert [event for page in backlog for event in page] == pages[10:]
    assert spy.calls == (7 if chunked else 0)
    assert store.read_all(after=pages[-1].position, limit=120) == []  # after a partial page: prepared
    assert spy.calls == (7 if chunked else 0)


def test_a_streamed_read_that_fails_midway_leaves_its_connection_clean(
    store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from skyferry.adapters.stores.postgres import rows

    store.append("long", tricky_events(rows.STREAM_FIRST * 2), NO_STREAM)
    whole = store.read_stream("long")
    with monkeypatch.context() as patched:
        _StreamSpy(patched, fail=True)
        with pytest.raises(RuntimeError, match="decoding failed"):
            store.read_stream("long")
        with pytest.raises(RuntimeError, match="decoding failed"):
            store.read_all(limit=1000)
    for _ in range(3):  # every pooled connection answers again, in no transaction
        assert store.read_stream("long") == whole
        assert len(store.read_all(limit=1000)) == len(whole)
        with store.db.connection("checking") as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def _stream_read_plans(store: PostgresEventStore, stream_id: str) -> list[str]:
    """The plans of a long read_stream's two statements: its first rows, and the rest."""
    from skyferry.adapters.stores.postgres import rows

    query = store._read_stream_sql[False]
    plans = []
    with store.db.connection("explaining") as conn:
        first, rest = rows.STREAM_FIRST, None
        for params in ([stream_id, 1, 2**31 - 1, first], [stream_id, first + 1, 2**31 - 1, rest]):
            lines = conn.execute(b"EXPLAIN " + query, params, prepare=False).fetchall()
            plans.append("\n".join(str(line[0]) for line in lines))
    return plans


def test_a_stream_is_read_by_an_index_scan_in_version_order_with_or_without_statistics(
    store: PostgresEventStore,
) -> None:
    # With PostgreSQL's default costs, a table without statistics plans a bitmap scan and a
    # sort for this read: the first row only after the last is read (checked: this fails).
    store.append("warm-up", events(), NO_STREAM)
    with admin() as conn:  # keep the table without statistics until the test analyzes it
        conn.execute(
            sql.SQL("ALTER TABLE {}.events SET (autovacuum_enabled = false)").format(sql.Identifier(store.db.schema))
        )
    now = datetime.now(UTC)
    for r in range(30):  # the long stream's events scattered among ten others'
        store.bulk_append(
            [
                Event(str(uuid.uuid4()), stream, r * 10 + n, "T", 1, {}, {}, now, now)
                for stream in [f"other-{s}" for s in range(10)] + ["long"]
                for n in range(1, 11)
            ]
        )
    assert len(store.read_stream("long")) == 300
    for analyzed in (False, True):
        if analyzed:
            with admin() as conn:
                conn.execute(sql.SQL("ANALYZE {}.events").format(sql.Identifier(store.db.schema)))
        for plan in _stream_read_plans(store, "long"):
            assert "Index Scan using events_stream_version" in plan, (analyzed, plan)
            assert "Sort" not in plan, (analyzed, plan)
            assert "Bitmap" not in plan, (analyzed, plan)
