"""Real concurrency for tests: calls released together on threads of their own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def at_once(count: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` for ``i`` in ``range(count)`` on ``count`` threads released together.

    Returns each call's result, or the exception it raised, in order.
    """
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = call(index)
        except Exception as e:
            results[index] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
