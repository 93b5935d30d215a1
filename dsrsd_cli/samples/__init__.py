"""The built-in samples: raw files in the real formats, written by documented simulators.

`prepare` without `--raw` calls `write_sample`, then parses the result through the
same code path as real data. The simulators are ednet.py (its story: ednet_model.py) and
oulad.py (its story: oulad_model.py); each writes ground_truth.parquet (the true
probability of every EdNet answer / OULAD outcome) beside the raw files, so the
Bayes-optimal AUC is known. They are not data preparation: nothing in dsrsd_cli.data
imports them except the `prepare` entry point that writes a sample when asked to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dsrsd_cli.errors import BadInput


def _ednet(folder: Path, *, size: int | None, seed: int, strengths: dict[str, float] | None) -> dict:
    from dsrsd_cli.samples.ednet import write_ednet_sample

    kwargs = {} if size is None else {"n_learners": size}
    return write_ednet_sample(folder, seed=seed, strengths=strengths, **kwargs)


def _oulad(folder: Path, *, size: int | None, seed: int, strengths: dict[str, float] | None) -> dict:
    from dsrsd_cli.samples.oulad import write_oulad_sample

    kwargs = {} if size is None else {"n_registrations": size}
    return write_oulad_sample(folder, seed=seed, strengths=strengths, **kwargs)


SAMPLE_WRITERS: dict[str, Callable[..., dict]] = {"ednet": _ednet, "oulad": _oulad}


def write_sample(
    dataset: str, folder: Path, *, size: int | None = None, seed: int = 0, strengths: dict[str, float] | None = None
) -> dict:
    """Write the raw sample of `dataset` into `folder` (created); returns the generator's params."""
    if dataset not in SAMPLE_WRITERS:
        raise BadInput(f"unknown dataset {dataset!r}; choose one of {', '.join(SAMPLE_WRITERS)}")
    folder.mkdir(parents=True, exist_ok=True)
    return SAMPLE_WRITERS[dataset](folder, size=size, seed=seed, strengths=strengths)
