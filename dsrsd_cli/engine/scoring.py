"""Scoring a split with a model (evaluate, predict, validation, the end of training).

Everything streams: score_batches yields one
ScoredChunk per batch (keys, label, probabilities of its scored positions), collect_scores
keeps only label + probabilities (Scores: float32, 8 bytes a row for a binary target) for
the metrics, and PredictionsWriter appends the chunks to a Parquet file row group by row
group, built under a temporary name (io.atomic_file) and renamed into place at the end. So
memory grows by 8 bytes per scored answer, not by a DataFrame row with a Python key string,
and an interrupted run never leaves a half file under the final name. predict_batches (a
DataFrame) remains for the small in-memory callers (compare, explain, tune).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from dsrsd_cli.data.schema import OULAD_RESULTS
from dsrsd_cli.memory import trim_heap
from dsrsd_cli.types import Batch, DataSpec

# ---------------------------------------------------------------- predictions

def probabilities(logits: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """Binary: sigmoid of (...) logits; multi-class: softmax over the last dim of (..., C)."""
    logits = logits.float()
    return torch.sigmoid(logits) if n_outputs == 1 else torch.softmax(logits, dim=-1)


def class_names(spec: DataSpec) -> list[str]:
    """Names of the classes of a multi-class target, in logit order (empty for binary)."""
    if spec.n_outputs == 1:
        return []
    if spec.target == "result4" and len(OULAD_RESULTS) == spec.n_outputs:
        return list(OULAD_RESULTS)
    return [str(c) for c in range(spec.n_outputs)]


def probability_columns(n_outputs: int, names: Sequence[str] | None = None) -> list[str]:
    """"probability" (binary), or one "probability_<class>" column per class."""
    if n_outputs == 1:
        return ["probability"]
    names = list(names) if names else [str(c) for c in range(n_outputs)]
    return [f"probability_{name}" for name in names]


# ---------------------------------------------------------------- scoring, streamed

ROW_GROUP_ROWS = 1 << 18   # scored rows per row group of a predictions file (EdNet: ~6 MB of columns)


@dataclass
class ScoredChunk:
    """The scored positions (`batch.mask`) of one batch: n rows of a predictions file.

    keys   batch key -> (n,) values, in batch.keys order (EdNet user: object str, position:
           int64; OULAD code_module, code_presentation: object str, id_student: int64);
           {} when the scorer was asked for none (the robustness sweep needs only AUC).
    label  (n,) float32: the target (0/1, or a class index: exact in float32).
    probs  (n,) binary or (n, C) multi-class, float32, in logit order.
    """

    keys: dict[str, np.ndarray]
    label: np.ndarray
    probs: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def columns(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Column -> (n,) array in the file's order: keys, label (as scored), `names` (probabilities)."""
        probs = self.probs if self.probs.ndim == 2 else self.probs[:, None]
        return {**self.keys, "label": self.label, **{name: probs[:, c] for c, name in enumerate(names)}}


def _key_column(value: Any, mask: torch.Tensor, rows: torch.Tensor) -> np.ndarray:
    """A batch key as one value per scored position: per-position tensors are masked,
    per-row tensors and lists are repeated along each row's scored positions (rows: (n,) the
    batch row of each scored position, on the CPU)."""
    if isinstance(value, torch.Tensor):
        if value.shape == mask.shape:
            return value[mask].cpu().numpy()
        return value.cpu()[rows].numpy()
    return np.asarray(value, dtype=object)[rows.numpy()]


def _score_batch(model: nn.Module, batch: Batch, *, transform, n_outputs: int | None, keys: bool, on_output) -> ScoredChunk:
    """One forward pass; only the scored positions leave it (moved to the CPU)."""
    if transform is not None:
        batch = transform(batch)
    output = model(batch)
    if on_output is not None:
        on_output(output, batch)
    logits = output.logits                                                 # (B, T) / (B,) or (..., C)
    n_out = n_outputs or (logits.shape[-1] if logits.dim() > batch.mask.dim() else 1)
    mask = batch.mask.bool()
    probs = probabilities(logits, n_out)[mask].cpu().numpy()               # (n,) or (n, C) float32
    label = batch.target[mask].cpu().numpy().astype(np.float32, copy=False)  # (n,)
    columns: dict[str, np.ndarray] = {}
    if keys:
        rows = mask.nonzero(as_tuple=True)[0].cpu()                         # (n,) batch row of each position
        columns = {name: _key_column(value, mask, rows) for name, value in batch.keys.items()}
    return ScoredChunk(keys=columns, label=label, probs=probs)


def score_batches(
    model: nn.Module,
    loader: Any,
    device: torch.device | str,
    *,
    transform: Callable[[Batch], Batch] | None = None,
    n_outputs: int | None = None,
    keys: bool = True,
    on_output: Callable[[Any, Batch], None] | None = None,
) -> Iterator[ScoredChunk]:
    """Score every batch of `loader`: one ScoredChunk per batch, so a split of any size
    streams through in bounded memory (a batch's tensors, never the split's).

    `transform` changes each batch before the forward pass (modality masks, noise);
    `on_output(output, batch)` sees every ModelOutput (the mechanism diagnostics read its
    aux); `keys=False` skips the key columns (metrics need only label and probabilities).
    The forward runs under torch.inference_mode (no autograd bookkeeping at all), entered
    per batch so the caller's code between chunks runs in its own grad mode. The model is
    in eval mode while the generator runs and gets its mode back when it ends or is closed.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    try:
        for batch in loader:
            with torch.inference_mode():
                chunk = _score_batch(model, batch.to(device), transform=transform, n_outputs=n_outputs, keys=keys, on_output=on_output)
            del batch
            trim_heap()   # the batch's activations, freed, go back to the OS (dsrsd_cli/memory.py)
            yield chunk
    finally:
        model.train(was_training)


@dataclass
class Scores:
    """Label and probabilities of every scored row of a split, in scoring order: what the
    metrics need, kept compact (float32: 8 bytes a row binary, 4 (1 + C) multi-class)."""

    label: np.ndarray      # (n,) float32
    probs: np.ndarray      # (n,) or (n, C) float32

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @classmethod
    def concat(cls, parts: Sequence["Scores"]) -> "Scores":
        """The rows of `parts` one after the other (empty parts are skipped: their width is unknown)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(label=np.zeros(0, np.float32), probs=np.zeros(0, np.float32))
        return cls(label=np.concatenate([p.label for p in parts]), probs=np.concatenate([p.probs for p in parts]))

    def metrics(self) -> dict[str, Any]:
        """engine/metrics.py's metrics of these rows ({"n": 0} when there are none)."""
        from dsrsd_cli.engine.metrics import compute_metrics   # sklearn: imported when metrics are asked for

        return compute_metrics(self.label, self.probs) if len(self) else {"n": 0}


class PredictionsWriter:
    """ScoredChunks -> one Parquet file at `path`, row group by row group (about
    ROW_GROUP_ROWS rows each), so memory holds one row group, never the whole split.

    `path` is a file being built (io.atomic_file's temporary path, or a DDP rank's part):
    the final name only appears when the caller's atomic_file block ends without error.
    Columns and types are those of the in-memory frame (predict_batches): keys (string,
    int64), label int64 (targets are 0/1 or class indices), probability float32 column(s).
    Parquet dictionary-encodes each row group's repeated strings (EdNet user), so they cost
    a few bits a row on disk. close() returns the rows written; with none, the file still
    holds a valid empty table (label and probability columns).
    """

    def __init__(self, path: Path, probability_names: Sequence[str]) -> None:
        self.path = Path(path)
        self.names = list(probability_names)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, chunk: ScoredChunk) -> None:
        if not len(chunk):
            return
        columns = chunk.columns(self.names)
        label = columns["label"].astype(np.int64)
        if not np.array_equal(label, columns["label"]):
            raise ValueError("a predictions file holds class labels, but the target has non-integral values")
        columns["label"] = label
        self._pending.append(pa.table({name: pa.array(values) for name, values in columns.items()}))
        self._pending_rows += len(chunk)
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table.cast(self._writer.schema), row_group_size=max(len(table), 1))
        self.rows += len(table)
        self._pending, self._pending_rows = [], 0

    def close(self) -> int:
        self._flush()
        if self._writer is None:
            empty = {"label": pa.array([], pa.int64()), **{name: pa.array([], pa.float32()) for name in self.names}}
            pq.write_table(pa.table(empty), self.path)
        else:
            self._writer.close()
        return self.rows


def collect_scores(chunks: Iterable[ScoredChunk], writer: PredictionsWriter | None = None) -> Scores:
    """Drain `chunks`: label + probabilities kept (Scores), every chunk also to `writer`."""
    labels: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    for chunk in chunks:
        labels.append(chunk.label)
        probs.append(chunk.probs)
        if writer is not None:
            writer.add(chunk)
    return Scores.concat([Scores(label=a, probs=b) for a, b in zip(labels, probs)])


def concat_parquet(parts: Sequence[Path], path: Path) -> int:
    """Copy the rows of the Parquet files `parts`, in order, into `path` (being built: an
    atomic_file path), one row group at a time; parts without rows are skipped. Returns the
    rows written. Every part with rows must have the first one's schema."""
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for part in parts:
            source = pq.ParquetFile(part)
            if source.metadata.num_rows == 0:
                continue
            if writer is None:
                writer = pq.ParquetWriter(path, source.schema_arrow)
            for i in range(source.num_row_groups):
                group = source.read_row_group(i)
                writer.write_table(group.cast(writer.schema), row_group_size=max(len(group), 1))
                rows += len(group)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:   # no rows anywhere: the first part's empty table
        pq.write_table(pq.read_table(parts[0]), path)
    return rows


def predict_batches(
    model: nn.Module,
    loader: Any,
    device: torch.device | str,
    *,
    transform: Callable[[Batch], Batch] | None = None,
    n_outputs: int | None = None,
    classes: Sequence[str] | None = None,
    on_output: Callable[[Any, Batch], None] | None = None,
) -> pd.DataFrame:
    """Keys + label + probability for every scored position of every batch, in memory.

    For the small callers (compare, explain, tune); a whole split of a large dataset goes
    through score_batches + collect_scores / PredictionsWriter instead. Multi-class runs get
    one probability column per class, named after `classes` (class_names(spec); e.g.
    probability_Pass ...), in logit order. label is int64 when every value is integral.
    """
    chunks = list(score_batches(model, loader, device, transform=transform, n_outputs=n_outputs, on_output=on_output))
    if not chunks:
        return pd.DataFrame({})
    n_out = 1 if chunks[0].probs.ndim == 1 else chunks[0].probs.shape[1]
    names = probability_columns(n_out, classes)
    parts = [chunk.columns(names) for chunk in chunks]
    frame = pd.DataFrame({name: np.concatenate([part[name] for part in parts]) for name in parts[0]})
    if len(frame):
        is_integral = np.all(np.mod(frame["label"].to_numpy(dtype=np.float64), 1) == 0)
        frame["label"] = frame["label"].astype(np.int64 if is_integral else np.float64)
    return frame


def frame_probs(frame: pd.DataFrame) -> np.ndarray:
    """The probability column(s) of a predictions frame: (n,) binary or (n, C)."""
    if "probability" in frame:
        return frame["probability"].to_numpy(dtype=np.float64)
    columns = [c for c in frame.columns if c.startswith("probability_")]  # written in class order
    return frame[columns].to_numpy(dtype=np.float64)
