"""What a command started from a terminal has that one started by a CI job may not."""

from __future__ import annotations

import signal


def ctrl_c_as_at_a_terminal() -> None:
    """Give SIGINT its default action in a child about to start (``Popen(preexec_fn=...)``).

    A shell without job control starts background commands with SIGINT ignored, and a child
    inherits that; Python then keeps ignoring it.  Run from such a job (a CI script's),
    Ctrl-C would never reach the command under test: a terminal's Ctrl-C is what those
    tests are about.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
