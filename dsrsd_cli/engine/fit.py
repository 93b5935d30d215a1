"""Fitting the `gbdt` reference model: what `dsrsd train --model gbdt` runs.

It writes the same run folder as the gradient loop (engine/train.py): config.json,
model.safetensors, history.csv, metrics.json, predictions.parquet (test) and log.txt,
so evaluate, explain, compare and predict read it like any run.

    features   data/features.py: the train split out of fold (a training answer's own label
               never enters its question's difficulty), valid with the statistics of all
               training learners; the same learners, fractions and splits as every model.
    dropout    each modality group of each training row is hidden (NaN) with probability
               model.modality_dropout, never all of them (the neural models' rule).
    boosting   LightGBM, `gbdt.*` hyperparameters; the number of trees is chosen by early
               stopping on validation AUC (multi-class: log-loss). Test is never looked at.

A fit takes seconds to minutes and keeps no resumable state: an interrupted fit starts
over (`--resume` and `compare` refit it).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from rich.console import Console

from dsrsd_cli.config import RunConfig, flat_keys
from dsrsd_cli.data.loader import make_spec, open_prepared
from dsrsd_cli.engine import tensorboard
from dsrsd_cli.engine.checkpoint import LoopState
from dsrsd_cli.engine.runs import (
    LOG_FILE, METRICS_FILE, WEIGHTS_FILE, RunLog, claim_run_dir, read_run_info, save_weights, write_history, write_run_config,
)
from dsrsd_cli.engine.train import final_evaluation
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import read_json
from dsrsd_cli.model.gbdt import GBDTModel, hide_groups_at_random
from dsrsd_cli.model.registry import build_model, check_model


def lightgbm_params(cfg: RunConfig, n_outputs: int) -> dict:
    """LightGBM parameters from the config: deterministic, one seed, the run's threads."""
    g = cfg.gbdt
    objective = {"objective": "binary", "metric": "auc"} if n_outputs == 1 else {
        "objective": "multiclass", "num_class": n_outputs, "metric": "multi_logloss"}
    return {
        **objective,
        "learning_rate": g.learning_rate, "num_leaves": g.num_leaves, "min_data_in_leaf": g.min_data_in_leaf,
        "feature_fraction": g.feature_fraction, "lambda_l2": g.lambda_l2,
        "seed": cfg.train.seed, "deterministic": True, "force_row_wise": True,
        "num_threads": cfg.train.threads or torch.get_num_threads(), "verbosity": -1,
    }


def fit_run(cfg: RunConfig, *, out: Path | None, resume: Path | None, console: Console,
            on_epoch: Callable[[int, float], None] | None = None, test: bool = True) -> Path:
    """Fit `cfg` (a fitted model, e.g. gbdt) into a run folder; returns the folder.
    `test=False`: the final evaluation scores valid only (train_run)."""
    import lightgbm as lgb

    from dsrsd_cli.data.features import build_features, fit_question_stats

    prepared = open_prepared(cfg.data.path)
    spec = make_spec(prepared, cfg.data)
    check_model(spec, cfg.model.name)
    if resume is not None:
        run_dir = Path(resume)
        saved = read_run_info(run_dir).cfg
        same_log = cfg.train.model_copy(update={"log": saved.train.log})   # train.log never changes the fit
        if saved.model_dump() != cfg.model_copy(update={"data": saved.data, "train": same_log}).model_dump():
            raise BadInput(f"--resume {run_dir}: the settings differ from the run's; resume with the run's settings or start a new run")
        console.print(f"{run_dir}: a {cfg.model.name} fit keeps no partial state; fitting it again", highlight=False)
    else:
        run_dir = claim_run_dir(out)
    log = RunLog(run_dir / LOG_FILE)
    model: GBDTModel = build_model(spec, cfg.model, cfg.dsrsd)
    device = torch.device("cpu")
    write_run_config(run_dir, cfg, spec, prepared, model, device, 1)
    log(f"new fit: model {cfg.model.name}, preset {cfg.preset}, data {cfg.data.path}")

    started = time.perf_counter()
    stats = fit_question_stats(prepared, cfg.data) if spec.dataset == "ednet" else None
    train = build_features(prepared, cfg.data, "train", stats, out_of_fold=True)
    valid = build_features(prepared, cfg.data, "valid", stats)
    if len(train.label) == 0 or len(valid.label) == 0:
        raise BadInput(f"{cfg.data.path}: the train or valid split has no rows; prepare more data")
    x_train = hide_groups_at_random(train.x, train.groups, cfg.model.modality_dropout, cfg.train.seed)
    console.print(f"gbdt: {len(train.label):,} training rows x {len(train.names)} features "
                  f"({time.perf_counter() - started:.1f}s to build); boosting...", highlight=False)

    data_kw = dict(feature_name=list(train.names), categorical_feature=list(train.categorical), free_raw_data=False)
    d_train = lgb.Dataset(x_train, train.label, **data_kw)
    d_valid = lgb.Dataset(valid.x, valid.label, reference=d_train, **data_kw)
    curve: dict = {}
    booster = lgb.train(
        lightgbm_params(cfg, spec.n_outputs), d_train, num_boost_round=cfg.gbdt.max_rounds, valid_sets=[d_valid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(cfg.gbdt.early_stopping_rounds, verbose=False), lgb.record_evaluation(curve)],
    )
    seconds = time.perf_counter() - started
    best_round = booster.best_iteration or booster.current_iteration()
    metric = "auc" if spec.n_outputs == 1 else "multi_logloss"
    values = curve["valid"][metric]
    model.set_fitted(booster.model_to_string(num_iteration=best_round), stats.to_arrays() if stats is not None else {})
    save_weights(model, run_dir / WEIGHTS_FILE)

    # history.csv: the validation curve at about 50 rounds ("epoch" = trees so far) and at the best round.
    every = max(1, math.ceil(len(values) / 50))
    history = [{"epoch": r + 1, f"valid_{metric}": values[r]} for r in range(0, len(values), every)]
    if history[-1]["epoch"] != best_round:
        history.append({"epoch": best_round, f"valid_{metric}": values[best_round - 1]})
    history = sorted(history, key=lambda h: h["epoch"])
    history[-1]["seconds"] = round(seconds, 3)
    write_history(run_dir, history)
    best = values[best_round - 1]
    log(f"fitted {best_round} trees (of {len(values)} tried) in {seconds:.1f}s; valid {metric} {best:.5f}")

    where = LoopState(epoch=1, best_epoch=1, best_auc=best if metric == "auc" else -math.inf, finished=True, history=history)
    eval_batch = cfg.eval_batch
    # the validation curve per boosting round; a refit (--resume) hides the earlier fit's events
    curves = tensorboard.open_logger(cfg.train.log, run_dir, purge_step=0 if resume is not None else None)
    try:
        for r, value in enumerate(values):
            curves.scalars({metric: value}, r + 1, prefix="valid/")
        metrics = final_evaluation(model, run_dir, prepared, cfg, spec, device, where, eval_batch, console, log, test=test)
        curves.hparams(flat_keys(cfg), tensorboard.final_aucs(metrics), best_round)
    finally:
        curves.close()
    if on_epoch is not None:   # one "epoch": the validation AUC of the chosen trees (as the loop reports it)
        on_epoch(1, read_json(run_dir / METRICS_FILE)["valid"].get("auc", math.nan))
    return run_dir


def feature_importance(run_dir: Path) -> pd.DataFrame:
    """Gain importance per feature of a fitted gbdt run (for reports)."""
    from dsrsd_cli.engine.runs import load_weights

    model = GBDTModel(spec=read_run_info(run_dir).spec)
    model.load_state_dict(load_weights(Path(run_dir) / WEIGHTS_FILE))
    booster = model.booster
    return pd.DataFrame({"feature": booster.feature_name(), "gain": booster.feature_importance("gain")}).sort_values("gain", ascending=False)
