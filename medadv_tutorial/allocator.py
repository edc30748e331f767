"""Keep freed memory in the process, so that every attack step does not fault its activations in afresh.

glibc's ``malloc`` serves a large request (a layer's activations: megabytes) from a fresh
``mmap`` and gives it back to the kernel with ``munmap`` when it is freed.  An attack or a
training step allocates and frees the same large blocks at every step, so the kernel maps and
zeroes those pages again and again: a fifth of a CI run's CPU time was system time (681 of
3,389 s).  Measured on the book's EfficientNet-Lite0 (128 px, one thread,
``benchmarks/bench_attack_step.py``, channels-last weights), with freed memory kept an attack
step in batches of 25 took 13.3 instead of 19.8 ms per image, in batches of 10 14.5 instead of
15.3, and a training step (batch 32) 21.8 instead of 24.7.

:func:`retain_freed_memory` raises glibc's mmap and trim thresholds to 1 GiB
(``mallopt(M_MMAP_THRESHOLD)`` and ``mallopt(M_TRIM_THRESHOLD)``): blocks below that size come
from the heap and freed ones stay there for the next step.  The process keeps its peak heap
(for the ``ci`` profile, a few GiB at most) instead of returning it.  Results do not change:
where memory comes from does not change what is computed in it.

It is process-wide state, so it is applied on purpose only: by the experiment context
(:meth:`~medadv_tutorial.experiment.Experiment.enter`), by ``prepare`` and by the tests.  Other
C libraries (macOS, Windows, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["RETAIN_BYTES", "retain_freed_memory"]

RETAIN_BYTES = 1 << 30
"""The mmap and trim thresholds set (bytes): blocks below this size are kept when freed."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_state: dict[str, str] = {}


def retain_freed_memory() -> str:
    """Set glibc's mmap and trim thresholds to :data:`RETAIN_BYTES`; return a line saying what was done.

    Idempotent.  Where the C library is not glibc (or ``mallopt`` refuses), nothing is changed
    and the line says so.
    """
    if "line" in _state:
        return _state["line"]
    line = "memory allocator left as it is (not glibc on Linux)"
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.gnu_get_libc_version  # only glibc has this function (AttributeError elsewhere)
            ok = libc.mallopt(_M_MMAP_THRESHOLD, RETAIN_BYTES) == 1 and libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                      RETAIN_BYTES) == 1
            line = (f"freed memory kept in the process (glibc mallopt: mmap and trim "
                    f"thresholds {RETAIN_BYTES >> 20} MiB)" if ok else "memory allocator left as it is (mallopt refused)")
        except (OSError, AttributeError, ValueError):
            pass
    _state["line"] = line
    return line
