"""`dsrsd prepare`: pick the dataset's parser, generating the built-in sample when no raw data is given.

Prints nothing: the caller gets the manifest (what was read, dropped and written) and may
follow the parsing through `progress(done, total)`. The command line's progress bar and
tables are in engine/prepare.py.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Callable

from dsrsd_cli.errors import BadInput
from dsrsd_cli.samples import write_sample

ProgressCallback = Callable[[int, int], None]  # (done, total): EdNet learners parsed, OULAD studentVle bytes read


def _preparer(module: str, function: str, *, unused: tuple[str, ...]) -> Callable[..., dict]:
    """`function` of `module`, imported when first used, called without the options it has no use
    for (prepare_dataset validates every option before; e.g. --split-by is OULAD's only)."""
    def prepare(raw: Path, out: Path, **options) -> dict:
        for name in unused:
            options.pop(name)
        return getattr(importlib.import_module(module), function)(raw, out, **options)
    return prepare


# dataset -> its preparer. riiid and custom write the EdNet schema in one process
# (data/riiid.py: Kaggle's Riiid files; data/custom.py: any answer log + a TOML mapping).
PREPARERS: dict[str, Callable[..., dict]] = {
    "ednet": _preparer("dsrsd_cli.data.ednet", "prepare_ednet", unused=("split_by",)),
    "oulad": _preparer("dsrsd_cli.data.oulad", "prepare_oulad", unused=("max_users", "workers")),
    "riiid": _preparer("dsrsd_cli.data.riiid", "prepare_riiid", unused=("split_by", "workers")),
    "custom": _preparer("dsrsd_cli.data.custom", "prepare_custom", unused=("split_by", "workers")),
}


def parse_strengths(items: list[str]) -> dict[str, float]:
    """["behavior=3", "item=0.2"] -> {"behavior": 3.0, "item": 0.2} (the generator checks the names)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise BadInput(f"--sample-strength {item!r}: expected MODALITY=NUMBER, e.g. behavior=3.0")
    return out


def output_dir(dataset: str, out: Path | None) -> Path:
    """The prepared folder: `out`, or data/<dataset> by default."""
    return Path(out) if out is not None else Path("data") / dataset


def sample_raw_dir(out: Path) -> Path:
    """Where the built-in sample's raw files go: beside the prepared folder."""
    return out.parent / f"{out.name}_raw_sample"


def prepare_dataset(
    *,
    dataset: str,
    raw: Path | None,
    out: Path | None,
    max_users: int | None = None,
    seed: int = 0,
    workers: int = 2,
    force: bool = False,
    strict: bool = False,
    sample_size: int | None = None,
    split_by: str = "learner",
    strengths: dict[str, float] | list[str] | None = None,
    progress: ProgressCallback | None = None,
    on_sample: Callable[[Path], None] | None = None,
    mapping: str | Path | None = None,
) -> dict:
    """Prepare `dataset` from `raw` (or from the built-in sample written beside `out` when
    `raw` is None) into `out`; returns the manifest. `on_sample(folder)` is called just
    before the sample is written there; `progress(done, total)` while the raw files are
    parsed (done == total: that stage is over)."""
    if dataset not in PREPARERS:
        raise BadInput(f"--dataset {dataset!r} is unknown; choose one of: {', '.join(PREPARERS)}")
    if split_by not in ("learner", "presentation") or (split_by == "presentation" and dataset != "oulad"):
        raise BadInput(f"--split-by {split_by!r} is not valid for {dataset}; use learner (or presentation for oulad)")
    if mapping is not None and dataset != "custom":
        raise BadInput(f"--mapping only applies to --dataset custom, not {dataset}")
    out = output_dir(dataset, out)
    if out.exists() and not force:
        raise BadInput(f"{out}: output folder already exists; pass --force to replace it or choose another --out")

    if isinstance(strengths, list):
        strengths = parse_strengths(strengths) if strengths else None
    extra: dict = {}
    if raw is None and dataset == "riiid":
        raise BadInput("--dataset riiid has no built-in sample; pass --raw with the Kaggle Riiid files "
                       "(train.csv, questions.csv, lectures.csv: a folder or the competition .zip)")
    if raw is None and dataset == "custom":
        raise BadInput("--dataset custom has no built-in sample; pass --raw with your answer log (.csv/.parquet or a "
                       "folder of them) and --mapping (docs/data.md#bring-your-own-logs)")
    if raw is None:
        raw = sample_raw_dir(out)
        if on_sample:
            on_sample(raw)
        if raw.exists():
            shutil.rmtree(raw)
        params = write_sample(dataset, raw, size=sample_size, seed=seed, strengths=strengths)
        # Absolute: the manifest is read from other working directories (benchmarks/quality.py's oracle).
        extra["sample"] = {"raw": str(raw.resolve()), "ground_truth": str((raw / "ground_truth.parquet").resolve()), "params": params}
    elif sample_size is not None or strengths:
        raise BadInput("--sample-size and --sample-strength only apply to the built-in sample; drop them or drop --raw")

    more = {"mapping": mapping} if dataset == "custom" else {}
    return PREPARERS[dataset](
        Path(raw), out, max_users=max_users, seed=seed, workers=workers, force=force, strict=strict,
        split_by=split_by, progress=progress, extra_manifest=extra, **more,
    )
