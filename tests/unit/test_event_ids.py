"""The default event id: a UUID version 7 (time-ordered), valid wherever an event id is checked."""

from __future__ import annotations

import time
import uuid

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
