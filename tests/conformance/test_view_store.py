"""The ViewStore contract of skyferry.core.ports, run against every registered adapter."""

from __future__ import annotations

import threading
import uuid

import pytest

from skyferry.core.errors import ConcurrencyError
from skyferry.core.ports import ViewChange, ViewStore


def coll(name: str = "v") -> str:
    return f"{name}_{uuid.uuid4().hex[:10]}"


def put(collection: str, key: str, doc: dict[str, object], expected: int | None = None) -> ViewChange:
    return ViewChange(collection, key, doc, expected)


def test_missing_document_is_none(view_store: ViewStore) -> None:
    assert view_store.get(coll(), "nope") is None
    assert view_store.get_many(coll(), ["a", "b"]) == {}


def test_put_get_update_delete_with_revisions(view_store: ViewStore) -> None:
    c = coll()
    doc = {"balance": "10.50", "n": 3, "ok": True, "none": None, "list": [1, {"x": "ü"}], "nested": {"a": {}}}
    view_store.commit("p", [put(c, "acct-1", doc)], {})
    first = view_store.get(c, "acct-1")
    assert first is not None
    assert (first.value, first.revision) == (doc, 1)

    view_store.commit("p", [put(c, "acct-1", {"balance": "11.00"}, expected=1)], {})
    second = view_store.get(c, "acct-1")
    assert second is not None
    assert (second.value, second.revision) == ({"balance": "11.00"}, 2)

    view_store.commit("p", [ViewChange(c, "acct-1", None)], {})
    assert view_store.get(c, "acct-1") is None


def test_commit_writes_changes_and_checkpoint_together(view_store: ViewStore) -> None:
    c, projection = coll(), coll("proj")
    assert view_store.get_checkpoint(projection) is None
    view_store.commit(projection, [put(c, "a", {"v": 1}), put(c, "b", {"v": 2})], {"$all": "42"})
    assert view_store.get_checkpoint(projection) == "42"
    assert {k: d.value for k, d in view_store.get_many(c, ["a", "b", "zz"]).items()} == {
        "a": {"v": 1},
        "b": {"v": 2},
    }


def test_a_failed_expected_revision_writes_nothing_of_the_commit(view_store: ViewStore) -> None:
    c, projection = coll(), coll("proj")
    view_store.commit(projection, [put(c, "a", {"v": 1}), put(c, "b", {"v": 1})], {"$all": "1"})

    with pytest.raises(ConcurrencyError):
        view_store.commit(
            projection,
            [put(c, "new", {"v": 9}), put(c, "a", {"v": 2}, expected=1), put(c, "b", {"v": 2}, expected=7)],
            {"$all": "2"},
        )
    assert view_store.get(c, "new") is None
    a = view_store.get(c, "a")
    assert a is not None
    assert (a.value, a.revision) == ({"v": 1}, 1)
    assert view_store.get_checkpoint(projection) == "1"

    with pytest.raises(ConcurrencyError):
        view_store.commit(projection, [put(c, "x", {"v": 1}), put(c, "a", {"v": 5}, expected=0)], {"$all": "3"})
    assert view_store.get(c, "x") is None
    assert view_store.get_checkpoint(projection) == "1"


def test_expected_revision_zero_means_absent(view_store: ViewStore) -> None:
    c = coll()
    view_store.commit("p", [put(c, "k", {"v": 1}, expected=0)], {})
    with pytest.raises(ConcurrencyError):
        view_store.commit("p", [put(c, "k", {"v": 2}, expected=0)], {})
    with pytest.raises(ConcurrencyError):
        view_store.commit("p", [ViewChange(c, "k", None, expected_revision=2)], {})
    got = view_store.get(c, "k")
    assert got is not None
    assert got.value == {"v": 1}


def test_checkpoints_are_per_projection_and_key(view_store: ViewStore) -> None:
    p1, p2 = coll("p"), coll("p")
    view_store.commit(p1, [], {"$all": "10", "stream-a": "3"})
    view_store.commit(p2, [], {"$all": "20"})
    view_store.commit(p1, [], {"stream-a": "4"})
    assert view_store.get_checkpoint(p1) == "10"
    assert view_store.get_checkpoint(p1, "stream-a") == "4"
    assert view_store.get_checkpoint(p2) == "20"
    assert view_store.get_checkpoint(p2, "stream-a") is None
    view_store.drop_checkpoints(p1)
    assert view_store.get_checkpoint(p1) is None
    assert view_store.get_checkpoint(p1, "stream-a") is None
    assert view_store.get_checkpoint(p2) == "20"


def test_query_by_prefix_and_field_in_key_order(view_store: ViewStore) -> None:
    c = coll()
    docs = {
        "2024-01-02/acct-b": {"day": "2024-01-02", "kind": "deposit", "n": 1},
        "2024-01-01/acct-a": {"day": "2024-01-01", "kind": "deposit", "n": 2},
        "2024-01-01/acct-c": {"day": "2024-01-01", "kind": "withdrawal", "n": 3},
        "2024-01-01/acct-b": {"day": "2024-01-01", "kind": "deposit", "n": 4},
        "2023-12-31/acct-a": {"day": "2023-12-31", "kind": "deposit", "n": 5},
    }
    view_store.commit("p", [put(c, k, v) for k, v in docs.items()], {})
    assert [k for k, _ in view_store.query(c, prefix="2024-01-01/")] == [
        "2024-01-01/acct-a",
        "2024-01-01/acct-b",
        "2024-01-01/acct-c",
    ]
    assert [k for k, _ in view_store.query(c)] == sorted(docs)
    deposits = view_store.query(c, where=("kind", "deposit"))
    assert [k for k, _ in deposits] == sorted(k for k, v in docs.items() if v["kind"] == "deposit")
    assert all(d.value == docs[k] for k, d in deposits)
    assert [k for k, _ in view_store.query(c, prefix="2024-01-01/", where=("kind", "deposit"), limit=1)] == [
        "2024-01-01/acct-a"
    ]
    assert [k for k, _ in view_store.query(c, where=("n", 4))] == ["2024-01-01/acct-b"]
    assert view_store.query(c, prefix="2025") == []


def test_collections_are_independent_and_drop_empties_one(view_store: ViewStore) -> None:
    blue, green = coll("balances"), coll("balances")
    view_store.commit("p", [put(blue, "k", {"c": "blue"}), put(green, "k", {"c": "green"})], {})
    view_store.drop(green)
    assert view_store.get(green, "k") is None
    assert view_store.query(green) == []
    got = view_store.get(blue, "k")
    assert got is not None
    assert got.value == {"c": "blue"}
    view_store.drop(green)  # idempotent


def test_unicode_keys_round_trip(view_store: ViewStore) -> None:
    c = coll()
    keys = ["konto/Ärger:ü.日本-1_x", "Σ-Δ:λ", "plain"]
    view_store.commit("p", [put(c, k, {"k": k}) for k in keys], {})
    assert {k: d.value["k"] for k, d in view_store.get_many(c, keys).items()} == {k: k for k in keys}


def test_many_changes_in_one_commit(view_store: ViewStore) -> None:
    c = coll()
    view_store.commit("p", [put(c, f"k{i:04d}", {"i": i}) for i in range(250)], {"$all": "250"})
    assert len(view_store.query(c)) == 250
    assert len(view_store.get_many(c, [f"k{i:04d}" for i in range(0, 250, 2)])) == 125


def test_conditional_commits_never_lose_an_update(view_store: ViewStore) -> None:
    """Threads increment one counter by read + conditional commit; none is lost."""
    c = coll()
    view_store.commit("p", [put(c, "counter", {"n": 0}, expected=0)], {})
    threads, increments = 4, 10
    conflicts = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal conflicts
        for _ in range(increments):
            while True:
                doc = view_store.get(c, "counter")
                assert doc is not None
                try:
                    view_store.commit("p", [put(c, "counter", {"n": doc.value["n"] + 1}, doc.revision)], {})
                    break
                except ConcurrencyError:
                    with lock:
                        conflicts += 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    final = view_store.get(c, "counter")
    assert final is not None
    assert final.value["n"] == threads * increments
    assert final.revision == threads * increments + 1
