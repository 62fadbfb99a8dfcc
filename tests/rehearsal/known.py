"""Known problems the rehearsal catches, each a strict ``xfail`` marker naming it.

A test marked with one of these fails because of that problem.  When its fix lands the
test passes, strict ``xfail`` turns that into a failure, and the marker comes off the test
(and out of this module once no test uses it).  None is open today: a problem the
rehearsal finds next gets its marker here, ``NAME = waiting_for("what breaks, where")``,
until it is fixed.
"""

from __future__ import annotations

import pytest


def waiting_for(problem: str) -> pytest.MarkDecorator:
    """A strict ``xfail`` for a known problem."""
    return pytest.mark.xfail(strict=True, reason=problem)
