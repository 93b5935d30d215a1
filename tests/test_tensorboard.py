"""`dsrsd train --log tensorboard` (config key train.log): event files in RUN_DIR/tensorboard/
read back with TensorBoard's EventAccumulator: the loss terms and lr per step, the validation
metrics and mech_* diagnostics per epoch, the hparams at the end; continuous curves after a
SIGKILL or a crash and --resume; the gbdt boosting curve; nothing at all without --log; a
one-line exit 2 when the package is missing. Runs on the built-in OULAD sample (CPU)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.compat.proto.event_pb2 import SessionLog  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from dsrsd_cli.config import RESULT_FREE_KEYS, load_config, result_settings  # noqa: E402
from dsrsd_cli.engine.tensorboard import LOG_DIR, NoLogger, open_logger  # noqa: E402
from dsrsd_cli.engine.train import train_run, warmup_cosine  # noqa: E402

PRESET = "smoke_oulad"
SETS = ["train.epochs=3", "train.lr=1e-3", "train.threads=1", 'train.device="cpu"']   # as tests/test_train.py
LOSS_TERMS = ("task", "infonce", "regression", "decorrelation", "orthogonality")


def _config(data: Path, *extra: str):
    return load_config(PRESET, [*SETS, f'data.path="{data}"', *extra])


def _cli_train(data: Path, out: Path, *extra: str) -> list[str]:
    sets = [item for s in SETS for item in ("--set", s)]
    return [sys.executable, "-m", "dsrsd_cli", "train", "--preset", PRESET, "--data", str(data), "--out", str(out), *sets, *extra]


def _curves(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / LOG_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def _steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def _values(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def _event_files(run: Path) -> list[Path]:
    return sorted((run / LOG_DIR).glob("events.out.tfevents.*"), key=lambda p: p.name)   # TensorBoard's reading order


def _raw_events(path: Path) -> list:
    return list(EventFileLoader(str(path)).Load())


def _global_step(run: Path) -> int:
    return int(torch.load(run / "state" / "state.pt", weights_only=True)["global_step"])


@pytest.fixture(scope="module")
def reference(oulad_sample, tmp_path_factory) -> Path:
    """An uninterrupted run with train.log = "tensorboard"."""
    return train_run(_config(oulad_sample, 'train.log="tensorboard"'), out=tmp_path_factory.mktemp("tb") / "reference", quiet=True)


def _assert_same_curves(run: Path, reference: Path) -> None:
    """Every train/* step once, 1..N, with the values of the uninterrupted run."""
    got, want = _curves(run), _curves(reference)
    n = _global_step(reference)
    for tag in ("train/loss", *(f"train/loss_{t}" for t in LOSS_TERMS), "train/lr"):
        assert _steps(got, tag) == list(range(1, n + 1)), tag           # continuous, no duplicate step
        a, b = _values(got, tag), _values(want, tag)
        assert all(a[s] == pytest.approx(b[s], abs=1e-6) for s in b), tag
    assert _steps(got, "valid/auc") == _steps(want, "valid/auc")
    assert list(_values(got, "valid/auc").values()) == pytest.approx(list(_values(want, "valid/auc").values()), abs=1e-6)


# ---------------------------------------------------------------- what is written


def test_curves_hold_the_loss_terms_per_step_and_the_epoch_metrics(reference):
    acc = _curves(reference)
    history = pd.read_csv(reference / "history.csv")
    n = _global_step(reference)
    per_epoch = n // len(history)
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", *(f"train/loss_{t}" for t in LOSS_TERMS)} <= scalars
    for tag in ("train/loss", "train/lr", *(f"train/loss_{t}" for t in LOSS_TERMS)):
        assert _steps(acc, tag) == list(range(1, n + 1)), tag

    # per step: the epoch means of history.csv are the means of the logged steps
    loss = _values(acc, "train/loss")
    for i, row in history.iterrows():
        steps = range(i * per_epoch + 1, (i + 1) * per_epoch + 1)
        assert sum(loss[s] for s in steps) / per_epoch == pytest.approx(row["train_loss"], rel=1e-5)
        for term in LOSS_TERMS:
            logged = _values(acc, f"train/loss_{term}")
            assert sum(logged[s] for s in steps) / per_epoch == pytest.approx(row[f"loss_{term}"], rel=1e-5, abs=1e-7), term

    # the learning rate of each step: warmup then cosine
    cfg = _config(Path("unused"))
    factor = warmup_cosine(n, int(cfg.train.warmup_frac * n))
    lr = _values(acc, "train/lr")
    assert [lr[s] for s in range(1, n + 1)] == pytest.approx([cfg.train.lr * factor(s - 1) for s in range(1, n + 1)], rel=1e-5)

    # per epoch (x axis: the global step at the epoch's end): valid_* and every mech_* column
    epoch_ends = [per_epoch * e for e in history["epoch"]]
    assert _steps(acc, "valid/auc") == epoch_ends
    assert list(_values(acc, "valid/auc").values()) == pytest.approx(list(history["valid_auc"]), rel=1e-5)
    assert "valid/log_loss" in scalars
    mech = [c for c in history.columns if c.startswith("mech_")]
    assert len(mech) >= 5
    for column in mech:
        tag = f"mech/{column[len('mech_'):]}"
        assert _steps(acc, tag) == epoch_ends, tag
        want = [float(v) for v in history[column]]
        got = list(_values(acc, tag).values())
        assert all((math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-7) for a, b in zip(got, want)), column


def test_hparams_are_the_flat_config_with_the_final_aucs(reference):
    acc = _curves(reference)
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["model.name"].string_value == "dsrsd"
    assert start.hparams["train.log"].string_value == "tensorboard"
    assert start.hparams["data.cutoff_day"].string_value == "None"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"hparam/valid_auc", "hparam/test_auc"}
    metrics = json.loads((reference / "metrics.json").read_text())
    for split in ("valid", "test"):
        (event,) = acc.Scalars(f"hparam/{split}_auc")
        assert event.value == pytest.approx(metrics[split]["auc"], rel=1e-6)
        assert event.step == _global_step(reference)


def test_without_log_no_folder_and_tensorboard_is_never_imported(oulad_sample, tmp_path):
    run = tmp_path / "plain"
    argv = _cli_train(oulad_sample, run)[3:]   # after "python -m dsrsd_cli"
    script = (
        "import json, sys\n"
        "from dsrsd_cli import cli\n"
        f"sys.argv = ['dsrsd', *{argv!r}]\n"
        "try:\n    cli.main()\nexcept SystemExit as e:\n    code = e.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorboard' or m.startswith('torch.utils.tensorboard'))\n"
        "print(json.dumps({'code': code, 'loaded': loaded}))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["code"] in (0, None), res.stderr[-3000:]
    assert out["loaded"] == []
    assert (run / "metrics.json").is_file() and not (run / LOG_DIR).exists()
    assert json.loads((run / "config.json").read_text())["config"]["train"]["log"] == "none"


# ---------------------------------------------------------------- resume: continuous curves


def test_sigkill_then_resume_gives_one_continuous_curve(oulad_sample, reference, tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli_train(oulad_sample, run, "--log", "tensorboard"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run / "state" / "state.pt"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()
    assert json.loads((run / "config.json").read_text())["config"]["train"]["log"] == "tensorboard"   # --log is the config key
    saved_step = _global_step(run)

    train_run(_config(oulad_sample, 'train.log="tensorboard"'), resume=run, quiet=True)
    files = _event_files(run)
    assert len(files) == 2
    first, second = (_raw_events(f) for f in files)
    assert any(e.summary.value and e.step == 1 for e in first)          # the killed run's file is read first
    starts = [e.step for e in second if e.HasField("session_log") and e.session_log.status == SessionLog.START]
    assert starts == [saved_step + 1]                                      # purge_step: after the saved state
    assert min(e.step for e in second if e.summary.value and e.summary.value[0].tag.startswith("train/")) == saved_step + 1
    _assert_same_curves(run, reference)


def test_crash_after_the_saved_state_then_resume_hides_the_stale_steps(oulad_sample, reference, tmp_path, monkeypatch, capsys):
    """A failure in epoch 2, step 3: steps 1-2 of epoch 2 are on disk (the writer is closed on
    the way out) but not in the saved state; the resumed run logs them again and TensorBoard
    shows them once. The resume goes through the CLI without --log: the key travels with the run."""
    from dsrsd_cli import cli
    from dsrsd_cli.model import losses

    class Crash(Exception):
        pass

    run = tmp_path / "crashed"
    per_epoch = _global_step(reference) // 3
    calls, real = {"n": 0}, losses.combine

    def combine(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == per_epoch + 3:
            raise Crash()
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "combine", combine)
    with pytest.raises(Crash):
        train_run(_config(oulad_sample, 'train.log="tensorboard"'), out=run, quiet=True)
    monkeypatch.setattr(losses, "combine", real)
    (stale,) = _event_files(run)
    stale_steps = [e.step for e in _raw_events(stale) if e.summary.value and e.summary.value[0].tag == "train/loss"]
    assert stale_steps == list(range(1, per_epoch + 3))                   # two steps past the saved state
    assert _global_step(run) == per_epoch

    monkeypatch.setattr(sys, "argv", ["dsrsd", "train", "--resume", str(run)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0, capsys.readouterr().err
    raw = [e.step for f in _event_files(run) for e in _raw_events(f) if e.summary.value and e.summary.value[0].tag == "train/loss"]
    assert sorted(raw) != sorted(set(raw))                                 # the duplicates are on disk...
    _assert_same_curves(run, reference)                                    # ...and hidden


def test_events_up_to_the_saved_step_are_on_disk_before_the_state(oulad_sample, tmp_path, monkeypatch):
    """A SIGKILL right after a state save must not lose steps that the resumed run will not
    log again: the writer is flushed before every save."""
    from dsrsd_cli.engine import train as train_module

    run, seen, real = tmp_path / "flushed", [], train_module.save_state

    def save_state(state, path):
        on_disk = [(e.summary.value[0].tag, e.step) for f in _event_files(run) for e in _raw_events(f) if e.summary.value]
        seen.append((int(state["global_step"]), on_disk))
        return real(state, path)

    monkeypatch.setattr(train_module, "save_state", save_state)
    train_run(_config(oulad_sample, "train.epochs=2", 'train.log="tensorboard"'), out=run, quiet=True)
    assert len(seen) == 2
    for step, on_disk in seen:
        assert sorted(s for tag, s in on_disk if tag == "train/loss") == list(range(1, step + 1))
        assert max(s for tag, s in on_disk if tag == "valid/auc") == step


def test_log_is_a_result_free_key(oulad_sample):
    assert "train.log" in RESULT_FREE_KEYS
    a, b = _config(oulad_sample), _config(oulad_sample, 'train.log="tensorboard"')
    assert result_settings(a) == result_settings(b)


# ---------------------------------------------------------------- gbdt, DDP, errors


def test_gbdt_logs_its_validation_curve_per_round_and_a_refit_replaces_it(oulad_sample, tmp_path):
    cfg = _config(oulad_sample, 'model.name="gbdt"', "gbdt.max_rounds=40", "gbdt.early_stopping_rounds=10", 'train.log="tensorboard"')
    run = train_run(cfg, out=tmp_path / "gbdt", quiet=True)
    acc = _curves(run)
    history = pd.read_csv(run / "history.csv")
    rounds = _steps(acc, "valid/auc")
    assert rounds == list(range(1, len(rounds) + 1)) and len(rounds) >= history["epoch"].max()
    auc = _values(acc, "valid/auc")
    assert [auc[r] for r in history["epoch"]] == pytest.approx(list(history["valid_auc"]), rel=1e-6)
    metrics = json.loads((run / "metrics.json").read_text())
    assert acc.Scalars("hparam/test_auc")[0].value == pytest.approx(metrics["test"]["auc"], rel=1e-6)
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")

    train_run(cfg, resume=run, quiet=True)   # a fit keeps no partial state: fitted again, the old curve hidden
    assert len(_event_files(run)) == 2
    assert _steps(_curves(run), "valid/auc") == rounds


def test_other_ranks_and_log_none_get_a_logger_that_writes_nothing(tmp_path):
    assert isinstance(open_logger("tensorboard", tmp_path, enabled=False), NoLogger)
    assert not open_logger("none", tmp_path).enabled
    assert not (tmp_path / LOG_DIR).exists()


@pytest.mark.slow
def test_ddp_only_rank_0_writes(oulad_sample, tmp_path):
    run = tmp_path / "ddp"
    res = subprocess.run([*_cli_train(oulad_sample, run, "--log", "tensorboard", "--set", "train.epochs=1"), "--nproc", "2"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(_event_files(run)) == 1
    n = _global_step(run)
    assert _steps(_curves(run), "train/loss") == list(range(1, n + 1))


def test_missing_tensorboard_is_one_line_exit_2_before_training(oulad_sample, tmp_path, monkeypatch, capsys):
    from dsrsd_cli import cli

    monkeypatch.setitem(sys.modules, "tensorboard", None)   # `import tensorboard` raises ImportError
    run = tmp_path / "never"
    monkeypatch.setattr(sys, "argv", ["dsrsd", "train", "--preset", PRESET, "--data", str(oulad_sample), "--out", str(run),
                                      "--device", "cpu", "--log", "tensorboard"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "dsrsd-cli[tensorboard]" in err
    assert not run.exists()                                                 # checked before any work


def test_unknown_log_kind_is_exit_2(oulad_sample, tmp_path, monkeypatch, capsys):
    from dsrsd_cli import cli

    monkeypatch.setattr(sys, "argv", ["dsrsd", "train", "--preset", PRESET, "--data", str(oulad_sample), "--out", str(tmp_path / "r"),
                                      "--log", "wandb"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "train.log" in err and len(err.strip().splitlines()) == 1, err
