"""`dsrsd tune`: the search space, best.toml, continuing a study (also after SIGKILL), pruning,
and the refusals.

End to end on the small OULAD sample (conftest `oulad_sample`) with the smoke_oulad preset,
3 epochs of 4 steps, one thread: a trial takes about a second.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from rich.console import Console

from dsrsd_cli.config import RunConfig, load_config
from dsrsd_cli.engine import tune as tune_mod
from dsrsd_cli.engine.tune import make_on_epoch, make_pruner, tune
from dsrsd_cli.engine.tune_space import SEARCH_SPACE, Dim, family_of, search_space
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import dumps_toml

PRESET = "smoke_oulad"
SETS = ["train.epochs=3", "train.max_steps_per_epoch=4", "train.threads=1", 'train.device="cpu"']
DOCS = Path(__file__).resolve().parents[1] / "docs" / "tuning.md"
QUIET = Console(stderr=True, quiet=True)


def _tune(data: Path, out: Path, trials: int, model: str = "dsrsd", **kw) -> dict:
    return tune(model=model, trials=trials, preset=PRESET, out=out, overrides=SETS, data=data, seed=0, quiet=True, **kw)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dsrsd_cli", "tune", *args]


def _cli_tune(data: Path, out: Path, trials: int, model: str = "dsrsd") -> list[str]:
    sets = [item for s in SETS for item in ("--set", s)]
    return _cli("--model", model, "--trials", str(trials), "--preset", PRESET, "--data", str(data), "--out", str(out), *sets)


def _study(out: Path):
    return optuna.load_study(study_name="tune", storage=f"sqlite:///{(out / 'study.db').resolve()}")


def _finished(study) -> dict[int, float | None]:
    return {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))}


# ---------------------------------------------------------------- pure parts


def test_toml_emitter_round_trips_through_tomllib():
    doc = {
        "top": "level", "n": 3,
        "data": {"path": "C:\\data\\\"quoted\" dir\n\ttab \x7f \x01 é ü 😀", "max_len": 100, "cutoff_day": None,
                 "frac": 1.0, "neg": -0.0, "tiny": 1e-5, "huge": 3e300, "third": 1 / 3, "big_int": 2**62},
        "train": {"bf16": True, "off": False, "inf": math.inf, "ninf": -math.inf, "list": [1, 2.5, "x", True], "empty": []},
        "weird key": {"a.b": 1, "with space": "v"},
        "outer": {"x": 1, "inner": {"y": 2}},
    }
    text = dumps_toml(doc, header="line one\nline two")
    back = tomllib.loads(text)
    expected = json.loads(json.dumps(doc))            # a deep copy
    del expected["data"]["cutoff_day"]                # None: skipped
    assert back == expected
    assert math.copysign(1, back["data"]["neg"]) == -1 and back["data"]["third"] == 1 / 3
    assert text.startswith("# line one\n# line two\n")
    assert math.isnan(tomllib.loads(dumps_toml({"s": {"v": math.nan}}))["s"]["v"])
    for bad in ({"s": {"v": object()}}, {"s": {"v": [None]}}, {"s": {"v": [[1]]}}):
        with pytest.raises(TypeError):
            dumps_toml(bad)


def test_search_space_families_and_docs():
    assert family_of("dsrsd") == family_of("dsrsd:no-align") == "dsrsd"
    assert family_of("gbdt") == "gbdt"
    assert family_of("late") == family_of("single:clicks") == family_of("coattn") == "neural"
    assert set(SEARCH_SPACE["neural"]) < set(SEARCH_SPACE["dsrsd"])
    assert set(SEARCH_SPACE["dsrsd"]) - set(SEARCH_SPACE["neural"]) == {
        "loss.lambda_align", "loss.lambda_dec", "loss.lambda_orth", "dsrsd.tau", "dsrsd.k_shared", "dsrsd.private_dropout"}
    assert SEARCH_SPACE["neural"]["train.lr"] == Dim("float", 3e-4, 5e-3, log=True)
    assert SEARCH_SPACE["gbdt"]["gbdt.num_leaves"] == Dim("int", 8, 256, log=True)
    docs = DOCS.read_text(encoding="utf-8")
    for family in SEARCH_SPACE.values():
        for key in family:
            assert f"`{key}`" in docs, key                 # the docs list every searched key
            assert key in tune_mod.__doc__, key            # and so does the module docstring
    # every value of the space is valid for the config
    for family in SEARCH_SPACE.values():
        for corner in ("low", "high"):
            raw: dict = {}
            for key, dim in family.items():
                section, name = key.split(".")
                value = dim.choices[0 if corner == "low" else -1] if dim.kind == "choice" else getattr(dim, corner)
                raw.setdefault(section, {})[name] = int(value) if dim.kind == "int" else value
            raw.setdefault("model", {})["n_heads"] = 4
            RunConfig.model_validate(raw)


def test_d_model_choices_follow_n_heads_and_set_keys_are_fixed():
    base = RunConfig()
    assert search_space("dsrsd", base.model_copy(update={"model": base.model.model_copy(update={"n_heads": 3})}))["model.d_model"].choices == (96,)
    with pytest.raises(BadInput, match="n_heads = 5"):
        search_space("late", base.model_copy(update={"model": base.model.model_copy(update={"n_heads": 5})}))
    space = search_space("dsrsd", base, fixed=["train.lr", "train.epochs"])
    assert "train.lr" not in space and "train.weight_decay" in space
    assert "model.d_model" not in search_space("gbdt", base)


def test_default_pruner_prunes_a_poor_trial_from_its_second_epoch_but_not_at_the_last():
    study = optuna.create_study(direction="maximize", pruner=make_pruner())
    dist = optuna.distributions.FloatDistribution(0, 1)
    for i in range(3):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": dist}, value=0.9,
                                                  intermediate_values={0: 0.8, 1: 0.85 + i / 100, 2: 0.9}))
    cfg = load_config(PRESET, ["train.epochs=3"])
    trial = study.ask()
    on_epoch = make_on_epoch(trial, cfg, QUIET)
    on_epoch(1, 0.1)                                      # first epoch: warm-up, never pruned
    with pytest.raises(optuna.TrialPruned):
        on_epoch(2, 0.2)                                  # below the median of the complete trials
    assert trial.should_prune()

    last = study.ask()
    on_last = make_on_epoch(last, load_config(PRESET, ["train.epochs=2"]), QUIET)
    on_last(1, 0.1)
    on_last(2, 0.1)                                       # the last epoch: nothing left to save, completes


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def study3(oulad_sample, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tune") / "study"
    return out, _tune(oulad_sample, out, 3)


def test_three_trials_write_a_best_toml_in_the_space_equal_to_the_best_trial(oulad_sample, study3):
    out, summary = study3
    study = _study(out)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(_finished(study)) == 3 and summary["finished"] == 3 and summary["trained_now"] == 3
    best = max(complete, key=lambda t: t.value)
    assert summary["best"]["number"] == best.number and summary["best"]["valid_auc"] == best.value

    cfg = load_config(str(out / "best.toml"))             # what `dsrsd train --preset OUT/best.toml` loads
    space = SEARCH_SPACE["dsrsd"]
    assert set(best.params) == set(space)
    for key, dim in space.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        assert dim.contains(value), (key, value)
        assert value == best.params[key], key
    # everything else is the preset + overrides, data.path absolute
    trial_cfg = json.loads((out / "trials" / f"trial_{best.number}" / "config.json").read_text())["config"]
    got = cfg.model_dump()
    assert got["data"]["path"] == str(Path(oulad_sample).resolve())
    for section in ("data", "model", "loss", "train", "gbdt"):
        want = dict(trial_cfg[section])
        if section == "data":
            want["path"] = got["data"]["path"]
        assert got[section] == want, section
    assert cfg.preset == "best" and cfg.train.epochs == 3 and cfg.model.name == "dsrsd"
    text = (out / "best.toml").read_text()
    assert text.startswith("#") and f"best validation AUC {best.value:.6f}" in text and "3 finished trials" in text

    from dsrsd_cli.engine.compare import plan_configs   # `dsrsd compare --preset OUT/best.toml` accepts it
    assert plan_configs(str(out / "best.toml"), models="dsrsd,late", seeds=1)[0].model_dump() == {**got, "preset": "best"}

    # trial 0 is the preset itself (its values of every searched key inside the space)
    from dsrsd_cli.config import flat_keys
    from dsrsd_cli.engine.train import config_from_cli
    preset_values = flat_keys(config_from_cli(PRESET, model="dsrsd", data=oulad_sample, overrides=SETS))
    inside = [k for k in space if space[k].contains(preset_values[k])]   # smoke: d_model 16, k_shared 8 are not: sampled
    first = study.trials[0]
    assert len(inside) >= len(space) - 2 and first.user_attrs.get("preset") is True   # d_model, k_shared
    assert all(first.params[k] == preset_values[k] for k in inside)

    table = pd.read_csv(out / "trials.csv")
    assert list(table["number"]) == [0, 1, 2] and set(table["state"]) == {"COMPLETE"}
    assert {"value", "seconds", "epochs", "train.lr", "dsrsd.tau"} <= set(table.columns)
    assert table.loc[table["number"] == best.number, "train.lr"].item() == pytest.approx(best.params["train.lr"], rel=1e-12)
    assert (table["seconds"] > 0).all() and (table["epochs"] >= 1).all()


def test_trials_never_score_the_test_split(study3):
    """Tuning reads validation only, and a trial does not even compute test metrics or
    predictions: nothing of the test split can be looked at while tuning."""
    out, _ = study3
    for number in range(3):
        run_dir = out / "trials" / f"trial_{number}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert "valid" in metrics and "test" not in metrics, number
        assert not (run_dir / "predictions.parquet").exists(), number
        assert "test AUC" not in (run_dir / "log.txt").read_text(), number
    from dsrsd_cli.engine.compare import load_runs
    with pytest.raises(BadInput, match="validation only"):
        load_runs([out / "trials" / "trial_0", out / "trials" / "trial_1"])


def test_the_same_command_again_trains_nothing(oulad_sample, study3, monkeypatch):
    out, first = study3
    before = _finished(_study(out))
    toml = (out / "best.toml").read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr(tune_mod, "train_run", no_training)
    again = _tune(oulad_sample, out, 3)
    assert again["trained_now"] == 0 and again["best"] == first["best"]
    assert _finished(_study(out)) == before
    assert (out / "best.toml").read_bytes() == toml
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial_0", "trial_1", "trial_2"]


def _killable(out: Path) -> bool:
    """Trial 0 finished and a later trial saved an epoch's state: a kill now leaves a RUNNING
    trial with a resumable run folder."""
    trials = out / "trials"
    return (trials / "trial_0" / "metrics.json").exists() and any(
        (d / "state" / "state.pt").exists() and not (d / "metrics.json").exists() for d in trials.glob("trial_*"))


def test_a_killed_study_continues_to_exactly_n_finished_trials(oulad_sample, study3, tmp_path):
    out = tmp_path / "killed"
    child = subprocess.Popen(_cli_tune(oulad_sample, out, 4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while True:
            assert child.poll() is None, f"tune ended before it could be killed: {child.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline
            if _killable(out):
                os.kill(child.pid, signal.SIGSTOP)        # frozen: check again, then kill (no race with the check)
                if _killable(out):
                    break
                os.kill(child.pid, signal.SIGCONT)
            time.sleep(0.01)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stderr.close()

    study = _study(out)
    done_before = _finished(study)
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert 1 <= len(done_before) < 4 and len(running) == 1
    stale = running[0]

    summary = _tune(oulad_sample, out, 4)
    study = _study(out)
    after = _finished(study)
    assert len(after) == 4 and summary["finished"] == 4
    assert {n: after[n] for n in done_before} == done_before          # finished trials kept as they were
    assert study.trials[stale.number].state == TrialState.FAIL
    heirs = [t for t in study.trials if t.user_attrs.get("resume_from") == stale.number]
    assert len(heirs) == 1 and heirs[0].params == stale.params and heirs[0].number in after
    heir_dir = out / "trials" / f"trial_{heirs[0].number}"
    assert "resumed at epoch" in (heir_dir / "log.txt").read_text()   # its run folder was continued, not restarted
    assert not (out / "trials" / f"trial_{stale.number}").exists()
    # the sampler is seeded per finished trial: the same trials as the uninterrupted study
    uninterrupted = _study(study3[0]).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    killed = sorted((t for t in study.trials if t.number in after), key=lambda t: t.number)[:3]
    for a, b in zip(uninterrupted, killed):
        assert a.params == b.params
        assert a.value == pytest.approx(b.value, abs=1e-6)
    assert len(pd.read_csv(out / "trials.csv")) == 5


class _PruneTrialZero(optuna.pruners.BasePruner):
    """Prunes trial 0 from its second report on; never any other trial."""

    def prune(self, study, trial) -> bool:
        return trial.number == 0 and (trial.last_step or 0) >= 1


def test_a_pruned_trial_stops_early_and_is_never_the_best(oulad_sample, tmp_path):
    out = tmp_path / "pruned"
    summary = _tune(oulad_sample, out, 2, pruner=_PruneTrialZero())
    study = _study(out)
    t0, t1 = study.trials
    assert t0.state == TrialState.PRUNED and t1.state == TrialState.COMPLETE
    assert sorted(t0.intermediate_values) == [0, 1] and t0.value == t0.intermediate_values[1]
    from dsrsd_cli.engine.runs import load_state

    assert load_state(out / "trials" / "trial_0" / "state" / "state.pt")["epoch"] == 2    # stopped after epoch 2 of 3
    assert not (out / "trials" / "trial_0" / "metrics.json").exists()
    assert summary["pruned"] == 1 and summary["complete"] == 1 and summary["best"]["number"] == 1
    assert "trial 1 of 2 finished trials (1 complete, 1 pruned)" in (out / "best.toml").read_text().lower()
    assert list(pd.read_csv(out / "trials.csv")["state"]) == ["PRUNED", "COMPLETE"]


def test_refusals_exit_2_with_one_line(oulad_sample, study3, tmp_path):
    out, _ = study3
    res = subprocess.run(_cli_tune(oulad_sample, out, 3, model="late"), capture_output=True, text=True, timeout=120)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "--model 'dsrsd', not 'late'" in lines[0], res.stderr

    res = subprocess.run(_cli_tune(oulad_sample, tmp_path / "nope", 3, model="nope"), capture_output=True, text=True, timeout=120)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "'nope' is not a registered model" in lines[0], res.stderr
    assert not (tmp_path / "nope").exists()

    with pytest.raises(BadInput, match="train.max_steps_per_epoch = 4, not 2"):      # same model, other overrides
        tune(model="dsrsd", trials=3, preset=PRESET, out=out, overrides=[*SETS, "train.max_steps_per_epoch=2"],
             data=oulad_sample, quiet=True)
    with pytest.raises(BadInput, match="--seed 0, not 1"):
        tune(model="dsrsd", trials=3, preset=PRESET, out=out, overrides=SETS, data=oulad_sample, seed=1, quiet=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(BadInput, match="not a tune folder"):
        _tune(oulad_sample, tmp_path / "other", 1)


def test_into_puts_the_best_values_into_a_preset_for_that_model_only(oulad_sample, study3, tmp_path):
    out, summary = study3
    into = tmp_path / "tuned.toml"
    res = subprocess.run([*_cli_tune(oulad_sample, out, 3), "--into", str(into)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    best = summary["best"]["params"]
    cfg = load_config(str(into), ['model.name="dsrsd"'])                # a copy of the base preset + the table
    for key, value in best.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value, key
    other = load_config(str(into), ['model.name="late"']).model_dump()
    assert other == {**load_config(PRESET, ['model.name="late"']).model_dump(), "preset": "tuned"}   # untouched
    text = into.read_text()
    assert f"best validation AUC {summary['best']['valid_auc']:.4f}" in text and str(tmp_path) not in text

    res = subprocess.run([*_cli_tune(oulad_sample, out, 3), "--into", str(tmp_path / "x.txt")], capture_output=True, text=True, timeout=120)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "give a .toml file" in lines[0], res.stderr


def test_a_study_of_an_older_version_continues_for_a_baseline_but_not_for_the_model_whose_section_changed(tmp_path):
    """Studies written before result settings left out other models' sections recorded every
    key: a baseline's study continues whatever [dsrsd] says now; DSRSD-Net's does not."""
    from types import SimpleNamespace

    from dsrsd_cli.engine.tune import _check_identity

    def identity(model, **settings):
        return {"model": model, "settings": {"train.lr": 0.002, **settings}, "manifest_hash": "h", "seed": 0, "space": {}}

    def old_study(model):   # what an older version saved: the dsrsd section for every model
        return SimpleNamespace(user_attrs={**identity(model, **{"dsrsd.tau": 0.2}), "dsrsd_tune": "0.1.0"}, trials=[1])

    _check_identity(old_study("early"), identity("early"), tmp_path)                       # continues
    _check_identity(old_study("dsrsd"), identity("dsrsd", **{"dsrsd.tau": 0.2}), tmp_path)  # same values: continues
    with pytest.raises(BadInput, match="dsrsd.tau = 0.2, not 0.5"):
        _check_identity(old_study("dsrsd"), identity("dsrsd", **{"dsrsd.tau": 0.5}), tmp_path)


def test_a_study_made_before_a_key_existed_continues_at_that_keys_default(tmp_path):
    """A key added since (dsrsd.core) ran at its default in the older version: the study
    continues while the key holds that default, and is refused once it does not."""
    from types import SimpleNamespace

    from dsrsd_cli.engine.tune import _check_identity

    def identity(**settings):
        return {"model": "dsrsd", "settings": {"train.lr": 0.002, **settings}, "manifest_hash": "h", "seed": 0, "space": {}}

    older = SimpleNamespace(user_attrs={**identity(), "dsrsd_tune": "0.1.0"}, trials=[1])   # no dsrsd.core saved
    _check_identity(older, identity(**{"dsrsd.core": "per-modality"}), tmp_path)
    with pytest.raises(BadInput, match="dsrsd.core = 'per-modality', not 'joint'"):
        _check_identity(older, identity(**{"dsrsd.core": "joint"}), tmp_path)


def test_a_preset_holding_an_earlier_winner_is_not_drawn_again():
    """`dsrsd tune --into` writes a study's winner into the preset; a new study of that preset
    starts from it (trial 0) and must not draw it again at the winner's trial number."""
    from dsrsd_cli.engine.tune import enqueue_preset, make_sampler, preset_salt

    base = RunConfig()
    space = search_space("early", base)

    def draws(start: RunConfig, n: int) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(0, 0))
        enqueue_preset(study, start, space)
        out = []
        for i in range(n):   # as _Runner.run_until seeds each trial
            study.sampler = make_sampler(0, i, preset_salt(study))
            trial = study.ask()
            out.append({key: dim.sample(trial, key) for key, dim in space.items()})
            study.tell(trial, 0.5 + i / 100)
        return out

    first = draws(base, 4)
    for winner in (1, 2, 3):   # whichever trial won, written into the preset
        updates = {}
        for key, value in first[winner].items():
            section, name = key.split(".")
            updates.setdefault(section, {})[name] = value
        tuned = base.model_copy(update={s: getattr(base, s).model_copy(update=u) for s, u in updates.items()})
        second = draws(tuned, 4)
        assert second[0] == first[winner]                    # trial 0: the preset, i.e. the old winner
        assert all(d != first[winner] for d in second[1:]), winner
