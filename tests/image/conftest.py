"""Fixtures of the image's tests: the image built from this checkout, and its size in the summary.

``SKYFERRY_IMAGE_TARGET`` chooses the target whose image is tested (default ``aws``).  With no
container engine the tests are skipped with the reason (``make image`` installs one), or fail
under ``SKYFERRY_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.services import container, unavailable

SIZE_GOAL_MB = {"aws": 300}
"""Size goals per target (uncompressed MB), printed beside the size; not asserted."""

_summary: list[str] = []


@pytest.fixture(scope="session")
def summary() -> Callable[[str], None]:
    """Adds a line to what the image's tests print at the end of the run."""
    return _summary.append


@pytest.fixture(scope="session")
def image_target() -> str:
    """The target whose image the tests run."""
    return os.environ.get("SKYFERRY_IMAGE_TARGET", "aws")


@pytest.fixture(scope="session")
def image(image_target: str, summary: Callable[[str], None]) -> str:
    """The ID of the image for the target, built from this checkout (``scripts/image.py``); its size reported."""
    try:
        built = container.ensure_image(image_target)
    except container.builder.Unprepared as e:
        unavailable(str(e))
    if built is None:
        unavailable("no container engine (podman, or docker with its daemon running): run `make image`")
    goal = SIZE_GOAL_MB.get(image_target)
    summary(
        f"skyferry:{image_target} ({built.removeprefix('sha256:')[:12]}): {container.image_size_mb(built):.0f} MB"
        + (f" uncompressed (goal: under {goal} MB)" if goal else " uncompressed")
    )
    return built


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the image's tests measured (its size)."""
    if _summary:
        terminalreporter.section("the image")
        for line in _summary:
            terminalreporter.write_line(line)
