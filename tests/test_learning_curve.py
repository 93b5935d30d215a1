"""Learning curves (`dsrsd compare --train-fraction`): seeded, nested subsamples of the
training learners, valid and test untouched, and the curve written end to end."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data.loader import make_dataset, open_prepared
from dsrsd_cli.data.prepared import learner_rank
from dsrsd_cli.engine.compare import learning_curve, parse_fractions
from dsrsd_cli.errors import BadInput

PRESET = "smoke_oulad"
SETS = ["train.epochs=1", "train.max_steps_per_epoch=3", "train.threads=1", 'train.device="cpu"']


def _students(prepared, split: str, **data) -> set[int]:
    dataset = make_dataset(prepared, split, DataConfig(dataset="oulad", path=str(prepared.path), target="at_risk", max_weeks=20, **data))
    return {int(dataset[i].keys["id_student"]) for i in range(len(dataset))}


def test_learner_rank_is_seeded_uniform_and_per_learner():
    ids = np.arange(20_000)
    a, b = learner_rank(ids, 0), learner_rank(ids, 1)
    assert np.array_equal(a, learner_rank(ids, 0))                  # the same seed, the same ranks
    assert not np.array_equal(a, b)
    assert 0 <= a.min() and a.max() < 1 and abs(float((a < 0.3).mean()) - 0.3) < 0.02
    assert learner_rank(np.array(["u7"]), 3)[0] == learner_rank(np.array(["u1", "u7"]), 3)[1]   # order-free


def test_train_fraction_subsets_are_nested_seeded_and_leave_valid_and_test_alone(oulad_sample):
    prepared = open_prepared(oulad_sample)
    full = _students(prepared, "train")
    subsets = {f: _students(prepared, "train", train_fraction=f) for f in (0.1, 0.3, 0.6)}
    assert subsets[0.1] < subsets[0.3] < subsets[0.6] < full               # nested, strictly growing
    for f, students in subsets.items():
        assert abs(len(students) / len(full) - f) < 0.12
    assert _students(prepared, "train", train_fraction=0.3) == subsets[0.3]                       # seeded
    assert _students(prepared, "train", train_fraction=0.3, train_fraction_seed=1) != subsets[0.3]
    for split in ("valid", "test"):
        assert _students(prepared, split, train_fraction=0.1) == _students(prepared, split)


def test_a_fraction_that_leaves_nobody_is_bad_input(oulad_sample):
    prepared = open_prepared(oulad_sample)
    with pytest.raises(BadInput, match="train_fraction"):
        _students(prepared, "train", train_fraction=1e-9)


@pytest.mark.parametrize("text", ["0", "0.5,1.5", "a,b", ""])
def test_bad_fractions_are_bad_input(text):
    with pytest.raises(BadInput, match="--train-fraction"):
        parse_fractions(text)


def test_learning_curve_end_to_end(oulad_sample, tmp_path):
    out = tmp_path / "curve"
    curve = learning_curve(PRESET, models="dsrsd,single:clicks", seeds=1, fractions=[0.3, 1.0], overrides=SETS,
                           data=oulad_sample, out=out, quiet=True, n_boot=50)
    points = {(p["model"], p["fraction"]): p for p in curve["points"]}
    assert set(points) == {(m, f) for m in ("dsrsd", "single:clicks") for f in (0.3, 1.0)}
    small, large = points[("dsrsd", 0.3)]["train_learners"], points[("dsrsd", 1.0)]["train_learners"]
    assert 0 < small < large
    assert points[("single:clicks", 0.3)]["auc_p"] is not None and points[("dsrsd", 0.3)]["auc_diff"] is None
    for f in ("0.3", "1"):
        runs = json.loads((out / f"fraction_{f}" / "comparison.json").read_text())["models"][0]["runs"]
        config = json.loads((tmp_path / runs[0]["run_dir"] / "config.json").read_text())["config"]
        assert config["data"]["train_fraction"] == float(f)
    for name in ("learning_curve.json", "learning_curve.csv", "learning_curve.md", "learning_curve.png"):
        assert (out / name).stat().st_size > 0
    assert f"{small:,} learners (0.3)" in (out / "learning_curve.md").read_text()


def test_cli_train_fraction_needs_plan_mode(monkeypatch, capsys, tmp_path):
    from dsrsd_cli import cli

    monkeypatch.setattr(sys, "argv", ["dsrsd", "compare", str(tmp_path), "--train-fraction", "0.5"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2 and "plan mode" in capsys.readouterr().err
