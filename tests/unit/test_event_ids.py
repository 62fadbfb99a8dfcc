"""The default event id: a UUID version 7 (time-ordered), valid wherever an event id is checked."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from skyferry.core.messages import NewEvent, new_event_id


def test_a_new_id_is_a_canonical_uuid_of_version_7_and_the_rfc_variant() -> None:
    text = new_event_id()
    parsed = uuid.UUID(text)
    assert str(parsed) == text  # canonical: lower case, 8-4-4-4-12
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_its_first_48_bits_are_the_time_it_was_made_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    text = new_event_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(text).int >> 80 <= after


def test_ids_made_in_later_milliseconds_sort_after_earlier_ones() -> None:
    first = new_event_id()
    start = time.monotonic()
    while time.monotonic() - start < 0.002:  # let the millisecond change
        pass
    second = new_event_id()
    assert first < second  # as text, as a store's index on the id column orders them


def test_ids_do_not_repeat() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)


def test_a_new_event_gets_one_and_passes_validation() -> None:
    event = NewEvent("Happened", {"n": 1})
    assert uuid.UUID(event.id).version == 7
    event.validate()
    assert NewEvent("Happened", {}).id != event.id


def test_threads_making_ids_at_once_never_share_one() -> None:
    made: list[list[str]] = [[] for _ in range(8)]

    def make(into: list[str]) -> None:
        into.extend(new_event_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [text for into in made for text in into]
    assert len(set(every)) == len(every) == 40_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_does_not_reuse_its_parents_random_bits() -> None:
    new_event_id()  # the parent now holds random bits for its next ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send the ids it makes, then leave without running any cleanup
        os.close(read)
        os.write(write, "\n".join(new_event_id() for _ in range(500)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode().split("\n")
    os.waitpid(pid, 0)
    parent = [new_event_id() for _ in range(500)]
    assert len(child) == 500
    # the same millisecond may start both, the random bits never: compare the last 74 bits
    assert not {uuid.UUID(text).int & ((1 << 74) - 1) for text in child} & {
        uuid.UUID(text).int & ((1 << 74) - 1) for text in parent
    }
