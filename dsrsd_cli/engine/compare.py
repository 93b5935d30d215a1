"""`dsrsd compare`: DSRSD-Net against the baselines, on the same test rows.

Two ways in:
  run folders  `dsrsd compare runs/run_3 runs/run_4 ...`: runs are grouped by model name;
               runs of one model whose settings differ (an ablation, e.g. loss.lambda_orth)
               are told apart by the differing keys, e.g. "dsrsd (loss.lambda_orth=0.0)".
  plan         `dsrsd compare --preset default --models dsrsd,early,late --seeds 5`: every
               model x seed is trained from the same preset, overrides and data (each
               model with its own tuned values where the preset holds a [tuned.<model>]
               table, config.py) into OUT/runs/<model>__seed<s>/ (":" in a model name becomes "-"), seeds
               train.seed + 0..n-1. A finished run is reused, an interrupted one is resumed
               (train --resume) or, if it never finished an epoch, restarted, so a killed
               compare picks up where it stopped and gives the same table.

The table, per model: mean ± std over seeds of each test metric (from predictions.parquet),
the difference to the reference (DSRSD-Net, "dsrsd"; else the first model) averaged over
seed pairs (same seed on both sides, else paired in seed order), and paired tests on the
shared test rows (engine/stats.py): AUC by the clustered DeLong test (learners as
clusters; multi-class: the paired learner bootstrap), accuracy / log-loss / Brier by the
paired learner bootstrap; per seed pair, and COMBINED over seeds as the test of the
seed-averaged difference. Robustness: test AUC with each modality absent (Batch.without).
Outputs in OUT: comparison.md, comparison.csv, comparison.json, comparison.png.
Refused: runs on different prepared data (manifest hash), different test rows or labels,
unfinished runs, and two runs of the same model and settings with the same seed.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from rich.console import Console

from dsrsd_cli.config import RunConfig, load_config, result_settings, tuned_models
from dsrsd_cli.engine import stats
from dsrsd_cli.engine.metrics import compute_metrics
from dsrsd_cli.engine.runs import METRICS_FILE, PREDICTIONS_FILE, STATE_FILE, RunInfo, load_run, read_run_info, torch_threads
from dsrsd_cli.engine.scoring import class_names, frame_probs, predict_batches
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_write_text, to_jsonable, write_json
from dsrsd_cli.report import (
    comparison_markdown, comparison_robustness_table, comparison_table, learning_curve_markdown, learning_curve_table,
    plot_comparison, plot_learning_curve, print_json,
)

DEFAULT_MODELS = "dsrsd,early,late,concat,coattn"
REFERENCE = "dsrsd"
TABLE_METRICS = ("auc", "accuracy", "f1", "log_loss", "brier", "ece")
TESTED_METRICS = ("auc", "accuracy", "log_loss", "brier")
KEY_COLUMNS = {"ednet": ["user", "position"], "oulad": ["code_module", "code_presentation", "id_student"]}
LEARNER_COLUMN = {"ednet": "user", "oulad": "id_student"}
N_BOOT = 1000
BOOT_SEED = 0
TESTS = {
    "auc": "clustered DeLong z-test (Obuchowski 1997; learners as clusters); multi-class targets: paired learner bootstrap",
    "accuracy, log_loss, brier": f"paired bootstrap over learners ({N_BOOT} resamples), two-sided percentile p-value",
    "combined": "the same test applied to the difference averaged over seed pairs (the pairs share the test rows)",
}


def compare_from_cli(
    *, run_dirs: list[Path], preset: str | None, models: str, seeds: int, overrides: list[str], data: Path | None,
    out: Path | None, json_out: bool, console: Console, train_fractions: str | None = None,
) -> None:
    if train_fractions is not None:
        if preset is None or run_dirs:
            raise BadInput("--train-fraction needs plan mode: --preset and --models, without run folders")
        curve = learning_curve(preset, models=models, seeds=seeds, fractions=parse_fractions(train_fractions),
                               overrides=overrides, data=data, out=out, console=console)
        console.print(learning_curve_table(curve))
        console.print(f"wrote {curve['out']}/learning_curve.md, .csv, .json, .png (and a comparison per fraction)", highlight=False)
        if json_out:
            print_json(curve)
        return
    result = compare(run_dirs, preset=preset, models=models, seeds=seeds, overrides=overrides, data=data, out=out, console=console)
    console.print(comparison_table(result))
    console.print(comparison_robustness_table(result))
    console.print(f"wrote {result['out']}/comparison.md, .csv, .json, .png", highlight=False)
    if json_out:
        print_json(result)


def compare(
    run_dirs: Sequence[Path] = (),
    *,
    preset: str | None = None,
    models: str | Sequence[str] = DEFAULT_MODELS,
    seeds: int = 3,
    overrides: Sequence[str] = (),
    data: Path | None = None,
    out: Path | None = None,
    device: str = "auto",
    console: Console | None = None,
    quiet: bool = False,
    n_boot: int = N_BOOT,
) -> dict[str, Any]:
    """Compare run folders, or train the plan (preset x models x seeds) first; writes OUT/comparison.*."""
    console = console or Console(stderr=True, quiet=True)
    if run_dirs and preset is not None:
        raise BadInput("give run folders or --preset (plan mode), not both")
    if not run_dirs and preset is None:
        raise BadInput("nothing to compare: give run folders (dsrsd compare runs/run_1 runs/run_2) or a plan (--preset default --models dsrsd,early)")
    if preset is not None:
        out = Path(out) if out is not None else Path("comparisons") / Path(preset).stem
        run_dirs = train_plan(preset, models=models, seeds=seeds, overrides=overrides, data=data, out=out, console=console, quiet=quiet)
    else:
        if data is not None or list(overrides):
            raise BadInput("--data and --set apply to plan mode (--preset) only; run folders keep their own settings")
        out = Path(out) if out is not None else Path("comparisons") / "selected_runs"
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: exists and is not a folder; choose another --out")

    runs, rows = load_runs(run_dirs)
    result = summarise(runs, rows, out=out, device=device, console=console, n_boot=n_boot)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "comparison.json", result)
    atomic_write_text(out / "comparison.csv", pd.DataFrame(csv_rows(result)).to_csv(index=False))
    atomic_write_text(out / "comparison.md", comparison_markdown(result))
    plot_comparison(result, out / "comparison.png")
    return result


# ---------------------------------------------------------------- learning curves

def parse_fractions(text: str) -> list[float]:
    """"0.1,0.3,1.0" -> [0.1, 0.3, 1.0] (sorted, distinct, each in (0, 1])."""
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise BadInput(f"--train-fraction {text!r}: expected comma-separated numbers, e.g. 0.1,0.3,1.0") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise BadInput(f"--train-fraction {text!r}: every fraction must lie in (0, 1], e.g. 0.1,0.3,1.0")
    return values


def training_learners(cfg: RunConfig) -> int:
    """How many learners the train split of `cfg` holds (after data.train_fraction)."""
    from dsrsd_cli.data.prepared import open_prepared, split_mask

    prepared = open_prepared(cfg.data.path)
    learner = LEARNER_COLUMN[prepared.dataset]
    splits = pd.read_parquet(prepared.file("splits.parquet"), columns=[learner, "split", "fold"])
    mask = split_mask(splits, "train", cfg.data, prepared.file("splits.parquet"), prepared.dataset, learner)
    return int(splits.loc[mask, learner].nunique())


def learning_curve(preset: str, *, models, seeds: int, fractions: Sequence[float], overrides: Sequence[str] = (),
                   data: Path | None = None, out: Path | None = None, device: str = "auto",
                   console: Console | None = None, quiet: bool = False, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Test AUC against the number of training learners: one plan comparison per fraction in
    OUT/fraction_<f>/, each model trained on the nested, seeded subsample data.train_fraction = f
    of the training learners (valid and test learners unchanged); OUT/learning_curve.*."""
    console = console or Console(stderr=True, quiet=True)
    out = Path(out) if out is not None else Path("comparisons") / f"{Path(preset).stem}_learning_curve"
    points = []
    for f in fractions:
        console.print(f"[bold]train fraction {f:g}[/bold]", highlight=False)
        sets = [*overrides, f"data.train_fraction={f}"]
        result = compare(preset=preset, models=models, seeds=seeds, overrides=sets, data=data, out=out / f"fraction_{f:g}",
                         device=device, console=console, quiet=quiet, n_boot=n_boot)
        cfg = load_config(preset, [*sets, *([f"data.path={json.dumps(str(data))}"] if data is not None else [])])
        points += curve_points(result, f, training_learners(cfg))
    return write_learning_curve(out, preset, fractions, points)


def curve_points(result: dict[str, Any], fraction: float, train_learners: int) -> list[dict[str, Any]]:
    """One learning-curve point per model of a comparison made at `fraction`."""
    points = []
    for m in result["models"]:
        vs = m.get("vs_reference")
        points.append({
            "fraction": fraction, "train_learners": train_learners, "model": m["label"], "seeds": m["seeds"],
            "auc_mean": m["metrics"]["auc"]["mean"], "auc_std": m["metrics"]["auc"]["std"],
            "auc_diff": vs["combined"]["auc"]["diff"] if vs else None, "auc_p": vs["combined"]["auc"]["p"] if vs else None,
        })
    return points


def write_learning_curve(out: Path, preset: str, fractions: Sequence[float], points: list[dict[str, Any]]) -> dict[str, Any]:
    """OUT/learning_curve.json, .csv, .md, .png from the points; returns the curve."""
    curve = to_jsonable({"out": str(out), "preset": preset, "reference": REFERENCE, "fractions": list(fractions), "points": points})
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "learning_curve.json", curve)
    atomic_write_text(out / "learning_curve.csv", pd.DataFrame(points).to_csv(index=False))
    atomic_write_text(out / "learning_curve.md", learning_curve_markdown(curve))
    plot_learning_curve(curve, out / "learning_curve.png")
    return curve


# ---------------------------------------------------------------- plan mode

def parse_models(models: str | Sequence[str]) -> list[str]:
    names = models.split(",") if isinstance(models, str) else list(models)
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise BadInput("--models is empty; give comma-separated names, e.g. --models dsrsd,early,late")
    return names


def run_folder_name(model: str, seed: int) -> str:
    return f"{model.replace(':', '-')}__seed{seed}"


def plan_configs(preset: str, *, models, seeds: int, overrides: Sequence[str] = (), data: Path | None = None) -> list[RunConfig]:
    """One config per model x seed: the same preset, overrides, data and budget; only model.name,
    train.seed and each model's own tuned values (the preset's [tuned.<model>] tables) vary."""
    from dsrsd_cli.data.loader import make_spec, open_prepared
    from dsrsd_cli.model.registry import check_model, model_names

    if seeds < 1:
        raise BadInput(f"--seeds {seeds}: must be at least 1")
    names = parse_models(models)
    common = list(overrides) + ([f"data.path={json.dumps(str(data))}"] if data is not None else [])
    base = load_config(preset, common)
    spec = make_spec(open_prepared(base.data.path), base.data)
    check_model(spec, names, where="--models")
    models = model_names(spec)
    known = set(models) | {name.partition(":")[0] for name in models}     # a family's table serves its variants
    unknown = [name for name in tuned_models(preset) if name not in known]
    if unknown:
        raise BadInput(f"preset {preset}: [tuned.{unknown[0]}] is for a model {spec.dataset} does not have; "
                       f"choose among {', '.join(models)} (or a family: {', '.join(sorted(known - set(models)))})")
    return [
        load_config(preset, [*common, f"model.name={json.dumps(name)}", f"train.seed={base.train.seed + k}"])
        for name in names for k in range(seeds)
    ]


def train_plan(preset: str, *, models, seeds: int, overrides: Sequence[str], data: Path | None, out: Path,
               console: Console, quiet: bool = False) -> list[Path]:
    configs = plan_configs(preset, models=models, seeds=seeds, overrides=overrides, data=data)
    folders = []
    for i, cfg in enumerate(configs, 1):
        run_dir = out / "runs" / run_folder_name(cfg.model.name, cfg.train.seed)
        console.print(f"[bold][{i}/{len(configs)}][/bold] {cfg.model.name}, seed {cfg.train.seed}: {run_dir}", highlight=False)
        folders.append(ensure_run(cfg, run_dir, console=console, quiet=quiet))
    return folders


def is_complete(run_dir: Path) -> bool:
    return (run_dir / METRICS_FILE).is_file() and (run_dir / PREDICTIONS_FILE).is_file()


def ensure_run(cfg: RunConfig, run_dir: Path, *, console: Console, quiet: bool = False) -> Path:
    """A finished run of `cfg` in `run_dir`: reused if there, resumed if interrupted, else trained."""
    from dsrsd_cli.engine.train import train_run

    if run_dir.is_symlink():
        raise BadInput(f"{run_dir}: is a symbolic link; refusing to train into it (remove it)")
    if is_complete(run_dir):
        _check_same_settings(run_dir, cfg)
        console.print("  finished earlier: reused", highlight=False)
        return run_dir
    if (run_dir / STATE_FILE).is_file():
        _check_same_settings(run_dir, cfg)
        console.print("  interrupted earlier: resuming", highlight=False)
        return train_run(cfg, resume=run_dir, console=console, quiet=quiet)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # interrupted before its first epoch ended: nothing worth keeping
    return train_run(cfg, out=run_dir, console=console, quiet=quiet)


def _settings(cfg: RunConfig, *, with_seed: bool = True) -> dict[str, Any]:
    """The config keys that can change a run's result (without train.seed: what one model's seeds share)."""
    return {k: v for k, v in result_settings(cfg).items() if with_seed or k != "train.seed"}


def _check_same_settings(run_dir: Path, cfg: RunConfig) -> None:
    from dsrsd_cli.data.loader import open_prepared

    info = read_run_info(run_dir)
    saved, wanted = _settings(info.cfg), _settings(cfg)
    changed = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    if changed:
        k = changed[0]
        raise BadInput(
            f"{run_dir}: was trained with {k} = {saved.get(k)!r}, but this plan asks for {wanted.get(k)!r}; "
            "use another --out for a different plan (or delete that run folder)"
        )
    if open_prepared(cfg.data.path).manifest_hash != info.data.manifest_hash:
        raise BadInput(f"{run_dir}: was trained on other prepared data than {cfg.data.path}; use another --out or the original data")


# ---------------------------------------------------------------- loading and checking runs

@dataclass
class Run:
    run_dir: Path
    info: RunInfo
    label: str                 # the model name, plus the settings that set it apart from same-model runs
    seed: int
    probs: np.ndarray          # (n,) or (n, C), rows in key order (shared by all runs)


def load_runs(run_dirs: Sequence[Path]) -> tuple[list[Run], pd.DataFrame]:
    """Every run's config and test predictions, and the shared test rows (keys + label) they
    are aligned to; refuses what cannot be compared."""
    run_dirs = [Path(p) for p in dict.fromkeys(Path(p) for p in run_dirs)]
    infos = [read_run_info(p) for p in run_dirs]
    first = infos[0]
    for info in infos[1:]:
        if info.data.manifest_hash != first.data.manifest_hash:
            raise BadInput(
                f"{info.run_dir} and {first.run_dir} were trained on different prepared data (manifest hash "
                f"{info.data.manifest_hash[:12]} vs {first.data.manifest_hash[:12]}); compare runs of one prepared folder"
            )
        if (info.spec.dataset, info.spec.target, info.spec.n_outputs) != (first.spec.dataset, first.spec.target, first.spec.n_outputs):
            raise BadInput(f"{info.run_dir} predicts {info.spec.target!r}, {first.run_dir} predicts {first.spec.target!r}; compare runs of one task")

    keys = KEY_COLUMNS[first.spec.dataset]
    frames = []
    for info in infos:
        path = info.run_dir / PREDICTIONS_FILE
        if (info.run_dir / METRICS_FILE).is_file() and not path.is_file():
            raise BadInput(f"{info.run_dir}: scored on validation only (a `dsrsd tune` trial), no {PREDICTIONS_FILE}; "
                           "compare runs trained with the chosen values: `dsrsd compare --preset STUDY/best.toml ...`")
        if not is_complete(info.run_dir):
            raise BadInput(f"{info.run_dir}: unfinished (no {METRICS_FILE} or {PREDICTIONS_FILE}); finish it with `dsrsd train --resume {info.run_dir}`")
        frame = pd.read_parquet(path)
        missing = [c for c in [*keys, "label"] if c not in frame]
        if missing:
            raise BadInput(f"{path}: column(s) {', '.join(missing)} missing; not written by `dsrsd train`")
        frames.append(frame.sort_values(keys, kind="stable").reset_index(drop=True))
    reference = frames[0]
    for info, frame in zip(infos[1:], frames[1:]):
        same_rows = len(frame) == len(reference) and all((frame[c].to_numpy() == reference[c].to_numpy()).all() for c in keys)
        if not same_rows:
            raise BadInput(
                f"{info.run_dir} and {infos[0].run_dir} were scored on different test rows ({len(frame):,} vs {len(reference):,}); "
                "compare runs with the same split (data.fold, data.cutoff_day and the prepared folder must match)"
            )
        if not (frame["label"].to_numpy() == reference["label"].to_numpy()).all():
            raise BadInput(f"{info.run_dir} and {infos[0].run_dir} have different labels on the same test rows; compare runs of one task")

    labels = _labels(infos)
    seen: dict[tuple[str, int], Path] = {}
    for info, label in zip(infos, labels):
        key = (label, info.cfg.train.seed)
        if key in seen:
            raise BadInput(f"{info.run_dir} and {seen[key]} are both {label} with seed {key[1]}; drop one of them")
        seen[key] = info.run_dir
    runs = [Run(info.run_dir, info, label, info.cfg.train.seed, frame_probs(frame)) for info, label, frame in zip(infos, labels, frames)]
    return runs, reference[[*keys, "label"]]


def _labels(infos: list[RunInfo]) -> list[str]:
    """Model name, plus "k=v" for settings that differ between runs of the same model."""
    settings = [_settings(info.cfg, with_seed=False) for info in infos]
    labels = []
    for info, mine in zip(infos, settings):
        same_model = [s for s, other in zip(settings, infos) if other.cfg.model.name == info.cfg.model.name]
        differing = [k for k in sorted(mine) if any(s.get(k) != mine[k] for s in same_model)]
        labels.append(info.cfg.model.name + (f" ({', '.join(f'{k}={mine[k]}' for k in differing)})" if differing else ""))
    return labels


# ---------------------------------------------------------------- the table

def absent_aucs(run_dir: Path, device: str = "auto") -> dict[str, float]:
    """Test AUC of the run with each modality absent (its learned absent token)."""
    run = load_run(run_dir, device=device)
    out = {}
    with torch_threads(run.cfg.train.threads):
        loader = run.loader("test")
        for m in run.spec.modalities:
            frame = predict_batches(run.model, loader, run.device, transform=lambda b, m=m: b.without(m),
                                    n_outputs=run.spec.n_outputs, classes=class_names(run.spec))
            probs = frame_probs(frame)
            if stats.nearly_constant(probs):   # nothing left to tell rows apart but float noise
                probs = np.broadcast_to(probs[:1], probs.shape)
            out[m] = compute_metrics(frame["label"].to_numpy(), probs).get("auc", math.nan)
    return out


def _mean_std(values: list[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else None, "std": float(v.std(ddof=1)) if v.size > 1 else None}


def _pairs(ref_seeds: list[int], seeds: list[int]) -> list[tuple[int, int]]:
    """(reference seed, model seed) pairs: equal seeds where they exist, else in seed order."""
    common = sorted(set(ref_seeds) & set(seeds))
    if common:
        return [(s, s) for s in common]
    return list(zip(sorted(ref_seeds), sorted(seeds)))


def summarise(runs: list[Run], rows: pd.DataFrame, *, out: Path, device: str, console: Console, n_boot: int = N_BOOT) -> dict[str, Any]:
    """The comparison: per model means and stds, tests against the reference, robustness."""
    first = runs[0].info
    dataset = first.spec.dataset
    y = rows["label"].to_numpy()
    learners = rows[LEARNER_COLUMN[dataset]].to_numpy()
    binary = runs[0].probs.ndim == 1

    labels = list(dict.fromkeys(r.label for r in runs))
    by_label = {label: sorted((r for r in runs if r.label == label), key=lambda r: r.seed) for label in labels}
    reference = REFERENCE if REFERENCE in by_label else next(
        (name for name in labels if by_label[name][0].info.cfg.model.name == REFERENCE), labels[0]
    )

    per_run: dict[Path, dict[str, Any]] = {}
    for i, r in enumerate(runs, 1):
        console.print(f"[{i}/{len(runs)}] test metrics and missing-modality AUCs: {r.run_dir}", highlight=False)
        per_run[r.run_dir] = {
            "run_dir": str(r.run_dir), "seed": r.seed, "metrics": compute_metrics(y, r.probs), "absent_auc": absent_aucs(r.run_dir, device),
        }

    models = []
    for label in labels:
        group = by_label[label]
        cfg = group[0].info.cfg
        entry: dict[str, Any] = {
            "label": label, "model": cfg.model.name, "seeds": [r.seed for r in group],
            "budget": {"epochs": cfg.train.epochs, "max_steps_per_epoch": cfg.train.max_steps_per_epoch, "batch_size": cfg.data.batch_size},
            "runs": [per_run[r.run_dir] for r in group],
            "metrics": {m: _mean_std([per_run[r.run_dir]["metrics"].get(m) for r in group]) for m in TABLE_METRICS},
            "absent_auc": {m: _mean_std([per_run[r.run_dir]["absent_auc"][m] for r in group]) for m in first.spec.modalities},
        }
        if label != reference:
            entry["vs_reference"] = _versus(by_label[reference], group, per_run, y, learners, binary, n_boot)
        models.append(entry)

    budgets = {json.dumps(m["budget"], sort_keys=True) for m in models}
    if len(budgets) > 1:
        console.print("[yellow]warning:[/yellow] the models were trained with different budgets (epochs / steps / batch size); see comparison.md", highlight=False)
    return to_jsonable({
        "out": str(out),
        "dataset": dataset,
        "target": first.spec.target,
        "data": {"path": first.data.path, "manifest_hash": first.data.manifest_hash},
        "test_rows": int(len(y)),
        "learners": int(len(np.unique(learners))),
        "modalities": list(first.spec.modalities),
        "reference": reference,
        "metrics": list(TABLE_METRICS),
        "tests": TESTS,
        "same_budget": len(budgets) == 1,
        "models": models,
    })


def _versus(ref_runs: list[Run], runs: list[Run], per_run, y, learners, binary: bool, n_boot: int) -> dict[str, Any]:
    """Model minus reference, per seed pair and combined over pairs, with paired tests."""
    ref_by_seed, by_seed = {r.seed: r for r in ref_runs}, {r.seed: r for r in runs}
    pairs = _pairs(list(ref_by_seed), list(by_seed))
    a = [ref_by_seed[s].probs for s, _ in pairs]
    b = [by_seed[s].probs for _, s in pairs]
    boot_metrics = [m for m in TESTED_METRICS if m != "auc" or not binary]
    tests = stats.paired_bootstrap(y, a, b, learners, metrics=boot_metrics, n_boot=n_boot, seed=BOOT_SEED)
    if binary:
        tests["auc"] = stats.paired_auc_tests(y, a, b, learners)
    diff = {}
    for m in TABLE_METRICS:
        d = [per_run[by_seed[sb].run_dir]["metrics"].get(m) - per_run[ref_by_seed[sa].run_dir]["metrics"].get(m) for sa, sb in pairs]
        diff[m] = float(np.mean(d))
    return {
        "pairs": [
            {"reference_seed": sa, "seed": sb, **{m: tests[m]["pairs"][k] for m in TESTED_METRICS}}
            for k, (sa, sb) in enumerate(pairs)
        ],
        "combined": {m: tests[m]["combined"] for m in TESTED_METRICS},
        "diff": diff,
    }


def csv_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: means, stds, differences to the reference, combined p-values, absent AUCs."""
    rows = []
    for m in result["models"]:
        row: dict[str, Any] = {"model": m["label"], "model_name": m["model"], "seeds": " ".join(str(s) for s in m["seeds"]),
                               "reference": m["label"] == result["reference"]}
        for metric in result["metrics"]:
            row[f"{metric}_mean"] = m["metrics"][metric]["mean"]
            row[f"{metric}_std"] = m["metrics"][metric]["std"]
        for metric in TESTED_METRICS:
            vs = m.get("vs_reference")
            row[f"{metric}_diff"] = vs["combined"][metric]["diff"] if vs else None
            row[f"{metric}_p"] = vs["combined"][metric]["p"] if vs else None
        for modality, v in m["absent_auc"].items():
            row[f"auc_without_{modality}_mean"] = v["mean"]
            row[f"auc_without_{modality}_std"] = v["std"]
        rows.append(row)
    return rows
