"""dsrsd_cli/processes.py: a pool's workers leave when the process that started them is killed
(benchmarks/quality.py's training pools; prepare's workers are checked in test_prepare_ednet)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

_PARENT = """
import multiprocessing as mp, os, sys, time
from dsrsd_cli.processes import leave_with

def work(_):
    print(os.getpid(), flush=True)
    time.sleep(120)

if __name__ == "__main__":
    with mp.get_context("spawn").Pool(2, initializer=leave_with, initargs=(os.getpid(),)) as pool:
        pool.map(work, range(2), chunksize=1)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by whoever adopted it, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_pool_workers_leave_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    workers = [int(parent.stdout.readline()) for _ in range(2)]      # both are working
    assert all(_alive(pid) for pid in workers)
    parent.kill()                                                    # SIGKILL: no cleanup of its own
    parent.wait(timeout=30)
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "a worker outlived its killed parent"
