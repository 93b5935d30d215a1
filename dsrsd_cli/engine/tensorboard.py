"""Training curves for TensorBoard (`dsrsd train --log tensorboard`, config key `train.log`).

`open_logger(cfg.train.log, run_dir)` gives a logger that writes TensorBoard event files
into RUN_DIR/tensorboard/, or, with `train.log = "none"`, a NoLogger whose methods do
nothing (and tensorboard is never imported). Only rank 0 of a DDP run opens a real one.

Tags: train/* per optimizer step (loss, loss_<term>, lr, grad_norm), valid/* and mech/*
per epoch (the history.csv columns valid_* and mech_*; the x axis is the global step at the
end of the epoch), epoch/* (the rest of the epoch record), hparam/* with the hparams (the
flat resolved config) at the end. gbdt: valid/<metric> per boosting round.

Resume: the writer is opened with `purge_step` = the first step the resumed run will log,
so events written after the saved state by the interrupted process are hidden and the
curves are continuous. `flush()` is called before each state save, so every event up to
the saved step is on disk when the state is.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping

from dsrsd_cli.errors import BadInput

LOG_DIR = "tensorboard"        # inside the run folder
LOG_KINDS = ("none", "tensorboard")


def require(kind: str) -> None:
    """BadInput (one line, exit 2) when `kind` needs a package that is not installed.
    Called before a run starts, so a missing package never costs a training run."""
    if kind != "tensorboard":
        return
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it; checked first: torch's module may be cached)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise BadInput('train.log = "tensorboard" (--log tensorboard) needs the tensorboard package: '
                       'pip install "dsrsd-cli[tensorboard]"') from None


def open_logger(kind: str, run_dir: Path, *, purge_step: int | None = None, enabled: bool = True) -> "NoLogger":
    """The logger `kind` names ("none" or "tensorboard") for `run_dir`; `enabled=False`
    (a DDP rank other than 0) gives a NoLogger. `purge_step`: on resume, the first step
    the resumed run logs (events at this step and later from before are hidden)."""
    if kind == "none" or not enabled:
        return NoLogger()
    if kind == "tensorboard":
        return TensorBoardLogger(Path(run_dir) / LOG_DIR, purge_step=purge_step)
    raise BadInput(f"train.log = {kind!r}: choose one of {', '.join(LOG_KINDS)}")


def final_aucs(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The hparams metrics of a finished run, from its metrics.json content."""
    return {f"{split}_auc": metrics.get(split, {}).get("auc", math.nan) for split in ("valid", "test")}


class NoLogger:
    """`train.log = "none"`: every call does nothing."""

    enabled = False

    def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        pass

    def epoch(self, record: Mapping[str, Any], step: int) -> None:
        pass

    def hparams(self, config: Mapping[str, Any], metrics: Mapping[str, Any], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NoLogger):
    """A torch.utils.tensorboard.SummaryWriter on `log_dir`."""

    enabled = True

    def __init__(self, log_dir: Path, *, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        if purge_step is not None:
            _after_existing_files(log_dir)
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}{name}", float(value), global_step=step)

    def epoch(self, record: Mapping[str, Any], step: int) -> None:
        """One history.csv row: valid_* -> valid/*, mech_* -> mech/*, the rest -> epoch/*."""
        for name, value in record.items():
            for column, tag in (("valid_", "valid/"), ("mech_", "mech/")):
                if name.startswith(column):
                    self.scalars({name[len(column):]: value}, step, prefix=tag)
                    break
            else:
                self.scalars({name: value}, step, prefix="epoch/")

    def hparams(self, config: Mapping[str, Any], metrics: Mapping[str, Any], step: int) -> None:
        """The flat config as hparams, `metrics` as hparam/<name> scalars (same run folder)."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
        tags = {f"hparam/{k}": float(v) if v is not None else math.nan for k, v in metrics.items()}
        for summary in hparams(values, tags):
            self.writer.file_writer.add_summary(summary, step)
        self.scalars(tags, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _after_existing_files(log_dir: Path) -> None:
    """Wait (at most about a second) until the new event file's name sorts after the
    existing ones: TensorBoard reads a folder's files in name order, and the name starts
    with the creation time in whole seconds; a resumed run's file must be read last."""
    stamps = []
    for path in log_dir.glob("events.out.tfevents.*"):
        parts = path.name.split(".")
        if len(parts) > 3 and parts[3].isdigit():
            stamps.append(int(parts[3]))
    newest = max(stamps, default=0)
    while int(time.time()) <= newest and newest - time.time() < 5:   # a clock far off: do not wait for it
        time.sleep(0.05)
