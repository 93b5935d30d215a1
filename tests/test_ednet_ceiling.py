"""benchmarks/ednet_ceiling.py: the oracle with ability and question difficulty learned from the
logs. Its estimates must only use what a model could see: a learner's earlier bundles, and
the training learners' answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CEILING = Path(__file__).resolve().parents[1] / "benchmarks" / "ednet_ceiling.py"
SIM = {"growth_mean": 0.35, "growth_scale": 25.0, "intercept": 0.35, "theta_sd": 0.8}


@pytest.fixture(scope="module")
def ceiling():
    spec = importlib.util.spec_from_file_location("ednet_ceiling", CEILING)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _truth(n_users: int = 200, bundles: int = 30, n_questions: int = 40, seed: int = 0) -> pd.DataFrame:
    """Rows grouped by learner in time order, 1 or 2 questions a bundle, answers drawn from the terms."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 0.8, n_questions)
    theta = rng.normal(0, 0.8, n_users)
    rows = []
    for u in range(n_users):
        answered = 0
        for b in range(bundles):
            for _ in range(1 + b % 2):
                q = int(rng.integers(n_questions))
                base = SIM["intercept"] + theta[u] + SIM["growth_mean"] * np.log1p(answered / SIM["growth_scale"])
                rows.append((f"u{u}", 1000 * b, f"q{q}", base, -difficulty[q], rng.normal(0, 0.3), rng.normal(0, 0.3)))
            answered += 1 + b % 2
    truth = pd.DataFrame(rows, columns=["user", "timestamp", "question_id", "logit_base", "logit_item", "logit_content",
                                        "logit_behavior"])
    p = 1 / (1 + np.exp(-truth[["logit_base", "logit_item", "logit_content", "logit_behavior"]].sum(axis=1)))
    return truth.assign(correct=(rng.random(len(truth)) < p).astype(np.int8))


def test_ability_is_learned_from_earlier_bundles_only(ceiling):
    truth = _truth()
    before = ceiling.ability_terms(truth, SIM)
    user0 = np.flatnonzero(truth["user"].eq("u0").to_numpy())
    bundle_of = truth["timestamp"].to_numpy()[user0]
    changed = truth.copy()
    middle = user0[bundle_of == 10_000]
    changed.loc[middle, "correct"] = 1 - changed.loc[middle, "correct"]          # learner 0's 11th bundle
    after = ceiling.ability_terms(changed, SIM)
    later = user0[bundle_of > 10_000]
    untouched = np.setdiff1d(np.arange(len(truth)), later)
    assert np.array_equal(before[untouched], after[untouched])    # that bundle itself, earlier ones, other learners
    assert not np.allclose(before[later], after[later])           # later bundles learn from it
    # with 30 bundles, the estimate follows the true ability
    last = truth.groupby("user").tail(1).index
    assert np.corrcoef(before[last], truth.loc[last, "logit_base"])[0, 1] > 0.8


def test_question_terms_come_from_training_answers_only(ceiling):
    truth = _truth(seed=1)
    train = truth["user"].str[1:].astype(int).to_numpy() < 150
    before = ceiling.item_terms(truth, train)
    changed = truth.assign(correct=np.where(train, truth["correct"], 1 - truth["correct"]))
    assert np.array_equal(ceiling.item_terms(changed, train), before)
    per_question = pd.DataFrame({"q": truth["question_id"], "est": before, "true": truth["logit_item"]}).groupby("q").first()
    assert np.corrcoef(per_question["est"], per_question["true"])[0, 1] > 0.9


def test_a_prepared_samples_test_answers_change_nothing_of_the_training_learners(ceiling, tmp_path):
    """with_learned_terms reads the folder's splits: flipping every answer of the valid and
    test learners leaves the training learners' learned logits as they were."""
    import json

    truth = _truth(seed=2)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "sample_params.json").write_text(json.dumps({"simulator": SIM}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"sample": {"ground_truth": str(raw / "ground_truth.parquet")}}))
    users = truth["user"].unique()
    split = np.where(np.arange(len(users)) < 140, "train", np.where(np.arange(len(users)) < 170, "valid", "test"))
    pd.DataFrame({"user": users, "split": split}).to_parquet(data / "splits.parquet")
    before = ceiling.with_learned_terms(truth, data)
    held_out = truth["user"].isin(users[140:])
    after = ceiling.with_learned_terms(truth.assign(correct=np.where(held_out, 1 - truth["correct"], truth["correct"])), data)
    mine = ~before["user"].isin(users[140:])
    assert mine.sum() > 0 and np.array_equal(before.loc[mine, "logit_learned"], after.loc[mine, "logit_learned"])
    assert not np.allclose(before.loc[~mine, "logit_learned"], after.loc[~mine, "logit_learned"])
