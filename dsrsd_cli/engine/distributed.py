"""Distributed work (DDP / torchrun): the process environment, the few collectives the
commands need, scoring a split in shards, and re-launching a command under torchrun.

`--nproc N` (train, evaluate, predict) re-launches the command under torch.distributed.run
on this machine; under torchrun (WORLD_SIZE set) directly, on one machine or many, the
command runs in every process:
  train     each process trains on its shard of every epoch, with data.batch_size the
            GLOBAL batch (split over the processes). Rank 0 validates on the full valid set,
            broadcasts the AUC (so every rank takes the same early-stopping decision), and
            runs the final evaluation.
  evaluate  each rank scores its disjoint shard of the split (make_loader's StridedShard:
  predict   together every example once) and writes its predictions to a hidden part file
            beside the output; rank 0 gathers the label/probability arrays (8 bytes a row),
            computes the metrics on their union (equal to one process's: the same rows) and
            concatenates the parts into the output, row group by row group (score_split).
            Across machines the output folder must be on a filesystem every node sees.
Rank 0 is the only one that writes files or prints. Without DDP every helper here is a no-op
or the single-process path.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from rich.console import Console
from torch import nn

from dsrsd_cli.config import RunConfig
from dsrsd_cli.data.loader import make_spec, open_prepared
from dsrsd_cli.engine.checkpoint import rng_state
from dsrsd_cli.engine.runs import claim_run_dir, resolve_device
from dsrsd_cli.engine.scoring import (
    PredictionsWriter, Scores, collect_scores, concat_parquet, probability_columns, score_batches,
)
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_file, temp_path_beside
from dsrsd_cli.model.registry import check_model
from dsrsd_cli.types import Batch


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


def rank_device(name: str, env: DistEnv) -> str:
    """The device this process works on: `name` (auto, cpu, cuda, mps) resolved; under DDP on
    CUDA the rank's own GPU (cuda:LOCAL_RANK), made current (nccl's object collectives use it)."""
    device = resolve_device(name)
    if device.type == "cuda" and env.distributed:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return str(device)


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device | str) -> Iterator[None]:
    """The block inside the process group (joined here unless it exists; left at the end if joined here)."""
    created = init_distributed(env, torch.device(device))
    try:
        yield
    finally:
        if created:
            torch.distributed.destroy_process_group()


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


def gather_to_rank0(value: Any, env: DistEnv) -> list[Any] | None:
    """Every rank's `value` (picklable: numpy arrays, paths), in rank order, on rank 0; None
    on the other ranks. Only rank 0 holds the gathered copy (gather_object, not all_gather)."""
    if not env.distributed:
        return [value]
    everyone: list[Any] | None = [None] * env.world_size if env.is_main else None
    torch.distributed.gather_object(value, everyone, dst=0)
    return everyone


# ---------------------------------------------------------------- scoring a split in shards

@contextlib.contextmanager
def output_file(path: Path, env: DistEnv) -> Iterator[Path]:
    """Where this process writes the file `path` (score_split's `out`). Rank 0 (and a single
    process): io.atomic_file's temporary path, renamed to `path` when the block ends without
    error. Other ranks: `path` itself, only to place their part file beside it."""
    if env.is_main:
        with atomic_file(path) as tmp:
            yield tmp
    else:
        yield Path(path)


def score_split(
    model: nn.Module,
    loader: Any,
    device: torch.device | str,
    env: DistEnv,
    *,
    n_outputs: int,
    classes: Sequence[str] = (),
    out: Path | None = None,
    transform: Callable[[Batch], Batch] | None = None,
    on_output: Callable[[Any, Batch], None] | None = None,
) -> Scores | None:
    """Score `loader` (this rank's shard under DDP) in streamed chunks; returns the Scores of
    the whole split on rank 0 (None on the other ranks).

    With `out` (an output_file path), the predictions (keys, label, probabilities) are written
    there; without it no key column is even built. Under DDP each rank writes a hidden part
    beside `out`, rank 0 gathers every rank's label/probability arrays and concatenates the
    parts into `out` in rank order (rows: rank 0's shard, then rank 1's, ...), then removes them.
    """
    names = probability_columns(n_outputs, classes)
    chunks = score_batches(model, loader, device, transform=transform, n_outputs=n_outputs, keys=out is not None, on_output=on_output)
    target = None if out is None else (temp_path_beside(out, f"rank{env.rank}") if env.distributed else Path(out))
    try:
        if target is None:
            mine = collect_scores(chunks)
        else:
            writer = PredictionsWriter(target, names)
            mine = collect_scores(chunks, writer)
            writer.close()
    except BaseException:
        if env.distributed and target is not None:
            target.unlink(missing_ok=True)
        raise
    if not env.distributed:
        return mine
    everyone = gather_to_rank0((mine.label, mine.probs, None if target is None else str(target)), env)
    if everyone is None:
        return None
    parts = [Path(part) for _, _, part in everyone if part is not None]
    try:
        missing = [part for part in parts if not part.is_file()]
        if missing:
            raise BadInput(f"{missing[0]}: a rank's predictions part is not visible from rank 0; "
                           "under torchrun on several machines, write to a folder every node shares")
        if out is not None:
            concat_parquet(parts, Path(out))
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    return Scores.concat([Scores(label=label, probs=probs) for label, probs, _ in everyone])


# ---------------------------------------------------------------- launching under torchrun

def launch_torchrun(args: Sequence[str], *, nproc: int, console: Console) -> None:
    """Run `dsrsd ARGS` in `nproc` processes on this machine under torch.distributed.run
    (--standalone), each with an equal share of the CPU threads; exits with the workers'
    code if they fail (they already printed their one-line error). Check the input before
    calling this, so a bad option fails once, with exit code 2, not in N workers."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "dsrsd_cli", *args]
    console.print(f"[bold]DDP:[/bold] {nproc} processes: {' '.join(cmd[1:])}", highlight=False)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # torchrun's default is 1
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # DDP's find_unused_parameters notice is expected here
    returncode = subprocess.run(cmd, env=env).returncode
    if returncode != 0:
        sys.exit(returncode)


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
    launch_torchrun(args, nproc=nproc, console=console)
