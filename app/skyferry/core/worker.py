"""The worker loop: the one loop that runs the relay, the process manager and the projections.

A :class:`Worker` runs a list of :class:`Task` s. A task's ``step`` handles one batch and
returns how many events it handled (0: nothing to do). :meth:`Worker.run_once` runs passes
over every task until none has anything left; :meth:`Worker.run` runs until stopped,
sleeping ``poll_interval`` when idle, longer (up to ``max_idle``) while it stays idle. Tasks
are isolated: a task whose step fails with an error that retrying can cure
(:class:`~skyferry.core.errors.TransientError`, or a
:class:`~skyferry.core.errors.ConcurrencyError` that kept losing races) backs off on its
own, doubling up to ``max_backoff``, while the others carry on; so an unreachable broker
delays the relay only. Any other error ends :meth:`run`: it is not the kind a retry cures,
and the process should say so.

``beat`` is called before every step, a failing one too, and while backing off (see
:mod:`skyferry.heartbeat`): a liveness probe then tells a hung worker from a busy or a
waiting one.  An outage is logged once when it begins and once when it ends, not on
every attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from skyferry.core.errors import ConcurrencyError, TransientError

log = logging.getLogger(__name__)

Beat = Callable[[], None]
"""Called by the worker to say that it is making progress (or waiting on purpose)."""

RETRYABLE: tuple[type[Exception], ...] = (TransientError, ConcurrencyError)
"""Errors after which nothing was half-applied and the same step may simply run again."""


def no_beat() -> None:
    """The beat of a worker that keeps no heartbeat."""


@dataclass(frozen=True, slots=True)
class Task:
    """One thing the worker runs: ``step()`` handles one batch and returns how many events it handled."""

    name: str
    step: Callable[[], int]


class Outage:
    """Logs a failing loop once when it starts failing and once when it recovers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failures = 0
        self.since = 0.0

    def failed(self, error: BaseException, retry_in: float) -> None:
        """Record a failed attempt; log it if it begins an outage."""
        if not self.failures:
            self.since = time.monotonic()
            log.warning("%s: failing (%s: %s); retrying with backoff", self.name, type(error).__name__, error)
        else:
            log.debug("%s: still failing, retrying in %.1fs", self.name, retry_in, exc_info=error)
        self.failures += 1

    def recovered(self) -> None:
        """Record a success; log it if it ends an outage."""
        if self.failures:
            log.warning(
                "%s: recovered after %d failed attempt(s) in %.1fs",
                self.name,
                self.failures,
                time.monotonic() - self.since,
            )
            self.failures = 0


@dataclass(slots=True)
class _Schedule:
    """Where one task stands in :meth:`Worker.run`: its outage and when it may run again."""

    outage: Outage
    backoff: float
    not_before: float = 0.0


class Worker:
    """Runs ``tasks`` in passes, each task isolated from the others' failures (see the module docstring)."""

    def __init__(self, tasks: Sequence[Task], *, name: str = "worker", lock: threading.Lock | None = None) -> None:
        self.tasks = list(tasks)
        self.name = name
        self.lock = lock if lock is not None else threading.Lock()
        """Held during each pass: whoever else takes it (a rebuild) waits for a pass boundary."""

    def run_once(self, beat: Beat = no_beat) -> int:
        """Passes over every task until none handled anything; the number of events handled.

        A task whose step raises sits out the rest of the call while the others go on until
        they are idle; then the first error is raised.  So a broker that refuses messages
        holds up the relay, never the process manager or the read models.
        """
        total = 0
        failed: dict[str, Exception] = {}
        with self.lock:
            while True:
                handled = 0
                for task in self.tasks:
                    if task.name in failed:
                        continue
                    beat()
                    try:
                        handled += task.step()
                    except Exception as e:
                        failed[task.name] = e
                if not handled:
                    break
                total += handled
        for name, error in failed.items():
            log.debug("%s: %s failed in this pass", self.name, name, exc_info=error)
            raise error
        return total

    def run(
        self,
        stop: threading.Event,
        *,
        poll_interval: float = 0.2,
        max_idle: float = 2.0,
        max_backoff: float = 10.0,
        beat: Beat = no_beat,
    ) -> None:
        """Run passes until ``stop`` is set.

        Each task backs off on its own (``poll_interval`` doubling up to ``max_backoff``)
        while its step fails with a retryable error, and the other tasks carry on.  Any
        other error ends the loop: a retry would not cure it.  When a pass handles nothing,
        the loop sleeps ``poll_interval``, doubling while it stays idle up to ``max_idle``
        (each pass reads every runner's source: an idle worker polling a cloud store five
        times a second is a steady bill), and back to ``poll_interval`` once it handles
        something; never past a backing-off task's next attempt.
        """
        schedules = {task.name: _Schedule(Outage(f"{self.name}: {task.name}"), poll_interval) for task in self.tasks}
        idle = poll_interval
        while not stop.is_set():
            handled = 0
            with self.lock:
                for task in self.tasks:
                    schedule = schedules[task.name]
                    if schedule.not_before > time.monotonic():
                        continue
                    beat()
                    try:
                        handled += task.step()
                    except RETRYABLE as e:
                        # Nothing was half-applied (checkpoints did not move): run it again later.
                        schedule.outage.failed(e, schedule.backoff)
                        schedule.not_before = time.monotonic() + schedule.backoff
                        schedule.backoff = min(schedule.backoff * 2, max_backoff)
                        continue
                    schedule.outage.recovered()
                    schedule.backoff = poll_interval
                    schedule.not_before = 0.0
            if handled:
                idle = poll_interval
            else:
                beat()
                now = time.monotonic()
                waits = [s.not_before - now for s in schedules.values() if s.not_before > now]
                stop.wait(min([idle, *waits]))
                idle = min(idle * 2, max(max_idle, poll_interval))


class WorkerThread:
    """Runs a worker loop on a daemon thread, restarts it when it dies, and says whether it is up.

    ``run(stop)`` is the loop (:meth:`Worker.run` with its options).  When it raises, the
    error is logged and the loop is started again after ``first_restart`` seconds, doubling
    up to ``max_restart`` while it keeps dying (a loop that ran for longer than that starts
    the count again).  :attr:`up` is false while it waits to restart and once the thread is
    gone, so a readiness probe sees the worker down: it is never silently gone.
    """

    def __init__(
        self,
        run: Callable[[threading.Event], None],
        stop: threading.Event,
        *,
        name: str = "worker",
        first_restart: float = 1.0,
        max_restart: float = 60.0,
    ) -> None:
        self._run = run
        self.stop = stop
        self.name = name
        self.first_restart = first_restart
        self.max_restart = max_restart
        self.restarts = 0
        """How many times the loop died and was started again."""
        self.last_error = ""
        """The error that last ended the loop (``""``: none)."""
        self._waiting = False
        self._thread = threading.Thread(target=self._supervise, name=name, daemon=True)

    def start(self) -> WorkerThread:
        """Start the thread; returns ``self``."""
        self._thread.start()
        return self

    @property
    def up(self) -> bool:
        """Whether the loop is running now (not waiting to restart, thread alive)."""
        return self._thread.is_alive() and not self._waiting

    def status(self) -> dict[str, object]:
        """``up``, ``restarts`` and ``last_error``, for readiness detail."""
        return {"up": self.up, "restarts": self.restarts, "last_error": self.last_error}

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (after ``stop`` is set)."""
        self._thread.join(timeout)

    def _supervise(self) -> None:
        delay = self.first_restart
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self._run(self.stop)
                return
            except Exception as e:
                self.restarts += 1
                self.last_error = f"{type(e).__name__}: {e}"
                if time.monotonic() - started > self.max_restart:
                    delay = self.first_restart
                log.error("%s died (%s); restarting in %.0f s", self.name, self.last_error, delay, exc_info=True)
                self._waiting = True
                self.stop.wait(delay)
                self._waiting = False
                delay = min(delay * 2, self.max_restart)
