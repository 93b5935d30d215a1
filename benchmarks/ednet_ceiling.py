"""How much of the EdNet sample's oracle AUC is within reach: the oracle with some latents
learned from the logs instead of known.

    python benchmarks/ednet_ceiling.py DATA RUN    # DATA: a prepared built-in sample, RUN: a run on it

The simulator's logit is base + item + content + behavior (dsrsd_cli/samples/ednet_model.py),
and ground_truth.parquet holds each term of every answer. The oracle knows all four. Here two
of them are replaced by estimates from what the logs show:
  item   each question's term: its MAP estimate from the TRAINING learners' answers (a Gaussian
         prior with the terms' mean and variance over the questions; the other three terms of
         each answer as known offsets);
  base   each learner's ability: learned causally, bundle by bundle, from that learner's
         earlier answers only (a Gaussian assumed-density filter with prior sd `theta_sd`; the
         population's growth curve growth_mean * log1p(answered / growth_scale) taken as known).
The content (tag skills) and behavior (focus) terms stay known, so this ceiling is still above
what a model that must learn those from the logs too can reach: a model's gap to the oracle
is at least its gap to the oracle minus (oracle - ceiling).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TERMS = ("logit_base", "logit_item", "logit_content", "logit_behavior")


def item_terms(truth: pd.DataFrame, train: np.ndarray, newton_steps: int = 30) -> np.ndarray:
    """(n,) each row's question term, estimated from the rows where `train` is True."""
    code = truth["question_id"].astype("category").cat.codes.to_numpy()
    n_questions = int(code.max()) + 1
    per_question = pd.Series(truth["logit_item"].to_numpy()).groupby(code).first()
    prior_mean, prior_var = float(per_question.mean()), float(per_question.var())
    offset = truth[[t for t in TERMS if t != "logit_item"]].sum(axis=1).to_numpy()
    y = truth["correct"].to_numpy().astype(float)
    estimate = np.full(n_questions, prior_mean)
    for _ in range(newton_steps):   # one independent 1-D Newton problem per question
        p = 1.0 / (1.0 + np.exp(-(offset + estimate[code])))
        gradient = np.bincount(code[train], (y - p)[train], n_questions) - (estimate - prior_mean) / prior_var
        curvature = np.bincount(code[train], (p * (1 - p))[train], n_questions) + 1.0 / prior_var
        estimate += gradient / curvature
    return estimate[code]


def ability_terms(truth: pd.DataFrame, sim: dict) -> np.ndarray:
    """(n,) each row's base term as known before its bundle from the learner's earlier bundles.
    `truth` rows must be grouped by learner in time order, a bundle's rows sharing a timestamp."""
    users, stamps = truth["user"].to_numpy(), truth["timestamp"].to_numpy()
    answered = truth.groupby("user").cumcount().to_numpy() - truth.groupby(["user", "timestamp"]).cumcount().to_numpy()
    curve = sim["growth_mean"] * np.log1p(answered / sim["growth_scale"])           # before the bundle
    rest = truth[[t for t in TERMS if t != "logit_base"]].sum(axis=1).to_numpy() + curve
    y = truth["correct"].to_numpy().astype(float)
    prior_mean, prior_var = sim["intercept"], sim["theta_sd"] ** 2
    starts = np.flatnonzero(np.r_[True, (users[1:] != users[:-1]) | (stamps[1:] != stamps[:-1])])
    ends = np.r_[starts[1:], len(truth)]
    out = np.empty(len(truth))
    mean = var = 0.0
    for s, e in zip(starts, ends):
        if s == 0 or users[s] != users[s - 1]:
            mean, var = prior_mean, prior_var
        out[s:e] = mean + curve[s:e]
        p = 1.0 / (1.0 + np.exp(-(rest[s:e] + mean)))
        var = 1.0 / (1.0 / var + float((p * (1 - p)).sum()))    # one Newton step from the prior state
        mean += var * float((y[s:e] - p).sum())
    return out


def with_learned_terms(truth: pd.DataFrame, data: Path) -> pd.DataFrame:
    """`truth` + logit_learned: the oracle's logit with the item and base terms learned."""
    manifest = json.loads((Path(data) / "manifest.json").read_text())
    sim = json.loads((Path(manifest["sample"]["ground_truth"]).parent / "sample_params.json").read_text())["simulator"]
    splits = pd.read_parquet(Path(data) / "splits.parquet", columns=["user", "split"])
    truth = truth.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    train = truth["user"].map(splits.set_index("user")["split"]).eq("train").to_numpy()
    learned = item_terms(truth, train) + ability_terms(truth, sim)
    return truth.assign(logit_learned=learned + truth["logit_content"] + truth["logit_behavior"])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quality import oracle_auc

    print(oracle_auc("ednet", Path(sys.argv[1]), Path(sys.argv[2])))
