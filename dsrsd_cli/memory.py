"""Giving freed memory back to the operating system between batches, when it has piled up.

Tensors and arrays of tens of MB are allocated and freed at every batch. glibc's malloc
raises its mmap threshold each time such a block is freed, so later blocks come from the
heap, and freed heap memory stays with the process. `trim_heap()` after a batch returns it
(glibc's malloc_trim(0)) once the process's resident memory has grown by more than
HEAP_SLACK over its level at the end of the first batch after the last trim.

Why a slack: memory given back must be faulted in again, page by page, by the next batch.
Trimming after every batch cost evaluation a sixth of its speed (evaluate `dsrsd` on the
100,000-learner EdNet test split, 2 cores, the forward passes alone: 36,039 and 36,685 against
41,794 to 46,322 answers/s without trimming; 530 MB of page faults a batch), and it did not
lower the peak: without any trimming that pass levelled off at 0.97 to 1.05 GB RSS, and 80
training steps at the full KT1 size peaked at 1.74 to 2.19 GB against 1.77 GB trimming every
step (the heap's free memory is reused, batch after batch). The slack keeps that reuse and
still bounds what a process can pile up: with it, 46,668 answers/s at 1.02 GB. Where
/proc/self/statm is missing it trims every time; where malloc_trim is missing (macOS, musl)
it does nothing.

Why the baseline is taken one batch after a trim, not right after it: a trim also returns the
batch's own working set, which the next batch faults in again. Measured from just after the
trim, a working set above the slack looked like growth, and a process trimmed after every
step: at 10,000 EdNet learners (the default DSRSD-Net, 120 training steps and a validation pass,
1 thread), 96 trims, 223 s wall of which 61 s system time, peak RSS 1.49 GB. With the baseline
one batch later: 8 trims, 167 s, 16 s system time, peak 1.64 GB (no trimming at all: 3.36 GB).
The slack now bounds what piles up above the working set, as it was meant to.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

HEAP_SLACK = 512 << 20   # resident bytes a process may gain between trims


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


_MALLOC_TRIM = _malloc_trim()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_after_last_trim: int | None = None   # resident bytes one batch after the last trim (None: take note)


def resident_bytes() -> int | None:
    """This process's resident set size (Linux); None where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def trim_heap(slack: int = HEAP_SLACK) -> None:
    """Return the process's free heap memory to the OS (glibc) when its resident memory has
    grown by more than `slack` bytes since the baseline; the first call, and the first after
    each trim, only take the baseline (call it after a batch). slack 0: always. A no-op where
    malloc_trim is missing."""
    global _after_last_trim
    if _MALLOC_TRIM is None:
        return
    rss = resident_bytes()
    if rss is not None and slack > 0:
        if _after_last_trim is None:
            _after_last_trim = rss
        if rss <= _after_last_trim + slack:
            return
    _MALLOC_TRIM(0)
    _after_last_trim = None   # the next batch faults its working set back in: its end is the baseline
