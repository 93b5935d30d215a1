"""Giving freed memory back to the operating system between batches, when it has piled up.

Tensors and arrays of tens of MB are allocated and freed at every batch. glibc's malloc
raises its mmap threshold each time such a block is freed, so later blocks come from the
heap, and freed heap memory stays with the process. `trim_heap()` after a batch returns it
(glibc's malloc_trim(0)) once the process's resident memory has grown by more than
HEAP_SLACK since the last trim.

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
_after_last_trim: int | None = None   # this process's resident bytes after its last trim


def resident_bytes() -> int | None:
    """This process's resident set size (Linux); None where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def trim_heap(slack: int = HEAP_SLACK) -> None:
    """Return the process's free heap memory to the OS (glibc) when its resident memory has
    grown by more than `slack` bytes since the last trim (the first call only takes note);
    slack 0: always. A no-op where malloc_trim is missing."""
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
    _after_last_trim = resident_bytes()
