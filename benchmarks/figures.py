"""What a benchmark module returns: figures, each beside the raw limit measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable
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
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return count / best


def compare(
    count: int, work: Callable[[], object], raw: Callable[[], object], *, repeat: int = 3
) -> tuple[float, float]:
    """``(rate of work, rate of raw)``: best of ``repeat`` runs each, interleaved so that
    both see the same machine load (the raw one runs first in each round)."""
    best_work = best_raw = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        raw()
        best_raw = min(best_raw, time.perf_counter() - start)
        start = time.perf_counter()
        work()
        best_work = min(best_work, time.perf_counter() - start)
    return count / best_work, count / best_raw
