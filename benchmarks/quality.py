"""Quality benchmark: DSRSD-Net against every baseline and the gbdt reference, the oracle,
the paper's ablation table, learning curves and the mechanism diagnostics.

    python benchmarks/quality.py                                   # every part (hours on 2 cores)
    python benchmarks/quality.py --parts oulad,ablation-oulad --seeds 5
    python benchmarks/quality.py --parts ednet,curve-ednet --seeds 3 --models dsrsd,early,gbdt

Parts (each writes OUT/parts/<part>.md; OUT/quality.md joins every part that exists, so
parts may be run in separate invocations):
  ednet, oulad          built-in sample (default size): every registered model incl. gbdt with
                        the same preset, data, budget and seeds (2 runs at a time, 1 thread
                        each), `dsrsd compare` (paired clustered-DeLong tests against DSRSD-Net,
                        absent-modality AUCs), the oracle AUC on the same test rows, and
                        DSRSD-Net's mechanism diagnostics (validation, seed 0).
  real                  the real OULAD extract (tests/fixtures/oulad, 32,593 registrations),
                        at_risk at cutoff day 100: dsrsd, early and gbdt.
  ablation-ednet/-oulad dsrsd and its six registry ablations (`dsrsd:no-align`, ...): test AUC
                        with paired p, validation AUC, AUC drop without each modality.
  curve-ednet/-oulad    learning curve: the models at train fractions 0.1 and 0.3 (nested,
                        seeded subsamples of the training learners) and 1.0 (the runs of the
                        sample part, reused when present).
Tuning happens on validation data only: every test figure here is read once.
Just over 500 lines on purpose: the parts share the tuning, the runner and the table writers,
and one file keeps the whole benchmark's protocol readable in one place.

Equal tuning (--tune-trials N, N > 0; default 0: every model with the shipped preset):
    python benchmarks/quality.py --parts ednet,ablation-ednet,curve-ednet --seeds 3 --tune-trials 8

  Before its seeded runs, each of ednet, oulad and real tunes EVERY model of the part, DSRSD-Net,
  each baseline and gbdt alike, with `dsrsd tune` and the same budget: N trials, the part's
  prepared data, preset and overrides (+ train.threads=1), sampler seed 0 (TUNE_SEED),
  validation AUC only (engine/tune.py). Studies live in OUT/tune/{ednet,oulad,real}/<model, ':'
  as '-'>/ and are continued, never repeated, by a later invocation; a study holding more than
  N finished trials is refused (the budget would not be equal). A model's
  seeded runs then take the values of the searched keys from its study's best.toml, on top of
  the same preset + overrides + train.threads=1, keeping their own train.seed per seed index;
  a model whose study has no complete trial keeps the shipped preset (the part's markdown says
  so). The ablation and curve parts reuse (or first run) the studies of their dataset: the
  curve's models their own, at every train fraction; the ablation variants DSRSD-Net's (the
  tuned model with one component removed). Tuned runs are kept apart from untuned ones, in
  .../runs-tuned-N/ instead of .../runs/. Each part's markdown gets a "Tuning" section: the
  budget, per model the tuned values and best validation AUC, and the tuning time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from dsrsd_cli.processes import leave_with   # a killed benchmark's workers stop training

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))   # ednet_ceiling, also when loaded by path (tests)
MODELS = {
    "ednet": "dsrsd,early,late,concat,coattn,single:item,single:content,single:behavior,gbdt",
    "oulad": "dsrsd,early,late,concat,coattn,single:demographics,single:clicks,single:assessments,gbdt",
}
ABLATIONS = "dsrsd,dsrsd:no-align,dsrsd:no-decorr,dsrsd:no-orth,dsrsd:no-private,dsrsd:no-shared,dsrsd:mean-gate"
CURVE_MODELS = "dsrsd,early,gbdt"
CURVE_FRACTIONS = (0.1, 0.3, 1.0)
PRESETS = {"ednet": "default", "oulad": "oulad"}
REAL_OVERRIDES = ["data.target=at_risk", "data.cutoff_day=100"]
REAL_MODELS = "dsrsd,early,gbdt"
TUNE_SEED = 0                     # the sampler seed of every study: the same for every model
SLOW_FIRST = {"coattn": 0, "dsrsd": 1, "concat": 2, "late": 3}   # the pool does not end on one long job


# ---------------------------------------------------------------- training in parallel

def _train_one(job: tuple[dict, str]) -> str:
    from rich.console import Console

    from dsrsd_cli.config import RunConfig
    from dsrsd_cli.engine.compare import ensure_run

    cfg_dict, run_dir = job
    cfg = RunConfig.model_validate(cfg_dict)
    t0 = time.time()
    ensure_run(cfg, Path(run_dir), console=Console(stderr=True, quiet=True), quiet=True)
    print(f"  trained {cfg.model.name} seed {cfg.train.seed} ({run_dir}) in {time.time() - t0:.0f}s", flush=True)
    return run_dir


def run_configs(preset: str, models: str, seeds: int, overrides: list[str], data: Path,
                tuned: dict[str, dict | None] | None = None) -> list:
    """Every model x seed (plan_configs: the same preset, overrides, data and budget; seeds
    train.seed + 0..seeds-1), with train.threads=1; a model in `tuned` with values gets them
    (the searched keys only, see tuned_values) on top, as --set overrides."""
    from dsrsd_cli.engine.compare import parse_models, plan_configs

    common = [*overrides, "train.threads=1"]
    if not tuned:
        return plan_configs(preset, models=models, seeds=seeds, overrides=common, data=data)
    return [cfg for model in parse_models(models)
            for cfg in plan_configs(preset, models=model, seeds=seeds, overrides=[*common, *as_sets(tuned.get(model))], data=data)]


def runs_folder(tune_trials: int) -> str:
    """Where a plan's run folders go: untuned runs and runs tuned with N trials never share one."""
    return "runs" if tune_trials <= 0 else f"runs-tuned-{tune_trials}"


def train_all(preset: str, models: str, seeds: int, overrides: list[str], data: Path, out: Path, workers: int,
              tuned: dict[str, dict | None] | None = None, runs: str = "runs") -> list[Path]:
    """Every model x seed of the plan (run_configs) into OUT/<runs>/ (reused when finished), `workers` at a time."""
    from dsrsd_cli.engine.compare import run_folder_name

    configs = run_configs(preset, models, seeds, overrides, data, tuned)
    jobs = [(c.model_dump(), str(out / runs / run_folder_name(c.model.name, c.train.seed))) for c in configs]
    in_plan_order = [Path(run_dir) for _, run_dir in jobs]
    jobs = sorted(jobs, key=lambda job: SLOW_FIRST.get(job[0]["model"]["name"].partition(":")[0], 9))
    with mp.get_context("spawn").Pool(workers, initializer=leave_with, initargs=(os.getpid(),)) as pool:
        pool.map(_train_one, jobs, chunksize=1)
    return in_plan_order


# ---------------------------------------------------------------- equal tuning

def _tune_one(job: tuple[str, int, str, list[str], str, str]) -> dict:
    from dsrsd_cli.engine.tune import tune

    model, trials, preset, overrides, data, out = job
    t0 = time.time()
    summary = tune(model=model, trials=trials, preset=preset, out=Path(out), overrides=overrides, data=Path(data),
                   seed=TUNE_SEED, quiet=True)
    print(f"  tuned {model}: {summary['finished']} finished trials, {summary['trained_now']} trained now ({out}) "
          f"in {time.time() - t0:.0f}s", flush=True)
    return summary


def tune_dir(root: Path, model: str) -> Path:
    return root / model.replace(":", "-")


def tune_models(preset: str, models: str, trials: int, overrides: list[str], data: Path, root: Path,
                workers: int) -> dict[str, dict]:
    """`dsrsd tune` of every model with the same budget: `trials` trials on the same data, preset,
    overrides + train.threads=1 and sampler seed, into ROOT/<model>/ (continued when there),
    `workers` studies at a time; returns model -> the tune summary, in `models` order."""
    from dsrsd_cli.engine.compare import parse_models

    if trials < 1:
        raise SystemExit(f"--tune-trials {trials}: must be at least 1 to tune")
    names = parse_models(models)
    sets = [*overrides, "train.threads=1"]
    jobs = [(m, trials, preset, sets, str(data), str(tune_dir(root, m))) for m in names]
    jobs.sort(key=lambda job: SLOW_FIRST.get(job[0].partition(":")[0], 9))
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=leave_with, initargs=(os.getpid(),)) as pool:
            summaries = pool.map(_tune_one, jobs, chunksize=1)
    else:
        summaries = [_tune_one(job) for job in jobs]
    by_model = dict(zip((job[0] for job in jobs), summaries))
    for model, summary in by_model.items():
        if summary["finished"] > trials:
            raise SystemExit(
                f"{summary['out']}: the study of {model} holds {summary['finished']} finished trials, more than "
                f"--tune-trials {trials}: every model must get the same budget; use --tune-trials {summary['finished']} "
                "(or another --out)")
    return {m: by_model[m] for m in names}


def tuned_values(summary: dict) -> dict | None:
    """The searched keys' values in the study's best.toml (key -> value); None when no trial completed."""
    from dsrsd_cli.config import flat_keys, load_config

    if summary["best"] is None or not summary.get("best_toml"):
        return None
    best = flat_keys(load_config(summary["best_toml"]))
    return {key: best[key] for key in summary["space"]}


def as_sets(values: dict | None) -> list[str]:
    """Tuned values as --set items (exact: JSON numbers round-trip); none for an untuned model."""
    return [f"{key}={json.dumps(value)}" for key, value in (values or {}).items()]


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tuning_lines(summaries: dict[str, dict], values: dict[str, dict | None], *, trials: int, preset: str, root: Path,
                 seconds: float, workers: int, note: str = "") -> list[str]:
    """The part's markdown "Tuning" section."""
    lines = ["### Tuning", "",
             f"Every model below tuned by `dsrsd tune` with the same budget, **{trials} trials** each (TPE sampler seed "
             f"{TUNE_SEED}, median pruning, validation AUC only), on the same prepared data, preset `{preset}` and overrides, "
             f"`train.threads=1`; studies in `{root}/<model>/`. The seeded test runs take each model's best.toml values "
             "for the searched keys; every other setting, train.seed per seed index included, is the plan's."
             + (f" {note}" if note else ""), "",
             "| model | finished trials (complete / pruned / failed) | best valid AUC | tuned values |", "|---|---|---:|---|"]
    untuned = []
    for model, s in summaries.items():
        counts = f"{s['finished']} ({s['complete']} / {s['pruned']} / {s['failed']})"
        if values.get(model) is None:
            untuned.append(model)
            lines.append(f"| {model} | {counts} | — | no complete trial: shipped preset `{preset}` |")
        else:
            tuned = ", ".join(f"{k}={_fmt(v)}" for k, v in values[model].items())
            lines.append(f"| {model} | {counts} | {s['best']['valid_auc']:.4f} | {tuned} |")
    if untuned:
        lines += ["", f"**Not tuned** (no complete trial in {trials}): {', '.join(untuned)}: "
                      f"the seeded runs use the shipped preset `{preset}`."]
    trial_seconds = sum(t["seconds"] or 0 for s in summaries.values() for t in s["trials"])
    finished = sum(s["finished"] for s in summaries.values())
    lines += ["", f"Tuning time: {trial_seconds:.0f} s of trials in all ({finished} finished trials over {len(summaries)} "
                  f"studies); {seconds:.0f} s wall in this invocation ({workers} workers, 1 thread each; trials "
                  "finished earlier are reused, not retrained).", ""]
    return lines


def tuning(key: str, preset: str, models: str, overrides: list[str], data: Path, args,
           note: str = "") -> tuple[dict[str, dict | None] | None, list[str]]:
    """The part's tuning step: (model -> tuned values, or None when --tune-trials is 0; markdown lines)."""
    if args.tune_trials <= 0:
        return None, []
    root = args.out / "tune" / key
    t0 = time.time()
    summaries = tune_models(preset, models, args.tune_trials, overrides, data, root, args.workers)
    values = {model: tuned_values(s) for model, s in summaries.items()}
    return values, tuning_lines(summaries, values, trials=args.tune_trials, preset=preset, root=root,
                                seconds=time.time() - t0, workers=args.workers, note=note)


def prepared_sample(dataset: str, out: Path) -> Path:
    from dsrsd_cli.data.prepare import prepare_dataset

    data = out / "data" / dataset
    if not (data / "manifest.json").exists():
        prepare_dataset(dataset=dataset, raw=None, out=data, seed=0, force=True)
    return data


def prepared_real_oulad(out: Path) -> Path:
    from dsrsd_cli.data.prepare import prepare_dataset

    data = out / "data" / "oulad_real"
    if not (data / "manifest.json").exists():
        prepare_dataset(dataset="oulad", raw=ROOT / "tests" / "fixtures" / "oulad", out=data, seed=0, force=True)
    return data


# ---------------------------------------------------------------- oracle and diagnostics

def oracle_auc(dataset: str, data: Path, run_dir: Path) -> dict[str, float]:
    """AUC of the simulator's true probabilities on the run's test rows.

    "oracle": the probabilities an ideal model reading the same logs is measured against
    (EdNet: p_correct; OULAD: `oracle_at_risk` at the run's cutoff, which conditions on the
    withdrawal the logs show). OULAD also gives "latent_only": p_at_risk, which ignores it.
    EdNet also gives "ceiling": the oracle with each learner's ability and each question's
    difficulty learned from the logs (benchmarks/ednet_ceiling.py).
    """
    manifest = json.loads((data / "manifest.json").read_text())
    truth = pd.read_parquet(manifest["sample"]["ground_truth"])
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    if dataset == "ednet":
        inter = pd.read_parquet(data / "interactions.parquet", columns=["user", "position", "timestamp", "question"])
        qids = pd.read_parquet(data / "questions.parquet", columns=["question", "question_id"])
        rows = pred.merge(inter, on=["user", "position"]).merge(qids, on="question")
        from ednet_ceiling import with_learned_terms

        rows = rows.merge(with_learned_terms(truth, data), on=["user", "timestamp", "question_id"], how="left")
        columns = {"oracle": "p_correct", "ceiling": "logit_learned"}
    else:
        from dsrsd_cli.samples.oulad import oracle_at_risk

        cutoff = json.loads((run_dir / "config.json").read_text())["config"]["data"]["cutoff_day"]
        truth = truth.assign(p_oracle=oracle_at_risk(truth, cutoff))
        rows = pred.merge(truth, on=["code_module", "code_presentation", "id_student"], how="left")
        columns = {"oracle": "p_oracle", "latent_only": "p_at_risk"}
    if rows[list(columns.values())].isna().any().any() or len(rows) != len(pred):
        raise SystemExit(f"ground truth does not cover the test rows of {run_dir}")
    return {name: float(roc_auc_score(rows["label"], rows[col])) for name, col in columns.items()}


def mechanisms(run_dir: Path) -> dict:
    """DSRSD-Net's mechanism diagnostics on validation (the last epoch's, from history.csv) and
    on test (`dsrsd explain`)."""
    from dsrsd_cli.engine.explain import explain_run

    history = pd.read_csv(run_dir / "history.csv")
    best = history.iloc[int(history["valid_auc"].idxmax())]
    valid = {k[5:]: best[k] for k in history.columns if k.startswith("mech_")}
    test = explain_run(run_dir, split="test", device="cpu")["mechanisms"]
    return {"valid": valid, "test": test}


MECHANISM_ROWS = [
    ("InfoNCE (shuffled pairs / ln N)", "align_infonce", lambda m: f"{m['align_infonce_shuffled']:.3f} / {m['align_infonce_chance']:.3f}"),
    ("top-1 retrieval (chance 1/N)", "align_top1", lambda m: f"{m['align_top1_chance']:.4f}"),
    ("shared effective rank (of k)", "shared_effective_rank", lambda m: f"{m['shared_rank_max']:.0f}"),
    ("shared mean |off-diag corr|", "shared_mean_abs_offdiag_corr", lambda m: "0"),
    ("shared per-dim std (mean)", "shared_std_mean", lambda m: "1"),
    ("|cos(shared, private)| (random)", "sp_abs_cosine", lambda m: f"{m['sp_abs_cosine_chance']:.3f}"),
    ("gate entropy (max ln G)", "gate_entropy", lambda m: f"{m['gate_entropy_max']:.3f}"),
    ("dominant stream share", "gate_dominant_share", lambda m: f"{m.get('gate_dominant', '?')}"),
]


def mechanism_lines(diag: dict) -> list[str]:
    lines = ["| mechanism | validation | test | reference |", "|---|---:|---:|---|"]
    for label, key, ref in MECHANISM_ROWS:
        v, t = diag["valid"].get(key), diag["test"].get(key)
        lines.append(f"| {label} | {'-' if v is None else f'{v:.4f}'} | {'-' if t is None else f'{t:.4f}'} | {ref(diag['test'])} |")
    return lines


# ---------------------------------------------------------------- tables

def comparison_lines(result: dict, *, valid_auc: bool = False) -> list[str]:
    """Markdown: test AUC mean ± std, Δ and combined DeLong p vs DSRSD-Net, AUC without each modality (drop)."""
    mods = result["modalities"]
    head = "| model | test AUC (mean ± std) | Δ vs DSRSD | p (DeLong, combined) |" + (" valid AUC |" if valid_auc else "")
    lines = [head + " " + " | ".join(f"AUC w/o {m} (drop)" for m in mods) + " |",
             "|---|---|---|---|" + ("---|" if valid_auc else "") + "---|" * len(mods)]
    for m in result["models"]:
        auc = m["metrics"]["auc"]
        vs = m.get("vs_reference")
        p = vs["combined"]["auc"].get("p") if vs else None
        cells = [m["label"], f"{auc['mean']:.4f} ± {auc['std'] or 0:.4f}",
                 f"{vs['diff']['auc']:+.4f}" if vs else "—", f"{p:.2g}" if p is not None else "—"]
        if valid_auc:
            valid = [json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["valid"]["auc"] for r in m["runs"]]
            cells.append(f"{sum(valid) / len(valid):.4f}")
        cells += [f"{m['absent_auc'][mod]['mean']:.4f} ({auc['mean'] - m['absent_auc'][mod]['mean']:+.4f})" for mod in mods]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def drop(result: dict, label: str, modality: str) -> float:
    m = next(m for m in result["models"] if m["label"] == label)
    return m["metrics"]["auc"]["mean"] - m["absent_auc"][modality]["mean"]


def versus_targets(name: str, result: dict) -> list[tuple[str, bool, str]]:
    targets = []
    for m in result["models"]:
        if m["label"] == result["reference"]:
            continue
        vs = m["vs_reference"]
        p = vs["combined"]["auc"].get("p")
        ahead = vs["diff"]["auc"] < 0 and p is not None and p < 0.05
        targets.append((f"{name}: DSRSD-Net above {m['label']} (p < 0.05)", ahead, f"Δ {-vs['diff']['auc']:+.4f}, p {p:.2g}"))
    return targets


# ---------------------------------------------------------------- parts

def sample_part(dataset: str, args) -> tuple[list[str], list]:
    from dsrsd_cli.engine.compare import compare

    data = prepared_sample(dataset, args.out)
    models = args.models or MODELS[dataset]
    tuned, tune_md = tuning(dataset, PRESETS[dataset], models, args.set, data, args)
    t0 = time.time()
    runs = train_all(PRESETS[dataset], models, args.seeds, args.set, data, args.out / f"compare_{dataset}", args.workers,
                     tuned, runs_folder(args.tune_trials))
    result = compare(runs, out=args.out / f"compare_{dataset}", device="cpu")
    ref = next(m for m in result["models"] if m["label"] == result["reference"])
    ref_run = Path(ref["runs"][0]["run_dir"])
    oracles = oracle_auc(dataset, data, ref_run)
    oracle, dsrsd = oracles["oracle"], ref["metrics"]["auc"]["mean"]
    latent = (f" (the latent-only p_at_risk, which ignores the withdrawal the logs show: {oracles['latent_only']:.4f})"
              if "latent_only" in oracles else "")
    if "ceiling" in oracles:
        latent = (f"; with each learner's ability and each question's difficulty learned from the logs instead of known "
                  f"(benchmarks/ednet_ceiling.py; content and focus still known): {oracles['ceiling']:.4f}")
    lines = [f"## Built-in {dataset} sample ({result['test_rows']:,} test rows, {result['learners']:,} learners, "
             f"{args.seeds} seeds, preset `{PRESETS[dataset]}`{_tuned_title(args)})", "",
             f"Oracle AUC (ground-truth probabilities, same test rows): **{oracle:.4f}**{latent}; "
             f"DSRSD-Net {dsrsd:.4f} (gap {oracle - dsrsd:+.4f}). Training: {time.time() - t0:.0f} s for {len(runs)} runs.", ""]
    lines += comparison_lines(result) + [""]
    diag = mechanisms(ref_run)
    lines += [f"DSRSD-Net mechanism diagnostics (seed {ref['runs'][0]['seed']}, best epoch on validation, and test):", ""]
    lines += mechanism_lines(diag) + [""] + tune_md
    targets = [(f"{dataset}: DSRSD-Net within 0.01 of the oracle", oracle - dsrsd <= 0.01, f"gap {oracle - dsrsd:+.4f}")]
    targets += versus_targets(dataset, result)
    for mod in result["modalities"]:
        for base in ("early", "concat"):
            if any(m["label"] == base for m in result["models"]):
                d, b = drop(result, result["reference"], mod), drop(result, base, mod)
                targets.append((f"{dataset}: without {mod}, DSRSD-Net loses less than {base}", d < b, f"{d:.4f} vs {b:.4f}"))
    infonce, chance = diag["valid"].get("align_infonce"), diag["valid"].get("align_infonce_chance")
    if infonce is not None:
        targets.append((f"{dataset}: validation InfoNCE at most half of ln N", infonce <= chance / 2, f"{infonce:.3f} vs ln N {chance:.3f}"))
    return lines, targets


def real_part(args) -> tuple[list[str], list]:
    from dsrsd_cli.engine.compare import compare

    data = prepared_real_oulad(args.out)
    models = args.models or REAL_MODELS
    overrides = [*REAL_OVERRIDES, *args.set_real]
    tuned, tune_md = tuning("real", "oulad", models, overrides, data, args)
    runs = train_all("oulad", models, args.seeds, overrides, data, args.out / "compare_oulad_real", args.workers,
                     tuned, runs_folder(args.tune_trials))
    result = compare(runs, out=args.out / "compare_oulad_real", device="cpu")
    lines = [f"## Real OULAD extract: at_risk at cutoff day 100 ({result['test_rows']:,} test registrations, "
             f"{args.seeds} seeds{_tuned_title(args)}{''.join(f', {o}' for o in args.set_real)})", ""]
    lines += comparison_lines(result, valid_auc=True) + [""] + tune_md
    return lines, versus_targets("real OULAD", result)


def ablation_part(dataset: str, args) -> tuple[list[str], list]:
    from dsrsd_cli.engine.compare import compare

    data = prepared_sample(dataset, args.out)
    out = args.out / f"compare_{dataset}"   # shares the dsrsd runs of the sample part
    tuned, tune_md = tuning(dataset, PRESETS[dataset], "dsrsd", args.set, data, args,
                            note="Here the study of dsrsd (shared with the sample part) gives its values to dsrsd "
                                 "and to every ablation variant: each variant is the tuned DSRSD-Net with one component removed.")
    if tuned is not None:
        tuned = {model: tuned["dsrsd"] for model in ABLATIONS.split(",")}
    runs = train_all(PRESETS[dataset], ABLATIONS, args.seeds, args.set, data, out, args.workers, tuned, runs_folder(args.tune_trials))
    result = compare(runs, out=args.out / f"ablation_{dataset}", device="cpu")
    lines = [f"## Ablations on the built-in {dataset} sample ({args.seeds} seeds{_tuned_title(args)}; "
             "Δ and p against full DSRSD-Net)", ""]
    lines += comparison_lines(result, valid_auc=True) + [""] + tune_md
    targets = []
    full = next(m for m in result["models"] if m["label"] == result["reference"])
    full_valid = _mean_valid(full)
    for m in result["models"]:
        if m is full:
            continue
        valid_cost = full_valid - _mean_valid(m)
        robust_cost = max(drop(result, m["label"], mod) - drop(result, full["label"], mod) for mod in result["modalities"])
        targets.append((f"{dataset}: {m['label']} costs validation AUC or robustness", valid_cost > 0 or robust_cost > 0,
                        f"valid AUC {-valid_cost:+.4f}, largest extra drop without a modality {robust_cost:+.4f}"))
    return lines, targets


def _tuned_title(args) -> str:
    return f", every model tuned with {args.tune_trials} trials" if args.tune_trials > 0 else ""


def _mean_valid(model: dict) -> float:
    values = [json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["valid"]["auc"] for r in model["runs"]]
    return sum(values) / len(values)


def curve_part(dataset: str, args) -> tuple[list[str], list]:
    from dsrsd_cli.config import load_config
    from dsrsd_cli.engine.compare import compare, curve_points, training_learners, write_learning_curve

    data = prepared_sample(dataset, args.out)
    models = args.models or CURVE_MODELS
    out = args.out / f"curve_{dataset}"
    tuned, tune_md = tuning(dataset, PRESETS[dataset], models, args.set, data, args,
                            note="The studies are those of the sample part, tuned on the full training set; "
                                 "their values are used at every train fraction.")
    points = []
    for f in CURVE_FRACTIONS:
        sets = [*args.set, f"data.train_fraction={f}"] if f < 1 else list(args.set)
        folder = out / f"fraction_{f:g}" if f < 1 else args.out / f"compare_{dataset}"   # 1.0: the sample part's runs
        runs = train_all(PRESETS[dataset], models, args.seeds, sets, data, folder, args.workers, tuned,
                         runs_folder(args.tune_trials))
        result = compare(runs, out=out / f"fraction_{f:g}", device="cpu")
        cfg = load_config(PRESETS[dataset], [*sets, f"data.path={json.dumps(str(data))}"])
        points += curve_points(result, f, training_learners(cfg))
    curve = write_learning_curve(out, PRESETS[dataset], CURVE_FRACTIONS, points)
    lines = [f"## Learning curve on the built-in {dataset} sample ({args.seeds} seeds{_tuned_title(args)})", ""]
    lines += (out / "learning_curve.md").read_text().splitlines()[2:] + [""] + tune_md
    targets = []
    for f in CURVE_FRACTIONS:
        at = {p["model"]: p for p in curve["points"] if p["fraction"] == f}
        if "gbdt" in at and "dsrsd" in at:
            d, g = at["dsrsd"]["auc_mean"], at["gbdt"]["auc_mean"]
            targets.append((f"{dataset}: DSRSD-Net at or above gbdt with {at['dsrsd']['train_learners']:,} learners", d >= g,
                            f"{d:.4f} vs {g:.4f}"))
    return lines, targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/quality"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parts", default="ednet,oulad,real,ablation-ednet,ablation-oulad,curve-ednet,curve-oulad")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the sample parts, as `dsrsd train --set` (repeatable)")
    ap.add_argument("--set-real", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the real part, e.g. train.epochs=6 for a smaller equal budget (repeatable)")
    ap.add_argument("--models", default=None, help="a subset for a quicker look, e.g. dsrsd,early,gbdt (default: the part's)")
    ap.add_argument("--tune-trials", type=int, default=0, metavar="N",
                    help="equal tuning: with N > 0, every model of a part (DSRSD-Net, each baseline, gbdt) is first tuned by "
                         "`dsrsd tune` with N trials on the same data, preset, overrides and seed (validation AUC only), "
                         "into OUT/tune/<part or dataset>/<model>/ (continued when there); its seeded runs then use the "
                         "tuned values of the searched keys (run folders .../runs-tuned-N/), the ablation variants "
                         "DSRSD-Net's. 0 (default): the shipped presets, no tuning")
    args = ap.parse_args()
    if args.tune_trials < 0:
        raise SystemExit(f"--tune-trials {args.tune_trials}: must be 0 (no tuning) or more")
    parts = {
        "ednet": lambda: sample_part("ednet", args), "oulad": lambda: sample_part("oulad", args), "real": lambda: real_part(args),
        "ablation-ednet": lambda: ablation_part("ednet", args), "ablation-oulad": lambda: ablation_part("oulad", args),
        "curve-ednet": lambda: curve_part("ednet", args), "curve-oulad": lambda: curve_part("oulad", args),
    }
    unknown = [p for p in args.parts.split(",") if p not in parts]
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; choose from {', '.join(parts)}")
    (args.out / "parts").mkdir(parents=True, exist_ok=True)
    for name in args.parts.split(","):
        t0 = time.time()
        lines, targets = parts[name]()
        lines.append(f"Part `{name}`: {time.time() - t0:.0f} s wall time ({args.workers} workers, 1 thread each"
                     f"{f', tuning included' if args.tune_trials > 0 else ''}).")
        (args.out / "parts" / f"{name}.md").write_text("\n".join(lines) + "\n")
        (args.out / "parts" / f"{name}.targets.json").write_text(json.dumps([(t, bool(met), fig) for t, met, fig in targets]))
        print("\n".join(lines), flush=True)
    report = ["# dsrsd quality benchmark", ""]
    targets = []
    for name in parts:
        if (args.out / "parts" / f"{name}.md").exists():
            report += (args.out / "parts" / f"{name}.md").read_text().splitlines() + [""]
            targets += json.loads((args.out / "parts" / f"{name}.targets.json").read_text())
    report += ["## Targets", "", "| target | met | figures |", "|---|---|---|"]
    report += [f"| {name} | {'yes' if met else '**no**'} | {figures} |" for name, met, figures in targets]
    (args.out / "quality.md").write_text("\n".join(report) + "\n")
    sys.stdout.write("\n".join(report[-len(targets) - 4:]) + "\n")


if __name__ == "__main__":
    main()
