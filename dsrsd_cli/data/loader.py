"""Prepared Parquet -> batches (DESIGN §5, §6).

    prepared = open_prepared("data/ednet")            # checks manifest + every file's columns
    spec = make_spec(prepared, cfg.data)              # sizes the model
    loader = make_loader(prepared, "train", cfg.data, shuffle=True, seed=0, epoch=epoch)
    for batch in loader: ...                           # dsrsd_cli.types.Batch

EdNet: one example = one window of one learner's history. A history is cut into
windows of at most `max_len` positions; every window after the first carries up to
`context` earlier positions as context (valid inputs, but `mask` False there), then new
positions whose answers are scored. Every answer is scored exactly once. Windows start
at bundle boundaries where the bundles allow it, so a bundle is normally not split
between a window's context and its scored part (the model's block-causal mask over
`bundle_group` covers the rest). Behaviour features use FIXED transforms (log1p of
seconds or counts), so nothing is fitted on the data and nothing leaks across splits.
`behavior.num` at step t describes step t itself; its "post" features
(schema.BEHAVIOR_FEATURES) are known only once t is answered, so the model must let them
feed later bundles only.

OULAD: one example = one registration (student x module presentation), with every
feature cut at the cutoff day (`data.cutoff_day`, or the presentation's length when it
is None). `oulad_population` says who is in a cutoff's population, `_oulad_dataset`
what reaches a feature.

Datasets are built from the Parquet with vectorised numpy/pandas; EdNet windows are
index ranges into flat per-interaction arrays (the only loop is per window). Built
datasets are kept in a small in-process cache, so a loader made every epoch does not
re-read the files; the cache key includes every file's size and mtime.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data import schema
from dsrsd_cli.errors import BadInput
from dsrsd_cli.types import Batch, DataSpec

SPLITS = ("train", "valid", "test", "all")

# Manifest vocab keys each dataset's loader needs (prepare writes them).
REQUIRED_VOCAB: dict[str, tuple[str, ...]] = {
    "ednet": ("question", "bundle", "tag", "lecture", "source", "part"),
    "oulad": (
        "activity_type", "gender", "region", "highest_education", "imd_band", "age_band",
        "disability", "code_module", "code_presentation",
    ),
}


def _fix(dataset: str) -> str:
    return f"rerun `dsrsd prepare --dataset {dataset} --force`"


# ================================================================ opening a prepared folder

@dataclass(frozen=True)
class Prepared:
    path: Path
    dataset: str                 # "ednet" | "oulad"
    manifest: dict[str, Any]
    manifest_hash: str           # sha256 of manifest.json's bytes

    def file(self, name: str) -> Path:
        return self.path / name

    def vocab(self, key: str) -> Any:
        return self.manifest["vocab"][key]


def open_prepared(path: str | Path) -> Prepared:
    """Read manifest.json and check the dataset, schema version, vocab and every file's columns."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not path.is_dir():
        raise BadInput(f"{path}: prepared data folder not found; create it with `dsrsd prepare --dataset ednet|oulad --out {path}`")
    if not manifest_path.is_file():
        raise BadInput(f"{manifest_path}: missing, so {path} is not a prepared folder; create it with `dsrsd prepare --out {path}`")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{manifest_path}: not valid JSON ({e}); rerun `dsrsd prepare --force`") from None
    if not isinstance(manifest, dict):
        raise BadInput(f"{manifest_path}: expected a JSON object; rerun `dsrsd prepare --force`")

    dataset = manifest.get("dataset")
    if dataset not in schema.PREPARED_FILES:
        raise BadInput(f"{manifest_path}: dataset {dataset!r} is not one of {', '.join(schema.PREPARED_FILES)}; rerun `dsrsd prepare --force`")
    version = manifest.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        raise BadInput(
            f"{manifest_path}: schema_version {version!r}, but this dsrsd reads version {schema.SCHEMA_VERSION}; {_fix(dataset)}"
        )
    vocab = manifest.get("vocab")
    missing = [k for k in REQUIRED_VOCAB[dataset] if not isinstance(vocab, dict) or k not in vocab]
    if missing:
        raise BadInput(f"{manifest_path}: vocab lacks {', '.join(missing)}; {_fix(dataset)}")
    for name, expected in schema.PREPARED_FILES[dataset].items():
        _check_parquet(path / name, expected, dataset)
    return Prepared(path=path, dataset=dataset, manifest=manifest, manifest_hash=hashlib.sha256(raw).hexdigest())


def _check_parquet(file: Path, expected: pa.Schema, dataset: str) -> None:
    if not file.is_file():
        raise BadInput(f"{file}: missing from the prepared folder; {_fix(dataset)}")
    try:
        found = pq.read_schema(file)
    except (pa.ArrowException, OSError) as e:
        raise BadInput(f"{file}: not a readable Parquet file ({e}); {_fix(dataset)}") from None
    for want in expected:
        index = found.get_field_index(want.name)
        if index < 0:
            raise BadInput(f"{file}: column {want.name!r} is missing; {_fix(dataset)}")
        got = found.field(index).type
        if not got.equals(want.type):
            raise BadInput(f"{file}: column {want.name!r} has type {got}, expected {want.type}; {_fix(dataset)}")


def _read(prepared: Prepared, name: str, columns: list[str], **kwargs) -> pa.Table:
    return pq.read_table(prepared.file(name), columns=columns, **kwargs)


def _vocab_list(prepared: Prepared, key: str) -> list[str]:
    values = prepared.vocab(key)
    if not isinstance(values, list) or len(set(values)) != len(values):
        raise BadInput(f"{prepared.file('manifest.json')}: vocab.{key} must be a list of distinct names; {_fix(prepared.dataset)}")
    return [str(v) for v in values]


def _vocab_count(prepared: Prepared, key: str) -> int:
    """A vocab entry as a count: prepare writes either the count or the list of names."""
    value = prepared.vocab(key)
    if isinstance(value, list):
        return len(value)
    if isinstance(value, int) and value >= 0:
        return value
    raise BadInput(f"{prepared.file('manifest.json')}: vocab.{key} must be a count or a list; {_fix(prepared.dataset)}")


# ================================================================ spec

def make_spec(prepared: Prepared, data_cfg: DataConfig) -> DataSpec:
    """What a model needs to size itself; depends on the folder and config, never on the split."""
    _check_config(prepared, data_cfg)
    return SPEC_BUILDERS[prepared.dataset](prepared, data_cfg)


def _ednet_spec(prepared: Prepared, data_cfg: DataConfig) -> DataSpec:
    return DataSpec(
        dataset="ednet",
        modalities=schema.MODALITIES["ednet"],
        n_outputs=1,
        vocab={
            "item.question": _vocab_count(prepared, "question") + 1,
            "item.bundle": _vocab_count(prepared, "bundle") + 1,
            "content.tag": _vocab_count(prepared, "tag") + 1,
            "content.part": 8,
            "behavior.platform": 3,
            "behavior.source": _vocab_count(prepared, "source") + 1,
        },
        dims={"behavior.num": len(schema.BEHAVIOR_FEATURES), "content.tags": ednet_tag_width(prepared)},
        max_len=data_cfg.max_len,
        target="correct",
    )


def _oulad_spec(prepared: Prepared, data_cfg: DataConfig) -> DataSpec:
    return DataSpec(
        dataset="oulad",
        modalities=schema.MODALITIES["oulad"],
        n_outputs=OULAD_TARGETS[data_cfg.target].n_outputs,
        vocab={"assessments.type": len(ASSESSMENT_TYPES) + 1},
        cat_sizes=tuple(len(values) + 1 for values in _oulad_categories(prepared).values()),
        dims={
            "demographics.num": len(OULAD_NUMERIC),
            "clicks.weeks": data_cfg.max_weeks,
            "clicks.types": len(_vocab_list(prepared, "activity_type")),
            "assessments.len": oulad_assessment_slots(prepared),
            "assessments.num": len(ASSESSMENT_FEATURES),
        },
        max_len=0,
        target=data_cfg.target,
    )


def _check_config(prepared: Prepared, data_cfg: DataConfig) -> None:
    if data_cfg.dataset != prepared.dataset:
        raise BadInput(
            f"{prepared.path} holds {prepared.dataset} data but data.dataset is {data_cfg.dataset!r}; "
            f"use a {data_cfg.dataset} folder or --set data.dataset={prepared.dataset}"
        )
    targets = ("correct",) if prepared.dataset == "ednet" else tuple(OULAD_TARGETS)
    if data_cfg.target not in targets:
        raise BadInput(f"data.target {data_cfg.target!r} does not apply to {prepared.dataset}; choose one of {', '.join(targets)}")
    if prepared.dataset == "ednet" and data_cfg.context >= data_cfg.max_len:
        raise BadInput(
            f"data.context ({data_cfg.context}) must be smaller than data.max_len ({data_cfg.max_len}): "
            f"each window needs room for new positions; e.g. --set data.context={data_cfg.max_len // 2}"
        )


# ================================================================ datasets

@dataclass
class Example:
    """One dataset item: numpy arrays (views into the dataset's arrays where possible) + keys."""

    dataset: str
    arrays: dict[str, np.ndarray]
    keys: dict[str, Any]
    n_context: int = 0           # EdNet: leading positions carried over as context (not scored)


_CACHE: OrderedDict[tuple, Dataset] = OrderedDict()
_CACHE_SIZE = 4


def make_dataset(prepared: Prepared, split: str, data_cfg: DataConfig) -> Dataset:
    """The examples of one split: "train" | "valid" | "test" | "all".

    With data_cfg.fold = k, "train" is every train+valid learner whose fold != k and
    "valid" those whose fold == k ("test" is unchanged). Splits are by learner, so no
    learner (EdNet user; OULAD student, across all their registrations) is in two splits.
    """
    _check_config(prepared, data_cfg)
    if split not in SPLITS:
        raise BadInput(f"split {split!r} is unknown; choose one of {', '.join(SPLITS)}")
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(prepared.path.glob("*.parquet")))
    key = (
        str(prepared.path.resolve()), prepared.manifest_hash, stamp, split,
        data_cfg.max_len, data_cfg.context, data_cfg.target, data_cfg.cutoff_day, data_cfg.max_weeks, data_cfg.fold,
        data_cfg.train_fraction if split == "train" else 1.0, data_cfg.train_fraction_seed if split == "train" else 0,
    )
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    dataset = DATASET_BUILDERS[prepared.dataset](prepared, split, data_cfg)
    _CACHE[key] = dataset
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return dataset


def learner_rank(learners: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random number in [0, 1) per learner id (str or int), the same for a
    learner wherever it appears: subsamples "rank < fraction" are nested across fractions."""
    digest = lambda v: hashlib.blake2b(f"{seed}:{v}".encode(), digest_size=8).digest()  # noqa: E731
    return np.array([int.from_bytes(digest(v), "little") / 2.0**64 for v in learners], dtype=np.float64)


def split_mask(frame: pd.DataFrame, split: str, data_cfg: DataConfig, file: Path, dataset: str, learner: str) -> np.ndarray:
    """Rows of a splits frame (columns split, fold, `learner`) in `split`; the train split
    keeps the data_cfg.train_fraction subsample of its learners (learning curves)."""
    mask = _split_mask(frame, split, data_cfg.fold, file, dataset)
    if split == "train" and data_cfg.train_fraction < 1.0:
        mask &= learner_rank(frame[learner].to_numpy(), data_cfg.train_fraction_seed) < data_cfg.train_fraction
        if not mask.any():
            raise BadInput(f"data.train_fraction {data_cfg.train_fraction} leaves no training learner in {file}; use a larger fraction")
    return mask


def _split_mask(frame: pd.DataFrame, split: str, fold: int | None, file: Path, dataset: str) -> np.ndarray:
    """Rows of a splits frame (columns split, fold) that belong to `split`."""
    names = frame["split"].to_numpy(dtype=object)
    bad = ~np.isin(names, ("train", "valid", "test"))
    if bad.any():
        raise BadInput(f"{file} row {int(np.argmax(bad))}: split {names[bad][0]!r} is not train/valid/test; {_fix(dataset)}")
    if split == "all":
        return np.ones(len(frame), dtype=bool)
    if fold is None:
        return names == split
    dev = names != "test"
    folds = frame["fold"].to_numpy()
    known = sorted({int(f) for f in folds[dev].tolist()})
    if fold not in known:
        raise BadInput(f"data.fold {fold} is not a fold of {file} (folds {known}); choose one of them or unset data.fold")
    return {"train": dev & (folds != fold), "valid": dev & (folds == fold), "test": ~dev}[split]


# ---------------------------------------------------------------- EdNet

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
    tags = _read(prepared, "questions.parquet", ["tags"])["tags"]
    longest = pc.max(pc.list_value_length(tags)).as_py() if len(tags) else 0
    return int(min(max(longest or 0, 1), MAX_TAGS))


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


def _ednet_dataset(prepared: Prepared, split: str, data_cfg: DataConfig) -> EdnetWindows:
    splits_file = prepared.file("splits.parquet")
    splits = _read(prepared, "splits.parquet", ["user", "split", "fold"]).to_pandas()
    users = None
    if split != "all":
        users = sorted(splits.loc[split_mask(splits, split, data_cfg, splits_file, "ednet", "user"), "user"].astype(str))
    table = _read(
        prepared, "interactions.parquet",
        [name for name in schema.EDNET_INTERACTIONS.names if name not in ("timestamp", "kt_level")],
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
            raise BadInput(f"{file}: column {column!r} is null (user {names[user_code[row]]}); {_fix('ednet')}")
    same = (user_code[1:] == user_code[:-1]) & (position[1:] == position[:-1])
    if same.any():
        row = int(np.argmax(same)) + 1
        raise BadInput(f"{file}: user {names[user_code[row]]} has position {position[row]} twice; {_fix('ednet')}")

    arrays = _ednet_arrays(prepared, table, user_code, names)
    n = len(position)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user_code[1:] != user_code[:-1]
    new_bundle = new_user.copy()
    new_bundle[1:] |= arrays["bundle"][1:] != arrays["bundle"][:-1]
    user_starts = np.flatnonzero(new_user)
    user_ends = np.append(user_starts[1:], n)
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
                f"{table['position'][row].as_py()}) is outside {low}..{high}; {_fix('ednet')}"
            )
        return values

    arrays = {
        "position": ints("position", np.int32),
        "question": in_range(ints("question", np.int32), "question", _vocab_count(prepared, "question"), low=1),
        "bundle": in_range(ints("bundle", np.int32), "bundle", _vocab_count(prepared, "bundle"), low=1),
        "part": in_range(ints("part", np.int8), "part", 7),
        "tags": in_range(_list_matrix(table["tags"], width, np.int16), "tags", _vocab_count(prepared, "tag")),
        "correct": in_range(ints("correct", np.int8), "correct", 1),
        "platform": in_range(ints("platform", np.int8), "platform", 2),
        "source": in_range(ints("source", np.int8), "source", _vocab_count(prepared, "source")),
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
    catalogue = _read(prepared, "lectures.parquet", ["lecture", "part", "tags"])
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


def _collate_ednet(examples: list[Example]) -> Batch:
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
    return Batch(
        inputs={
            "item": {"question": pad("question").long(), "bundle": bundle},
            "content": {
                "part": pad("part").long(),
                "tags": pad("tags").long(),                           # (B, T, K)
                "lecture_part": pad("lecture_part").long(),
                "lecture_tags": pad("lecture_tags").long(),           # (B, T, K)
            },
            "behavior": {
                "num": pad("num"),                                    # (B, T, F)
                "num_present": num_present,
                "platform": pad("platform").long(),
                "source": pad("source").long(),
            },
        },
        present={"item": valid.clone(), "content": valid.clone(), "behavior": valid & num_present.any(dim=-1)},
        target=correct.float(),
        mask=mask,
        valid=valid,
        keys={"user": [ex.keys["user"] for ex in examples], "position": pad("position", fill=-1).long()},
        context={"response": correct, "bundle_group": bundle_group},
    )


# ---------------------------------------------------------------- OULAD

@dataclass(frozen=True)
class OuladTarget:
    """How final_result (as an index into schema.OULAD_RESULTS) becomes the label."""

    encode: Callable[[np.ndarray], np.ndarray]
    dtype: type
    excluded: tuple[str, ...] = ()     # final results not in this target's population
    n_outputs: int = 1


_RESULT = {name: i for i, name in enumerate(schema.OULAD_RESULTS)}
OULAD_TARGETS: dict[str, OuladTarget] = {
    "at_risk": OuladTarget(lambda r: np.isin(r, (_RESULT["Fail"], _RESULT["Withdrawn"])), np.float32),
    "pass_fail": OuladTarget(lambda r: r == _RESULT["Fail"], np.float32, excluded=("Withdrawn",)),
    "withdrawn": OuladTarget(lambda r: r == _RESULT["Withdrawn"], np.float32),
    "result4": OuladTarget(lambda r: r, np.int64, n_outputs=len(schema.OULAD_RESULTS)),
}

OULAD_KEYS = ["code_module", "code_presentation", "id_student"]
OULAD_CATEGORICAL = ("gender", "region", "highest_education", "imd_band", "age_band", "disability", "code_module")
# demographics.num: column -> scale (value / scale; absent where null)
OULAD_NUMERIC: dict[str, float] = {"num_of_prev_attempts": 1.0, "studied_credits": 60.0, "date_registration": 100.0}
ASSESSMENT_TYPES = {"TMA": 1, "CMA": 2, "Exam": 3}
ASSESSMENT_FEATURES = ("weight", "due_day", "days_late", "score", "is_banked", "missing_submission")
MAX_ASSESSMENTS = 16
WEEK_ORIGIN = -28                      # clicks.weeks week 0 starts on day -28


def _oulad_categories(prepared: Prepared) -> dict[str, list[str]]:
    """demographics.cat columns in order -> their vocab; the 8th is the presentation season (B/J)."""
    categories = {column: _vocab_list(prepared, column) for column in OULAD_CATEGORICAL}
    categories["season"] = sorted({p[-1:] for p in _vocab_list(prepared, "code_presentation")})
    return categories


def _codes(values: Any, vocab: list[str]) -> np.ndarray:
    """1..len(vocab) for values in vocab; 0 for null or unknown."""
    return pd.Categorical(values, categories=vocab).codes.astype(np.int64) + 1


def _presentation_id(prepared: Prepared, module: Any, presentation: Any) -> np.ndarray:
    """One int per (code_module, code_presentation) from the manifest vocab; -1 if unknown."""
    modules, presentations = _vocab_list(prepared, "code_module"), _vocab_list(prepared, "code_presentation")
    m, p = _codes(module, modules) - 1, _codes(presentation, presentations) - 1
    return np.where((m >= 0) & (p >= 0), m * len(presentations) + p, -1)


def _registration_key(presentation_id: np.ndarray, id_student: np.ndarray) -> np.ndarray:
    return np.where(presentation_id >= 0, (presentation_id.astype(np.int64) << 32) | id_student.astype(np.int64), -1)


def _lookup(keys: np.ndarray, table_keys: np.ndarray) -> np.ndarray:
    """Index of each key in `table_keys` (unique, no -1), or -1."""
    return pd.Index(table_keys).get_indexer(keys).astype(np.int64)


def oulad_assessment_slots(prepared: Prepared) -> int:
    """S: the most assessments any presentation has, capped at MAX_ASSESSMENTS (at least 1)."""
    table = _read(prepared, "assessments.parquet", ["code_module", "code_presentation", "id_assessment"])
    frame = table.to_pandas().drop_duplicates()
    most = int(frame.groupby(["code_module", "code_presentation"]).size().max()) if len(frame) else 0
    return int(min(max(most, 1), MAX_ASSESSMENTS))


def oulad_cutoffs(registrations: pd.DataFrame, cutoff_day: int | None) -> np.ndarray:
    """Per registration: the cutoff day (features use rows dated strictly before it)."""
    if cutoff_day is not None:
        return np.full(len(registrations), cutoff_day, dtype=np.float64)
    return registrations["module_presentation_length"].to_numpy(dtype=np.float64)


def oulad_population(registrations: pd.DataFrame, cutoffs: np.ndarray, cutoff_day: int | None, target: str) -> np.ndarray:
    """Which registrations are predicted at this cutoff.

    With a cutoff day, students who unregistered before it are out: at that day the
    platform knows they left, so there is nothing to predict. With no cutoff (end of the
    presentation) everyone stays, so the task includes predicting withdrawal.
    date_unregistration is used only here, never as a feature. Targets may exclude
    results (pass_fail drops Withdrawn).
    """
    keep = ~registrations["final_result"].isin(OULAD_TARGETS[target].excluded).to_numpy()
    if cutoff_day is not None:
        unregistered = registrations["date_unregistration"].to_numpy(dtype=np.float64)
        keep &= ~(unregistered < cutoffs)          # NaN (still registered) compares False
    return keep


class OuladRegistrations(Dataset):
    """One item per registration; weekly clicks are stored sparsely and made dense per item."""

    def __init__(self, arrays: dict[str, np.ndarray], keys: dict[str, np.ndarray], click_offsets: np.ndarray,
                 click_cells: np.ndarray, click_values: np.ndarray, weeks: int, types: int):
        self.arrays = arrays              # per registration: (R, ...) each
        self.keys = keys                  # code_module, code_presentation, id_student: (R,) each
        self.click_offsets = click_offsets  # (R + 1,) into click_cells / click_values
        self.click_cells = click_cells    # week * types + type
        self.click_values = click_values  # log1p(clicks)
        self.weeks, self.types = weeks, types

    def __len__(self) -> int:
        return len(self.keys["id_student"])

    def __getitem__(self, i: int) -> Example:
        lo, hi = self.click_offsets[i], self.click_offsets[i + 1]
        weeks = np.zeros(self.weeks * self.types, dtype=np.float32)
        weeks[self.click_cells[lo:hi]] = self.click_values[lo:hi]
        arrays = {name: values[i] for name, values in self.arrays.items()}
        arrays["weeks"] = weeks.reshape(self.weeks, self.types)
        return Example(dataset="oulad", arrays=arrays, keys={name: values[i] for name, values in self.keys.items()})


def _oulad_dataset(prepared: Prepared, split: str, data_cfg: DataConfig) -> OuladRegistrations:
    """Registrations of a split, features cut at the cutoff.

    Only rows dated strictly before a registration's cutoff reach a feature: clicks with
    day < cutoff; assessments with due_day < cutoff (a missing due day, e.g. an exam, is
    the presentation's last day, as the OULAD documentation says), and of those a
    submission counts only if submitted_day < cutoff; otherwise it is "not (yet)
    submitted" and its score, lateness and banking stay hidden. present["clicks"] means
    at least one click in the W weeks before the cutoff.
    """
    regs_file = prepared.file("registrations.parquet")
    regs = _read(prepared, "registrations.parquet", schema.OULAD_REGISTRATIONS.names).to_pandas()
    splits = _read(prepared, "splits.parquet", schema.OULAD_SPLITS.names).to_pandas()
    for frame, file in ((regs, regs_file), (splits, prepared.file("splits.parquet"))):
        twice = frame.duplicated(OULAD_KEYS)
        if twice.any():
            row = frame[twice].iloc[0]
            raise BadInput(f"{file}: student {row['id_student']} is registered twice on {row['code_module']} {row['code_presentation']}; {_fix('oulad')}")
    regs = regs.merge(splits, on=OULAD_KEYS, how="left", validate="one_to_one")
    if split != "all":
        regs = regs[regs["split"].notna()]
        regs = regs[split_mask(regs, split, data_cfg, prepared.file("splits.parquet"), "oulad", "id_student")]
    unknown = ~regs["final_result"].isin(schema.OULAD_RESULTS)
    if unknown.any():
        row = regs[unknown].iloc[0]
        raise BadInput(
            f"{regs_file}: final_result {row['final_result']!r} (student {row['id_student']}, {row['code_module']} "
            f"{row['code_presentation']}) is not one of {', '.join(schema.OULAD_RESULTS)}; {_fix('oulad')}"
        )
    cutoffs = oulad_cutoffs(regs, data_cfg.cutoff_day)
    if np.isnan(cutoffs).any():
        raise BadInput(f"{regs_file}: module_presentation_length is missing, so the end-of-presentation cutoff is unknown; set data.cutoff_day or {_fix('oulad')}")
    keep = oulad_population(regs, cutoffs, data_cfg.cutoff_day, data_cfg.target)
    regs, cutoffs = regs[keep], cutoffs[keep]
    order = np.lexsort((regs["id_student"].to_numpy(), regs["code_presentation"].to_numpy(dtype=str), regs["code_module"].to_numpy(dtype=str)))
    regs, cutoffs = regs.iloc[order].reset_index(drop=True), cutoffs[order]
    reg_keys = _registration_key(_presentation_id(prepared, regs["code_module"], regs["code_presentation"]), regs["id_student"].to_numpy())
    if (reg_keys < 0).any():
        row = regs[reg_keys < 0].iloc[0]
        raise BadInput(f"{regs_file}: {row['code_module']} {row['code_presentation']} is not in the manifest vocab; {_fix('oulad')}")

    result = regs["final_result"].map(_RESULT).to_numpy(dtype=np.int64)
    target = OULAD_TARGETS[data_cfg.target]
    arrays = {"target": target.encode(result).astype(target.dtype)}
    arrays.update(_oulad_demographics(prepared, regs))
    weeks, types = data_cfg.max_weeks, len(_vocab_list(prepared, "activity_type"))
    arrays["week_mask"] = (7 * np.arange(weeks)[None, :] + WEEK_ORIGIN) < cutoffs[:, None]      # (R, W)
    offsets, cells, values = _oulad_clicks(prepared, reg_keys, cutoffs, weeks)
    arrays["clicks_present"] = np.diff(offsets) > 0
    arrays.update(_oulad_assessments(prepared, regs, reg_keys, cutoffs))
    keys = {
        "code_module": regs["code_module"].to_numpy(dtype=object),
        "code_presentation": regs["code_presentation"].to_numpy(dtype=object),
        "id_student": regs["id_student"].to_numpy(dtype=np.int64),
    }
    return OuladRegistrations(arrays, keys, offsets, cells, values, weeks, types)


def _oulad_demographics(prepared: Prepared, regs: pd.DataFrame) -> dict[str, np.ndarray]:
    columns = []
    for column, vocab in _oulad_categories(prepared).items():
        values = regs["code_presentation"].str[-1:] if column == "season" else regs[column]
        columns.append(_codes(values, vocab))
    raw = np.stack([regs[column].to_numpy(dtype=np.float64) / scale for column, scale in OULAD_NUMERIC.items()], axis=1)
    present = ~np.isnan(raw)
    return {
        "cat": np.stack(columns, axis=1),                                   # (R, C)
        "num": np.where(present, raw, 0.0).astype(np.float32),              # (R, N)
        "num_present": present,
    }


def _oulad_clicks(prepared: Prepared, reg_keys: np.ndarray, cutoffs: np.ndarray, weeks: int):
    """Sparse (R, W, A) weekly log1p click sums: offsets (R+1,), cells week*A+type, values."""
    activity = _vocab_list(prepared, "activity_type")
    if not len(reg_keys):
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    # a first cut while reading: days inside the W weeks and before the latest cutoff, students of the population
    last_day = min(float(cutoffs.max()), 7 * weeks + WEEK_ORIGIN)
    students = pa.array(np.unique(reg_keys & 0xFFFFFFFF), pa.int64())
    table = _read(prepared, "clicks.parquet", schema.OULAD_CLICKS.names,
                  read_dictionary=["code_module", "code_presentation", "activity_type"],
                  filters=(pc.field("day") >= WEEK_ORIGIN) & (pc.field("day") < last_day) & pc.field("id_student").isin(students))
    frame = table.to_pandas()
    reg = _lookup(_registration_key(_presentation_id(prepared, frame["code_module"], frame["code_presentation"]),
                                     frame["id_student"].to_numpy()), reg_keys)
    day = frame["day"].to_numpy(dtype=np.float64)
    cutoff_of_row = np.full(len(frame), -np.inf)
    cutoff_of_row[reg >= 0] = cutoffs[reg[reg >= 0]]
    rows = day < cutoff_of_row                       # only clicks of the population, strictly before the cutoff
    kind = _codes(frame["activity_type"], activity) - 1
    if (kind[rows] < 0).any():
        bad = frame["activity_type"][rows & (kind < 0)].iloc[0]
        raise BadInput(f"{prepared.file('clicks.parquet')}: activity_type {bad!r} is not in the manifest vocab; {_fix('oulad')}")
    week = np.floor_divide(day - WEEK_ORIGIN, 7)
    rows &= (week >= 0) & (week < weeks)
    clicks = np.clip(frame["clicks"].to_numpy(dtype=np.float64), 0, None)
    cell_of_row = (reg[rows] * weeks + week[rows].astype(np.int64)) * len(activity) + kind[rows]
    cells, inverse = np.unique(cell_of_row, return_inverse=True)            # sorted by registration, week, type
    sums = np.bincount(inverse, weights=clicks[rows], minlength=len(cells))
    cells, sums = cells[sums > 0], sums[sums > 0]
    per_reg = weeks * len(activity)
    offsets = np.searchsorted(cells // per_reg, np.arange(len(reg_keys) + 1))
    return offsets, (cells % per_reg).astype(np.int64), np.log1p(sums).astype(np.float32)


def _oulad_assessments(prepared: Prepared, regs: pd.DataFrame, reg_keys: np.ndarray, cutoffs: np.ndarray) -> dict[str, np.ndarray]:
    """Per registration, the (at most S, latest kept) assessments due before its cutoff."""
    file = prepared.file("assessments.parquet")
    records = _read(prepared, "assessments.parquet", schema.OULAD_ASSESSMENTS.names).to_pandas()
    records["presentation"] = _presentation_id(prepared, records["code_module"], records["code_presentation"])
    records["reg"] = _lookup(_registration_key(records["presentation"].to_numpy(), records["id_student"].to_numpy()), reg_keys)
    unknown = ~records["assessment_type"].isin(list(ASSESSMENT_TYPES))
    if unknown.any():
        raise BadInput(f"{file}: assessment_type {records.loc[unknown, 'assessment_type'].iloc[0]!r} is not TMA, CMA or Exam; {_fix('oulad')}")

    # the presentation's catalogue: every assessment seen for it, with its type, weight and due day
    catalogue = records.drop_duplicates(["presentation", "id_assessment"])[
        ["presentation", "id_assessment", "assessment_type", "weight", "due_day"]]
    every_reg = _read(prepared, "registrations.parquet", ["code_module", "code_presentation", "module_presentation_length"]).to_pandas()
    every_reg["presentation"] = _presentation_id(prepared, every_reg["code_module"], every_reg["code_presentation"])
    length = every_reg.groupby("presentation")["module_presentation_length"].max()
    catalogue = catalogue.assign(due_day=catalogue["due_day"].fillna(catalogue["presentation"].map(length)))

    # one candidate per registration x assessment due before its cutoff
    population = pd.DataFrame({"reg": np.arange(len(regs)), "presentation": _presentation_id(
        prepared, regs["code_module"], regs["code_presentation"]), "cutoff": cutoffs})
    due = population.merge(catalogue, on="presentation")
    due = due[due["due_day"] < due["cutoff"]]
    submitted = records[(records["reg"] >= 0) & records["submitted_day"].notna()].drop_duplicates(["reg", "id_assessment"])
    due = due.merge(submitted[["reg", "id_assessment", "submitted_day", "is_banked", "score"]], on=["reg", "id_assessment"], how="left")
    counted = (due["submitted_day"] < due["cutoff"]).to_numpy()    # NaN compares False: not (yet) submitted

    # keep the latest S per registration, in due order
    slots = oulad_assessment_slots(prepared)
    due = due.assign(counted=counted).sort_values(["reg", "due_day", "id_assessment"], kind="stable")
    rank = due.groupby("reg").cumcount().to_numpy()
    count = due.groupby("reg")["reg"].transform("size").to_numpy()
    slot = rank - np.maximum(count - slots, 0)
    due = due[slot >= 0]
    slot, reg, counted = slot[slot >= 0], due["reg"].to_numpy(), due["counted"].to_numpy()

    due_day = due["due_day"].to_numpy(dtype=np.float64)
    late = np.clip(due["submitted_day"].to_numpy(dtype=np.float64) - due_day, -30, 90) / 30
    features = np.stack([
        due["weight"].to_numpy(dtype=np.float64) / 100,
        due_day / 365,
        np.where(counted, late, 0.0),
        np.where(counted, np.nan_to_num(due["score"].to_numpy(dtype=np.float64) / 100), 0.0),
        np.where(counted, np.nan_to_num(due["is_banked"].to_numpy(dtype=np.float64)), 0.0),
        (~counted).astype(np.float64),
    ], axis=1)
    n = len(regs)
    kind = np.zeros((n, slots), dtype=np.int64)
    num = np.zeros((n, slots, len(ASSESSMENT_FEATURES)), dtype=np.float32)
    seq_mask = np.zeros((n, slots), dtype=bool)
    kind[reg, slot] = due["assessment_type"].map(ASSESSMENT_TYPES).to_numpy()
    num[reg, slot] = np.nan_to_num(features)
    seq_mask[reg, slot] = True
    return {"assessment_type": kind, "assessment_num": num, "seq_mask": seq_mask}


def _collate_oulad(examples: list[Example]) -> Batch:
    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([ex.arrays[name] for ex in examples]))

    seq_mask = stack("seq_mask")                                      # (B, S)
    valid = torch.ones(len(examples), dtype=torch.bool)
    return Batch(
        inputs={
            "demographics": {"cat": stack("cat").long(), "num": stack("num"), "num_present": stack("num_present")},
            "clicks": {"weeks": stack("weeks"), "week_mask": stack("week_mask")},          # (B, W, A), (B, W)
            "assessments": {"type": stack("assessment_type").long(), "num": stack("assessment_num"), "seq_mask": seq_mask},
        },
        present={"demographics": valid.clone(), "clicks": stack("clicks_present"), "assessments": seq_mask.any(dim=1)},
        target=stack("target"),
        mask=valid.clone(),
        valid=valid,
        keys={
            "code_module": [str(ex.keys["code_module"]) for ex in examples],
            "code_presentation": [str(ex.keys["code_presentation"]) for ex in examples],
            "id_student": torch.tensor([int(ex.keys["id_student"]) for ex in examples], dtype=torch.long),
        },
    )


# ================================================================ batches and loaders

SPEC_BUILDERS: dict[str, Callable[[Prepared, DataConfig], DataSpec]] = {"ednet": _ednet_spec, "oulad": _oulad_spec}
DATASET_BUILDERS: dict[str, Callable[[Prepared, str, DataConfig], Dataset]] = {"ednet": _ednet_dataset, "oulad": _oulad_dataset}
COLLATORS: dict[str, Callable[[list[Example]], Batch]] = {"ednet": _collate_ednet, "oulad": _collate_oulad}


def collate(examples: list[Example]) -> Batch:
    """Examples of one dataset -> a padded `Batch` (EdNet: T = the longest window in the batch)."""
    if not examples:
        raise ValueError("collate needs at least one example")
    return COLLATORS[examples[0].dataset](examples)


class StridedShard(Sampler[int]):
    """Rank r of w gets indices r, r+w, r+2w, ...: disjoint shards that together cover every
    example once (no padding duplicates), for evaluation; sizes differ by at most one."""

    def __init__(self, n: int, *, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def make_sampler(dataset: Dataset, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, epoch: int = 0) -> Sampler:
    """The order of one epoch on one rank, fixed by (seed, epoch).

    Shuffled (training): DistributedSampler seeded with seed + epoch, also for a single
    process; with world_size > 1 it drops the < world_size leftover examples, so shards
    are disjoint and every rank runs the same number of steps (the shuffle changes which
    are left over). Unshuffled (evaluation): StridedShard, disjoint and complete.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if not shuffle:
        return StridedShard(len(dataset), rank=rank, world_size=world_size)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=world_size > 1)
    sampler.set_epoch(epoch)
    return sampler


def make_loader(
    prepared: Prepared,
    split: str,
    data_cfg: DataConfig,
    *,
    shuffle: bool,
    seed: int,
    batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
) -> DataLoader:
    dataset = make_dataset(prepared, split, data_cfg)
    return DataLoader(
        dataset,
        batch_size=batch_size or data_cfg.batch_size,
        sampler=make_sampler(dataset, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, epoch=epoch),
        collate_fn=collate,
        num_workers=data_cfg.num_workers,
    )
