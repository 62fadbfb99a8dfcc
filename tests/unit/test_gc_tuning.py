"""The process-wide GC setting of every ``skyferry`` command (``app.cli.tune_gc``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from app.cli import GC_THRESHOLD, tune_gc


@pytest.fixture(autouse=True)
def _restore_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_the_default_young_threshold_is_raised_and_the_older_ones_kept() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (GC_THRESHOLD, 10, 10)


@pytest.mark.parametrize("chosen", [0, GC_THRESHOLD * 2])
def test_an_explicit_choice_is_left_alone(chosen: int) -> None:
    gc.set_threshold(chosen, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (chosen, 10, 10)
