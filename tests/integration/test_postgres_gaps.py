"""The sequence-gap problem on PostgreSQL: a reader tailing ``read_all`` never skips an event.

Commit delays are injected inside PostgreSQL: a deferred constraint trigger runs at
COMMIT, after the row's position was assigned and before it becomes visible, and sleeps
for ``data.sleep`` seconds.  That is exactly the window in which a later position can
commit first.  The last test removes the adapter's gap protection and checks that the
detector used by the others does report the skipped event, so these tests can fail.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from skyferry.adapters.stores.postgres import PostgresEventStore
from skyferry.core.errors import ConcurrencyError
from skyferry.core.messages import Event, NewEvent
from skyferry.core.ports import ANY
from tests.services import postgres


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

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._lock_sql = sql.Composed([sql.SQL("SELECT 1")])


def test_the_detector_catches_a_gap_when_the_protection_is_removed(delayed_url: tuple[str, str]) -> None:
    tag = f"teeth-{uuid.uuid4().hex[:8]}-"
    tail = slow_then_fast(UnprotectedStore, delayed_url[0], tag)
    try:
        assert [e.stream_id for e in tail.skipped(tag)] == [f"{tag}a"]
    finally:
        tail.store.close()
