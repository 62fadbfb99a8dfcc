"""Progress of a long command: a bar on a terminal, a plain line now and then elsewhere, JSON lines for machines.

Every form shows the same figures, formatted by :mod:`skyferry.console`: the count, the
total when it is known up front (an archive's manifest), the rate over the last seconds, the
ETA (with a total) and the lag (a migration: how far behind the source the copy is).

* ``bar``: stderr is a terminal: a bar (rich), redrawn at most ten times a second.
* ``lines``: stderr is not a terminal (a log, CI): one plain line every :data:`LINES_INTERVAL`
  seconds, and a last one at the end when any was printed.
* ``json`` (``--json``): ``{"kind": "progress", ...}`` on stdout every :data:`JSON_INTERVAL`
  seconds, so that ``migrate --follow --json`` can be monitored live; the summary follows.
* ``off``: nothing.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from types import TracebackType
from typing import Any, Final, Literal, TextIO

from skyferry.console import count, duration, output, rate

Mode = Literal["bar", "lines", "json", "off"]

BAR_INTERVAL: Final = 0.1
LINES_INTERVAL: Final = 10.0
JSON_INTERVAL: Final = 1.0
RATE_WINDOW: Final = 10.0
"""The rate is measured over this many recent seconds (a follower's rate falls when the source is quiet)."""


class Progress:
    """The progress of one long command (see the module).  A context manager: leaving it stops the bar."""

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        mode: Mode | None = None,
        out: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.out = out or sys.stderr
        self.mode: Mode = mode or ("bar" if self.out.isatty() else "lines")
        defaults = {"bar": BAR_INTERVAL, "lines": LINES_INTERVAL, "json": JSON_INTERVAL}
        self.interval = interval if interval is not None else defaults.get(self.mode, 0.0)
        self.count = 0
        self.resumed = 0
        self.lag: float | None = None
        self.started = time.monotonic()
        self.shown = 0
        self._last_shown = self.started if self.mode == "lines" else float("-inf")
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._bar: Any = None
        self._task: Any = None

    # -- figures ------------------------------------------------------------------------------

    def resume(self, events: int) -> None:
        """Count ``events`` done by an earlier run (they count toward the total, not the rate)."""
        self.count += events
        self.resumed += events

    def advance(self, events: int, *, lag: float | None = None) -> None:
        """Count ``events`` more (``lag``: seconds the copy is behind its source, 0 when caught up); show if due."""
        self.count += events
        if self.total is not None and self.count > self.total:
            self.total = self.count  # a source still taking writes (migrate --follow)
        if lag is not None:
            self.lag = lag
        now = time.monotonic()
        self._samples.append((now, self.count - self.resumed))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        if now - self._last_shown >= self.interval:
            self._show(now)

    @property
    def rate(self) -> float:
        """Events per second over the last :data:`RATE_WINDOW` seconds."""
        now = time.monotonic()
        since, done = self._samples[0]
        return (self.count - self.resumed - done) / (now - since) if now > since else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, when the total is known and events are moving."""
        speed = self.rate
        if self.total is None or speed <= 0:
            return None
        return max(self.total - self.count, 0) / speed

    def figures(self) -> str:
        """``12,345 of 200,000 events (6 %), 4,321 events/s, ETA 0:00:43, lag 1.2 s``."""
        parts = [f"{count(self.count)} events"]
        if self.total:
            parts[0] = f"{count(self.count)} of {count(self.total)} events ({100 * self.count // self.total} %)"
        parts.append(rate(self.rate))
        if self.total is not None:
            eta = self.eta
            parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA ?")
        if self.lag is not None:
            parts.append("caught up" if self.lag == 0 else f"lag {duration(self.lag)}")
        return ", ".join(parts)

    def line(self) -> str:
        """The plain progress line: ``export: <figures>``."""
        return f"{self.label}: {self.figures()}"

    def to_json(self) -> dict[str, Any]:
        """The figures of a ``--json`` progress line."""
        eta = self.eta
        return {
            "command": self.label,
            "events": self.count,
            "total": self.total,
            "events_per_second": round(self.rate, 1),
            "eta_seconds": None if eta is None else round(eta, 1),
            "lag_seconds": None if self.lag is None else round(self.lag, 3),
            "elapsed_seconds": round(time.monotonic() - self.started, 3),
        }

    # -- showing ------------------------------------------------------------------------------

    def _show(self, now: float) -> None:
        self._last_shown = now
        self.shown += 1
        if self.mode == "json":
            output.emit("progress", self.to_json())
        elif self.mode == "lines":
            self.out.write(self.line() + "\n")
            self.out.flush()
        elif self.mode == "bar":
            self._draw()

    def _draw(self) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[figures]}"),
                console=Console(file=self.out),
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._task = self._bar.add_task(self.label, total=self.total, figures="")
            self._bar.start()
        self._bar.update(self._task, completed=self.count, total=self.total, figures=self.figures())
        self._bar.refresh()

    def finish(self) -> None:
        """Show the final figures (a bar, or a last line where lines were shown) and stop."""
        if self.mode == "bar" or (self.mode in ("lines", "json") and self.shown):
            self._show(time.monotonic())
        self.close()

    def close(self) -> None:
        """Stop the bar where it is (idempotent): the terminal gets its cursor back."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
