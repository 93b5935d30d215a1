"""The built-in OULAD sample: a documented simulator that writes the 7 raw CSVs in the real format.

`dsrsd prepare --dataset oulad` without `--raw` calls `write_oulad_sample`, then parses the
folder with the same code as the real release. The files copy the release's headers,
column order, quoting (five files fully double-quoted, studentAssessment/studentVle not),
value vocabularies and missing-value style (empty strings). Beside them it writes
`ground_truth.parquet` (the true outcome probabilities of every registration) and
`sample_params.json` (everything below, plus counts). Same seed -> byte-identical files.

The story (all constants are in `Coefficients` and the tables below)
--------------------------------------------------------------------
Two modules, DDD and FFF, each run twice (2013J, 2014J), with the real assessment
plans and lengths of those presentations. New students arrive with demographics drawn
from the real release's shares. Each student has two latents:

* ability `A` ~ N(shift_A(demographics), ability_sd): prior education, IMD band (deprivation),
  age, disability and previous attempts move it modestly;
* engagement `E` = student engagement ~ N(shift_E(demographics), engagement_sd), lowered by
  a heavy workload (studied_credits) and previous attempts, plus a fresh per-registration
  wobble (engagement_reg_sd): a retake is a new start.

Each registration adds three latents that only one kind of log reveals:

* click habit `V` and click trend `S` (click_habit_sd, click_trend_sd): the log-intensity
  of VLE use on day d is `E + V + (S - population_decline) * tau_d` (tau_d = d / length), so
  `S` is a weekly trajectory that can decline. Only the clicks show `V` and `S`.
* burstiness `B` ~ N(0, 1): a few days with bursts of very many forum/collaboration/wiki
  clicks, at a rate exp(burst_base + burst_sd * B + burst_engagement * E). High variance,
  only weakly informative (through the small engagement loading), never in the outcome.
* demographic risk `D`: a direct effect of workload (studied_credits), disability,
  deprivation, prior education and previous attempts on the outcome that no behaviour
  shows (centred on the population mean).

What the logs show:

* clicks (studentVle): each day from max(registration, -20) to the end (or the day before
  unregistration) is active with probability sigmoid(active_base + E + V + (S - decline) tau_d
  + boost in the week before a due date); an active day has 1 + Poisson rows, each on a site
  picked by activity-type popularity (oucontent rows favour that week's material), with
  geometric sum_click whose mean depends on the type.
* assessments (studentAssessment): every TMA/CMA/Exam has a potential submission
  (probability rising with E and A), a submission day (TMAs: late when E is low; CMAs:
  spread through the course; the exam: a sitting about three weeks before the end),
  and a potential score (ability plus a little engagement plus noise). Retakers bank a
  previously passed TMA with some probability (is_banked = 1, date_submitted = -1, the old
  score). Nothing dated on or after the unregistration day is written, nor are FFF's exams
  (the release records exams only for some modules, DDD among them).

The outcome, two stages that together give the 4 classes:

1. Withdrawal, a weekly hazard from the registration week to the end:
   logit h_w = hazard_base + time shape + difficulty/2 - hazard_engagement * E
               - s_clicks * hazard_clicks * (V + S tau_w) + s_demographics * hazard_demographics * D
               - s_assessments * hazard_scores * z_w,
   where z_w is the z-score of the last TMA due before week w (-1.5 if not submitted):
   low engagement, a declining click trend and low scores raise it.
   p_Withdrawn = 1 - prod_w (1 - h_w); a withdrawn student's week is drawn from
   h_w * survival_{w-1}, the day uniformly inside it (date_unregistration).
2. For those who stay, an ordinal logit on
   perf = -difficulty + perf_engagement * E + s_assessments * (perf_ability * A + perf_mark * mark_z)
          + s_clicks * perf_clicks * (V + S) - s_demographics * perf_demographics * D,
   mark_z = z-score of the course mark (weighted TMA/CMA score, non-submission = 0; half
   exam where the exam is recorded): Fail = sigmoid(fail_threshold - perf),
   Distinction = sigmoid(perf - distinction_threshold), Pass the rest.

`strengths` = {"demographics": s_demographics, "clicks": s_clicks, "assessments": s_assessments}
(default 1.0 each) scale the terms that only that modality reveals (D; V and S; A and the
scores), so modality dominance can be set: with clicks 0 the clicks still mirror the shared
engagement E but carry no exclusive information about the outcome. E is the shared signal
(clicks and submission behaviour both show it) and is never scaled.

ground_truth.parquet holds, per registration, p_Pass, p_Fail, p_Withdrawn, p_Distinction
(float64, summing to 1): the probabilities the final_result was drawn from, given all the
latents and the potential assessment results above (everything except the final draws),
and p_at_risk = p_Fail + p_Withdrawn (sample_params.json: ground_truth_auc_at_risk). The
logs show the withdrawal draw, though (clicks and submissions stop), so these are not an
upper bound for a model that reads them. The oracle is `oracle_at_risk(truth, cutoff_day)`,
built from the other columns: P(Fail | stays) and P(Distinction | stays), the drawn
date_unregistration and the weekly withdrawal hazard (from week hazard_first_week); it
conditions on the latents and on what the logs show by the cutoff
(sample_params.json: oracle_auc_at_risk_end for the end of the presentation).

Cohorts: 2014J registrations include 2013J students who failed or withdrew retaking the same
module (RETAKE_PROB; num_of_prev_attempts + 1, same student latents) and 2013J passers taking
the other module (PROGRESS_PROB), so a learner-level split must group by id_student.
The intercepts are calibrated at the default strengths: about Pass 0.37, Withdrawn 0.30,
Fail 0.23, Distinction 0.10 (the release: 0.38, 0.31, 0.22, 0.09), ~13% of registrations
with previous attempts, ~350 studentVle rows per registration, ground-truth AUC ~0.87.
Other strengths move the class shares somewhat (nothing is re-calibrated).
"""

from __future__ import annotations

import io
import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_write_bytes, write_json

GENERATOR_VERSION = 1
STRENGTH_KEYS = ("demographics", "clicks", "assessments")
RESULTS = ("Pass", "Fail", "Withdrawn", "Distinction")   # column order of the probabilities
FIRST_CLICK_DAY = -20                                    # the VLE opens about three weeks early

# ---------------------------------------------------------------- demographics
# value: (share in the real release, ability shift, engagement shift, direct risk D)
GENDER = {"M": (0.548, 0, 0, 0), "F": (0.452, 0, 0, 0)}
REGION = {  # shares only: region is a realistic feature that predicts nothing
    name: (share, 0, 0, 0)
    for name, share in {
        "Scotland": 0.106, "East Anglian Region": 0.102, "London Region": 0.099, "South Region": 0.095,
        "North Western Region": 0.089, "West Midlands Region": 0.079, "South West Region": 0.075,
        "East Midlands Region": 0.073, "South East Region": 0.065, "Wales": 0.064,
        "Yorkshire Region": 0.062, "North Region": 0.056, "Ireland": 0.036,
    }.items()
}
HIGHEST_EDUCATION = {
    "No Formal quals": (0.011, -0.6, -0.1, 0.3),
    "Lower Than A Level": (0.404, -0.3, -0.05, 0.15),
    "A Level or Equivalent": (0.431, 0.0, 0.0, 0.0),
    "HE Qualification": (0.145, 0.3, 0.05, -0.05),
    "Post Graduate Qualification": (0.010, 0.6, 0.1, -0.2),
}
# Deprivation deciles, most deprived first; the release writes "10-20" without "%".
_IMD_SHARES = (0.102, 0.108, 0.112, 0.109, 0.100, 0.096, 0.089, 0.088, 0.085, 0.078)
IMD_BAND = {
    (f"{10 * i}-{10 * i + 10}" if i == 1 else f"{10 * i}-{10 * i + 10}%"): (
        share, 0.05 * (i - 4.5), 0.03 * (i - 4.5), -0.04 * (i - 4.5))
    for i, share in enumerate(_IMD_SHARES)
}
IMD_BAND[""] = (0.034, 0, 0, 0)   # missing in the release
AGE_BAND = {"0-35": (0.704, 0, 0, 0), "35-55": (0.289, 0.1, 0.2, -0.1), "55<=": (0.007, 0.1, 0.3, 0.0)}
DISABILITY = {"N": (0.903, 0, 0, 0), "Y": (0.097, -0.15, -0.1, 0.5)}
# Workload: more credits studied at once, less time for this module.
STUDIED_CREDITS = {
    60: (0.514, 0, 0, 0), 120: (0.194, 0, -0.1, 0.6), 30: (0.115, 0, 0.05, -0.3), 90: (0.096, 0, -0.05, 0.35),
    180: (0.025, 0, -0.2, 1.0), 150: (0.024, 0, -0.15, 0.8), 240: (0.007, 0, -0.3, 1.3),
}
PREV_ATTEMPTS_NEW = {0: 0.93, 1: 0.06, 2: 0.01}          # of students new to our data
PER_PREV_ATTEMPT = (-0.15, -0.15, 0.3)                  # ability, engagement, risk per attempt (<= 3)


# ---------------------------------------------------------------- module presentations
@dataclass(frozen=True)
class Assessment:
    id: int
    kind: str              # TMA | CMA | Exam
    due: int | None        # day; the release leaves some exam dates empty
    weight: float


@dataclass(frozen=True)
class Presentation:
    module: str
    presentation: str
    length: int            # module_presentation_length (days)
    share: float           # of the sample's registrations
    difficulty: float      # lowers perf, raises the hazard by half as much
    exam_recorded: bool    # studentAssessment holds exam rows (real: DDD yes, FFF no)
    assessments: tuple[Assessment, ...]


def _plan(*rows) -> tuple[Assessment, ...]:
    return tuple(Assessment(i, kind, due, float(weight)) for i, kind, due, weight in rows)


def _tmas(*rows):
    return [(i, "TMA", due, weight) for i, due, weight in rows]


def _cmas(ids, due):
    return [(i, "CMA", due, 0) for i in ids]


# The real plans of these four presentations (ids, due days, weights, in the release's row order);
# chronological order, because 2014J cohorts include retakers of 2013J.
PRESENTATIONS = (
    Presentation("DDD", "2013J", 261, 0.225, 0.3, True, _plan(
        *_tmas((25348, 25, 10), (25349, 53, 12.5), (25350, 88, 17.5), (25351, 123, 20), (25352, 165, 20),
               (25353, 207, 20)),
        (25354, "Exam", 261, 100))),
    Presentation("FFF", "2013J", 268, 0.275, 0.0, False, _plan(
        *_cmas((34878, 34879, 34880, 34881, 34882, 34884, 34883), 236),
        *_tmas((34873, 19, 12.5), (34874, 47, 12.5), (34875, 96, 25), (34876, 131, 25), (34877, 173, 25)),
        (34885, "Exam", 236, 100))),
    Presentation("DDD", "2014J", 262, 0.225, 0.3, True, _plan(
        *_tmas((25362, 20, 5), (25363, 41, 10), (25364, 62, 10), (25365, 111, 25), (25366, 146, 25),
               (25367, 195, 25)),
        (25368, "Exam", None, 100))),
    Presentation("FFF", "2014J", 269, 0.275, 0.0, False, _plan(
        *_cmas((34904, 34905, 34906, 34907, 34908, 34910, 34909), 241),
        *_tmas((34899, 24, 12.5), (34900, 52, 12.5), (34901, 94, 25), (34902, 136, 25), (34903, 199, 25)),
        (34911, "Exam", 241, 100))),
)
RETAKE_PROB = 0.25       # a 2013J Fail/Withdrawn registers again for the same module in 2014J
PROGRESS_PROB = 0.12     # a 2013J Pass/Distinction takes the other module in 2014J
BANK_PROB = 0.4          # a retaker banks each previously passed (>= 40) TMA

# ---------------------------------------------------------------- the VLE
# activity type: (sites per presentation, share of click rows, mean sum_click per row)
ACTIVITY_TYPES = {
    "oucontent": (5, 0.26, 6.0), "forumng": (4, 0.18, 4.2), "homepage": (1, 0.14, 6.4),
    "subpage": (12, 0.13, 2.5), "resource": (30, 0.09, 1.3), "url": (8, 0.05, 1.6),
    "quiz": (3, 0.04, 5.0), "ouwiki": (1, 0.015, 3.0), "oucollaborate": (2, 0.01, 1.5),
    "questionnaire": (2, 0.008, 2.0), "page": (2, 0.008, 1.5), "dataplus": (1, 0.006, 2.3),
    "glossary": (1, 0.006, 2.0), "externalquiz": (1, 0.006, 2.0), "ouelluminate": (1, 0.005, 2.0),
    "dualpane": (1, 0.005, 2.0), "htmlactivity": (1, 0.004, 2.0), "repeatactivity": (1, 0.003, 1.5),
    "sharedsubpage": (1, 0.003, 1.5), "folder": (1, 0.002, 1.5),
}
WEEKLY_TYPE = "oucontent"     # plus one site per study week (week_from = week_to = k)
WEEKLY_SITE_PROB = 0.6        # an oucontent row is on that week's material
BURSTY_TYPES = ("forumng", "oucollaborate", "ouwiki")


@dataclass(frozen=True)
class Coefficients:
    """Every constant of the story (see the module docstring); written to sample_params.json."""

    ability_sd: float = 0.9
    engagement_sd: float = 0.8
    engagement_reg_sd: float = 0.6
    click_habit_sd: float = 0.6          # V
    click_trend_sd: float = 0.9          # S
    population_decline: float = 0.5      # mean drop of click log-intensity over the course
    # clicks
    active_base: float = -0.5            # logit of an active day for E = V = S = 0
    active_before_start: float = -0.8
    active_due_boost: float = 0.5        # in the 7 days before a due date
    rows_base: float = 0.8               # log mean of extra rows on an active day
    rows_engagement: float = 0.3
    burst_base: float = 0.2
    burst_sd: float = 0.8
    burst_engagement: float = 0.15
    burst_mean_clicks: float = 30.0
    # assessments
    submit_base: dict = field(default_factory=lambda: {"TMA": 2.3, "CMA": 1.6, "Exam": 1.5})
    submit_engagement: float = 1.3
    submit_ability: float = 0.3
    submit_later_tma: float = -0.12      # per TMA: later ones are skipped more
    late_engagement: float = 0.8         # TMA days late = -1 - late_engagement * E + Laplace(late_scale)
    late_scale: float = 2.0
    score_mean: dict = field(default_factory=lambda: {"TMA": 72.0, "CMA": 80.0, "Exam": 63.0})
    score_ability: dict = field(default_factory=lambda: {"TMA": 13.0, "CMA": 12.0, "Exam": 16.0})
    score_engagement: float = 3.0
    score_noise: float = 13.0
    blank_score_prob: float = 0.001      # the release has a few blank scores
    # withdrawal hazard (weekly logit)
    hazard_base: float = -5.4
    hazard_before_start: float = 0.0
    hazard_first_month: float = 0.5
    hazard_decay: float = 0.02           # per week after the first month
    hazard_engagement: float = 0.9
    hazard_clicks: float = 0.8
    hazard_demographics: float = 0.8
    hazard_scores: float = 0.6
    # completion (ordinal logit)
    perf_engagement: float = 0.6
    perf_ability: float = 0.8
    perf_mark: float = 0.8
    perf_clicks: float = 0.7
    perf_demographics: float = 0.6
    fail_threshold: float = -1.0
    distinction_threshold: float = 2.7


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
    ids = _StudentIds(rng)
    students = _Students()
    per_pres: list[dict] = []
    sizes = _split_sizes(n_registrations)
    for pres, size in zip(PRESENTATIONS, sizes):
        regs = _cohort(rng, pres, size, students, ids, per_pres, coef)
        per_pres.append(_simulate_presentation(rng, pres, regs, students, strengths, coef))
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


# ---------------------------------------------------------------- students and cohorts
class _StudentIds:
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


class _Students:
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


def _cohort(rng, pres: Presentation, size: int, students: _Students, ids: _StudentIds, earlier: list[dict],
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


def _simulate_presentation(rng, pres: Presentation, regs: pd.DataFrame, students: _Students,
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


def _site_layout(pres: Presentation) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
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
    site_type, site_week, offsets, counts = _site_layout(pres)
    site = offsets[type_r] + np.floor(rng.random(len(type_r)) * counts[type_r]).astype(np.int64)
    if weekly:
        n_general = int(counts.sum())
        week = day_r // 7 + 1                                           # week_from is 1-based
        on_week = ((type_r == list(ACTIVITY_TYPES).index(WEEKLY_TYPE)) & (week >= 1) & (week <= pres.length // 7)
                   & (rng.random(len(type_r)) < WEEKLY_SITE_PROB))
        site = np.where(on_week, n_general + week - 1, site)
    return site


# ---------------------------------------------------------------- assembling the release
QUOTED_FILES = ("courses.csv", "assessments.csv", "vle.csv", "studentInfo.csv", "studentRegistration.csv")


def _assemble(per_pres: list[dict], *, seed: int, n_registrations: int, strengths: dict, coef: Coefficients) -> OuladSample:
    """The 7 tables in the release's row order (by module, presentation, student), ground truth, latents."""
    rng = np.random.default_rng([seed, 1])      # site ids only: independent of the simulation stream
    courses, assessments, vle, info, registration, student_assessment, student_vle = [], [], [], [], [], [], []
    gt, latents = [], []
    n_sites = sum(len(_site_layout(p["pres"])[0]) for p in per_pres)
    site_ids = np.sort(rng.choice(np.arange(526_000, 1_080_000), size=n_sites, replace=False))
    site_at = 0
    for p in sorted(per_pres, key=lambda p: (p["pres"].module, p["pres"].presentation)):
        pres, regs, stu = p["pres"], p["regs"], p["students"]
        key = {"code_module": pres.module, "code_presentation": pres.presentation}
        courses.append({**key, "module_presentation_length": pres.length})
        for a in pres.assessments:
            assessments.append({**key, "id_assessment": a.id, "assessment_type": a.kind,
                                "date": "" if a.due is None else a.due, "weight": f"{a.weight:g}"})
        site_type, site_week, _, _ = _site_layout(pres)
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
