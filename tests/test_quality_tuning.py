"""benchmarks/quality.py --tune-trials: every model of a part gets its own `dsrsd tune` study
with the same budget, and its seeded runs carry its tuned values and their own seeds.

Smoke size: the small OULAD sample (conftest `oulad_sample`), the smoke_oulad preset, 2 epochs
of 3 steps, concat and gbdt with 2 trials each, in this process (workers=1).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dsrsd_cli.config import flat_keys, load_config, result_settings
from dsrsd_cli.engine import tune as tune_mod
from dsrsd_cli.engine.tune_space import SEARCH_SPACE

QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
PRESET = "smoke_oulad"
SETS = ["train.epochs=2", "train.max_steps_per_epoch=3", 'train.device="cpu"']
MODELS = "concat,gbdt"
TRIALS = 2
SEEDS = 2


def _load_quality():
    spec = importlib.util.spec_from_file_location("quality_bench", QUALITY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quality():
    return _load_quality()


@pytest.fixture(scope="module")
def tuned(quality, oulad_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("quality") / "tune" / "oulad"
    summaries = quality.tune_models(PRESET, MODELS, TRIALS, SETS, oulad_sample, root, workers=1)
    return root, summaries


def _finished(out: Path) -> list:
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{(out / 'study.db').resolve()}")
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_every_model_gets_its_own_study_with_the_same_budget(quality, tuned):
    root, summaries = tuned
    assert list(summaries) == ["concat", "gbdt"]
    for model, summary in summaries.items():
        out = root / model
        assert Path(summary["out"]) == out and (out / "study.db").is_file()
        assert len(_finished(out)) == TRIALS and summary["finished"] == TRIALS
        assert summary["trained_now"] == TRIALS and summary["seed"] == quality.TUNE_SEED
        assert summary["overrides"] == [*SETS, "train.threads=1"] and summary["preset"] == PRESET
        assert summary["best"] is not None and (out / "best.toml").is_file()
    # each model searched its own family's keys
    assert set(summaries["concat"]["space"]) == set(SEARCH_SPACE["neural"])
    assert set(summaries["gbdt"]["space"]) == set(SEARCH_SPACE["gbdt"])


def test_seeded_runs_carry_their_model_tuned_values_and_their_own_seeds(quality, tuned, oulad_sample):
    _, summaries = tuned
    values = {model: quality.tuned_values(s) for model, s in summaries.items()}
    configs = quality.run_configs(PRESET, MODELS, SEEDS, SETS, oulad_sample, values)
    untuned = load_config(PRESET, SETS)
    assert [(c.model.name, c.train.seed) for c in configs] == [
        (m, untuned.train.seed + k) for m in ("concat", "gbdt") for k in range(SEEDS)]
    for model, summary in summaries.items():
        best_toml = load_config(summary["best_toml"])
        best = flat_keys(best_toml)
        assert values[model] == {k: best[k] for k in summary["space"]}
        assert values[model] == summary["best"]["params"]            # best.toml holds the best trial's values
        for cfg in (c for c in configs if c.model.name == model):
            flat = flat_keys(cfg)
            assert {k: flat[k] for k in summary["space"]} == values[model]
            assert cfg.train.threads == 1 and cfg.preset == PRESET and cfg.train.epochs == 2
            # apart from its seed, the run is exactly the best trial's config (best.toml)
            got = {k: v for k, v in result_settings(cfg).items() if k != "train.seed"}
            want = {k: v for k, v in result_settings(best_toml).items() if k != "train.seed"}
            assert got == want
    # the models' tuned values differ; nothing leaks from one model to another
    assert configs[0].train.lr == values["concat"]["train.lr"]
    assert configs[-1].gbdt.num_leaves == values["gbdt"]["gbdt.num_leaves"]
    assert configs[-1].train.lr == untuned.train.lr              # gbdt does not search train.lr


def test_a_model_without_a_complete_trial_keeps_the_shipped_preset(quality, tuned, oulad_sample):
    _, summaries = tuned
    none_complete = {**summaries["gbdt"], "best": None, "best_toml": None}
    assert quality.tuned_values(none_complete) is None
    values = {"concat": quality.tuned_values(summaries["concat"]), "gbdt": None}
    plain = quality.run_configs(PRESET, "gbdt", SEEDS, SETS, oulad_sample)
    mixed = [c for c in quality.run_configs(PRESET, MODELS, SEEDS, SETS, oulad_sample, values) if c.model.name == "gbdt"]
    assert [c.model_dump() for c in mixed] == [c.model_dump() for c in plain]
    lines = quality.tuning_lines({"concat": summaries["concat"], "gbdt": none_complete}, values, trials=TRIALS,
                                 preset=PRESET, root=Path("OUT/tune/oulad"), seconds=1.0, workers=1)
    text = "\n".join(lines)
    assert "### Tuning" in text and f"**{TRIALS} trials**" in text
    assert "**Not tuned**" in text and "gbdt" in text and "shipped preset `smoke_oulad`" in text
    concat_row = next(line for line in lines if line.startswith("| concat |"))
    assert f"{summaries['concat']['best']['valid_auc']:.4f}" in concat_row and "train.lr=" in concat_row
    assert "Tuning time:" in text


def test_tuned_runs_live_apart_from_untuned_runs(quality):
    assert quality.runs_folder(0) == "runs"
    assert quality.runs_folder(TRIALS) == f"runs-tuned-{TRIALS}"
    assert quality.tune_dir(Path("t"), "dsrsd:no-align") == Path("t") / "dsrsd-no-align"


def test_a_second_invocation_reuses_the_studies(quality, tuned, oulad_sample, monkeypatch):
    root, first = tuned
    before = {m: [(t.number, t.value) for t in _finished(root / m)] for m in first}
    tomls = {m: (root / m / "best.toml").read_bytes() for m in first}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr(tune_mod, "train_run", no_training)
    again = quality.tune_models(PRESET, MODELS, TRIALS, SETS, oulad_sample, root, workers=1)
    for model, summary in again.items():
        assert summary["trained_now"] == 0 and summary["finished"] == TRIALS
        assert summary["best"] == first[model]["best"]
        assert [(t.number, t.value) for t in _finished(root / model)] == before[model]
        assert (root / model / "best.toml").read_bytes() == tomls[model]
    # a smaller budget than the studies hold is refused: every model must get the same
    with pytest.raises(SystemExit, match="more than --tune-trials 1"):
        quality.tune_models(PRESET, MODELS, 1, SETS, oulad_sample, root, workers=1)


def test_help_describes_the_option():
    res = subprocess.run([sys.executable, str(QUALITY), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--tune-trials N" in res.stdout and "runs-tuned-N" in res.stdout and "Equal tuning" in res.stdout
