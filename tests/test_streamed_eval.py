"""Streamed scoring (engine/scoring.py, engine/distributed.py): a predictions file written chunk
by chunk holds exactly what the old in-memory frame held; an interrupted write leaves no
file under the final name; `evaluate` / `predict --nproc 2` (torchrun, gloo) give one
process's metrics and rows; `train` logs its first step once.

Models are built untrained (or trained for 3 smoke steps) on tiny schema-exact prepared
folders (tests/prepared_fakes.py), so every test here takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from dsrsd_cli.config import load_config
from dsrsd_cli.data.loader import make_loader, make_spec, open_prepared
from dsrsd_cli.engine import runs, scoring
from dsrsd_cli.engine.distributed import DistEnv, output_file, score_split
from dsrsd_cli.engine.metrics import compute_metrics
from dsrsd_cli.engine.scoring import class_names, frame_probs, probabilities, probability_columns
from dsrsd_cli.io import atomic_file, to_jsonable
from dsrsd_cli.model.registry import build_model
from prepared_fakes import ednet_tables, oulad_tables, write_prepared

pytestmark = pytest.mark.usefixtures("one_thread")

SETS = ["train.epochs=1", "train.max_steps_per_epoch=3", 'train.device="cpu"']


def legacy_frame(model, loader, *, n_outputs: int, classes) -> pd.DataFrame:
    """scoring.predict_batches as it was before streaming (one frame of every row), verbatim
    but for the signature: the reference the streamed file must reproduce."""
    parts: dict[str, list[np.ndarray]] = {}
    model.eval()
    with torch.no_grad():
        for batch in loader:
            logits = model(batch).logits
            mask = batch.mask.bool()
            rows = mask.nonzero(as_tuple=True)[0]
            for name, value in batch.keys.items():
                if isinstance(value, torch.Tensor):
                    column = value[mask].numpy() if value.shape == mask.shape else value[rows].numpy()
                else:
                    column = np.asarray(value, dtype=object)[rows.numpy()]
                parts.setdefault(name, []).append(column)
            parts.setdefault("label", []).append(batch.target[mask].numpy())
            prob = probabilities(logits, n_outputs)[mask].numpy()
            for c, column in enumerate(probability_columns(n_outputs, classes)):
                parts.setdefault(column, []).append(prob if n_outputs == 1 else prob[:, c])
    frame = pd.DataFrame({name: np.concatenate(chunks) for name, chunks in parts.items()})
    is_integral = np.all(np.mod(frame["label"].to_numpy(dtype=np.float64), 1) == 0)
    frame["label"] = frame["label"].astype(np.int64 if is_integral else np.float64)
    return frame


def _untrained(data: Path, preset: str, sets=()):
    """(model with its initial weights, config, spec) for the prepared folder `data`."""
    cfg = load_config(preset, [*SETS, f'data.path="{data}"', *sets])
    prepared = open_prepared(data)
    spec = make_spec(prepared, cfg.data)
    torch.manual_seed(0)
    return build_model(spec, cfg.model, cfg.dsrsd).eval(), cfg, prepared, spec


@pytest.fixture(scope="module")
def ednet_data(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("streamed") / "ednet", "ednet", ednet_tables(n_users=40, seed=0))


@pytest.mark.parametrize("dataset", ["ednet", "oulad-result4"])
def test_chunked_file_equals_the_in_memory_frame(dataset, ednet_data, tmp_path, monkeypatch):
    if dataset == "ednet":
        data, preset, sets = ednet_data, "smoke", ["data.batch_size=4"]
    else:
        data = write_prepared(tmp_path / "oulad", "oulad", oulad_tables(n_students=60, seed=0))
        preset, sets = "smoke_oulad", ['data.target="result4"', "data.batch_size=8"]
    model, cfg, prepared, spec = _untrained(data, preset, sets)
    loader = make_loader(prepared, "all", cfg.data, shuffle=False, seed=0)
    expected = legacy_frame(model, loader, n_outputs=spec.n_outputs, classes=class_names(spec))
    assert len(expected) > 5 * cfg.data.batch_size
    monkeypatch.setattr(scoring, "ROW_GROUP_ROWS", len(expected) // 5)   # several row groups, each of several batches

    out = tmp_path / "predictions.parquet"
    with output_file(out, DistEnv()) as target:
        scores = score_split(model, loader, "cpu", DistEnv(), n_outputs=spec.n_outputs, classes=class_names(spec), out=target)
        assert not out.exists()                                   # only renamed at the end of the block
    written = pd.read_parquet(out)
    pd.testing.assert_frame_equal(written, expected, check_exact=True)   # columns, order, dtypes, values
    assert pq.ParquetFile(out).num_row_groups > 2
    assert list(tmp_path.glob(".*")) == []                        # no temporary file left behind
    # the compact arrays the metrics use are the same rows
    assert len(scores) == len(expected)
    assert np.array_equal(scores.label, expected["label"].to_numpy())
    probs = expected.filter(like="probability").to_numpy()
    assert np.array_equal(scores.probs.reshape(len(scores), -1), probs)
    old_metrics = compute_metrics(expected["label"].to_numpy(), frame_probs(expected))
    assert json.dumps(to_jsonable(scores.metrics())) == json.dumps(to_jsonable(old_metrics))
    # and the DataFrame wrapper kept for the small callers
    pd.testing.assert_frame_equal(scoring.predict_batches(model, loader, "cpu", n_outputs=spec.n_outputs, classes=class_names(spec)), expected)


def test_metrics_only_passes_build_no_key_columns(ednet_data):
    model, cfg, prepared, spec = _untrained(ednet_data, "smoke")
    loader = make_loader(prepared, "test", cfg.data, shuffle=False, seed=0)
    chunks = list(scoring.score_batches(model, loader, "cpu", n_outputs=1, keys=False))
    assert chunks and all(chunk.keys == {} for chunk in chunks)
    assert model.training is False
    model.train()
    list(scoring.score_batches(model, loader, "cpu", n_outputs=1))
    assert model.training is True                                 # its mode back after scoring


class _Interrupted(Exception):
    pass


def test_interrupted_write_leaves_no_final_file(ednet_data, tmp_path, monkeypatch):
    model, cfg, prepared, spec = _untrained(ednet_data, "smoke", ["data.batch_size=2"])
    loader = make_loader(prepared, "all", cfg.data, shuffle=False, seed=0)
    monkeypatch.setattr(scoring, "ROW_GROUP_ROWS", 50)

    def breaks_after(n):
        for i, batch in enumerate(loader):
            if i == n:
                raise _Interrupted
            yield batch

    out = tmp_path / "scores.parquet"
    with pytest.raises(_Interrupted):
        with output_file(out, DistEnv()) as target:
            score_split(model, breaks_after(6), "cpu", DistEnv(), n_outputs=1, out=target)
    assert list(tmp_path.iterdir()) == []                          # neither the file nor its temporary

    out.write_bytes(b"the previous file")
    with pytest.raises(_Interrupted):
        with output_file(out, DistEnv()) as target:
            score_split(model, breaks_after(6), "cpu", DistEnv(), n_outputs=1, out=target)
    assert out.read_bytes() == b"the previous file" and list(tmp_path.iterdir()) == [out]


def test_killed_writer_leaves_no_final_file(tmp_path):
    """SIGKILL in the middle of a row-group-by-row-group write: no cleanup runs, yet the final
    name never appears (only the hidden temporary does)."""
    out = tmp_path / "big.parquet"
    script = textwrap.dedent(f"""
        import time, numpy as np
        from pathlib import Path
        from dsrsd_cli.engine.scoring import PredictionsWriter, ScoredChunk
        from dsrsd_cli.io import atomic_file
        with atomic_file(Path({str(out)!r})) as tmp:
            writer = PredictionsWriter(tmp, ["probability"])
            for i in range(10_000):
                writer.add(ScoredChunk(keys={{"position": np.arange(300_000)}}, label=np.ones(300_000, np.float32),
                                       probs=np.full(300_000, 0.5, np.float32)))
                if i == 1:
                    print("writing", flush=True)
                time.sleep(0.01)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
        time.sleep(0.3)
        hidden = [p for p in tmp_path.iterdir() if p.name.startswith(".big.parquet.") and p.stat().st_size > 0]
        assert hidden, "the writer should be writing its temporary file by now"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()


def test_atomic_file_renames_only_on_success(tmp_path):
    with atomic_file(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"x")
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.bin.") and not (tmp_path / "a.bin").exists()
    assert (tmp_path / "a.bin").read_bytes() == b"x" and len(list(tmp_path.iterdir())) == 1


def test_process_start_seconds(monkeypatch):
    since = runs.seconds_since_process_start(time.time())
    assert 0 < since < 24 * 3600                                  # this pytest process started a while ago
    def no_sysconf(name):
        raise ValueError("no sysconf here")

    monkeypatch.setattr(os, "sysconf", no_sysconf)
    assert 4.0 <= runs.seconds_since_process_start(time.time() - 5.0) < 60    # no /proc: since the fallback


# ---------------------------------------------------------------- a trained run, one process and torchrun


@pytest.fixture(scope="module")
def trained(ednet_data, tmp_path_factory) -> Path:
    from dsrsd_cli.engine.train import train_run

    return train_run(load_config("smoke", [*SETS, f'data.path="{ednet_data}"']), out=tmp_path_factory.mktemp("trained") / "run", quiet=True)


def test_first_step_is_logged_once(trained):
    lines = [line for line in (trained / "log.txt").read_text().splitlines() if "first step done:" in line]
    assert len(lines) == 1 and lines[0].endswith("s after the process started")
    seconds = float(lines[0].split("first step done:")[1].split(" s ")[0])
    assert 0 < seconds < 24 * 3600


def test_nproc_refuses_a_bad_option_before_launching(trained, monkeypatch, capsys):
    from dsrsd_cli import cli

    monkeypatch.setattr(sys, "argv", ["dsrsd", "evaluate", str(trained), "--mask", "clicks", "--nproc", "2"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "not a modality of ednet" in err and "DDP" not in err


def _dsrsd(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "dsrsd_cli", *args], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index(["user", "position"]).sort_index()


@pytest.mark.slow
def test_evaluate_under_two_processes_equals_one(trained, tmp_path):
    """`evaluate --nproc 2`: each rank scores its shard, rank 0 the metrics of the union:
    the same metrics as one process (within 1e-6) and the same rows in the predictions file."""
    one = json.loads(_dsrsd("evaluate", str(trained), "--mask", "behavior", "--json").stdout)
    single = pd.read_parquet(trained / "eval" / "predictions_test.parquet")
    res = _dsrsd("evaluate", str(trained), "--mask", "behavior", "--nproc", "2", "--json")
    assert "DDP: 2 processes" in res.stderr and res.stderr.count("wrote ") == 1     # rank 0 alone reports
    two = json.loads(res.stdout)
    sharded = pd.read_parquet(trained / "eval" / "predictions_test.parquet")

    for part in ("metrics", "masked"):
        a, b = (one[part] if part == "metrics" else one[part]["metrics"]), (two[part] if part == "metrics" else two[part]["metrics"])
        assert set(a) == set(b)
        for key in a:
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
    for modality, entry in one["robustness"]["modalities"].items():   # absence is deterministic; noise is drawn per rank
        assert two["robustness"]["modalities"][modality]["absent_auc"] == pytest.approx(entry["absent_auc"], abs=1e-6)
        assert len(two["robustness"]["modalities"][modality]["noise_auc"]) == 5
    assert list(sharded.columns) == list(single.columns) == ["user", "position", "label", "probability"]
    assert sharded.dtypes.equals(single.dtypes)
    a, b = _keyed(single), _keyed(sharded)
    assert len(b) == len(a) == one["metrics"]["n"] and b.index.is_unique
    assert a.index.equals(b.index)                                            # the same (user, position) rows
    assert (a["label"] == b["label"]).all() and np.abs(a["probability"] - b["probability"]).max() < 1e-6
    assert [p.name for p in (trained / "eval").iterdir() if p.name.startswith(".")] == []   # parts removed


@pytest.mark.slow
def test_predict_under_two_processes_equals_one(trained, ednet_data, tmp_path):
    _dsrsd("predict", str(trained), "--data", str(ednet_data), "--out", str(tmp_path / "one.parquet"))
    res = _dsrsd("predict", str(trained), "--data", str(ednet_data), "--out", str(tmp_path / "two.parquet"), "--nproc", "2")
    one, two = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "two.parquet")
    assert "DDP: 2 processes" in res.stderr
    assert f"scored {len(one):,} rows" in res.stderr and res.stderr.count("scored ") == 1   # rank 0 alone reports
    assert list(two.columns) == list(one.columns) and two.dtypes.equals(one.dtypes)
    a, b = _keyed(one), _keyed(two)
    assert a.index.equals(b.index) and b.index.is_unique
    assert (a["label"] == b["label"]).all() and np.abs(a["probability"] - b["probability"]).max() < 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.parquet", "two.parquet"]


def test_the_forward_benchmark_scores_a_run_folders_test_batches(trained, capsys):
    """benchmarks/eval_forward_bench.py (issue 12's evaluation figures) runs on a run folder."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_forward_bench.py"
    spec = importlib.util.spec_from_file_location("eval_forward_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        medians = bench.main([str(trained), "--batches", "2", "--rounds", "1", "--threads", "1", "--eval-batch-size", "4"])
    finally:
        torch.set_num_threads(threads)
    assert list(medians) == [str(trained)] and medians[str(trained)] > 0
    _, batches, answers = bench.load_test_batches(str(trained), 2, 4)
    assert len(batches) == 2 and batches[0].valid.shape[0] == 4 and answers == sum(int(b.mask.sum()) for b in batches)
    assert "median" in capsys.readouterr().out
