"""The built-in OULAD sample: the 7 raw CSVs in the real format, written by a documented simulator.

`dsrsd prepare --dataset oulad` without `--raw` calls `write_oulad_sample`, then parses the
folder with the same code as the real release. The files copy the release's headers,
column order, quoting (five files fully double-quoted, studentAssessment/studentVle not),
value vocabularies and missing-value style (empty strings). Beside them it writes
`ground_truth.parquet` (the true outcome probabilities of every registration) and
`sample_params.json` (every coefficient, plus counts). Same seed -> byte-identical files.
What is simulated, and every coefficient: oulad_model.py; `oracle_at_risk` (below) is the
oracle a model is measured against.
"""

from __future__ import annotations

import io
import math
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_write_bytes, write_json
from dsrsd_cli.samples.oulad_model import (
    BANK_PROB,
    BURSTY_TYPES,
    GENERATOR_VERSION,
    PRESENTATIONS,
    PROGRESS_PROB,
    RESULTS,
    RETAKE_PROB,
    STRENGTH_KEYS,
    Coefficients,
)
from dsrsd_cli.samples.oulad_simulate import StudentIds, Students, cohort, simulate_presentation, site_layout


# ---------------------------------------------------------------- public API
@dataclass
class OuladSample:
    """The simulated release in memory: the 7 raw tables (as written), ground truth, latents."""

    tables: dict[str, pd.DataFrame]     # "courses.csv" -> frame of strings/ints in file order
    ground_truth: pd.DataFrame
    latents: pd.DataFrame               # per registration, ground truth's row order: ability, engagement,
                                        # click_habit, click_trend, burstiness, demographic_risk, mark_z
    params: dict


def write_oulad_sample(
    folder: Path, *, n_registrations: int = 3000, seed: int = 0, strengths: dict[str, float] | None = None
) -> dict:
    """Write the 7 OULAD CSVs, ground_truth.parquet and sample_params.json into `folder`; return the params."""
    sample = simulate_oulad(n_registrations=n_registrations, seed=seed, strengths=strengths)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in sample.tables.items():
        atomic_write_bytes(folder / name, _to_csv(frame, quoted=name in QUOTED_FILES))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(sample.ground_truth, preserve_index=False), buffer)
    atomic_write_bytes(folder / "ground_truth.parquet", buffer.getvalue())
    write_json(folder / "sample_params.json", sample.params)
    return sample.params


def simulate_oulad(
    *, n_registrations: int = 3000, seed: int = 0, strengths: dict[str, float] | None = None,
    coefficients: Coefficients | None = None,
) -> OuladSample:
    """Run the simulator (module docstring) without writing anything."""
    strengths = _check_strengths(strengths)
    if not isinstance(n_registrations, numbers.Integral) or n_registrations < 2 * len(PRESENTATIONS):
        raise BadInput(
            f"OULAD sample size {n_registrations!r} is too small; ask for at least {2 * len(PRESENTATIONS)} "
            "registrations (e.g. --sample-size 3000)"
        )
    n_registrations = int(n_registrations)
    coef = coefficients or Coefficients()
    rng = np.random.default_rng(seed)
    ids = StudentIds(rng)
    students = Students()
    per_pres: list[dict] = []
    sizes = _split_sizes(n_registrations)
    for pres, size in zip(PRESENTATIONS, sizes):
        regs = cohort(rng, pres, size, students, ids, per_pres, coef)
        per_pres.append(simulate_presentation(rng, pres, regs, students, strengths, coef))
    return _assemble(per_pres, seed=seed, n_registrations=n_registrations, strengths=strengths, coef=coef)


def _check_strengths(strengths: dict[str, float] | None) -> dict[str, float]:
    out = dict.fromkeys(STRENGTH_KEYS, 1.0)
    for key, value in (strengths or {}).items():
        if key not in out:
            raise BadInput(f"sample strengths: unknown modality {key!r}; use {', '.join(STRENGTH_KEYS)}")
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise BadInput(f"sample strengths: {key}={value!r} must be a finite number >= 0 (1.0 = default)")
        out[key] = float(value)
    return out


def _split_sizes(n: int) -> list[int]:
    shares = np.array([p.share for p in PRESENTATIONS])
    sizes = np.floor(shares / shares.sum() * n).astype(int)
    sizes[np.argsort(-shares, kind="stable")[: n - sizes.sum()]] += 1   # hand out the remainder
    return sizes.tolist()


# ---------------------------------------------------------------- assembling the release
QUOTED_FILES = ("courses.csv", "assessments.csv", "vle.csv", "studentInfo.csv", "studentRegistration.csv")


def _assemble(per_pres: list[dict], *, seed: int, n_registrations: int, strengths: dict, coef: Coefficients) -> OuladSample:
    """The 7 tables in the release's row order (by module, presentation, student), ground truth, latents."""
    rng = np.random.default_rng([seed, 1])      # site ids only: independent of the simulation stream
    courses, assessments, vle, info, registration, student_assessment, student_vle = [], [], [], [], [], [], []
    gt, latents = [], []
    n_sites = sum(len(site_layout(p["pres"])[0]) for p in per_pres)
    site_ids = np.sort(rng.choice(np.arange(526_000, 1_080_000), size=n_sites, replace=False))
    site_at = 0
    for p in sorted(per_pres, key=lambda p: (p["pres"].module, p["pres"].presentation)):
        pres, regs, stu = p["pres"], p["regs"], p["students"]
        key = {"code_module": pres.module, "code_presentation": pres.presentation}
        courses.append({**key, "module_presentation_length": pres.length})
        for a in pres.assessments:
            assessments.append({**key, "id_assessment": a.id, "assessment_type": a.kind,
                                "date": "" if a.due is None else a.due, "weight": f"{a.weight:g}"})
        site_type, site_week, _, _ = site_layout(pres)
        ids = site_ids[site_at: site_at + len(site_type)]
        site_at += len(site_type)
        vle.append(pd.DataFrame({"id_site": ids, **key, "activity_type": site_type,
                                 "week_from": [w or "" for w in site_week], "week_to": [w or "" for w in site_week]}))

        id_student = stu["id_student"].to_numpy()
        by_student = np.argsort(id_student, kind="stable")
        unreg = regs["date_unregistration"].to_numpy()
        info.append(pd.DataFrame({
            **key, "id_student": id_student,
            **{c: stu[c].to_numpy() for c in ("gender", "region", "highest_education", "imd_band", "age_band")},
            "num_of_prev_attempts": regs["num_of_prev_attempts"].to_numpy(),
            "studied_credits": regs["studied_credits"].to_numpy(), "disability": stu["disability"].to_numpy(),
            "final_result": regs["final_result"].to_numpy(),
        }).iloc[by_student])
        registration.append(pd.DataFrame({
            **key, "id_student": id_student, "date_registration": regs["date_registration"].to_numpy(),
            "date_unregistration": np.array(["" if np.isnan(u) else int(u) for u in unreg], dtype=object),
        }).iloc[by_student])
        probs, first_week, hazard = p["probs"], *p["hazard"]
        gt.append(pd.DataFrame({**key, "id_student": id_student,
                                **{f"p_{r}": probs[:, i] for i, r in enumerate(RESULTS)},
                                "p_at_risk": probs[:, 1] + probs[:, 2],
                                "p_fail_if_stay": p["if_stay"][:, 0], "p_distinction_if_stay": p["if_stay"][:, 1],
                                "date_unregistration": unreg.astype(np.float64),
                                "hazard_first_week": np.full(len(regs), first_week, np.int64),
                                "weekly_hazard": list(hazard)}).iloc[by_student])
        latents.append(p["latents"].assign(**key, id_student=id_student,
                                           final_result=regs["final_result"].to_numpy()).iloc[by_student])

        sub = p["submissions"]
        student_assessment.append(sub.assign(reg=id_student[sub["reg"].to_numpy()]).rename(columns={"reg": "id_student"}))
        clicks = p["clicks"]
        student, site, date = id_student[clicks["reg"].to_numpy()], ids[clicks["site"].to_numpy()], clicks["date"].to_numpy()
        by_day = np.lexsort((site, student, date))                      # the release: by day, then student
        student_vle.append(pd.DataFrame({**key, "id_student": student[by_day], "id_site": site[by_day],
                                         "date": date[by_day], "sum_click": clicks["sum_click"].to_numpy()[by_day]}))

    def stack(frames):
        return pd.concat(frames, ignore_index=True)

    info_df, reg_df, gt_df, lat_df, sv_df = (stack(f) for f in (info, registration, gt, latents, student_vle))
    sa_df = stack(student_assessment).sort_values(["id_assessment", "id_student"], kind="stable", ignore_index=True)
    vle_df = stack(vle)
    vle_df = vle_df.iloc[rng.permutation(len(vle_df))].reset_index(drop=True)   # the release's vle.csv is unordered

    tables = {
        "courses.csv": pd.DataFrame(courses),
        "assessments.csv": pd.DataFrame(assessments),
        "vle.csv": vle_df,
        "studentInfo.csv": info_df,
        "studentRegistration.csv": reg_df,
        "studentAssessment.csv": sa_df,
        "studentVle.csv": sv_df,
    }
    at_risk = np.isin(info_df["final_result"], ["Fail", "Withdrawn"])
    params = {
        "generator": "dsrsd oulad sample",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n_registrations": n_registrations,
        "strengths": strengths,
        "presentations": [
            {"code_module": p.module, "code_presentation": p.presentation, "length": p.length,
             "difficulty": p.difficulty, "exam_recorded": p.exam_recorded}
            for p in PRESENTATIONS
        ],
        "retake_prob": RETAKE_PROB, "progress_prob": PROGRESS_PROB, "bank_prob": BANK_PROB,
        "bursty_types": list(BURSTY_TYPES),
        "coefficients": asdict(coef),
        "counts": {
            "registrations": len(info_df),
            "students": int(info_df["id_student"].nunique()),
            "registrations_with_prev_attempts": int((info_df["num_of_prev_attempts"] > 0).sum()),
            "student_vle_rows": len(sv_df),
            "student_assessment_rows": len(sa_df),
            "vle_sites": len(vle_df),
        },
        "final_result": {r: int((info_df["final_result"] == r).sum()) for r in RESULTS},
        "ground_truth_auc_at_risk": _auc(gt_df["p_at_risk"].to_numpy(), at_risk),
        "oracle_auc_at_risk_end": _auc(oracle_at_risk(gt_df, None).to_numpy(), at_risk),
    }
    return OuladSample(tables=tables, ground_truth=gt_df, latents=lat_df, params=params)


def oracle_at_risk(truth: pd.DataFrame, cutoff_day: int | None) -> pd.Series:
    """P(at risk | every latent, what the logs show by the cutoff) per row of ground_truth.parquet.

    This is the oracle a model with the same cutoff is measured against. The logs reveal
    the withdrawal draw (clicks and submissions stop, exams are missing), so an oracle that
    ignores it (p_at_risk) is not an upper bound: a model can beat it. Given the latents
    and the withdrawal status the outcome is independent of everything logged, so this is.
    - cutoff None (end of the presentation, everyone predicted): 1 for the withdrawn,
      P(Fail | stays) for the others;
    - cutoff day c (only students still registered at c are predicted): P(withdraw on or
      after day c | still registered at c) + P(stay | registered at c) * P(Fail | stays);
      rows that unregistered before c get NaN (they are not in that population).
    """
    withdrawn = truth["date_unregistration"].notna().to_numpy()
    fail = truth["p_fail_if_stay"].to_numpy()
    if cutoff_day is None:
        return pd.Series(np.where(withdrawn, 1.0, fail), index=truth.index)
    p = np.empty(len(truth))
    lengths = truth["weekly_hazard"].map(len).to_numpy()
    for width in np.unique(lengths):          # presentations differ in length: one block per width
        rows = np.flatnonzero(lengths == width)
        hazard = np.stack(truth["weekly_hazard"].to_numpy()[rows])                         # (n, W)
        week = truth["hazard_first_week"].to_numpy()[rows, None] + np.arange(width)        # (n, W)
        survive = np.cumprod(1.0 - hazard, axis=1)
        p_week = hazard * np.hstack([np.ones((len(rows), 1)), survive[:, :-1]])            # P(withdraw in week w)
        # the day is uniform inside its week: the share of week w's days on or after the cutoff
        on_or_after = np.clip((7 * week + 7 - cutoff_day) / 7.0, 0.0, 1.0)
        leave_later = (p_week * on_or_after).sum(axis=1)
        stay = survive[:, -1]
        p[rows] = (leave_later + stay * fail[rows]) / np.maximum(leave_later + stay, 1e-300)
    gone = truth["date_unregistration"].to_numpy() < cutoff_day                            # NaN compares False
    return pd.Series(np.where(gone, np.nan, p), index=truth.index)


def _auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """Rank AUC (ties averaged); None if one class is missing."""
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return round(float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), 4)


def _to_csv(frame: pd.DataFrame, *, quoted: bool) -> bytes:
    """The release's style: every field double-quoted (empty ones as "") or none at all; "\\n" line ends."""
    if quoted:
        table = pa.Table.from_pandas(frame.astype(str), preserve_index=False)
        options = pacsv.WriteOptions(quoting_style="all_valid")          # the header is quoted too
        header = b""
    else:
        table = pa.Table.from_pandas(
            frame.astype({c: str for c in frame.columns if frame[c].dtype == object}), preserve_index=False)
        options = pacsv.WriteOptions(quoting_style="none", include_header=False)
        header = (",".join(frame.columns) + "\n").encode()
    out = io.BytesIO()
    pacsv.write_csv(table, out, options)
    return header + out.getvalue()
