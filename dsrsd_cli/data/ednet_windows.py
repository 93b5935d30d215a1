"""EdNet: prepared interactions -> windows of learner histories -> padded batches, and the
rules that keep a window's answers from leaking into its own scores.

One example = one window of one learner's history. A history is cut into windows of at
most `max_len` positions; every window after the first carries up to `context` earlier
positions as context (valid inputs, but `mask` False there, so context positions are
never scored), then new positions whose answers are scored. Every answer is scored
exactly once. Windows start at bundle boundaries where the bundles allow it, so a bundle
is normally not split between a window's context and its scored part (the model's
block-causal mask over `bundle_group` covers the rest). Behaviour features use FIXED
transforms (log1p of seconds or counts), so nothing is fitted on the data and nothing
leaks across splits. `behavior.num` at step t describes step t itself; its "post"
features (schema.BEHAVIOR_FEATURES) are known only once t is answered, so the model must
let them feed later bundles only.

The dataset is built from the Parquet with vectorised numpy/pyarrow: windows are index
ranges into flat per-interaction arrays (the only loop is per window, in `ednet_windows`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data import schema
from dsrsd_cli.data.prepared import Example, Prepared, read_table, rerun_prepare, split_mask, vocab_count
from dsrsd_cli.errors import BadInput
from dsrsd_cli.types import Batch, DataSpec

# ---------------------------------------------------------------- behaviour transforms and sizes

def _log_seconds(ms: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(ms, 0, None) / 1000.0)


def _log_count(count: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(count, 0, None))


# Fixed transform per behaviour feature (schema.BEHAVIOR_FEATURES order): nothing fitted on data.
BEHAVIOR_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "lag_ms": _log_seconds,
    "lecture_count": _log_count,
    "lecture_ms": _log_seconds,
    "elapsed_ms": _log_seconds,
    "answer_changes": _log_count,
    "explanation_ms": _log_seconds,
    "media_plays": _log_count,
}
assert tuple(BEHAVIOR_TRANSFORMS) == tuple(name for name, _ in schema.BEHAVIOR_FEATURES)

MAX_TAGS = 8


def ednet_tag_width(prepared: Prepared) -> int:
    """K: the most tags any question has, capped at MAX_TAGS (at least 1)."""
    tags = read_table(prepared, "questions.parquet", ["tags"])["tags"]
    longest = pc.max(pc.list_value_length(tags)).as_py() if len(tags) else 0
    return int(min(max(longest or 0, 1), MAX_TAGS))


# ---------------------------------------------------------------- custom features (prepare --dataset custom)

CUSTOM_MODALITIES = ("item", "content", "behavior")


def custom_layout(prepared: Prepared) -> dict[str, dict[str, list[dict]]]:
    """modality -> {"cat": [...], "num": [...]} of the manifest's `custom_features`, `known = "before"`
    ones first in each list (the order of the tensors custom_cat / custom_num). Empty when the
    folder has none (every EdNet / Riiid folder)."""
    features = prepared.manifest.get("custom_features") or []
    layout: dict[str, dict[str, list[dict]]] = {}
    for m in CUSTOM_MODALITIES:
        of = [f for f in features if f.get("modality") == m]
        if not of:
            continue
        rank = {"before": 0, "after": 1}
        layout[m] = {
            "cat": sorted((f for f in of if f.get("kind") == "categorical"), key=lambda f: rank[f["known"]]),
            "num": sorted((f for f in of if f.get("kind") == "numeric"), key=lambda f: rank[f["known"]]),
        }
    return layout


def custom_spec_entries(prepared: Prepared) -> tuple[dict[str, int], dict[str, int]]:
    """(vocab, dims) entries that size the encoders' CustomFeatures: dims "<m>.custom_cat" = Kc,
    "<m>.custom_cat_before" = how many of them are known before the answer (the first ones),
    likewise "<m>.custom_num" / "<m>.custom_num_before"; vocab "<m>.custom_cat.<j>" = table size."""
    vocab: dict[str, int] = {}
    dims: dict[str, int] = {}
    for m, kinds in custom_layout(prepared).items():
        for kind in ("cat", "num"):
            dims[f"{m}.custom_{kind}"] = len(kinds[kind])
            dims[f"{m}.custom_{kind}_before"] = sum(f["known"] == "before" for f in kinds[kind])
        for j, f in enumerate(kinds["cat"]):
            vocab[f"{m}.custom_cat.{j}"] = int(f["size"])
    return vocab, dims


def _signed_log(x: np.ndarray) -> np.ndarray:
    """Fixed transform of a custom numeric feature (nothing fitted): sign(x) log1p(|x|)."""
    return np.sign(x) * np.log1p(np.abs(x))


def read_custom_features(prepared: Prepared, layout: dict, users: list[str] | None, names, user_code: np.ndarray,
                         position: np.ndarray) -> pa.Table:
    """custom_features.parquet of `users` (None: all), in the order of the sorted interactions
    given by (user_code into `names`, position); BadInput when the rows do not match."""
    file = prepared.file("custom_features.parquet")
    if not file.is_file():
        raise BadInput(f"{file}: missing, but the manifest lists custom_features; rerun `dsrsd prepare --dataset custom --force`")
    wanted = [f["name"] for kinds in layout.values() for k in ("cat", "num") for f in kinds[k]]
    try:
        table = pq.read_table(file, columns=["user", "position", *wanted],
                              filters=None if users is None else pc.field("user").isin(pa.array(users, pa.string())))
    except (pa.ArrowException, OSError) as e:
        raise BadInput(f"{file}: not readable or lacks a listed feature ({e}); rerun `dsrsd prepare --dataset custom --force`") from None
    codes = pd.Categorical(table["user"].to_pandas(), categories=list(names)).codes.astype(np.int64)
    pos = pc.fill_null(table["position"], -1).to_numpy().astype(np.int64)
    order = np.lexsort((pos, codes))
    if len(order) != len(position) or not (np.array_equal(codes[order], user_code)
                                           and np.array_equal(pos[order], np.asarray(position).astype(np.int64))):
        raise BadInput(f"{file}: its (user, position) rows do not match interactions.parquet; "
                       "rerun `dsrsd prepare --dataset custom --force`")
    return table.take(pa.array(order))


def _custom_arrays(prepared: Prepared, users: list[str] | None, names: list[str], user_code: np.ndarray,
                   position: np.ndarray) -> dict[str, np.ndarray]:
    """custom_features.parquet aligned with the sorted interactions: per modality
    custom_cat.<m> (n, Kc) int64, custom_num.<m> (n, Kn) float32, custom_num_present.<m> (n, Kn) bool."""
    layout = custom_layout(prepared)
    if not layout:
        return {}
    table = read_custom_features(prepared, layout, users, names, user_code, position)
    file = prepared.file("custom_features.parquet")
    out: dict[str, np.ndarray] = {}
    n = table.num_rows
    for m, kinds in layout.items():
        cat = np.zeros((n, len(kinds["cat"])), dtype=np.int64)
        for j, f in enumerate(kinds["cat"]):
            values = pc.fill_null(table[f["name"]], 0).to_numpy().astype(np.int64)
            if len(values) and (values.min() < 0 or values.max() >= int(f["size"])):
                raise BadInput(f"{file}: feature {f['name']!r} has a code outside 0..{int(f['size']) - 1}; "
                               "rerun `dsrsd prepare --dataset custom --force`")
            cat[:, j] = values
        num = np.zeros((n, len(kinds["num"])), dtype=np.float32)
        present = np.zeros(num.shape, dtype=bool)
        for j, f in enumerate(kinds["num"]):
            values = np.asarray(pc.cast(table[f["name"]], pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
            present[:, j] = np.isfinite(values)
            num[:, j] = np.where(present[:, j], _signed_log(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)), 0.0)
        out[f"custom_cat.{m}"], out[f"custom_num.{m}"], out[f"custom_num_present.{m}"] = cat, num, present
    return out


def ednet_spec(prepared: Prepared, data_cfg: DataConfig) -> DataSpec:
    custom_vocab, custom_dims = custom_spec_entries(prepared)
    return DataSpec(
        dataset="ednet",
        modalities=schema.MODALITIES["ednet"],
        n_outputs=1,
        vocab={
            "item.question": vocab_count(prepared, "question") + 1,
            "item.bundle": vocab_count(prepared, "bundle") + 1,
            "content.tag": vocab_count(prepared, "tag") + 1,
            "content.part": 8,
            "behavior.platform": 3,
            "behavior.source": vocab_count(prepared, "source") + 1,
            **custom_vocab,
        },
        dims={"behavior.num": len(schema.BEHAVIOR_FEATURES), "content.tags": ednet_tag_width(prepared), **custom_dims},
        max_len=data_cfg.max_len,
        target="correct",
    )


# ---------------------------------------------------------------- windows

def ednet_windows(
    user_starts: np.ndarray, user_ends: np.ndarray, bundle_starts: np.ndarray, *, max_len: int, context: int
) -> np.ndarray:
    """(n_windows, 3) int64 rows (context_start, target_start, end) of flat index ranges.

    Per learner [lo, hi): targets [target_start, end) tile the history exactly once.
    A window's context is [context_start, target_start): the earliest bundle start at most
    `context` positions back (or exactly `context` back when one bundle is longer than
    that). Its end is the last bundle start that fits in max_len (or max_len itself when
    no bundle boundary fits). `bundle_starts` are the sorted flat indices where a bundle
    run begins, including every learner's first position. Requires context < max_len.
    """
    assert context < max_len
    bundle_starts = np.append(bundle_starts, np.iinfo(np.int64).max)   # sentinel: "no later bundle start"
    windows: list[tuple[int, int, int]] = []
    for lo, hi in zip(user_starts.tolist(), user_ends.tolist()):
        start = lo
        while start < hi:
            ctx = start
            if start > lo and context > 0:
                earliest = max(lo, start - context)
                ctx = int(bundle_starts[np.searchsorted(bundle_starts, earliest)])
                if ctx >= start:          # one bundle covers the whole context span
                    ctx = earliest
            limit = min(hi, ctx + max_len)
            end = limit
            if limit < hi:
                last_boundary = int(bundle_starts[np.searchsorted(bundle_starts, limit, side="right") - 1])
                if last_boundary > start:
                    end = last_boundary
            windows.append((ctx, start, end))
            start = end
    return np.asarray(windows, dtype=np.int64).reshape(-1, 3)


class EdnetWindows(Dataset):
    """Windows of learner histories; each item is an `Example` of array views [context_start:end)."""

    def __init__(self, arrays: dict[str, np.ndarray], users: np.ndarray, windows: np.ndarray, window_user: np.ndarray):
        self.arrays = arrays              # flat, one row per interaction, sorted by (user, position)
        self.users = users                # learner names, indexed by window_user
        self.windows = windows            # (n, 3) context_start, target_start, end
        self.window_user = window_user    # (n,)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Example:
        ctx, start, end = self.windows[i].tolist()
        return Example(
            dataset="ednet",
            arrays={name: values[ctx:end] for name, values in self.arrays.items()},
            keys={"user": str(self.users[self.window_user[i]])},
            n_context=start - ctx,
        )

    @property
    def n_interactions(self) -> int:
        return len(self.arrays["position"])


# ---------------------------------------------------------------- the dataset of a split

def ednet_dataset(prepared: Prepared, split: str, data_cfg: DataConfig) -> EdnetWindows:
    splits_file = prepared.file("splits.parquet")
    splits = read_table(prepared, "splits.parquet", ["user", "split", "fold"]).to_pandas()
    users = None
    if split != "all":
        users = sorted(splits.loc[split_mask(splits, split, data_cfg, splits_file, "ednet", "user"), "user"].astype(str))
    table = read_table(
        prepared, "interactions.parquet",
        [name for name in schema.EDNET_INTERACTIONS.names if name != "kt_level"],
        filters=None if users is None else pc.field("user").isin(pa.array(users, pa.string())),
        read_dictionary=["user"],
    )
    user_cat = table["user"].to_pandas()
    names = sorted(user_cat.cat.categories)
    user_code = pd.Categorical(user_cat, categories=names).codes.astype(np.int64)
    position = pc.fill_null(table["position"], -1).to_numpy()
    order = np.lexsort((position, user_code))
    if not np.array_equal(order, np.arange(len(order))):
        table, user_code, position = table.take(pa.array(order)), user_code[order], position[order]

    file = prepared.file("interactions.parquet")
    for column in ("user", "position", "question", "bundle", "correct"):
        if table[column].null_count:
            row = int(np.argmax(table[column].is_null().to_numpy(zero_copy_only=False)))
            raise BadInput(f"{file}: column {column!r} is null (user {names[user_code[row]]}); {rerun_prepare('ednet')}")
    same = (user_code[1:] == user_code[:-1]) & (position[1:] == position[:-1])
    if same.any():
        row = int(np.argmax(same)) + 1
        raise BadInput(f"{file}: user {names[user_code[row]]} has position {position[row]} twice; {rerun_prepare('ednet')}")

    arrays = _ednet_arrays(prepared, table, user_code, names)
    arrays.update(_custom_arrays(prepared, users, names, user_code, position))
    n = len(position)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user_code[1:] != user_code[:-1]
    new_bundle = new_user.copy()
    new_bundle[1:] |= arrays["bundle"][1:] != arrays["bundle"][:-1]
    user_starts = np.flatnonzero(new_user)
    user_ends = np.append(user_starts[1:], n)
    arrays["hours"] = _hours_since_first(table["timestamp"], user_code)
    windows = ednet_windows(
        user_starts, user_ends, np.flatnonzero(new_bundle), max_len=data_cfg.max_len, context=data_cfg.context
    )
    window_user = user_code[windows[:, 0]] if len(windows) else np.zeros(0, dtype=np.int64)
    return EdnetWindows(arrays, np.asarray(names, dtype=object), windows, window_user)


def _ednet_arrays(prepared: Prepared, table: pa.Table, user_code: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Flat per-interaction arrays, in the table's (sorted) order."""
    file = prepared.file("interactions.parquet")
    width = ednet_tag_width(prepared)

    def ints(column: str, dtype) -> np.ndarray:
        return pc.fill_null(table[column], 0).to_numpy().astype(dtype)

    def in_range(values: np.ndarray, column: str, high: int, low: int = 0, rows: np.ndarray | None = None) -> np.ndarray:
        """`values`, after checking low <= v <= high; rows[i] is the interaction of values[i]."""
        bad = (values < low) | (values > high)
        if bad.ndim > 1:
            bad = bad.any(axis=1)
        if bad.any():
            first = int(np.argmax(bad))
            row = first if rows is None else int(rows[first])
            raise BadInput(
                f"{file}: column {column!r} = {values[first].tolist()} (user {names[user_code[row]]}, position "
                f"{table['position'][row].as_py()}) is outside {low}..{high}; {rerun_prepare('ednet')}"
            )
        return values

    arrays = {
        "position": ints("position", np.int32),
        "question": in_range(ints("question", np.int32), "question", vocab_count(prepared, "question"), low=1),
        "bundle": in_range(ints("bundle", np.int32), "bundle", vocab_count(prepared, "bundle"), low=1),
        "part": in_range(ints("part", np.int8), "part", 7),
        "tags": in_range(_list_matrix(table["tags"], width, np.int16), "tags", vocab_count(prepared, "tag")),
        "correct": in_range(ints("correct", np.int8), "correct", 1),
        "platform": in_range(ints("platform", np.int8), "platform", 2),
        "source": in_range(ints("source", np.int8), "source", vocab_count(prepared, "source")),
    }

    # behaviour: raw values (null -> absent), then the fixed transforms
    raw = {name: table[name] for name in BEHAVIOR_TRANSFORMS if name != "lecture_count"}
    raw["lecture_count"] = pc.list_value_length(table["lectures"])
    num = np.zeros((table.num_rows, len(BEHAVIOR_TRANSFORMS)), dtype=np.float32)
    present = np.zeros(num.shape, dtype=bool)
    for f, (name, transform) in enumerate(BEHAVIOR_TRANSFORMS.items()):
        column = raw[name]
        present[:, f] = column.is_valid().to_numpy(zero_copy_only=False)
        num[:, f] = np.where(present[:, f], transform(pc.fill_null(column, 0).to_numpy().astype(np.float64)), 0.0)
    arrays["num"], arrays["num_present"] = num, present

    arrays["lecture_part"], arrays["lecture_tags"] = _lecture_content(prepared, table["lectures"], width, in_range)
    return arrays


def _hours_since_first(timestamp: pa.ChunkedArray, user_code: np.ndarray) -> np.ndarray:
    """(n,) float32 hours since the learner's first timestamp: the clock of the encoders'
    forgetting. A null timestamp (an `order` custom log) repeats the learner's previous one;
    a learner without any has 0 throughout (no time passes, only steps)."""
    ms = pd.Series(timestamp.to_numpy(zero_copy_only=False), dtype="float64")
    ms = ms.groupby(user_code).ffill()
    first = ms.groupby(user_code).transform("min")
    return ((ms - first) / 3.6e6).fillna(0.0).clip(lower=0.0).to_numpy(np.float32)


def _list_matrix(column: pa.ChunkedArray | pa.Array, width: int, dtype) -> np.ndarray:
    """(rows, width) matrix of a list column's first `width` values, 0-padded (null list = empty)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy().astype(np.int64)
    values = pc.fill_null(pc.list_flatten(array), 0).to_numpy()
    rows = np.repeat(np.arange(len(array)), lengths)
    slot = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = slot < width
    out = np.zeros((len(array), width), dtype=dtype)
    out[rows[keep], slot[keep]] = values[keep]
    return out


def _lecture_content(prepared: Prepared, lectures: pa.ChunkedArray, width: int, in_range) -> tuple[np.ndarray, np.ndarray]:
    """Per interaction: part of the last lecture studied since the previous bundle, and the
    sorted union of those lectures' tags (first `width`)."""
    catalogue = read_table(prepared, "lectures.parquet", ["lecture", "part", "tags"])
    index = pc.fill_null(catalogue["lecture"], 0).to_numpy().astype(np.int64)
    size = int(index.max(initial=0)) + 1
    part_of = np.zeros(size, dtype=np.int8)
    part_of[index] = pc.fill_null(catalogue["part"], 0).to_numpy()
    tags_of = np.zeros((size, width), dtype=np.int16)
    tags_of[index] = _list_matrix(catalogue["tags"], width, np.int16)

    array = lectures.combine_chunks()
    n = len(array)
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy().astype(np.int64)
    rows = np.repeat(np.arange(n), lengths)
    studied = in_range(pc.fill_null(pc.list_flatten(array), 0).to_numpy().astype(np.int64), "lectures", size - 1, rows=rows)

    lecture_part = np.zeros(n, dtype=np.int8)
    has = lengths > 0
    lecture_part[has] = part_of[studied[np.cumsum(lengths)[has] - 1]]

    pair_rows = np.repeat(rows, width)
    pair_tags = tags_of[studied].reshape(-1).astype(np.int64)
    keep = pair_tags > 0
    pairs = np.unique(pair_rows[keep] * (1 << 16) + pair_tags[keep])    # sorted by row, then tag
    pair_rows, pair_tags = pairs >> 16, pairs & 0xFFFF
    counts = np.bincount(pair_rows, minlength=n)
    slot = np.arange(len(pairs)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = slot < width
    lecture_tags = np.zeros((n, width), dtype=np.int16)
    lecture_tags[pair_rows[keep], slot[keep]] = pair_tags[keep]
    return lecture_part, lecture_tags


# ---------------------------------------------------------------- collation

def collate_ednet(examples: list[Example]) -> Batch:
    lengths = torch.tensor([len(ex.arrays["position"]) for ex in examples])
    n_context = torch.tensor([ex.n_context for ex in examples])
    B, T = len(examples), int(lengths.max())

    def pad(name: str, fill: int = 0) -> torch.Tensor:
        first = examples[0].arrays[name]
        out = np.full((B, T, *first.shape[1:]), fill, dtype=first.dtype)
        for row, ex in enumerate(examples):
            out[row, : len(ex.arrays[name])] = ex.arrays[name]
        return torch.from_numpy(out)

    steps = torch.arange(T)
    valid = steps < lengths[:, None]                                  # (B, T)
    mask = valid & (steps >= n_context[:, None])                      # (B, T) scored positions
    bundle = pad("bundle").long()                                     # (B, T)
    new_bundle = torch.ones(B, T, dtype=torch.long)
    new_bundle[:, 1:] = (bundle[:, 1:] != bundle[:, :-1]).long()
    bundle_group = new_bundle.cumsum(dim=1) * valid                   # (B, T) 1, 2, ... ; 0 pad
    num_present = pad("num_present")                                  # (B, T, F)
    correct = pad("correct").long()                                   # (B, T)
    inputs = {
        "item": {"question": pad("question").long(), "bundle": bundle},
        "content": {
            "part": pad("part").long(),
            "tags": pad("tags").long(),                               # (B, T, K)
            "lecture_part": pad("lecture_part").long(),
            "lecture_tags": pad("lecture_tags").long(),               # (B, T, K)
        },
        "behavior": {
            "num": pad("num"),                                        # (B, T, F)
            "num_present": num_present,
            "platform": pad("platform").long(),
            "source": pad("source").long(),
        },
    }
    behavior_present = num_present.any(dim=-1)
    for m in CUSTOM_MODALITIES:                                       # prepare --dataset custom only
        if f"custom_cat.{m}" in examples[0].arrays:
            inputs[m]["custom_cat"] = pad(f"custom_cat.{m}").long()               # (B, T, Kc) 0 unknown
            inputs[m]["custom_num"] = pad(f"custom_num.{m}")                      # (B, T, Kn)
            inputs[m]["custom_num_present"] = pad(f"custom_num_present.{m}")      # (B, T, Kn)
            if m == "behavior":
                behavior_present = (behavior_present | inputs[m]["custom_num_present"].any(dim=-1)
                                    | (inputs[m]["custom_cat"] > 0).any(dim=-1))
    return Batch(
        inputs=inputs,
        present={"item": valid.clone(), "content": valid.clone(), "behavior": valid & behavior_present},
        target=correct.float(),
        mask=mask,
        valid=valid,
        keys={"user": [ex.keys["user"] for ex in examples], "position": pad("position", fill=-1).long()},
        context={"response": correct, "bundle_group": bundle_group, "hours": pad("hours")},
    )
