"""`dsrsd predict`: scores equal the run's own predictions; data the model cannot read is refused.

Runs are trained with the smoke preset on tiny schema-exact prepared folders (tests/prepared_fakes.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from dsrsd_cli.config import load_config
from dsrsd_cli.engine.predict import predict_run
from dsrsd_cli.engine.train import train_run
from dsrsd_cli.errors import BadInput
from prepared_fakes import TABLE_SCHEMAS, ednet_tables, oulad_tables, write_prepared, write_table

SETS = ["train.epochs=1", "train.max_steps_per_epoch=3", 'train.device="cpu"']
KEYS = ["user", "position"]


@pytest.fixture(scope="module")
def ednet(tmp_path_factory) -> tuple[Path, Path]:
    """(prepared folder, finished run on it)."""
    root = tmp_path_factory.mktemp("predict")
    data = write_prepared(root / "ednet", "ednet", ednet_tables(n_users=20, seed=0))
    run = train_run(load_config("smoke", [*SETS, f'data.path="{data}"']), out=root / "run", quiet=True)
    return data, run


def _copy_as_new_preparation(data: Path, dest: Path) -> Path:
    """The same files with a different manifest (another `prepare` of the same raw data)."""
    shutil.copytree(data, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["created"] = "another day"
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_predict_matches_the_runs_own_predictions(ednet, tmp_path):
    data, run = ednet
    frame = predict_run(run, data=data, out=tmp_path / "test.parquet", split="test", device="cpu")
    written = pd.read_parquet(tmp_path / "test.parquet")
    own = pd.read_parquet(run / "predictions.parquet")
    assert list(written.columns) == ["user", "position", "label", "probability"] and len(written) == len(frame) == len(own)
    both = written.merge(own, on=KEYS, suffixes=("", "_run"), validate="one_to_one")
    assert len(both) == len(own)
    assert (both["label"] == both["label_run"]).all()
    assert np.abs(both["probability"] - both["probability_run"]).max() < 1e-6

    # every learner, with the test learners scored exactly as above
    everyone = predict_run(run, data=data, out=tmp_path / "all.parquet", split="all", device="cpu")
    assert set(everyone["user"]) == set(pd.read_parquet(data / "splits.parquet")["user"])
    again = everyone.merge(own, on=KEYS, suffixes=("", "_run"))
    assert len(again) == len(own) and np.abs(again["probability"] - again["probability_run"]).max() < 1e-6


def test_predict_on_a_new_preparation_with_the_same_vocabularies(ednet, tmp_path):
    data, run = ednet
    same = _copy_as_new_preparation(data, tmp_path / "same")
    frame = predict_run(run, data=same, out=tmp_path / "s.parquet", split="test", device="cpu")
    own = pd.read_parquet(run / "predictions.parquet")
    assert np.abs(frame.merge(own, on=KEYS)["probability_x"] - frame.merge(own, on=KEYS)["probability_y"]).max() < 1e-6


def test_predict_refuses_shifted_ids_with_the_same_sizes(ednet, tmp_path):
    data, run = ednet
    shifted = _copy_as_new_preparation(data, tmp_path / "shifted")
    questions = pd.read_parquet(shifted / "questions.parquet")
    ids = questions["question_id"].tolist()
    ids[0], ids[1] = ids[1], ids[0]                       # q1 and q2 swap indices: same sizes, other meaning
    questions["question_id"] = ids
    write_table(shifted / "questions.parquet", questions, TABLE_SCHEMAS["ednet"]["questions"])
    with pytest.raises(BadInput, match="questions.parquet.*does not match the run's training data"):
        predict_run(run, data=shifted, out=tmp_path / "x.parquet", device="cpu")
    assert not (tmp_path / "x.parquet").exists()


def test_predict_refuses_other_sizes_schema_or_dataset(ednet, tmp_path):
    data, run = ednet
    bigger = write_prepared(tmp_path / "bigger", "ednet", ednet_tables(n_users=20, n_questions=70, seed=0))
    with pytest.raises(BadInput, match=r"vocab\[item.question\]"):
        predict_run(run, data=bigger, out=tmp_path / "x.parquet", device="cpu")
    future = write_prepared(tmp_path / "future", "ednet", ednet_tables(n_users=20, seed=0), manifest_updates={"schema_version": 999})
    with pytest.raises(BadInput, match="schema_version"):
        predict_run(run, data=future, out=tmp_path / "x.parquet", device="cpu")
    oulad = write_prepared(tmp_path / "oulad", "oulad", oulad_tables(n_students=40, seed=0))
    with pytest.raises(BadInput, match="holds oulad data.*trained on ednet"):
        predict_run(run, data=oulad, out=tmp_path / "x.parquet", device="cpu")
    with pytest.raises(BadInput, match="is a folder"):
        predict_run(run, data=data, out=tmp_path, device="cpu")
    with pytest.raises(BadInput, match="--split"):
        predict_run(run, data=data, out=tmp_path / "x.parquet", split="holdout", device="cpu")


def test_predict_warns_when_the_training_data_is_gone(tmp_path):
    data = write_prepared(tmp_path / "ednet", "ednet", ednet_tables(n_users=20, seed=1))
    run = train_run(load_config("smoke", [*SETS, f'data.path="{data}"']), out=tmp_path / "run", quiet=True)
    moved = _copy_as_new_preparation(data, tmp_path / "moved")
    shutil.rmtree(data)
    console = Console(stderr=True, record=True, width=200)
    frame = predict_run(run, data=moved, out=tmp_path / "s.parquet", split="test", device="cpu", console=console)
    assert len(frame) == len(pd.read_parquet(run / "predictions.parquet"))
    assert "only the vocabulary sizes could be checked" in console.export_text()


def test_cli_mismatch_is_one_line_with_exit_code_2(ednet, tmp_path):
    _, run = ednet
    oulad = write_prepared(tmp_path / "oulad", "oulad", oulad_tables(n_students=40, seed=0))
    res = subprocess.run([sys.executable, "-m", "dsrsd_cli", "predict", str(run), "--data", str(oulad), "--out", str(tmp_path / "x.parquet")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "oulad" in lines[0] and "Traceback" not in res.stderr


def test_predict_oulad_multiclass_writes_one_probability_per_class(tmp_path):
    data = write_prepared(tmp_path / "oulad", "oulad", oulad_tables(n_students=60, seed=0))
    run = train_run(load_config("smoke_oulad", [*SETS, f'data.path="{data}"', 'data.target="result4"']), out=tmp_path / "run", quiet=True)
    frame = predict_run(run, data=data, out=tmp_path / "s.parquet", split="test", device="cpu")
    keys = ["code_module", "code_presentation", "id_student"]
    assert list(frame.columns) == [*keys, "label", "probability_Pass", "probability_Fail", "probability_Withdrawn", "probability_Distinction"]
    assert np.allclose(frame.filter(like="probability_").sum(axis=1), 1.0, atol=1e-5)
    own = pd.read_parquet(run / "predictions.parquet")
    both = frame.merge(own, on=keys, suffixes=("", "_run"), validate="one_to_one")
    assert len(both) == len(own) and np.abs(both["probability_Fail"] - both["probability_Fail_run"]).max() < 1e-6
