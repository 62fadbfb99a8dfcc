"""What a benchmark module returns: figures, each beside the raw limit measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured rate (higher is better), with the raw limit it is compared to.

    ``raw`` is the same work done the most direct way (raw driver, same durability),
    measured in the same run; ``goal`` is the ratio ``value / raw`` aimed at (for example
    0.7), or, when there is no raw figure, ``goal_value`` is an absolute goal in ``unit``.
    """

    name: str
    value: float
    unit: str
    raw: float | None = None
    raw_name: str = ""
    goal: float | None = None
    goal_value: float | None = None
    note: str = ""
    times: bool = False
    """Print the ratio and its goal as a multiple (``2.10x``), not a percentage."""

    @property
    def ratio(self) -> float | None:
        """``value / raw`` when there is a raw figure."""
        return self.value / self.raw if self.raw else None

    @property
    def met(self) -> bool | None:
        """Whether the goal is met (``None`` when there is no goal)."""
        if self.goal is not None and self.ratio is not None:
            return self.ratio >= self.goal
        if self.goal_value is not None:
            return self.value >= self.goal_value
        return None


def rate(count: int, work: Callable[[], object], *, repeat: int = 3) -> float:
    """Best of ``repeat`` runs of ``work`` (which does ``count`` operations), in operations per second."""
    return interleaved(count, [lambda: work], repeat=repeat)[0]


def compare(
    count: int, work: Callable[[], object], raw: Callable[[], object], *, repeat: int = 3
) -> tuple[float, float]:
    """``(rate of work, rate of raw)``: best of ``repeat`` runs each, interleaved so that
    both see the same machine load (the raw one runs first in the first round)."""
    raw_rate, work_rate = interleaved(count, [lambda: raw, lambda: work], repeat=repeat)
    return work_rate, raw_rate


def interleaved(count: int, sides: Sequence[Callable[[], Callable[[], object]]], *, repeat: int = 3) -> list[float]:
    """The best rate of each side over ``repeat`` rounds, in operations per second.

    A side is a factory: called untimed (to set up a fresh database, say), it returns the
    work that is timed, which does ``count`` operations.  Every round runs every side once,
    each round starting with the next side, so that all sides see the same machine load
    and none always runs first.
    """
    best = [float("inf")] * len(sides)
    for round_ in range(repeat):
        for k in range(len(sides)):
            index = (round_ + k) % len(sides)
            work = sides[index]()
            start = time.perf_counter()
            work()
            best[index] = min(best[index], time.perf_counter() - start)
    return [count / seconds for seconds in best]
