"""Quality benchmark (issue 6): DSRSD-Net against every baseline, the oracle, and gradient boosting.

    python benchmarks/quality.py --out bench_out/quality            # the full plan (about an hour on 2 cores)
    python benchmarks/quality.py --seeds 2 --epochs 3 --parts oulad,real   # a quicker look

For each built-in sample (default size): prepare it, train every registered model with the
same preset, data, budget and seeds (2 runs at a time, 1 thread each), compare them with
`dsrsd compare` (paired clustered-DeLong tests against DSRSD-Net, absent-modality AUCs), and
compute the oracle AUC of the ground-truth probabilities on the same test rows. On the real
OULAD extract (tests/fixtures/oulad: 32,593 registrations), train DSRSD-Net for at_risk at
cutoff day 100 and fit scikit-learn's HistGradientBoostingClassifier on features flattened
from the very same tensors (same rows, same split, same cutoff). Writes OUT/quality.md.
Tuning happens on validation data only: every figure here is read once, from test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "ednet": "dsrsd,early,late,concat,coattn,single:item,single:content,single:behavior",
    "oulad": "dsrsd,early,late,concat,coattn,single:demographics,single:clicks,single:assessments",
}
PRESETS = {"ednet": "default", "oulad": "oulad"}


def _train_one(job: tuple[dict, str]) -> str:
    from rich.console import Console

    from dsrsd_cli.config import RunConfig
    from dsrsd_cli.engine.compare import ensure_run

    cfg_dict, run_dir = job
    cfg = RunConfig.model_validate(cfg_dict)
    t0 = time.time()
    ensure_run(cfg, Path(run_dir), console=Console(stderr=True, quiet=True), quiet=True)
    print(f"  trained {cfg.model.name} seed {cfg.train.seed} in {time.time() - t0:.0f}s", flush=True)
    return run_dir


def train_all(preset: str, models: str, seeds: int, overrides: list[str], data: Path, out: Path, workers: int) -> list[Path]:
    from dsrsd_cli.engine.compare import plan_configs, run_folder_name

    configs = plan_configs(preset, models=models, seeds=seeds, overrides=[*overrides, "train.threads=1"], data=data)
    jobs = [(c.model_dump(), str(out / "runs" / run_folder_name(c.model.name, c.train.seed))) for c in configs]
    with mp.get_context("spawn").Pool(workers) as pool:
        return [Path(p) for p in pool.map(_train_one, jobs, chunksize=1)]


def oracle_auc(dataset: str, data: Path, run_dir: Path) -> dict[str, float]:
    """AUC of the simulator's true probabilities on the run's test rows.

    "oracle": the probabilities an ideal model reading the same logs is measured against
    (EdNet: p_correct; OULAD: `oracle_at_risk` at the run's cutoff, which conditions on the
    withdrawal the logs show). OULAD also gives "latent_only": p_at_risk, which ignores it.
    """
    manifest = json.loads((data / "manifest.json").read_text())
    truth = pd.read_parquet(manifest["sample"]["ground_truth"])
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    if dataset == "ednet":
        inter = pd.read_parquet(data / "interactions.parquet", columns=["user", "position", "timestamp", "question"])
        qids = pd.read_parquet(data / "questions.parquet", columns=["question", "question_id"])
        rows = pred.merge(inter, on=["user", "position"]).merge(qids, on="question")
        rows = rows.merge(truth, on=["user", "timestamp", "question_id"], how="left")
        columns = {"oracle": "p_correct"}
    else:
        from dsrsd_cli.data.sample_oulad import oracle_at_risk

        cutoff = json.loads((run_dir / "config.json").read_text())["config"]["data"]["cutoff_day"]
        truth = truth.assign(p_oracle=oracle_at_risk(truth, cutoff))
        rows = pred.merge(truth, on=["code_module", "code_presentation", "id_student"], how="left")
        columns = {"oracle": "p_oracle", "latent_only": "p_at_risk"}
    if rows[list(columns.values())].isna().any().any() or len(rows) != len(pred):
        raise SystemExit(f"ground truth does not cover the test rows of {run_dir}")
    return {name: float(roc_auc_score(rows["label"], rows[col])) for name, col in columns.items()}


def sample_part(dataset: str, args, report: list[str], targets: list[tuple[str, bool, str]]) -> None:
    from dsrsd_cli.data.prepare import prepare_dataset
    from dsrsd_cli.engine.compare import compare

    data = args.out / "data" / dataset
    if not (data / "manifest.json").exists():
        prepare_dataset(dataset=dataset, raw=None, out=data, seed=0, force=True)
    overrides = ([f"train.epochs={args.epochs}"] if args.epochs else []) + args.set
    t0 = time.time()
    models = MODELS[dataset] if args.models is None else args.models
    runs = train_all(PRESETS[dataset], models, args.seeds, overrides, data, args.out / f"compare_{dataset}", args.workers)
    result = compare(runs, out=args.out / f"compare_{dataset}", device="cpu")
    ref = [m for m in result["models"] if m["label"] == result["reference"]][0]
    oracles = oracle_auc(dataset, data, Path(ref["runs"][0]["run_dir"]))
    oracle = oracles["oracle"]
    full = {m["label"]: m["metrics"]["auc"]["mean"] for m in result["models"]}
    dsrsd = full[result["reference"]]
    latent = (f" (the latent-only p_at_risk, which ignores the withdrawal the logs show: {oracles['latent_only']:.4f})"
              if "latent_only" in oracles else "")
    report += [f"## Built-in {dataset} sample ({result['test_rows']:,} test rows, {result['learners']:,} learners)", "",
               f"Oracle AUC (ground-truth probabilities, same test rows): **{oracle:.4f}**{latent}; "
               f"DSRSD-Net {dsrsd:.4f} (gap {oracle - dsrsd:+.4f}). "
               f"Training: {time.time() - t0:.0f} s for {len(runs)} runs.", "",
               "| model | test AUC (mean ± std) | Δ vs DSRSD | p (DeLong, combined) | " + " | ".join(f"AUC w/o {m} (drop)" for m in result["modalities"]) + " |",
               "|---|---|---|---|" + "---|" * len(result["modalities"])]
    for m in result["models"]:
        auc = m["metrics"]["auc"]
        vs = m.get("vs_reference")
        p = vs["combined"]["auc"].get("p") if vs else None
        drops = [f"{m['absent_auc'][mod]['mean']:.4f} ({auc['mean'] - m['absent_auc'][mod]['mean']:+.4f})" for mod in result["modalities"]]
        report.append(f"| {m['label']} | {auc['mean']:.4f} ± {auc['std'] or 0:.4f} | {vs['diff']['auc']:+.4f} | {p:.2g} |" if vs else
                      f"| {m['label']} | {auc['mean']:.4f} ± {auc['std'] or 0:.4f} | — | — |")
        report[-1] += " " + " | ".join(drops) + " |"
    report.append("")

    by_label = {m["label"]: m for m in result["models"]}
    targets.append((f"{dataset}: DSRSD-Net within 0.01 of the oracle", oracle - dsrsd <= 0.01, f"gap {oracle - dsrsd:+.4f}"))
    for label, m in by_label.items():
        if label == result["reference"]:
            continue
        vs = m["vs_reference"]
        p = vs["combined"]["auc"].get("p")
        ahead = vs["diff"]["auc"] < 0 and p is not None and p < 0.05
        targets.append((f"{dataset}: DSRSD-Net above {label} (p < 0.05)", ahead, f"Δ {-vs['diff']['auc']:+.4f}, p {p:.2g}"))

    def drop(label: str, mod: str) -> float:
        m = by_label[label]
        return m["metrics"]["auc"]["mean"] - m["absent_auc"][mod]["mean"]

    for mod in result["modalities"]:
        for base in ("early", "concat"):
            if base in by_label:
                d, b = drop(result["reference"], mod), drop(base, mod)
                targets.append((f"{dataset}: without {mod}, DSRSD-Net loses less than {base}", d < b, f"{d:.4f} vs {b:.4f}"))


def flat_features(prepared, split: str, data_cfg) -> tuple[np.ndarray, np.ndarray]:
    """The loader's tensors for `split`, flattened into one row per registration."""
    from dsrsd_cli.data.loader import collate, make_dataset

    ds = make_dataset(prepared, split, data_cfg)
    b = collate([ds[i] for i in range(len(ds))])
    d, c, a = b.inputs["demographics"], b.inputs["clicks"], b.inputs["assessments"]
    weeks = c["weeks"] * c["week_mask"].unsqueeze(-1)
    seq = a["num"] * a["seq_mask"].unsqueeze(-1)
    cols = [d["cat"].float(), d["num"] * d["num_present"], weeks.sum(1), weeks.sum(2), a["type"].float(), seq.flatten(1)]
    return np.concatenate([t.numpy() for t in cols], axis=1), b.target.numpy()


def real_oulad_part(args, report: list[str], targets: list[tuple[str, bool, str]]) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from dsrsd_cli.config import load_config
    from dsrsd_cli.data.loader import make_spec, open_prepared
    from dsrsd_cli.data.prepare import prepare_dataset
    from dsrsd_cli.engine.compare import compare
    from dsrsd_cli.engine.stats import paired_auc_tests

    data = args.out / "data" / "oulad_real"
    if not (data / "manifest.json").exists():
        prepare_dataset(dataset="oulad", raw=ROOT / "tests" / "fixtures" / "oulad", out=data, seed=0, force=True)
    overrides = ["data.target=at_risk", "data.cutoff_day=100"] + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    runs = train_all("oulad", "dsrsd", args.seeds, overrides, data, args.out / "compare_oulad_real", args.workers)
    result = compare(runs, out=args.out / "compare_oulad_real", device="cpu")
    dsrsd_auc = result["models"][0]["metrics"]["auc"]

    cfg = load_config("oulad", [*overrides, f"data.path={json.dumps(str(data))}"])
    prepared = open_prepared(data)
    x_train, y_train = flat_features(prepared, "train", cfg.data)
    x_valid, y_valid = flat_features(prepared, "valid", cfg.data)
    x_test, y_test = flat_features(prepared, "test", cfg.data)
    n_cat = len(make_spec(prepared, cfg.data).cat_sizes)   # the first columns are categorical codes
    best = None
    for lr in (0.03, 0.1):   # tuned on validation only
        for leaves in (15, 31):
            hgb = HistGradientBoostingClassifier(learning_rate=lr, max_leaf_nodes=leaves, max_iter=400, random_state=0,
                                                 categorical_features=list(range(n_cat)), early_stopping=True)
            hgb.fit(x_train, y_train)
            v = roc_auc_score(y_valid, hgb.predict_proba(x_valid)[:, 1])
            if best is None or v > best[0]:
                best = (v, hgb, lr, leaves)
    p_hgb = best[1].predict_proba(x_test)[:, 1]
    hgb_auc = roc_auc_score(y_test, p_hgb)
    pred = pd.read_parquet(Path(runs[0]) / "predictions.parquet")
    assert len(pred) == len(y_test) and np.array_equal(pred["label"].to_numpy(), y_test), "rows differ"
    test = paired_auc_tests(y_test, [pred["probability"].to_numpy()], [p_hgb], pred["id_student"].to_numpy())
    report += ["## Real OULAD extract: at_risk at cutoff day 100", "",
               f"{len(y_test):,} test registrations. DSRSD-Net test AUC {dsrsd_auc['mean']:.4f} ± {dsrsd_auc['std'] or 0:.4f} "
               f"({args.seeds} seeds); HistGradientBoosting {hgb_auc:.4f} (lr {best[2]}, {best[3]} leaves, chosen on valid AUC "
               f"{best[0]:.4f}); seed-0 paired DeLong p = {test['combined'].get('p', float('nan')):.2g}.", ""]
    targets.append(("real OULAD: DSRSD-Net AUC >= gradient boosting", dsrsd_auc["mean"] >= hgb_auc,
                    f"{dsrsd_auc['mean']:.4f} vs {hgb_auc:.4f}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/quality"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the preset's)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parts", default="ednet,oulad,real")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the sample parts, as `dsrsd train --set` (repeatable)")
    ap.add_argument("--models", default=None, help="a subset for a quicker look, e.g. dsrsd,early,concat (default: all)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = ["# dsrsd quality benchmark", "", f"seeds {args.seeds}, epochs {args.epochs or 'preset'}, parts {args.parts}", ""]
    t0 = time.time()
    targets: list[tuple[str, bool, str]] = []
    parts = {"ednet": lambda: sample_part("ednet", args, report, targets),
             "oulad": lambda: sample_part("oulad", args, report, targets),
             "real": lambda: real_oulad_part(args, report, targets)}
    for name in args.parts.split(","):
        parts[name]()
        (args.out / "quality.md").write_text("\n".join(report) + "\n")
    report += ["## Targets (issue 6)", "", "| target | met | figures |", "|---|---|---|"]
    report += [f"| {name} | {'yes' if met else '**no**'} | {figures} |" for name, met, figures in targets]
    report += ["", f"Total wall time: {time.time() - t0:.0f} s."]
    (args.out / "quality.md").write_text("\n".join(report) + "\n")
    sys.stdout.write("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
