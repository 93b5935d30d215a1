"""`dsrsd explain`: which modality drives a trained model's predictions.

On one split of the run's data (test by default), with the run's best weights:

Shapley values over modalities, exact. A coalition S of modalities is evaluated by one
forward pass with every other modality marked absent (`Batch.without`: the model puts its
learned absent token there, the token modality dropout trained it with). The 2^M
coalitions' logits of every scored row are computed once per split and cached in
RUN_DIR/explain/passes_<split>.npz (keyed by the weights, the data and the data config);
every number below, for every group, comes from that cache. Two value functions v(S), on
the scored rows:

  auc     v(S) = AUC of coalition S's predictions. v(∅) is about 0.5 (every row looks alike).
  logit   v(S) = mean over rows of |logit_S - logit_∅|, so v(∅) = 0: how far the modalities
          move each prediction from the no-information one. Multi-class logits are centred
          per row first (softmax ignores a shift) and |.| is the mean absolute entry.

Shapley values are efficient for any v: sum_m phi_m = v(all) - v(∅). explain checks that
to 1e-6 (a failure is a bug: exit 1) and reports the gap.

Leave-one-out: auc_drop = AUC(all) - AUC(all but m); logit_change = mean |logit_all -
logit_{all but m}|.
Gates (models with a gate: dsrsd, late): the mean gate weight of each stream. A gate says
how much a stream is weighted, not how much it changes the prediction: NOT an attribution.
Streams (DSRSD-Net): per modality, the change when its shared stream (its term in the
consensus) or its private stream is removed (`forward(batch, ablate={"m.shared"})`), and
shared_share = change_shared / (change_shared + change_private), changes in mean |logit|.

`--by` repeats everything per group of rows: EdNet `part` (TOEIC part of the predicted
question); OULAD `final_result` or `module`.
Mechanisms (models with the aux keys: dsrsd, gates only for late): model/diagnostics.py's
MechanismProbe over the split's full-coalition pass: cross-modal alignment (InfoNCE vs ln N,
top-1 retrieval vs 1/N), health of the shared space (effective rank vs k, correlation, std),
shared vs private cosine, gate entropy vs ln G. {} for models without them.
Files: RUN_DIR/explain/explain_<split>.json, explain_<split>.png (+ explain_<split>_by_<by>.png,
explain_<split>_mechanisms.png where there are mechanisms).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sklearn.metrics import roc_auc_score

from dsrsd_cli.data import schema
from dsrsd_cli.engine.metrics import compute_metrics
from dsrsd_cli.engine.runs import WEIGHTS_FILE, LoadedRun, load_run, probabilities, torch_threads
from dsrsd_cli.engine.stats import nearly_constant
from dsrsd_cli.errors import BadInput, WorkFailed
from dsrsd_cli.io import atomic_write_bytes, sha256_file, to_jsonable, write_json
from dsrsd_cli.model.diagnostics import MechanismProbe, meaning
from dsrsd_cli.report import (
    explain_groups_table, explain_table, mechanisms_table, plot_explain, plot_explain_groups, plot_mechanisms, print_json,
)
from dsrsd_cli.types import Batch

SPLITS = ("train", "valid", "test")
EFFICIENCY_TOLERANCE = 1e-6
CACHE_VERSION = 2   # 2: + mechanisms
VALUE_FUNCTIONS = {
    "auc": "v(S) = AUC of the predictions with only the modalities in S present (others: learned absent token)",
    "logit": "v(S) = mean over scored rows of |logit_S - logit_none| (multi-class: centred logits, mean over classes); v(none) = 0",
}


# ---------------------------------------------------------------- groupings (--by)

def _part(rows: pd.DataFrame, prepared) -> np.ndarray:
    return np.array([f"part {p}" if p > 0 else "part ?" for p in rows["part"].to_numpy()])


def _module(rows: pd.DataFrame, prepared) -> np.ndarray:
    return rows["code_module"].to_numpy(dtype=str)


def _final_result(rows: pd.DataFrame, prepared) -> np.ndarray:
    keys = ["code_module", "code_presentation", "id_student"]
    regs = pd.read_parquet(prepared.file("registrations.parquet"), columns=[*keys, "final_result"])
    joined = rows[keys].merge(regs, on=keys, how="left", validate="many_to_one")
    return joined["final_result"].fillna("?").to_numpy(dtype=str)


# dataset -> grouping name -> (description, rows of scored keys -> one label per row)
GROUPINGS: dict[str, dict[str, tuple[str, Callable[[pd.DataFrame, Any], np.ndarray]]]] = {
    "ednet": {"part": ("TOEIC part of the predicted question", _part)},
    "oulad": {
        "final_result": ("the registration's final result", _final_result),
        "module": ("the module (code_module)", _module),
    },
}
GROUP_ORDER = {"final_result": list(schema.OULAD_RESULTS)}


# ---------------------------------------------------------------- the cached forward passes

@dataclass
class Passes:
    """Every forward pass explain needs, one entry per scored row of the split.

    logits[s]: coalition s, a bit mask over `modalities` (bit i set = modality i present);
    streams: "m.shared" / "m.private" -> logits of the full model with that stream removed;
    gates: (N, G) gate weights of the full model (G = 0 without a gate);
    mechanisms: MechanismProbe.result() of the full model's passes ({} without the aux keys).
    """

    modalities: tuple[str, ...]
    logits: np.ndarray                 # (2^M, N) or (2^M, N, C) float32
    labels: np.ndarray                 # (N,)
    stream_names: list[str]
    stream_logits: np.ndarray          # (S, N[, C])
    gate_names: list[str]
    gates: np.ndarray                  # (N, G)
    groups: dict[str, np.ndarray]      # grouping -> (N,) labels
    mechanisms: dict[str, Any] = field(default_factory=dict)   # flat, JSON in the npz

    def to_npz(self, key: str) -> bytes:
        arrays = {
            "key": np.array(key), "modalities": np.array(self.modalities), "logits": self.logits, "labels": self.labels,
            "stream_names": np.array(self.stream_names, dtype=str), "stream_logits": self.stream_logits,
            "gate_names": np.array(self.gate_names, dtype=str), "gates": self.gates,
            "mechanisms": np.array(json.dumps(self.mechanisms)),
            **{f"group:{name}": values.astype(str) for name, values in self.groups.items()},
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, path: Path, key: str) -> "Passes | None":
        """The cached passes if `path` holds them for `key`; None otherwise (never unpickles)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    return None
                passes = cls(
                    modalities=tuple(str(m) for m in z["modalities"]), logits=z["logits"], labels=z["labels"],
                    stream_names=[str(s) for s in z["stream_names"]], stream_logits=z["stream_logits"],
                    gate_names=[str(g) for g in z["gate_names"]], gates=z["gates"],
                    groups={name[6:]: z[name] for name in z.files if name.startswith("group:")},
                    mechanisms=json.loads(str(z["mechanisms"])),
                )
        except (OSError, ValueError, KeyError, EOFError):
            return None
        if not isinstance(passes.mechanisms, dict):
            return None
        n = len(passes.labels)
        shapes_ok = (
            passes.logits.shape[:2] == (2 ** len(passes.modalities), n) and passes.gates.shape[0] == n
            and passes.stream_logits.shape[0] == len(passes.stream_names) and all(len(g) == n for g in passes.groups.values())
        )
        return passes if shapes_ok else None


def _subset_absent(s: int, modalities: tuple[str, ...]) -> list[str]:
    return [m for i, m in enumerate(modalities) if not (s >> i) & 1]


def _ablations(run: LoadedRun) -> list[str]:
    """The streams `forward(ablate=...)` can remove, as the model declares them (DSRSD-Net:
    each modality's shared and private stream; the baselines: none)."""
    return list(getattr(run.model, "ablatable_streams", lambda: [])())


def _scored_keys(batch: Batch, mask: torch.Tensor) -> dict[str, np.ndarray]:
    """Batch keys as one value per scored row (per-row keys repeated along the row's positions)."""
    rows = mask.nonzero(as_tuple=True)[0].cpu().numpy()
    out = {}
    for name, value in batch.keys.items():
        if isinstance(value, torch.Tensor):
            out[name] = value[mask].cpu().numpy() if value.shape == mask.shape else value.cpu().numpy()[rows]
        else:
            out[name] = np.asarray(value, dtype=object)[rows]
    return out


@torch.no_grad()
def compute_passes(run: LoadedRun, loader, console: Console | None = None) -> Passes:
    """Run the 2^M coalitions (+ stream ablations) over the loader; keep the scored rows."""
    model, spec, device = run.model, run.spec, run.device
    mods = spec.modalities
    n_subsets = 2 ** len(mods)
    ablations = _ablations(run)
    logits: list[list[np.ndarray]] = [[] for _ in range(n_subsets)]
    streams: list[list[np.ndarray]] = [[] for _ in ablations]
    labels, gates, rows = [], [], []
    gate_names: list[str] = []
    probe = MechanismProbe(tau=run.cfg.dsrsd.tau)
    model.eval()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console or Console(stderr=True, quiet=True), transient=True,
    )
    with progress:
        task = progress.add_task(f"explain: {n_subsets + len(ablations)} passes per batch", total=len(loader))
        for batch in loader:
            batch = batch.to(device)
            mask = batch.mask.bool()
            for s in range(n_subsets):
                out = model(batch.without(*_subset_absent(s, mods)))
                logits[s].append(out.logits[mask].float().cpu().numpy())
                if s == n_subsets - 1:   # the full model: its gates on the scored units, as `gates` below
                    probe.add(out.aux, gate_rows=mask.reshape(-1)[batch.valid.reshape(-1).bool()])
                if s == n_subsets - 1 and "gates" in out.aux:
                    scored = mask.reshape(-1)[batch.valid.reshape(-1).bool()]          # valid units that are scored
                    gates.append(out.aux["gates"][scored].float().cpu().numpy())
                    gate_names = [str(g) for g in out.aux["gate_names"]]
            for j, stream in enumerate(ablations):
                streams[j].append(model(batch, ablate=frozenset({stream})).logits[mask].float().cpu().numpy())
            labels.append(batch.target[mask].cpu().numpy())
            keys = _scored_keys(batch, mask)
            if spec.dataset == "ednet":
                keys["part"] = batch.inputs["content"]["part"][mask].cpu().numpy()
            rows.append(pd.DataFrame(keys))
            progress.advance(task)
    if not labels:
        raise BadInput(f"{run.prepared.path}: the split has no rows to explain")
    frame = pd.concat(rows, ignore_index=True)
    n = len(frame)
    stacked = np.stack([np.concatenate(chunks) for chunks in logits])
    return Passes(
        modalities=tuple(mods),
        logits=stacked,
        labels=np.concatenate(labels),
        stream_names=list(ablations),
        stream_logits=np.stack([np.concatenate(c) for c in streams]) if ablations else np.zeros((0, *stacked.shape[1:]), np.float32),
        gate_names=gate_names,
        gates=np.concatenate(gates) if gates else np.zeros((n, 0), np.float32),
        groups={name: fn(frame, run.prepared).astype(str) for name, (_, fn) in GROUPINGS[spec.dataset].items()},
        mechanisms=probe.result(),
    )


def _cache_key(run: LoadedRun, split: str) -> str:
    parts = {
        "version": CACHE_VERSION, "weights": sha256_file(run.run_dir / WEIGHTS_FILE), "data": run.prepared.manifest_hash,
        "data_config": run.cfg.data.model_dump(mode="json"), "split": split,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_passes(run: LoadedRun, split: str, console: Console | None = None) -> Passes:
    """The split's passes from RUN_DIR/explain/passes_<split>.npz, computed (and saved) if stale."""
    from dsrsd_cli.data.loader import make_loader

    path = run.run_dir / "explain" / f"passes_{split}.npz"
    key = _cache_key(run, split)
    passes = Passes.from_npz(path, key) if path.is_file() else None
    if passes is None:
        batch_size = run.cfg.train.eval_batch_size or run.cfg.data.batch_size
        loader = make_loader(run.prepared, split, run.cfg.data, shuffle=False, seed=run.cfg.train.seed, batch_size=batch_size)
        with torch_threads(run.cfg.train.threads):
            passes = compute_passes(run, loader, console)
        atomic_write_bytes(path, passes.to_npz(key))
    return passes


# ---------------------------------------------------------------- value functions and Shapley

def auc_of(logits: np.ndarray, labels: np.ndarray) -> float:
    """Binary: AUC of the logits (sigmoid is monotone); multi-class: macro one-vs-rest on softmax.
    Logits equal up to float noise count as ties (stats.nearly_constant)."""
    if logits.ndim == 1:
        y = labels.astype(np.int64)
        if np.unique(y).size < 2:
            return math.nan
        return 0.5 if nearly_constant(logits) else float(roc_auc_score(y, logits))
    if nearly_constant(logits - logits.mean(-1, keepdims=True)):
        logits = np.broadcast_to(logits[:1], logits.shape)
    probs = probabilities(torch.from_numpy(logits), logits.shape[-1]).numpy()
    return float(compute_metrics(labels, probs).get("auc", math.nan))


def _centred(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    return logits if logits.ndim == 1 else logits - logits.mean(-1, keepdims=True)


def mean_abs_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of |a - b| (multi-class: centred logits, mean over classes too)."""
    return float(np.abs(_centred(a) - _centred(b)).mean()) if len(a) else math.nan


def shapley(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values from v over all 2^M coalitions (index = bit mask): (2^M,) -> (M,).

    phi_m = sum over S not containing m of |S|! (M - |S| - 1)! / M! * (v(S + m) - v(S)).
    """
    M = int(round(math.log2(len(values))))
    phi = np.zeros(M)
    for m in range(M):
        for s in range(len(values)):
            if (s >> m) & 1:
                continue
            k = bin(s).count("1")
            weight = math.factorial(k) * math.factorial(M - k - 1) / math.factorial(M)
            phi[m] += weight * (values[s | (1 << m)] - values[s])
    return phi


def attribution(passes: Passes, rows: np.ndarray | None = None) -> dict[str, Any]:
    """Shapley values, efficiency check, leave-one-out, gates and streams on `rows` (all if None)."""
    take = (lambda a: a) if rows is None else (lambda a: a[rows])
    mods = passes.modalities
    full = 2 ** len(mods) - 1
    y = take(passes.labels)
    logits = [take(passes.logits[s]) for s in range(full + 1)]
    values = {
        "auc": np.array([auc_of(l, y) for l in logits]),
        "logit": np.array([mean_abs_change(l, logits[0]) for l in logits]),
    }
    binary = passes.logits.ndim == 2
    result: dict[str, Any] = {"n": int(len(y)), "positive_rate": float(np.mean(y)) if binary and len(y) else None}
    result["full"] = {name: float(v[full]) for name, v in values.items()}
    result["none"] = {name: float(v[0]) for name, v in values.items()}
    result["shapley"], result["efficiency"] = {}, {}
    for name, v in values.items():
        phi = shapley(v)
        result["shapley"][name] = dict(zip(mods, phi.tolist()))
        target = float(v[full] - v[0])
        gap = abs(float(phi.sum()) - target)
        if math.isfinite(gap) and gap > EFFICIENCY_TOLERANCE:
            raise WorkFailed(f"Shapley values ({name}) sum to {phi.sum():.9f}, not v(all) - v(none) = {target:.9f}; this is a bug, please report it")
        result["efficiency"][name] = {"sum": float(phi.sum()), "full_minus_none": target, "gap": gap if math.isfinite(gap) else None}
    result["leave_one_out"] = {
        m: {
            "auc_drop": float(values["auc"][full] - values["auc"][full & ~(1 << i)]),
            "logit_change": mean_abs_change(logits[full], logits[full & ~(1 << i)]),
        }
        for i, m in enumerate(mods)
    }
    auc_phi = result["shapley"]["auc"]
    result["ranking"] = sorted(mods, key=lambda m: -auc_phi[m] if math.isfinite(auc_phi[m]) else math.inf)
    if passes.gates.shape[1]:
        result["gates"] = dict(zip(passes.gate_names, take(passes.gates).mean(0).tolist())) if len(y) else None
    if passes.stream_names:
        result["streams"] = _streams(passes, take, logits[full], y)
    return result


def _streams(passes: Passes, take, full_logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    full_auc = auc_of(full_logits, y)
    changes: dict[str, dict[str, dict[str, float]]] = {}
    for name, ablated in zip(passes.stream_names, passes.stream_logits):
        modality, stream = name.split(".")
        ablated = take(ablated)
        changes.setdefault(modality, {})[stream] = {
            "logit_change": mean_abs_change(full_logits, ablated), "auc_drop": full_auc - auc_of(ablated, y),
        }
    for parts in changes.values():
        total = parts["shared"]["logit_change"] + parts["private"]["logit_change"]
        parts["shared_share"] = parts["shared"]["logit_change"] / total if total > 0 else math.nan
    return changes


# ---------------------------------------------------------------- the command

def explain_run(run_dir: str | Path, *, split: str = "test", by: str | None = None, device: str = "auto",
                console: Console | None = None) -> dict[str, Any]:
    """Attribution of a trained run on `split`; writes RUN_DIR/explain/ and returns the JSON written."""
    if split not in SPLITS:
        raise BadInput(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    run = load_run(run_dir, device=device)
    dataset = run.spec.dataset
    if by is not None and by not in GROUPINGS[dataset]:
        raise BadInput(f"--by {by!r} does not apply to {dataset}; choose one of {', '.join(GROUPINGS[dataset])}")
    out_dir = run.run_dir / "explain"
    if out_dir.is_symlink():
        raise BadInput(f"{out_dir}: is a symbolic link; refusing to write through it (remove it)")

    passes = cached_passes(run, split, console)

    result: dict[str, Any] = {
        "run_dir": str(run.run_dir), "model": run.cfg.model.name, "dataset": dataset, "split": split,
        "modalities": list(passes.modalities), "value_functions": VALUE_FUNCTIONS,
        "absent": "a modality outside the coalition is marked absent (Batch.without): the model's learned absent token",
        "gates_note": "mean gate weights: how much each stream is weighted, not an attribution",
        **attribution(passes),
        "mechanisms": dict(passes.mechanisms),
    }
    if passes.mechanisms:
        result["mechanisms_meaning"] = {key: meaning(key) for key in passes.mechanisms}
    if by is not None:
        labels = passes.groups[by]
        order = GROUP_ORDER.get(by)
        names = sorted(set(labels.tolist()), key=lambda g: (order.index(g) if order and g in order else len(order or ()), g))
        result["by"] = {
            "name": by, "description": GROUPINGS[dataset][by][0],
            "groups": [{"group": g, **attribution(passes, np.flatnonzero(labels == g))} for g in names],
        }
    result = to_jsonable(result)
    write_json(out_dir / f"explain_{split}.json", result)
    plot_explain(result, out_dir / f"explain_{split}.png")
    if by is not None:
        plot_explain_groups(result, out_dir / f"explain_{split}_by_{by}.png")
    if result["mechanisms"]:
        plot_mechanisms(result, out_dir / f"explain_{split}_mechanisms.png")
    return result


def explain_from_cli(*, run_dir: Path, split: str, by: str | None, json_out: bool, console: Console) -> None:
    result = explain_run(run_dir, split=split, by=by, console=console)
    console.print(explain_table(result))
    if "by" in result:
        console.print(explain_groups_table(result))
    if result.get("mechanisms"):
        console.print(mechanisms_table(result))
    console.print(f"wrote {Path(run_dir) / 'explain'}/", highlight=False)
    if json_out:
        print_json(result)
