"""`gbdt`: the gradient-boosting reference model, LightGBM on causal features.

The strongest simple alternative belongs in the same table as DSRSD-Net: difficulty plus
ability plus recency is what knowledge-tracing competitions were won with. The features
(data/features.py) are computed from what is known before an answer's bundle is shown;
for OULAD they are the loader's tensors flattened per registration. Each feature belongs
to one modality group, so a modality is made absent by setting its group to missing
(NaN), exactly where the neural models put their absent token; training hides groups at
random with the same `model.modality_dropout`, so the trees learn what absence means.

Why LightGBM (over scikit-learn's HistGradientBoosting): its model is plain text
(`Booster.model_to_string`), stored here as bytes inside model.safetensors, so loading a
run folder never unpickles anything (scikit-learn estimators persist only through
pickle); it takes missing values, categorical columns and early stopping natively, and
it was the faster of the two on the built-in samples (see the README).

The module is an nn.Module so that every command (evaluate, explain, compare, predict)
drives it like the neural models: `forward(batch)` looks up the feature rows of the
batch's scored units by their keys (EdNet user + position, OULAD registration) in a
feature table of the prepared folder, built once by `attach(prepared, data_cfg)`.
Fitted state = the booster text + the question statistics of the training learners.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dsrsd_cli.errors import BadInput
from dsrsd_cli.model.fusion import to_logits
from dsrsd_cli.types import Batch, DataSpec, ModelOutput

BOOSTER_KEY = "booster_text"
STATS_PREFIX = "stats."


def mask_groups(x: np.ndarray, groups: dict[str, list[int]], absent: dict[str, np.ndarray]) -> np.ndarray:
    """x (n, F) with the columns of each modality's group set to NaN on the rows where
    absent[m] (n,) is True. Returns a copy only when something changes."""
    if not any(a.any() for a in absent.values()):
        return x
    x = x.copy()
    for m, rows in absent.items():
        if rows.any():
            x[np.ix_(rows, groups[m])] = np.nan
    return x


def hide_groups_at_random(x: np.ndarray, groups: dict[str, list[int]], p: float, seed: int) -> np.ndarray:
    """Modality dropout for the trees: each group of each row hidden with probability p,
    never all of a row's groups (as fusion.drop_modalities does for the neural models)."""
    names = list(groups)
    if p <= 0 or len(names) < 2:
        return x
    hide = np.random.default_rng(seed).random((len(x), len(names))) < p      # (n, M)
    hide[hide.all(1)] = False
    return mask_groups(x, groups, {m: hide[:, i] for i, m in enumerate(names)})


class GBDTModel(nn.Module):
    """forward(batch) -> ModelOutput(logits like every model's, aux {"losses": {}}).

    State: `booster_text` (uint8 bytes of the LightGBM model) and `stats.<name>` arrays
    (data/features.QuestionStats), all in state_dict, so save_weights/load_weights and
    the run-folder checks work unchanged. Sizes vary with the fit, hence
    `state_shapes_vary` (runs._check_weights_fit then checks names only).
    """

    state_shapes_vary = True
    reads_batch_inputs = False     # its features come from the prepared tables (evaluate skips the noise sweep)

    def __init__(self, *, spec: DataSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer(BOOSTER_KEY, torch.zeros(0, dtype=torch.uint8))
        self._booster: Any = None
        self._table: Any = None            # features.FeatureTable of the attached data
        self._row_of: Any = None           # key -> row in _table
        self._attached: tuple | None = None

    # ---------------------------------------------------------------- state

    def set_fitted(self, booster_text: str, stats: dict[str, np.ndarray]) -> None:
        """Install a fitted model: LightGBM text and the training statistics (name -> array)."""
        state = {BOOSTER_KEY: torch.frombuffer(bytearray(booster_text.encode("utf-8")), dtype=torch.uint8)}
        state.update({STATS_PREFIX + k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in stats.items()})
        self.load_state_dict(state)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        unknown = [k for k in state_dict if k != BOOSTER_KEY and not k.startswith(STATS_PREFIX)]
        if BOOSTER_KEY not in state_dict or (strict and unknown):
            raise BadInput(f"gbdt weights: expected {BOOSTER_KEY!r} and {STATS_PREFIX}* tensors, got {sorted(state_dict)[:4]}; "
                           "the folder was not written by `dsrsd train --model gbdt`")
        for name in [n for n, _ in self.named_buffers()]:
            delattr(self, name)
        for name, value in state_dict.items():
            if name == BOOSTER_KEY or name.startswith(STATS_PREFIX):
                self.register_buffer(name.replace(".", "__") if name != BOOSTER_KEY else name, value.detach().clone().cpu())
        self._booster, self._table, self._row_of, self._attached = None, None, None, None
        return nn.modules.module._IncompatibleKeys([], [])

    def state_dict(self, *args, **kwargs):
        return {(name.replace("__", ".") if name.startswith("stats__") else name): buf for name, buf in self.named_buffers()}

    def stats(self) -> dict[str, np.ndarray]:
        return {name[len("stats__"):]: buf.cpu().numpy() for name, buf in self.named_buffers() if name.startswith("stats__")}

    @property
    def booster(self):
        if self._booster is None:
            import lightgbm as lgb

            text = bytes(getattr(self, BOOSTER_KEY).numpy()).decode("utf-8")
            if not text:
                raise BadInput("the gbdt model has not been fitted; train it with `dsrsd train --model gbdt`")
            try:
                self._booster = lgb.Booster(model_str=text)
            except lgb.basic.LightGBMError as e:
                raise BadInput(f"gbdt weights: not a LightGBM model ({str(e).splitlines()[0]}); retrain the run") from None
        return self._booster

    # ---------------------------------------------------------------- data

    def attach(self, prepared, data_cfg) -> None:
        """Build the feature table of every learner of `prepared` (once per folder and config)."""
        from dsrsd_cli.data.features import QuestionStats, build_features

        key = (str(prepared.path), prepared.manifest_hash, data_cfg.model_dump_json())
        if self._attached == key:
            return
        stats = QuestionStats.from_arrays(self.stats()) if self.spec.dataset == "ednet" else None
        table = build_features(prepared, data_cfg, "all", stats)
        if len(table.names) != self.booster.num_feature():
            raise BadInput(f"{prepared.path}: gives {len(table.names)} gbdt features but the model was fitted on "
                           f"{self.booster.num_feature()}; retrain the run with this version of dsrsd")
        self._table, self._attached = table, key
        self._row_of = _row_index(table.keys, self.spec.dataset)

    # ---------------------------------------------------------------- forward

    def ablatable_streams(self) -> list[str]:
        return []                                    # one booster on all features: no stream of one modality

    def forward(self, batch: Batch, *, ablate: frozenset[str] = frozenset()) -> ModelOutput:
        if self._table is None:
            raise RuntimeError("GBDTModel.attach(prepared, data_cfg) must be called before forward")
        units = batch.valid.reshape(-1).nonzero().squeeze(1).cpu().numpy()           # (V,) flat valid units
        rows = self._row_of(batch, units)                                             # (V,) rows of the table
        absent = {m: ~batch.present[m].reshape(-1).cpu().numpy()[units] for m in self.spec.modalities}
        x = mask_groups(self._table.x[rows], self._table.groups, absent)              # (V, F)
        raw = np.asarray(self.booster.predict(x, raw_score=True, num_threads=max(1, torch.get_num_threads())))
        raw = raw.reshape(len(units), -1)                                             # (V, C)
        y = torch.zeros(batch.valid.numel(), raw.shape[1], dtype=torch.float32)
        y[torch.from_numpy(units)] = torch.from_numpy(raw.astype(np.float32))
        return ModelOutput(to_logits(y.to(batch.valid.device), batch), {"losses": {}})


def _row_index(keys, dataset: str):
    """A function (batch, units) -> rows of the feature table for the batch's valid units."""
    if dataset == "ednet":
        users = keys["user"].to_numpy(dtype=object)
        positions = keys["position"].to_numpy(dtype=np.int64)
        starts = {}
        first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        for i in first.tolist():
            starts[users[i]] = i

        def ednet_rows(batch: Batch, units: np.ndarray) -> np.ndarray:
            B, T = batch.valid.shape
            position = batch.keys["position"].reshape(-1).cpu().numpy()[units]
            start = np.array([starts.get(u, -1) for u in batch.keys["user"]], dtype=np.int64)[units // T]
            rows = start + position
            ok = (start >= 0) & (rows < len(positions))
            ok[ok] &= positions[rows[ok]] == position[ok]
            if not ok.all():
                raise BadInput("gbdt: a scored answer has no feature row (the data changed since attach); rerun the command")
            return rows
        return ednet_rows

    index = {k: i for i, k in enumerate(zip(keys["code_module"], keys["code_presentation"], keys["id_student"].tolist()))}

    def oulad_rows(batch: Batch, units: np.ndarray) -> np.ndarray:
        ids = batch.keys["id_student"].cpu().tolist()
        wanted = [(batch.keys["code_module"][u], batch.keys["code_presentation"][u], ids[u]) for u in units.tolist()]
        rows = np.array([index.get(k, -1) for k in wanted], dtype=np.int64)
        if (rows < 0).any():
            raise BadInput("gbdt: a registration has no feature row (the data changed since attach); rerun the command")
        return rows
    return oulad_rows
