"""`dsrsd train`: fit one model from a config and write a run folder (DESIGN §7).

The loop, in order: AdamW (weight decay on matrices only: biases, norm gains, learned
tokens and embedding tables are not decayed, so rare ids are not pulled to zero), a
per-step linear warmup then cosine schedule, gradient clipping, total loss =
losses.combine(task, aux), validation AUC after each epoch with early stopping
(patience), best weights to model.safetensors.

Resuming gives exactly the run that was never interrupted (engine/checkpoint.py: the state
saved after every epoch and on Ctrl-C/SIGTERM, mid-epoch); the training data order of epoch
e depends only on (seed, e), so a resumed epoch replays the same batches, skipping those
already done. Distributed (DDP, `--nproc N` or under torchrun): engine/distributed.py.
The run folder's files are written with engine/runs.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from dsrsd_cli.config import RunConfig, apply_overrides, flat_keys, load_config, validate_config
from dsrsd_cli.data.loader import make_loader, make_spec, open_prepared
from dsrsd_cli.engine import tensorboard
from dsrsd_cli.engine.checkpoint import LoopState, check_resumable, restore, set_rng_state, state_dict
from dsrsd_cli.engine.distributed import DistEnv, any_rank, from_rank0, gather_rng, init_distributed, launch_distributed, output_file, score_split
from dsrsd_cli.engine.runs import (
    LOG_FILE, METRICS_FILE, PREDICTIONS_FILE, STATE_FILE, WEIGHTS_FILE, RunLog, attach_data, claim_run_dir,
    load_state, load_weights, read_run_info, resolve_device, save_state, save_weights, seconds_since_process_start,
    write_history, write_run_config,
)
from dsrsd_cli.engine.scoring import class_names
from dsrsd_cli.errors import BadInput, WorkFailed
from dsrsd_cli.io import to_jsonable, write_json
from dsrsd_cli.memory import trim_heap
from dsrsd_cli.model import losses
from dsrsd_cli.model.diagnostics import MechanismProbe
from dsrsd_cli.model.registry import build_model, model_kind
from dsrsd_cli.report import metrics_table, print_json


class TrainingInterrupted(WorkFailed):
    """Ctrl-C or SIGTERM: the state was saved; exit code 130 like a shell."""

    exit_code = 130


# ---------------------------------------------------------------- the loop

def train_run(cfg: RunConfig, *, out: Path | None = None, resume: Path | None = None, console: Console | None = None,
              quiet: bool = False, on_epoch: Callable[[int, float], None] | None = None, test: bool = True) -> Path:
    """Train `cfg`, write the run folder, evaluate the best weights on valid and test
    (`test=False`: on valid only, no predictions file; `dsrsd tune`'s trials never score test).

    Returns the run folder. `resume`: a run folder to continue (its config must match `cfg`).
    Progress goes to `console` (default: stderr) unless `quiet`; only rank 0 prints.
    `on_epoch(epoch, valid_auc)` is called after each epoch's state is saved (`dsrsd tune`
    prunes trials from it by raising; the run folder then holds a resumable state).
    """
    entered = time.time()   # "first step done" counts from the process start (from here where /proc is absent)
    env = DistEnv.from_env()
    if quiet or not env.is_main:
        console = Console(stderr=True, quiet=True)
    console = console or Console(stderr=True)
    tensorboard.require(cfg.train.log)   # before any work: a missing package is a BadInput, not a lost run
    if model_kind(cfg.model.name) == "fitted":
        from dsrsd_cli.engine.fit import fit_run

        return fit_run(cfg, out=out, resume=resume, console=console, on_epoch=on_epoch, test=test)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and env.distributed:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    created_group = init_distributed(env, device)
    restore_globals = _set_determinism(device, cfg.train.threads)
    try:
        return Trainer(cfg, env, device, console, out=out, resume=resume, on_epoch=on_epoch, entered=entered,
                       test=test).fit()
    finally:
        restore_globals()
        if created_group:
            torch.distributed.destroy_process_group()


class Trainer:
    """One run: data, model, optimizer, schedule and the loop state, from a fresh start or
    from a run folder's saved state. `fit()` runs the epochs left and the final evaluation."""

    def __init__(self, cfg: RunConfig, env: DistEnv, device: torch.device, console: Console, *, out: Path | None, resume: Path | None,
                 on_epoch: Callable[[int, float], None] | None = None, entered: float | None = None, test: bool = True):
        self.cfg, self.env, self.device, self.console = cfg, env, device, console
        self.on_epoch = on_epoch
        self.test = test   # score test at the end (dsrsd tune's trials do not)
        self.entered = time.time() if entered is None else entered   # when train_run began (time.time())
        self.first_step_logged = False
        self.prepared = open_prepared(cfg.data.path)
        self.spec = spec = make_spec(self.prepared, cfg.data)
        _seed_everything(cfg.train.seed)
        self.model = build_model(spec, cfg.model, cfg.dsrsd).to(device)   # an unknown model.name is a BadInput here
        _seed_everything(cfg.train.seed + env.rank)  # training randomness differs per rank; rank 0 = single process
        if resume is not None:
            self.run_dir = Path(resume)
            check_resumable(self.run_dir, cfg, self.prepared.manifest_hash)
            saved = load_state(self.run_dir / STATE_FILE)
        else:
            self.run_dir = from_rank0(claim_run_dir(out) if env.is_main else None, env)
            saved = None
        self.log = RunLog(self.run_dir / LOG_FILE if env.is_main else None)
        self.net = self.model
        if env.distributed:
            # find_unused_parameters: a modality hidden in a whole batch leaves its encoder unused
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
            )

        per_rank_batch = max(1, cfg.data.batch_size // env.world_size)  # data.batch_size is the global batch
        self.train_loader = lambda epoch: make_loader(
            self.prepared, "train", cfg.data, shuffle=True, seed=cfg.train.seed, batch_size=per_rank_batch,
            rank=env.rank, world_size=env.world_size, epoch=epoch,
        )
        self.eval_batch = cfg.eval_batch
        self.valid_loader = make_loader(self.prepared, "valid", cfg.data, shuffle=False, seed=cfg.train.seed, batch_size=self.eval_batch) if env.is_main else None
        n_batches = len(self.train_loader(0))
        if n_batches == 0:
            raise BadInput(f"{cfg.data.path}: the train split has no rows; prepare more data")
        self.steps_per_epoch = min(n_batches, cfg.train.max_steps_per_epoch or n_batches)
        total_steps = self.steps_per_epoch * cfg.train.epochs
        self.optimizer = make_optimizer(self.model, cfg.train.lr, cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(total_steps, int(cfg.train.warmup_frac * total_steps)))
        self.autocast = (
            (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16))
            if device.type == "cuda" and cfg.train.bf16 else contextlib.nullcontext
        )
        self.stop = StopFlag()

        self.where = LoopState()
        self.pending_rng: dict[str, Any] | None = None   # a resumed run's RNG state, set at the right moment
        if saved is not None:
            self.where, self.pending_rng = restore(saved, self.model, self.optimizer, self.scheduler, env.rank)
            where = self.where
            self.log(f"resumed at epoch {where.epoch + 1}, step {where.step_in_epoch} of {self.steps_per_epoch}")
            console.print(f"resuming {self.run_dir} at epoch {where.epoch + 1}, step {where.step_in_epoch}/{self.steps_per_epoch}"
                          f"{' (already finished: evaluating again)' if where.finished else ''}")
        elif env.is_main:
            write_run_config(self.run_dir, cfg, spec, self.prepared, self.model, device, env.world_size)
            self.log(f"new run: model {cfg.model.name}, preset {cfg.preset}, data {cfg.data.path}, device {device}, world size {env.world_size}")
        # rank 0 alone; resumed: events after the saved step (written before the interruption) are hidden
        self.curves = tensorboard.open_logger(cfg.train.log, self.run_dir, enabled=env.is_main,
                                              purge_step=saved["global_step"] + 1 if saved is not None else None)

    # ---- the loop

    def fit(self) -> Path:
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        try:
            with self.stop, progress:
                while not self.where.finished and self.where.epoch < self.cfg.train.epochs:
                    self._epoch(progress)
            if self.env.distributed:
                torch.distributed.barrier()   # rank 0 has written the best weights every rank loads
            # every rank scores its shard of the final splits; rank 0 gathers, writes and reports
            metrics = final_evaluation(self.model, self.run_dir, self.prepared, self.cfg, self.spec, self.device, self.where,
                                       self.eval_batch, self.console, self.log, env=self.env, test=self.test)
            if self.env.is_main:
                self.curves.hparams(flat_keys(self.cfg), tensorboard.final_aucs(metrics), self.where.global_step)
        finally:
            self.curves.close()
        if self.env.distributed:
            torch.distributed.barrier()
        return self.run_dir

    def _epoch(self, progress: Progress) -> None:
        where, epoch = self.where, self.where.epoch
        started = time.perf_counter()
        task = progress.add_task(f"epoch {epoch + 1}/{self.cfg.train.epochs}", total=self.steps_per_epoch, completed=where.step_in_epoch, stats="")
        # The saved RNG state belongs either before this epoch's loader starts (it draws a
        # seed when it does) or after the steps already done; interruptions are taken at
        # exactly those two places, so a resumed run draws the same numbers.
        if where.step_in_epoch == 0:
            self._restore_pending_rng()
            self._interrupt_if_asked()
        batches = iter(self.train_loader(epoch))
        for _ in range(where.step_in_epoch):  # replay the batches already trained on
            next(batches)
        self._restore_pending_rng()

        self.model.train()
        rows_here = 0  # scored positions trained on by this process in this epoch (for rows/s)
        while where.step_in_epoch < self.steps_per_epoch:
            batch = next(batches, None)
            if batch is None:
                break
            rows_here += self._step(batch.to(self.device, non_blocking=True))
            sums = where.epoch_sums
            rows_per_s = rows_here / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, stats=f"loss {sums['loss'] / sums['steps']:.4f}  {rows_per_s:,.0f} rows/s")
            if where.step_in_epoch < self.steps_per_epoch:
                self._interrupt_if_asked()

        seconds = time.perf_counter() - started
        auc, improved, record = self._end_epoch(epoch, seconds, rows_here)
        progress.update(task, stats=f"loss {record['train_loss']:.4f}  valid AUC {auc:.4f}{' *' if improved else ''}")

    def _step(self, batch) -> int:
        """One optimizer step; returns the scored positions it trained on (all ranks)."""
        where, cfg = self.where, self.cfg
        with self.autocast():
            output = self.net(batch)
            task = losses.task_loss(output.logits, batch.target, batch.mask, self.spec.n_outputs)
            total, parts = losses.combine(task, output.aux.get("losses", {}), cfg.loss)   # the loss weights: read here only
        loss = float(total.detach())
        if any_rank(not math.isfinite(loss), self.env, self.device):
            self._stop_on_nan("loss", loss)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.clip_grad))
        if not math.isfinite(grad_norm):  # gradients are all-reduced already: every rank agrees
            self._stop_on_nan("gradient norm", grad_norm)
        lr = self.scheduler.get_last_lr()[0]   # this step's
        self.optimizer.step()
        self.scheduler.step()

        rows = int(batch.mask.sum()) * self.env.world_size
        sums = where.epoch_sums
        for name, value in {"loss": loss, **{f"loss_{k}": v for k, v in parts.items() if k != "total"}, "rows": rows, "steps": 1}.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        where.step_in_epoch += 1
        where.global_step += 1
        trim_heap()   # this step's activations, freed, go back to the OS (dsrsd_cli/memory.py)
        if not self.first_step_logged:   # once per process (benchmarks watch log.txt for it)
            self.first_step_logged = True
            self.log(f"first step done: {seconds_since_process_start(self.entered):.1f} s after the process started")
        self.curves.scalars({"loss": loss, **{f"loss_{k}": v for k, v in parts.items() if k != "total"}, "lr": lr,
                             "grad_norm": grad_norm}, where.global_step, prefix="train/")
        return rows

    def _end_epoch(self, epoch: int, seconds: float, rows_here: int) -> tuple[float, bool, dict[str, Any]]:
        """Validate (rank 0; every rank gets the result), record, keep the best weights,
        decide on early stopping, save the state."""
        where, env = self.where, self.env
        valid = _validate(self.model, self.valid_loader, self.device, self.spec, self.cfg.dsrsd.tau) if env.is_main else None
        valid = from_rank0(valid, env)
        auc = valid.get("auc", math.nan)
        mechanisms = valid.pop("mechanisms", {})
        sums = where.epoch_sums
        steps = max(sums.get("steps", 0.0), 1.0)
        record = {"epoch": epoch + 1, "train_loss": sums.get("loss", math.nan) / steps}
        record.update({k: v / steps for k, v in sums.items() if k.startswith("loss_")})
        record.update({f"valid_{k}": v for k, v in valid.items() if not isinstance(v, list)})
        record.update({f"mech_{k}": v for k, v in mechanisms.items() if isinstance(v, (int, float))})
        record.update({"lr": self.scheduler.get_last_lr()[0], "seconds": round(seconds, 3), "rows_per_s": rows_here / max(seconds, 1e-9)})
        where.history.append(record)

        improved = where.best_epoch == 0 or (math.isfinite(auc) and auc > where.best_auc)
        if improved:
            where.best_auc, where.best_epoch, where.bad_epochs = (auc if math.isfinite(auc) else -math.inf), epoch + 1, 0
            if env.is_main:
                save_weights(self.model, self.run_dir / WEIGHTS_FILE)
        else:
            where.bad_epochs += 1
        self.curves.epoch(record, where.global_step)   # before the state save (which flushes it)
        where.epoch, where.step_in_epoch, where.epoch_sums = epoch + 1, 0, {}
        early_stop = where.bad_epochs >= self.cfg.train.patience
        where.finished = early_stop or where.epoch >= self.cfg.train.epochs
        self._save_state()
        if env.is_main:
            write_history(self.run_dir, where.history)
            self.log(f"epoch {epoch + 1}: train loss {record['train_loss']:.5f}, valid AUC {auc:.5f}, lr {record['lr']:.3g}, "
                     f"{seconds:.1f}s{' (best)' if improved else ''}")
        if early_stop:
            self.console.print(f"early stop: no valid AUC gain for {where.bad_epochs} epochs (best {where.best_auc:.4f} at epoch {where.best_epoch})")
            self.log(f"early stop after epoch {epoch + 1}; best epoch {where.best_epoch}")
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, auc)
        return auc, improved, record

    # ---- state, interruption, failure

    def _save_state(self) -> None:
        self.curves.flush()   # every event up to the saved step is on disk before the state is
        rng = gather_rng(self.env)
        if self.env.is_main:
            save_state(state_dict(self.model, self.optimizer, self.scheduler, self.where, rng), self.run_dir / STATE_FILE)

    def _restore_pending_rng(self) -> None:
        if self.pending_rng is not None:
            set_rng_state(self.pending_rng)
            self.pending_rng = None

    def _interrupt_if_asked(self) -> None:
        if any_rank(self.stop.requested, self.env, self.device):
            self._save_state()
            self.log(f"interrupted at epoch {self.where.epoch + 1}, step {self.where.step_in_epoch}; state saved")
            raise TrainingInterrupted(f"interrupted; resume with: dsrsd train --resume {self.run_dir}")

    def _stop_on_nan(self, what: str, value: float) -> None:
        """Stop without saving: the state on disk is the last good one."""
        where = self.where
        kept = f"end of epoch {where.epoch}" if where.epoch else "none: no epoch finished"
        message = (
            f"{what} is {value} at epoch {where.epoch + 1}, step {where.step_in_epoch + 1}; training stopped. "
            f"Last good state kept in {self.run_dir / 'state'} ({kept}); lower train.lr or check the data"
        )
        self.log(message)
        raise WorkFailed(message)


# ---------------------------------------------------------------- evaluation

def _validate(model: nn.Module, loader, device: torch.device, spec, tau: float) -> dict[str, Any]:
    """Validation metrics, plus the mechanism diagnostics (model/diagnostics.py) under
    "mechanisms" for models whose output carries streams or gates. Streamed: only label and
    probabilities are kept (no key columns)."""
    probe = MechanismProbe(tau=tau)
    scores = score_split(model, loader, device, DistEnv(), n_outputs=spec.n_outputs,
                         on_output=lambda output, batch: probe.add(output.aux))
    if not len(scores):
        return {"auc": math.nan, "n": 0}
    return {**scores.metrics(), "mechanisms": probe.result()}


def final_evaluation(model, run_dir, prepared, cfg, spec, device, where: LoopState, eval_batch, console, log,
                     env: DistEnv = DistEnv(), test: bool = True) -> dict[str, Any]:
    """Best weights on valid and test (`test=False`: valid only): metrics.json, and
    predictions.parquet of test.
    Also the end of a fitted model's run (engine/fit.py). Streamed: the test predictions are
    written batch by batch under a temporary name (renamed after metrics.json), the metrics come
    from compact label/probability arrays. Called on every rank with `env` (DDP), each scores
    its shard and rank 0 writes and reports (the other ranks return {})."""
    model.load_state_dict(load_weights(run_dir / WEIGHTS_FILE))
    attach_data(model, prepared, cfg.data)
    results = {}
    splits = ("valid", "test") if test else ("valid",)
    with output_file(run_dir / PREDICTIONS_FILE, env) if test else contextlib.nullcontext() as predictions:
        for split in splits:
            loader = make_loader(prepared, split, cfg.data, shuffle=False, seed=cfg.train.seed, batch_size=eval_batch,
                                 rank=env.rank, world_size=env.world_size)
            scores = score_split(model, loader, device, env, n_outputs=spec.n_outputs, classes=class_names(spec),
                                 out=predictions if split == "test" else None)
            results[split] = scores.metrics() if scores is not None else {}
        if not env.is_main:
            return {}
        metrics = {**results, "best_epoch": where.best_epoch, "epochs_run": where.epoch, "model": cfg.model.name, "seed": cfg.train.seed}
        write_json(run_dir / METRICS_FILE, to_jsonable(metrics))
    console.print(metrics_table(f"{run_dir} ({cfg.model.name}, best epoch {where.best_epoch})", results))
    aucs = ", ".join(f"{split} AUC {results[split].get('auc')}" for split in splits)
    log(f"final: {aucs} (best epoch {where.best_epoch})")
    return metrics


# ---------------------------------------------------------------- optimizer and schedule

def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; decay only on weight matrices (not biases, norms, tokens or embedding tables)."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embedding_params else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier per step: linear warmup from ~0 to 1, then cosine down to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---------------------------------------------------------------- determinism and interruption

def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _set_determinism(device: torch.device, threads: int | None):
    """Deterministic kernels (and the thread count) for this run; returns a function that
    puts the process-wide settings back (train_run is also called from `compare`)."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # warn_only: an op without a deterministic kernel warns instead of stopping the run
    torch.use_deterministic_algorithms(True, warn_only=True)

    def restore() -> None:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])

    return restore


class StopFlag:
    """SIGINT/SIGTERM set a flag that the loop checks between steps. A second Ctrl-C
    gets the default behaviour back (stop at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        with contextlib.suppress(Exception):
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, no flag
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, handler)


# ---------------------------------------------------------------- command line

def train_from_cli(
    *, preset: str, model: str | None, data: Path | None, device: str | None, overrides: list[str],
    out: Path | None, resume: Path | None, seed: int | None, nproc: int, json_out: bool, console: Console,
    log: str | None = None,
) -> None:
    env = DistEnv.from_env()
    if log is not None:   # --log: the config key train.log (travels with the run; also to DDP workers as --set)
        overrides = [*overrides, f"train.log={json.dumps(log)}"]
    options = dict(model=model, data=data, device=device, overrides=overrides, seed=seed)
    if resume is not None:
        cfg = resume_config(resume, preset=preset, **options)
    else:
        cfg = config_from_cli(preset, **options)
    tensorboard.require(cfg.train.log)
    if nproc > 1 and model_kind(cfg.model.name) == "fitted":
        raise BadInput(f"--nproc {nproc}: model {cfg.model.name!r} is fitted in one process (LightGBM uses the cores itself); drop --nproc")
    if nproc > 1 and not env.distributed:
        launch_distributed(cfg, nproc=nproc, preset=preset, out=out, resume=resume, json_out=json_out, console=console, **options)
        return
    run_dir = train_run(cfg, out=out, resume=resume, console=console)
    if json_out and env.is_main:
        metrics = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
        print_json({"run_dir": str(run_dir), **metrics})


def _cli_overrides(*, model, data, device, overrides, seed) -> list[str]:
    """--model/--data/--device/--seed as --set items (so a bad value is reported like any other key)."""
    sets = list(overrides)
    for key, value in (("model.name", model), ("data.path", data), ("train.device", device), ("train.seed", seed)):
        if value is not None:
            sets.append(f"{key}={json.dumps(value if isinstance(value, int) else str(value))}")
    return sets


def config_from_cli(preset: str, *, model=None, data=None, device=None, overrides=(), seed=None) -> RunConfig:
    return load_config(preset, _cli_overrides(model=model, data=data, device=device, overrides=overrides, seed=seed))


def resume_config(run_dir: Path, *, preset: str, model=None, data=None, device=None, overrides=(), seed=None) -> RunConfig:
    """The run's saved config, with the options given now applied on top (train_run then
    refuses any change that would alter the result)."""
    info = read_run_info(run_dir)
    saved = info.cfg
    if preset not in ("default", saved.preset):
        raise BadInput(f"--resume {run_dir}: the run was trained with preset {saved.preset!r}, not {preset!r}; drop --preset to resume it")
    raw = saved.model_dump()
    raw["data"]["path"] = info.data.path  # absolute: the run may be resumed from another folder
    raw = apply_overrides(raw, _cli_overrides(model=model, data=data, device=device, overrides=overrides, seed=seed))
    return validate_config(raw, where="--resume with --set")
