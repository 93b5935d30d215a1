"""OULAD: prepared registrations -> one example per registration at a cutoff day -> batches,
and the cutoff rules that keep the future out of every feature.

One example = one registration (student x module presentation), with every feature cut
at the cutoff day (`data.cutoff_day`, or the presentation's length when it is None;
`oulad_cutoffs`).

Who is predicted (`oulad_population`): with a cutoff day, students who unregistered
before it are out: at that day the platform knows they left, so there is nothing to
predict. With no cutoff (end of the presentation) everyone stays, so the task includes
predicting withdrawal. date_unregistration is used only there, never as a feature.
Targets may exclude results (pass_fail drops Withdrawn; `OULAD_TARGETS`).

What reaches a feature (`oulad_dataset`): only rows dated strictly before a
registration's cutoff. Clicks with day < cutoff; assessments with due_day < cutoff (a
missing due day, e.g. an exam, is the presentation's last day, as the OULAD
documentation says), and of those a submission counts only if submitted_day < cutoff;
otherwise it is "not (yet) submitted" and its score, lateness and banking stay hidden.
final_result gives the target (and the results a target excludes), never a feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data import schema
from dsrsd_cli.data.prepared import Example, Prepared, read_table, rerun_prepare, split_mask, vocab_list
from dsrsd_cli.errors import BadInput
from dsrsd_cli.types import Batch, DataSpec

# ---------------------------------------------------------------- targets, features, sizes

@dataclass(frozen=True)
class OuladTarget:
    """How final_result (as an index into schema.OULAD_RESULTS) becomes the label."""

    encode: Callable[[np.ndarray], np.ndarray]
    dtype: type
    excluded: tuple[str, ...] = ()     # final results not in this target's population
    n_outputs: int = 1


_RESULT = {name: i for i, name in enumerate(schema.OULAD_RESULTS)}
OULAD_TARGETS: dict[str, OuladTarget] = {
    "at_risk": OuladTarget(lambda r: np.isin(r, (_RESULT["Fail"], _RESULT["Withdrawn"])), np.float32),
    "pass_fail": OuladTarget(lambda r: r == _RESULT["Fail"], np.float32, excluded=("Withdrawn",)),
    "withdrawn": OuladTarget(lambda r: r == _RESULT["Withdrawn"], np.float32),
    "result4": OuladTarget(lambda r: r, np.int64, n_outputs=len(schema.OULAD_RESULTS)),
}

OULAD_KEYS = ["code_module", "code_presentation", "id_student"]
OULAD_CATEGORICAL = ("gender", "region", "highest_education", "imd_band", "age_band", "disability", "code_module")
# demographics.num: column -> scale (value / scale; absent where null)
OULAD_NUMERIC: dict[str, float] = {"num_of_prev_attempts": 1.0, "studied_credits": 60.0, "date_registration": 100.0}
ASSESSMENT_TYPES = {"TMA": 1, "CMA": 2, "Exam": 3}
ASSESSMENT_FEATURES = ("weight", "due_day", "days_late", "score", "is_banked", "missing_submission")
MAX_ASSESSMENTS = 16
WEEK_ORIGIN = -28                      # clicks.weeks week 0 starts on day -28


def _oulad_categories(prepared: Prepared) -> dict[str, list[str]]:
    """demographics.cat columns in order -> their vocab; the 8th is the presentation season (B/J)."""
    categories = {column: vocab_list(prepared, column) for column in OULAD_CATEGORICAL}
    categories["season"] = sorted({p[-1:] for p in vocab_list(prepared, "code_presentation")})
    return categories


def _codes(values: Any, vocab: list[str]) -> np.ndarray:
    """1..len(vocab) for values in vocab; 0 for null or unknown."""
    return pd.Categorical(values, categories=vocab).codes.astype(np.int64) + 1


def _presentation_id(prepared: Prepared, module: Any, presentation: Any) -> np.ndarray:
    """One int per (code_module, code_presentation) from the manifest vocab; -1 if unknown."""
    modules, presentations = vocab_list(prepared, "code_module"), vocab_list(prepared, "code_presentation")
    m, p = _codes(module, modules) - 1, _codes(presentation, presentations) - 1
    return np.where((m >= 0) & (p >= 0), m * len(presentations) + p, -1)


def _registration_key(presentation_id: np.ndarray, id_student: np.ndarray) -> np.ndarray:
    return np.where(presentation_id >= 0, (presentation_id.astype(np.int64) << 32) | id_student.astype(np.int64), -1)


def _lookup(keys: np.ndarray, table_keys: np.ndarray) -> np.ndarray:
    """Index of each key in `table_keys` (unique, no -1), or -1."""
    return pd.Index(table_keys).get_indexer(keys).astype(np.int64)


def oulad_assessment_slots(prepared: Prepared) -> int:
    """S: the most assessments any presentation has, capped at MAX_ASSESSMENTS (at least 1)."""
    table = read_table(prepared, "assessments.parquet", ["code_module", "code_presentation", "id_assessment"])
    frame = table.to_pandas().drop_duplicates()
    most = int(frame.groupby(["code_module", "code_presentation"]).size().max()) if len(frame) else 0
    return int(min(max(most, 1), MAX_ASSESSMENTS))


def oulad_spec(prepared: Prepared, data_cfg: DataConfig) -> DataSpec:
    return DataSpec(
        dataset="oulad",
        modalities=schema.MODALITIES["oulad"],
        n_outputs=OULAD_TARGETS[data_cfg.target].n_outputs,
        vocab={"assessments.type": len(ASSESSMENT_TYPES) + 1},
        cat_sizes=tuple(len(values) + 1 for values in _oulad_categories(prepared).values()),
        dims={
            "demographics.num": len(OULAD_NUMERIC),
            "clicks.weeks": data_cfg.max_weeks,
            "clicks.types": len(vocab_list(prepared, "activity_type")),
            "assessments.len": oulad_assessment_slots(prepared),
            "assessments.num": len(ASSESSMENT_FEATURES),
        },
        max_len=0,
        target=data_cfg.target,
    )


# ---------------------------------------------------------------- cutoffs and population

def oulad_cutoffs(registrations: pd.DataFrame, cutoff_day: int | None) -> np.ndarray:
    """Per registration: the cutoff day (features use rows dated strictly before it)."""
    if cutoff_day is not None:
        return np.full(len(registrations), cutoff_day, dtype=np.float64)
    return registrations["module_presentation_length"].to_numpy(dtype=np.float64)


def oulad_population(registrations: pd.DataFrame, cutoffs: np.ndarray, cutoff_day: int | None, target: str) -> np.ndarray:
    """Which registrations are predicted at this cutoff.

    With a cutoff day, students who unregistered before it are out: at that day the
    platform knows they left, so there is nothing to predict. Students who register on or
    after it are out too: at that day they are not students yet, and their registration
    date (a feature) would tell the model about the future. With no cutoff (end of the
    presentation) everyone stays, so the task includes predicting withdrawal.
    date_unregistration is used only here, never as a feature. Targets may exclude
    results (pass_fail drops Withdrawn).
    """
    keep = ~registrations["final_result"].isin(OULAD_TARGETS[target].excluded).to_numpy()
    if cutoff_day is not None:
        unregistered = registrations["date_unregistration"].to_numpy(dtype=np.float64)
        registered = registrations["date_registration"].to_numpy(dtype=np.float64)
        keep &= ~(unregistered < cutoffs)          # NaN (still registered) compares False
        keep &= ~(registered >= cutoffs)           # NaN (date unknown) stays, as before
    return keep


# ---------------------------------------------------------------- the dataset at a cutoff

class OuladRegistrations(Dataset):
    """One item per registration; weekly clicks are stored sparsely and made dense per item."""

    def __init__(self, arrays: dict[str, np.ndarray], keys: dict[str, np.ndarray], click_offsets: np.ndarray,
                 click_cells: np.ndarray, click_values: np.ndarray, weeks: int, types: int):
        self.arrays = arrays              # per registration: (R, ...) each
        self.keys = keys                  # code_module, code_presentation, id_student: (R,) each
        self.click_offsets = click_offsets  # (R + 1,) into click_cells / click_values
        self.click_cells = click_cells    # week * types + type
        self.click_values = click_values  # log1p(clicks)
        self.weeks, self.types = weeks, types

    def __len__(self) -> int:
        return len(self.keys["id_student"])

    def __getitem__(self, i: int) -> Example:
        lo, hi = self.click_offsets[i], self.click_offsets[i + 1]
        weeks = np.zeros(self.weeks * self.types, dtype=np.float32)
        weeks[self.click_cells[lo:hi]] = self.click_values[lo:hi]
        arrays = {name: values[i] for name, values in self.arrays.items()}
        arrays["weeks"] = weeks.reshape(self.weeks, self.types)
        return Example(dataset="oulad", arrays=arrays, keys={name: values[i] for name, values in self.keys.items()})


def oulad_dataset(prepared: Prepared, split: str, data_cfg: DataConfig) -> OuladRegistrations:
    """Registrations of a split, features cut at the cutoff.

    Only rows dated strictly before a registration's cutoff reach a feature: clicks with
    day < cutoff; assessments with due_day < cutoff (a missing due day, e.g. an exam, is
    the presentation's last day, as the OULAD documentation says), and of those a
    submission counts only if submitted_day < cutoff; otherwise it is "not (yet)
    submitted" and its score, lateness and banking stay hidden. present["clicks"] means
    at least one click in the W weeks before the cutoff.
    """
    regs_file = prepared.file("registrations.parquet")
    regs = read_table(prepared, "registrations.parquet", schema.OULAD_REGISTRATIONS.names).to_pandas()
    splits = read_table(prepared, "splits.parquet", schema.OULAD_SPLITS.names).to_pandas()
    for frame, file in ((regs, regs_file), (splits, prepared.file("splits.parquet"))):
        twice = frame.duplicated(OULAD_KEYS)
        if twice.any():
            row = frame[twice].iloc[0]
            raise BadInput(f"{file}: student {row['id_student']} is registered twice on {row['code_module']} {row['code_presentation']}; {rerun_prepare('oulad')}")
    regs = regs.merge(splits, on=OULAD_KEYS, how="left", validate="one_to_one")
    if split != "all":
        regs = regs[regs["split"].notna()]
        regs = regs[split_mask(regs, split, data_cfg, prepared.file("splits.parquet"), "oulad", "id_student")]
    unknown = ~regs["final_result"].isin(schema.OULAD_RESULTS)
    if unknown.any():
        row = regs[unknown].iloc[0]
        raise BadInput(
            f"{regs_file}: final_result {row['final_result']!r} (student {row['id_student']}, {row['code_module']} "
            f"{row['code_presentation']}) is not one of {', '.join(schema.OULAD_RESULTS)}; {rerun_prepare('oulad')}"
        )
    cutoffs = oulad_cutoffs(regs, data_cfg.cutoff_day)
    if np.isnan(cutoffs).any():
        raise BadInput(f"{regs_file}: module_presentation_length is missing, so the end-of-presentation cutoff is unknown; set data.cutoff_day or {rerun_prepare('oulad')}")
    keep = oulad_population(regs, cutoffs, data_cfg.cutoff_day, data_cfg.target)
    regs, cutoffs = regs[keep], cutoffs[keep]
    order = np.lexsort((regs["id_student"].to_numpy(), regs["code_presentation"].to_numpy(dtype=str), regs["code_module"].to_numpy(dtype=str)))
    regs, cutoffs = regs.iloc[order].reset_index(drop=True), cutoffs[order]
    reg_keys = _registration_key(_presentation_id(prepared, regs["code_module"], regs["code_presentation"]), regs["id_student"].to_numpy())
    if (reg_keys < 0).any():
        row = regs[reg_keys < 0].iloc[0]
        raise BadInput(f"{regs_file}: {row['code_module']} {row['code_presentation']} is not in the manifest vocab; {rerun_prepare('oulad')}")

    result = regs["final_result"].map(_RESULT).to_numpy(dtype=np.int64)
    target = OULAD_TARGETS[data_cfg.target]
    arrays = {"target": target.encode(result).astype(target.dtype)}
    arrays.update(_oulad_demographics(prepared, regs))
    weeks, types = data_cfg.max_weeks, len(vocab_list(prepared, "activity_type"))
    arrays["week_mask"] = (7 * np.arange(weeks)[None, :] + WEEK_ORIGIN) < cutoffs[:, None]      # (R, W)
    offsets, cells, values = _oulad_clicks(prepared, reg_keys, cutoffs, weeks)
    arrays["clicks_present"] = np.diff(offsets) > 0
    arrays.update(_oulad_assessments(prepared, regs, reg_keys, cutoffs))
    keys = {
        "code_module": regs["code_module"].to_numpy(dtype=object),
        "code_presentation": regs["code_presentation"].to_numpy(dtype=object),
        "id_student": regs["id_student"].to_numpy(dtype=np.int64),
    }
    return OuladRegistrations(arrays, keys, offsets, cells, values, weeks, types)


def _oulad_demographics(prepared: Prepared, regs: pd.DataFrame) -> dict[str, np.ndarray]:
    columns = []
    for column, vocab in _oulad_categories(prepared).items():
        values = regs["code_presentation"].str[-1:] if column == "season" else regs[column]
        columns.append(_codes(values, vocab))
    raw = np.stack([regs[column].to_numpy(dtype=np.float64) / scale for column, scale in OULAD_NUMERIC.items()], axis=1)
    present = ~np.isnan(raw)
    return {
        "cat": np.stack(columns, axis=1),                                   # (R, C)
        "num": np.where(present, raw, 0.0).astype(np.float32),              # (R, N)
        "num_present": present,
    }


def _oulad_clicks(prepared: Prepared, reg_keys: np.ndarray, cutoffs: np.ndarray, weeks: int):
    """Sparse (R, W, A) weekly log1p click sums: offsets (R+1,), cells week*A+type, values."""
    activity = vocab_list(prepared, "activity_type")
    if not len(reg_keys):
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    # a first cut while reading: days inside the W weeks and before the latest cutoff, students of the population
    last_day = min(float(cutoffs.max()), 7 * weeks + WEEK_ORIGIN)
    students = pa.array(np.unique(reg_keys & 0xFFFFFFFF), pa.int64())
    table = read_table(prepared, "clicks.parquet", schema.OULAD_CLICKS.names,
                  read_dictionary=["code_module", "code_presentation", "activity_type"],
                  filters=(pc.field("day") >= WEEK_ORIGIN) & (pc.field("day") < last_day) & pc.field("id_student").isin(students))
    frame = table.to_pandas()
    reg = _lookup(_registration_key(_presentation_id(prepared, frame["code_module"], frame["code_presentation"]),
                                     frame["id_student"].to_numpy()), reg_keys)
    day = frame["day"].to_numpy(dtype=np.float64)
    cutoff_of_row = np.full(len(frame), -np.inf)
    cutoff_of_row[reg >= 0] = cutoffs[reg[reg >= 0]]
    rows = day < cutoff_of_row                       # only clicks of the population, strictly before the cutoff
    kind = _codes(frame["activity_type"], activity) - 1
    if (kind[rows] < 0).any():
        bad = frame["activity_type"][rows & (kind < 0)].iloc[0]
        raise BadInput(f"{prepared.file('clicks.parquet')}: activity_type {bad!r} is not in the manifest vocab; {rerun_prepare('oulad')}")
    week = np.floor_divide(day - WEEK_ORIGIN, 7)
    rows &= (week >= 0) & (week < weeks)
    clicks = np.clip(frame["clicks"].to_numpy(dtype=np.float64), 0, None)
    cell_of_row = (reg[rows] * weeks + week[rows].astype(np.int64)) * len(activity) + kind[rows]
    cells, inverse = np.unique(cell_of_row, return_inverse=True)            # sorted by registration, week, type
    sums = np.bincount(inverse, weights=clicks[rows], minlength=len(cells))
    cells, sums = cells[sums > 0], sums[sums > 0]
    per_reg = weeks * len(activity)
    offsets = np.searchsorted(cells // per_reg, np.arange(len(reg_keys) + 1))
    return offsets, (cells % per_reg).astype(np.int64), np.log1p(sums).astype(np.float32)


def _oulad_assessments(prepared: Prepared, regs: pd.DataFrame, reg_keys: np.ndarray, cutoffs: np.ndarray) -> dict[str, np.ndarray]:
    """Per registration, the (at most S, latest kept) assessments due before its cutoff."""
    file = prepared.file("assessments.parquet")
    records = read_table(prepared, "assessments.parquet", schema.OULAD_ASSESSMENTS.names).to_pandas()
    records["presentation"] = _presentation_id(prepared, records["code_module"], records["code_presentation"])
    records["reg"] = _lookup(_registration_key(records["presentation"].to_numpy(), records["id_student"].to_numpy()), reg_keys)
    unknown = ~records["assessment_type"].isin(list(ASSESSMENT_TYPES))
    if unknown.any():
        raise BadInput(f"{file}: assessment_type {records.loc[unknown, 'assessment_type'].iloc[0]!r} is not TMA, CMA or Exam; {rerun_prepare('oulad')}")

    # the presentation's catalogue: every assessment seen for it, with its type, weight and due day
    catalogue = records.drop_duplicates(["presentation", "id_assessment"])[
        ["presentation", "id_assessment", "assessment_type", "weight", "due_day"]]
    every_reg = read_table(prepared, "registrations.parquet", ["code_module", "code_presentation", "module_presentation_length"]).to_pandas()
    every_reg["presentation"] = _presentation_id(prepared, every_reg["code_module"], every_reg["code_presentation"])
    length = every_reg.groupby("presentation")["module_presentation_length"].max()
    catalogue = catalogue.assign(due_day=catalogue["due_day"].fillna(catalogue["presentation"].map(length)))

    # one candidate per registration x assessment due before its cutoff
    population = pd.DataFrame({"reg": np.arange(len(regs)), "presentation": _presentation_id(
        prepared, regs["code_module"], regs["code_presentation"]), "cutoff": cutoffs})
    due = population.merge(catalogue, on="presentation")
    due = due[due["due_day"] < due["cutoff"]]
    submitted = records[(records["reg"] >= 0) & records["submitted_day"].notna()].drop_duplicates(["reg", "id_assessment"])
    due = due.merge(submitted[["reg", "id_assessment", "submitted_day", "is_banked", "score"]], on=["reg", "id_assessment"], how="left")
    counted = (due["submitted_day"] < due["cutoff"]).to_numpy()    # NaN compares False: not (yet) submitted

    # keep the latest S per registration, in due order
    slots = oulad_assessment_slots(prepared)
    due = due.assign(counted=counted).sort_values(["reg", "due_day", "id_assessment"], kind="stable")
    rank = due.groupby("reg").cumcount().to_numpy()
    count = due.groupby("reg")["reg"].transform("size").to_numpy()
    slot = rank - np.maximum(count - slots, 0)
    due = due[slot >= 0]
    slot, reg, counted = slot[slot >= 0], due["reg"].to_numpy(), due["counted"].to_numpy()

    due_day = due["due_day"].to_numpy(dtype=np.float64)
    late = np.clip(due["submitted_day"].to_numpy(dtype=np.float64) - due_day, -30, 90) / 30
    features = np.stack([
        due["weight"].to_numpy(dtype=np.float64) / 100,
        due_day / 365,
        np.where(counted, late, 0.0),
        np.where(counted, np.nan_to_num(due["score"].to_numpy(dtype=np.float64) / 100), 0.0),
        np.where(counted, np.nan_to_num(due["is_banked"].to_numpy(dtype=np.float64)), 0.0),
        (~counted).astype(np.float64),
    ], axis=1)
    n = len(regs)
    kind = np.zeros((n, slots), dtype=np.int64)
    num = np.zeros((n, slots, len(ASSESSMENT_FEATURES)), dtype=np.float32)
    seq_mask = np.zeros((n, slots), dtype=bool)
    kind[reg, slot] = due["assessment_type"].map(ASSESSMENT_TYPES).to_numpy()
    num[reg, slot] = np.nan_to_num(features)
    seq_mask[reg, slot] = True
    return {"assessment_type": kind, "assessment_num": num, "seq_mask": seq_mask}


# ---------------------------------------------------------------- collation

def collate_oulad(examples: list[Example]) -> Batch:
    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([ex.arrays[name] for ex in examples]))

    seq_mask = stack("seq_mask")                                      # (B, S)
    valid = torch.ones(len(examples), dtype=torch.bool)
    return Batch(
        inputs={
            "demographics": {"cat": stack("cat").long(), "num": stack("num"), "num_present": stack("num_present")},
            "clicks": {"weeks": stack("weeks"), "week_mask": stack("week_mask")},          # (B, W, A), (B, W)
            "assessments": {"type": stack("assessment_type").long(), "num": stack("assessment_num"), "seq_mask": seq_mask},
        },
        present={"demographics": valid.clone(), "clicks": stack("clicks_present"), "assessments": seq_mask.any(dim=1)},
        target=stack("target"),
        mask=valid.clone(),
        valid=valid,
        keys={
            "code_module": [str(ex.keys["code_module"]) for ex in examples],
            "code_presentation": [str(ex.keys["code_presentation"]) for ex in examples],
            "id_student": torch.tensor([int(ex.keys["id_student"]) for ex in examples], dtype=torch.long),
        },
    )
