"""The built-in EdNet sample's model: the generative story, its constants and every parameter.

The simulator is four files: this one (what is simulated: the story below, `SimParams`),
ednet_simulate.py (contents, learners, answers bundle by bundle), ednet_events.py (the
KT4 action rows of the simulated steps) and ednet.py (`write_ednet_sample`: the files).

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

from dataclasses import dataclass

GENERATOR_VERSION = 2   # 2: latents a history can reveal (see "Why these sizes")

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
