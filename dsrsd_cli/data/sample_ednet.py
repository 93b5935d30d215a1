"""The built-in EdNet sample: a documented simulator that writes raw files in the real formats.

`dsrsd prepare --dataset ednet` without `--raw` calls `write_ednet_sample`, then parses
its output with the same parser as real data. The files copy the public release
(checked against tests/fixtures/ednet): `questions.csv`, `lectures.csv`, `KT1/u<N>.csv`
for every learner and `KT4/u<N>.csv` for a `kt4_fraction` of them (the same learners
and events, as in the release), plus `ground_truth.parquet` (the true probability of
every answer) and `sample_params.json` (everything needed to regenerate the folder).

The generative story
--------------------
Contents. The seven TOEIC parts (PARTS) hold bundles of 1 question (parts 1, 2, 5),
3 (parts 3, 4), 4 (part 6) or 2-5 (part 7); part 2 has three choices (a-c), the others
four. Every question has one topic tag of its part, one of five cross-part category tags,
on half the listening questions a shared "listening" tag, and no tag at all ("-1") with
probability `untagged_rate`. Tags have a difficulty `tag_beta` (sd `tag_beta_sd`), parts
`part_beta` (sd `part_beta_sd`), and every question a residual difficulty `delta` beyond
its tags (sd 1; a share `bundle_share` of it is common to its bundle). Every topic tag has
1-2 lectures; a few lectures are untagged ("-1"), as in the release.

Learners. Learner u has a general ability `theta` (sd `theta_sd`), per-part and per-tag
deviations from it (sd `part_dev_sd`, `tag_dev_sd`), a learning rate `growth` (mean
`growth_mean`, sd `growth_sd`), a speed (log multiplier of its bundle times, sd
`speed_sd`), a preference over parts (Dirichlet around PART_MIX, concentration
`part_mix_concentration`), and propensities to study lectures (mean `lecture_rate`), to
read explanations and to use the web app (mean `web_rate`).
Each learner answers a target number of questions (log-normal, median `answers_median`,
sd `answers_sd` in log, clipped to `answers_min`..`answers_max`), bundle by bundle.

A step (one bundle). The first `n_diagnosis` bundles are the same placement test for
everyone (source "diagnosis"). After that a session ends after each bundle with
probability `session_end`; a new session draws a gap (hours to days: `session_gap_hours`,
`session_gap_sd`), a platform and a source (SESSION_SOURCES: sprint, tutor,
adaptive_offer, review). "review" sessions repeat bundles the learner got wrong before.
Before a bundle the learner may study a lecture (heavy-tailed time, `lecture_minutes`,
`lecture_sd`); with probability `lecture_match` it is a lecture on the bundle's topic tag
(source adaptive_offer, else a random one from archive). Each bundle's correctness is
drawn from

    logit p = logit_base + logit_item + logit_content + logit_behavior

    logit_base     = `intercept` + theta + growth * log(1 + answered / `growth_scale`)
    logit_item     = strengths["item"]     * `k_item`     * (-delta_q)
    logit_content  = strengths["content"]  * `k_content`  * (mean over the question's tags of
                     (tag deviation + learned tag skill - tag_beta) + part deviation - part_beta)
    logit_behavior = strengths["behavior"] * `k_behavior` * focus

so each modality's exclusive signal is known: item ids alone reveal `delta` (difficulty
beyond the tags); tags, part and lectures reveal the tag-level skill; only behaviour
reveals the focus. The base is what every view's response history shares.

Learning and forgetting. Learned tag skill G rises on every tag answered (`gain_practice`),
more when the explanation is read (`gain_explain_wrong` after a wrong answer,
`gain_explain_right` after a right one) and when a lecture on the tag is studied
(`gain_lecture`, saturating after about a minute, so lecture time barely matters). G
decays with the time since the learner's previous step (e-folding `forget_days`) and
enters the logit through g_max * tanh(G / g_max), which caps it at `g_max`.

Focus: an AR(1) state per learner (`focus_rho` between bundles, `focus_rho_session`
across a session break), shifted by the platform (PLATFORM_FOCUS) and by fatigue over a
session (`fatigue` after 40 bundles). It changes correctness and shows only in behaviour:
the gap before the bundle is shorter when focused (`gap_seconds`, `gap_focus`,
`gap_sd`), answering is faster (`elapsed_focus`), explanations are read more
(`explain_focus`).

Mastery-dependent behaviour (scaled by strengths["behavior"]): the bundle time grows with
the mean (1 - p) of its questions (`elapsed_unsure`, around SECONDS_PER_QUESTION of the
part, noise `elapsed_sd`); a question answered with probability p gets Poisson((1 - p)^2 *
`erase_unsure`) erase_choice events and Poisson((1 - p)^2 * `respond_unsure`) extra respond
events; explanations are read more after a wrong answer
(`explain_intercept`, `explain_wrong`) and read longer (`explain_seconds`, `explain_sd`).

Weakly informative, high-variance behaviour: audio plays on listening bundles and
explanations and video plays in lectures follow a Pareto tail (`media_tail`,
`media_scale`), only slightly more frequent when unsure (`media_unsure`); lecture time
is log-normal with a wide spread. Such features can dominate a model without helping it.

Why these sizes. The ground truth p conditions on every latent, so its AUC (the oracle)
is the limit of a model only if a learner's history can reveal those latents. Version 1
gave each learner an independent deviation on each of ~90 tags (sd 0.7; seen once or
twice in ~150 answers) and a focus that was nearly fresh at every bundle (AR(1) 0.9,
0.5 across sessions): the oracle knew ~0.6 logit sd that no history shows, and a model
ended 0.07 AUC below it whatever it did. Version 2 keeps each modality's share of the
signal but moves it to what can be learned: per-tag and per-part deviations are small
(`tag_dev_sd`, `part_dev_sd` 0.1) while tag difficulties vary more (`tag_beta_sd` 0.8,
learned from all learners), focus is a slowly drifting trait (0.995 per bundle, 0.98
across sessions) that the behaviour of many bundles reveals, and fatigue and the
learning-rate spread are smaller.

KT1 rows: timestamp = the bundle's enter time (shared by the bundle's questions),
solving_id = 1..n bundles, user_answer = the final answer (a wrong answer picks another
valid letter), elapsed_time = bundle time / questions in the bundle, as in the release
(a 4-question bundle of 214 s shows 53500 on each row). KT4 rows: enter b.., audio
play/pause, respond (several when the learner changed the answer; the last one is the
answer) with erase_choice between, submit b.. at enter + bundle time; then optionally
enter e.. / quit e.. (with audio replays); lectures enter l.. / play_video / pause_video
/ quit l.. between bundles. Timestamps are ms since the epoch and strictly increase per
learner in KT4 (in KT1 from one bundle to the next).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_dir

GENERATOR_VERSION = 2   # 2: latents a history can reveal (see "Why these sizes")

KT1_HEADER = "timestamp,solving_id,question_id,user_answer,elapsed_time"
KT4_HEADER = "timestamp,action_type,item_id,cursor_time,source,user_answer,platform"
QUESTIONS_HEADER = "question_id,bundle_id,explanation_id,correct_answer,part,tags,deployed_at"
LECTURES_HEADER = "lecture_id,part,tags,video_length,deployed_at"

# part -> (bundles, possible questions per bundle, topic tags)
PARTS: dict[int, tuple[int, tuple[int, ...], int]] = {
    1: (60, (1,), 6),
    2: (150, (1,), 10),
    3: (50, (3,), 10),
    4: (50, (3,), 10),
    5: (400, (1,), 30),
    6: (30, (4,), 8),
    7: (60, (2, 3, 4, 5), 10),
}
N_CATEGORY_TAGS = 5
PART_MIX = (0.08, 0.14, 0.12, 0.12, 0.34, 0.08, 0.12)   # mean share of bundles per part
SECONDS_PER_QUESTION = (20.0, 15.0, 30.0, 30.0, 18.0, 30.0, 50.0)
MAX_QUESTIONS = 5
DAY_MS = 86_400_000
CHUNK_LEARNERS = 500   # learners whose KT1/KT4 files are built at once

ACTIONS = ("enter", "respond", "submit", "quit", "erase_choice", "play_audio", "pause_audio", "play_video", "pause_video")
ENTER, RESPOND, SUBMIT, QUIT, ERASE, PLAY_AUDIO, PAUSE_AUDIO, PLAY_VIDEO, PAUSE_VIDEO = range(len(ACTIONS))
PREFIXES = ("b", "q", "e", "l")
BUNDLE, QUESTION, EXPLANATION, LECTURE = range(len(PREFIXES))
SOURCES = ("diagnosis", "sprint", "tutor", "adaptive_offer", "review", "archive")
DIAGNOSIS, SPRINT, TUTOR, ADAPTIVE_OFFER, REVIEW, ARCHIVE = range(len(SOURCES))
SESSION_SOURCES = {SPRINT: 0.55, TUTOR: 0.15, ADAPTIVE_OFFER: 0.15, REVIEW: 0.15}
PLATFORMS = ("mobile", "web")
PLATFORM_FOCUS = (-0.15, 0.45)   # focus shift on mobile / web
LETTERS = ("a", "b", "c", "d")

T_START_MS = 1_493_596_800_000   # 2017-05-01: learners start between this ...
T_SPAN_MS = 850 * DAY_MS         # ... and about 2019-08-29


@dataclass(frozen=True)
class SimParams:
    """Every coefficient of the simulator (see the module docstring for the story)."""

    # contents
    tag_beta_sd: float = 0.8
    part_beta_sd: float = 0.25
    bundle_share: float = 0.5
    untagged_rate: float = 0.05
    # learners
    theta_sd: float = 0.8
    part_dev_sd: float = 0.1
    tag_dev_sd: float = 0.1
    growth_mean: float = 0.35
    growth_sd: float = 0.05
    growth_scale: float = 25.0
    speed_sd: float = 0.25
    part_mix_concentration: float = 8.0
    lecture_rate: float = 0.06
    web_rate: float = 0.2
    answers_median: float = 140.0
    answers_sd: float = 0.45
    answers_min: int = 50
    answers_max: int = 300
    # logit
    intercept: float = 0.35
    k_item: float = 0.75
    k_content: float = 0.95
    k_behavior: float = 0.7
    # learning and forgetting
    gain_practice: float = 0.06
    gain_explain_right: float = 0.06
    gain_explain_wrong: float = 0.25
    gain_lecture: float = 0.5
    g_max: float = 1.5
    forget_days: float = 6.0
    # sessions and focus
    n_diagnosis: int = 7
    session_end: float = 0.08
    session_gap_hours: float = 20.0
    session_gap_sd: float = 1.1
    focus_rho: float = 0.995
    focus_rho_session: float = 0.98
    fatigue: float = 0.3
    gap_seconds: float = 8.0
    gap_focus: float = 0.8
    gap_sd: float = 0.25
    # answering behaviour
    elapsed_unsure: float = 0.9
    elapsed_focus: float = 0.3
    elapsed_sd: float = 0.3
    erase_unsure: float = 0.8
    respond_unsure: float = 0.7
    explain_intercept: float = -0.5
    explain_wrong: float = 2.0
    explain_focus: float = 0.4
    explain_seconds: float = 15.0
    explain_sd: float = 0.8
    # heavy-tailed media and lectures
    media_tail: float = 1.3
    media_scale: float = 0.6
    media_unsure: float = 0.3
    lecture_match: float = 0.6
    lecture_minutes: float = 2.5
    lecture_sd: float = 1.2


def write_ednet_sample(
    folder: Path,
    *,
    n_learners: int = 2000,
    seed: int = 0,
    strengths: dict[str, float] | None = None,
    kt4_fraction: float = 1.0,
) -> dict:
    """Simulate `n_learners` learners and write the raw EdNet files into `folder`; returns the params.

    `folder` must be absent or empty; it is built in a temporary sibling and renamed into
    place, so an interrupted run leaves no half-written sample. Same arguments, same bytes.
    """
    folder = Path(folder)
    strengths = _check_args(folder, n_learners=n_learners, strengths=strengths, kt4_fraction=kt4_fraction)
    n_learners, kt4_fraction = int(n_learners), float(kt4_fraction)
    sim = SimParams()
    rng_contents, rng_learners, rng_steps, rng_events = (np.random.default_rng([seed, k]) for k in range(4))

    cat = _make_catalogue(sim, rng_contents)
    lrn = _draw_learners(sim, n_learners, rng_learners)
    steps, answers = _simulate(cat, lrn, sim, strengths, rng_steps)
    in_kt4 = np.zeros(n_learners, bool)
    in_kt4[rng_events.permutation(n_learners)[: round(kt4_fraction * n_learners)]] = True

    params = {
        "generator": "dsrsd_cli.data.sample_ednet",
        "version": GENERATOR_VERSION,
        "n_learners": n_learners,
        "seed": seed,
        "strengths": strengths,
        "kt4_fraction": kt4_fraction,
        "simulator": asdict(sim),
        "parts": {str(p): {"bundles": n, "questions_per_bundle": list(q), "topic_tags": t} for p, (n, q, t) in PARTS.items()},
    }
    with atomic_dir(folder, force=True) as tmp:
        (tmp / "KT1").mkdir()
        (tmp / "KT4").mkdir()
        (tmp / "questions.csv").write_text(_questions_csv(cat))
        (tmp / "lectures.csv").write_text(_lectures_csv(cat))
        _write_ground_truth(tmp / "ground_truth.parquet", steps, answers)
        kt4_rows = 0
        for first in range(0, n_learners, CHUNK_LEARNERS):   # chunks keep memory flat for large samples
            chunk_steps, chunk_answers = _learner_rows(steps, answers, first, first + CHUNK_LEARNERS)
            _write_kt1(tmp / "KT1", chunk_steps, chunk_answers)
            events = _kt4_events(cat, chunk_steps, chunk_answers, in_kt4[chunk_steps["user"]], rng_events)
            _write_kt4(tmp / "KT4", events)
            kt4_rows += len(events["time"])
        params["summary"] = _summary(answers, in_kt4, kt4_rows)
        (tmp / "sample_params.json").write_text(json.dumps(params, indent=2) + "\n")
    return params


def _check_args(folder: Path, *, n_learners: int, strengths: dict[str, float] | None, kt4_fraction: float) -> dict:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BadInput(f"{folder}: sample folder exists and is not empty; remove it or choose another folder")
    if not isinstance(n_learners, (int, np.integer)) or n_learners < 1:
        raise BadInput(f"EdNet sample: n_learners={n_learners!r} must be a positive integer (e.g. --sample-size 2000)")
    if not 0.0 <= kt4_fraction <= 1.0:
        raise BadInput(f"EdNet sample: kt4_fraction={kt4_fraction!r} must be between 0 and 1")
    full = {"item": 1.0, "content": 1.0, "behavior": 1.0}
    for name, value in (strengths or {}).items():
        if name not in full:
            raise BadInput(f"EdNet sample: unknown strength {name!r}; use item, content or behavior")
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise BadInput(f"EdNet sample: strength {name}={value!r} must be a finite number >= 0")
        full[name] = float(value)
    return full


# ------------------------------------------------------------------ contents

@dataclass
class Catalogue:
    """Questions (index q), bundles (index b), tags (1..n_tags; column 0 = no tag), lectures."""

    q_bundle: np.ndarray      # (Q,) bundle of each question
    q_part: np.ndarray        # (Q,) 1..7
    q_key: np.ndarray         # (Q,) correct letter 0..3
    q_choices: np.ndarray     # (Q,) 3 for part 2, else 4
    q_tags: np.ndarray        # (Q, 3) tag numbers, 0 = padding
    q_delta: np.ndarray       # (Q,) difficulty beyond the tags
    q_deployed: np.ndarray    # (Q,) ms or -1
    b_part: np.ndarray        # (B,)
    b_questions: np.ndarray   # (B, MAX_QUESTIONS) question indices, -1 = padding
    b_topic: np.ndarray       # (B,) topic tag of the bundle's first question
    tag_beta: np.ndarray      # (n_tags + 1,) tag difficulty, 0 for column 0
    part_beta: np.ndarray     # (8,) part difficulty, index = part
    l_tag: np.ndarray         # (L,) 0 = untagged lecture
    l_part: np.ndarray        # (L,) -1 for untagged lectures
    l_video_ms: np.ndarray    # (L,) ms or -1
    l_deployed: np.ndarray    # (L,)
    tag_lectures: np.ndarray  # (n_tags + 1, 2) first lecture index and count per tag
    diagnosis: np.ndarray     # (n_diagnosis,) the placement test's bundles

    @property
    def n_tags(self) -> int:
        return len(self.tag_beta) - 1


def _make_catalogue(sim: SimParams, rng: np.random.Generator) -> Catalogue:
    topic_first, next_tag = {}, 1
    for part, (_, _, n_topics) in PARTS.items():
        topic_first[part] = next_tag
        next_tag += n_topics
    category_first, listening_tag = next_tag, next_tag + N_CATEGORY_TAGS
    n_tags = listening_tag

    q_bundle, q_part, q_tags, b_part, b_questions = [], [], [], [], []
    for part, (n_bundles, sizes, n_topics) in PARTS.items():
        for _ in range(n_bundles):
            b = len(b_part)
            size = int(rng.choice(sizes))
            b_part.append(part)
            b_questions.append([len(q_bundle) + i for i in range(size)] + [-1] * (MAX_QUESTIONS - size))
            for _ in range(size):
                tags = [topic_first[part] + int(rng.integers(n_topics))]
                if part <= 4 and rng.random() < 0.5:
                    tags.append(listening_tag)
                tags.append(category_first + int(rng.integers(N_CATEGORY_TAGS)))
                if rng.random() < sim.untagged_rate:
                    tags = []
                q_bundle.append(b)
                q_part.append(part)
                q_tags.append(tags + [0] * (3 - len(tags)))
    q_bundle, q_part, b_part = np.array(q_bundle), np.array(q_part), np.array(b_part)
    b_questions, q_tags = np.array(b_questions), np.array(q_tags)
    n_q, n_b = len(q_bundle), len(b_part)

    q_choices = np.where(q_part == 2, 3, 4)
    bundle_delta = rng.standard_normal(n_b)
    q_delta = math.sqrt(sim.bundle_share) * bundle_delta[q_bundle] + math.sqrt(1 - sim.bundle_share) * rng.standard_normal(n_q)
    deployed = T_START_MS - 400 * DAY_MS + np.sort(rng.integers(0, 900 * DAY_MS, n_q))
    q_deployed = np.where(rng.random(n_q) < 0.15, -1, deployed)

    # b_topic: first question's first tag when it is a topic tag, else 0 (no lecture match).
    first_tags = q_tags[b_questions[:, 0], 0]
    b_topic = np.where(first_tags < category_first, first_tags, 0)

    # lectures: 1-2 per topic tag (sorted by tag), then a few untagged ones
    per_topic = rng.integers(1, 3, category_first - 1)
    l_tag = np.concatenate([np.repeat(np.arange(1, category_first), per_topic), np.zeros(12, int)])
    n_l = len(l_tag)
    tag_of_topic_part = np.concatenate([[0]] + [[p] * PARTS[p][2] for p in PARTS])
    l_part = np.where(l_tag > 0, tag_of_topic_part[l_tag], -1)
    l_video_ms = np.where(rng.random(n_l) < 0.5, rng.integers(150, 800, n_l) * 1000, -1)
    l_deployed = np.where(rng.random(n_l) < 0.4, T_START_MS - 300 * DAY_MS + rng.integers(0, 800 * DAY_MS, n_l), -1)
    tag_lectures = np.zeros((n_tags + 1, 2), int)
    tag_lectures[1:category_first, 0] = np.concatenate([[0], np.cumsum(per_topic)[:-1]])
    tag_lectures[1:category_first, 1] = per_topic

    tag_beta = np.concatenate([[0.0], sim.tag_beta_sd * rng.standard_normal(n_tags)])
    part_beta = np.concatenate([[0.0], sim.part_beta_sd * rng.standard_normal(7)])
    diagnosis = np.sort(rng.choice(n_b, sim.n_diagnosis, replace=False))
    return Catalogue(
        q_bundle=q_bundle, q_part=q_part, q_key=rng.integers(0, q_choices), q_choices=q_choices, q_tags=q_tags,
        q_delta=q_delta, q_deployed=q_deployed, b_part=b_part, b_questions=b_questions, b_topic=b_topic,
        tag_beta=tag_beta, part_beta=part_beta, l_tag=l_tag, l_part=l_part, l_video_ms=l_video_ms,
        l_deployed=l_deployed, tag_lectures=tag_lectures, diagnosis=diagnosis,
    )


# ------------------------------------------------------------------ learners

@dataclass
class Learners:
    theta: np.ndarray          # (U,) general ability
    growth: np.ndarray         # (U,) learning rate of the general ability
    part_dev: np.ndarray       # (U, 8) deviation per part (index = part)
    tag_dev: np.ndarray        # (U, n_tags + 1) deviation per tag (column 0 = 0)
    speed: np.ndarray          # (U,) log-multiplier of the bundle time
    part_mix: np.ndarray       # (U, 7) preference over parts
    lecture_rate: np.ndarray   # (U,) chance of a lecture before a bundle
    explain_bias: np.ndarray   # (U,) logit shift of reading explanations
    web_rate: np.ndarray       # (U,) chance a session is on the web app
    n_answers: np.ndarray      # (U,) answers to give before stopping
    t0: np.ndarray             # (U,) ms of the first bundle


def _draw_learners(sim: SimParams, n: int, rng: np.random.Generator) -> Learners:
    n_tags = sum(t for _, _, t in PARTS.values()) + N_CATEGORY_TAGS + 1
    tag_dev = sim.tag_dev_sd * rng.standard_normal((n, n_tags + 1))
    tag_dev[:, 0] = 0.0
    part_dev = sim.part_dev_sd * rng.standard_normal((n, 8))
    part_dev[:, 0] = 0.0
    n_answers = np.exp(np.log(sim.answers_median) + sim.answers_sd * rng.standard_normal(n))
    return Learners(
        theta=sim.theta_sd * rng.standard_normal(n),
        growth=np.clip(sim.growth_mean + sim.growth_sd * rng.standard_normal(n), 0.0, None),
        part_dev=part_dev,
        tag_dev=tag_dev,
        speed=sim.speed_sd * rng.standard_normal(n),
        part_mix=rng.dirichlet(sim.part_mix_concentration * np.array(PART_MIX), n),
        lecture_rate=rng.beta(1.0, 1.0 / sim.lecture_rate - 1.0, n),
        explain_bias=rng.standard_normal(n),
        web_rate=rng.beta(1.0, 1.0 / sim.web_rate - 1.0, n),
        n_answers=np.clip(np.round(n_answers), sim.answers_min, sim.answers_max).astype(int),
        t0=T_START_MS + rng.integers(0, T_SPAN_MS, n),
    )


# ------------------------------------------------------------------ simulation

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _lognormal(rng: np.random.Generator, median: np.ndarray | float, sd: float, size: int) -> np.ndarray:
    return median * np.exp(sd * rng.standard_normal(size))


def _pareto_count(rng: np.random.Generator, tail: float, scale: np.ndarray | float, size: int, cap: int) -> np.ndarray:
    """Heavy-tailed counts 0, 1, 2, ... (floor of a scaled Lomax draw), capped."""
    return np.minimum(np.floor(rng.pareto(tail, size) * scale), cap).astype(int)


def _pick_bundles(cat: Catalogue, lrn: Learners, users: np.ndarray, source: np.ndarray, step: int,
                  wrong: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The bundle each learner answers next: the placement test, a review of a wrong bundle, or practice."""
    n = len(users)
    if step < len(cat.diagnosis):
        return np.full(n, cat.diagnosis[step])
    # practice: a part from the learner's preferences, then a bundle of that part
    part = 1 + (rng.random(n)[:, None] > np.cumsum(lrn.part_mix[users], axis=1)).sum(axis=1)
    part = np.minimum(part, 7)
    first = np.searchsorted(cat.b_part, part)
    count = np.searchsorted(cat.b_part, part, side="right") - first
    bundle = first + (rng.random(n) * count).astype(int)
    # review: a random bundle answered wrongly before, if any
    review = np.flatnonzero((source == REVIEW) & wrong[users].any(axis=1))
    if review.size:
        score = rng.random((review.size, wrong.shape[1])) * wrong[users[review]]
        bundle[review] = score.argmax(axis=1)
    return bundle


def _simulate(cat: Catalogue, lrn: Learners, sim: SimParams, strengths: dict, rng: np.random.Generator):
    """Run every learner bundle by bundle, all learners at once; returns (steps, answers) as dicts of arrays.

    steps: one row per bundle answered (user, step, bundle, times, behaviour);
    answers: one row per question answered (its step row, question, answer, p and logits).
    """
    n_users = len(lrn.theta)
    n_bundles = len(cat.b_part)
    learned = np.zeros_like(lrn.tag_dev)          # G: learned tag skill
    focus = rng.standard_normal(n_users)
    t_end = lrn.t0.astype(np.int64)               # end of each learner's last activity
    answered = np.zeros(n_users, int)
    in_session = np.zeros(n_users, int)           # bundles so far in the session
    platform = np.zeros(n_users, int)
    source = np.zeros(n_users, int)
    wrong = np.zeros((n_users, n_bundles), bool)  # bundles to review
    session_sources, session_p = np.array(list(SESSION_SOURCES)), np.array(list(SESSION_SOURCES.values()))
    s_item, s_content, s_behavior = strengths["item"], strengths["content"], strengths["behavior"]

    step_log, answer_log, n_rows = [], [], 0
    for step in range(sim.answers_max):
        users = np.flatnonzero(answered < lrn.n_answers)
        n = users.size
        if n == 0:
            break

        # -- session, platform, source, focus
        if step < sim.n_diagnosis:
            new = np.full(n, step == 0)
        else:
            new = rng.random(n) < sim.session_end
        fresh = users[new]
        platform[fresh] = rng.random(fresh.size) < lrn.web_rate[fresh]
        source[fresh] = DIAGNOSIS if step < sim.n_diagnosis else rng.choice(session_sources, fresh.size, p=session_p)
        if step == sim.n_diagnosis:   # the placement test ends: its session goes on as practice
            source[users[~new]] = SPRINT
        in_session[fresh] = 0
        rho = np.where(new, sim.focus_rho_session, sim.focus_rho)
        focus[users] = rho * focus[users] + np.sqrt(1 - rho**2) * rng.standard_normal(n)
        focus_now = (focus[users] + np.array(PLATFORM_FOCUS)[platform[users]]
                     - sim.fatigue * np.minimum(in_session[users], 40) / 40)                              # (n,)

        bundle = _pick_bundles(cat, lrn, users, source[users], step, wrong, rng)

        # -- time: session gap, optional lecture, then a focus-dependent gap before `enter`
        gap_ms = np.where(new & (step > 0), _lognormal(rng, sim.session_gap_hours * 3_600_000, sim.session_gap_sd, n), 0)
        gap_ms = (np.clip(gap_ms, 0, 45 * DAY_MS) + np.where(new & (step > 0), 1_200_000, 0)).astype(np.int64)
        has_lecture = (step >= sim.n_diagnosis) & (
            rng.random(n) < lrn.lecture_rate[users] * np.where(source[users] == ADAPTIVE_OFFER, 2.0, 1.0))
        matched = (rng.random(n) < sim.lecture_match) & (cat.b_topic[bundle] > 0)
        first, count = cat.tag_lectures[cat.b_topic[bundle]].T
        lecture = np.where(matched, first + (rng.random(n) * count).astype(int), rng.integers(0, len(cat.l_tag), n))
        lecture_source = np.where(matched, ADAPTIVE_OFFER, ARCHIVE)
        lecture_enter = t_end[users] + gap_ms + rng.integers(1000, 20_000, n)
        lecture_ms = np.clip(_lognormal(rng, sim.lecture_minutes * 60_000, sim.lecture_sd, n), 5000, 7_200_000).astype(np.int64)
        lecture_pairs = 1 + _pareto_count(rng, sim.media_tail, sim.media_scale, n, 19)
        ready = np.where(has_lecture, lecture_enter + lecture_ms, t_end[users] + gap_ms)
        gap_before = _lognormal(rng, sim.gap_seconds * 1000 * np.exp(-sim.gap_focus * focus_now), sim.gap_sd, n)
        enter = ready + np.clip(gap_before, 300, 1_800_000).astype(np.int64)

        # -- forgetting since the previous step, then what the lecture taught
        days = (enter - t_end[users]) / DAY_MS
        learned[users] *= np.exp(-days / sim.forget_days)[:, None]
        lecture_gain = sim.gain_lecture * (1 - np.exp(-lecture_ms / 60_000))
        learned[users[has_lecture], cat.l_tag[lecture[has_lecture]]] += lecture_gain[has_lecture]
        learned[:, 0] = 0.0

        # -- the questions of the bundle and their logits
        qs = cat.b_questions[bundle]                                   # (n, 5), -1 = padding
        present = qs >= 0
        q = np.where(present, qs, 0)
        tags = cat.q_tags[q]                                           # (n, 5, 3), 0 = no tag
        tagged = tags > 0
        u3 = users[:, None, None]
        skill = (lrn.tag_dev[u3, tags] + sim.g_max * np.tanh(learned[u3, tags] / sim.g_max)
                 - cat.tag_beta[tags])                                 # (n, 5, 3)
        tag_term = (skill * tagged).sum(-1) / np.maximum(tagged.sum(-1), 1)
        part = cat.q_part[q]                                           # (n, 5)
        content = tag_term + lrn.part_dev[users[:, None], part] - cat.part_beta[part]
        logit_item = s_item * sim.k_item * -cat.q_delta[q]
        logit_content = s_content * sim.k_content * content
        logit_behavior = np.broadcast_to(s_behavior * sim.k_behavior * focus_now[:, None], q.shape)
        logit_base = np.broadcast_to(
            (sim.intercept + lrn.theta[users] + lrn.growth[users] * np.log1p(answered[users] / sim.growth_scale))[:, None],
            q.shape)
        p = _sigmoid(logit_base + logit_item + logit_content + logit_behavior)  # (n, 5)
        correct = rng.random(q.shape) < p
        choices, key = cat.q_choices[q], cat.q_key[q]
        other = (key + 1 + (rng.random(q.shape) * (choices - 1)).astype(int)) % choices
        answer = np.where(correct, key, other)

        # -- behaviour while answering
        n_q = present.sum(1)
        unsure = np.where(present, 1 - p, 0.0)
        mean_unsure = unsure.sum(1) / n_q
        seconds = np.array(SECONDS_PER_QUESTION)[cat.b_part[bundle] - 1] * n_q
        bundle_ms = seconds * 1000 * np.exp(lrn.speed[users] + s_behavior * sim.elapsed_unsure * mean_unsure
                                            - sim.elapsed_focus * focus_now + sim.elapsed_sd * rng.standard_normal(n))
        bundle_ms = np.clip(np.round(bundle_ms, -3), 1000, 1_200_000 * n_q).astype(np.int64)
        n_erase = np.where(present, np.minimum(rng.poisson(s_behavior * sim.erase_unsure * unsure**2), 6), 0)
        n_extra = np.where(present, np.minimum(rng.poisson(s_behavior * sim.respond_unsure * unsure**2), 6), 0)
        listening = cat.b_part[bundle] <= 4
        audio_scale = sim.media_scale * (1 + s_behavior * sim.media_unsure * mean_unsure)
        audio_pairs = np.where(listening, 1 + _pareto_count(rng, sim.media_tail, audio_scale, n, 19), 0)

        # -- explanation after submit: likelier after a wrong answer and when focused
        frac_wrong = (present & ~correct).sum(1) / n_q
        read = rng.random(n) < _sigmoid(sim.explain_intercept + lrn.explain_bias[users]
                                        + sim.explain_wrong * frac_wrong + sim.explain_focus * focus_now)
        explain_enter = enter + bundle_ms + rng.integers(40, 200, n)
        explain_ms = _lognormal(rng, sim.explain_seconds * 1000 * np.sqrt(n_q) * (1 + frac_wrong), sim.explain_sd, n)
        explain_ms = np.clip(explain_ms, 1000, 1_800_000).astype(np.int64)
        explain_pairs = np.where(listening, _pareto_count(rng, sim.media_tail, sim.media_scale, n, 10), 0)

        # -- learning from practice and from the explanation
        gain = sim.gain_practice + read[:, None] * np.where(correct, sim.gain_explain_right, sim.gain_explain_wrong)
        gain = np.broadcast_to((gain * present)[:, :, None], tags.shape) * tagged
        np.add.at(learned, (np.broadcast_to(u3, tags.shape), tags), gain)
        learned[:, 0] = 0.0
        wrong[users, bundle] = frac_wrong > 0
        t_end[users] = np.where(read, explain_enter + explain_ms, enter + bundle_ms)
        answered[users] += n_q
        in_session[users] += 1

        step_log.append(dict(
            user=users, step=np.full(n, step), bundle=bundle, n_q=n_q, source=source[users].copy(),
            platform=platform[users].copy(), enter=enter, bundle_ms=bundle_ms, audio_pairs=audio_pairs,
            has_lecture=has_lecture, lecture=lecture, lecture_source=lecture_source, lecture_enter=lecture_enter,
            lecture_ms=lecture_ms, lecture_pairs=lecture_pairs, read=read, explain_enter=explain_enter,
            explain_ms=explain_ms, explain_pairs=explain_pairs,
        ))
        row, slot = np.nonzero(present)   # row-major: questions in bundle order
        answer_log.append(dict(
            step_row=n_rows + row, slot=slot, question=q[row, slot], answer=answer[row, slot],
            correct=correct[row, slot], p=p[row, slot], n_erase=n_erase[row, slot], n_extra=n_extra[row, slot],
            logit_item=logit_item[row, slot], logit_content=logit_content[row, slot],
            logit_behavior=logit_behavior[row, slot], logit_base=logit_base[row, slot],
        ))
        n_rows += n

    steps = {k: np.concatenate([s[k] for s in step_log]) for k in step_log[0]}
    answers = {k: np.concatenate([a[k] for a in answer_log]) for k in answer_log[0]}
    # reorder from (step, user) to (user, step); answers follow their step rows
    order = np.lexsort((steps["step"], steps["user"]))
    steps = {k: v[order] for k, v in steps.items()}
    new_row = np.empty_like(order)
    new_row[order] = np.arange(len(order))
    answers["step_row"] = new_row[answers["step_row"]]
    a_order = np.lexsort((answers["slot"], answers["step_row"]))
    answers = {k: v[a_order] for k, v in answers.items()}
    return steps, answers


def _learner_rows(steps: dict, answers: dict, first: int, stop: int) -> tuple[dict, dict]:
    """The steps and answers of learners first..stop-1 (both tables are sorted by learner)."""
    lo, hi = np.searchsorted(steps["user"], [first, stop])
    a_lo, a_hi = np.searchsorted(answers["step_row"], [lo, hi])
    chunk_answers = {k: v[a_lo:a_hi] for k, v in answers.items()}
    chunk_answers["step_row"] = chunk_answers["step_row"] - lo
    return {k: v[lo:hi] for k, v in steps.items()}, chunk_answers


# ------------------------------------------------------------------ KT4 events

def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of sizes `counts`: each element's group and its rank inside the group."""
    parent = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return parent, np.arange(len(parent)) - starts[parent]


def _spread(rng: np.random.Generator, start: np.ndarray, length: np.ndarray, counts: np.ndarray):
    """`counts[g]` distinct increasing ms times strictly inside (start[g], start[g] + length[g]) per group.

    Returns (group, rank, time) flat, group-major. Needs length > counts (guaranteed by the caps).
    """
    parent, rank = _ragged(counts)
    u = np.sort(rng.random(len(parent)) + parent) - parent   # sorted uniforms within each group
    room = (length - counts - 1)[parent]
    return parent, rank, start[parent] + 1 + (u * room).astype(np.int64) + rank


def _block(user, time, action, prefix, number, source, platform, cursor=None, answer=None) -> dict:
    n = len(time)

    def full(value):   # a scalar or an array -> an array of n
        return np.broadcast_to(np.asarray(value), (n,))

    return dict(
        user=full(user), time=full(time), action=full(action), prefix=full(prefix), number=full(number),
        source=full(source), platform=full(platform),
        cursor=full(-1 if cursor is None else cursor), answer=full(-1 if answer is None else answer),
    )


def _media_cursor(group: np.ndarray, rank: np.ndarray, time: np.ndarray, resume: bool):
    """Play/pause pairs at ranks (0, 1), (2, 3), ... of each group: is_play and cursor (ms into the media).

    Audio restarts at 0 on each play (as in the release); video resumes where it was paused.
    """
    is_play = rank % 2 == 0
    segment = time[~is_play] - time[is_play]                  # one per pair, group-major
    played_from = np.zeros_like(segment)
    if resume:
        pair_group = group[is_play]
        done = np.cumsum(segment) - segment                   # played before this pair, over all groups
        played_from = done - done[np.searchsorted(pair_group, pair_group)]
    cursor = np.empty(len(time), np.int64)
    cursor[is_play] = played_from
    cursor[~is_play] = played_from + segment
    return is_play, cursor


def _kt4_events(cat: Catalogue, steps: dict, answers: dict, keep: np.ndarray, rng: np.random.Generator) -> dict:
    """Every KT4 action row of the learners kept, as flat arrays sorted by (user, time)."""
    s = {k: v[keep] for k, v in steps.items()}
    a_keep = keep[answers["step_row"]]
    rows_kept = np.cumsum(keep) - 1                       # old step row -> kept step row
    a = {k: v[a_keep] for k, v in answers.items()}
    a_row = rows_kept[a["step_row"]]
    user, src, plat, bundle = s["user"], s["source"], s["platform"], s["bundle"]
    bundle_num = bundle + 1
    blocks = []

    # lectures between bundles: enter l, play/pause video, quit l
    lec = np.flatnonzero(s["has_lecture"])
    l_num, l_src = s["lecture"][lec] + 1, s["lecture_source"][lec]
    l_enter, l_ms = s["lecture_enter"][lec], s["lecture_ms"][lec]
    blocks.append(_block(user[lec], l_enter, ENTER, LECTURE, l_num, l_src, plat[lec]))
    blocks.append(_block(user[lec], l_enter + l_ms, QUIT, LECTURE, l_num, l_src, plat[lec]))
    group, rank, time = _spread(rng, l_enter, l_ms, 2 * s["lecture_pairs"][lec])
    play, cursor = _media_cursor(group, rank, time, resume=True)
    r = lec[group]
    blocks.append(_block(user[r], time, np.where(play, PLAY_VIDEO, PAUSE_VIDEO), LECTURE, l_num[group], l_src[group],
                         plat[r], cursor))

    # the bundle: enter b, audio pairs, then per question its erase/respond events, submit b
    blocks.append(_block(user, s["enter"], ENTER, BUNDLE, bundle_num, src, plat))
    blocks.append(_block(user, s["enter"] + s["bundle_ms"], SUBMIT, BUNDLE, bundle_num, src, plat))
    per_answer = a["n_erase"] + a["n_extra"] + 1
    answer_of, rank = _ragged(per_answer)
    final = rank == per_answer[answer_of] - 1
    is_erase = rank < a["n_erase"][answer_of]
    shuffle = np.lexsort((np.where(final, 2.0, rng.random(len(rank))), answer_of))   # final respond stays last
    is_erase = is_erase[shuffle]
    choices, key = cat.q_choices[a["question"]][answer_of], a["answer"][answer_of]
    other = (key + 1 + (rng.random(len(rank)) * (choices - 1)).astype(int)) % choices
    letter = np.where(final, key, other)
    q_events = np.bincount(a_row, weights=per_answer, minlength=len(user)).astype(int)
    audio = 2 * s["audio_pairs"]
    group, rank_in_bundle, time = _spread(rng, s["enter"], s["bundle_ms"], audio + q_events)
    on_audio = rank_in_bundle < audio[group]
    # audio first (listen, then answer); the question events follow in order
    g_audio = group[on_audio]
    play, cursor = _media_cursor(g_audio, rank_in_bundle[on_audio], time[on_audio], resume=False)
    blocks.append(_block(user[g_audio], time[on_audio], np.where(play, PLAY_AUDIO, PAUSE_AUDIO), BUNDLE,
                         bundle_num[g_audio], src[g_audio], plat[g_audio], cursor))
    g_q = group[~on_audio]
    blocks.append(_block(user[g_q], time[~on_audio], np.where(is_erase, ERASE, RESPOND), QUESTION,
                         a["question"][answer_of] + 1, src[g_q], plat[g_q], answer=letter))

    # the explanation: enter e, audio replays of the bundle, quit e
    ex = np.flatnonzero(s["read"])
    e_enter, e_ms = s["explain_enter"][ex], s["explain_ms"][ex]
    blocks.append(_block(user[ex], e_enter, ENTER, EXPLANATION, bundle_num[ex], src[ex], plat[ex]))
    blocks.append(_block(user[ex], e_enter + e_ms, QUIT, EXPLANATION, bundle_num[ex], src[ex], plat[ex]))
    group, rank, time = _spread(rng, e_enter, e_ms, 2 * s["explain_pairs"][ex])
    play, cursor = _media_cursor(group, rank, time, resume=False)
    r = ex[group]
    blocks.append(_block(user[r], time, np.where(play, PLAY_AUDIO, PAUSE_AUDIO), BUNDLE, bundle_num[r], src[r], plat[r],
                         cursor))

    events = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    order = np.lexsort((events["time"], events["user"]))
    events = {k: v[order] for k, v in events.items()}
    same_user = events["user"][1:] == events["user"][:-1]
    if np.any(same_user & (np.diff(events["time"]) <= 0)):
        raise RuntimeError("EdNet sample: KT4 timestamps are not strictly increasing (simulator bug)")
    return events


# ------------------------------------------------------------------ writing

def _tags_text(tags: np.ndarray) -> list[str]:
    return [";".join(str(t) for t in row if t > 0) or "-1" for row in tags.tolist()]


def _questions_csv(cat: Catalogue) -> str:
    lines = [QUESTIONS_HEADER]
    for q, (b, key, part, tags, deployed) in enumerate(
        zip(cat.q_bundle.tolist(), cat.q_key.tolist(), cat.q_part.tolist(), _tags_text(cat.q_tags), cat.q_deployed.tolist())
    ):
        lines.append(f"q{q + 1},b{b + 1},e{b + 1},{LETTERS[key]},{part},{tags},{deployed}")
    return "\n".join(lines) + "\n"


def _lectures_csv(cat: Catalogue) -> str:
    lines = [LECTURES_HEADER]
    for i, (part, tags, video, deployed) in enumerate(
        zip(cat.l_part.tolist(), _tags_text(cat.l_tag[:, None]), cat.l_video_ms.tolist(), cat.l_deployed.tolist())
    ):
        lines.append(f"l{i + 1},{part},{tags},{video},{deployed}")
    return "\n".join(lines) + "\n"


def _write_per_user(folder: Path, header: str, users: np.ndarray, lines: list[str]) -> None:
    """One file u<N>.csv per learner; `users` (sorted) gives each line's learner index."""
    if len(users) == 0:
        return
    bounds = np.flatnonzero(np.diff(users)) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, len(users)]
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        (folder / f"u{users[lo] + 1}.csv").write_text(header + "\n" + "\n".join(lines[lo:hi]) + "\n")


def _write_kt1(folder: Path, steps: dict, answers: dict) -> None:
    row = answers["step_row"]
    timestamp = steps["enter"][row].tolist()
    solving_id = (steps["step"][row] + 1).tolist()
    elapsed = (steps["bundle_ms"] // steps["n_q"])[row].tolist()
    letter = [LETTERS[x] for x in answers["answer"].tolist()]
    lines = [f"{t},{s},q{q + 1},{x},{e}" for t, s, q, x, e in
             zip(timestamp, solving_id, answers["question"].tolist(), letter, elapsed)]
    _write_per_user(folder, KT1_HEADER, steps["user"][row], lines)


def _write_kt4(folder: Path, events: dict) -> None:
    cursor = ["" if c < 0 else str(c) for c in events["cursor"].tolist()]
    answer = ["" if x < 0 else LETTERS[x] for x in events["answer"].tolist()]
    lines = [
        f"{t},{ACTIONS[a]},{PREFIXES[p]}{n},{c},{SOURCES[s]},{x},{PLATFORMS[f]}"
        for t, a, p, n, c, s, x, f in zip(
            events["time"].tolist(), events["action"].tolist(), events["prefix"].tolist(), events["number"].tolist(),
            cursor, events["source"].tolist(), answer, events["platform"].tolist())
    ]
    _write_per_user(folder, KT4_HEADER, events["user"], lines)


def _write_ground_truth(path: Path, steps: dict, answers: dict) -> None:
    row = answers["step_row"]
    table = pa.table({
        "user": pa.array([f"u{u + 1}" for u in steps["user"][row].tolist()], pa.string()),
        "timestamp": pa.array(steps["enter"][row], pa.int64()),
        "question_id": pa.array([f"q{q + 1}" for q in answers["question"].tolist()], pa.string()),
        "p_correct": pa.array(answers["p"], pa.float64()),
        "logit_item": pa.array(answers["logit_item"], pa.float64()),
        "logit_content": pa.array(answers["logit_content"], pa.float64()),
        "logit_behavior": pa.array(answers["logit_behavior"], pa.float64()),
        "logit_base": pa.array(answers["logit_base"], pa.float64()),
        "correct": pa.array(answers["correct"].astype(np.int8), pa.int8()),
    })
    pq.write_table(table, path)


def _auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged: equals sklearn's roc_auc_score."""
    values, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    rank = (np.cumsum(counts) - (counts - 1) / 2)[inverse]      # 1-based, mean rank of each tie group
    n_pos = int(label.sum())
    n_neg = len(label) - n_pos
    return float((rank[label.astype(bool)].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _summary(answers: dict, in_kt4: np.ndarray, kt4_rows: int) -> dict:
    """Sizes and the signal each component carries (std of its logit); Bayes AUC on all answers."""
    correct = answers["correct"]
    both = 0 < correct.sum() < len(correct)
    return {
        "answers": int(len(correct)),
        "kt4_learners": int(in_kt4.sum()),
        "kt4_rows": kt4_rows,
        "correct_rate": round(float(correct.mean()), 4),
        "bayes_auc": round(_auc(correct, answers["p"]), 4) if both else None,
        "logit_std": {k: round(float(answers[f"logit_{k}"].std()), 4) for k in ("item", "content", "behavior", "base")},
    }
