"""The run folder (README.md, "Run folders"): its layout, writing it (config.json, log, history, weights,
state), loading it back safely.

A run folder is UNTRUSTED input: someone may hand you one. So loading it never unpickles:
  config.json        parsed and validated with pydantic (RunConfig, DataSpec, data reference);
  model.safetensors  read with safetensors (a flat header + raw tensor bytes, no code);
  state/state.pt     read with torch.load(weights_only=True), which only rebuilds tensors
                     and plain containers and refuses any other global (e.g. a __reduce__
                     that would run a command).
Anything else is refused with a one-line BadInput before a byte of it is interpreted.
Scoring a split (probabilities, streamed predictions files) is engine/scoring.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import io
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.utils.data import DataLoader

from dsrsd_cli import __version__
from dsrsd_cli.config import DataConfig, RunConfig, migrate_config, validate_config
from dsrsd_cli.data.loader import Prepared, make_loader, make_spec, open_prepared
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_write_bytes, atomic_write_text, read_json, write_json
from dsrsd_cli.model.registry import build_model, model_names
from dsrsd_cli.types import DataSpec

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = Path("state") / "state.pt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
LOG_FILE = "log.txt"


# ---------------------------------------------------------------- config.json

class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpecRecord(_Frozen):
    """DataSpec as stored in config.json (validated before it sizes a model)."""

    dataset: str
    modalities: tuple[str, ...]
    n_outputs: int
    vocab: dict[str, int] = {}
    cat_sizes: tuple[int, ...] = ()
    dims: dict[str, int] = {}
    max_len: int = 0
    target: str = "correct"


class DataRecord(_Frozen):
    path: str
    manifest_hash: str
    dataset: str


class RunRecord(BaseModel):
    """The top level of config.json. Extra informative keys are kept but not trusted."""

    model_config = ConfigDict(extra="allow")

    config: dict[str, Any]
    spec: SpecRecord
    data: DataRecord
    tool_version: str
    created: str


def spec_to_dict(spec: DataSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def spec_from_dict(raw: dict[str, Any]) -> DataSpec:
    return DataSpec(**SpecRecord.model_validate(raw).model_dump())


@dataclass
class RunInfo:
    run_dir: Path
    cfg: RunConfig
    spec: DataSpec
    data: DataRecord
    record: dict[str, Any]          # the whole config.json, for display


def read_run_info(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInput(f"{run_dir}: not a run folder (it does not exist); give a folder written by `dsrsd train`")
    path = run_dir / CONFIG_FILE
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected a JSON object written by `dsrsd train`")
    try:
        record = RunRecord.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise BadInput(f"{path}: key {key!r} is invalid ({err['msg']}); the folder was not written by `dsrsd train` or was edited") from None
    cfg = validate_config(migrate_config(record.config, str(path)), where=str(path))  # migrate: folders of older versions
    spec = spec_from_dict(raw["spec"])
    return RunInfo(run_dir=run_dir, cfg=cfg, spec=spec, data=record.data, record=raw)


# ---------------------------------------------------------------- writing a run folder

def claim_run_dir(out: Path | None) -> Path:
    """--out (new or empty) or runs/run_<N>; created now so the folder is ours."""
    if out is None:
        return next_run_dir("runs")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"--out {out}: already exists and is not empty; continue it with --resume {out} or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_run_config(run_dir: Path, cfg: RunConfig, spec: DataSpec, prepared: Prepared, model: nn.Module,
                     device: torch.device, world_size: int) -> None:
    """config.json: the resolved config, the data spec and manifest hash, and where it ran."""
    write_json(run_dir / CONFIG_FILE, {
        "config": cfg.model_dump(),
        "spec": spec_to_dict(spec),
        "data": {"path": str(Path(cfg.data.path).resolve()), "manifest_hash": prepared.manifest_hash, "dataset": spec.dataset},
        "tool_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_names": model_names(spec),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "environment": {"device": str(device), "world_size": world_size, "torch": torch.__version__},
    })


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """history.csv: one row per epoch (a fitted model: per recorded round)."""
    atomic_write_text(run_dir / HISTORY_FILE, pd.DataFrame(history).to_csv(index=False))


class RunLog:
    """log.txt: timestamped lines, appended (rank 0 only: the others get path None)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        if self.path is None:
            return
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line}\n")


def seconds_since_process_start(fallback_start: float) -> float:
    """Wall seconds since this process was started (imports, data and model building included):
    /proc/self/stat's starttime (clock ticks after boot) against /proc/uptime. Where there is
    no /proc (macOS), the seconds since `fallback_start` (a time.time() taken early)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])   # field 22; the name (field 2) may hold spaces
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time() - fallback_start


# ---------------------------------------------------------------- weights and state

def save_weights(model: nn.Module, path: str | Path) -> None:
    """Best weights as safetensors, written atomically. Tied tensors are stored once per name."""
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    atomic_write_bytes(path, safetensors_bytes(tensors))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: missing; the run has no saved weights (did training finish at least one epoch?)")
    try:
        return load_safetensors(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInput(f"{path}: not a valid safetensors file ({e}); refusing to load it (weights are only read as safetensors)") from None


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """The resumable state: plain containers of tensors and numbers only, so that
    torch.load(weights_only=True) can read it back."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: missing; this run folder has no resumable state (it never finished an epoch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"{path}: refused: not a plain tensor/number state file ({first}); it may carry code, do not trust this run folder") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise BadInput(f"{path}: not a dsrsd training state (expected a dict with model, optimizer, epoch, ...)")
    return state


# ---------------------------------------------------------------- devices

def resolve_device(name: str) -> torch.device:
    """auto -> cuda, then mps, then cpu. Asking for a device that is not there is a BadInput."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device is available here; use --device cpu (or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise BadInput("--device mps: MPS is not available here; use --device cpu (or auto)")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise BadInput(f"--device {name!r}: choose auto, cpu, cuda or mps")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` torch CPU threads (None: leave as is)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- loading a run

def check_compatible(run_spec: DataSpec, data_spec: DataSpec, where: str) -> None:
    """The data must size the model exactly as the training data did (same ids -> same rows)."""
    def plain(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    problems = []
    for field in ("dataset", "modalities", "n_outputs", "target", "cat_sizes", "max_len"):
        a, b = plain(getattr(run_spec, field)), plain(getattr(data_spec, field))
        if a != b:
            problems.append(f"{field} {b!r} (run: {a!r})")
    for field in ("vocab", "dims"):
        a, b = getattr(run_spec, field), getattr(data_spec, field)
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                problems.append(f"{field}[{key}] {b.get(key)} (run: {a.get(key)})")
    if problems:
        raise BadInput(
            f"{where}: the data does not match the run's model: {'; '.join(problems[:4])}"
            f"{' ...' if len(problems) > 4 else ''}; prepare it with the same vocabularies or retrain on it"
        )


def attach_data(model: nn.Module, prepared: Prepared, data_cfg) -> None:
    """Models that read the prepared tables beyond the batch (the fitted `gbdt`) get them here."""
    if hasattr(model, "attach"):
        model.attach(prepared, data_cfg)


def _check_weights_fit(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, name: str, version: Any) -> None:
    if getattr(model, "state_shapes_vary", False):   # a fitted model checks its own state on load
        return
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k} {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}" for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    problems = [f"missing {', '.join(missing[:3])}"] if missing else []
    problems += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
    problems += [f"shape {', '.join(shapes[:3])}"] if shapes else []
    if problems:
        raise BadInput(
            f"{path}: the weights do not fit model {name!r} ({'; '.join(problems)}{' ...' if len(missing) + len(unexpected) + len(shapes) > 3 else ''}); "
            f"the run was written by dsrsd {version} with another model layout or was edited: retrain it with this version"
        )


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: RunConfig
    spec: DataSpec
    model: nn.Module                 # eval mode, best weights, on `device`
    prepared: Prepared
    device: torch.device
    info: RunInfo
    same_data: bool                  # the data is the one the run was trained on (manifest hash)

    def loader(self, split: str, *, data_cfg: DataConfig | None = None, rank: int = 0, world_size: int = 1) -> DataLoader:
        """`split` for scoring, in a fixed order, at the run's eval batch size: this rank's shard
        (all of it in one process). `data_cfg` replaces the run's data settings (another cutoff day)."""
        return make_loader(self.prepared, split, data_cfg or self.cfg.data, shuffle=False, seed=self.cfg.train.seed,
                           batch_size=self.cfg.eval_batch, rank=rank, world_size=world_size)


def open_run_data(info: RunInfo, data: Path | None) -> tuple[Prepared, Any, bool]:
    """The prepared folder a run is used on: `data`, or (None) the one it was trained on,
    which must not have changed since. Checked to size the run's model exactly.
    Returns (prepared, the run's data config pointing at it, same data as in training)."""
    data_path = Path(data) if data is not None else Path(info.data.path)
    if data is None and not data_path.exists() and Path(info.cfg.data.path).exists():
        data_path = Path(info.cfg.data.path)  # the run was moved along with a relative data folder
    prepared = open_prepared(data_path)
    same_data = prepared.manifest_hash == info.data.manifest_hash
    if data is None and not same_data:
        raise BadInput(
            f"{data_path}: the prepared data changed since {info.run_dir} was trained (manifest hash differs); "
            f"pass --data {data_path} to use it anyway, or re-prepare the original data"
        )
    data_cfg = info.cfg.data.model_copy(update={"path": str(data_path)})
    check_compatible(info.spec, make_spec(prepared, data_cfg), where=str(data_path))
    return prepared, data_cfg, same_data


def load_run(run_dir: str | Path, *, device: str = "cpu", data: Path | None = None) -> LoadedRun:
    info = read_run_info(run_dir)
    run_dir = info.run_dir
    state_path = run_dir / STATE_FILE
    if state_path.exists():
        load_state(state_path)  # refuse a folder that carries a non-plain (possibly malicious) state
    tensors = load_weights(run_dir / WEIGHTS_FILE)
    prepared, data_cfg, same_data = open_run_data(info, data)
    cfg = info.cfg.model_copy(update={"data": data_cfg})

    model = build_model(info.spec, cfg.model, cfg.dsrsd)
    _check_weights_fit(model, tensors, run_dir / WEIGHTS_FILE, cfg.model.name, info.record.get("tool_version"))
    model.load_state_dict(tensors, strict=True)
    attach_data(model, prepared, cfg.data)
    dev = resolve_device(device)
    model.to(dev).eval()
    return LoadedRun(run_dir=run_dir, cfg=cfg, spec=info.spec, model=model, prepared=prepared, device=dev, info=info, same_data=same_data)


def next_run_dir(root: str | Path = "runs") -> Path:
    """Create and return runs/run_<N> with the next free N (mkdir is the atomic claim)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[4:]) for p in root.iterdir() if p.name.startswith("run_") and p.name[4:].isdigit()]
    n = max(taken, default=0) + 1
    while True:
        path = root / f"run_{n}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            n += 1
