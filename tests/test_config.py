"""Config: presets, --set overrides, the CLI options that map onto keys, and the errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dsrsd_cli.config import RunConfig, load_config, preset_names
from dsrsd_cli.engine.runs import spec_to_dict
from dsrsd_cli.engine.checkpoint import check_resumable as _check_resumable
from dsrsd_cli.engine.train import config_from_cli, resume_config
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import write_json
from dsrsd_cli.types import DataSpec


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsrsd_cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("preset", ["default", "oulad", "smoke", "smoke_oulad"])
def test_shipped_presets_validate(preset):
    assert preset in preset_names()
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert cfg.data.dataset == ("oulad" if "oulad" in preset else "ednet")


def test_set_overrides_parse_types_and_nest():
    cfg = load_config("smoke", ["loss.lambda_orth=0.25", "train.epochs=7", "train.bf16=false", "model.name=late", 'data.path="x y/z"'])
    assert cfg.loss.lambda_orth == 0.25 and isinstance(cfg.loss.lambda_orth, float)
    assert cfg.train.epochs == 7 and cfg.train.bf16 is False
    assert cfg.model.name == "late"
    assert cfg.data.path == "x y/z"


def test_cli_options_map_onto_keys():
    cfg = config_from_cli("smoke", model="single:item", data="prepared/e", device="cpu", overrides=["train.lr=0.01"], seed=7)
    assert (cfg.model.name, cfg.data.path, cfg.train.device, cfg.train.seed, cfg.train.lr) == ("single:item", "prepared/e", "cpu", 7, 0.01)


def test_unknown_key_names_the_key():
    with pytest.raises(BadInput, match=r"unknown key 'train\.nope'"):
        load_config("smoke", ["train.nope=1"])


def test_bad_value_names_the_key():
    with pytest.raises(BadInput, match=r"train\.lr = -1 is invalid"):
        load_config("smoke", ["train.lr=-1"])
    with pytest.raises(BadInput, match=r"train\.device"):
        config_from_cli("smoke", device="tpu")


def test_set_without_equals_is_bad_input():
    with pytest.raises(BadInput, match="KEY=VALUE"):
        load_config("smoke", ["train.lr"])


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The console script in-process (cli.main: one-line errors and exit codes)."""
    from dsrsd_cli import cli

    monkeypatch.setattr(sys, "argv", ["dsrsd", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "train.nope=1"], "train.nope"),
        (["--set", "model.dropout=2"], "model.dropout"),
        (["--device", "tpu"], "train.device"),
        (["--preset", "no_such_preset"], "no_such_preset"),
    ],
)
def test_cli_config_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(monkeypatch, capsys, "train", "--preset", "smoke", "--out", str(tmp_path / "run"), *args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written before the config is valid


def test_console_script_exit_2(tmp_path):
    res = run_cli("train", "--preset", "smoke", "--set", "dsrsd.tau=0", cwd=tmp_path)
    assert res.returncode == 2
    assert "dsrsd.tau" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()


def _fake_run(tmp_path, cfg: RunConfig, manifest_hash="abc"):
    run = tmp_path / "run"
    spec = DataSpec(dataset="ednet", modalities=("item", "content", "behavior"), n_outputs=1, vocab={"item.question": 10})
    write_json(run / "config.json", {
        "config": cfg.model_dump(), "spec": spec_to_dict(spec),
        "data": {"path": str(tmp_path / "data"), "manifest_hash": manifest_hash, "dataset": "ednet"},
        "tool_version": "0", "created": "now",
    })
    return run


def test_resume_refuses_a_changed_config_or_data(tmp_path):
    cfg = load_config("smoke", ["train.epochs=3"])
    run = _fake_run(tmp_path, cfg)
    _check_resumable(run, cfg, "abc")  # same config, same data: fine
    _check_resumable(run, cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cpu"})}), "abc")  # device may change
    with pytest.raises(BadInput, match=r"train\.epochs is 4 but the run used 3"):
        _check_resumable(run, load_config("smoke", ["train.epochs=4"]), "abc")
    with pytest.raises(BadInput, match="manifest hash"):
        _check_resumable(run, cfg, "another")
    # another model's section never stops a resume: `compare` reuses such runs too (result_settings)
    _check_resumable(run, load_config("smoke", ["train.epochs=3", "gbdt.num_leaves=7"]), "abc")
    with pytest.raises(BadInput, match=r"dsrsd\.tau is 0\.5"):
        _check_resumable(run, load_config("smoke", ["train.epochs=3", "dsrsd.tau=0.5"]), "abc")
    with pytest.raises(BadInput, match=r"model\.name is 'early' but the run used 'dsrsd' \(and \d+ more keys\)"):
        _check_resumable(run, load_config("smoke", ["train.epochs=3", 'model.name="early"']), "abc")


def test_resume_config_starts_from_the_saved_config(tmp_path):
    cfg = load_config("smoke", ["train.epochs=3", "loss.lambda_dec=0.5"])
    run = _fake_run(tmp_path, cfg)
    resumed = resume_config(run, preset="default", device="cpu")
    assert resumed.train.epochs == 3 and resumed.loss.lambda_dec == 0.5 and resumed.train.device == "cpu"
    assert resumed.data.path == str(tmp_path / "data")  # the absolute path recorded at training time
    with pytest.raises(BadInput, match="preset"):
        resume_config(run, preset="oulad")


# A run folder's config.json written before the DSRSD-Net settings moved to [dsrsd]
# (k_shared and private_dropout under model, tau, aux_rows and orth_private_pairs under loss).
OLD_LAYOUT = {
    "preset": "smoke",
    "data": {"dataset": "ednet", "path": "data/ednet", "max_len": 32, "context": 8, "batch_size": 16, "target": "correct",
             "cutoff_day": None, "max_weeks": 40, "num_workers": 0, "fold": None, "train_fraction": 1.0, "train_fraction_seed": 0},
    "model": {"name": "dsrsd", "d_model": 16, "k_shared": 12, "n_heads": 2, "n_layers": 1, "dropout": 0.1,
              "modality_dropout": 0.15, "private_dropout": 0.25},
    "loss": {"lambda_align": 0.1, "mu_reg": 1.0, "lambda_dec": 0.04, "lambda_orth": 0.1, "tau": 0.2, "aux_rows": 64,
             "orth_private_pairs": True},
    "train": {"epochs": 2, "lr": 0.003, "weight_decay": 0.01, "warmup_frac": 0.05, "clip_grad": 1.0, "patience": 2, "seed": 0,
              "device": "auto", "bf16": True, "max_steps_per_epoch": 5, "eval_batch_size": 256, "threads": 1},
    "gbdt": {"learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50, "feature_fraction": 0.8, "lambda_l2": 1.0,
             "max_rounds": 2000, "early_stopping_rounds": 50},
}


def test_an_old_run_config_loads_through_the_migration(tmp_path):
    from dsrsd_cli.config import load_run_config, migrate_config
    from dsrsd_cli.engine.runs import read_run_info

    run = tmp_path / "run"
    spec = DataSpec(dataset="ednet", modalities=("item", "content", "behavior"), n_outputs=1, vocab={"item.question": 10})
    write_json(run / "config.json", {
        "config": OLD_LAYOUT, "spec": spec_to_dict(spec),
        "data": {"path": str(tmp_path / "data"), "manifest_hash": "abc", "dataset": "ednet"},
        "tool_version": "0", "created": "now",
    })
    for cfg in (read_run_info(run).cfg, load_run_config(run)):
        # keys added since load at their defaults, which are the design such a run was trained with
        assert cfg.dsrsd.model_dump() == {"k_shared": 12, "private_dropout": 0.25, "tau": 0.2, "aux_rows": 64, "orth_private_pairs": True,
                                          "core": "per-modality", "gate": "softmax"}
        assert cfg.loss.lambda_dec == 0.04 and cfg.model.d_model == 16
    assert migrate_config(load_config("smoke").model_dump()) == load_config("smoke").model_dump()   # today's layout: unchanged
    _check_resumable(run, read_run_info(run).cfg, "abc")     # an old run can be resumed with its own (migrated) settings


@pytest.mark.parametrize("old, new, value", [
    ("model.k_shared", "dsrsd.k_shared", 64), ("model.private_dropout", "dsrsd.private_dropout", 0.3),
    ("loss.tau", "dsrsd.tau", 0.2), ("loss.aux_rows", "dsrsd.aux_rows", 256), ("loss.orth_private_pairs", "dsrsd.orth_private_pairs", True),
])
def test_a_moved_key_is_bad_input_naming_its_new_place(old, new, value):
    with pytest.raises(BadInput, match=rf"{old} moved to {new}"):
        load_config("smoke", [f"{old}={json.dumps(value)}"])
    section, key = new.split(".")
    assert getattr(getattr(load_config("smoke", [f"{new}={json.dumps(value)}"]), section), key) == value


# ---------------------------------------------------------------- per-model tuned values

TUNED_PRESET = """# my comments stay
[data]
dataset = "oulad"
path = "data/oulad"

[train]
lr = 0.002
epochs = 3

[tuned.early]
note = "by hand"

[tuned.early.train]
lr = 0.004

[tuned.early.model]
dropout = 0.25

[tuned."single:clicks".train]
lr = 0.001
"""


def test_tuned_values_apply_to_their_model_only_and_set_wins(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text(TUNED_PRESET)
    early = load_config(str(preset), ['model.name="early"'])
    assert (early.train.lr, early.model.dropout, early.train.epochs) == (0.004, 0.25, 3)
    assert load_config(str(preset), ['model.name="single:clicks"']).train.lr == 0.001
    assert load_config(str(preset), ['model.name="early:x"']).train.lr == 0.004           # a variant: its family's
    late = load_config(str(preset), ['model.name="late"'])
    assert (late.train.lr, late.model.dropout) == (0.002, 0.1)                       # the preset's own values
    assert load_config(str(preset), ['model.name="early"', "train.lr=0.1"]).train.lr == 0.1   # --set wins
    assert load_config(str(preset)).model.name == "dsrsd" and load_config(str(preset)).train.lr == 0.002


@pytest.mark.parametrize("table, needle", [
    ('[tuned.early.data]\nmax_weeks = 30\n', "sets data.max_weeks, which every model of a comparison shares"),
    ('[tuned.early.train]\nepochs = 30\n', "sets train.epochs, which every model"),
    ('[tuned.early.model]\nname = "late"\n', "sets model.name"),
    ('[tuned.early.train]\nlrr = 0.1\n', "[tuned.early]: unknown key 'train.lrr'"),
    ('[tuned]\nearly = 3\n', "[tuned] must hold one table per model"),
])
def test_a_bad_tuned_table_is_bad_input_naming_it(tmp_path, table, needle):
    preset = tmp_path / "p.toml"
    preset.write_text('[data]\ndataset = "oulad"\n\n' + table)
    with pytest.raises(BadInput, match=None) as e:
        load_config(str(preset), ['model.name="late"'])                               # refused whichever model runs
    assert needle in str(e.value)


def test_write_tuned_keeps_the_text_above_and_the_other_models(tmp_path):
    from dsrsd_cli.config import write_tuned

    preset = tmp_path / "p.toml"
    preset.write_text(TUNED_PRESET)
    write_tuned(preset, model="early", values={"train.lr": 0.003, "loss.lambda_align": 0.5}, note="study A", base_preset="oulad")
    text = preset.read_text()
    assert text.startswith("# my comments stay\n[data]") and "study A" in text and "[tuned.early.model]" not in text
    early = load_config(str(preset), ['model.name="early"'])
    assert (early.train.lr, early.loss.lambda_align, early.model.dropout) == (0.003, 0.5, 0.1)   # replaced, not merged
    assert load_config(str(preset), ['model.name="single:clicks"']).train.lr == 0.001          # kept
    write_tuned(preset, model="late", values={"train.lr": 0.005}, note="study B", base_preset="oulad")
    again = preset.read_text()
    assert again.startswith("# my comments stay\n[data]") and again.count("# ---- values tuned per model") == 1
    assert load_config(str(preset), ['model.name="late"']).train.lr == 0.005

    fresh = tmp_path / "new.toml"                          # a new file starts as a copy of the base preset
    write_tuned(fresh, model="early", values={"train.lr": 0.003}, note="study C", base_preset="oulad")
    assert load_config(str(fresh), ['model.name="late"']).model_dump() == {**load_config("oulad", ['model.name="late"']).model_dump(),
                                                                           "preset": "new"}
    with pytest.raises(BadInput, match="sets train.seed"):
        write_tuned(fresh, model="early", values={"train.seed": 3}, note="x", base_preset="oulad")
    assert load_config(str(fresh), ['model.name="early"']).train.lr == 0.003   # a refused write changed nothing
    with pytest.raises(BadInput, match="give a .toml file"):
        write_tuned(tmp_path / "p.txt", model="early", values={}, note="x", base_preset="oulad")


@pytest.mark.parametrize("preset, spec, differ", [
    ("oulad", DataSpec(dataset="oulad", target="at_risk", n_outputs=1, modalities=("demographics", "clicks", "assessments")),
     ("concat", "late", "model.d_model")),
    ("default", DataSpec(dataset="ednet", target="correct", n_outputs=1, modalities=("item", "content", "behavior")),
     ("dsrsd", "late", "train.lr")),
])
def test_the_shipped_presets_hold_tuned_values_for_registered_models(preset, spec, differ):
    from dsrsd_cli.config import flat_keys, tuned_models
    from dsrsd_cli.model.registry import check_model

    models = tuned_models(preset)
    assert {"dsrsd", "early", "late", "concat", "coattn", "gbdt"} <= set(models)
    check_model(spec, models)
    a, b, key = differ   # two models whose tuned values differ: each run takes its own table
    assert flat_keys(load_config(preset, [f'model.name="{a}"']))[key] != flat_keys(load_config(preset, [f'model.name="{b}"']))[key]


def test_a_plan_refuses_a_tuned_table_for_a_model_the_data_lacks(oulad_sample, tmp_path):
    from dsrsd_cli.engine.compare import plan_configs

    preset = tmp_path / "p.toml"
    preset.write_text('[data]\ndataset = "oulad"\ntarget = "at_risk"\n\n[tuned."single:item".train]\nlr = 0.001\n')   # EdNet's
    with pytest.raises(BadInput, match=r"preset .*p.toml: \[tuned.single:item\] is for a model oulad does not have"):
        plan_configs(str(preset), models="late", seeds=1, data=oulad_sample)
    preset.write_text('[data]\ndataset = "oulad"\ntarget = "at_risk"\n\n[tuned.single.train]\nlr = 0.001\n')     # a family
    assert plan_configs(str(preset), models="single:clicks,late", seeds=1, data=oulad_sample)[0].train.lr == 0.001


def test_a_models_result_settings_leave_out_the_sections_other_models_own():
    """`early` reads neither [dsrsd] nor [gbdt], DSRSD-Net not [gbdt]: runs and studies of a model
    stay reusable when only another model's section changes, and stop being so when their own does."""
    from dsrsd_cli.config import reads_key, result_settings

    def settings(name, *sets):
        return result_settings(load_config("default", [f'model.name="{name}"', *sets]))

    assert settings("early") == settings("early", "dsrsd.tau=0.5", "dsrsd.core=per-modality", "gbdt.num_leaves=7")
    assert settings("gbdt") == settings("gbdt", "dsrsd.tau=0.5")
    assert settings("gbdt") != settings("gbdt", "gbdt.num_leaves=7")
    assert settings("dsrsd:no-align") != settings("dsrsd:no-align", "dsrsd.tau=0.5")
    assert settings("dsrsd") == settings("dsrsd", "gbdt.num_leaves=7")
    assert not any(k.startswith(("dsrsd.", "gbdt.")) for k in settings("early"))
    assert reads_key("single:item", "train.lr") and reads_key("dsrsd:mean-gate", "dsrsd.k_shared")
    assert not reads_key("early", "dsrsd.k_shared")
