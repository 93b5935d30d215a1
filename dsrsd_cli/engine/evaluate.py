"""`dsrsd evaluate`: metrics of a trained run, never retraining it.

On one split (test by default), with the run's best weights:
  metrics      the full model (engine/metrics.py);
  masked       with the `--mask` modalities absent together (Batch.without);
  cutoffs      OULAD: the same model on the dataset rebuilt at each `--cutoff-day`;
  robustness   per modality: AUC with it absent, and AUC under noise of growing level
               (Gaussian noise of std = level on its float inputs; token dropout: each id
               replaced by 0, the padding id, with probability = level on its integer
               inputs), with the area under AUC-vs-level (trapezoid over levels 0..1,
               divided by the level range). Noise is seeded per (modality, level).
Files: RUN_DIR/eval/<split>.json, predictions_<split>.parquet, robustness.png.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data.loader import make_loader, make_spec
from dsrsd_cli.engine.metrics import area_under_curve, compute_metrics
from dsrsd_cli.engine.runs import LoadedRun, check_compatible, class_names, frame_probs, load_run, predict_batches, torch_threads
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_write_bytes, to_jsonable, write_json
from dsrsd_cli.report import metrics_table, plot_robustness, print_json, robustness_table
from dsrsd_cli.types import Batch

NOISE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
SPLITS = ("train", "valid", "test")


def evaluate_from_cli(
    *, run_dir: Path, split: str, masks: list[str], cutoff_days: list[int], robustness: bool,
    data: Path | None, json_out: bool, console: Console,
) -> None:
    result = evaluate_run(run_dir, split=split, masks=masks, cutoff_days=cutoff_days, robustness=robustness, data=data, console=console)
    rows = {"full": result["metrics"]}
    if "masked" in result:
        rows[f"without {', '.join(result['masked']['modalities'])}"] = result["masked"]["metrics"]
    for entry in result.get("cutoffs", []):
        rows[f"cutoff day {entry['cutoff_day']}"] = entry["metrics"]
    console.print(metrics_table(f"{run_dir} on {split} ({result['model']})", rows))
    if "robustness" in result:
        console.print(robustness_table(result["robustness"]))
    console.print(f"wrote {Path(run_dir) / 'eval'}/", highlight=False)
    if json_out:
        print_json(result)


def evaluate_run(
    run_dir: Path,
    *,
    split: str = "test",
    masks=(),
    cutoff_days=(),
    robustness: bool = True,
    data: Path | None = None,
    device: str = "auto",
    console: Console | None = None,
) -> dict[str, Any]:
    """Evaluate a run folder; writes RUN_DIR/eval/ and returns what it wrote to <split>.json."""
    if split not in SPLITS:
        raise BadInput(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    run = load_run(run_dir, device=device, data=data)
    with torch_threads(run.cfg.train.threads):
        return _evaluate(run, split=split, masks=masks, cutoff_days=cutoff_days, robustness=robustness, console=console)


def _evaluate(run: LoadedRun, *, split, masks, cutoff_days, robustness, console) -> dict[str, Any]:
    spec = run.spec
    masks = list(dict.fromkeys(masks))
    for m in masks:
        if m not in spec.modalities:
            raise BadInput(f"--mask {m!r}: not a modality of {spec.dataset}; choose from {', '.join(spec.modalities)}")
    if cutoff_days and spec.dataset != "oulad":
        raise BadInput("--cutoff-day applies to OULAD runs only (EdNet predicts every step; there is no cutoff)")
    out_dir = run.run_dir / "eval"
    if out_dir.is_symlink():
        raise BadInput(f"{out_dir}: is a symbolic link; refusing to write through it (remove it)")
    console = console or Console(stderr=True, quiet=True)

    loader = _loader(run, split, run.cfg.data)
    frame = _predict(run, loader)
    if frame.empty:
        raise BadInput(f"{run.prepared.path}: the {split} split has no rows to evaluate")
    metrics = _metrics(frame)
    result: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "model": run.cfg.model.name,
        "split": split,
        "data": {"path": str(run.prepared.path), "same_as_training": run.same_data},
        "metrics": metrics,
    }
    if masks:
        masked = _metrics(_predict(run, loader, transform=lambda b: b.without(*masks)))
        result["masked"] = {"modalities": masks, "metrics": masked, "auc_drop": metrics.get("auc", float("nan")) - masked.get("auc", float("nan"))}
    if cutoff_days:
        result["cutoffs"] = []
        for day in cutoff_days:
            data_cfg = run.cfg.data.model_copy(update={"cutoff_day": int(day)})
            _check_spec(run, data_cfg)
            day_frame = _predict(run, _loader(run, split, data_cfg))
            result["cutoffs"].append({"cutoff_day": int(day), "metrics": _metrics(day_frame) if len(day_frame) else {"n": 0}})
    if robustness:
        result["robustness"] = robustness_sweep(run, loader, base_auc=metrics.get("auc", float("nan")), console=console)

    result = to_jsonable(result)
    write_json(out_dir / f"{split}.json", result)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(out_dir / f"predictions_{split}.parquet", buffer.getvalue())
    if robustness:
        plot_robustness(result["robustness"], out_dir / "robustness.png", title=f"{run.cfg.model.name} on {split}")
    return result


def _loader(run: LoadedRun, split: str, data_cfg: DataConfig):
    batch_size = run.cfg.train.eval_batch_size or data_cfg.batch_size
    return make_loader(run.prepared, split, data_cfg, shuffle=False, seed=run.cfg.train.seed, batch_size=batch_size)


def _predict(run: LoadedRun, loader, transform: Callable[[Batch], Batch] | None = None):
    return predict_batches(run.model, loader, run.device, transform=transform, n_outputs=run.spec.n_outputs, classes=class_names(run.spec))


def _check_spec(run: LoadedRun, data_cfg: DataConfig) -> None:
    check_compatible(run.spec, make_spec(run.prepared, data_cfg), where=f"{run.prepared.path} at cutoff day {data_cfg.cutoff_day}")


def _metrics(frame) -> dict[str, Any]:
    return compute_metrics(frame["label"].to_numpy(), frame_probs(frame)) if len(frame) else {"n": 0}


# ---------------------------------------------------------------- robustness

def add_noise(batch: Batch, modality: str, level: float, generator: torch.Generator) -> Batch:
    """Gaussian noise (std = level) on the modality's float inputs; token dropout (p = level,
    id -> 0) on its integer inputs; boolean masks untouched. Draws on the CPU generator so the
    noise is the same on every device."""
    noisy = {}
    for key, t in batch.inputs[modality].items():
        if t.is_floating_point():
            t = t + level * torch.randn(t.shape, generator=generator).to(t.device, t.dtype)
        elif t.dtype != torch.bool:
            drop = torch.rand(t.shape, generator=generator) < level
            t = t.masked_fill(drop.to(t.device), 0)
        noisy[key] = t
    return dataclasses.replace(batch, inputs={**batch.inputs, modality: noisy})


def noise_kind(batch: Batch, modality: str) -> str:
    kinds = []
    tensors = batch.inputs[modality].values()
    if any(t.is_floating_point() for t in tensors):
        kinds.append("gaussian")
    if any(not t.is_floating_point() and t.dtype != torch.bool for t in tensors):
        kinds.append("token dropout")
    return " + ".join(kinds) or "none"


def robustness_sweep(
    run: LoadedRun, loader, *, base_auc: float, levels=NOISE_LEVELS, console: Console | None = None
) -> dict[str, Any]:
    """AUC with each modality absent, and under noise at each level (level 0 = base_auc)."""
    spec = run.spec
    seed = run.cfg.train.seed
    first = next(iter(loader))
    passes = len(spec.modalities) * (1 + sum(1 for level in levels if level > 0))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console or Console(stderr=True, quiet=True))

    def auc_with(transform: Callable[[Batch], Batch]) -> float:
        frame = _predict(run, loader, transform=transform)
        return compute_metrics(frame["label"].to_numpy(), frame_probs(frame)).get("auc", float("nan"))

    out: dict[str, Any] = {"levels": list(levels), "base_auc": base_auc, "seed": seed, "modalities": {}}
    if not getattr(run.model, "reads_batch_inputs", True):
        # gbdt scores a feature table built from the prepared files, not the batch tensors
        # that add_noise perturbs: a noise sweep would measure nothing. Absence still applies.
        levels = tuple(level for level in levels if level == 0)
        passes = len(spec.modalities)
    with progress:
        task = progress.add_task("robustness sweep", total=passes)
        for i, modality in enumerate(spec.modalities):
            absent = auc_with(lambda b, m=modality: b.without(m))
            progress.advance(task)
            noise_auc = []
            for j, level in enumerate(levels):
                if level == 0:
                    noise_auc.append(base_auc)  # no noise: the full model's AUC
                    continue
                generator = torch.Generator().manual_seed(seed * 1_000_003 + i * 1_009 + j)
                noise_auc.append(auc_with(lambda b, m=modality, lv=level, g=generator: add_noise(b, m, lv, g)))
                progress.advance(task)
            if len(levels) < 2:
                noise_auc = [base_auc] + [float("nan")] * (len(out["levels"]) - 1)
            out["modalities"][modality] = {
                "absent_auc": absent,
                "noise_kind": noise_kind(first, modality) if len(levels) > 1 else "not applicable (model reads no batch tensors)",
                "noise_auc": noise_auc,
                "noise_area": area_under_curve(levels, noise_auc) if len(levels) > 1 else float("nan"),
            }
    return out
