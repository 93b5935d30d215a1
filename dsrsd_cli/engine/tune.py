"""`dsrsd tune`: hyperparameter search with Optuna (TPE sampler, median pruning).

    dsrsd tune --model dsrsd --trials 30 --preset default

Just over 500 lines on purpose: a study's life (identity checks, lock, sampler seeding, the
trial runner, the summary) is one concept; the search space is in tune_space.py.

Each trial is one `train_run` of the preset + `model.name=M` + the `--set` overrides + the
trial's sampled values, trained into OUT/trials/trial_<number>/. Its validation AUC is
reported after every epoch (step = epoch - 1), so the median pruner can stop a poor trial
from its second epoch on (n_warmup_steps=1; never at the last epoch, where stopping saves
nothing); a trial's value is its run's best validation AUC (metrics.json "valid" "auc").
The test split is never scored: a trial's run folder holds validation metrics only (no
predictions file). The study maximises validation AUC.

OUT (default tunes/<preset stem>-<model, ':' as '-'>) holds:
  study.db    the Optuna study (SQLite). The same command continues an interrupted study:
              finished trials (COMPLETE, PRUNED) are kept; a trial left RUNNING by a killed
              process is marked FAIL and its parameters are enqueued again, and the new trial
              takes over its run folder (resumed from its saved state, or restarted when it
              has none), until the study has --trials finished trials. A folder made for
              another model, preset/overrides, data or --seed is refused.
  trials/     one run folder per trial.
  best.toml   the best COMPLETE trial's resolved config as a preset (every section,
              data.path absolute): `dsrsd train --preset OUT/best.toml` and
              `dsrsd compare --preset OUT/best.toml` accept it.
  trials.csv  number, state, value, seconds, epochs, then one column per searched key.

Sampling is reproducible: before each trial the TPE sampler is seeded from (--seed, the
number of finished trials, a digest of the study's trial 0), so a killed and continued study
samples what the uninterrupted one would have, and a study of a preset that holds an earlier
study's winner does not draw that winner again (`preset_salt`).

Search space (SEARCH_SPACE in engine/tune_space.py, the one place it is defined; "log" = log-uniform):

  every neural model
    train.lr                   float, log   3e-4 .. 5e-3
    train.weight_decay         float, log   1e-4 .. 0.1
    model.dropout              float        0 .. 0.3
    model.modality_dropout     float        0 .. 0.4
    model.d_model              choice       32, 64, 96 (those divisible by model.n_heads)
    model.n_layers             choice       1, 2
  DSRSD-Net (dsrsd, dsrsd:*): the neural keys, plus
    loss.lambda_align          float, log   0.003 .. 1
    loss.lambda_dec            float, log   0.001 .. 0.3
    loss.lambda_orth           float, log   0.001 .. 0.3
    dsrsd.tau                  float        0.05 .. 0.5
    dsrsd.k_shared             choice       16, 32, 64
    dsrsd.private_dropout      float        0 .. 0.5
  gbdt (LightGBM reference model)
    gbdt.learning_rate         float, log   0.01 .. 0.2
    gbdt.num_leaves            int, log     8 .. 256
    gbdt.min_data_in_leaf      int, log     5 .. 500
    gbdt.feature_fraction      float        0.4 .. 1.0
    gbdt.lambda_l2             float, log   1e-3 .. 10
    model.modality_dropout     float        0 .. 0.4

A key given with --set is fixed at that value and not searched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape

from dsrsd_cli import __version__
from dsrsd_cli.config import MOVED_KEYS, RunConfig, flat_keys, reads_key, result_settings, write_tuned
from dsrsd_cli.engine.runs import METRICS_FILE, STATE_FILE
from dsrsd_cli.engine.train import TrainingInterrupted, config_from_cli, train_run
from dsrsd_cli.engine.tune_space import Dim, family_of, search_space
from dsrsd_cli.errors import BadInput, WorkFailed
from dsrsd_cli.io import atomic_write_text, dumps_toml
from dsrsd_cli.report import best_table, print_json, trials_table

try:
    import optuna
    from optuna.trial import TrialState
except ImportError:  # the `tune` extra: pip install 'dsrsd-cli[tune]'
    optuna = None
    TrialState = None

STUDY_NAME = "tune"
STUDY_DB = "study.db"
TRIALS_DIR = "trials"
BEST_TOML = "best.toml"
TRIALS_CSV = "trials.csv"
LOCK_FILE = ".tune.lock"
PRUNER_STARTUP_TRIALS = 3     # complete trials before the median pruner acts
PRUNER_WARMUP_STEPS = 1       # steps are epochs - 1: a trial's first epoch is never pruned
MAX_FAILURES_IN_A_ROW = 3     # trials failing during training (e.g. a NaN loss) before tune gives up


# ---------------------------------------------------------------- command line

def tune_from_cli(
    *, model: str, trials: int, preset: str, out: Path | None, overrides: list[str], data: Path | None,
    seed: int, json_out: bool, console: Console, into: Path | None = None,
) -> None:
    if into is not None and Path(into).suffix != ".toml":
        raise BadInput(f"--into {into}: give a .toml file (a preset to hold the tuned values)")
    summary = tune(model=model, trials=trials, preset=preset, out=out, overrides=overrides, data=data, seed=seed, console=console)
    console.print(trials_table(summary))
    if summary["best"] is not None:
        console.print(best_table(summary))
        console.print(f"wrote {escape(summary['best_toml'])} and {escape(summary['trials_csv'])}", highlight=False)
        if into is not None:
            write_tuned(into, model=model, values=summary["best"]["params"], note=tuned_note(summary), base_preset=preset)
            console.print(f"wrote the best values into {escape(str(into))} as its {escape(f'[tuned.{model}]')} table: "
                          f"`dsrsd compare --preset {escape(str(into))}` trains {escape(model)} with them", highlight=False)
    else:
        console.print(f"[yellow]no trial completed (all pruned or failed): no {BEST_TOML}[/yellow]; wrote {escape(summary['trials_csv'])}", highlight=False)
    if json_out:
        print_json(summary)


def tuned_note(summary: dict[str, Any]) -> str:
    """Where a [tuned.<model>] table came from, in one line (no local paths: presets are shipped)."""
    best = summary["best"]
    return (f"dsrsd tune {__version__}: preset {Path(summary['preset']).stem}, --set {' '.join(summary['overrides']) or '(none)'}, "
            f"--seed {summary['seed']}; trial {best['number']} of {summary['finished']} finished "
            f"({summary['complete']} complete), best validation AUC {best['valid_auc']:.4f}")


def _require_optuna() -> None:
    if optuna is None:
        raise BadInput("`dsrsd tune` needs Optuna: pip install 'dsrsd-cli[tune]' (or pip install 'optuna>=3.4')")


def default_out(preset: str, model: str) -> Path:
    return Path("tunes") / f"{Path(preset).stem}-{model.replace(':', '-')}"


def make_pruner():
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_STEPS)


def make_sampler(seed: int, n_finished: int, salt: int = 0):
    """TPE seeded from (seed, finished trials, the study's `preset_salt`): a continued study
    samples like an uninterrupted one."""
    return optuna.samplers.TPESampler(seed=int(np.random.SeedSequence([seed, n_finished, salt]).generate_state(1)[0]))


def preset_salt(study) -> int:
    """A digest of the study's trial 0 (the preset's values; 0 without one). Without it, a
    study of a preset that holds an earlier study's winner (`dsrsd tune --into`) drew that
    winner again at the same trial number: a trial of the budget spent on a repeat (found
    re-tuning the shipped `oulad` tables: trial 1 of dsrsd, early and concat, trial 2 of gbdt)."""
    first = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("preset")), None)
    if first is None:
        return 0
    values = first.system_attrs.get("fixed_params") or first.params
    return int.from_bytes(hashlib.sha256(json.dumps(values, sort_keys=True).encode()).digest()[:8], "little")


def tune(
    *, model: str, trials: int, preset: str = "default", out: Path | None = None, overrides: Sequence[str] = (),
    data: Path | None = None, seed: int = 0, console: Console | None = None, quiet: bool = False, pruner=None,
) -> dict[str, Any]:
    """Run (or continue) the study until it has `trials` finished trials; returns the summary.

    `pruner`: an Optuna pruner instead of make_pruner() (tests).
    """
    _require_optuna()
    console = Console(stderr=True, quiet=True) if quiet else (console or Console(stderr=True))
    if trials < 1:
        raise BadInput(f"--trials {trials}: must be at least 1")
    overrides = list(overrides)
    base = config_from_cli(preset, model=model, data=data, overrides=overrides)
    prepared_hash = _check_model(base)
    fixed = [item.partition("=")[0].strip() for item in overrides]
    space = search_space(model, base, fixed)
    out = Path(out) if out is not None else default_out(preset, model)
    identity = {
        "model": model, "preset": preset, "overrides": overrides, "seed": seed,
        "settings": {k: v for k, v in result_settings(base).items() if k not in space}, "manifest_hash": prepared_hash,
        "space": {k: d.as_json() for k, d in space.items()},
    }
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _locked(out):
        storage = optuna.storages.RDBStorage(f"sqlite:///{(out / STUDY_DB).resolve()}")
        try:
            study = optuna.create_study(
                storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
                sampler=make_sampler(seed, 0), pruner=pruner or make_pruner(),
            )
            _check_identity(study, identity, out)
            runner = _Runner(study, out=out, preset=preset, model=model, data=data, overrides=overrides, space=space,
                             seed=seed, console=console)
            runner.requeue_stale()
            if not study.trials:
                enqueue_preset(study, base, space)
            runner.run_until(trials)
            return runner.finish(trials)
        finally:
            with contextlib.suppress(Exception):
                storage.engine.dispose()


def enqueue_preset(study, base: RunConfig, space: dict) -> None:
    """Trial 0 of a new study is the preset itself (its values of the searched keys, those
    inside the space): with a small budget, tuning then never ends below the shipped preset
    on validation, and every model's study starts from its own preset alike."""
    values = flat_keys(base)
    start = {key: values[key] for key, dim in space.items() if key in values and dim.contains(values[key])}
    if start:
        study.enqueue_trial(start, user_attrs={"preset": True})


def _check_model(base: RunConfig) -> str:
    """BadInput unless base.model.name is a registered model for the data; returns the manifest hash."""
    from dsrsd_cli.data.loader import make_spec, open_prepared
    from dsrsd_cli.model.registry import check_model

    prepared = open_prepared(base.data.path)
    check_model(make_spec(prepared, base.data), base.model.name, where="--model")
    return prepared.manifest_hash


def _check_out(out: Path) -> None:
    if out.is_symlink():
        raise BadInput(f"--out {out}: is a symbolic link; choose another --out")
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: exists and is not a folder; choose another --out")
    if out.is_dir() and not (out / STUDY_DB).is_file() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise BadInput(f"--out {out}: not empty and holds no {STUDY_DB}; it is not a tune folder, choose another --out")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One `dsrsd tune` per study folder: a RUNNING trial found at start is then surely stale.
    The lock goes with the process, even on SIGKILL."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BadInput(f"{out}: another `dsrsd tune` is running on this study; wait for it or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _check_identity(study, identity: dict[str, Any], out: Path) -> None:
    """Record what the study is for; refuse continuing it with anything else."""
    saved = study.user_attrs
    if not saved.get("dsrsd_tune"):
        if study.trials:
            raise BadInput(f"{out / STUDY_DB}: holds an Optuna study not made by `dsrsd tune`; choose another --out")
        for key, value in identity.items():
            study.set_user_attr(key, value)
        study.set_user_attr("dsrsd_tune", __version__)   # last: a study killed before this line starts over
        return
    where = f"{out} is a study for"
    hint = "; continue it with its own settings or choose another --out"
    if saved.get("model") != identity["model"]:
        raise BadInput(f"{where} --model {saved.get('model')!r}, not {identity['model']!r}{hint}")
    moved = {MOVED_KEYS.get(k, k): v for k, v in saved.get("settings", {}).items()}   # a study of an older version,
    old = {k: v for k, v in moved.items() if reads_key(identity["model"], k)}         # which kept every section
    new = identity["settings"]
    # A key added since the study was made ran at its default then, as for a run folder's config.json.
    defaults = flat_keys(RunConfig.model_validate({}))
    old |= {k: defaults[k] for k in new if k not in moved and k in defaults}
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if changed:
        k = changed[0]
        raise BadInput(
            f"{where} preset {saved.get('preset')!r} with --set {' '.join(saved.get('overrides') or []) or '(none)'}, "
            f"where {k} = {old.get(k)!r}, not {new.get(k)!r}{hint}"
        )
    if saved.get("manifest_hash") != identity["manifest_hash"]:
        raise BadInput(f"{where} other prepared data (manifest hash {str(saved.get('manifest_hash'))[:12]}){hint}")
    if saved.get("seed") != identity["seed"]:
        raise BadInput(f"{where} --seed {saved.get('seed')}, not {identity['seed']}{hint}")
    if saved.get("space") != identity["space"]:
        raise BadInput(f"{where} another search space (other --set keys fixed, or another dsrsd version){hint}")


# ---------------------------------------------------------------- trials

def is_complete(run_dir: Path) -> bool:
    """A trial's run folder is finished once its metrics.json, written last, is there."""
    return (run_dir / METRICS_FILE).is_file()


def trial_dir(out: Path, number: int) -> Path:
    return out / TRIALS_DIR / f"trial_{number}"


def _finished(study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def make_on_epoch(trial, cfg: RunConfig, console: Console):
    """train_run's on_epoch: report the validation AUC (step = epoch - 1), prune if the pruner
    says so, except after the last epoch (stopping then saves nothing)."""

    def on_epoch(epoch: int, auc: float) -> None:
        finite = auc is not None and math.isfinite(auc)
        if finite:
            trial.report(float(auc), epoch - 1)
        console.print(f"  trial {trial.number}, epoch {epoch}: valid AUC {f'{auc:.4f}' if finite else auc}", highlight=False)
        if epoch < cfg.train.epochs and trial.should_prune():
            raise optuna.TrialPruned(f"trial {trial.number} pruned after epoch {epoch}")

    return on_epoch


class _Runner:
    def __init__(self, study, *, out: Path, preset: str, model: str, data: Path | None, overrides: list[str],
                 space: dict[str, Dim], seed: int, console: Console) -> None:
        self.study, self.out, self.preset, self.model, self.data = study, out, preset, model, data
        self.overrides, self.space, self.seed, self.console = overrides, space, seed, console
        self.trained_now = 0

    # ---- a killed process's trial

    def requeue_stale(self) -> None:
        for stale in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self._requeue(stale.number, stale.params)
            self.console.print(f"trial {stale.number} was interrupted: marked FAIL, its parameters enqueued again "
                               f"(its run folder is continued)", highlight=False)

    def _requeue(self, number: int, params: dict[str, Any]) -> None:
        """Enqueue the trial's parameters (with a pointer to its run folder), then mark it FAIL:
        in this order, a kill in between leaves a RUNNING trial whose requeue is already done."""
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not any(t.user_attrs.get("resume_from") == number for t in waiting):
            self.study.enqueue_trial(dict(params), user_attrs={"resume_from": number})
        self.study.tell(number, state=TrialState.FAIL)

    # ---- the loop

    def run_until(self, n_trials: int) -> None:
        failures = 0
        while len(_finished(self.study)) < n_trials:
            n_finished = len(_finished(self.study))
            self.study.sampler = make_sampler(self.seed, n_finished, preset_salt(self.study))
            trial = self.study.ask()
            self.console.print(f"[bold]\\[trial {trial.number}][/bold] {n_finished} of {n_trials} trials finished", highlight=False)
            state = self._run_trial(trial)
            failures = failures + 1 if state == TrialState.FAIL else 0
            self._write_outputs()
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise WorkFailed(
                    f"{failures} trials in a row failed (see {self.out / TRIALS_DIR}/trial_*/log.txt); "
                    "fix the cause, then run the same command to continue the study"
                )

    def _run_trial(self, trial):
        run_dir = trial_dir(self.out, trial.number)
        started = time.perf_counter()
        try:
            params = {key: dim.sample(trial, key) for key, dim in self.space.items()}
            sets = [f"{k}={json.dumps(v)}" for k, v in params.items()]
            cfg = config_from_cli(self.preset, model=self.model, data=self.data, overrides=[*self.overrides, *sets])
            source = trial.user_attrs.get("resume_from")
            if source is not None and source != trial.number:
                previous = trial_dir(self.out, int(source))
                if previous.is_dir() and not run_dir.exists():
                    os.replace(previous, run_dir)   # the new trial takes the interrupted one's folder
            on_epoch = make_on_epoch(trial, cfg, self.console)
            if is_complete(run_dir):
                self.console.print(f"  {escape(str(run_dir))}: finished earlier, reused", highlight=False)
                self._replay(run_dir, trial, on_epoch, prune=False)
            elif (run_dir / STATE_FILE).is_file():
                self.console.print(f"  {escape(str(run_dir))}: interrupted earlier, resuming", highlight=False)
                self._replay(run_dir, trial, on_epoch)
                self.trained_now += 1
                train_run(cfg, resume=run_dir, quiet=True, on_epoch=on_epoch, test=False)
            else:
                if run_dir.exists():
                    shutil.rmtree(run_dir)   # stopped before its first epoch ended: nothing to keep
                self.trained_now += 1
                train_run(cfg, out=run_dir, quiet=True, on_epoch=on_epoch, test=False)
        except optuna.TrialPruned as e:
            self.study.tell(trial, state=TrialState.PRUNED)
            self.console.print(f"  {escape(str(e))}", highlight=False)
            return TrialState.PRUNED
        except (TrainingInterrupted, KeyboardInterrupt) as e:
            self._requeue(trial.number, trial.params)   # the next `dsrsd tune` continues its run folder
            if isinstance(e, TrainingInterrupted):
                raise TrainingInterrupted(f"interrupted in trial {trial.number} (state saved in {run_dir}); "
                                          "run the same `dsrsd tune` command to continue the study") from None
            raise
        except WorkFailed as e:
            self.study.tell(trial, state=TrialState.FAIL)
            self.console.print(f"  [red]trial {trial.number} failed:[/red] {escape(str(e))}", highlight=False)
            return TrialState.FAIL
        except BaseException:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        value = _valid_auc(run_dir)
        if value is None:
            self.study.tell(trial, state=TrialState.FAIL)
            self.console.print(f"  [red]trial {trial.number} failed:[/red] no finite validation AUC in {escape(str(run_dir / METRICS_FILE))}", highlight=False)
            return TrialState.FAIL
        self.study.tell(trial, value)
        self.console.print(f"  trial {trial.number}: valid AUC {value:.4f} in {time.perf_counter() - started:.1f}s", highlight=False)
        return TrialState.COMPLETE

    def _replay(self, run_dir: Path, trial, on_epoch, *, prune: bool = True) -> None:
        """Report the epochs an interrupted run already did, from its saved state (the pruner
        sees what it would have seen without the interruption, and may prune here unless the
        run is finished)."""
        from dsrsd_cli.engine.runs import load_state

        if not (run_dir / STATE_FILE).is_file():
            return
        for record in load_state(run_dir / STATE_FILE).get("history", []):
            epoch, auc = int(record["epoch"]), float(record.get("valid_auc", math.nan))
            if prune:
                on_epoch(epoch, auc)
            elif math.isfinite(auc):
                trial.report(auc, epoch - 1)

    # ---- outputs

    def _write_outputs(self) -> None:
        rows = trial_rows(self.study, list(self.space))
        atomic_write_text(self.out / TRIALS_CSV, pd.DataFrame(rows, columns=["number", "state", "value", "seconds", "epochs", *self.space]).to_csv(index=False))
        best = _best(self.study)
        if best is not None:
            self._write_best(best)

    def _write_best(self, best) -> None:
        sets = [f"{k}={json.dumps(v)}" for k, v in best.params.items()]
        cfg = config_from_cli(self.preset, model=self.model, data=self.data, overrides=[*self.overrides, *sets])
        doc = cfg.model_dump()
        doc.pop("preset", None)   # a preset file is named by its stem ("best")
        doc["data"]["path"] = str(Path(cfg.data.path).resolve())
        finished = _finished(self.study)
        n_pruned = sum(t.state == TrialState.PRUNED for t in finished)
        header = (
            f"Best config of the Optuna study {self.out / STUDY_DB} (dsrsd tune {__version__}):\n"
            f"model {self.model}, preset {self.preset}, --set {' '.join(self.overrides) or '(none)'}, --seed {self.seed}.\n"
            f"Trial {best.number} of {len(finished)} finished trials ({len(finished) - n_pruned} complete, {n_pruned} pruned): "
            f"best validation AUC {best.value:.6f}.\n"
            f"Use: dsrsd train --preset {self.out / BEST_TOML}"
        )
        atomic_write_text(self.out / BEST_TOML, dumps_toml(doc, header=header))

    def finish(self, n_trials: int) -> dict[str, Any]:
        self._write_outputs()
        trials = trial_rows(self.study, list(self.space))
        best = _best(self.study)
        counts = {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
        return {
            "out": str(self.out),
            "study": STUDY_NAME,
            "storage": str(self.out / STUDY_DB),
            "model": self.model,
            "family": family_of(self.model),
            "preset": self.preset,
            "overrides": self.overrides,
            "seed": self.seed,
            "trials_requested": n_trials,
            "finished": counts["COMPLETE"] + counts["PRUNED"],
            "complete": counts["COMPLETE"],
            "pruned": counts["PRUNED"],
            "failed": counts["FAIL"],
            "trained_now": self.trained_now,
            "space": {k: d.describe() for k, d in self.space.items()},
            "best": None if best is None else {
                "number": best.number, "valid_auc": best.value, "params": dict(best.params),
                "run_dir": str(trial_dir(self.out, best.number)),
            },
            "best_toml": str(self.out / BEST_TOML) if best is not None else None,
            "trials_csv": str(self.out / TRIALS_CSV),
            "trials": trials,
        }


def _best(study):
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def _valid_auc(run_dir: Path) -> float | None:
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
        value = float(metrics["valid"]["auc"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if math.isfinite(value) else None


def trial_rows(study, keys: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.WAITING,):
            continue
        seconds = t.duration.total_seconds() if t.duration is not None else None
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value,
            "seconds": round(seconds, 3) if seconds is not None else None,
            "epochs": len(t.intermediate_values),
            **{k: t.params.get(k) for k in keys},
        })
    return rows
