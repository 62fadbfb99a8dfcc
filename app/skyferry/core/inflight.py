"""Many requests in flight, bounded, in order per key: what hides a cloud's round trip.

A writer that waits for each request before sending the next spends a round trip per
request (40-80 ms to a cloud service); with ``size`` requests in flight it spends one per
``size``.  :class:`OrderedPool` runs submitted tasks on at most ``size`` threads, and keeps
the one order that matters: tasks that share a *key* (a stream id, a message's ordering
key) run one at a time, in the order they were submitted.  Tasks with no key in common
run side by side.

Failure: once a task raises, no task that has not started is started (whatever its keys),
the running ones finish, and :meth:`OrderedPool.drain` raises the first error (in
submission order).  So whatever a key's tasks wrote is a prefix of them, never a gap:
a later task of a key only starts once every earlier task of that key succeeded.

With ``size`` 1 every task runs in the caller's thread as it is submitted, exactly as a
plain loop would (an error is raised by :meth:`~OrderedPool.submit` itself).

A pool may also live across calls (a broker's publishes in flight): :meth:`OrderedPool.wait`
waits for some tasks only (those of one call) and forgets them, and :meth:`OrderedPool.restart`
takes tasks again after a failure, once the caller has seen every task settle.  The threads
are started on first use and kept until :meth:`~OrderedPool.close`, so that a resource a
thread builds for itself (a Cosmos DB client per thread) is built once, not per batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Final, Generic, TypeVar

T = TypeVar("T")

MAX_IN_FLIGHT: Final = 64
"""The most writes any command keeps in flight (``--concurrency``): a thread and a
connection each, so the adapters' connection pools hold this many (a pool smaller than the
writes in flight opens a new connection, a new TLS handshake, for each write beyond it)."""
QUEUED_PER_THREAD: Final = 4
"""Tasks waiting to start, per thread, before :meth:`OrderedPool.submit` blocks (bounded memory)."""


class NotRun(Exception):
    """A task dropped because an earlier task of its pool failed (or the pool closed)."""


class Submitted(Generic[T]):
    """A task handed to an :class:`OrderedPool` (what :meth:`OrderedPool.wait` takes)."""

    __slots__ = ("after", "error", "fn", "keys", "result", "state")

    def __init__(self, fn: Callable[[], T], after: list[Submitted[T]], keys: tuple[str, ...] = ()) -> None:
        self.fn = fn
        self.after = after
        self.keys = keys
        self.state = "waiting"  # -> running -> done | failed; or dropped
        self.result: T | None = None
        self.error: BaseException | None = None


class OrderedPool(Generic[T]):
    """At most ``size`` tasks in flight; tasks sharing a key run in submission order (see the module)."""

    def __init__(self, size: int, *, name: str = "skyferry-inflight") -> None:
        if size < 1:
            raise ValueError(f"an OrderedPool needs at least one thread, not {size}")
        self.size = size
        self.name = name
        self.max_in_flight = 0
        """The most tasks that ran at once so far (what tests check the bound with)."""
        self._cv = threading.Condition()
        self._tasks: dict[int, Submitted[T]] = {}  # submitted and not yet waited for or drained, in order
        self._waiting: list[Submitted[T]] = []
        self._last: dict[str, Submitted[T]] = {}
        self._running = 0
        self._failed = False
        self._closed = False
        self._threads: list[threading.Thread] = []

    def submit(self, keys: Iterable[str], fn: Callable[[], T]) -> Submitted[T]:
        """Run ``fn`` after every earlier task sharing one of ``keys``; blocks while too many wait.

        Returns the task, for :meth:`wait`.
        """
        if self.size == 1:
            return self._run_inline(fn)
        keys = tuple(keys)
        with self._cv:
            if self._closed:
                raise RuntimeError(f"{self.name}: the pool is closed")
            if not self._threads:
                self._start()
            while len(self._waiting) >= QUEUED_PER_THREAD * self.size and not self._failed:
                self._cv.wait()
            after = list({id(t): t for key in keys if (t := self._last.get(key)) is not None}.values())
            task: Submitted[T] = Submitted(fn, after, keys)
            for key in keys:
                self._last[key] = task
            self._tasks[id(task)] = task
            if self._failed:
                task.state = "dropped"
            else:
                self._waiting.append(task)
                self._cv.notify_all()
            return task

    def _run_inline(self, fn: Callable[[], T]) -> Submitted[T]:
        task: Submitted[T] = Submitted(fn, [])
        self._tasks[id(task)] = task
        self.max_in_flight = 1
        try:
            task.result = fn()
        except BaseException:
            self._tasks.clear()  # raised here: the next drain starts afresh
            raise
        task.state = "done"
        return task

    def drain(self) -> list[T]:
        """Wait until every task submitted so far settled; their results in submission order.

        Raises the first failed task's error (the tasks not started by then never run).
        """
        with self._cv:
            while self._waiting or self._running:
                self._cv.wait()
            tasks, self._tasks, self._last = list(self._tasks.values()), {}, {}
            self._failed = False
        for task in tasks:
            if task.error is not None:
                raise task.error
        return [task.result for task in tasks if task.state == "done"]  # type: ignore[misc]

    def _start(self) -> None:
        for n in range(self.size):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _next(self) -> Submitted[T] | None:
        """The first waiting task whose predecessors all succeeded (called holding the lock)."""
        for index, task in enumerate(self._waiting):
            if all(before.state == "done" for before in task.after):
                del self._waiting[index]
                return task
        return None

    def _work(self) -> None:
        while True:
            with self._cv:
                task = None
                while not self._closed and (task := self._next()) is None:
                    self._cv.wait()
                if task is None:
                    return
                task.state = "running"
                self._running += 1
                self.max_in_flight = max(self.max_in_flight, self._running)
            try:
                result = task.fn()
            except BaseException as e:  # handed to drain(), which raises it in the caller
                with self._cv:
                    task.error, task.state = e, "failed"
                    self._failed = True
                    for dropped in self._waiting:
                        dropped.state = "dropped"
                    self._waiting.clear()
                    self._running -= 1
                    self._cv.notify_all()
                continue
            with self._cv:
                task.result, task.state = result, "done"
                self._running -= 1
                self._cv.notify_all()

    def wait(self, tasks: Iterable[Submitted[T]]) -> list[T]:
        """Wait until ``tasks`` settled and forget them; their results, in the order given.

        Raises the first failed one's error, or :class:`NotRun` for a task dropped after an
        earlier failure.  The other tasks of the pool go on as they are.
        """
        tasks = list(tasks)
        with self._cv:
            while any(task.state in ("waiting", "running") for task in tasks):
                self._cv.wait()
            for task in tasks:
                self._tasks.pop(id(task), None)
                for key in task.keys:
                    if self._last.get(key) is task:
                        del self._last[key]
        for task in tasks:
            if task.error is not None:
                raise task.error
            if task.state != "done":
                raise NotRun(f"{self.name}: not run, an earlier task failed")
        return [task.result for task in tasks]  # type: ignore[misc]

    def restart(self) -> None:
        """Take tasks again after a failure: waits until none waits or runs, then forgets every task.

        For a pool that lives across calls: call it once the caller has seen every task it
        submitted settle, so that nothing submitted after a failure runs before the caller
        knows of the failure.
        """
        with self._cv:
            while self._waiting or self._running:
                self._cv.wait()
            self._tasks, self._last, self._failed = {}, {}, False

    def close(self) -> None:
        """Stop the threads once the tasks running now are done (idempotent); waiting ones are dropped."""
        with self._cv:
            self._closed = True
            for task in self._waiting:
                task.state = "dropped"
            self._waiting.clear()
            self._cv.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=60)
