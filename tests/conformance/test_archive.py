"""The Archive contract of skyferry.core.ports, run against every registered adapter."""

from __future__ import annotations

import os

import pytest

from skyferry.core.errors import ObjectNotFound, ObjectTooLarge, ValidationError
from skyferry.core.ports import Archive


def test_put_then_get_round_trips_bytes(archive: Archive) -> None:
    payload = bytes(range(256)) * 4
    archive.put("manifest.json", payload)
    assert archive.get("manifest.json") == payload
    assert archive.exists("manifest.json")


def test_put_replaces_an_object_whole(archive: Archive) -> None:
    archive.put("chunks/000001.jsonl.zst", b"first version, longer than the second")
    archive.put("chunks/000001.jsonl.zst", b"second")
    assert archive.get("chunks/000001.jsonl.zst") == b"second"


def test_missing_object_is_object_not_found(archive: Archive) -> None:
    assert not archive.exists("nope/missing.bin")
    with pytest.raises(ObjectNotFound) as caught:
        archive.get("nope/missing.bin")
    assert "missing.bin" in str(caught.value)


def test_list_by_prefix_sorted(archive: Archive) -> None:
    names = ["chunks/000002.jsonl.zst", "manifest.json", "chunks/000001.jsonl.zst", "chunks-old/x"]
    for name in names:
        archive.put(name, name.encode())
    assert archive.list("chunks/") == ["chunks/000001.jsonl.zst", "chunks/000002.jsonl.zst"]
    assert archive.list() == sorted(names)
    assert archive.list("zzz") == []


def test_delete_is_idempotent(archive: Archive) -> None:
    archive.put("a/b.bin", b"x")
    archive.delete("a/b.bin")
    archive.delete("a/b.bin")
    assert not archive.exists("a/b.bin")
    assert "a/b.bin" not in archive.list()


def test_empty_and_large_objects(archive: Archive) -> None:
    archive.put("empty", b"")
    assert archive.get("empty") == b""
    big = os.urandom(1024 * 1024) * 12  # 12 MiB: above the multipart threshold of the object stores
    archive.put("big/chunk.zst", big)
    assert archive.get("big/chunk.zst") == big


@pytest.mark.parametrize("bad", ["", "/abs", "../escape", "a/../../b", "a//b", "a/./b", "back\\slash"])
def test_names_that_could_escape_are_rejected(archive: Archive, bad: str) -> None:
    with pytest.raises(ValidationError):
        archive.put(bad, b"x")
    with pytest.raises(ValidationError):
        archive.get(bad)


@pytest.mark.parametrize("size", [0, 1, 1000])
def test_a_bounded_get_returns_an_object_at_the_limit(archive: Archive, size: int) -> None:
    payload = os.urandom(size)
    archive.put("bounded/at.bin", payload)
    assert archive.get("bounded/at.bin", limit=size) == payload
    assert archive.get("bounded/at.bin", limit=size + 10) == payload


def test_a_bounded_get_refuses_an_object_one_byte_over_naming_it(archive: Archive) -> None:
    archive.put("bounded/over.bin", b"x" * 1001)
    with pytest.raises(ObjectTooLarge) as caught:
        archive.get("bounded/over.bin", limit=1000)
    assert "bounded/over.bin" in str(caught.value)
    assert isinstance(caught.value, ValidationError)
    with pytest.raises(ObjectTooLarge):
        archive.get("bounded/over.bin", limit=0)
    with pytest.raises(ObjectNotFound):
        archive.get("bounded/missing.bin", limit=10)
