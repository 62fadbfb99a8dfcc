"""What the conformance suite cannot see of the embedded adapters: URLs, durability, files, sharing."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from pathlib import Path

import apsw
import pytest

from skyferry.adapters.archives.local import LocalArchive
from skyferry.adapters.brokers.memory import MemoryBroker
from skyferry.adapters.stores.memory import MemoryEventStore, MemoryViewStore
from skyferry.adapters.stores.sqlite import EVENTS_SCHEMA, VIEWS_SCHEMA, SQLiteEventStore, SQLiteViewStore, parse_url
from skyferry.core.errors import ConcurrencyError, ConfigurationError, ValidationError
from skyferry.core.messages import Event, NewEvent, new_event_id, utc_now
from skyferry.core.ports import ANY, Message, ViewChange

# --- SQLite ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path", "level"),
    [
        ("sqlite:///skyferry.db", "skyferry.db", "FULL"),
        ("sqlite:////var/data/x.db", "/var/data/x.db", "FULL"),
        ("sqlite:///x.db?synchronous=normal", "x.db", "NORMAL"),
        ("sqlite:///x.db?synchronous=FULL", "x.db", "FULL"),
    ],
)
def test_sqlite_urls_name_the_file_and_the_durability(url: str, path: str, level: str) -> None:
    assert parse_url(url) == (path, level)


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:///x.db?synchronous=off", "sqlite:///x.db?mode=ro"]
)
def test_bad_sqlite_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteEventStore.from_url(url)


@pytest.mark.parametrize(("query", "expected"), [("", 2), ("?synchronous=normal", 1)])
def test_the_file_runs_in_wal_at_the_stated_durability(tmp_path: Path, query: str, expected: int) -> None:
    store = SQLiteEventStore(f"sqlite:///{tmp_path}/d.db{query}")
    try:
        store.append("s", [NewEvent("E", {})], ANY)
        mode = store._conn.run(lambda db: db.execute("PRAGMA journal_mode").get)
        level = store._conn.run(lambda db: db.execute("PRAGMA synchronous").get)
        assert (mode, level) == ("wal", expected)
    finally:
        store.close()


def test_a_statement_is_prepared_once_whatever_its_parameters(tmp_path: Path) -> None:
    """The planner's stability guarantee is on, and with it a cached statement runs as it was
    prepared: binding new values to its ``WHERE`` does not compile it again on every call.
    SQLite asks the authorizer about every table a statement touches as it compiles it."""
    store = SQLiteEventStore(f"sqlite:///{tmp_path}/q.db?synchronous=normal")
    asked: list[int] = []

    def authorizer(*_: object) -> int:
        asked.append(1)
        return apsw.SQLITE_OK

    def command(n: int) -> None:
        store.append(f"s-{n}", [NewEvent("E", {})], 0)
        store.read_stream(f"s-{n}")

    try:
        store._conn.run(lambda db: setattr(db, "authorizer", authorizer))
        command(0)  # compiles the append's and the read's statements
        compiled = len(asked)
        for n in range(1, 20):
            command(n)
        assert compiled > 0
        assert len(asked) == compiled
    finally:
        store.close()


def test_a_file_written_through_the_standard_library_is_read_and_continued(tmp_path: Path) -> None:
    """Files from before the store drove SQLite through apsw: the system's SQLite and the
    ``sqlite3`` module wrote them, the SQLite that apsw bundles reads and extends them."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(EVENTS_SCHEMA + VIEWS_SCHEMA)
    old.execute(
        "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at, recorded_at)"
        " VALUES (?, 's', 1, 'E', 1, '{\"n\":1}', '{}', 1700000000000000, 1700000000000000)",
        (new_event_id(),),
    )
    old.execute("INSERT INTO checkpoints VALUES ('p', '$all', '1')")
    old.commit()
    old.close()
    store = SQLiteEventStore(f"sqlite:///{path}", existing=True)
    views = SQLiteViewStore(f"sqlite:///{path}")
    try:
        assert [(e.version, e.data) for e in store.read_stream("s")] == [(1, {"n": 1})]
        assert store.append("s", [NewEvent("E", {"n": 2})], 1).last_version == 2
        assert [e.data["n"] for e in store.read_all()] == [1, 2]
        assert views.get_checkpoint("p") == "1"
    finally:
        store.close()
        views.close()


@pytest.mark.parametrize("ended_by_sqlite", [False, True])
def test_a_failed_write_is_undone_and_its_own_error_reported(tmp_path: Path, ended_by_sqlite: bool) -> None:
    """Whether the transaction is still open when the work fails or SQLite has already ended
    it, the caller sees the work's error, nothing of it is stored, and the store goes on."""
    store = SQLiteEventStore(f"sqlite:///{tmp_path}/w.db")
    store.append("s", [NewEvent("E", {})], ANY)

    def work(db: apsw.Connection) -> None:
        db.execute(
            "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at,"
            " recorded_at) VALUES (?, 's', 2, 'E', 1, '{}', '{}', 0, 0)",
            (new_event_id(),),
        )
        if ended_by_sqlite:
            db.execute("ROLLBACK")
        raise RuntimeError("the work failed")

    try:
        with pytest.raises(RuntimeError, match="the work failed"):
            store._conn.write(work)
        assert store.stream_version("s") == 1
        assert store.append("s", [NewEvent("E", {})], 1).last_version == 2
    finally:
        store.close()


def test_a_file_with_the_old_temporal_index_loses_it_and_reads_as_of_a_time_still(tmp_path: Path) -> None:
    """Files written before kept an index on ``(stream_id, recorded_at)``; a store that
    opens one to write drops it, and as-of reads take the stream's own index."""
    path = tmp_path / "old.db"
    old = apsw.Connection(str(path))
    old.execute(EVENTS_SCHEMA + "CREATE INDEX events_stream_recorded ON events (stream_id, recorded_at);")
    for version, recorded in [(1, 1_700_000_000_000_000), (2, 1_700_000_100_000_000), (3, 1_700_000_200_000_000)]:
        old.execute(
            "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at,"
            " recorded_at) VALUES (?, 's', ?, 'E', 1, '{}', '{}', ?, ?)",
            (new_event_id(), version, recorded, recorded),
        )
    old.execute(
        "INSERT INTO events (id, stream_id, version, type, schema_version, data, metadata, occurred_at,"
        " recorded_at) VALUES (?, 't', 1, 'E', 1, '{}', '{}', 0, 0)",
        (new_event_id(),),
    )

    def indexes() -> list[str]:
        return [name for (name,) in old.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]

    assert "events_stream_recorded" in indexes()
    store = SQLiteEventStore(f"sqlite:///{path}")
    try:
        moment = store.read_stream("s")[1].recorded_at
        assert [e.version for e in store.read_stream_as_of("s", moment)] == [1, 2]
        assert "events_stream_recorded" not in indexes()
        plan = old.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM events WHERE stream_id = ? AND recorded_at <= ? ORDER BY version",
            ("s", 0),
        ).fetchall()
        assert "USING INDEX sqlite_autoindex_events_2 (stream_id=?)" in str(plan)  # no sort, no scan
        assert "TEMP B-TREE" not in str(plan)
    finally:
        store.close()
        old.close()


def test_bulk_append_reads_the_heads_of_many_streams_in_one_query(tmp_path: Path) -> None:
    """The heads of every stream of a call come back as one JSON object: stream ids beyond
    ASCII survive it, streams partly stored continue, new ones start at 1."""
    store = SQLiteEventStore(f"sqlite:///{tmp_path}/h.db")
    streams = [f"{name}-{i}" for i in range(300) for name in ("plain", "üñï/çødé", "流.水:\U0001d400_")]
    try:
        stored = [s for i, s in enumerate(streams) if i % 2 == 0]
        for sid in stored:
            store.append(sid, [NewEvent("E", {"n": 1})], ANY)
        now = utc_now()
        events = [
            Event(new_event_id(), sid, version, "E", 1, {"n": version}, {}, now, now)
            for sid in streams
            for version in ((2, 3) if sid in stored else (1, 2))
        ]
        statements: list[str] = []

        def trace(_cursor: apsw.Cursor, sql: str, _bindings: object) -> bool:
            statements.append(sql)
            return True

        store._conn.run(lambda db: setattr(db, "exec_trace", trace))
        assert store.bulk_append(events) == len(events)
        heads = [sql for sql in statements if "max(version)" in sql]
        assert len(heads) == 1  # 900 streams, one query (it was one per 500 streams, a row each)
        assert {sid: store.stream_version(sid) for sid in streams} == dict.fromkeys(streams, 3) | {
            sid: 2 for sid in streams if sid not in stored
        }
    finally:
        store.close()


def test_a_new_file_switched_to_wal_while_another_connection_writes_waits_instead_of_failing(tmp_path: Path) -> None:
    """A new file is in rollback-journal mode; switching it to WAL while another connection holds
    the write lock is a deadlock SQLite reports at once, busy timeout or not (CI saw four stores
    opening one new file fail this way).  The store retries and succeeds once the writer commits."""
    path = tmp_path / "new.db"
    other = apsw.Connection(str(path))
    other.execute("CREATE TABLE unrelated (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO unrelated VALUES (1)")
    store = SQLiteEventStore(f"sqlite:///{path}")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    started = time.monotonic()
    release.start()
    try:
        assert store.append("s", [NewEvent("E", {})], ANY).last_version == 1
        assert time.monotonic() - started >= 0.3  # it waited for the writer rather than racing it
        assert [e.version for e in store.read_stream("s")] == [1]
    finally:
        release.join()
        store.close()
        other.close()


def test_read_all_is_gap_free_with_writers_in_separate_connections(tmp_path: Path) -> None:
    """Four store instances (four connections, as four processes would have) append while a fifth tails."""
    url = f"sqlite:///{tmp_path}/c.db?synchronous=normal"
    writers = [SQLiteEventStore(url) for _ in range(4)]
    reader = SQLiteEventStore(url)
    per_writer = 60
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(per_writer):
                writers[n].append(f"w{n}", [NewEvent("E", {"i": i}), NewEvent("E", {"i": i})], ANY)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    seen: list[tuple[str, int]] = []
    positions: list[int] = []
    after = None
    deadline = time.monotonic() + 120
    while len(seen) < 4 * per_writer * 2 and time.monotonic() < deadline:
        page = reader.read_all(after, 7)
        for event in page:
            seen.append((event.stream_id, event.version))
            assert event.position is not None
            positions.append(int(event.position))
        if page:
            after = page[-1].position
    for thread in threads:
        thread.join()
    assert not errors
    assert len(seen) == len(set(seen)) == 4 * per_writer * 2
    assert positions == list(range(positions[0], positions[0] + len(positions)))
    for n in range(4):
        assert [v for s, v in seen if s == f"w{n}"] == list(range(1, per_writer * 2 + 1))
    for store in [*writers, reader]:
        store.close()


def test_one_event_appends_racing_for_one_stream_from_separate_connections_each_win_once(tmp_path: Path) -> None:
    """Four connections read the stream's version together, then each appends one event at
    it (the single statement of ``append``), forty rounds: every round has exactly one
    winner and three ``ConcurrencyError``s, and nothing else (no busy error, no lost or
    doubled event)."""
    url = f"sqlite:///{tmp_path}/race.db?synchronous=normal"
    writers = [SQLiteEventStore(url) for _ in range(4)]
    rounds = 40
    read, appended = threading.Barrier(4, timeout=30), threading.Barrier(4, timeout=30)
    errors: list[BaseException] = []
    wins = [0] * 4
    conflicts = [0] * 4

    def write(n: int) -> None:
        try:
            for i in range(rounds):
                version = writers[n].stream_version("contested")
                read.wait()  # all four hold the same version now
                try:
                    writers[n].append("contested", [NewEvent("E", {"writer": n, "round": i})], version)
                    wins[n] += 1
                except ConcurrencyError:
                    conflicts[n] += 1
                appended.wait()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    events = writers[0].read_stream("contested")
    assert [e.version for e in events] == list(range(1, rounds + 1))
    assert [e.data["round"] for e in events] == list(range(rounds))
    assert sum(wins) == rounds
    assert sum(conflicts) == 3 * rounds
    for store in writers:
        store.close()


def test_a_corrupt_file_is_named_by_both_stores(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(os.urandom(8192))
    for store in (SQLiteEventStore(f"sqlite:///{path}"), SQLiteViewStore(f"sqlite:///{path}")):
        with pytest.raises(ConfigurationError, match=re.escape(str(path))):
            store.get("c", "k") if isinstance(store, SQLiteViewStore) else store.stream_version("s")
        store.close()


def test_a_read_only_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    store = SQLiteEventStore(f"sqlite:///{path}")
    store.append("s", [NewEvent("E", {})], ANY)
    store.close()
    path.chmod(0o444)
    try:
        again = SQLiteEventStore(f"sqlite:///{path}")
        with pytest.raises(ConfigurationError, match="read-only"):
            again.append("s", [NewEvent("E", {})], ANY)
        again.close()
    finally:
        path.chmod(0o644)
    assert SQLiteEventStore(f"sqlite:///{path}").stream_version("s") == 1


def test_a_missing_directory_is_a_configuration_error_naming_the_file(tmp_path: Path) -> None:
    store = SQLiteViewStore(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    with pytest.raises(ConfigurationError, match=r"x\.db"):
        store.get("c", "k")


def test_the_view_store_keeps_json_types_apart_in_queries(tmp_path: Path) -> None:
    views = SQLiteViewStore(f"sqlite:///{tmp_path}/v.db")
    views.commit("p", [ViewChange("c", "a", {"f": True}), ViewChange("c", "b", {"f": 1})], {})
    assert [k for k, _ in views.query("c", where=("f", True))] == ["a"]
    assert [k for k, _ in views.query("c", where=("f", 1))] == ["b"]
    views.close()


# --- memory ---------------------------------------------------------------------------------


def test_named_memory_stores_are_shared_and_plain_ones_are_fresh() -> None:
    name = "unit-shared"
    try:
        first = MemoryEventStore.from_url(f"memory://{name}")
        first.append("s", [NewEvent("E", {})], ANY)
        assert MemoryEventStore.from_url(f"memory://{name}").stream_version("s") == 1
        assert MemoryEventStore.from_url("memory://").stream_version("s") == 0
        assert MemoryViewStore.from_url(f"memory://{name}") is MemoryViewStore.from_url(f"memory://{name}")
    finally:
        MemoryEventStore.forget(name)
        MemoryViewStore.forget(name)
    assert MemoryEventStore.from_url(f"memory://{name}").stream_version("s") == 0
    MemoryEventStore.forget(name)


def test_the_memory_broker_reads_its_backoff_from_the_url() -> None:
    assert MemoryBroker.from_url("memory://").retry_backoff == 1.0
    assert MemoryBroker.from_url("memory://?retry_backoff=0.25").retry_backoff == 0.25
    assert MemoryBroker.from_url("memory://?retain=10").retain == 10
    for bad in (
        "memory://?retry_backoff=soon",
        "memory://?retry_backoff=-1",
        "memory://?colour=red",
        "memory://?retain=0",
        "memory://?retain=many",
    ):
        with pytest.raises(ConfigurationError):
            MemoryBroker.from_url(bad)


def test_the_memory_broker_waits_the_backoff_before_redelivering() -> None:
    broker = MemoryBroker.from_url("memory://?retry_backoff=0.2")
    attempts: list[float] = []
    delivered = threading.Event()

    def handler(message: Message) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("first delivery fails")
        delivered.set()

    broker.publish([Message("m1", "k", b"x")])
    broker.subscribe("g", handler)
    assert delivered.wait(10)
    assert attempts[1] - attempts[0] >= 0.2
    broker.close()


def test_a_named_broker_keeps_its_messages_for_a_later_consumer() -> None:
    name = "unit-broker"
    try:
        MemoryBroker.from_url(f"memory://{name}").publish([Message("a", "k", b"1"), Message("a", "k", b"dup")])
        got: list[bytes] = []
        done = threading.Event()

        def handler(message: Message) -> None:
            got.append(message.body)
            done.set()

        subscription = MemoryBroker.from_url(f"memory://{name}").subscribe("g", handler)
        assert done.wait(10)
        subscription.close()
        assert got == [b"1"]
    finally:
        MemoryBroker.forget(name)


# --- local archive --------------------------------------------------------------------------


def test_a_bare_path_and_a_file_url_are_the_same_archive(tmp_path: Path) -> None:
    LocalArchive.from_url(str(tmp_path / "a")).put("x/y.bin", b"1")
    assert LocalArchive.from_url(f"file://{tmp_path}/a").get("x/y.bin") == b"1"


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../../b", "a//b", "a\\b", "", "./a", "x/.tmp-1"])
def test_names_that_leave_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    archive = LocalArchive(tmp_path)
    with pytest.raises(ValidationError):
        archive.put(name, b"x")


def test_a_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "out").symlink_to(tmp_path)
    with pytest.raises(ValidationError):
        LocalArchive(root).put("out/file", b"x")


def test_put_leaves_no_temporary_file_and_replaces_atomically(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path)
    archive.put("m.json", b"old")
    archive.put("m.json", b"new")
    assert archive.get("m.json") == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    (tmp_path / ".tmp-crashed").write_bytes(b"half")
    assert archive.list() == ["m.json"]


def test_the_memory_broker_keeps_a_bounded_log_for_late_groups() -> None:
    broker = MemoryBroker.from_url("memory://?retain=3&retry_backoff=0.01")
    broker.publish([Message(str(i), "k", str(i).encode()) for i in range(5)])
    got: list[bytes] = []
    done = threading.Event()

    def handler(message: Message) -> None:
        got.append(message.body)
        if message.id == "5":
            done.set()

    broker.subscribe("late", handler)
    broker.publish([Message("5", "k", b"5"), Message("4", "k", b"dup")])
    assert done.wait(10)
    broker.close()
    assert got == [b"2", b"3", b"4", b"5"]


@pytest.mark.parametrize("url_kind", ["memory", "sqlite"])
def test_negative_limits_are_refused_not_read_as_no_limit(tmp_path: Path, url_kind: str) -> None:
    store = MemoryEventStore() if url_kind == "memory" else SQLiteEventStore(f"sqlite:///{tmp_path}/l.db")
    store.append("s", [NewEvent("E", {}), NewEvent("E", {})], ANY)
    with pytest.raises(ValidationError):
        store.read_all(None, -1)
    with pytest.raises(ValidationError):
        store.read_all(None, 0)
    with pytest.raises(ValidationError):
        store.read_stream("s", limit=-1)
    assert store.read_stream("s", limit=0) == []
    store.close()
