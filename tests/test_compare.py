"""`dsrsd compare`: the paired tests (engine/stats.py), the refusals, and resuming a killed plan.

End to end on a small OULAD sample with the smoke_oulad preset: 3 models x 3 seeds trained
once without interruption and once killed (SIGKILL) mid-plan and resumed must give the same
table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from dsrsd_cli.config import load_config
from dsrsd_cli.engine import stats
from dsrsd_cli.engine.compare import compare, run_folder_name
from dsrsd_cli.engine.train import train_run
from dsrsd_cli.errors import BadInput

# ---------------------------------------------------------------- statistics


def test_weighted_auc_matches_sklearn_with_ties_and_counts_weights_as_copies():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    score = np.round(y * 0.4 + rng.normal(size=400), 1)            # many ties
    assert stats.weighted_auc(score, y, np.ones((1, 400)))[0] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    counts = rng.integers(0, 3, 400)
    copied = np.repeat(np.arange(400), counts)
    assert stats.weighted_auc(score, y, counts[None].astype(float))[0] == pytest.approx(roc_auc_score(y[copied], score[copied]), abs=1e-12)


def _brute_force_delong(y, scores):
    """DeLong's covariance from the O(m n) definition of the structural components."""
    pos, neg = y == 1, y == 0
    v10, v01 = [], []
    for s in scores:
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
    return np.cov(np.stack(v10)) / pos.sum() + np.cov(np.stack(v01)) / neg.sum()


def test_clustered_delong_with_one_row_per_learner_is_delong():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    a, b = np.round(y + rng.normal(size=300), 1), y * 0.5 + rng.normal(size=300)
    aucs, cov = stats.auc_covariance(y, [a, b], np.arange(300))
    assert aucs == pytest.approx([roc_auc_score(y, a), roc_auc_score(y, b)], abs=1e-12)
    # Obuchowski's f = I/(I-1) and 1/M, 1/N normalisations vs np.cov's 1/(m-1): equal up to O(1/n)
    assert np.allclose(cov, _brute_force_delong(y, [a, b]), rtol=0.02)


def test_clustered_delong_variance_matches_the_learner_bootstrap_and_grows_with_clustering():
    rng = np.random.default_rng(2)
    learners = np.repeat(np.arange(200), 25)
    effect = rng.normal(size=200)[learners] * 1.5                    # a learner effect on labels and scores
    y = (rng.random(5000) < 1 / (1 + np.exp(-(effect + rng.normal(size=5000))))).astype(int)
    a, b = effect + rng.normal(size=5000) * 2 + 0.3 * y, effect + rng.normal(size=5000) * 2 + 0.45 * y
    tests = stats.paired_auc_tests(y, [a], [b], learners)
    boot = stats.paired_bootstrap(y, [a], [b], learners, metrics=["auc"], n_boot=1500, seed=3)
    low, high = boot["auc"]["pairs"][0]["ci"]
    assert tests["pairs"][0]["se"] == pytest.approx((high - low) / 3.92, rel=0.2)
    _, cov_rows = stats.auc_covariance(y, [a], np.arange(5000))
    _, cov_learners = stats.auc_covariance(y, [a], learners)
    assert cov_learners[0, 0] > 1.5 * cov_rows[0, 0]                # ignoring the clusters would be overconfident


def test_bootstrap_p_values():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 2000)
    learners = np.repeat(np.arange(400), 5)
    p = 1 / (1 + np.exp(-(y - 0.5) * 0.6 + rng.normal(size=2000) * 0.3))
    same = stats.paired_bootstrap(y, [p, p], [p, p], learners, n_boot=200)
    assert all(same[m]["combined"]["p"] == 1.0 and same[m]["combined"]["diff"] == 0 for m in same)
    better = np.clip(p + (y - p) * 0.3, 0, 1)                        # closer to the labels on every row
    tests = stats.paired_bootstrap(y, [p, p], [better, better], learners, n_boot=200)
    assert tests["log_loss"]["combined"]["p"] < 0.01 and tests["log_loss"]["combined"]["diff"] < 0
    assert tests["log_loss"]["pairs"][0] == tests["log_loss"]["pairs"][1]
    assert stats.paired_auc_tests(y, [p], [p], learners)["combined"]["p"] == 1.0


# ---------------------------------------------------------------- end to end (OULAD sample)

PRESET = "smoke_oulad"
SETS = ["train.epochs=3", "train.max_steps_per_epoch=4", "train.threads=1", 'train.device="cpu"']
MODELS = "dsrsd,late,single:clicks"


@pytest.fixture(scope="module")
def data(oulad_sample) -> Path:
    return oulad_sample


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plan") / "uninterrupted"
    compare(preset=PRESET, models=MODELS, seeds=3, overrides=SETS, data=data, out=out, quiet=True, n_boot=200)
    return out


def _table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "comparison.csv")


def test_plan_writes_every_output_with_the_same_budget(uninterrupted):
    runs = sorted(p.name for p in (uninterrupted / "runs").iterdir())
    assert runs == sorted(run_folder_name(m, s) for m in MODELS.split(",") for s in range(3))
    result = json.loads((uninterrupted / "comparison.json").read_text())
    assert result["reference"] == "dsrsd" and result["same_budget"]
    assert [m["label"] for m in result["models"]] == MODELS.split(",")
    for m in result["models"]:
        assert m["seeds"] == [0, 1, 2] and m["budget"] == {"epochs": 3, "max_steps_per_epoch": 4, "batch_size": 32}
        assert len(m["runs"]) == 3 and m["metrics"]["auc"]["std"] is not None
        if m["label"] != "dsrsd":
            vs = m["vs_reference"]
            assert [(p["reference_seed"], p["seed"]) for p in vs["pairs"]] == [(0, 0), (1, 1), (2, 2)]
            assert 0 <= vs["combined"]["auc"]["p"] <= 1 and 0 <= vs["combined"]["log_loss"]["p"] <= 1
            assert vs["combined"]["auc"]["diff"] == pytest.approx(m["metrics"]["auc"]["mean"] - result["models"][0]["metrics"]["auc"]["mean"], abs=1e-9)
    clicks_only = result["models"][2]["absent_auc"]
    assert clicks_only["clicks"]["mean"] == pytest.approx(0.5)    # single:clicks without clicks: no information left
    table = _table(uninterrupted)
    assert list(table["model"]) == MODELS.split(",") and table["reference"].tolist() == [True, False, False]
    assert "| dsrsd | 3 |" in (uninterrupted / "comparison.md").read_text()
    assert (uninterrupted / "comparison.png").stat().st_size > 0


def _finished(out: Path) -> int:
    return sum((run / "predictions.parquet").exists() for run in (out / "runs").glob("*"))


def _mid_run(out: Path) -> bool:
    """A run that saved an epoch's state but has not finished: killing now exercises --resume."""
    return any((run / "state" / "state.pt").exists() and not (run / "predictions.parquet").exists() for run in (out / "runs").glob("*"))


def test_a_killed_compare_resumes_to_the_same_table(data, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    sets = [item for s in SETS for item in ("--set", s)]
    cmd = [sys.executable, "-m", "dsrsd_cli", "compare", "--preset", PRESET, "--models", MODELS, "--seeds", "3",
           "--data", str(data), "--out", str(out), *sets]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while not (_finished(out) >= 4 and _mid_run(out)):         # kill in the middle of the plan and of a run
            assert child.poll() is None, "compare finished before it could be killed"
            assert time.time() < deadline
            time.sleep(0.01)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert 4 <= _finished(out) < 9 and not (out / "comparison.csv").exists()

    result = compare(preset=PRESET, models=MODELS, seeds=3, overrides=SETS, data=data, out=out, quiet=True, n_boot=200)
    assert _finished(out) == 9 and len(result["models"]) == 3
    pd.testing.assert_frame_equal(_table(out), _table(uninterrupted), check_exact=False, rtol=0, atol=1e-9)


def test_compare_of_run_folders_matches_the_plan_and_labels_ablations(data, uninterrupted, tmp_path):
    runs = sorted((uninterrupted / "runs").iterdir())
    result = compare(runs, out=tmp_path / "again", n_boot=200)
    got = _table(tmp_path / "again").set_index("model").sort_index()
    want = _table(uninterrupted).set_index("model").sort_index()
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=0, atol=1e-9)
    assert result["reference"] == "dsrsd"

    # the same model with another setting: told apart by the differing key, not merged
    ablation = train_run(load_config(PRESET, [*SETS, f'data.path="{data}"', "loss.lambda_orth=0.0"]), out=tmp_path / "no_orth", quiet=True)
    mixed = compare([uninterrupted / "runs" / "dsrsd__seed0", ablation], out=tmp_path / "ablation", n_boot=50)
    assert [m["label"] for m in mixed["models"]] == ["dsrsd (loss.lambda_orth=0.1)", "dsrsd (loss.lambda_orth=0.0)"]


def test_compare_refuses_what_cannot_be_compared(data, uninterrupted, tmp_path):
    from dsrsd_cli.data.prepare import prepare_dataset

    dsrsd0 = uninterrupted / "runs" / "dsrsd__seed0"
    other = tmp_path / "other"
    prepare_dataset(dataset="oulad", raw=None, out=other, sample_size=300, seed=1)
    foreign = train_run(load_config(PRESET, [*SETS, f'data.path="{other}"']), out=tmp_path / "foreign", quiet=True)
    with pytest.raises(BadInput, match="different prepared data"):
        compare([dsrsd0, foreign], out=tmp_path / "x")

    early_cutoff = train_run(load_config(PRESET, [*SETS, f'data.path="{data}"', "data.cutoff_day=60", "train.seed=7"]), out=tmp_path / "cut", quiet=True)
    with pytest.raises(BadInput, match="different test rows"):
        compare([dsrsd0, early_cutoff], out=tmp_path / "x")

    with pytest.raises(BadInput, match="both dsrsd with seed 0"):
        copy = tmp_path / "copy"
        import shutil

        shutil.copytree(dsrsd0, copy)
        compare([dsrsd0, copy], out=tmp_path / "x")

    unfinished = tmp_path / "unfinished"
    import shutil

    shutil.copytree(uninterrupted / "runs" / "late__seed0", unfinished)
    (unfinished / "predictions.parquet").unlink()
    with pytest.raises(BadInput, match="unfinished"):
        compare([dsrsd0, unfinished], out=tmp_path / "x")

    with pytest.raises(BadInput, match="not both"):
        compare([dsrsd0], preset=PRESET)
    with pytest.raises(BadInput, match="not registered"):
        compare(preset=PRESET, models="dsrsd,nope", seeds=1, overrides=SETS, data=data, out=tmp_path / "y")
    # a plan pointed at a folder holding runs of another plan: refused, not silently mixed
    with pytest.raises(BadInput, match="train.max_steps_per_epoch"):
        compare(preset=PRESET, models="dsrsd", seeds=1, overrides=[*SETS, "train.max_steps_per_epoch=2"], data=data, out=uninterrupted)
