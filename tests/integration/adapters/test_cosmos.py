"""The cosmos:// adapters on the Cosmos DB emulator, beyond the conformance suite.

Concurrency, the global log's repair paths (a writer that died between its commit and
its slot, two helpers that slotted one commit), large appends, view commits of more than
one batch interrupted at every write (a failure injected at the SDK seam), configuration
errors, throttling, the readiness probe's cost (``last_position`` reads a bounded number
of slots, whatever the log's length), and the clients' certificate checks (against a
local HTTPS server: ``tls_support``).  Waits are bounded polls; nothing asserts on time.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.cosmos import ContainerProxy
from azure.cosmos.exceptions import CosmosHttpResponseError

from skyferry.adapters import azure
from skyferry.adapters.stores import cosmos
from skyferry.adapters.stores.cosmos import CosmosEventStore, CosmosViewStore
from skyferry.adapters.stores.cosmos.layout import _commit_id
from skyferry.core.errors import ConcurrencyError, ConfigurationError, TransientError, ValidationError
from skyferry.core.messages import Event, NewEvent
from skyferry.core.ports import ANY, NO_STREAM, Doc, ViewChange
from tests import services
from tests.integration.adapters import tls_support
from tests.integration.adapters.blocks_support import check_a_dead_writers_holes, exported
from tests.services import cosmos as service


def new(n: int, size: int = 0) -> NewEvent:
    data: dict[str, object] = {"n": n}
    if size:
        data["pad"] = "x" * size
    return NewEvent(type="Tested", data=data)


def read_everything(store: CosmosEventStore) -> list[Event]:
    events: list[Event] = []
    position = None
    while True:
        page = store.read_all(position, limit=50)
        if not page:
            return events
        events.extend(page)
        position = page[-1].position


@pytest.fixture
def default_url() -> Iterator[str]:
    """A fresh database, the adapter's options at their defaults."""
    with service.fresh_database() as name:
        yield service.url_for(name)


@pytest.fixture
def url(default_url: str) -> str:
    """A fresh database whose unslotted commits ``read_all`` sweeps at any age (``sweep_after=0``)."""
    return default_url + "&sweep_after=0"


def test_concurrent_appends_at_one_version_have_exactly_one_winner(url: str) -> None:
    stream = f"race-{uuid.uuid4().hex[:6]}"
    winners: list[int] = []
    losers: list[int] = []

    def attempt(n: int) -> None:
        store = CosmosEventStore.from_url(url)
        try:
            store.append(stream, [new(n)], NO_STREAM)
            winners.append(n)
        except ConcurrencyError as e:
            losers.append(e.actual)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = CosmosEventStore.from_url(url)
    assert len(winners) == 1
    assert losers == [1] * 5, "every loser saw the winner's version"
    assert [e.data["n"] for e in store.read_stream(stream)] == winners
    assert [e.data["n"] for e in read_everything(store)] == winners


def test_concurrent_any_appends_all_land_once_in_order(url: str) -> None:
    streams = [f"s{i}-{uuid.uuid4().hex[:4]}" for i in range(2)]

    def writer(w: int) -> None:
        store = CosmosEventStore.from_url(url)
        for i in range(4):
            store.append(streams[i % 2], [new(w * 100 + i)], ANY)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = CosmosEventStore.from_url(url)
    everything = read_everything(store)
    assert len(everything) == 12
    assert len({e.id for e in everything}) == 12
    for stream in streams:
        versions = [e.version for e in everything if e.stream_id == stream]
        assert versions == list(range(1, 7)), "per-stream order in the global log"
    assert read_everything(store) == everything, "reading again gives the same events in the same order"


def slots_of(store: CosmosEventStore) -> list[dict[str, Any]]:
    return store._query("test", "SELECT * FROM c WHERE c.kind = 'slot' ORDER BY c.n", {}, cosmos.LOG_PARTITION)


def test_threads_of_one_store_share_slots_and_keep_each_streams_order(url: str) -> None:
    """Group commit: commits slotted at the same moment share one slot (the first slot's
    creation is held back so that the others queue behind it); every event is read once,
    each stream in version order, the same when read again one event at a time."""
    store = CosmosEventStore.from_url(url)
    create_slot = store._create_slot
    first = threading.Event()

    def held_back(members: list[list[str]], block: Mapping[str, Any] | None = None) -> int:
        if not first.is_set():
            first.set()
            time.sleep(0.3)
        return create_slot(members, block)

    store._create_slot = held_back  # type: ignore[method-assign]
    streams = [f"g{i}-{uuid.uuid4().hex[:4]}" for i in range(3)]

    def writer(w: int) -> None:
        for i in range(4):
            store.append(streams[(w + i) % 3], [new(w * 100 + i)], ANY)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = read_everything(store)
    assert len({e.id for e in everything}) == len(everything) == 24
    for stream in streams:
        assert [e.version for e in everything if e.stream_id == stream] == list(range(1, 9))
    slots = slots_of(store)
    assert any("commits" in slot for slot in slots), "no slot was shared"
    one_by_one: list[Event] = []
    position = None
    while page := store.read_all(position, limit=1):
        one_by_one += page
        position = page[-1].position
    assert one_by_one == everything
    assert store.last_position() == everything[-1].position


def members(*commits: dict[str, Any]) -> list[list[str]]:
    """The ``[stream, commit id]`` members of a slot naming ``commits``."""
    return [[commit["stream_id"], commit["id"]] for commit in commits]


def test_a_shared_slot_whose_writer_died_before_recording_it_is_read_in_its_order(url: str) -> None:
    """The slot names two commits that do not record it yet (their writer died): a reader
    records it in both and reads them in the slot's order; a member that a helper slotted
    elsewhere first is read there, once."""
    store = CosmosEventStore.from_url(url)
    store.append("before", [new(0)], NO_STREAM)
    second = store._write_commit("second", 1, [new(1)])
    first = store._write_commit("first", 1, [new(2), new(3)])
    helped = store._write_commit("helped", 1, [new(4)])
    store._record_slot("helped", helped["id"], store._create_slot(members(helped)))  # a helper got there first
    store._create_slot(members(first, second, helped))  # the writer dies here
    everything = read_everything(CosmosEventStore.from_url(url))
    assert [(e.stream_id, e.version) for e in everything] == [
        ("before", 1),
        ("helped", 1),
        ("first", 1),
        ("first", 2),
        ("second", 1),
    ]
    assert [e.position for e in everything] == ["1:1", "2:1", "3:1", "3:2", "3.1:1"]
    assert [e.id for e in store.read_all("3:1")] == [e.id for e in everything[3:]]
    assert [e.id for e in store.read_all("3.1:1")] == []
    assert store.last_position() == "3.1:1"
    assert all(c["slot"] is not None for c in store._commits("first") + store._commits("second"))


@pytest.mark.parametrize("position", ["3.x:1", "3:", "a.1:2", "3.1"])
def test_a_malformed_position_is_refused(url: str, position: str) -> None:
    with pytest.raises(ValidationError, match="read_all position"):
        CosmosEventStore.from_url(url).read_all(position)


def test_the_next_append_slots_an_orphaned_commit_first(default_url: str) -> None:
    """A commit whose writer died before its slot (not swept yet: default ``sweep_after``) is
    slotted by the next append to its stream, before that append's own commit."""
    store = CosmosEventStore.from_url(default_url)
    store._write_commit("orphan", 1, [new(1)])  # the writer dies here: no slot
    store.append("orphan", [new(2)], 1)
    assert [(e.stream_id, e.version) for e in read_everything(store)] == [("orphan", 1), ("orphan", 2)]


def test_an_append_over_the_item_limit_goes_to_parts_and_reads_back_whole(url: str) -> None:
    store = CosmosEventStore.from_url(url)
    events = [new(i, size=190_000) for i in range(10)]
    store.append("big", events, NO_STREAM)
    back = store.read_stream("big")
    assert [e.id for e in back] == [e.id for e in events]
    assert all(len(str(e.data["pad"])) == 190_000 for e in back)
    assert [e.id for e in read_everything(store)] == [e.id for e in events]


def test_a_commit_whose_writer_died_before_its_slot_is_swept_in_stream_order(url: str) -> None:
    store = CosmosEventStore.from_url(url)
    store.append("other", [new(0)], NO_STREAM)
    store._write_commit("orphan", 1, [new(1), new(2)])  # the writer dies here: no slot
    swept = [(e.stream_id, e.version) for e in read_everything(CosmosEventStore.from_url(url))]
    assert swept == [("other", 1), ("orphan", 1), ("orphan", 2)]
    store.append("orphan", [new(3)], 2)
    everything = read_everything(store)
    assert [(e.stream_id, e.version) for e in everything] == [
        ("other", 1),
        ("orphan", 1),
        ("orphan", 2),
        ("orphan", 3),
    ]


def test_a_commit_slotted_twice_is_read_once(url: str) -> None:
    store = CosmosEventStore.from_url(url)
    store.append("dup", [new(0)], NO_STREAM)
    commit = store._commits("dup")[0]
    store._slot_commit(commit)  # a helper that lost the race leaves a slot the commit does not name
    store.append("dup", [new(1)], 1)
    everything = read_everything(store)
    assert [(e.stream_id, e.version) for e in everything] == [("dup", 1), ("dup", 2)]
    assert store.last_position() == everything[-1].position


class ConnectProxy:
    """An HTTPS proxy on a free loopback port: tunnels each ``CONNECT`` and notes its target."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.targets: list[str] = []
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        target = head.split(b"\r\n")[0].split()[1].decode()
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.sockets += [client, upstream]
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()
        for open_socket in self.sockets:
            open_socket.close()


def test_the_environments_proxy_settings_are_followed(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read once per client (not per request), ``HTTPS_PROXY`` and ``NO_PROXY`` still decide."""
    proxy = ConnectProxy()
    emulator = urlsplit(service.endpoint()).netloc
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("NO_PROXY", "example.invalid")
        store = CosmosEventStore.from_url(url)
        store.append("proxied", [new(1)], NO_STREAM)
        assert store.stream_version("proxied") == 1
        assert proxy.targets
        assert set(proxy.targets) == {emulator}
        store.close()
        seen = len(proxy.targets)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = CosmosEventStore.from_url(url)
        assert direct.stream_version("proxied") == 1
        direct.close()
        assert len(proxy.targets) == seen
    finally:
        proxy.close()


def test_a_missing_container_is_a_configuration_error_naming_it() -> None:
    with service.fresh_database(create_containers=False) as name:
        store = CosmosEventStore.from_url(service.url_for(name, "nothing"))
        with pytest.raises(ConfigurationError, match="'nothing'"):
            store.stream_version("s")
        views = CosmosViewStore.from_url(service.url_for(name, "nothing"))
        with pytest.raises(ConfigurationError, match="'nothing-views'"):
            views.get("c", "k")


def test_a_failed_revision_check_writes_nothing(url: str) -> None:
    views = CosmosViewStore.from_url(url)
    views.commit("p", [ViewChange("c", "a", {"v": 1})], {"$all": "1"})
    with pytest.raises(ConcurrencyError):
        views.commit(
            "p", [ViewChange("c", "b", {"v": 2}), ViewChange("c", "a", {"v": 3}, expected_revision=5)], {"$all": "2"}
        )
    assert views.get("c", "b") is None
    assert views.get_checkpoint("p") == "1"


def test_throttling_is_retried_after_the_servers_delay_then_transient() -> None:
    slept: list[float] = []
    calls = 0

    def throttled() -> None:
        nonlocal calls
        calls += 1
        error = CosmosHttpResponseError(status_code=429, message="Request rate is large")  # type: ignore[no-untyped-call]
        error.headers = {"x-ms-retry-after-ms": "250"}
        raise error

    with pytest.raises(TransientError, match="429") as caught:
        cosmos.call("reading", throttled, sleep=slept.append)
    assert calls == cosmos.MAX_THROTTLE_RETRIES + 1
    assert slept == [0.25] * cosmos.MAX_THROTTLE_RETRIES
    assert isinstance(caught.value.__cause__, CosmosHttpResponseError)


def test_throttling_that_clears_succeeds() -> None:
    outcomes: list[object] = [429, 429, "ok"]

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if outcome == 429:
            error = CosmosHttpResponseError(status_code=429, message="busy")  # type: ignore[no-untyped-call]
            error.headers = {"x-ms-retry-after-ms": "10"}
            raise error
        return str(outcome)

    assert cosmos.call("reading", flaky, sleep=lambda s: None) == "ok"


def test_urls_name_what_is_missing() -> None:
    with pytest.raises(ConfigurationError, match="database and a container"):
        CosmosEventStore.from_url("cosmos://acct/onlydb")
    with pytest.raises(ConfigurationError, match="account"):
        CosmosEventStore.from_url("cosmos:///db/c")
    store = CosmosEventStore.from_url("cosmos://acct/db/c?key=secret&endpoint=https://127.0.0.1:1/")
    assert "secret" not in store.url
    for option, value in [("sweep_after", "soon"), ("lock_timeout", "-1"), ("lock_timeout", "nan")]:
        with pytest.raises(ConfigurationError, match=f"option {option} must be a number of seconds.*{value}"):
            CosmosViewStore.from_url(f"cosmos://acct/db/c?{option}={value}")


# -- view commits larger than one batch, interrupted ------------------------------------

ACCOUNTS = 250


class Crash(BaseException):
    """The writer's process dies here (a BaseException: no cleanup code runs)."""


WRITES = ("execute_item_batch", "create_item", "replace_item", "delete_item", "upsert_item")


def crash_at(views: CosmosViewStore, monkeypatch: pytest.MonkeyPatch, point: int, half: bool) -> list[str]:
    """Make the ``point``-th write call (0-based) of ``views`` crash the writer.

    With ``half``, a batch at that point applies its first half before the crash (the
    emulator applies a batch's operations one by one).  Returns the calls made.
    """
    container = views._c
    made: list[str] = []

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            made.append(name)
            if len(made) - 1 == point:
                if half and name == "execute_item_batch":
                    operations = list(args[0])
                    original(operations[: len(operations) // 2], **kwargs)
                raise Crash(f"crash at write {point} ({name})")
            return original(*args, **kwargs)

        return write

    for name in WRITES:
        monkeypatch.setattr(container, name, wrap(name, getattr(container, name)))
    return made


def ledger_commit(round_: int) -> list[ViewChange]:
    """Credit 10 to every account, open 20 new ones and close 10 (a 280-change commit)."""
    changes = [ViewChange("acct", f"a{i:03d}", {"balance": 100 + 10 * round_}) for i in range(ACCOUNTS)]
    changes += [ViewChange("acct", f"n{round_}-{i:02d}", {"balance": 5}, expected_revision=0) for i in range(20)]
    changes += [ViewChange("acct", f"a{i:03d}", None) for i in range(ACCOUNTS - 10, ACCOUNTS)]
    return changes


def ledger(views: CosmosViewStore) -> tuple[str | None, int, int]:
    """(checkpoint, number of accounts, total money) as a reader sees them."""
    rows = views.query("acct")
    return views.get_checkpoint("ledger"), len(rows), sum(int(doc.value["balance"]) for _, doc in rows)


BEFORE = ("1", ACCOUNTS, ACCOUNTS * 100)
AFTER = ("2", ACCOUNTS - 10 + 20, (ACCOUNTS - 10) * 110 + 20 * 5)


def leftovers(views: CosmosViewStore) -> tuple[int, int]:
    """(locked documents, committed records) in the partition."""
    locked = views._query("SELECT c.id FROM c WHERE IS_DEFINED(c.tx) AND c.kind != 'tx'", {})
    records = views._query("SELECT c.id FROM c WHERE c.kind = 'tx' AND c.status = 'committed'", {})
    return len(locked), len(records)


@pytest.fixture
def ledger_url(url: str) -> str:
    views = CosmosViewStore.from_url(url)
    views.commit("ledger", [ViewChange("acct", f"a{i:03d}", {"balance": 100}) for i in range(ACCOUNTS)], {"$all": "1"})
    assert ledger(views) == BEFORE
    return url


def test_a_large_view_commit_is_whole_and_leaves_no_locks(ledger_url: str) -> None:
    views = CosmosViewStore.from_url(ledger_url)
    views.commit("ledger", ledger_commit(1), {"$all": "2"})
    assert ledger(views) == AFTER
    assert views.get("acct", "a000") == Doc({"balance": 110}, 2)
    assert views.get("acct", f"a{ACCOUNTS - 1:03d}") is None
    assert views.get("acct", "n1-00") == Doc({"balance": 5}, 1)
    assert leftovers(views) == (0, 0)


# 251 documents (240 replaced, 10 deleted, 20 created) + 1 checkpoint = 271 writes: three
# lock batches, the commit record, three roll-forward batches (the last deletes the record).
LOCK_BATCHES = 3
BATCH_POINTS = [*range(LOCK_BATCHES), *range(LOCK_BATCHES + 1, 2 * LOCK_BATCHES + 1)]
CRASH_POINTS = [(p, False) for p in range(2 * LOCK_BATCHES + 1)] + [(p, True) for p in BATCH_POINTS]


@pytest.mark.parametrize(("point", "half"), CRASH_POINTS)
def test_a_large_view_commit_interrupted_is_seen_whole_or_not_at_all_then_repaired(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch, point: int, half: bool
) -> None:
    writer = CosmosViewStore.from_url(ledger_url)
    made = crash_at(writer, monkeypatch, point, half)
    with pytest.raises(Crash):
        writer.commit("ledger", ledger_commit(1), {"$all": "2"})
    assert len(made) == point + 1
    committed = point > LOCK_BATCHES  # the record's creation is write LOCK_BATCHES
    reader = CosmosViewStore.from_url(ledger_url)
    seen = ledger(reader)
    assert seen == (AFTER if committed else BEFORE)
    keys = ["a000", f"a{ACCOUNTS - 1:03d}", "n1-00"]
    expected = {"a000": 110, "n1-00": 5} if committed else {"a000": 100, f"a{ACCOUNTS - 1:03d}": 100}
    assert {k: int(d.value["balance"]) for k, d in reader.get_many("acct", keys).items()} == expected

    # The projection restarts: it re-applies the events after the checkpoint it reads.
    # A lock younger than the timeout belongs to a writer that may still be running.
    if not committed and (point > 0 or half):
        with pytest.raises(ConcurrencyError, match="in progress"):
            reader.commit("ledger", ledger_commit(1), {"$all": "2"})
        assert ledger(reader) == BEFORE
    restarted = CosmosViewStore.from_url(ledger_url + "&lock_timeout=0")
    if restarted.get_checkpoint("ledger") == "1":
        restarted.commit("ledger", ledger_commit(1), {"$all": "2"})
    else:
        restarted.commit("ledger", [ViewChange("acct", "a000", {"balance": 110})], {"$all": "2"})
    assert ledger(restarted) == AFTER, "applied exactly once"
    assert leftovers(restarted) == (0, 0)
    assert restarted.get("acct", "n1-00") == Doc({"balance": 5}, 1)


def test_a_writer_aborted_as_stale_cannot_commit_afterwards(ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = CosmosViewStore.from_url(ledger_url)
    container = slow._c
    create = container.create_item
    other = CosmosViewStore.from_url(ledger_url + "&lock_timeout=0")

    def create_after_abort(body: dict[str, Any], **kwargs: Any) -> Any:
        if body.get("kind") == "tx":  # the slow writer reaches its commit point too late
            other.commit("ledger", [ViewChange("acct", "a000", {"balance": 7})], {})
        return create(body, **kwargs)

    monkeypatch.setattr(container, "create_item", create_after_abort)
    with pytest.raises(ConcurrencyError, match="aborted"):
        slow.commit("ledger", ledger_commit(1), {"$all": "2"})
    monkeypatch.undo()
    assert ledger(other) == ("1", ACCOUNTS, ACCOUNTS * 100 - 100 + 7)
    assert leftovers(other) == (0, 0)


def test_a_large_commit_meeting_a_concurrent_write_raises_and_leaves_nothing(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CosmosViewStore.from_url(ledger_url)
    container = writer._c
    batch = container.execute_item_batch
    other = CosmosViewStore.from_url(ledger_url)
    calls = 0

    def batch_after_a_concurrent_write(operations: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the first lock batch, another writer changes a locked-to-be document
            other.commit("other", [ViewChange("acct", "a150", {"balance": 1})], {})
        return batch(operations, **kwargs)

    monkeypatch.setattr(container, "execute_item_batch", batch_after_a_concurrent_write)
    with pytest.raises(ConcurrencyError):
        writer.commit("ledger", ledger_commit(1), {"$all": "2"})
    monkeypatch.undo()
    assert ledger(other) == ("1", ACCOUNTS, ACCOUNTS * 100 - 100 + 1)
    assert other.get("acct", "n1-00") is None
    assert leftovers(other) == (0, 0)


def test_a_failed_revision_check_in_a_large_commit_writes_nothing(ledger_url: str) -> None:
    views = CosmosViewStore.from_url(ledger_url)
    changes = [*ledger_commit(1), ViewChange("acct", "a000", {"balance": 0}, expected_revision=1)]
    with pytest.raises(ConcurrencyError) as caught:
        views.commit("ledger", changes, {"$all": "2"})
    assert caught.value.actual == 2
    assert ledger(views) == BEFORE
    assert leftovers(views) == (0, 0)


def test_each_thread_calls_through_its_own_client(url: str) -> None:
    """The SDK's client writes shared response headers on every call and iterates them too, so one
    client used by several threads fails now and then ("OrderedDict mutated during iteration", seen
    in CI): a store gives each thread its own, reused by that thread, and closes them all."""
    store = CosmosEventStore.from_url(url)
    store.append("mine", [new(0)], ANY)
    connections: dict[str, list[object]] = {}

    def use(name: str) -> None:
        for n in range(2):
            store.append(f"{name}-{n}", [new(n)], ANY)
            connections.setdefault(name, []).append(store._containers.get(store.location.container).client_connection)

    threads = [threading.Thread(target=use, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mine = store._containers.get(store.location.container).client_connection
    seen = {name: {id(c) for c in used} for name, used in connections.items()}
    assert all(len(ids) == 1 for ids in seen.values()), "a thread reuses its client"
    assert len(set().union(*seen.values()) | {id(mine)}) == 4, "no two threads share one"
    assert len(read_everything(store)) == 7
    pool = store._containers._pool
    assert pool is not None
    users = pool.users
    store.close()
    assert pool.users == users - 1


def test_the_stores_of_one_url_share_a_threads_client_and_the_last_to_close_closes_it(url: str) -> None:
    """An event store and a view store of one URL (as every process opens them) connect, shake
    hands and read the account once a thread, not once each; one closed leaves the other
    working, and the clients close with the last."""
    gc.collect()  # the stores earlier tests dropped unclosed give up the account's clients
    events, views = CosmosEventStore.from_url(url), CosmosViewStore.from_url(url)
    built: list[object] = []
    original = cosmos.CosmosLocation.client

    def counted(self: cosmos.CosmosLocation, **options: Any) -> Any:
        client = original(self, **options)
        built.append(client)
        return client

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cosmos.CosmosLocation, "client", counted)
        events.append("shared", [new(1)], ANY)
        views.commit("p", [ViewChange("t", "k", {"v": 1})], {"$all": "1"})
        assert views.get("t", "k") is not None
        assert len(built) == 1, "one client for both stores in this thread"
        assert events._c.client_connection is views._c.client_connection
        events.close()
        assert views.get("t", "k") == Doc({"v": 1}, 1)
        assert len(built) == 1, "the view store still has the client after the event store closed"
        pool = views._containers._pool
        assert pool is not None
        assert pool.owned == 1
        views.close()
        assert views._containers._pool is None
        assert pool.owned == 0, "the last store to close closes the clients"
        assert len(events.read_stream("shared")) == 1, "a closed store opens again on its next call"
        assert len(built) == 2
        events.close()


def test_a_client_handed_in_serves_every_thread_and_stays_open_when_the_store_closes(url: str) -> None:
    """A store given a client calls through it on every thread (the caller's choice), checks
    each container once, builds no client of its own, and leaves the client open."""
    given = CosmosEventStore.from_url(url).location.client()  # a client of the account, built the usual way
    store = CosmosEventStore.from_url(url, client=given)
    reads: list[str] = []
    original = ContainerProxy.read

    def counted(self: ContainerProxy, *args: Any, **kwargs: Any) -> Any:
        reads.append(self.id)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ContainerProxy, "read", counted)
        patch.setattr(cosmos.CosmosLocation, "client", lambda *a, **k: pytest.fail("no client may be built"))
        used: list[object] = []

        def use(name: str) -> None:
            store.append(name, [new(0)], ANY)
            used.append(store._c.client_connection)

        use("given-first")  # checks the container (threads racing to a first call may each check)
        threads = [threading.Thread(target=use, args=(f"given-{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert used == [given.client_connection] * 4
        assert reads == [store.location.container]
        store.close()
        store.append("given-after", [new(1)], ANY)  # the client handed in is still open
        assert reads == [store.location.container] * 2  # closing forgot the check
    store.close()
    given.close()


def test_events_of_earlier_versions_with_native_json_are_read_and_verify_lists_what_changed(url: str) -> None:
    """Before data and metadata were kept as JSON text, Cosmos DB changed numbers: such a
    store still reads, and verify lists the change as a difference instead of crashing
    ("Integer exceeds 64-bit range")."""
    from datetime import UTC, datetime

    from skyferry.adapters.stores.memory import MemoryEventStore
    from skyferry.migrate.verify import verify_stores

    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    data = {"max": 2**64 - 1, "small": 2, "f": 1.0}
    event = NewEvent(type="Old", data=data, metadata={"m": -0.0}, occurred_at=moment, recorded_at=moment)
    source = MemoryEventStore()
    source.append("legacy", [event], NO_STREAM)
    store = CosmosEventStore.from_url(url)
    try:
        native = {  # a commit document as the earlier adapter wrote it
            "id": "c-000000000001",
            "kind": "commit",
            "stream_id": "legacy",
            "first": 1,
            "last": 1,
            "slot": None,
            "created": "2026-01-02T03:04:05.678901Z",
            "event_ids": [event.id],
            "events": [
                {
                    "id": event.id,
                    "type": "Old",
                    "schema_version": 1,
                    "data": data,
                    "metadata": {"m": -0.0},
                    "occurred_at": "2026-01-02T03:04:05.678901Z",
                    "recorded_at": "2026-01-02T03:04:05.678901Z",
                }
            ],
        }
        store._c.create_item(native)
        store._slot_stream("legacy")  # its place in the global log, as the earlier adapter gave it
        [stored] = store.read_stream("legacy")
        assert (stored.id, stored.data["small"], stored.metadata) == (
            event.id,
            2,
            {"m": 0},
        )  # numbers as Cosmos DB keeps them
        assert stored.data["max"] != 2**64 - 1
        report = verify_stores(source, store)
        assert report.difference_count == 1
        [difference] = report.differences
        assert difference.startswith(
            "stream 'legacy' version 1: the target's event holds a value that is not valid JSON"
        )
    finally:
        store.close()


# --- the readiness probe: ``/readyz`` of the Azure API calls ``last_position`` -----------------
# Its cost is the same for any log length: the documents its queries return are counted, for
# a short log and for one ten times longer.


def _rows_read(store: CosmosEventStore, monkeypatch: pytest.MonkeyPatch) -> tuple[str | None, int]:
    read: list[int] = []
    original = store._query

    def counting(what: str, query: str, params: Any, partition: str | None) -> list[Any]:
        rows = original(what, query, params, partition)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(store, "_query", counting)
    try:
        return store.last_position(), sum(read)
    finally:
        monkeypatch.undo()


def test_last_position_reads_a_bounded_number_of_slots(default_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CosmosEventStore.from_url(default_url)
    try:
        assert _rows_read(store, monkeypatch) == (None, 0)
        for i in range(3):
            store.append(f"s-{i}", [NewEvent("E", {"i": i})], NO_STREAM)
        short_position, short_cost = _rows_read(store, monkeypatch)
        for i in range(3, 30):
            store.append(f"s-{i}", [NewEvent("E", {"i": i})], NO_STREAM)
        long_position, long_cost = _rows_read(store, monkeypatch)
        assert short_position is not None
        assert long_position is not None
        assert long_position == store.read_all(limit=1000)[-1].position
        assert short_cost <= cosmos.LAST_SLOTS
        assert long_cost <= cosmos.LAST_SLOTS, f"read {long_cost} slots of a 30-slot log"
    finally:
        store.close()


def test_an_unreachable_account_is_a_transient_error_naming_it() -> None:
    """Building the SDK's client reads the account: a failure there is translated too."""
    port = services.free_port()
    url = f"cosmos://localhost/db/events?endpoint=https://127.0.0.1:{port}/&key={service.EMULATOR_KEY}&verify=false"
    for store in (CosmosEventStore.from_url(url), CosmosViewStore.from_url(url)):
        try:
            with pytest.raises(TransientError, match="unreachable") as caught:
                store.last_position() if isinstance(store, CosmosEventStore) else store.get("c", "k")
            assert "localhost" in str(caught.value)
        finally:
            store.close()


# --- bulk writes: the block slot first (feature bulk_in_flight) ---------------------------------


class _Requests:
    """Counts the container's requests by kind of document, and the most in flight at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, int] = {}
        self.in_flight = self.most = 0
        self._lock = threading.Lock()
        for name in ("create_item", "replace_item", "read_item", "query_items"):
            monkeypatch.setattr(ContainerProxy, name, self._wrap(name, getattr(ContainerProxy, name)))

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(proxy: ContainerProxy, *args: Any, **kwargs: Any) -> Any:
            body = kwargs.get("body", args[0] if args else None)
            kind = f"{name} {body.get('kind')}" if isinstance(body, dict) and name == "create_item" else name
            with self._lock:
                self.counts[kind] = self.counts.get(kind, 0) + 1
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
            try:
                result = original(proxy, *args, **kwargs)
                return list(result) if name == "query_items" else result
            finally:
                with self._lock:
                    self.in_flight -= 1

        return counted


def test_a_bulk_write_is_one_create_a_stream_and_keeps_the_order_given(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CosmosEventStore.from_url(url)
    try:
        events = exported(20, 5, "bulk")  # 100 events, 20 streams taking turns
        requests = _Requests(monkeypatch)
        assert store.bulk_append(events, in_flight=8) == 100
        monkeypatch.undo()
        # One block (at most 32 streams: 4 per write in flight): the top of the log and the
        # block's streams read, its slot, then one commit per stream holding its five events,
        # each with its place in the block; no replace, no slot recorded afterwards.
        assert requests.counts == {"query_items": 2, "create_item slot": 1, "create_item commit": 20}
        assert requests.most > 1
        everything = read_everything(store)
        assert [e.id for e in everything] == [e.id for e in events]
        assert [e.position for e in everything[:3]] == ["1:1", "1.1:1", "1.2:1"]
        probe = _Requests(monkeypatch)
        assert store.last_position() == everything[-1].position
        monkeypatch.undo()
        assert probe.counts == {"query_items": 1}, "the writer knows where its own block ends"
        other = CosmosEventStore.from_url(url)
        probe = _Requests(monkeypatch)
        assert other.last_position() == everything[-1].position
        monkeypatch.undo()
        other.close()
        assert probe.counts == {"query_items": 1, "read_item": 1}, "a readiness probe reads one commit of a block"
        store.append("later", [new(1)], NO_STREAM)
        assert store.last_position() == read_everything(other)[-1].position, "a slot after the block is read"
        assert [e.id for e in store.read_all(everything[41].position, limit=3)] == [e.id for e in events[42:45]]
        again = _Requests(monkeypatch)
        assert store.bulk_append(events, in_flight=8) == 0  # all stored: nothing written
        assert again.counts == {"query_items": 1}
    finally:
        store.close()


def test_a_bulk_writer_that_dies_leaves_holes_readers_settle_once_they_expire(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CosmosEventStore.from_url(url)
    try:
        check_a_dead_writers_holes(store, exported(3, 5, "dead"), monkeypatch)  # 3 parts: one a stream
        voided = store._read(_commit_id(1), "dead-1")
        assert voided is not None
        assert voided["kind"] == "void"
        store.append("dead-1", [NewEvent("T", {})], NO_STREAM)  # a void gives way to the stream's next append
        assert [e.version for e in store.read_stream("dead-1")] == [1]
        assert read_everything(store)[-1].stream_id == "dead-1"
    finally:
        store.close()


def test_a_failed_bulk_write_leaves_each_stream_a_prefix_and_readers_pass_its_gaps(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CosmosEventStore.from_url(url)
    events = exported(6, 6, "fail")  # with one write in flight, blocks of four streams: many blocks
    real = store._write_commit

    def refused_at_fail_2_v4(stream_id: str, first: int, run: Any, **kwargs: Any) -> Any:
        if stream_id == "fail-2" and first == 4:
            raise ConcurrencyError(stream_id, 3, 3, "injected")
        return real(stream_id, first, run, **kwargs)

    monkeypatch.setattr(store, "_write_commit", refused_at_fail_2_v4)
    try:
        with pytest.raises(ConcurrencyError, match="fail-2"):
            store.bulk_append(events, in_flight=1)
        monkeypatch.undo()
        for s in range(6):
            versions = [e.version for e in store.read_stream(f"fail-{s}")]
            assert versions == list(range(1, len(versions) + 1))
        assert store.stream_version("fail-2") == 3
        assert store.stream_version("fail-3") < 6, "the block's parts after the failed one are not written"
        everything = read_everything(store)
        assert store.last_position() == everything[-1].position
        assert {e.id for e in everything} == {e.id for s in range(6) for e in store.read_stream(f"fail-{s}")}
        assert store.bulk_append(events, in_flight=1) == len(events) - len(everything)  # the rest, once
        assert sorted(e.id for e in read_everything(store)) == sorted(e.id for e in events)
    finally:
        store.close()


def test_a_bulk_commit_whose_reply_was_lost_is_recognised_as_stored(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CosmosEventStore.from_url(url)
    events = exported(3, 2, "lost")
    original = ContainerProxy.create_item
    lost: list[str] = []

    def create_then_lose_the_reply(proxy: ContainerProxy, body: dict[str, Any], **kwargs: Any) -> Any:
        created = original(proxy, body, **kwargs)
        if not lost and body.get("kind") == "commit" and body["stream_id"] == "lost-1":
            lost.append(body["id"])
            raise ServiceResponseError("the connection closed after the write")
        return created

    monkeypatch.setattr(ContainerProxy, "create_item", create_then_lose_the_reply)
    try:
        assert store.bulk_append(events, in_flight=2) == len(events)
        assert lost == [_commit_id(1)]
        assert [e.id for e in read_everything(store)] == [e.id for e in events]
    finally:
        store.close()


def test_a_commit_appended_meanwhile_stops_a_bulk_write_without_a_second_event_at_a_version(url: str) -> None:
    store = CosmosEventStore.from_url(url)
    other = CosmosEventStore.from_url(url)
    try:
        assert store.bulk_append(exported(2, 2, "mid"), in_flight=2) == 4  # the store now knows both heads
        other.append("mid-1", [NewEvent("T", {})], 2)
        with pytest.raises(ConcurrencyError, match="mid-1"):
            store.bulk_append([e for e in exported(2, 4, "mid") if e.version > 2], in_flight=2)
        assert [e.version for e in store.read_stream("mid-1")] == [1, 2, 3]
        ids = [e.id for e in read_everything(store)]
        assert len(ids) == len(set(ids)) == 4 + 1 + len(store.read_stream("mid-0")) - 2
    finally:
        other.close()
        store.close()


def test_a_bulk_write_reads_of_a_known_stream_only_the_commits_its_events_continue(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CosmosEventStore.from_url(url)
    for i in range(30):
        writer.append("long", [new(i)], i)
    writer.close()
    store = CosmosEventStore.from_url(url)  # knows no stream yet
    read: list[Any] = []
    original = store._query

    def counting(what: str, query: str, params: Any, partition: str | None) -> list[Any]:
        rows = original(what, query, params, partition)
        if what == "reading the streams of a bulk write":
            read.extend(rows)
        return rows

    monkeypatch.setattr(store, "_query", counting)
    try:
        more = [e for e in exported(1, 32, "x") if e.version > 30]
        events = [more[0]._replace(stream_id="long"), *exported(1, 1, "fresh")]
        events.append(more[1]._replace(stream_id="long"))
        assert store.bulk_append(events, in_flight=2) == 3
        assert [(row["stream_id"], row["last"]) for row in read] == [("long", 30)]  # not its 29 commits before
        assert [e.version for e in store.read_stream("long")] == list(range(1, 33))
    finally:
        store.close()


def test_the_clients_of_many_threads_load_no_certificates_per_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight threads, each with its own client and two connections (the SDK's health check
    takes the first): no connection loads CA certificates (the shared context for
    ``verify=false`` holds none; by default each would load the system's).  The database
    does not exist, so no other client of the test (the one that makes databases) is about."""
    loads: list[str] = []

    def counting(original: Callable[..., None]) -> Callable[..., None]:
        def counted(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
            loads.append(original.__name__)
            original(context, *args, **kwargs)

        return counted

    for name in ("load_verify_locations", "load_default_certs"):
        monkeypatch.setattr(ssl.SSLContext, name, counting(getattr(ssl.SSLContext, name)))
    store = CosmosEventStore.from_url(service.url_for(f"absent{uuid.uuid4().hex[:8]}"))
    errors: list[BaseException] = []

    def read(stream_id: str) -> None:
        try:
            store.stream_version(stream_id)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=read, args=(f"s{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    assert len(errors) == 8
    assert all(isinstance(e, ConfigurationError) and "has no" in str(e) for e in errors), errors
    assert loads == []


# The clients' transport (``skyferry.adapters.azure.transport``), against a real HTTPS server
# with certificates made for the test: the checks ``requests`` makes (the chain, the host
# name, or nothing for ``verify=False``), the CA certificates loaded once per setting.


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tls_support.Pki:
    return tls_support.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki: tls_support.Pki) -> Iterator[tls_support.CountingServer]:
    with tls_support.https_server(pki) as running:
        yield running


@pytest.fixture
def port(server: tls_support.CountingServer) -> int:
    azure._CONTEXTS.clear()  # each test starts with no context loaded
    return int(server.server_address[1])


def _get(transport: RequestsTransport, url: str, verify: bool | str) -> int:
    """One request the way the SDK sends it (its ``connection_verify``); the status."""
    with transport:
        response = transport.send(HttpRequest("GET", url), connection_verify=verify)
        response.read()
        return int(response.status_code)


def test_the_chain_and_the_host_name_are_checked_against_the_ca_given(pki: tls_support.Pki, port: int) -> None:
    assert _get(azure.transport(), f"https://localhost:{port}/", str(pki.ca)) == 200
    with pytest.raises(ServiceRequestError, match=r"(?i)hostname|match"):  # signed for localhost only
        _get(azure.transport(), f"https://127.0.0.1:{port}/", str(pki.ca))
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(azure.transport(), f"https://localhost:{port}/", str(pki.other_ca))


def test_a_directory_of_cas_is_a_ca_bundle_too(pki: tls_support.Pki, port: int, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command (which names a CA directory's files) is not installed")
    # OpenSSL finds a CA in a directory by the hash of its subject: HASH.0
    subject_hash = subprocess.run(
        [openssl, "x509", "-noout", "-subject_hash", "-in", str(pki.ca)], check=True, capture_output=True, text=True
    ).stdout.strip()
    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / f"{subject_hash}.0").write_bytes(pki.ca.read_bytes())
    assert _get(azure.transport(), f"https://localhost:{port}/", str(cas)) == 200
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(azure.transport(), f"https://localhost:{port}/", str(empty))


def test_the_default_bundle_refuses_a_ca_it_does_not_hold(port: int) -> None:
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(azure.transport(), f"https://localhost:{port}/", True)


def test_verify_false_checks_nothing(port: int) -> None:
    assert _get(azure.transport(), f"https://127.0.0.1:{port}/", False) == 200


def test_every_connection_of_every_transport_shares_one_context_loaded_once(
    pki: tls_support.Pki, server: tls_support.CountingServer, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Any] = []
    original = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append((args, kwargs))
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    before = server.connections
    for _ in range(4):
        with azure.transport() as transport:
            for _ in range(2):  # the server closes each connection: two new ones per transport
                response = transport.send(
                    HttpRequest("GET", f"https://localhost:{port}/close"), connection_verify=str(pki.ca)
                )
                response.read()
                assert response.status_code == 200
    assert server.connections - before == 8
    assert len(loads) == 1, loads  # ``requests`` alone loads the bundle once per connection: 8
    _assert_checks(azure.tls_context(str(pki.ca)))
    unchecked = azure.tls_context(False)
    assert unchecked.verify_mode == ssl.CERT_NONE
    assert not unchecked.check_hostname


def _assert_checks(context: ssl.SSLContext) -> None:
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_the_three_checks_through_one_transport_keep_their_contexts_apart(pki: tls_support.Pki, port: int) -> None:
    """A shared context is never loosened by a request that asks for less."""
    url = f"https://localhost:{port}/"
    with azure.transport() as transport:
        for verify in (False, str(pki.ca), False):
            response = transport.send(HttpRequest("GET", url), connection_verify=verify)
            response.read()
            assert response.status_code == 200
        with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
            transport.send(HttpRequest("GET", url), connection_verify=True)
    _assert_checks(azure.tls_context(str(pki.ca)))
    _assert_checks(azure.tls_context(True))


def test_a_client_certificate_never_goes_into_a_shared_context(
    pki: tls_support.Pki, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded_into: list[ssl.SSLContext] = []
    original = ssl.SSLContext.load_cert_chain

    def recorded(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loaded_into.append(context)
        original(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", recorded)
    client_cert = (str(pki.server_cert), str(pki.server_key))  # any pair will do: the server asks for none
    with azure.transport() as transport:
        request = HttpRequest("GET", f"https://localhost:{port}/")
        response = transport.send(request, connection_verify=str(pki.ca), connection_cert=client_cert)
        response.read()
        assert response.status_code == 200
    assert len(loaded_into) == 1
    assert loaded_into[0] is not azure.tls_context(str(pki.ca))


def test_a_changed_bundle_is_loaded_again(pki: tls_support.Pki, port: int, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.other_ca.read_bytes())
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(azure.transport(), f"https://localhost:{port}/", str(bundle))
    bundle.write_bytes(pki.other_ca.read_bytes() + pki.ca.read_bytes())  # the CA rotated in
    assert _get(azure.transport(), f"https://localhost:{port}/", str(bundle)) == 200


def test_a_missing_bundle_is_a_configuration_error_naming_it(port: int, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"no TLS CA certificate bundle at .*nowhere\.pem"):
        _get(azure.transport(), f"https://localhost:{port}/", str(tmp_path / "nowhere.pem"))
