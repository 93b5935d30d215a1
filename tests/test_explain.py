"""`dsrsd explain`: exact Shapley values over modalities, their efficiency, grouping, caching.

The end-to-end test trains DSRSD-Net briefly on a built-in EdNet sample simulated so that
ITEM carries most of the signal (strengths item=3, content=0.1, behavior=0.1; see
dsrsd_cli/samples/ednet_model.py: logit_item = strength * k_item * (-delta_q), a
question-level difficulty only the question ids reveal) and checks that explain puts item
first. (A behaviour-dominant sample does not work as a check: the simulated focus is an
AR(1) state, so past correctness, which every encoder sees, reveals most of it.)
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dsrsd_cli.config import load_config
from dsrsd_cli.data.schema import OULAD_RESULTS
from dsrsd_cli.engine import explain as explain_module
from dsrsd_cli.engine import explain_cache
from dsrsd_cli.engine.explain import EFFICIENCY_TOLERANCE, Passes, explain_run, mean_abs_change, shapley
from dsrsd_cli.engine.explain_cache import write_cache
from dsrsd_cli.engine.train import train_run
from dsrsd_cli.errors import BadInput

# ---------------------------------------------------------------- Shapley values


def _shapley_by_permutations(values: np.ndarray, M: int) -> np.ndarray:
    """The definition: average marginal contribution over all orders of the players."""
    phi = np.zeros(M)
    orders = list(itertools.permutations(range(M)))
    for order in orders:
        s = 0
        for m in order:
            phi[m] += values[s | (1 << m)] - values[s]
            s |= 1 << m
    return phi / len(orders)


@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_shapley_matches_the_permutation_definition_and_is_efficient(M):
    values = np.random.default_rng(M).normal(size=2**M)
    phi = shapley(values)
    assert np.allclose(phi, _shapley_by_permutations(values, M), atol=1e-12)
    assert abs(phi.sum() - (values[-1] - values[0])) < 1e-12


def test_shapley_of_an_additive_game_is_each_players_own_value():
    own = np.array([0.3, -0.1, 0.05])
    values = np.array([sum(own[i] for i in range(3) if s >> i & 1) for s in range(8)])
    assert np.allclose(shapley(values), own)


def _write_passes(folder: Path, key: str, *, chunks: int = 3, mechanisms: dict | None = None) -> dict[str, np.ndarray]:
    """A small cache folder as compute_passes writes it (M = 2, one stream, gates, a grouping),
    appended in `chunks` chunks; returns its columns."""
    rng = np.random.default_rng(0)
    n = 6
    columns = {
        **{f"coalition_{s}": rng.normal(size=n).astype(np.float32) for s in range(4)},
        "stream_0": rng.normal(size=n).astype(np.float32), "labels": np.array([0, 1, 1, 0, 1, 0], np.float32),
        "gates": np.full((n, 3), 1 / 3, np.float32), "group_part": np.array([0, 1, 0, 1, 0, 1], np.int32),
    }
    meta = {"key": key, "modalities": ["a", "b"], "stream_names": ["a.shared"], "gate_names": ["consensus", "a", "b"],
            "groups": {"part": ["x", "y"]}, "mechanisms": mechanisms or {}}
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    with write_cache(folder) as writer:
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            writer.append({name: column[lo:hi] for name, column in columns.items()})
        writer.finish(meta)
    return columns


def test_passes_cache_round_trips_and_refuses_stale_or_foreign_files(tmp_path):
    folder = tmp_path / "passes_test"
    columns = _write_passes(folder, "key-1")
    back = Passes.open(folder, "key-1")
    assert back is not None and back.modalities == ("a", "b") and back.gate_names == ["consensus", "a", "b"] and back.n == 6
    for s in range(4):
        assert np.array_equal(back.coalition(s), columns[f"coalition_{s}"])
    assert np.array_equal(back.gates(np.array([1, 4])), columns["gates"][[1, 4]]) and np.array_equal(back.labels(), columns["labels"])
    assert [back.groups["part"][c] for c in back.group_codes("part")] == list("xyxyxy")
    assert Passes.open(folder, "another key") is None          # stale: other weights or data
    # an object array would need pickle: np.load(allow_pickle=False) refuses it, so it is just a miss
    np.save(folder / "labels.npy", np.array([{"evil": 1}] * 6, dtype=object), allow_pickle=True)
    assert Passes.open(folder, "key-1") is None
    (folder / "meta.json").write_text("not json")
    assert Passes.open(folder, "key-1") is None


def test_passes_cache_keeps_the_mechanisms(tmp_path):
    mechanisms = {"align_infonce": 1.5, "shared_std_min": float("nan"), "gate_dominant": "consensus"}
    _write_passes(tmp_path / "passes", "k", mechanisms=mechanisms)
    back = Passes.open(tmp_path / "passes", "k")
    assert back is not None and back.mechanisms["align_infonce"] == 1.5 and back.mechanisms["gate_dominant"] == "consensus"
    assert math.isnan(back.mechanisms["shared_std_min"])


def _damage(folder: Path, how: str) -> None:
    column = folder / "coalition_3.npy"
    if how == "meta missing":
        (folder / "meta.json").unlink()
    elif how == "column truncated":
        os.truncate(column, column.stat().st_size - 4)
    elif how == "header truncated":
        os.truncate(column, 20)
    elif how == "bytes appended":
        with open(column, "ab") as f:
            f.write(b"\0" * 4)
    elif how == "column missing":
        column.unlink()
    elif how == "column of another length":
        np.save(column, np.zeros(5, np.float32))
    elif how == "column left out of meta":
        meta = json.loads((folder / "meta.json").read_text())
        del meta["columns"]["coalition_3"]
        (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how", ["meta missing", "column truncated", "header truncated", "bytes appended", "column missing",
                                 "column of another length", "column left out of meta"])
def test_a_partial_or_damaged_cache_folder_is_a_miss(tmp_path, how):
    folder = tmp_path / "passes_test"
    _write_passes(folder, "k")
    assert Passes.open(folder, "k") is not None
    _damage(folder, how)
    assert Passes.open(folder, "k") is None


def test_an_interrupted_cache_write_leaves_the_old_folder_and_no_partial_one(tmp_path):
    folder = tmp_path / "passes_test"
    _write_passes(folder, "old")
    with pytest.raises(RuntimeError, match="killed"):
        with write_cache(folder) as writer:
            writer.append({"labels": np.zeros(3, np.float32)})
            raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["passes_test"] and Passes.open(folder, "old") is not None


def test_mean_abs_change_over_blocks_is_the_plain_mean(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 4)).astype(np.float32), rng.normal(size=(10, 4)).astype(np.float32)
    centred = lambda x: x.astype(np.float64) - x.astype(np.float64).mean(-1, keepdims=True)  # noqa: E731
    expected = np.abs(centred(a) - centred(b)).mean()
    assert mean_abs_change(a, b) == expected                       # one block: exactly the plain mean
    monkeypatch.setattr(explain_module, "BLOCK_ROWS", 3)
    assert mean_abs_change(a, b) == pytest.approx(expected, rel=1e-12)
    assert mean_abs_change(a[:, 0], b[:, 0]) == pytest.approx(np.abs(a[:, 0].astype(np.float64) - b[:, 0]).mean(), rel=1e-12)


# ---------------------------------------------------------------- end to end: EdNet, item dominant


@pytest.fixture(scope="module")
def item_run(tmp_path_factory) -> Path:
    from dsrsd_cli.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("explain")
    data = root / "ednet"
    prepare_dataset(dataset="ednet", raw=None, out=data, sample_size=200, seed=0, workers=1,
                    strengths={"item": 3.0, "content": 0.1, "behavior": 0.1})
    cfg = load_config("smoke", [f'data.path="{data}"', "train.epochs=3", "train.max_steps_per_epoch=25", 'train.device="cpu"'])
    return train_run(cfg, out=root / "run", quiet=True)


def _check_efficiency(part: dict) -> None:
    for name in ("auc", "logit"):
        eff = part["efficiency"][name]
        assert eff["gap"] is not None and eff["gap"] <= EFFICIENCY_TOLERANCE
        assert sum(part["shapley"][name].values()) == pytest.approx(part["full"][name] - part["none"][name], abs=1e-9)


def test_explain_ranks_the_dominant_modality_first(item_run):
    result = explain_run(item_run, split="test", by="part", device="cpu")
    phi = result["shapley"]["auc"]
    assert result["ranking"][0] == "item", phi
    assert phi["item"] > 2 * max(phi["content"], phi["behavior"]), phi
    assert result["leave_one_out"]["item"]["auc_drop"] > max(result["leave_one_out"][m]["auc_drop"] for m in ("content", "behavior"))
    _check_efficiency(result)
    # the full coalition is the model as trained: its AUC is the run's own test AUC
    metrics = json.loads((item_run / "metrics.json").read_text())
    assert result["full"]["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert result["n"] == metrics["test"]["n"] and result["none"]["logit"] == 0.0

    gates = result["gates"]
    assert set(gates) == {"consensus", "item", "content", "behavior"} and sum(gates.values()) == pytest.approx(1.0, abs=1e-5)
    for m in ("item", "content", "behavior"):
        streams = result["streams"][m]
        assert 0.0 <= streams["shared_share"] <= 1.0
        assert streams["shared"]["logit_change"] >= 0 and streams["private"]["logit_change"] >= 0

    groups = result["by"]["groups"]
    assert [g["group"] for g in groups] == sorted(g["group"] for g in groups) and all(g["group"].startswith("part ") for g in groups)
    assert sum(g["n"] for g in groups) == result["n"]
    for g in groups:
        _check_efficiency(g)

    folder = item_run / "explain"
    assert json.loads((folder / "explain_test.json").read_text())["ranking"] == result["ranking"]
    for name in ("explain_test.png", "explain_test_by_part.png", "passes_test/meta.json", "passes_test/coalition_7.npy"):
        assert (folder / name).stat().st_size > 0


def test_second_explain_reuses_the_cached_passes(item_run, monkeypatch):
    first = explain_run(item_run, split="test", device="cpu")

    def no_recompute(*args, **kwargs):
        raise AssertionError("the passes were recomputed although the cache is valid")

    monkeypatch.setattr(explain_module, "compute_passes", no_recompute)
    again = explain_run(item_run, split="test", device="cpu")
    assert again["shapley"] == first["shapley"] and again["streams"] == first["streams"]


@pytest.fixture
def item_copy(item_run, tmp_path) -> Path:
    """A copy of the trained run (with its explain cache, if any) that a test may damage or retrain."""
    shutil.copytree(item_run, tmp_path / "run")
    return tmp_path / "run"


def _spy(monkeypatch, owner, name: str) -> list[int]:
    """Count the calls of owner.name (still doing the work)."""
    calls: list[int] = []
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def _whole_and_chunked(run: Path, monkeypatch, bys: tuple[str, ...], batch_size: int) -> tuple[list[dict], list[dict], int]:
    """explain (by each of `bys`) with the passes computed in one chunk, then again in chunks of
    about n / 5 rows (each a few loader batches of `batch_size`): both results, and the chunks
    the second computation wrote."""
    from dsrsd_cli.config import RunConfig

    monkeypatch.setattr(RunConfig, "eval_batch", property(lambda cfg: batch_size))   # every scoring loader's batch size
    appends = _spy(monkeypatch, explain_cache.CacheWriter, "append")
    shutil.rmtree(run / "explain" / "passes_test", ignore_errors=True)
    whole = [explain_run(run, by=by, device="cpu") for by in bys]
    assert len(appends) == 1                                       # the sample is far below CHUNK_ROWS: one chunk
    shutil.rmtree(run / "explain" / "passes_test")
    monkeypatch.setattr(explain_module, "CHUNK_ROWS", max(1, whole[0]["n"] // 5))
    chunked = [explain_run(run, by=by, device="cpu") for by in bys]
    return whole, chunked, len(appends) - 1


def test_a_cache_written_in_many_chunks_gives_the_same_explanation(item_copy, monkeypatch):
    whole, chunked, chunks = _whole_and_chunked(item_copy, monkeypatch, ("part",), batch_size=32)
    assert chunks >= 3, "the sample was not split into several chunks"
    assert chunked == whole
    assert json.loads((item_copy / "explain" / "explain_test.json").read_text()) == whole[0]


def test_a_partial_cache_folder_is_recomputed_not_trusted(item_copy, monkeypatch):
    first = explain_run(item_copy, device="cpu")
    cache = item_copy / "explain" / "passes_test"
    computes = _spy(monkeypatch, explain_module, "compute_passes")
    (item_copy / "explain" / "passes_test.npz").write_bytes(b"the cache of an older explain")
    _damage(cache, "column truncated")
    assert explain_run(item_copy, device="cpu") == first and len(computes) == 1
    assert not (item_copy / "explain" / "passes_test.npz").exists()          # the old cache file is gone
    _damage(cache, "meta missing")
    assert explain_run(item_copy, device="cpu") == first and len(computes) == 2
    assert explain_run(item_copy, device="cpu") == first and len(computes) == 2   # rewritten whole: trusted again
    assert not [p for p in (item_copy / "explain").iterdir() if p.name.startswith(".")]   # no temporary folder left


def test_new_weights_invalidate_the_cache(item_copy, monkeypatch):
    from safetensors.torch import load_file, save_file

    first = explain_run(item_copy, device="cpu")
    computes = _spy(monkeypatch, explain_module, "compute_passes")
    assert explain_run(item_copy, device="cpu") == first and not computes    # the same weights: the cache
    weights = item_copy / "model.safetensors"
    save_file({name: t * 1.5 if t.is_floating_point() else t for name, t in load_file(weights).items()}, weights)
    changed = explain_run(item_copy, device="cpu")
    assert len(computes) == 1 and changed["full"]["logit"] != first["full"]["logit"]


MECHANISM_KEYS = (
    "align_infonce", "align_infonce_chance", "align_infonce_shuffled", "align_top1", "align_top1_chance",
    "shared_effective_rank", "shared_rank_max", "shared_mean_abs_offdiag_corr", "shared_std_mean", "shared_std_min",
    "sp_cosine", "sp_abs_cosine", "sp_abs_cosine_chance", "gate_entropy", "gate_entropy_max", "gate_dominant_share",
)


def test_the_joint_design_trains_and_explains_end_to_end(item_run, tmp_path):
    """dsrsd.core = "joint" with sigmoid gates through what a user runs: train, then explain
    (streams, gates as shares though sigmoid weights are not, exact Shapley values)."""
    from dsrsd_cli.engine.runs import read_run_info

    data = read_run_info(item_run).cfg.data.path
    cfg = load_config("smoke", [f'data.path="{data}"', "train.epochs=1", "train.max_steps_per_epoch=5", 'train.device="cpu"',
                                'dsrsd.core="joint"', 'dsrsd.gate="sigmoid"'])
    run = train_run(cfg, out=tmp_path / "joint", quiet=True)
    assert (read_run_info(run).cfg.dsrsd.core, read_run_info(run).cfg.dsrsd.gate) == ("joint", "sigmoid")
    result = explain_run(run, split="test", device="cpu")
    assert set(result["streams"]) == {"item", "content", "behavior"}
    assert set(result["gates"]) == {"consensus", "item", "content", "behavior"}
    assert sum(result["gates"].values()) == pytest.approx(1.0, abs=1e-5)
    _check_efficiency(result)


def test_explain_reports_the_mechanisms_of_a_trained_dsrsd_run(item_run):
    result = explain_run(item_run, split="test", device="cpu")
    mech = result["mechanisms"]
    for key in MECHANISM_KEYS:
        assert isinstance(mech.get(key), float) and math.isfinite(mech[key]), (key, mech.get(key))
    assert set(result["mechanisms_meaning"]) == set(mech) and all(result["mechanisms_meaning"].values())
    # against their references: bounds that hold for any model
    assert mech["shared_rank_max"] == 8                                # smoke preset: k_shared = 8
    assert 0 <= mech["shared_effective_rank"] <= mech["shared_rank_max"] + 1e-6
    assert 0 < mech["align_top1_chance"] <= 1 and 0 <= mech["align_top1"] <= 1 and mech["align_pairs"] == 3
    assert 0 < mech["align_infonce_chance"] <= math.log(mech["align_rows"]) + 1e-9      # mean ln N <= ln mean N
    assert 0 <= mech["gate_entropy"] <= mech["gate_entropy_max"] + 1e-9
    assert mech["gate_entropy_max"] == pytest.approx(math.log(4)) and mech["gate_dominant"] in result["gates"]
    # the gate statistics cover the scored units, like the attribution's mean gates
    for name, weight in result["gates"].items():
        assert mech[f"gate_mean_{name}"] == pytest.approx(weight, abs=1e-5)
    assert mech["gate_units"] == result["n"]
    folder = item_run / "explain"
    assert json.loads((folder / "explain_test.json").read_text())["mechanisms"] == mech
    assert (folder / "explain_test_mechanisms.png").stat().st_size > 0


def test_explain_refuses_a_grouping_or_split_that_does_not_apply(item_run):
    with pytest.raises(BadInput, match="final_result"):
        explain_run(item_run, by="final_result", device="cpu")
    with pytest.raises(BadInput, match="--split"):
        explain_run(item_run, split="everything", device="cpu")


def test_explain_cli_prints_json_on_stdout_and_the_table_on_stderr(item_run, capsys):
    from rich.console import Console

    from dsrsd_cli.engine.explain import explain_from_cli

    explain_from_cli(run_dir=item_run, split="test", by="part", json_out=True, console=Console(stderr=True, width=120))
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["ranking"][0] == "item" and result["by"]["name"] == "part"
    assert "Shapley AUC" in err and "part 1" in err and "{" not in err
    assert "Mechanisms" in err and "effective rank" in err and set(MECHANISM_KEYS) <= set(result["mechanisms"])


# ---------------------------------------------------------------- OULAD: groups by final result and module, a gateless model


@pytest.fixture(scope="module")
def oulad_data(oulad_sample) -> Path:
    return oulad_sample


@pytest.mark.parametrize("model", ["dsrsd", "concat"])
def test_oulad_explain_by_final_result_and_module(oulad_data, tmp_path, model, monkeypatch):
    cfg = load_config("smoke_oulad", [f'data.path="{oulad_data}"', f'model.name="{model}"', 'train.device="cpu"'])
    run = train_run(cfg, out=tmp_path / model, quiet=True)
    result = explain_run(run, by="final_result", device="cpu")
    _check_efficiency(result)
    groups = [g["group"] for g in result["by"]["groups"]]
    assert set(groups) <= set(OULAD_RESULTS) and groups == sorted(groups, key=OULAD_RESULTS.index)
    assert sum(g["n"] for g in result["by"]["groups"]) == result["n"]
    # at_risk = Fail or Withdrawn: the label is constant inside a final_result group, so AUC is undefined there
    assert all(g["full"]["auc"] is None and g["shapley"]["auc"]["clicks"] is None for g in result["by"]["groups"])
    assert all(g["efficiency"]["logit"]["gap"] <= EFFICIENCY_TOLERANCE for g in result["by"]["groups"])
    if model == "dsrsd":
        assert "streams" in result and "gates" in result
        assert all(math.isfinite(result["mechanisms"][key]) for key in MECHANISM_KEYS)
    else:  # concat has no gate and no streams to ablate: nothing is made up
        assert "streams" not in result and "gates" not in result
        assert result["mechanisms"] == {} and "mechanisms_meaning" not in result
        assert not (run / "explain" / "explain_test_mechanisms.png").exists()
    by_module = explain_run(run, by="module", device="cpu")
    assert {g["group"] for g in by_module["by"]["groups"]} <= set(json.loads((oulad_data / "manifest.json").read_text())["vocab"]["code_module"])
    assert not math.isnan(by_module["shapley"]["logit"]["clicks"])
    if model == "dsrsd":
        _check_chunked_oulad_passes(run, monkeypatch)


def _check_chunked_oulad_passes(run: Path, monkeypatch) -> None:
    """Batches of 8 registrations, a few per chunk (final_result joined chunk by chunk; a module
    missing from a chunk keeps its code): the same explanations as with every batch in one chunk."""
    whole, chunked, chunks = _whole_and_chunked(run, monkeypatch, ("final_result", "module"), batch_size=8)
    assert chunks >= 3 and chunked == whole
