"""The training arrays of an EdNet-schema folder, memory-mapped (docs/data.md#training-arrays).

`prepare` (ednet, riiid, custom) writes, beside interactions.parquet, the per-answer arrays
that every model's loader reads, already transformed and checked:

    arrays/position.npy  question.npy  bundle.npy  part.npy  tags.npy (n, K)  correct.npy
           platform.npy  source.npy  num.npy (n, F)  num_present.npy (n, F)  lecture_part.npy
           lecture_tags.npy (n, K)  hours.npy  [custom_cat.<m>.npy ...]      one row per answer
    arrays/bundle_starts.npy     flat row indices where a bundle run (or a learner) begins
    arrays/learners.arrow        Arrow IPC: user, start, length (rows [start, start + length))

Rows are grouped by learner in the order of interactions.parquet (EdNet: learner id) and
sorted by position within a learner. The manifest's "arrays" entry records the version,
row count and each file's dtype and shape; `open_store` checks them, then maps the files
(`np.load(mmap_mode="r")`, Arrow memory map): opening costs O(1) memory, and every process
(DataLoader worker, DDP rank) reading the same folder shares the OS's page cache instead of
holding its own copy. Parquet stays the interchange format; these arrays are derived from it.

`StoreWriter` appends chunks of whole learners (memory bounded by a chunk): `prepare --dataset
ednet` feeds it the arrays its worker processes computed (data/ednet_row_arrays.py) while
parsing; `write_store` (riiid, custom, `prepare --refresh-arrays`, tests) streams them from
interactions.parquet, which needs each learner's rows contiguous and in position order, as
every preparer writes them; a file written otherwise (by hand) is sorted in memory instead.
The arrays are checked against the Parquet files they came from (size and footer hash):
a Parquet file edited afterwards is refused until `dsrsd prepare --refresh-arrays`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from dsrsd_cli.data import schema
from dsrsd_cli.data.ednet_row_arrays import RowRules, chunk_arrays, custom_arrays
from dsrsd_cli.data.prepared import Prepared, rerun_prepare
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import write_json

STORE_VERSION = 1
STORE_DIR = "arrays"
CHUNK_ROWS = 1 << 20          # rows read per chunk of interactions.parquet (whole learners are kept together)
SOURCE_FILES = ("interactions.parquet", "questions.parquet", "lectures.parquet", "custom_features.parquet")

# ================================================================ reading the store

@dataclass
class Store:
    """The mapped arrays of one folder. Pickled (DataLoader workers started by spawn) as its
    path only, and mapped again on arrival, never copied."""

    path: Path
    columns: dict[str, np.ndarray]      # name -> (n, ...) read-only memory map
    users: pa.StringArray               # (L,) learner names, mapped (no Python string per learner)
    start: np.ndarray                   # (L,) int64 first row of each learner
    length: np.ndarray                  # (L,) int64 rows of each learner
    bundle_starts: np.ndarray           # (R,) int64 sorted; includes every learner's first row

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(_map(state["path"], _read_entry(state["path"])).__dict__)

    def release_pages(self) -> None:
        """Unmap the pages read so far from this process (madvise DONTNEED); they stay in the
        OS's page cache, shared, and come back on the next read. Mapped pages count in a
        process's RSS: without this, a pass over a split scattered over the whole file ends
        holding every page of every column (full KT1: ~8.5 GB of RSS, though shared)."""
        for values in [*self.columns.values(), self.bundle_starts]:
            mapping = getattr(values, "_mmap", None)
            if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                mapping.madvise(mmap.MADV_DONTNEED)


def open_store(prepared: Prepared) -> Store:
    """Map the folder's arrays after checking them against the manifest; BadInput naming the
    file and `dsrsd prepare --force` when they are missing, stale or truncated."""
    entry = prepared.manifest.get("arrays")
    if not isinstance(entry, dict) or entry.get("version") != STORE_VERSION:
        found = entry.get("version") if isinstance(entry, dict) else None
        raise BadInput(f"{prepared.file('manifest.json')}: no training arrays of version {STORE_VERSION} (found {found!r}); "
                       f"this folder was prepared by an older dsrsd; {rerun_prepare('ednet')}")
    for name, want in entry.get("sources", {}).items():
        if fingerprint(prepared.file(name)) != want:
            raise BadInput(f"{prepared.file(name)}: changed after the training arrays were written; rebuild them with "
                           f"`dsrsd prepare --dataset ednet --refresh-arrays --out {prepared.path}` (or {rerun_prepare('ednet')[6:]})")
    return _map(prepared.path, entry)


SOURCE_FILES = ("interactions.parquet", "questions.parquet", "lectures.parquet", "custom_features.parquet")


def fingerprint(file: Path) -> dict | None:
    """Size + hash of the last MiB (a Parquet footer: row group offsets, sizes and statistics):
    catches a file rewritten after the arrays were built, in O(1) time; survives copies."""
    if not file.is_file():
        return None
    size = file.stat().st_size
    with open(file, "rb") as f:
        f.seek(max(0, size - (1 << 20)))
        tail = hashlib.sha256(f.read()).hexdigest()
    return {"bytes": size, "tail_sha256": tail}


def refresh_store(folder: Path) -> dict:
    """Rebuild folder/arrays/ from its Parquet files (after they were edited) and update the
    manifest atomically; returns the manifest."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest.pop("arrays", None)
    manifest["arrays"] = write_store(folder, manifest)
    write_json(folder / "manifest.json", manifest)
    return manifest


def _read_entry(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))["arrays"]


def _map(folder: Path, entry: dict) -> Store:
    folder = Path(folder)
    rows = int(entry["rows"])

    def load(name: str, dtype: str, shape: list[int]) -> np.ndarray:
        file = folder / STORE_DIR / f"{name}.npy"
        try:
            values = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInput(f"{file}: missing or unreadable ({e}); {rerun_prepare('ednet')}") from None
        if str(values.dtype) != dtype or list(values.shape) != list(shape):
            raise BadInput(f"{file}: {values.dtype} {list(values.shape)}, but the manifest says {dtype} {list(shape)}; "
                           f"{rerun_prepare('ednet')}")
        return values

    columns = {name: load(name, spec["dtype"], spec["shape"]) for name, spec in entry["columns"].items()}
    bundle_starts = load("bundle_starts", "int64", [int(entry["bundle_runs"])])
    file = folder / STORE_DIR / "learners.arrow"
    try:
        learners = ipc.open_file(pa.memory_map(str(file))).read_all()
    except (OSError, pa.ArrowException) as e:
        raise BadInput(f"{file}: missing or unreadable ({e}); {rerun_prepare('ednet')}") from None
    start = learners["start"].to_numpy()
    length = learners["length"].to_numpy()
    if len(learners) != int(entry["learners"]) or int(length.sum()) != rows or any(len(c) != rows for c in columns.values()):
        raise BadInput(f"{file}: learners or row counts differ from the manifest's; {rerun_prepare('ednet')}")
    users = learners["user"].combine_chunks()
    return Store(path=folder, columns=columns, users=users, start=start, length=length, bundle_starts=bundle_starts)


# ================================================================ writing the store (prepare)

# ================================================================ writing the store

class StoreWriter:
    """Appends chunks of whole learners to DIR/.arrays.partial/; `finish` fixes the .npy
    headers (row counts are known only at the end), writes learners.arrow and renames the
    folder to DIR/arrays (after moving an older one aside: a failure keeps it intact)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.partial = self.folder / f".{STORE_DIR}.partial"
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self.files: dict[str, _NpyAppender] = {"bundle_starts": _NpyAppender(self.partial / "bundle_starts.npy", np.int64, ())}
        self.users: list[np.ndarray] = []       # per chunk, (learners,) str: compact, unlike a list of str
        self.user_start: list[np.ndarray] = []
        self.user_length: list[np.ndarray] = []
        self.rows = 0
        self.in_order = True   # False once a chunk's learner rows were not contiguous or out of position order
        self._unique_upto = 0   # chunks of self.users already checked for a learner seen twice

    @property
    def grouped(self) -> bool:
        """True while every learner's rows came in one chunk, contiguous and in position order
        (else finish_folder computes the arrays from the Parquet file instead). A learner in two
        chunks is looked for here, across all chunks, when chunks came since the last look: in
        practice once, at the end."""
        if self.in_order and self._unique_upto < len(self.users):
            users = np.concatenate(self.users)
            self.in_order = len(np.unique(users)) == len(users)
            self._unique_upto = len(self.users)
        return self.in_order

    def add(self, names, user_code: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """One chunk: (n,) `user_code` into `names`, grouped by learner, and its (n, ...) arrays."""
        n = len(user_code)
        if not n or not self.in_order:
            return
        new_user = np.ones(n, dtype=bool)
        new_user[1:] = user_code[1:] != user_code[:-1]
        first = np.flatnonzero(new_user)
        users = np.array([str(names[c]) for c in user_code[first]], dtype=str)
        position = arrays["position"]
        if len(np.unique(users)) < len(users) or (~new_user[1:] & (position[1:] <= position[:-1])).any():
            self.in_order = False
            return
        for name, values in arrays.items():
            if name not in self.files:
                if self.rows:
                    raise ValueError(f"array {name!r} appears after the first chunk")
                self.files[name] = _NpyAppender(self.partial / f"{name}.npy", values.dtype, values.shape[1:])
            self.files[name].append(values)
        new_bundle = new_user.copy()
        new_bundle[1:] |= arrays["bundle"][1:] != arrays["bundle"][:-1]
        self.files["bundle_starts"].append(np.flatnonzero(new_bundle).astype(np.int64) + self.rows)
        self.users.append(users)
        self.user_start.append(first.astype(np.int64) + self.rows)
        self.user_length.append(np.diff(np.append(first, n)).astype(np.int64))
        self.rows += n

    def finish(self) -> dict:
        """Close the files, put the folder in place; returns the manifest's "arrays" entry."""
        for f in self.files.values():
            f.close()
        empty = np.zeros(0, np.int64)
        users = np.concatenate(self.users) if self.users else np.zeros(0, str)
        learners = pa.table({"user": pa.array(users.tolist(), pa.string()),
                             "start": pa.array(np.concatenate(self.user_start) if self.user_start else empty),
                             "length": pa.array(np.concatenate(self.user_length) if self.user_length else empty)})
        with ipc.new_file(str(self.partial / "learners.arrow"), learners.schema) as writer:
            writer.write_table(learners)
        out, old = self.folder / STORE_DIR, self.folder / f".{STORE_DIR}.old"
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        self.partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        columns = {name: f for name, f in self.files.items() if name != "bundle_starts"}
        return {"version": STORE_VERSION, "rows": self.rows, "learners": len(users),
                "bundle_runs": self.files["bundle_starts"].count,
                "columns": {name: {"dtype": str(f.dtype), "shape": [f.count, *f.tail]} for name, f in columns.items()},
                "sources": {name: fp for name in SOURCE_FILES if (fp := fingerprint(self.folder / name)) is not None}}

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.partial, ignore_errors=True)


class _NpyAppender:
    """A .npy file written by appending rows, its header rewritten at the end with the row
    count (fixed header size). No memory map: mapped dirty pages would count in the RSS."""

    HEADER_BYTES = 128

    def __init__(self, path: Path, dtype, tail: tuple[int, ...]):
        self.path, self.dtype, self.tail, self.count = path, np.dtype(dtype), tuple(tail), 0
        self.file = open(path, "wb")
        self.file.write(self._header())

    def _header(self) -> bytes:
        shape = (self.count, *self.tail)
        text = f"{{'descr': {np.lib.format.dtype_to_descr(self.dtype)!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
        prefix = b"\x93NUMPY\x01\x00" + (self.HEADER_BYTES - 10).to_bytes(2, "little")
        return prefix + text.ljust(self.HEADER_BYTES - 10 - 1).encode("latin1") + b"\n"

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        assert values.shape[1:] == self.tail, (self.path.name, values.shape, self.tail)
        values.tofile(self.file)
        self.count += len(values)

    def close(self) -> None:
        if not self.file.closed:
            self.file.seek(0)
            self.file.write(self._header())
            self.file.close()


class _NotGrouped(Exception):
    """A learner's rows are not contiguous, or not in position order: sort in memory instead."""


def write_store(folder: Path, manifest: dict) -> dict:
    """Write folder/arrays/ from folder's Parquet files; returns the manifest's "arrays" entry.
    `manifest` is the folder's manifest without that entry (vocab sizes for the range checks)."""
    prepared = Prepared(path=Path(folder), dataset="ednet", manifest=manifest, manifest_hash="")
    try:
        return _write(prepared, _grouped_chunks(prepared))
    except _NotGrouped:
        return _write(prepared, _sorted_in_memory(prepared))


def _write(prepared: Prepared, chunks) -> dict:
    rules = RowRules.of(prepared)
    writer = StoreWriter(prepared.path)
    try:
        for table in chunks:
            names, user_code, arrays = chunk_arrays(rules, table)
            arrays.update(custom_arrays(prepared, list(names), user_code, arrays["position"]))
            writer.add(names, user_code, arrays)
            if not writer.in_order:    # learners interleaved or out of position order: stop early
                raise _NotGrouped
        if not writer.grouped:          # a learner in two chunks
            raise _NotGrouped
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


def _columns() -> list[str]:
    return [name for name in schema.EDNET_INTERACTIONS.names if name != "kt_level"]


def _grouped_chunks(prepared: Prepared):
    """interactions.parquet as tables of whole learners (about CHUNK_ROWS rows each) when its
    learners are contiguous (StoreWriter.add checks it)."""
    parquet = pq.ParquetFile(prepared.file("interactions.parquet"))
    carry: pa.Table | None = None
    for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=_columns()):
        table = pa.Table.from_batches([batch]) if carry is None else pa.concat_tables([carry, pa.Table.from_batches([batch])])
        user = table["user"].combine_chunks()
        # the last learner of the chunk may go on in the next batch: keep its rows for then
        others = np.flatnonzero(~pc.equal(user, user[len(user) - 1]).to_numpy(zero_copy_only=False))
        tail_start = int(others[-1]) + 1 if len(others) else 0
        if tail_start == 0:
            carry = table
            continue
        yield table.slice(0, tail_start)
        carry = table.slice(tail_start)
    if carry is not None and carry.num_rows:
        yield carry


def _sorted_in_memory(prepared: Prepared):
    table = pq.read_table(prepared.file("interactions.parquet"), columns=_columns())
    names = table["user"].to_numpy(zero_copy_only=False)
    position = pc.fill_null(table["position"], -1).to_numpy()
    yield table.take(pa.array(np.lexsort((position, names.astype(str)))))
