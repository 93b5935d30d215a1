"""The `gbdt` reference model end to end on both datasets: the same run folder, rows and
metrics as every model, usable by evaluate / explain / compare / predict, absent
modalities as missing feature groups, and a run folder that is never unpickled."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from dsrsd_cli.config import load_config
from dsrsd_cli.engine.compare import compare
from dsrsd_cli.engine.evaluate import evaluate_run
from dsrsd_cli.engine.explain import explain_run
from dsrsd_cli.engine.predict import predict_run
from dsrsd_cli.engine.runs import load_run
from dsrsd_cli.engine.train import train_run
from dsrsd_cli.model.gbdt import hide_groups_at_random, mask_groups

SETS = ["train.epochs=1", "train.max_steps_per_epoch=3", "train.threads=1", 'train.device="cpu"', "gbdt.max_rounds=60"]


@pytest.fixture(scope="module")
def ednet_data(tmp_path_factory) -> Path:
    from dsrsd_cli.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("gbdt_ednet") / "ednet"
    prepare_dataset(dataset="ednet", raw=None, out=out, sample_size=120, seed=0)
    return out


@pytest.fixture(scope="module")
def runs(ednet_data, oulad_sample, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gbdt_runs")
    out = {}
    for name, preset, data in (("ednet", "smoke", ednet_data), ("oulad", "smoke_oulad", oulad_sample)):
        for model in ("gbdt", "dsrsd"):
            cfg = load_config(preset, [*SETS, f"model.name={json.dumps(model)}", f"data.path={json.dumps(str(data))}"])
            out[f"{name}-{model}"] = train_run(cfg, out=root / f"{name}-{model}", quiet=True)
    return out


@pytest.mark.parametrize("dataset", ["ednet", "oulad"])
def test_gbdt_writes_the_same_run_folder_and_rows_as_a_neural_model(runs, dataset):
    gbdt, dsrsd = runs[f"{dataset}-gbdt"], runs[f"{dataset}-dsrsd"]
    for name in ("config.json", "model.safetensors", "history.csv", "metrics.json", "predictions.parquet", "log.txt"):
        assert (gbdt / name).is_file(), name
    metrics = json.loads((gbdt / "metrics.json").read_text())
    assert metrics["model"] == "gbdt" and 0.5 < metrics["test"]["auc"] <= 1 and 0.5 < metrics["valid"]["auc"] <= 1
    a, b = pd.read_parquet(gbdt / "predictions.parquet"), pd.read_parquet(dsrsd / "predictions.parquet")
    assert list(a.columns) == list(b.columns)
    keys = [c for c in a.columns if c not in ("label", "probability")]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    assert a[keys + ["label"]].equals(b[keys + ["label"]])                     # the very same test rows
    history = pd.read_csv(gbdt / "history.csv")
    assert history["valid_auc"].notna().all() and history["epoch"].is_monotonic_increasing


@pytest.mark.parametrize("dataset", ["ednet", "oulad"])
def test_gbdt_reloads_to_its_own_predictions_and_scores_with_predict(runs, dataset, tmp_path):
    run = runs[f"{dataset}-gbdt"]
    scored = predict_run(run, data=load_run(run).prepared.path, out=tmp_path / "p.parquet", split="test", device="cpu")
    own = pd.read_parquet(run / "predictions.parquet")
    keys = [c for c in own.columns if c not in ("label", "probability")]
    both = own.merge(scored, on=keys, suffixes=("", "_again"), validate="one_to_one")
    assert len(both) == len(own) and np.abs(both["probability"] - both["probability_again"]).max() < 1e-6


@pytest.mark.parametrize("dataset", ["ednet", "oulad"])
def test_gbdt_absent_modalities_evaluate_and_explain(runs, dataset):
    run = runs[f"{dataset}-gbdt"]
    result = evaluate_run(run, masks=[], robustness=True, device="cpu")
    sweep = result["robustness"]["modalities"]
    assert all(0 <= v["absent_auc"] <= 1 for v in sweep.values())
    assert any(abs(v["absent_auc"] - result["metrics"]["auc"]) > 1e-4 for v in sweep.values())   # absence is felt
    assert all(v["noise_kind"].startswith("not applicable") for v in sweep.values())
    explained = explain_run(run, split="test", device="cpu")
    shapley = explained["shapley"]["auc"]
    assert sum(shapley.values()) == pytest.approx(explained["full"]["auc"] - explained["none"]["auc"], abs=1e-6)
    assert explained["none"]["auc"] == pytest.approx(0.5)                  # every group missing: one score for all
    assert explained["mechanisms"] == {}


def test_gbdt_in_a_comparison(runs, tmp_path):
    result = compare([runs["oulad-dsrsd"], runs["oulad-gbdt"]], out=tmp_path / "cmp", device="cpu", n_boot=50)
    gbdt = next(m for m in result["models"] if m["label"] == "gbdt")
    assert 0 <= gbdt["vs_reference"]["combined"]["auc"]["p"] <= 1
    assert set(gbdt["absent_auc"]) == {"demographics", "clicks", "assessments"}


def test_gbdt_weights_hold_no_pickle_and_a_tampered_booster_is_refused(runs, tmp_path, monkeypatch, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["oulad-gbdt"], run)
    tensors = load_file(run / "model.safetensors")
    assert set(tensors) == {"booster_text"}                                 # OULAD fits no statistics
    assert bytes(tensors["booster_text"].numpy()).decode().startswith("tree")  # LightGBM's own text format
    save_file({"booster_text": torch.frombuffer(bytearray(b"import os; os.system('x')"), dtype=torch.uint8)}, run / "model.safetensors")
    from dsrsd_cli import cli

    monkeypatch.setattr(sys, "argv", ["dsrsd", "evaluate", str(run), "--no-robustness"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2 and "not a LightGBM model" in capsys.readouterr().err


def test_gbdt_refuses_ddp(runs, monkeypatch, capsys):
    from dsrsd_cli import cli

    monkeypatch.setattr(sys, "argv", ["dsrsd", "train", "--preset", "smoke_oulad", "--model", "gbdt", "--nproc", "2"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2 and "--nproc" in capsys.readouterr().err


def test_group_masking_and_modality_dropout():
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    groups = {"a": [0, 1], "b": [2], "c": [3]}
    masked = mask_groups(x, groups, {"a": np.arange(10) < 3, "b": np.zeros(10, bool), "c": np.zeros(10, bool)})
    assert np.isnan(masked[:3, :2]).all() and not np.isnan(masked[3:]).any() and not np.isnan(masked[:, 2:]).any()
    assert not np.isnan(x).any()                                             # the input is untouched
    big = np.zeros((20_000, 4), np.float32)
    hidden = np.isnan(hide_groups_at_random(big, groups, 0.5, seed=0))
    per_group = np.stack([hidden[:, 0], hidden[:, 2], hidden[:, 3]], 1)
    assert not per_group.all(1).any()                                        # never every group of a row
    assert 0.35 < per_group.mean() < 0.5 and (hidden[:, 0] == hidden[:, 1]).all()   # a group hides as a whole
    assert np.array_equal(hidden, np.isnan(hide_groups_at_random(big, groups, 0.5, seed=0)))   # seeded
    assert hide_groups_at_random(big, groups, 0.0, seed=0) is big


def test_fit_is_deterministic(ednet_data, tmp_path):
    cfg = load_config("smoke", [*SETS, 'model.name="gbdt"', f"data.path={json.dumps(str(ednet_data))}"])
    first = pd.read_parquet(train_run(cfg, out=tmp_path / "a", quiet=True) / "predictions.parquet")
    second = pd.read_parquet(train_run(cfg, out=tmp_path / "b", quiet=True) / "predictions.parquet")
    assert first.equals(second)
