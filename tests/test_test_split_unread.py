"""Test labels are never read before the test metrics: training, early stopping and the
choice of the best epoch (neural models) or of the number of trees (gbdt) give bit-identical
weights when only the TEST learners' labels differ. (Tuning reads the same validation
metrics: `dsrsd tune` takes a trial's value from metrics.json "valid".)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dsrsd_cli.config import load_config
from dsrsd_cli.engine.compare import ensure_run
from rich.console import Console

QUIET = Console(stderr=True, quiet=True)
SETS = ["train.epochs=3", "train.threads=1", 'train.device="cpu"', "train.patience=1"]
FLIPPED = {"Pass": "Fail", "Fail": "Pass", "Distinction": "Withdrawn", "Withdrawn": "Distinction"}


@pytest.fixture(scope="module")
def flipped_test_labels(oulad_sample, tmp_path_factory) -> Path:
    """A copy of the OULAD sample whose test registrations have other final results."""
    out = tmp_path_factory.mktemp("flipped") / "oulad"
    shutil.copytree(oulad_sample, out)
    table = pq.read_table(out / "registrations.parquet")
    regs = table.to_pandas()
    splits = pd.read_parquet(out / "splits.parquet")
    test = regs.merge(splits, on=["code_module", "code_presentation", "id_student"], how="left")["split"].eq("test").to_numpy()
    assert 0 < test.sum() < len(regs)
    results = [FLIPPED[r] if t else r for r, t in zip(regs["final_result"], test)]
    column = table.schema.get_field_index("final_result")
    table = table.set_column(column, table.schema.field(column), pa.array(results, table.schema.field(column).type))
    pq.write_table(table, out / "registrations.parquet")      # same schema: only the test labels differ
    return out


@pytest.mark.parametrize("model", ["dsrsd", "gbdt"])
def test_only_the_test_metrics_change_when_only_test_labels_do(oulad_sample, flipped_test_labels, tmp_path, model):
    runs = {}
    for name, data in (("original", oulad_sample), ("flipped", flipped_test_labels)):
        cfg = load_config("smoke_oulad", [*SETS, f"model.name={json.dumps(model)}", f"data.path={json.dumps(str(data))}"])
        runs[name] = tmp_path / name
        ensure_run(cfg, runs[name], console=QUIET, quiet=True)
    a, b = (json.loads((runs[n] / "metrics.json").read_text()) for n in ("original", "flipped"))
    assert (runs["original"] / "model.safetensors").read_bytes() == (runs["flipped"] / "model.safetensors").read_bytes()
    assert a["valid"] == b["valid"] and a.get("best_epoch") == b.get("best_epoch")
    history = [pd.read_csv(runs[n] / "history.csv").drop(columns=["seconds", "rows_per_s"], errors="ignore")
               for n in ("original", "flipped")]
    assert history[0].equals(history[1])                              # every epoch's losses and validation figures
    assert a["test"]["auc"] != b["test"]["auc"]                        # the test labels did change
