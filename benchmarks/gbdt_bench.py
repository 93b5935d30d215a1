"""Why `gbdt` uses LightGBM: LightGBM against scikit-learn's HistGradientBoosting on the very
same causal features, rows and split, with the same early stopping on validation.

    python benchmarks/gbdt_bench.py                       # built-in EdNet and OULAD samples
    python benchmarks/gbdt_bench.py --threads 2 --real    # also the real OULAD extract (cutoff day 100)

Prints, per dataset and library: fit seconds (median of --repeats), trees, validation and
test AUC. Both libraries get the same learning rate, leaves, minimum leaf size and L2.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]


def features(dataset: str, data: Path, overrides: list[str]):
    from dsrsd_cli.config import load_config
    from dsrsd_cli.data.features import build_features, fit_question_stats
    from dsrsd_cli.data.loader import open_prepared

    cfg = load_config("default" if dataset == "ednet" else "oulad", [*overrides, f'data.path="{data}"'])
    prepared = open_prepared(data)
    stats = fit_question_stats(prepared, cfg.data) if dataset == "ednet" else None
    return [build_features(prepared, cfg.data, split, stats, out_of_fold=split == "train") for split in ("train", "valid", "test")]


def fit_lightgbm(train, valid, threads: int):
    import lightgbm as lgb

    params = {"objective": "binary", "metric": "auc", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50,
              "lambda_l2": 1.0, "num_threads": threads, "verbosity": -1, "seed": 0, "deterministic": True, "force_row_wise": True}
    kw = dict(categorical_feature=list(train.categorical), free_raw_data=False)
    d_train = lgb.Dataset(train.x, train.label, **kw)
    booster = lgb.train(params, d_train, 2000, valid_sets=[lgb.Dataset(valid.x, valid.label, reference=d_train, **kw)],
                        callbacks=[lgb.early_stopping(50, verbose=False)])
    return booster.best_iteration, lambda x: booster.predict(x, num_iteration=booster.best_iteration)


def fit_sklearn(train, valid, threads: int):
    from threadpoolctl import threadpool_limits
    from sklearn.ensemble import HistGradientBoostingClassifier

    # HistGradientBoosting's early stopping holds out part of the train split itself; to give it the
    # same validation rows, fit with a growing number of trees (warm start) and stop on valid AUC.
    model = HistGradientBoostingClassifier(learning_rate=0.05, max_leaf_nodes=31, min_samples_leaf=50, l2_regularization=1.0,
                                           categorical_features=list(train.categorical) or None, warm_start=True,
                                           early_stopping=False, random_state=0, max_iter=0)
    best, best_auc, worse = 0, -1.0, 0
    with threadpool_limits(threads):
        for trees in range(50, 2001, 50):
            model.set_params(max_iter=trees)
            model.fit(train.x, train.label)
            auc = roc_auc_score(valid.label, model.predict_proba(valid.x)[:, 1])
            if auc > best_auc:
                best, best_auc, worse = trees, auc, 0
            else:
                worse += 1
                if worse >= 2:      # 100 trees without gain, as LightGBM's 50-round patience at this rate
                    break
        model.set_params(max_iter=best, warm_start=False)
        model.fit(train.x, train.label)
    return best, lambda x: model.predict_proba(x)[:, 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/gbdt"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real", action="store_true", help="also the real OULAD extract in tests/fixtures/oulad")
    args = ap.parse_args()
    from dsrsd_cli.data.prepare import prepare_dataset

    cases = []
    for dataset in ("ednet", "oulad"):
        data = args.out / "data" / dataset
        if not (data / "manifest.json").exists():
            prepare_dataset(dataset=dataset, raw=None, out=data, seed=0, force=True)
        cases.append((f"{dataset} sample", dataset, data, []))
    if args.real:
        data = args.out / "data" / "oulad_real"
        if not (data / "manifest.json").exists():
            prepare_dataset(dataset="oulad", raw=ROOT / "tests" / "fixtures" / "oulad", out=data, seed=0, force=True)
        cases.append(("real OULAD, day 100", "oulad", data, ["data.cutoff_day=100"]))
    print(f"{'data':22} {'library':10} {'rows':>9} {'fit s (median)':>15} {'trees':>6} {'valid AUC':>10} {'test AUC':>9}")
    for name, dataset, data, overrides in cases:
        train, valid, test = features(dataset, data, overrides)
        for library, fit in (("lightgbm", fit_lightgbm), ("sklearn", fit_sklearn)):
            seconds = []
            try:
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    trees, predict = fit(train, valid, args.threads)
                    seconds.append(time.perf_counter() - t0)
            except ValueError as e:   # e.g. scikit-learn's binning of a column that is missing on every row
                print(f"{name:22} {library:10} {len(train.label):>9,} failed: {e}", flush=True)
                continue
            v, t = roc_auc_score(valid.label, predict(valid.x)), roc_auc_score(test.label, predict(test.x))
            print(f"{name:22} {library:10} {len(train.label):>9,} {statistics.median(seconds):>15.2f} {trees:>6} {v:>10.4f} {t:>9.4f}", flush=True)


if __name__ == "__main__":
    main()
