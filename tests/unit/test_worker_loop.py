"""The worker loop's pacing: how long it sleeps while idle, and when it wakes sooner."""

from __future__ import annotations

import threading

from skyferry.core.worker import Task, Worker


class CountingStop(threading.Event):
    """A stop event that records each sleep the loop asks for and stops it after ``passes`` of them."""

    def __init__(self, passes: int) -> None:
        super().__init__()
        self.passes = passes
        self.sleeps: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.sleeps.append(round(timeout, 6))
        if len(self.sleeps) >= self.passes:
            self.set()
        return self.is_set()


def test_an_idle_worker_sleeps_longer_and_longer_up_to_max_idle() -> None:
    stop = CountingStop(passes=7)
    Worker([Task("idle", lambda: 0)]).run(stop, poll_interval=0.2, max_idle=2.0)
    assert stop.sleeps == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


def test_work_brings_the_sleep_back_to_the_poll_interval() -> None:
    # handles something on the 4th pass only: the sleeps grow, fall back, then grow again
    batches = iter([0, 0, 0, 5, 0, 0, 0, 0, 0])
    stop = CountingStop(passes=6)
    Worker([Task("bursty", lambda: next(batches))]).run(stop, poll_interval=0.1, max_idle=10.0)
    assert stop.sleeps == [0.1, 0.2, 0.4, 0.1, 0.2, 0.4]


def test_max_idle_below_the_poll_interval_keeps_the_poll_interval() -> None:
    stop = CountingStop(passes=3)
    Worker([Task("idle", lambda: 0)]).run(stop, poll_interval=0.5, max_idle=0.1)
    assert stop.sleeps == [0.5, 0.5, 0.5]
