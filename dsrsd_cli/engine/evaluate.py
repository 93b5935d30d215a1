"""`dsrsd evaluate`: metrics of a trained run, never retraining it.

On one split (test by default), with the run's best weights:
  metrics      the full model (engine/metrics.py);
  masked       with the `--mask` modalities absent together (Batch.without);
  cutoffs      OULAD: the same model on the dataset rebuilt at each `--cutoff-day`;
  robustness   per modality: AUC with it absent, and AUC under noise of growing level
               (Gaussian noise of std = level on its float inputs; token dropout: each id
               replaced by 0, the padding id, with probability = level on its integer
               inputs), with the area under AUC-vs-level (trapezoid over levels 0..1,
               divided by the level range). Noise is seeded per (modality, level), and under
               torchrun also per rank: each rank draws the noise of its own shard, so an
               N-process sweep's noisy AUCs come from another draw of the same noise than a
               single process's (the absent-modality AUCs are the same).
Every pass streams the split (scoring.score_batches): the predictions file is written chunk by
chunk and the metrics come from compact label/probability arrays, so memory does not grow
with a DataFrame of the split; only the first pass builds key columns.
Under torchrun (`--nproc N`, or WORLD_SIZE set) each rank scores its shard of every pass and
rank 0 computes the metrics on their union and writes the files (engine/distributed.py).
Files: RUN_DIR/eval/<split>.json, predictions_<split>.parquet, robustness.png.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data.loader import make_spec
from dsrsd_cli.engine.distributed import DistEnv, launch_torchrun, output_file, process_group, rank_device, score_split
from dsrsd_cli.engine.metrics import area_under_curve
from dsrsd_cli.engine.runs import LoadedRun, check_compatible, load_run, open_run_data, read_run_info, torch_threads
from dsrsd_cli.engine.scoring import Scores, class_names
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import to_jsonable, write_json
from dsrsd_cli.report import metrics_table, plot_robustness, print_json, robustness_table
from dsrsd_cli.types import Batch

NOISE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
SPLITS = ("train", "valid", "test")


def evaluate_from_cli(
    *, run_dir: Path, split: str, masks: list[str], cutoff_days: list[int], robustness: bool,
    data: Path | None, json_out: bool, console: Console, nproc: int = 1,
) -> None:
    env = DistEnv.from_env()
    if nproc > 1 and not env.distributed:
        check_request(run_dir, split=split, masks=masks, cutoff_days=cutoff_days, data=data)
        args = ["evaluate", str(run_dir), "--split", split, "--robustness" if robustness else "--no-robustness"]
        for m in masks:
            args += ["--mask", m]
        for day in cutoff_days:
            args += ["--cutoff-day", str(day)]
        if data is not None:
            args += ["--data", str(data)]
        launch_torchrun([*args, *(["--json"] if json_out else [])], nproc=nproc, console=console)
        return
    result = evaluate_run(run_dir, split=split, masks=masks, cutoff_days=cutoff_days, robustness=robustness, data=data, console=console)
    if result is None:   # a rank other than 0: it scored its shard, rank 0 reports
        return
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


def check_request(run_dir: Path, *, split: str, masks=(), cutoff_days=(), data: Path | None = None) -> None:
    """The options checked against the run without loading its model (before `--nproc`
    launches workers, so a bad option fails once, with exit code 2)."""
    if split not in SPLITS:
        raise BadInput(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    info = read_run_info(run_dir)
    _check_options(info.spec, masks, cutoff_days)
    open_run_data(info, data)


def _check_options(spec, masks, cutoff_days) -> None:
    for m in masks:
        if m not in spec.modalities:
            raise BadInput(f"--mask {m!r}: not a modality of {spec.dataset}; choose from {', '.join(spec.modalities)}")
    if cutoff_days and spec.dataset != "oulad":
        raise BadInput("--cutoff-day applies to OULAD runs only (EdNet predicts every step; there is no cutoff)")


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
) -> dict[str, Any] | None:
    """Evaluate a run folder; writes RUN_DIR/eval/ and returns what it wrote to <split>.json.
    Under torchrun every rank scores its shard; rank 0 writes and returns, the others return None."""
    if split not in SPLITS:
        raise BadInput(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    env = DistEnv.from_env()
    run = load_run(run_dir, device=rank_device(device, env), data=data)
    with process_group(env, run.device), torch_threads(run.cfg.train.threads):
        return _evaluate(run, env, split=split, masks=masks, cutoff_days=cutoff_days, robustness=robustness, console=console)


def _evaluate(run: LoadedRun, env: DistEnv, *, split, masks, cutoff_days, robustness, console) -> dict[str, Any] | None:
    spec = run.spec
    masks = list(dict.fromkeys(masks))
    _check_options(spec, masks, cutoff_days)
    out_dir = run.run_dir / "eval"
    if out_dir.is_symlink():
        raise BadInput(f"{out_dir}: is a symbolic link; refusing to write through it (remove it)")
    if console is None or not env.is_main:
        console = Console(stderr=True, quiet=True)

    loader = run.loader(split, rank=env.rank, world_size=env.world_size)
    if len(loader.dataset) == 0:   # every rank sees the same split: all stop here together
        raise BadInput(f"{run.prepared.path}: the {split} split has no rows to evaluate")
    with output_file(out_dir / f"predictions_{split}.parquet", env) as predictions:
        scores = _score(run, loader, env, out=predictions)
        if scores is None:   # not rank 0: score the shard of every other pass, report nothing
            _other_passes(run, env, loader, split, masks, cutoff_days, robustness, base_auc=float("nan"), console=console)
            return None
        if not len(scores):
            raise BadInput(f"{run.prepared.path}: the {split} split has no rows to evaluate")
        metrics = scores.metrics()
        result: dict[str, Any] = {
            "run_dir": str(run.run_dir),
            "model": run.cfg.model.name,
            "split": split,
            "data": {"path": str(run.prepared.path), "same_as_training": run.same_data},
            "metrics": metrics,
        }
        result.update(_other_passes(run, env, loader, split, masks, cutoff_days, robustness, base_auc=metrics.get("auc", float("nan")), console=console))
        if "masked" in result:
            result["masked"]["auc_drop"] = metrics.get("auc", float("nan")) - result["masked"]["metrics"].get("auc", float("nan"))
        result = to_jsonable(result)
        write_json(out_dir / f"{split}.json", result)
    if robustness:
        plot_robustness(result["robustness"], out_dir / "robustness.png", title=f"{run.cfg.model.name} on {split}")
    return result


def _other_passes(run: LoadedRun, env: DistEnv, loader, split: str, masks, cutoff_days, robustness, *, base_auc: float, console) -> dict[str, Any]:
    """The passes after the full model's (every rank runs them; the results are rank 0's):
    masked, per cutoff day, robustness sweep."""
    out: dict[str, Any] = {}
    if masks:
        masked = _score(run, loader, env, transform=lambda b: b.without(*masks))
        out["masked"] = {"modalities": masks, "metrics": _metrics(masked)}
    if cutoff_days:
        out["cutoffs"] = []
        for day in cutoff_days:
            data_cfg = run.cfg.data.model_copy(update={"cutoff_day": int(day)})
            _check_spec(run, data_cfg)
            day_scores = _score(run, run.loader(split, data_cfg=data_cfg, rank=env.rank, world_size=env.world_size), env)
            out["cutoffs"].append({"cutoff_day": int(day), "metrics": _metrics(day_scores)})
    if robustness:
        out["robustness"] = robustness_sweep(run, loader, base_auc=base_auc, console=console, env=env)
    return out


def _score(run: LoadedRun, loader, env: DistEnv, *, out: Path | None = None, transform: Callable[[Batch], Batch] | None = None) -> Scores | None:
    """Scores of the split (rank 0; None on the others); with `out`, its predictions file too."""
    return score_split(run.model, loader, run.device, env, n_outputs=run.spec.n_outputs, classes=class_names(run.spec),
                       out=out, transform=transform)


def _check_spec(run: LoadedRun, data_cfg: DataConfig) -> None:
    check_compatible(run.spec, make_spec(run.prepared, data_cfg), where=f"{run.prepared.path} at cutoff day {data_cfg.cutoff_day}")


def _metrics(scores: Scores | None) -> dict[str, Any]:
    return scores.metrics() if scores is not None else {}


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
    run: LoadedRun, loader, *, base_auc: float, levels=NOISE_LEVELS, console: Console | None = None, env: DistEnv = DistEnv(),
) -> dict[str, Any]:
    """AUC with each modality absent, and under noise at each level (level 0 = base_auc).
    Under DDP every rank runs every pass on its shard; the AUCs are rank 0's (NaN elsewhere)."""
    spec = run.spec
    seed = run.cfg.train.seed
    first = next(iter(loader), None)   # one batch, to name the kind of noise (a rank's shard may be empty)
    passes = len(spec.modalities) * (1 + sum(1 for level in levels if level > 0))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console or Console(stderr=True, quiet=True))

    def auc_with(transform: Callable[[Batch], Batch]) -> float:
        scores = _score(run, loader, env, transform=transform)   # label + probabilities only: no key columns
        return scores.metrics().get("auc", float("nan")) if scores is not None else float("nan")

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
                # per (modality, level); rank r > 0 (torchrun) draws its own shard's noise
                generator = torch.Generator().manual_seed(seed * 1_000_003 + i * 1_009 + j + env.rank * 104_729)
                noise_auc.append(auc_with(lambda b, m=modality, lv=level, g=generator: add_noise(b, m, lv, g)))
                progress.advance(task)
            if len(levels) < 2:
                noise_auc = [base_auc] + [float("nan")] * (len(out["levels"]) - 1)
            kind = noise_kind(first, modality) if first is not None else "none"
            out["modalities"][modality] = {
                "absent_auc": absent,
                "noise_kind": kind if len(levels) > 1 else "not applicable (model reads no batch tensors)",
                "noise_auc": noise_auc,
                "noise_area": area_under_curve(levels, noise_auc) if len(levels) > 1 else float("nan"),
            }
    return out
