"""`dsrsd evaluate`: metrics against hand-computed values, the noise of the robustness sweep,
then end to end on a trained smoke run (EdNet and OULAD)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dsrsd_cli.engine.evaluate import add_noise, noise_kind
from dsrsd_cli.engine.metrics import area_under_curve, compute_metrics, expected_calibration_error
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import to_jsonable
from dsrsd_cli.types import Batch

# ---------------------------------------------------------------- metrics


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = compute_metrics(y, p)
    assert m["auc"] == pytest.approx(0.75)           # 3 of 4 (pos, neg) pairs ordered
    assert m["accuracy"] == pytest.approx(0.5)       # 0.1 and 0.9 right
    assert m["f1"] == pytest.approx(0.5)             # tp 1, fp 1, fn 1
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0.01 + 0.36 + 0.36 + 0.01) / 4))
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.4, 0.9])))
    assert m["n"] == 4 and m["positive_rate"] == 0.5


def test_ece_is_the_15_bin_weighted_gap():
    # bins of width 1/15: 0.1 -> bin 1, 0.6 and 0.62 -> bin 9, 0.9 -> bin 13, 1.0 -> last bin
    correct = np.array([0, 1, 0, 1, 1])
    conf = np.array([0.1, 0.6, 0.62, 0.9, 1.0])
    expected = (abs(0 - 0.1) + 2 * abs(0.5 - 0.61) + abs(1 - 0.9) + abs(1 - 1.0)) / 5
    assert expected_calibration_error(correct, conf) == pytest.approx(expected)
    assert expected_calibration_error(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.0)


def test_single_class_auc_is_nan_and_json_null():
    m = compute_metrics(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]))
    assert math.isnan(m["auc"]) and m["accuracy"] == pytest.approx(2 / 3)
    assert to_jsonable(m)["auc"] is None
    json.dumps(to_jsonable(m), allow_nan=False)


def test_multiclass_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    logits = rng.normal(size=(200, 4))
    logits[np.arange(200), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = compute_metrics(y, probs)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    assert 0 < m["f1"] <= 1 and m["log_loss"] > 0 and 0 <= m["ece"] <= 1
    assert m["brier"] == pytest.approx(((probs - np.eye(4)[y]) ** 2).sum(1).mean())
    # a class missing from the labels: AUC averages over the classes present instead of failing
    keep = y != 3
    m3 = compute_metrics(y[keep], probs[keep])
    assert m3["auc"] == pytest.approx(np.mean([roc_auc_score(y[keep] == c, probs[keep][:, c]) for c in range(3)]))


def test_area_under_curve_is_normalised():
    levels = [0, 0.25, 0.5, 0.75, 1.0]
    assert area_under_curve(levels, [0.8] * 5) == pytest.approx(0.8)
    assert area_under_curve(levels, [1.0, 0.75, 0.5, 0.25, 0.0]) == pytest.approx(0.5)
    assert math.isnan(area_under_curve(levels, [0.8, float("nan"), 0.7, 0.6, 0.5]))


# ---------------------------------------------------------------- noise


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    inputs = {
        "item": {"question": torch.randint(1, 50, (4, 6), generator=g)},
        "behavior": {
            "num": torch.randn(4, 6, 3, generator=g),
            "num_present": torch.ones(4, 6, 3, dtype=torch.bool),
            "platform": torch.randint(1, 3, (4, 6), generator=g),
        },
    }
    ones = torch.ones(4, 6, dtype=torch.bool)
    return Batch(inputs=inputs, present={"item": ones, "behavior": ones}, target=torch.zeros(4, 6), mask=ones, valid=ones, keys={})


def test_noise_levels_and_kinds():
    batch = _batch()
    same = add_noise(batch, "behavior", 0.0, torch.Generator().manual_seed(1))
    assert all(torch.equal(same.inputs["behavior"][k], batch.inputs["behavior"][k]) for k in batch.inputs["behavior"])

    full = add_noise(batch, "item", 1.0, torch.Generator().manual_seed(1))
    assert int(full.inputs["item"]["question"].count_nonzero()) == 0          # every id dropped at level 1
    assert full.inputs["behavior"] is batch.inputs["behavior"]                 # other modalities untouched

    half = add_noise(batch, "behavior", 0.5, torch.Generator().manual_seed(1))
    diff = half.inputs["behavior"]["num"] - batch.inputs["behavior"]["num"]
    assert 0.35 < float(diff.std()) < 0.65                                      # Gaussian, std = level
    assert torch.equal(half.inputs["behavior"]["num_present"], batch.inputs["behavior"]["num_present"])
    dropped = (half.inputs["behavior"]["platform"] == 0).float().mean()
    assert 0.2 < float(dropped) < 0.8
    again = add_noise(batch, "behavior", 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(again.inputs["behavior"]["num"], half.inputs["behavior"]["num"])  # seeded

    assert noise_kind(batch, "item") == "token dropout"
    assert noise_kind(batch, "behavior") == "gaussian + token dropout"


# ---------------------------------------------------------------- end to end via the CLI

def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`dsrsd ARGS` in this process (cli.main: exit codes, one-line errors); (code, stdout, stderr)."""
    from dsrsd_cli import cli

    monkeypatch.setattr(sys, "argv", ["dsrsd", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _check_eval_files(run: Path, split: str, keys: list[str]) -> None:
    saved = json.loads((run / "eval" / f"{split}.json").read_text())
    assert saved["split"] == split and "metrics" in saved
    assert (run / "eval" / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = pd.read_parquet(run / "eval" / f"predictions_{split}.parquet")
    assert list(predictions.columns)[: len(keys)] == keys and "label" in predictions and len(predictions) == saved["metrics"]["n"]


def _check_robustness(result: dict, modalities: tuple[str, ...]) -> None:
    sweep = result["robustness"]
    assert sweep["levels"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(sweep["modalities"]) == set(modalities)
    for r in sweep["modalities"].values():
        assert r["noise_auc"][0] == pytest.approx(result["metrics"]["auc"])   # level 0 is the full model
        assert all(0 <= a <= 1 for a in r["noise_auc"]) and 0 <= r["absent_auc"] <= 1
        assert min(r["noise_auc"]) - 1e-9 <= r["noise_area"] <= max(r["noise_auc"]) + 1e-9


def test_ednet_prepare_train_evaluate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the smoke preset reads data/ednet; runs go to runs/run_<N>
    code, _, err = run_main(monkeypatch, capsys, "prepare", "--dataset", "ednet", "--sample-size", "40", "--out", "data/ednet")
    assert code == 0, err
    code, out, err = run_main(monkeypatch, capsys, "train", "--preset", "smoke", "--device", "cpu", "--json")
    assert code == 0, err
    trained = json.loads(out)
    run = Path(trained["run_dir"])
    assert run == Path("runs/run_1")
    for split in ("valid", "test"):
        assert {"auc", "accuracy", "f1", "log_loss", "brier", "rmse", "ece", "n"} <= set(trained[split])
        assert 0 <= trained[split]["auc"] <= 1 and trained[split]["n"] > 0
    weights = (run / "model.safetensors").read_bytes()

    code, out, err = run_main(monkeypatch, capsys, "evaluate", str(run), "--mask", "behavior", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["metrics"]["auc"] == pytest.approx(trained["test"]["auc"], abs=1e-9)   # the same best weights
    assert result["masked"]["modalities"] == ["behavior"] and 0 <= result["masked"]["metrics"]["auc"] <= 1
    _check_robustness(result, ("item", "content", "behavior"))
    _check_eval_files(run, "test", ["user", "position", "label", "probability"])
    assert (run / "model.safetensors").read_bytes() == weights                               # never retrains

    code, _, err = run_main(monkeypatch, capsys, "evaluate", str(run), "--cutoff-day", "50")
    assert code == 2 and "OULAD runs only" in err
    code, _, err = run_main(monkeypatch, capsys, "evaluate", str(run), "--mask", "clicks")
    assert code == 2 and "not a modality of ednet" in err

    # eval/ is written inside the run folder only, never through a link planted there
    shutil.rmtree(run / "eval")
    (tmp_path / "elsewhere").mkdir()
    (run / "eval").symlink_to(tmp_path / "elsewhere")
    code, _, err = run_main(monkeypatch, capsys, "evaluate", str(run), "--no-robustness")
    assert code == 2 and "symbolic link" in err
    assert list((tmp_path / "elsewhere").iterdir()) == []
    (run / "eval").unlink()

    # the data folder changed since training: refused unless --data says to use it anyway
    manifest = Path("data/ednet/manifest.json")
    manifest.write_text(manifest.read_text() + " ")
    code, _, err = run_main(monkeypatch, capsys, "evaluate", str(run), "--no-robustness")
    assert code == 2 and "changed since" in err and "--data" in err
    code, out, err = run_main(monkeypatch, capsys, "evaluate", str(run), "--no-robustness", "--data", "data/ednet", "--json")
    assert code == 0, err
    assert json.loads(out)["data"]["same_as_training"] is False


def test_oulad_prepare_train_evaluate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "prepare", "--dataset", "oulad", "--sample-size", "300", "--out", "data/oulad")
    assert code == 0, err
    code, out, err = run_main(monkeypatch, capsys, "train", "--preset", "smoke_oulad", "--device", "cpu", "--json")
    assert code == 0, err
    trained = json.loads(out)
    run = Path(trained["run_dir"])
    assert trained["test"]["n"] > 0 and 0 <= trained["test"]["auc"] <= 1

    code, out, err = run_main(monkeypatch, capsys, "evaluate", str(run), "--split", "valid", "--mask", "clicks",
                              "--cutoff-day", "60", "--cutoff-day", "150", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["metrics"]["auc"] == pytest.approx(trained["valid"]["auc"], abs=1e-9)
    days = [c["cutoff_day"] for c in result["cutoffs"]]
    assert days == [60, 150]
    for entry in result["cutoffs"]:
        assert 0 < entry["metrics"]["n"] and 0 <= entry["metrics"]["auc"] <= 1
    # a later cutoff has fewer students: those who withdrew before it leave the population
    assert result["cutoffs"][0]["metrics"]["n"] >= result["cutoffs"][1]["metrics"]["n"]
    _check_robustness(result, ("demographics", "clicks", "assessments"))
    _check_eval_files(run, "valid", ["code_module", "code_presentation", "id_student", "label", "probability"])
    assert "full" in err and "Robustness" in err   # the rich tables go to stderr


def test_oulad_result4_is_multiclass_end_to_end(tmp_path):
    from dsrsd_cli.config import load_config
    from dsrsd_cli.data.prepare import prepare_dataset
    from dsrsd_cli.engine.evaluate import evaluate_run
    from dsrsd_cli.engine.train import train_run

    data = tmp_path / "oulad"
    prepare_dataset(dataset="oulad", raw=None, out=data, sample_size=200, seed=1)
    cfg = load_config("smoke_oulad", [f'data.path="{data}"', 'data.target="result4"', 'train.device="cpu"'])
    run = train_run(cfg, out=tmp_path / "run", quiet=True)
    predictions = pd.read_parquet(run / "predictions.parquet")
    columns = [f"probability_{c}" for c in ("Pass", "Fail", "Withdrawn", "Distinction")]
    assert [c for c in predictions.columns if c.startswith("probability")] == columns
    assert np.allclose(predictions[columns].sum(axis=1), 1.0, atol=1e-5)
    assert set(predictions["label"].unique()) <= {0, 1, 2, 3}
    result = evaluate_run(run, robustness=False, device="cpu")
    assert {"auc", "accuracy", "f1", "log_loss", "brier", "ece", "class_rates"} <= set(result["metrics"])
    assert len(result["metrics"]["class_rates"]) == 4


def test_data_with_other_vocabularies_is_refused(tmp_path):
    from dsrsd_cli.config import load_config
    from dsrsd_cli.data.prepare import prepare_dataset
    from dsrsd_cli.engine.runs import load_run
    from dsrsd_cli.engine.train import train_run

    prepare_dataset(dataset="oulad", raw=None, out=tmp_path / "a", sample_size=120, seed=0)
    prepare_dataset(dataset="ednet", raw=None, out=tmp_path / "b", sample_size=20, seed=0)
    run = train_run(load_config("smoke_oulad", [f'data.path="{tmp_path / "a"}"', 'train.device="cpu"', "train.epochs=1"]), out=tmp_path / "run", quiet=True)
    with pytest.raises(BadInput, match="holds ednet data"):
        load_run(run, data=tmp_path / "b")
    with pytest.raises(BadInput, match="prepared data folder not found"):
        load_run(run, data=tmp_path / "nowhere")
