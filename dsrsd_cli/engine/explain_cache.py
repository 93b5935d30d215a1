"""explain's cache on disk: a folder of .npy columns, written chunk by chunk, read a column at a time.

A column is one array with a row per scored row of the split, (N,) or (N, ...). It is written
front to back: a .npy header (np.lib.format, version 1.0) sized for any row count (numpy pads
the header so that axis 0 can grow to 21 digits), then the rows of each chunk as they come,
then the header again with the final N. So writing holds one chunk, never a column, and
reading holds one column, or only the rows asked for (picked through np.load(mmap_mode="r")).

A cache is a folder built by `write_cache` in a temporary sibling and renamed into place when
complete (io.atomic_dir), with meta.json (the caller's key and facts, plus every column's shape
and dtype) written last. `CacheFolder.open` trusts a folder only if meta.json parses, the key
matches, and every listed column opens with the recorded shape and dtype and the exact file
size; anything else (a missing meta.json, a truncated or foreign file) is a miss, so the caller
recomputes. Nothing is ever unpickled: object dtypes cannot be memory-mapped.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from dsrsd_cli.errors import WorkFailed
from dsrsd_cli.io import atomic_dir, atomic_write_text

META_FILE = "meta.json"
KINDS = "biuf"          # bool, integer, unsigned, float: the only dtypes a column may have


class _NpyAppender:
    """One .npy file written front to back; `close()` writes the final row count into the header."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), tuple(row_shape), 0
        self._file = open(path, "wb")
        self._header_bytes = self._write_header()

    def _write_header(self) -> int:
        self._file.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.rows, *self.row_shape)}
        np.lib.format.write_array_header_1_0(self._file, header)
        return self._file.tell()

    def append(self, rows: np.ndarray) -> None:
        if rows.dtype != self.dtype or rows.shape[1:] != self.row_shape:
            raise WorkFailed(f"{self.path.name}: a chunk of {rows.dtype} {rows.shape[1:]} after {self.dtype} {self.row_shape}; this is a bug")
        if rows.size:
            self._file.write(np.ascontiguousarray(rows).reshape(-1).view(np.uint8))     # raw bytes, C order
        self.rows += len(rows)

    def close(self) -> None:
        end = self._file.tell()
        if self._write_header() != self._header_bytes:      # numpy reserves room for 21 digits: never expected
            raise WorkFailed(f"{self.path.name}: the .npy header changed length; this is a bug")
        self._file.seek(end)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abandon(self) -> None:
        self._file.close()


class CacheWriter:
    """The columns of a cache folder being written: `append` one chunk (column -> rows) at a time.

    The first chunk fixes the column names, dtypes and trailing shapes; every later chunk must
    bring the same columns with the same number of rows each."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.rows = Path(folder), 0
        self._files: dict[str, _NpyAppender] = {}
        self.finished = False

    def close_files(self) -> None:
        """Close whatever is still open (after an error: the folder is removed anyway)."""
        for f in self._files.values():
            f.abandon()

    def append(self, columns: Mapping[str, np.ndarray]) -> None:
        lengths = {len(a) for a in columns.values()}
        if len(lengths) != 1:
            raise WorkFailed(f"a cache chunk with columns of different lengths {sorted(lengths)}; this is a bug")
        if not self._files:
            self._files = {name: _NpyAppender(self.folder / f"{name}.npy", a.dtype, a.shape[1:]) for name, a in columns.items()}
        elif set(columns) != set(self._files):
            raise WorkFailed(f"a cache chunk with columns {sorted(columns)}, not {sorted(self._files)}; this is a bug")
        for name, rows in columns.items():
            self._files[name].append(rows)
        self.rows += lengths.pop()

    def finish(self, meta: Mapping[str, Any]) -> None:
        """Close every column and write meta.json: `meta` + rows + each column's shape and dtype."""
        for f in self._files.values():
            f.close()
        columns = {name: {"shape": [f.rows, *f.row_shape], "dtype": f.dtype.str} for name, f in self._files.items()}
        atomic_write_text(self.folder / META_FILE, json.dumps({**meta, "rows": self.rows, "columns": columns}, indent=1) + "\n")
        self.finished = True


@contextlib.contextmanager
def write_cache(dest: Path) -> Iterator[CacheWriter]:
    """`with write_cache(dest) as writer:` fill `writer`, then `writer.finish(meta)`. The folder
    is built in a temporary sibling and appears at `dest` (replacing a stale one) only when the
    block ends without an error and finished; otherwise it is removed."""
    with atomic_dir(Path(dest), force=True) as tmp:
        writer = CacheWriter(tmp)
        try:
            yield writer
        finally:
            writer.close_files()
        if not writer.finished:
            raise WorkFailed(f"{dest}: the cache was left unfinished; this is a bug")


class GroupCodes:
    """Group labels as small integer codes, the same code for a label in every chunk: names[code]."""

    def __init__(self) -> None:
        self._code: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        return list(self._code)

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """(n,) labels -> (n,) int32 codes."""
        distinct, inverse = np.unique(labels.astype(str), return_inverse=True)
        table = np.array([self._code.setdefault(g, len(self._code)) for g in distinct.tolist()], dtype=np.int32)
        return table[inverse.reshape(-1)]


class CacheFolder:
    """A complete cache folder with the expected key; `read(name, rows)` copies a column's rows out."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder, self.meta = folder, meta
        self.rows: int = meta["rows"]
        self.columns: dict[str, dict[str, Any]] = meta["columns"]

    @classmethod
    def open(cls, folder: Path, key: str) -> "CacheFolder | None":
        """The cache at `folder` if it is complete and holds `key`; None otherwise (a miss)."""
        try:
            meta = json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or meta.get("key") != key:
                return None
            cache = cls(Path(folder), meta)
            ok = isinstance(cache.rows, int) and isinstance(cache.columns, dict) and all(
                cache._column_ok(name, spec) for name, spec in cache.columns.items())
        except (OSError, EOFError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        return cache if ok else None

    def _column_ok(self, name: str, spec: Mapping[str, Any]) -> bool:
        path = self.folder / f"{name}.npy"
        if path.is_symlink() or "/" in name or name.startswith("."):
            return False
        column = np.load(path, mmap_mode="r", allow_pickle=False)
        ok = (column.dtype.kind in KINDS and column.dtype.str == spec["dtype"] and list(column.shape) == list(spec["shape"])
              and column.shape[0] == self.rows and path.stat().st_size == column.offset + column.nbytes)
        del column                  # unmaps the file
        return ok

    def has(self, name: str) -> bool:
        return name in self.columns

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.columns[name]["shape"])

    def read(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """A column as a new in-memory array: all rows (read straight into memory: copied through
        a mapping, the file's pages would count in this process too, twice the column), or
        `rows`, an index array (read through a mapping, which is dropped once they are copied)."""
        path = self.folder / f"{name}.npy"
        if rows is None:
            return np.load(path, allow_pickle=False)
        column = np.load(path, mmap_mode="r", allow_pickle=False)
        out = np.asarray(column[rows])
        del column                  # unmaps the file
        return out
