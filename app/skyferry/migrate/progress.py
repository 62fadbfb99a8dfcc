"""Progress on a terminal: events, events/s, ETA and lag, redrawn at most twice a second.

Nothing is drawn when stderr is not a terminal (or ``--json`` is given): machines get the
final JSON summary instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """A one-line progress display for a long command."""

    def __init__(
        self, label: str, *, total: int | None = None, enabled: bool | None = None, out: TextIO | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.out = out or sys.stderr
        self.enabled = self.out.isatty() if enabled is None else enabled
        self.count = 0
        self.lag: str | None = None
        self.started = time.monotonic()
        self._drawn = 0.0

    @property
    def rate(self) -> float:
        """Events per second since the start."""
        elapsed = time.monotonic() - self.started
        return self.count / elapsed if elapsed > 0 else 0.0

    def advance(self, events: int, *, lag: str | None = None) -> None:
        """Count ``events`` more; redraw if half a second has passed."""
        self.count += events
        if lag is not None:
            self.lag = lag
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.5:
            self._drawn = now
            self.draw()

    def line(self) -> str:
        """The text of the progress line."""
        rate = self.rate
        parts = [f"{self.label}: {self.count:,} events", f"{rate:,.0f} events/s"]
        if self.total is not None:
            parts[0] += f" of {self.total:,}"
            left = max(self.total - self.count, 0)
            parts.append(f"ETA {_duration(left / rate)}" if rate > 0 else "ETA ?")
        if self.lag is not None:
            parts.append(f"lag {self.lag}")
        return "  ".join(parts)

    def draw(self) -> None:
        """Redraw the line in place."""
        self.out.write("\r\x1b[K" + self.line())
        self.out.flush()

    def finish(self) -> None:
        """Draw the final figures and end the line."""
        if self.enabled:
            self.draw()
            self.out.write("\n")
            self.out.flush()
