"""The resumable training state: where the loop is, the RNG states, and the checks
that a run folder may be continued with the given settings.

Resuming gives exactly the run that was never interrupted: the state saved after every epoch
(and on Ctrl-C/SIGTERM, mid-epoch) holds the model, optimizer and scheduler, the RNG states
of torch/numpy/python (one per rank) and the running epoch sums (LoopState). It is written
with runs.save_state and read back with runs.load_state (torch.load(weights_only=True)), so
it holds plain containers of tensors and numbers only.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsrsd_cli import __version__
from dsrsd_cli.config import RunConfig, result_settings
from dsrsd_cli.engine.runs import read_run_info
from dsrsd_cli.errors import BadInput


@dataclass
class LoopState:
    """Where the loop is; saved with the weights so a resumed run picks up here."""

    epoch: int = 0                     # epochs completed
    step_in_epoch: int = 0             # steps completed in the current epoch
    global_step: int = 0
    best_auc: float = -math.inf
    best_epoch: int = 0                # 1-based; 0 = none yet
    bad_epochs: int = 0                # epochs since the best one (early stopping)
    finished: bool = False
    epoch_sums: dict[str, float] = field(default_factory=dict)   # running sums of the current epoch
    history: list[dict[str, Any]] = field(default_factory=list)


def state_dict(model: nn.Module, optimizer, scheduler, where: LoopState, rng: list[dict[str, Any]]) -> dict[str, Any]:
    """What state/state.pt holds: model, optimizer, scheduler, one RNG state per rank, the LoopState fields."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,                    # one entry per rank
        **dataclasses.asdict(where),
        "tool_version": __version__,
    }


def restore(saved: dict[str, Any], model: nn.Module, optimizer, scheduler, rank: int) -> tuple[LoopState, dict[str, Any]]:
    """Load a saved state into model, optimizer and scheduler; returns the LoopState and this
    rank's RNG state (set by the loop at the right moment, see Trainer._epoch). Resumed with
    more ranks than saved, the extra ones reuse rank 0's."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    where = LoopState(**{f.name: saved[f.name] for f in dataclasses.fields(LoopState)})
    rng = saved["rng"][rank] if rank < len(saved["rng"]) else saved["rng"][0]
    return where, rng


# ---------------------------------------------------------------- RNG

def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and numbers (loadable with weights_only=True)."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "python_version": int(py_version),
        "python": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------- may this run be resumed?

def check_resumable(run_dir: Path, cfg: RunConfig, manifest_hash: str) -> None:
    """BadInput unless `cfg` and the prepared data are those the run started with (up to the
    keys that cannot change the result: config.result_settings)."""
    info = read_run_info(run_dir)
    saved, given = result_settings(info.cfg), result_settings(cfg)
    # Keys of either side (each model has its own sections); another model is named as such.
    changed = sorted((k for k in saved.keys() | given.keys() if saved.get(k) != given.get(k)), key=lambda k: (k != "model.name", k))
    if changed:
        k = changed[0]
        raise BadInput(
            f"--resume {run_dir}: {k} is {given.get(k)!r} but the run used {saved.get(k)!r}"
            f"{f' (and {len(changed) - 1} more keys)' if len(changed) > 1 else ''}; resume with the run's settings or start a new run"
        )
    if manifest_hash != info.data.manifest_hash:
        raise BadInput(
            f"--resume {run_dir}: the prepared data {cfg.data.path} is not the data the run started on "
            f"(manifest hash {manifest_hash[:12]} vs {info.data.manifest_hash[:12]}); point --data at the original folder"
        )
