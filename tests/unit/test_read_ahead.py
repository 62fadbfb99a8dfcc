"""``ReadAhead``: a source iterated in a thread, a bounded number of items ahead."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from skyferry.migrate.pipeline import ReadAhead


def counted(produced: list[int], count: int) -> Iterator[int]:
    for n in range(count):
        produced.append(n)
        yield n


def wait_until(condition: Callable[[], bool], what: str) -> None:
    done = threading.Event()
    for _ in range(200):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError(what)


def test_started_it_reads_ahead_before_the_first_item_is_asked_for_and_no_further_than_its_depth() -> None:
    produced: list[int] = []
    ahead = ReadAhead(counted(produced, 10), depth=1)
    ahead.start()
    ahead.start()  # idempotent
    wait_until(lambda: len(produced) == 2, "the item the consumer will hold and one ahead")
    threading.Event().wait(0.1)
    assert produced == [0, 1], "no further than its depth"
    assert list(ahead) == list(range(10))


def test_closed_without_being_iterated_it_stops() -> None:
    produced: list[int] = []
    ahead = ReadAhead(counted(produced, 10), depth=1)
    ahead.start()
    wait_until(lambda: len(produced) == 2, "reading ahead")
    ahead.close()
    ahead.close()  # idempotent
    assert not ahead._thread.is_alive()
    assert len(produced) == 2


def test_an_error_of_the_source_is_raised_to_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("a bad chunk")

    with pytest.raises(ValueError, match="a bad chunk"):
        list(ReadAhead(failing(), depth=1))
