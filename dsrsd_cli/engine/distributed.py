"""Distributed training (DDP) for `dsrsd train`: the process environment, the few collectives
the loop needs, and re-launching the command under torchrun.

`--nproc N` re-launches the command under torch.distributed.run; under torchrun (WORLD_SIZE
set) each process trains on its shard of every epoch, with data.batch_size the GLOBAL batch
(split over the processes). Rank 0 validates on the full valid set, broadcasts the AUC (so
every rank takes the same early-stopping decision), and is the only one that writes files or
prints. Without DDP every helper here is a no-op.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dsrsd_cli.config import RunConfig
from dsrsd_cli.data.loader import make_spec, open_prepared
from dsrsd_cli.engine.checkpoint import rng_state
from dsrsd_cli.engine.runs import claim_run_dir
from dsrsd_cli.model.registry import check_model


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistEnv":
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(env: DistEnv, device: torch.device) -> bool:
    """Join the process group (gloo on CPU, nccl on CUDA); True if this call created it."""
    if not env.distributed or torch.distributed.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend, timeout=_dt.timedelta(hours=2))
    return True


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if `flag` is True on any rank."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def from_rank0(value: Any, env: DistEnv) -> Any:
    """Rank 0's `value` on every rank."""
    if not env.distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_rng(env: DistEnv) -> list[dict[str, Any]]:
    """Every rank's RNG state (checkpoint.rng_state), in rank order, on every rank."""
    mine = rng_state()
    if not env.distributed:
        return [mine]
    everyone: list[Any] = [None] * env.world_size
    torch.distributed.all_gather_object(everyone, mine)
    return everyone


def launch_distributed(cfg: RunConfig, *, nproc: int, preset: str, model, data, device, overrides, seed, out: Path | None,
                       resume: Path | None, json_out: bool, console: Console) -> None:
    """Re-run this `dsrsd train` command under torch.distributed.run, after checking the input
    here (so a bad option fails once, with exit code 2, not in N workers)."""
    spec = make_spec(open_prepared(cfg.data.path), cfg.data)
    check_model(spec, cfg.model.name)
    if resume is None:
        out = claim_run_dir(out)  # every worker must agree on the folder
    args = ["train", "--preset", preset]
    for flag, value in (("--model", model), ("--data", data), ("--device", device), ("--seed", seed), ("--out", out), ("--resume", resume)):
        if value is not None:
            args += [flag, str(value)]
    for item in overrides:
        args += ["--set", item]
    if json_out:
        args.append("--json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "dsrsd_cli", *args]
    console.print(f"[bold]DDP:[/bold] {nproc} processes: {' '.join(cmd[1:])}", highlight=False)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # torchrun's default is 1
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # DDP's find_unused_parameters notice is expected here
    returncode = subprocess.run(cmd, env=env).returncode
    if returncode != 0:
        sys.exit(returncode)  # the workers already printed their one-line error
