"""The OULAD sample simulated, one module presentation at a time.

`StudentIds` / `Students` keep every student drawn so far (demographics and student-level
latents); `cohort` gives a presentation its registrations (retakers and progressing
students from earlier presentations, then newcomers); `simulate_presentation` draws the
registration latents, the potential assessments, the withdrawal hazard and the outcome,
then what the logs show: submissions and clicks. The story and the coefficients are in
oulad_model.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dsrsd_cli.samples.oulad_model import (
    ACTIVITY_TYPES,
    AGE_BAND,
    BANK_PROB,
    BURSTY_TYPES,
    DISABILITY,
    FIRST_CLICK_DAY,
    GENDER,
    HIGHEST_EDUCATION,
    IMD_BAND,
    PER_PREV_ATTEMPT,
    PREV_ATTEMPTS_NEW,
    PROGRESS_PROB,
    REGION,
    RESULTS,
    RETAKE_PROB,
    STRENGTH_KEYS,
    STUDIED_CREDITS,
    WEEKLY_SITE_PROB,
    WEEKLY_TYPE,
    Coefficients,
    Presentation,
)


# ---------------------------------------------------------------- students and cohorts
class StudentIds:
    """Unique random ids in the release's range (3,733 .. 2,716,795)."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.used = rng, set()

    def take(self, n: int) -> np.ndarray:
        out: list[int] = []
        while len(out) < n:
            for x in self.rng.integers(10_000, 2_700_000, size=2 * (n - len(out))).tolist():
                if x not in self.used and len(out) < n:
                    self.used.add(x)
                    out.append(x)
        return np.array(out, dtype=np.int64)


def _draw(rng: np.random.Generator, table: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Values drawn by share, and their (n, 3) effects: ability, engagement, risk."""
    keys = list(table)
    rows = np.array([table[k] for k in keys], dtype=float)
    pick = rng.choice(len(keys), size=n, p=rows[:, 0] / rows[:, 0].sum())
    return np.array(keys, dtype=object)[pick], rows[pick, 1:]


def _mean_risk(table: dict) -> float:
    rows = np.array(list(table.values()), dtype=float)
    return float((rows[:, 0] * rows[:, 3]).sum() / rows[:, 0].sum())


STUDENT_TABLES = {"gender": GENDER, "region": REGION, "highest_education": HIGHEST_EDUCATION,
                  "imd_band": IMD_BAND, "age_band": AGE_BAND, "disability": DISABILITY}
# Centre D on the population: the risk of an average newcomer is 0.
MEAN_RISK = (sum(_mean_risk(t) for t in STUDENT_TABLES.values()) + _mean_risk(STUDIED_CREDITS)
             + PER_PREV_ATTEMPT[2] * sum(k * s for k, s in PREV_ATTEMPTS_NEW.items()))


class Students:
    """Every student seen so far: demographics (fixed) and student-level latents, by row index."""

    def __init__(self):
        self.frame = pd.DataFrame()

    def add(self, rng: np.random.Generator, ids: np.ndarray, coef: Coefficients) -> np.ndarray:
        n = len(ids)
        cols: dict[str, np.ndarray] = {"id_student": ids}
        effects = np.zeros((n, 3))
        for name, table in STUDENT_TABLES.items():
            cols[name], eff = _draw(rng, table, n)
            effects += eff
        cols["ability"] = effects[:, 0] + coef.ability_sd * rng.standard_normal(n)
        cols["engagement"] = effects[:, 1] + coef.engagement_sd * rng.standard_normal(n)
        cols["risk"] = effects[:, 2]
        start = len(self.frame)
        new = pd.DataFrame(cols)
        self.frame = new if self.frame.empty else pd.concat([self.frame, new], ignore_index=True)
        return np.arange(start, start + n)


def cohort(rng, pres: Presentation, size: int, students: Students, ids: StudentIds, earlier: list[dict],
            coef: Coefficients) -> pd.DataFrame:
    """Registrations of one presentation: returning students (retakes, progressions), then newcomers."""
    parts = []
    for prev in earlier:
        if prev["pres"].presentation >= pres.presentation:
            continue                                   # only earlier presentations feed this one
        r = prev["regs"]
        same = prev["pres"].module == pres.module
        failed = np.isin(r["final_result"], ["Fail", "Withdrawn"])
        chosen = (failed & (rng.random(len(r)) < RETAKE_PROB)) if same else (
            ~failed & (rng.random(len(r)) < PROGRESS_PROB))
        back = r.loc[chosen, ["student", "num_of_prev_attempts"]].copy()
        back["num_of_prev_attempts"] = np.where(same, back["num_of_prev_attempts"] + 1, 0)
        back["previous_scores"] = list(prev["tma_scores"][chosen]) if same else [None] * len(back)
        parts.append(back)
    returning = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["student", "num_of_prev_attempts", "previous_scores"])
    returning = returning.iloc[rng.permutation(len(returning))[: size // 2]]   # newcomers stay the majority

    n_new = size - len(returning)
    new = pd.DataFrame({"student": students.add(rng, ids.take(n_new), coef)})
    prev_keys = np.array(list(PREV_ATTEMPTS_NEW))
    prev_p = np.array(list(PREV_ATTEMPTS_NEW.values()))
    new["num_of_prev_attempts"] = rng.choice(prev_keys, size=n_new, p=prev_p / prev_p.sum())
    new["previous_scores"] = [None] * n_new
    regs = pd.concat([returning, new], ignore_index=True)
    regs["num_of_prev_attempts"] = regs["num_of_prev_attempts"].astype(np.int64)

    n = len(regs)
    regs["studied_credits"], credit_effects = _draw(rng, STUDIED_CREDITS, n)
    regs["credit_effects"] = list(credit_effects)
    # Registration day: mostly weeks before the start (median about -57), a few late ones.
    early = -np.minimum(np.round(rng.gamma(2.0, 32.0, size=n)) + 5, 300)
    late = rng.integers(1, 26, size=n)
    regs["date_registration"] = np.where(rng.random(n) < 0.02, late, early).astype(np.int64)
    return regs


# ---------------------------------------------------------------- one presentation
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def simulate_presentation(rng, pres: Presentation, regs: pd.DataFrame, students: Students,
                           strengths: dict[str, float], coef: Coefficients) -> dict:
    n = len(regs)
    stu = students.frame.iloc[regs["student"].to_numpy()].reset_index(drop=True)
    prev = np.minimum(regs["num_of_prev_attempts"].to_numpy(), 3)
    credit = np.stack(regs["credit_effects"].to_numpy())                                  # (n, 3)

    # Latents (module docstring).
    A = stu["ability"].to_numpy() + PER_PREV_ATTEMPT[0] * prev
    E = (stu["engagement"].to_numpy() + credit[:, 1] + PER_PREV_ATTEMPT[1] * prev
         + coef.engagement_reg_sd * rng.standard_normal(n))
    V = coef.click_habit_sd * rng.standard_normal(n)
    S = coef.click_trend_sd * rng.standard_normal(n)
    B = rng.standard_normal(n)
    D = stu["risk"].to_numpy() + credit[:, 2] + PER_PREV_ATTEMPT[2] * prev - MEAN_RISK
    reg_day = regs["date_registration"].to_numpy()

    pot = _potential_assessments(rng, pres, regs, A, E, coef)
    weeks, hazard = _weekly_hazard(pres, reg_day, E, V, S, D, pot, strengths, coef)     # (W,), (n, W)
    p_withdrawn = 1.0 - np.prod(1.0 - hazard, axis=1)
    p_fail, p_distinction, mark_z = _completion_probabilities(pres, A, E, V, S, D, pot, strengths, coef)
    stay = 1.0 - p_withdrawn
    probs = np.stack([stay * (1.0 - p_fail - p_distinction), stay * p_fail, p_withdrawn, stay * p_distinction],
                     axis=1)                                                             # (n, 4), RESULTS order
    result = np.array(RESULTS, dtype=object)[(rng.random(n)[:, None] > np.cumsum(probs, axis=1)[:, :-1]).sum(axis=1)]
    unreg = _withdrawal_days(rng, pres, reg_day, weeks, hazard, result == "Withdrawn")
    end = np.where(np.isnan(unreg), pres.length, unreg).astype(np.int64)   # first day with no activity

    regs = regs.assign(final_result=result, date_unregistration=unreg)
    made = pot["submit"] & (pot["day"] < end[:, None])
    tma = np.array([a.kind == "TMA" for a in pres.assessments])
    return {
        "pres": pres,
        "regs": regs,
        "students": stu,
        "probs": probs,
        "if_stay": np.stack([p_fail, p_distinction], axis=1),                          # (n, 2)
        "hazard": (int(weeks[0]), hazard),                                             # first week, (n, W)
        "latents": pd.DataFrame({"ability": A, "engagement": E, "click_habit": V, "click_trend": S,
                                 "burstiness": B, "demographic_risk": D, "mark_z": mark_z}),
        "tma_scores": np.where(made & ~pot["banked"], pot["score"], np.nan)[:, tma],   # what a retake may bank
        "submissions": _realised_submissions(rng, pres, pot, end, result != "Withdrawn", coef),
        "clicks": _clicks(rng, pres, reg_day, end, E, V, S, B, coef),
    }


def _potential_assessments(rng, pres: Presentation, regs: pd.DataFrame, A, E, coef: Coefficients) -> dict:
    """What every registration would submit, when, and with what score, if it stayed enrolled. (n, K) arrays."""
    n, K = len(regs), len(pres.assessments)
    kinds = [a.kind for a in pres.assessments]
    submit, day, score = np.zeros((n, K), bool), np.zeros((n, K), np.int64), np.zeros((n, K))
    tma_rank = 0
    n_cma = kinds.count("CMA")
    cma_rank = 0
    for k, a in enumerate(pres.assessments):
        logit = coef.submit_base[a.kind] + coef.submit_engagement * E + coef.submit_ability * A
        due = a.due if a.due is not None else pres.length
        if a.kind == "TMA":
            logit = logit + coef.submit_later_tma * tma_rank
            tma_rank += 1
            late = -1 - coef.late_engagement * E + rng.laplace(0, coef.late_scale, n)
            day[:, k] = due + np.clip(np.round(late), -30, 60)
        elif a.kind == "CMA":
            # CMAs due at the end are done along the way: the k-th about k/(K+1) through the course.
            cma_rank += 1
            target = due * cma_rank / (n_cma + 1) + rng.normal(0, 10, n) - 4 * E
            day[:, k] = np.clip(np.round(target), 0, due + 5)
        else:
            day[:, k] = due - 21 + rng.integers(-3, 4, size=n)    # the sitting, ~3 weeks before the end
        day[:, k] = np.clip(day[:, k], regs["date_registration"].to_numpy(), pres.length - 1)
        submit[:, k] = rng.random(n) < _sigmoid(logit)
        mean = coef.score_mean[a.kind] + coef.score_ability[a.kind] * A + coef.score_engagement * E
        score[:, k] = np.clip(np.round(mean + coef.score_noise * rng.standard_normal(n)), 0, 100)

    # Retakers may bank TMAs they passed last time: the old score stands, dated -1 as in the release.
    banked = np.zeros((n, K), bool)
    tma_cols = [k for k, kind in enumerate(kinds) if kind == "TMA"]
    for i, old in enumerate(regs["previous_scores"].tolist()):
        if old is None:
            continue
        for j, k in enumerate(tma_cols[: len(old)]):
            if old[j] >= 40 and rng.random() < BANK_PROB:
                banked[i, k], submit[i, k], score[i, k], day[i, k] = True, True, old[j], -1
    return {"submit": submit, "day": day, "score": score, "banked": banked}


def _weekly_hazard(pres: Presentation, reg_day, E, V, S, D, pot: dict, strengths: dict[str, float],
                   coef: Coefficients) -> tuple[np.ndarray, np.ndarray]:
    """Withdrawal hazard per week, from the earliest registration week to the last week; 0 before registering."""
    s_dem, s_clk, s_ass = (strengths[k] for k in STRENGTH_KEYS)
    tma = np.flatnonzero([a.kind == "TMA" for a in pres.assessments])
    tma_due = np.array([pres.assessments[k].due for k in tma])

    weeks = np.arange(min(reg_day.min(), 0) // 7, (pres.length - 1) // 7 + 1)           # (W,)
    tau = np.clip(7 * weeks / pres.length, 0, 1)
    shape = np.where(weeks < 0, coef.hazard_before_start,
                     np.where(weeks < 4, coef.hazard_first_month, -coef.hazard_decay * (weeks - 4)))
    z_tma = np.where(pot["submit"][:, tma], (pot["score"][:, tma] - 70) / 15, -1.5)        # (n, T)
    n_due = np.searchsorted(tma_due, 7 * weeks, side="left")                               # TMAs due before week start
    z_week = np.where(n_due > 0, z_tma[:, np.maximum(n_due - 1, 0)], 0.0)                  # (n, W)
    logit = (coef.hazard_base + shape + pres.difficulty / 2 - coef.hazard_engagement * E[:, None]
             - s_clk * coef.hazard_clicks * (V[:, None] + S[:, None] * tau)
             + s_dem * coef.hazard_demographics * D[:, None]
             - s_ass * coef.hazard_scores * z_week)
    enrolled = weeks[None, :] >= (reg_day[:, None] // 7)                                  # (n, W)
    return weeks, np.where(enrolled, _sigmoid(logit), 0.0)


def _completion_probabilities(pres: Presentation, A, E, V, S, D, pot: dict, strengths: dict[str, float],
                              coef: Coefficients) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(Fail | stays), P(Distinction | stays) from the ordinal logit, and the course-mark z-score."""
    s_dem, s_clk, s_ass = (strengths[k] for k in STRENGTH_KEYS)
    kinds = np.array([a.kind for a in pres.assessments])
    weights = np.array([a.weight for a in pres.assessments])
    course = kinds != "Exam"
    w = weights[course] if weights[course].sum() > 0 else np.ones(course.sum())
    mark = (np.where(pot["submit"][:, course], pot["score"][:, course], 0.0) * w).sum(axis=1) / w.sum()
    if pres.exam_recorded:                                                    # half coursework, half exam
        exam = np.where(pot["submit"][:, ~course], pot["score"][:, ~course], 0.0)[:, 0]
        mark = (mark + exam) / 2
    mark_z = np.clip((mark - 62) / 20, -3, 2)
    perf = (-pres.difficulty + coef.perf_engagement * E
            + s_ass * (coef.perf_ability * A + coef.perf_mark * mark_z)
            + s_clk * coef.perf_clicks * (V + S) - s_dem * coef.perf_demographics * D)
    return _sigmoid(coef.fail_threshold - perf), _sigmoid(perf - coef.distinction_threshold), mark_z


def _withdrawal_days(rng, pres: Presentation, reg_day, weeks, hazard, withdrawn) -> np.ndarray:
    """date_unregistration (float, NaN if none): week drawn from h_w * survival_{w-1}, day uniform inside it."""
    survival_before = np.cumprod(np.hstack([np.ones((len(hazard), 1)), 1.0 - hazard[:, :-1]]), axis=1)
    cdf = np.cumsum(hazard * survival_before, axis=1)
    u = rng.random(len(hazard)) * cdf[:, -1]
    week = weeks[np.minimum((cdf < u[:, None]).sum(axis=1), len(weeks) - 1)]
    day = np.clip(7 * week + rng.integers(0, 7, size=len(hazard)), reg_day + 1, pres.length)
    return np.where(withdrawn, day, np.nan)


def _realised_submissions(rng, pres: Presentation, pot: dict, end: np.ndarray,
                          completed: np.ndarray, coef: Coefficients) -> pd.DataFrame:
    """studentAssessment rows: potential submissions made before the student left; exams only if recorded."""
    kinds = np.array([a.kind for a in pres.assessments])
    keep = pot["submit"] & (pot["day"] < end[:, None])
    keep[:, kinds == "Exam"] &= completed[:, None] & pres.exam_recorded
    row, col = np.nonzero(keep)
    score = pot["score"][row, col].astype(np.int64).astype(object)
    score[rng.random(len(row)) < coef.blank_score_prob] = ""
    return pd.DataFrame({
        "id_assessment": np.array([a.id for a in pres.assessments])[col],
        "reg": row,
        "date_submitted": pot["day"][row, col],
        "is_banked": pot["banked"][row, col].astype(np.int64),
        "score": score,
    })


def _clicks(rng, pres: Presentation, reg_day, end, E, V, S, B, coef: Coefficients) -> pd.DataFrame:
    """studentVle rows (registration index, site index, date, sum_click) for one presentation."""
    n = len(reg_day)
    days = np.arange(FIRST_CLICK_DAY, pres.length)                                       # (Dy,)
    tau = np.clip(days / pres.length, 0, 1)
    due_days = np.array([a.due if a.due is not None else pres.length for a in pres.assessments])
    before_due = ((due_days[None, :] - days[:, None] > 0) & (due_days[None, :] - days[:, None] <= 7)).any(axis=1)
    level = E[:, None] + V[:, None] + (S[:, None] - coef.population_decline) * tau             # (n, Dy)
    logit = (coef.active_base + level + coef.active_due_boost * before_due
             + coef.active_before_start * (days < 0))
    open_ = (days[None, :] >= np.maximum(reg_day, FIRST_CLICK_DAY)[:, None]) & (days[None, :] < end[:, None])
    active = open_ & (rng.random((n, len(days))) < _sigmoid(logit))
    reg_i, day_i = np.nonzero(active)
    n_rows = 1 + rng.poisson(np.exp(coef.rows_base + coef.rows_engagement * level[reg_i, day_i]))
    reg_r = np.repeat(reg_i, n_rows)
    day_r = days[np.repeat(day_i, n_rows)]

    # Activity type by popularity; site uniformly within the type, except weekly material.
    types = list(ACTIVITY_TYPES)
    share = np.array([v[1] for v in ACTIVITY_TYPES.values()])
    type_r = rng.choice(len(types), size=len(reg_r), p=share / share.sum())
    site_r = _pick_sites(rng, pres, type_r, day_r)
    mean_clicks = np.array([v[2] for v in ACTIVITY_TYPES.values()])
    clicks_r = rng.geometric(1.0 / mean_clicks[type_r])

    # Bursts: high-variance, weakly informative forum/collaboration/wiki clicks.
    n_bursts = rng.poisson(np.exp(coef.burst_base + coef.burst_sd * B + coef.burst_engagement * E))
    first = np.maximum(reg_day, FIRST_CLICK_DAY)
    n_bursts = np.where(end > first, n_bursts, 0)
    burst_reg = np.repeat(np.arange(n), n_bursts)
    burst_day = first[burst_reg] + np.floor(rng.random(len(burst_reg)) * (end - first)[burst_reg]).astype(np.int64)
    rows_per_burst = rng.integers(1, 5, size=len(burst_reg))
    burst_reg, burst_day = np.repeat(burst_reg, rows_per_burst), np.repeat(burst_day, rows_per_burst)
    burst_type = np.array([types.index(t) for t in BURSTY_TYPES])[rng.integers(0, len(BURSTY_TYPES), len(burst_reg))]
    burst_site = _pick_sites(rng, pres, burst_type, burst_day, weekly=False)
    burst_clicks = rng.geometric(1.0 / coef.burst_mean_clicks, size=len(burst_reg))

    return pd.DataFrame({
        "reg": np.concatenate([reg_r, burst_reg]),
        "site": np.concatenate([site_r, burst_site]),
        "date": np.concatenate([day_r, burst_day]),
        "sum_click": np.concatenate([clicks_r, burst_clicks]),
    })


def site_layout(pres: Presentation) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    """Sites of a presentation in a fixed order: (activity type, week or 0) per site, and per-type offsets."""
    site_type, site_week = [], []
    for name, (n_sites, _, _) in ACTIVITY_TYPES.items():
        site_type += [name] * n_sites
        site_week += [0] * n_sites
    n_weeks = pres.length // 7
    site_type += [WEEKLY_TYPE] * n_weeks
    site_week += list(range(1, n_weeks + 1))
    counts = np.array([v[0] for v in ACTIVITY_TYPES.values()])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return site_type, site_week, offsets, counts


def _pick_sites(rng, pres: Presentation, type_r, day_r, *, weekly: bool = True) -> np.ndarray:
    site_type, site_week, offsets, counts = site_layout(pres)
    site = offsets[type_r] + np.floor(rng.random(len(type_r)) * counts[type_r]).astype(np.int64)
    if weekly:
        n_general = int(counts.sum())
        week = day_r // 7 + 1                                           # week_from is 1-based
        on_week = ((type_r == list(ACTIVITY_TYPES).index(WEEKLY_TYPE)) & (week >= 1) & (week <= pres.length // 7)
                   & (rng.random(len(type_r)) < WEEKLY_SITE_PROB))
        site = np.where(on_week, n_general + week - 1, site)
    return site
