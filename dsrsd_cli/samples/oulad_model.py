"""The built-in OULAD sample's model: the generative story, its tables and every coefficient.

The simulator is three files: this one (what is simulated: the story below, the tables of
shares and effects, the presentations, `Coefficients`), oulad_simulate.py (students,
cohorts, one presentation at a time) and oulad.py (`simulate_oulad`, `write_oulad_sample`,
the release assembled, `oracle_at_risk`).

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

from dataclasses import dataclass, field

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
