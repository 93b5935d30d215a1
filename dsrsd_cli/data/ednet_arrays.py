"""numpy and Arrow helpers of the EdNet parser: run boundaries, lookups in sorted keys,
ragged lists, and numpy -> Arrow with a null mask. Every column is processed whole,
never row by row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """True where any key differs from the previous row (and at row 0)."""
    n = len(keys[0])
    start = np.zeros(n, bool)
    if n:
        start[0] = True
        for k in keys:
            start[1:] |= k[1:] != k[:-1]
    return start


def group_first_last(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For integer keys: (order, unique keys, index of first and of last of each key in `order`)."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    start = np.flatnonzero(run_starts(k))
    last = np.append(start[1:], len(k))[: len(start)] - 1
    return order, k[start], start, last


def lookup(keys: np.ndarray, table_keys: np.ndarray, values: np.ndarray, default) -> np.ndarray:
    """values[table_keys == key] for each key (table_keys sorted, unique); default if absent."""
    if len(table_keys) == 0:
        return np.full(len(keys), default, dtype=values.dtype if len(values) else np.int64)
    i = np.minimum(np.searchsorted(table_keys, keys), len(table_keys) - 1)
    return np.where(table_keys[i] == keys, values[i], default)


def index_of(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Position of each key in `table` (unique values), -1 where absent."""
    if len(table) == 0:
        return np.full(len(keys), -1, np.int64)
    order = np.argsort(table)
    i = np.minimum(np.searchsorted(table[order], keys), len(table) - 1)
    return np.where(table[order][i] == keys, order[i], -1)


def ragged_take(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists stored as (offsets (R+1,), values) -> the lists of `rows`, in the same layout."""
    counts = np.diff(offsets)[rows]
    starts = offsets[:-1][rows]
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), values[np.repeat(starts, counts) + within]


def lex_order(*keys: np.ndarray) -> np.ndarray | None:
    """Permutation sorting rows by keys (primary first), or None when already sorted:
    batches mostly arrive in order, and the check is far cheaper than the sort."""
    n = len(keys[0])
    ok, undecided = np.ones(max(n - 1, 0), bool), np.ones(max(n - 1, 0), bool)
    for k in keys:
        lt, gt = k[:-1] < k[1:], k[:-1] > k[1:]
        ok &= ~(undecided & gt)
        undecided &= ~(lt | gt)
    return None if ok.all() else np.lexsort(keys[::-1])


def to_arrow(values: np.ndarray, dtype, missing: np.ndarray | None = None) -> pa.Array:
    """numpy -> Arrow with an optional null mask (pa.array(mask=...) is ~50x slower)."""
    arr = pa.array(values.astype(dtype, copy=False))
    if missing is None or not missing.any():
        return arr
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little"))
    return pa.Array.from_buffers(arr.type, len(arr), [validity, arr.buffers()[1]], null_count=int(missing.sum()))
