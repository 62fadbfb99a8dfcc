"""The process-wide runtime settings of every ``skyferry`` process: garbage collector and heap.

:func:`tune_process` is called once by ``skyferry``'s entry point (so ``serve``,
``worker``, ``rebuild``, ``export``/``import``/``migrate`` all run with it) and by the
benchmarks, for our code and the raw side alike.  A process that embeds skyferry without
the entry point keeps its own settings; it can call :func:`tune_process` to get the same.
See ``docs/performance.md`` for the measurements behind both settings.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from typing import Final

GC_THRESHOLD: Final = 10_000
"""Container allocations between two young-generation collections (CPython's default is 700)."""

HEAP_KEEP: Final = 64 * 1024 * 1024
"""Freed heap memory (bytes) that glibc keeps instead of returning it to the kernel."""

HEAP_PAD: Final = 16 * 1024 * 1024
"""Extra bytes glibc asks the kernel for whenever the heap grows."""

MMAP_THRESHOLD: Final = 32 * 1024 * 1024
"""Allocations from this size up get their own mapping; smaller ones come from the heap."""

_M_TRIM_THRESHOLD: Final = -1
_M_TOP_PAD: Final = -2
_M_MMAP_THRESHOLD: Final = -3
_MALLOC_ENV: Final = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")


def tune_gc() -> None:
    """Raise the garbage collector's young-generation threshold to :data:`GC_THRESHOLD`.

    With CPython's default of 700, a page of 1,000 decoded events (each an ``Event`` plus
    its ``data`` and ``metadata`` dicts) sets off several young collections, and the
    events still alive are promoted and traversed again by the older generations and full
    collections.  Collections stay automatic and cyclic garbage is still freed, only after
    10,000 allocations instead of 700 (the older generations keep their default ratios).
    A higher threshold set before (or 0, collection turned off) is kept.
    """
    young, middle, old = gc.get_threshold()
    if 0 < young < GC_THRESHOLD:  # 0 means collection was turned off: leave it so
        gc.set_threshold(GC_THRESHOLD, middle, old)


def tune_malloc() -> bool:
    """Keep freed heap memory in the process instead of handing it back to the kernel (glibc).

    glibc returns the top of the heap to the kernel as soon as 128 KiB (a threshold it
    then adjusts) lie free there, and serves allocations above a similar threshold with a
    fresh mapping; either way the next batch of events is written into pages the kernel
    must fault in and zero again.  Copying events does exactly that, batch after batch.
    On a Firecracker microVM (the kind AWS Fargate and Lambda run) a page fault costs about
    3 us, ten times a bare-metal one: the trimming alone made the export and import paths
    a third slower there.  With up to :data:`HEAP_KEEP` kept, :data:`HEAP_PAD` asked for
    at a time, and mappings only from :data:`MMAP_THRESHOLD`, the memory of one batch is
    reused by the next.  Peak memory is unchanged (what is kept was in use before); the
    resident size no longer shrinks after a peak of up to 64 MiB.

    Nothing is changed when the C library is not glibc, or when one of glibc's own
    ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` / ``MALLOC_MMAP_THRESHOLD_``
    environment variables is set (the operator's choice wins).  Returns whether it tuned.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has mallopt but not these options)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(
        mallopt(option, value) == 1
        for option, value in (
            (_M_TRIM_THRESHOLD, HEAP_KEEP),
            (_M_TOP_PAD, HEAP_PAD),
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        )
    )


def tune_process() -> None:
    """Both settings of a ``skyferry`` process: :func:`tune_gc` and :func:`tune_malloc`."""
    tune_gc()
    tune_malloc()
