"""Worker processes that leave when the process that started them is gone.

A pool's workers outlive a main process killed with SIGKILL (or by a timeout): they keep
working, and writing, with nobody to read their results. `leave_with(pid)`, called in a
worker (e.g. from a pool's initializer), starts a daemon thread that ends the worker once
`pid` no longer exists.
"""

from __future__ import annotations

import os
import threading
import time


def leave_with(pid: int) -> None:
    """End this process (exit code 1) within a second of process `pid` ending."""
    threading.Thread(target=_watch, args=(pid,), daemon=True).start()


def _watch(pid: int) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
