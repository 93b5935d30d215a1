"""A prepared data folder (docs/data.md): the handle, its checks, and what every dataset built
from it shares.

    prepared = open_prepared("data/ednet")     # checks manifest + every file's columns
    table = read_table(prepared, "splits.parquet", ["user", "split", "fold"])

`open_prepared` refuses a folder whose manifest (dataset, schema version, vocab) or any
Parquet file's columns do not match what this dsrsd reads (dsrsd_cli.data.schema), with
the `dsrsd prepare` command that fixes it. Every other module reads the folder through
`Prepared`, `read_table` and the vocab helpers here.

Splits are by learner (EdNet user; OULAD student, across all their registrations), so no
learner is in two splits: `split_mask` picks a split's rows of splits.parquet, with
data.fold turning train+valid into folds and data.train_fraction subsampling the
training learners (`learner_rank`, nested across fractions) for learning curves.
`Example` is one item of any dataset built here (ednet_windows, oulad_cutoff).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data import schema
from dsrsd_cli.errors import BadInput

SPLITS = ("train", "valid", "test", "all")

# Manifest vocab keys each dataset's loader needs (prepare writes them).
REQUIRED_VOCAB: dict[str, tuple[str, ...]] = {
    "ednet": ("question", "bundle", "tag", "lecture", "source", "part"),
    "oulad": (
        "activity_type", "gender", "region", "highest_education", "imd_band", "age_band",
        "disability", "code_module", "code_presentation",
    ),
}


def rerun_prepare(dataset: str) -> str:
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
            f"{manifest_path}: schema_version {version!r}, but this dsrsd reads version {schema.SCHEMA_VERSION}; {rerun_prepare(dataset)}"
        )
    vocab = manifest.get("vocab")
    missing = [k for k in REQUIRED_VOCAB[dataset] if not isinstance(vocab, dict) or k not in vocab]
    if missing:
        raise BadInput(f"{manifest_path}: vocab lacks {', '.join(missing)}; {rerun_prepare(dataset)}")
    for name, expected in schema.PREPARED_FILES[dataset].items():
        _check_parquet(path / name, expected, dataset)
    return Prepared(path=path, dataset=dataset, manifest=manifest, manifest_hash=hashlib.sha256(raw).hexdigest())


def _check_parquet(file: Path, expected: pa.Schema, dataset: str) -> None:
    if not file.is_file():
        raise BadInput(f"{file}: missing from the prepared folder; {rerun_prepare(dataset)}")
    try:
        found = pq.read_schema(file)
    except (pa.ArrowException, OSError) as e:
        raise BadInput(f"{file}: not a readable Parquet file ({e}); {rerun_prepare(dataset)}") from None
    for want in expected:
        index = found.get_field_index(want.name)
        if index < 0:
            raise BadInput(f"{file}: column {want.name!r} is missing; {rerun_prepare(dataset)}")
        got = found.field(index).type
        if not got.equals(want.type):
            raise BadInput(f"{file}: column {want.name!r} has type {got}, expected {want.type}; {rerun_prepare(dataset)}")


def read_table(prepared: Prepared, name: str, columns: list[str], **kwargs) -> pa.Table:
    return pq.read_table(prepared.file(name), columns=columns, **kwargs)


def vocab_list(prepared: Prepared, key: str) -> list[str]:
    values = prepared.vocab(key)
    if not isinstance(values, list) or len(set(values)) != len(values):
        raise BadInput(f"{prepared.file('manifest.json')}: vocab.{key} must be a list of distinct names; {rerun_prepare(prepared.dataset)}")
    return [str(v) for v in values]


def vocab_count(prepared: Prepared, key: str) -> int:
    """A vocab entry as a count: prepare writes either the count or the list of names."""
    value = prepared.vocab(key)
    if isinstance(value, list):
        return len(value)
    if isinstance(value, int) and value >= 0:
        return value
    raise BadInput(f"{prepared.file('manifest.json')}: vocab.{key} must be a count or a list; {rerun_prepare(prepared.dataset)}")


# ================================================================ dataset items and learner-level splits

@dataclass
class Example:
    """One dataset item: numpy arrays (views into the dataset's arrays where possible) + keys."""

    dataset: str
    arrays: dict[str, np.ndarray]
    keys: dict[str, Any]
    n_context: int = 0           # EdNet: leading positions carried over as context (not scored)


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
        raise BadInput(f"{file} row {int(np.argmax(bad))}: split {names[bad][0]!r} is not train/valid/test; {rerun_prepare(dataset)}")
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

