"""Per-registration features of OULAD for the `gbdt` reference model: exactly the loader's
rows, order, keys and target at data.cutoff_day (make_dataset + collate), its tensors
flattened into modality groups, so the cutoff and population rules are the loader's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data.feature_table import Block, FeatureTable, assemble, rate
from dsrsd_cli.data.loader import collate, make_dataset, make_spec
from dsrsd_cli.data.oulad_cutoff import ASSESSMENT_FEATURES, OULAD_CATEGORICAL, OULAD_NUMERIC, OULAD_TARGETS
from dsrsd_cli.data.prepared import Prepared
from dsrsd_cli.data.features_ednet import check_dataset


def oulad_features(prepared: Prepared, data_cfg: DataConfig, split: str) -> FeatureTable:
    """One row per registration of the split at data_cfg.cutoff_day: the loader's rows, order,
    keys and target (make_dataset + collate), its tensors flattened into modality groups.

    demographics: the categorical codes (categorical; 0 unknown -> NaN) and the numeric
    columns (NaN absent). clicks: per activity type the sum over visible weeks of log1p weekly
    clicks; per week the sum over types (NaN for weeks on or after the cutoff); total, active
    weeks, weeks since the last active one. assessments: per slot (the loader's latest S due
    before the cutoff) its type (categorical) and ASSESSMENT_FEATURES (NaN for empty slots);
    counts due / submitted / missing, mean score, weighted score, mean lateness.
    """
    check_dataset(prepared, data_cfg, "oulad")
    spec = make_spec(prepared, data_cfg)
    dataset = make_dataset(prepared, split, data_cfg)
    arrays = _oulad_arrays(dataset, spec)
    blocks = [*_demographic_blocks(arrays), *_click_blocks(arrays, [str(v) for v in prepared.vocab("activity_type")]),
              *_assessment_blocks(arrays)]
    keys = pd.DataFrame({
        "code_module": pd.Series(arrays["code_module"], dtype=object).astype(str),
        "code_presentation": pd.Series(arrays["code_presentation"], dtype=object).astype(str),
        "id_student": arrays["id_student"].astype(np.int64),
    })
    return assemble(keys, arrays["target"], blocks, "oulad")


def _oulad_arrays(dataset, spec) -> dict[str, np.ndarray]:
    """The loader's tensors of every registration as numpy (zero rows when the split is empty)."""
    if len(dataset):
        b = collate([dataset[i] for i in range(len(dataset))])
        d, c, s = b.inputs["demographics"], b.inputs["clicks"], b.inputs["assessments"]
        arrays = {"cat": d["cat"], "num": d["num"], "num_present": d["num_present"], "weeks": c["weeks"],
                  "week_mask": c["week_mask"], "type": s["type"], "a_num": s["num"], "seq_mask": s["seq_mask"],
                  "target": b.target, "id_student": b.keys["id_student"]}
        arrays = {k: v.numpy() for k, v in arrays.items()}
        arrays["code_module"], arrays["code_presentation"] = b.keys["code_module"], b.keys["code_presentation"]
        return arrays
    dims = spec.dims
    W, A, S, F = dims["clicks.weeks"], dims["clicks.types"], dims["assessments.len"], dims["assessments.num"]
    return {
        "cat": np.zeros((0, len(spec.cat_sizes))), "num": np.zeros((0, dims["demographics.num"])),
        "num_present": np.zeros((0, dims["demographics.num"]), dtype=bool), "weeks": np.zeros((0, W, A)),
        "week_mask": np.zeros((0, W), dtype=bool), "type": np.zeros((0, S)), "a_num": np.zeros((0, S, F)),
        "seq_mask": np.zeros((0, S), dtype=bool), "target": np.zeros(0, dtype=OULAD_TARGETS[spec.target].dtype),
        "id_student": np.zeros(0, dtype=np.int64), "code_module": [], "code_presentation": [],
    }




def _demographic_blocks(arrays: dict[str, np.ndarray]) -> list[Block]:
    cat_names = [*OULAD_CATEGORICAL, "season"]
    assert arrays["cat"].shape[1] == len(cat_names), "loader demographics changed: update features.py"
    cat = arrays["cat"].astype(np.float64)
    num = np.where(arrays["num_present"], arrays["num"], np.nan)
    return [
        ("demographics", [f"demographics.{c}" for c in cat_names], np.where(cat > 0, cat, np.nan), True),
        ("demographics", [f"demographics.{c}" for c in OULAD_NUMERIC], num, False),
    ]


def _click_blocks(arrays: dict[str, np.ndarray], activity: list[str]) -> list[Block]:
    weeks, visible = arrays["weeks"].astype(np.float64), arrays["week_mask"]           # (R, W, A), (R, W)
    weeks = weeks * visible[:, :, None]
    per_week = weeks.sum(2)                                                             # (R, W)
    W = per_week.shape[1]
    active = (per_week > 0) & visible
    last_active = np.where(active.any(1), W - 1 - np.argmax(active[:, ::-1], axis=1), -1)
    since = np.where(last_active >= 0, visible.sum(1) - 1 - last_active, np.nan)
    summary = np.stack([per_week.sum(1), active.sum(1), since], axis=1)
    return [
        ("clicks", [f"clicks.type.{t}" for t in activity], weeks.sum(1), False),
        ("clicks", [f"clicks.week_{w:02d}" for w in range(W)], np.where(visible, per_week, np.nan), False),
        ("clicks", ["clicks.total", "clicks.active_weeks", "clicks.weeks_since_active"], summary, False),
    ]


def _assessment_blocks(arrays: dict[str, np.ndarray]) -> list[Block]:
    kind, num, slot = arrays["type"].astype(np.float64), arrays["a_num"].astype(np.float64), arrays["seq_mask"]  # (R, S), (R, S, F)
    R, S, F = num.shape
    f = {name: i for i, name in enumerate(ASSESSMENT_FEATURES)}
    counted = slot & (num[:, :, f["missing_submission"]] == 0)                          # submitted before the cutoff
    per_slot = np.where(slot[:, :, None], num, np.nan)
    score, weight, late = num[:, :, f["score"]], num[:, :, f["weight"]], num[:, :, f["days_late"]]
    n_counted = counted.sum(1)
    summary = np.stack([
        slot.sum(1), n_counted, (slot & ~counted).sum(1),
        rate((score * counted).sum(1), n_counted),
        (score * weight * counted).sum(1),
        rate((late * counted).sum(1), n_counted),
    ], axis=1)
    return [
        ("assessments", [f"assessments.slot_{s:02d}.type" for s in range(S)], np.where(slot, kind, np.nan), True),
        ("assessments", [f"assessments.slot_{s:02d}.{name}" for s in range(S) for name in ASSESSMENT_FEATURES],
         per_slot.reshape(R, S * F), False),
        ("assessments", ["assessments.due", "assessments.submitted", "assessments.missing", "assessments.mean_score",
                         "assessments.weighted_score", "assessments.mean_days_late"], summary, False),
    ]
