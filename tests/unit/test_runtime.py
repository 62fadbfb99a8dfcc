"""The process-wide runtime settings of every ``skyferry`` process (``skyferry.runtime``)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from skyferry.runtime import GC_THRESHOLD, tune_gc


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


# Each malloc case runs in a fresh interpreter: the settings are process-wide and cannot be read back.
_PROBE = """
import os
from skyferry.runtime import tune_malloc
tuned = tune_malloc()
def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
# 20 MiB: above glibc's default mmap threshold (its own mapping, unmapped when freed),
# below the tuned one (heap memory, kept when freed)
block = b"x" * (20 * 1024 * 1024)
before = rss()
del block
print(tuned, rss() >= before - 4 * 1024 * 1024)
"""


def _probe(env: dict[str, str]) -> list[str]:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True)
    return result.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_heap_memory_is_kept_in_the_process() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    tuned, kept = _probe(env)
    if tuned == "False":
        pytest.skip("the C library is not glibc: tune_malloc changes nothing (by design)")
    assert kept == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_the_operators_malloc_environment_wins() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["MALLOC_TRIM_THRESHOLD_"] = str(128 * 1024)
    tuned, kept = _probe(env)
    assert (tuned, kept) == ("False", "False")
