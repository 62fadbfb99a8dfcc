"""Read ahead in a background thread, so that reading and decoding overlap with writing.

Drivers release the GIL while they wait on a socket or a file, so while the main thread
writes batch *n* into the target, a reader thread can fetch and decode batch *n + 1*.
At most ``depth`` items are read ahead of the one the consumer holds, counting the one
being read, which keeps memory bounded: ``depth + 1`` items at most exist at once.  An
error in the reader is raised in the consumer, and a consumer that stops early stops the
reader.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """Iterate ``source`` in a daemon thread, at most ``depth`` items ahead of the consumer."""

    def __init__(self, source: Iterable[T], depth: int = 3) -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue()
        self._slots = threading.Semaphore(depth + 1)  # the one the consumer holds, and depth ahead
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="skyferry-read-ahead", daemon=True)

    def _slot(self) -> bool:
        """Wait until fewer than ``depth`` items are read ahead; ``False``: stopped."""
        while not self._stop.is_set():
            if self._slots.acquire(timeout=0.1):
                return True
        return False

    def _run(self) -> None:
        try:
            iterator = iter(self._source)
            while self._slot():
                try:
                    item = next(iterator)
                except StopIteration:
                    self._queue.put(_DONE)
                    return
                self._queue.put(item)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._queue.put(_Failure(e))

    def start(self) -> None:
        """Start reading ahead now, before the first item is asked for (idempotent)."""
        if self._thread.ident is None and not self._stop.is_set():
            self._thread.start()

    def close(self) -> None:
        """Stop reading ahead (for a consumer that will not iterate after all; idempotent)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=30)

    def __iter__(self) -> Iterator[T]:
        self.start()
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item  # type: ignore[misc]
                del item  # the consumer is done with it: it no longer counts
                self._slots.release()
        finally:
            self.close()
