"""FeatureTable: the rows x features matrix the `gbdt` reference model is fitted on and scores,
with each column in one modality group (a modality is absent when its group is missing).
Built per dataset by data/features_ednet.py and data/features_oulad.py; dispatched by
data/features.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dsrsd_cli.data import schema

Block = tuple[str, list[str], np.ndarray, bool]     # (modality, names (k,), values (n, k), categorical)


@dataclass
class FeatureTable:
    """Rows = scored units of one split; columns = features grouped by modality."""

    keys: pd.DataFrame               # EdNet: user (str), position (int64); OULAD: code_module, code_presentation, id_student
    label: np.ndarray                # (n,) float32 0/1, or int64 class index (OULAD result4)
    x: np.ndarray                    # (n, F) float32; NaN = unknown
    names: list[str]                 # (F,)
    groups: dict[str, list[int]]     # modality -> column indices (schema.MODALITIES order); a partition of 0..F-1
    categorical: list[int]           # columns holding category codes (ints stored as float; NaN unknown)


def rate(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def assemble(keys: pd.DataFrame, label: np.ndarray, blocks: list[Block], dataset: str) -> FeatureTable:
    """Blocks (in any order) -> a FeatureTable whose columns follow schema.MODALITIES order."""
    modalities = schema.MODALITIES[dataset]
    blocks = sorted(blocks, key=lambda b: modalities.index(b[0]))
    names: list[str] = []
    groups: dict[str, list[int]] = {m: [] for m in modalities}
    categorical: list[int] = []
    for group, block_names, values, is_cat in blocks:
        assert values.shape == (len(keys), len(block_names)), f"{block_names[0]}: shape {values.shape}"
        index = list(range(len(names), len(names) + len(block_names)))
        names += block_names
        groups[group] += index
        categorical += index if is_cat else []
    x = np.concatenate([b[2] for b in blocks], axis=1).astype(np.float32) if blocks else np.zeros((len(keys), 0), np.float32)
    return FeatureTable(keys=keys.reset_index(drop=True), label=label, x=np.ascontiguousarray(x), names=names,
                        groups=groups, categorical=categorical)
