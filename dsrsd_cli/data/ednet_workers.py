"""EdNet's worker processes: batches of learners parsed in parallel, results in order.

A task is (learners, strict, display, (reader kind, root), contents folder): small and
picklable. Each worker reads the contents from the Parquet files already written to the
output folder and opens the raw source once (`MemberReader`), then runs `parse_batch`
on each batch it gets. The output does not depend on the number of workers.

A batch's table and training arrays (~180 bytes an answer) come back through two files in
the output's temporary folder (RESULTS_DIR: an Arrow IPC file and the raw arrays), which
the main process maps and deletes; only the counts travel through the pool's pipe. Pickled
through the pipe, 64 KB at a time and under the main process's GIL, they cost more CPU than
the parse they carried: 100,000 generated KT1 learners took 23.8 CPU-seconds over all
processes with two workers against 14.9 in one process doing all the work (the machine's CPU
time from /proc/stat around the run; docs/results.md, issue 12's fourth pass).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import multiprocessing as mp
import os
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from dsrsd_cli.data.archive import MemberReader
from dsrsd_cli.data.ednet_batch import parse_batch
from dsrsd_cli.data.ednet_contents import Contents
from dsrsd_cli.data.ednet_row_arrays import RowRules, chunk_arrays
from dsrsd_cli.errors import WorkFailed
from dsrsd_cli.memory import trim_heap
from dsrsd_cli.processes import leave_with

_CACHE: dict = {}  # per process: the contents and the open reader of the current run
RESULTS_DIR = ".results"   # in the output's temporary folder: batch results on their way to the main process


def _work(task: tuple) -> dict:
    """One batch, in a worker process (or inline). The contents are read from the Parquet
    files already written to the output folder, once per process."""
    learners, strict, display, (kind, root), contents_dir = task
    if _CACHE.get("key") != (kind, root, contents_dir):
        _clear_cache()
        contents = Contents.from_tables(pq.read_table(Path(contents_dir, "questions.parquet")),
                                        pq.read_table(Path(contents_dir, "lectures.parquet")))
        _CACHE.update(key=(kind, root, contents_dir), contents=contents, reader=MemberReader(kind, root))
        _CACHE["rules"] = _row_rules(contents, Path(contents_dir))
    result = parse_batch(learners, _CACHE["contents"], _CACHE["reader"], strict=strict, display=display)
    result["arrays"] = _training_arrays(result, _CACHE["rules"])
    trim_heap()   # the parse's temporaries, freed, go back to the OS (dsrsd_cli/memory.py)
    return result


def _work_in_pool(task: tuple, index: int) -> dict:
    """`_work` in a worker process, its table and arrays sent by file (`_send`)."""
    return _send(_work(task), Path(task[4], RESULTS_DIR, f"{index:06d}"))


def _send(result: dict, path: Path) -> dict:
    """The batch's table to `path`.arrow (Arrow IPC) and its arrays to `path`.bin (raw, one
    after the other); the result keeps the rest, and where to find them ("sent")."""
    table = result.pop("table")
    with pa.OSFile(f"{path}.arrow", "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    names, codes, arrays = result.pop("arrays")
    layout, offset = [], 0
    with open(f"{path}.bin", "wb") as f:
        for key, values in [("user_code", codes), *arrays.items()]:
            values = np.ascontiguousarray(values)
            layout.append((key, values.dtype.str, values.shape, offset))
            values.tofile(f)
            offset += values.nbytes
    result["sent"] = (str(path), names, layout)
    return result


def _receive(result: dict) -> dict:
    """What `_send` wrote, mapped (no copy), as `_work` returns it; the files are deleted
    at once (their mapped pages stay readable until unmapped)."""
    path, names, layout = result.pop("sent")
    table = ipc.open_file(pa.memory_map(f"{path}.arrow")).read_all()
    with open(f"{path}.bin", "rb") as f:
        raw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
    arrays = {key: np.frombuffer(raw, np.dtype(dtype), math.prod(shape), offset).reshape(shape)
              for key, dtype, shape, offset in layout}
    for suffix in (".arrow", ".bin"):
        with contextlib.suppress(OSError):   # Windows keeps a mapped file: it goes with the temporary folder
            os.unlink(path + suffix)
    codes = arrays.pop("user_code")
    return {**result, "table": table, "arrays": (names, codes, arrays)}


def _row_rules(contents: Contents, folder: Path) -> RowRules:
    high = {"question": contents.questions.num_rows, "bundle": contents.n_bundles, "tag": contents.n_tags,
            "source": 127}   # sources are batch-local here; the main process maps them (SourceVocab)
    # a row's tags are its question's (ednet_interactions): a gather of the (Q + 1, K) table
    return RowRules.from_tables(folder / "interactions.parquet", contents.questions, contents.lectures, high,
                                question_tags=contents.q_tags)


def _training_arrays(result: dict, rules: RowRules) -> tuple:
    """The batch's training arrays (data/ednet_store.py), computed here so that they are
    computed in parallel: (names, (n,) user codes, arrays). `source` holds batch-local
    codes + 1 (0 = none), which the main process maps to the folder's vocabulary."""
    table = result["table"]
    if not table.num_rows:
        return np.zeros(0, object), np.zeros(0, np.int64), {}
    source = table["source"].combine_chunks()
    shifted = pc.add(source.cast(pa.int16()), 1).cast(pa.int8())                 # null stays null -> 0
    names, codes, arrays = chunk_arrays(rules, table.set_column(table.schema.get_field_index("source"), "source", shifted))
    return names, codes, arrays


def _clear_cache() -> None:
    if "reader" in _CACHE:
        _CACHE["reader"].close()
    _CACHE.clear()


def _init_worker(main_pid: int) -> None:
    # one worker = one core: no extra pyarrow threads competing with the other workers
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    pa.set_memory_pool(pa.system_memory_pool())   # see system_memory_pool() below
    leave_with(main_pid)   # a killed main process (SIGKILL) cannot stop its workers: they leave on their own


@contextlib.contextmanager
def system_memory_pool() -> Iterator[None]:
    """Arrow allocates from glibc's malloc inside the block, as the workers always do.
    pyarrow's default pool (mimalloc) keeps what a batch freed for later, per process: about
    30 MB more RSS in each of prepare's processes, at the same speed (100,000 learners)."""
    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(before)


class Runner:
    """Runs batches on worker processes (inline when workers == 1) and yields the results
    in submission order, with at most `workers + 1` batches in flight so that results never
    pile up. The workers start in a background thread, ready by the time the source is
    listed; a worker that dies (e.g. killed for memory) fails the run instead of hanging it."""

    def __init__(self, workers: int):
        self.workers, self.pool, self.error = workers, None, None
        self.starting = threading.Thread(target=self._start, daemon=True) if workers > 1 else None
        if self.starting:
            self.starting.start()

    def _start(self) -> None:
        try:
            # No preload: a fork server that imported this module (numpy, pyarrow, pandas) would
            # hold 130 MB of RSS idle all run long; each worker imports them itself instead.
            if "forkserver" in mp.get_all_start_methods():
                context = mp.get_context("forkserver")
            else:
                context = mp.get_context("spawn")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                            initargs=(os.getpid(),))
            self.pool.submit(int).result()  # launches the processes now
        except BaseException as e:  # re-raised by map()
            self.error = e

    def map(self, tasks: Iterable[tuple]):
        if self.starting is None:
            yield from map(_work, tasks)
            return
        self.starting.join()
        if self.error is not None:
            raise WorkFailed(f"could not start {self.workers} worker processes ({self.error}); try --workers 1")
        pending: deque = deque()
        try:
            for index, task in enumerate(tasks):
                if not index:
                    Path(task[4], RESULTS_DIR).mkdir(exist_ok=True)
                pending.append(self.pool.submit(_work_in_pool, task, index))
                if len(pending) > self.workers:
                    yield _receive(pending.popleft().result())
            while pending:
                yield _receive(pending.popleft().result())
        except BrokenProcessPool:
            raise WorkFailed("a worker process died (out of memory?); retry with fewer --workers") from None

    def close(self, ok: bool) -> None:
        """Stop the workers (again: a no-op)."""
        if self.starting is not None:
            self.starting.join()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=not ok)
            self.pool = None
        _clear_cache()
