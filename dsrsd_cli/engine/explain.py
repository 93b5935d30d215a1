"""`dsrsd explain`: which modality drives a trained model's predictions.

On one split of the run's data (test by default), with the run's best weights:

Shapley values over modalities, exact. A coalition S of modalities is evaluated by one
forward pass with every other modality marked absent (`Batch.without`: the model puts its
learned absent token there, the token modality dropout trained it with). The 2^M
coalitions' logits of every scored row are computed once per split and cached in the folder
RUN_DIR/explain/passes_<split>/ (explain_cache.py; keyed by the weights, the data and the data
config): one .npy column per coalition (coalition_<s>.npy, (N,) or (N, C) float32, s the bit
mask), per removed stream (stream_<j>.npy), labels.npy, gates.npy (N, G), group_<by>.npy
((N,) int32 codes) and meta.json (key, names, group names, mechanisms, shapes). The passes run
a chunk of batches (CHUNK_ROWS scored rows) at a time, each chunk appended to the columns, so
memory never holds the whole split; the folder is built beside its place and renamed when
complete, and a partial or stale one is recomputed. Every number below, for every group,
comes from that cache, read one coalition at a time (a group's rows through a memory map):
memory O(N) (labels and two columns), not O(2^M N). Two value functions v(S), on the scored rows:

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

Just over 500 lines on purpose: a sixth of it is this description of the method, and the
passes, the value functions and the command stay together because each reads the one cache.
"""

from __future__ import annotations

import hashlib
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
from dsrsd_cli.engine.explain_cache import CacheFolder, CacheWriter, GroupCodes, write_cache
from dsrsd_cli.engine.metrics import compute_metrics
from dsrsd_cli.engine.runs import WEIGHTS_FILE, LoadedRun, load_run, torch_threads
from dsrsd_cli.engine.scoring import probabilities
from dsrsd_cli.engine.stats import nearly_constant
from dsrsd_cli.errors import BadInput, WorkFailed
from dsrsd_cli.io import sha256_file, to_jsonable, write_json
from dsrsd_cli.model.diagnostics import MechanismProbe, gate_shares, meaning
from dsrsd_cli.report import (
    explain_groups_table, explain_table, mechanisms_table, plot_explain, plot_explain_groups, plot_mechanisms, print_json,
)
from dsrsd_cli.types import Batch

SPLITS = ("train", "valid", "test")
EFFICIENCY_TOLERANCE = 1e-6
CACHE_VERSION = 3   # 2: + mechanisms; 3: a folder of .npy columns written chunk by chunk (was one .npz)
CHUNK_ROWS = 1_000_000   # scored rows of batches held before they are appended to the cache as one chunk
BLOCK_ROWS = 1 << 20     # rows per block of the float64 reductions over the cached columns
VALUE_FUNCTIONS = {
    "auc": "v(S) = AUC of the predictions with only the modalities in S present (others: learned absent token)",
    "logit": "v(S) = mean over scored rows of |logit_S - logit_none| (multi-class: centred logits, mean over classes); v(none) = 0",
}


# ---------------------------------------------------------------- groupings (--by)

def _part(prepared) -> Callable[[pd.DataFrame], np.ndarray]:
    def labels(rows: pd.DataFrame) -> np.ndarray:
        parts, inverse = np.unique(rows["part"].to_numpy(), return_inverse=True)
        return np.array([f"part {p}" if p > 0 else "part ?" for p in parts], dtype=str)[inverse.reshape(-1)]
    return labels


def _module(prepared) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda rows: rows["code_module"].to_numpy(dtype=str)


def _final_result(prepared) -> Callable[[pd.DataFrame], np.ndarray]:
    """The registrations (one row per registration, small) are read once; each chunk's keys are
    joined onto them."""
    keys = ["code_module", "code_presentation", "id_student"]
    regs = pd.read_parquet(prepared.file("registrations.parquet"), columns=[*keys, "final_result"])

    def labels(rows: pd.DataFrame) -> np.ndarray:
        joined = rows[keys].merge(regs, on=keys, how="left", validate="many_to_one")
        return joined["final_result"].fillna("?").to_numpy(dtype=str)
    return labels


# dataset -> grouping name -> (description, prepared -> (a chunk's scored keys -> one label per row))
GROUPINGS: dict[str, dict[str, tuple[str, Callable[[Any], Callable[[pd.DataFrame], np.ndarray]]]]] = {
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
    """Every forward pass explain needs, one row per scored row of the split, read from the
    cache folder one column at a time (each accessor: all rows, or `rows` an index array).

    coalition(s): logits of coalition s, a bit mask over `modalities` (bit i set = modality i present);
    stream(j): logits of the full model with stream_names[j] ("m.shared" / "m.private") removed;
    gates(): (N, G) gate weights of the full model (G = 0 without a gate);
    groups: grouping -> label names, group_codes(grouping): (N,) int32 index into them;
    mechanisms: MechanismProbe.result() of the full model's passes ({} without the aux keys).
    """

    cache: CacheFolder
    modalities: tuple[str, ...]
    stream_names: list[str]
    gate_names: list[str]
    groups: dict[str, list[str]]
    mechanisms: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.cache.rows

    @property
    def binary(self) -> bool:
        return len(self.cache.shape("coalition_0")) == 1

    def coalition(self, s: int, rows: np.ndarray | None = None) -> np.ndarray:       # (n,) or (n, C) float32
        return self.cache.read(f"coalition_{s}", rows)

    def stream(self, j: int, rows: np.ndarray | None = None) -> np.ndarray:          # (n,) or (n, C) float32
        return self.cache.read(f"stream_{j}", rows)

    def labels(self, rows: np.ndarray | None = None) -> np.ndarray:                  # (n,)
        return self.cache.read("labels", rows)

    def gates(self, rows: np.ndarray | None = None) -> np.ndarray:                   # (n, G) float32
        if not self.gate_names:
            return np.zeros((self.n if rows is None else len(rows), 0), np.float32)
        return self.cache.read("gates", rows)

    def group_codes(self, grouping: str) -> np.ndarray:                              # (N,) int32
        return self.cache.read(f"group_{grouping}")

    @classmethod
    def open(cls, folder: Path, key: str) -> "Passes | None":
        """The passes cached in `folder` for `key`; None if missing, stale, partial or foreign."""
        cache = CacheFolder.open(folder, key)
        if cache is None:
            return None
        try:
            meta = cache.meta
            passes = cls(
                cache, modalities=tuple(str(m) for m in meta["modalities"]), stream_names=[str(s) for s in meta["stream_names"]],
                gate_names=[str(g) for g in meta["gate_names"]], mechanisms=meta["mechanisms"],
                groups={str(name): [str(g) for g in names] for name, names in meta["groups"].items()},
            )
        except (KeyError, TypeError, AttributeError):
            return None
        return passes if passes._complete() else None

    def _complete(self) -> bool:
        """Every column explain reads is in the cache, with the shapes it expects."""
        has = lambda name, shape: self.cache.has(name) and self.cache.shape(name) == shape   # noqa: E731
        n = self.n
        logits = self.cache.shape("coalition_0") if self.cache.has("coalition_0") else (-1,)
        return (
            isinstance(self.mechanisms, dict) and self.modalities != () and logits[0] == n and has("labels", (n,))
            and all(has(f"coalition_{s}", logits) for s in range(2 ** len(self.modalities)))
            and all(has(f"stream_{j}", logits) for j in range(len(self.stream_names)))
            and (not self.gate_names or has("gates", (n, len(self.gate_names))))
            and all(has(f"group_{g}", (n,)) and self.cache.columns[f"group_{g}"]["dtype"] == "<i4" for g in self.groups)
        )


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


def _batch_columns(model, batch: Batch, mods: tuple[str, ...], ablations: list[str],
                   probe: MechanismProbe) -> tuple[dict[str, np.ndarray], list[str]]:
    """One batch's passes on its scored rows: column name -> (n[, ...]) array; and the gate names."""
    mask = batch.mask.bool()
    n_subsets = 2 ** len(mods)
    columns: dict[str, np.ndarray] = {}
    gate_names: list[str] = []
    for s in range(n_subsets):
        out = model(batch.without(*_subset_absent(s, mods)))
        columns[f"coalition_{s}"] = out.logits[mask].float().cpu().numpy()                  # (n,) or (n, C)
        if s == n_subsets - 1:   # the full model: its gates (one row per scored unit)
            probe.add(out.aux)
            if "gates" in out.aux:
                columns["gates"] = out.aux["gates"].float().cpu().numpy()                    # (n, G)
                gate_names = [str(g) for g in out.aux["gate_names"]]
    for j, stream in enumerate(ablations):
        columns[f"stream_{j}"] = model(batch, ablate=frozenset({stream})).logits[mask].float().cpu().numpy()
    columns["labels"] = batch.target[mask].cpu().numpy()                                     # (n,)
    return columns, gate_names


class _Chunk:
    """Batches' columns and scored keys held until CHUNK_ROWS rows, then appended to the cache
    as one chunk, with the chunk's group codes (computed from its keys, never from all rows)."""

    def __init__(self, groupers: dict[str, Callable[[pd.DataFrame], np.ndarray]]) -> None:
        self.groupers = groupers
        self.codes = {name: GroupCodes() for name in groupers}
        self._reset()

    def _reset(self) -> None:
        self.columns: dict[str, list[np.ndarray]] = {}
        self.keys: dict[str, list[np.ndarray]] = {}
        self.rows = 0

    def add(self, columns: dict[str, np.ndarray], keys: dict[str, np.ndarray]) -> None:
        for store, new in ((self.columns, columns), (self.keys, keys)):
            for name, value in new.items():
                store.setdefault(name, []).append(value)
        self.rows += len(columns["labels"])

    def flush(self, writer: CacheWriter) -> None:
        if self.rows:
            columns = {name: np.concatenate(parts) for name, parts in self.columns.items()}
            rows = pd.DataFrame({name: np.concatenate(parts) for name, parts in self.keys.items()})
            for name, labels in self.groupers.items():
                columns[f"group_{name}"] = self.codes[name].encode(labels(rows))            # (n,) int32
            writer.append(columns)
        self._reset()


@torch.no_grad()
def compute_passes(run: LoadedRun, loader, writer: CacheWriter, console: Console | None = None) -> dict[str, Any]:
    """Run the 2^M coalitions (+ stream ablations) over the loader; append the scored rows to
    `writer` a chunk (batches up to CHUNK_ROWS rows) at a time. Returns the cache's facts."""
    model, spec = run.model, run.spec
    mods = tuple(spec.modalities)
    ablations = _ablations(run)
    chunk = _Chunk({name: make(run.prepared) for name, (_, make) in GROUPINGS[spec.dataset].items()})
    probe = MechanismProbe(tau=run.cfg.dsrsd.tau)
    gate_names: list[str] = []
    model.eval()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console or Console(stderr=True, quiet=True), transient=True,
    )
    with progress:
        task = progress.add_task(f"explain: {2 ** len(mods) + len(ablations)} passes per batch", total=len(loader))
        for batch in loader:
            batch = batch.to(run.device)
            columns, names = _batch_columns(model, batch, mods, ablations, probe)
            gate_names = names or gate_names
            keys = _scored_keys(batch, batch.mask.bool())
            if spec.dataset == "ednet":
                keys["part"] = batch.inputs["content"]["part"][batch.mask.bool()].cpu().numpy()
            chunk.add(columns, keys)
            if chunk.rows >= CHUNK_ROWS:
                chunk.flush(writer)
            progress.advance(task)
    chunk.flush(writer)
    if not writer.rows:
        raise BadInput(f"{run.prepared.path}: the split has no rows to explain")
    return {"modalities": list(mods), "stream_names": ablations, "gate_names": gate_names,
            "groups": {name: codes.names for name, codes in chunk.codes.items()}, "mechanisms": probe.result()}


def _cache_key(run: LoadedRun, split: str) -> str:
    parts = {
        "version": CACHE_VERSION, "weights": sha256_file(run.run_dir / WEIGHTS_FILE), "data": run.prepared.manifest_hash,
        "data_config": run.cfg.data.model_dump(mode="json"), "split": split,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_passes(run: LoadedRun, split: str, console: Console | None = None) -> Passes:
    """The split's passes from RUN_DIR/explain/passes_<split>/, computed (and saved) if missing,
    stale or incomplete."""
    folder = run.run_dir / "explain" / f"passes_{split}"
    key = _cache_key(run, split)
    passes = Passes.open(folder, key)
    if passes is None:
        loader = run.loader(split)
        with torch_threads(run.cfg.train.threads), write_cache(folder) as writer:
            writer.finish({"key": key, **compute_passes(run, loader, writer, console)})
        (folder.parent / f"passes_{split}.npz").unlink(missing_ok=True)       # the cache of explain before version 3
        passes = Passes.open(folder, key)
        if passes is None:
            raise WorkFailed(f"{folder}: the explain cache just written does not read back; this is a bug, please report it")
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
    probs = probabilities(torch.from_numpy(np.ascontiguousarray(logits)), logits.shape[-1]).numpy()
    return float(compute_metrics(labels, probs).get("auc", math.nan))


def _centred(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    return logits if logits.ndim == 1 else logits - logits.mean(-1, keepdims=True)


def mean_abs_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of |a - b| (multi-class: centred logits, mean over classes too). Summed in
    float64 over blocks of BLOCK_ROWS rows: the float64 copies stay O(block), not O(N)."""
    if not len(a):
        return math.nan
    total = 0.0
    for i in range(0, len(a), BLOCK_ROWS):
        total += float(np.abs(_centred(a[i:i + BLOCK_ROWS]) - _centred(b[i:i + BLOCK_ROWS])).sum())
    return total / a.size


def _mean_shares(gates: np.ndarray) -> np.ndarray:
    """(n, G) gate weights -> (G,) each stream's mean share of its unit's weights
    (diagnostics.gate_shares), summed in float64 over blocks of rows (the cache is memory-mapped)."""
    total = np.zeros(gates.shape[1:])
    for i in range(0, len(gates), BLOCK_ROWS):
        total += gate_shares(torch.from_numpy(np.asarray(gates[i:i + BLOCK_ROWS]))).sum(0).numpy()
    return total / len(gates)


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


def _coalition_values(passes: Passes, y: np.ndarray, rows: np.ndarray | None) -> dict[str, np.ndarray]:
    """v(S) of both value functions for every coalition S: (2^M,) each. One coalition's logits
    are read at a time (besides v(none)'s, which the logit value function compares with)."""
    n_subsets = 2 ** len(passes.modalities)
    auc, logit = np.empty(n_subsets), np.empty(n_subsets)
    none = passes.coalition(0, rows)                                                       # (n[, C])
    for s in range(n_subsets):
        logits = none if s == 0 else passes.coalition(s, rows)
        auc[s], logit[s] = auc_of(logits, y), mean_abs_change(logits, none)
    return {"auc": auc, "logit": logit}


def attribution(passes: Passes, rows: np.ndarray | None = None) -> dict[str, Any]:
    """Shapley values, efficiency check, leave-one-out, gates and streams on `rows` (all if None).
    Memory: the labels and two coalitions' logits of those rows at a time, never all 2^M."""
    mods = passes.modalities
    full = 2 ** len(mods) - 1
    y = passes.labels(rows)                                                                # (n,)
    values = _coalition_values(passes, y, rows)
    result: dict[str, Any] = {"n": int(len(y)), "positive_rate": float(np.mean(y)) if passes.binary and len(y) else None}
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
    full_logits = passes.coalition(full, rows)                                             # (n[, C])
    result["leave_one_out"] = {
        m: {
            "auc_drop": float(values["auc"][full] - values["auc"][full & ~(1 << i)]),
            "logit_change": mean_abs_change(full_logits, passes.coalition(full & ~(1 << i), rows)),
        }
        for i, m in enumerate(mods)
    }
    auc_phi = result["shapley"]["auc"]
    result["ranking"] = sorted(mods, key=lambda m: -auc_phi[m] if math.isfinite(auc_phi[m]) else math.inf)
    if passes.gate_names:
        result["gates"] = dict(zip(passes.gate_names, _mean_shares(passes.gates(rows)).tolist())) if len(y) else None
    if passes.stream_names:
        result["streams"] = _streams(passes, rows, full_logits, float(values["auc"][full]), y)
    return result


def _streams(passes: Passes, rows: np.ndarray | None, full_logits: np.ndarray, full_auc: float, y: np.ndarray) -> dict[str, Any]:
    changes: dict[str, dict[str, dict[str, float]]] = {}
    for j, name in enumerate(passes.stream_names):
        modality, stream = name.split(".")
        ablated = passes.stream(j, rows)                                                   # (n[, C])
        changes.setdefault(modality, {})[stream] = {
            "logit_change": mean_abs_change(full_logits, ablated), "auc_drop": full_auc - auc_of(ablated, y),
        }
    for parts in changes.values():
        total = parts["shared"]["logit_change"] + parts["private"]["logit_change"]
        parts["shared_share"] = parts["shared"]["logit_change"] / total if total > 0 else math.nan
    return changes


def by_group(passes: Passes, by: str) -> list[dict[str, Any]]:
    """attribution() of each group of rows of the grouping `by`, in GROUP_ORDER, then name, order."""
    names = passes.groups[by]
    codes = passes.group_codes(by)                                                         # (N,) int32
    order = GROUP_ORDER.get(by)
    rank = lambda c: (order.index(names[c]) if order and names[c] in order else len(order or ()), names[c])  # noqa: E731
    return [{"group": names[c], **attribution(passes, np.flatnonzero(codes == c))} for c in sorted(range(len(names)), key=rank)]


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
        "gates_note": "mean share of each stream in its unit's gate weights: how much it is weighted, not an attribution",
        **attribution(passes),
        "mechanisms": dict(passes.mechanisms),
    }
    if passes.mechanisms:
        result["mechanisms_meaning"] = {key: meaning(key) for key in passes.mechanisms}
    if by is not None:
        result["by"] = {"name": by, "description": GROUPINGS[dataset][by][0], "groups": by_group(passes, by)}
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
