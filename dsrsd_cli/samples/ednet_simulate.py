"""The EdNet sample simulated: contents, learners, then every learner's answers bundle by bundle.

`make_catalogue` draws the questions, bundles, tags and lectures; `draw_learners` the
learners' latents; `simulate` runs all learners at once, one bundle a step, and returns
the steps (one row per bundle answered) and the answers (one row per question), each
with the true probability and its logit terms. The story and the parameters are in
ednet_model.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dsrsd_cli.samples.ednet_model import (
    ADAPTIVE_OFFER,
    ARCHIVE,
    DAY_MS,
    DIAGNOSIS,
    MAX_QUESTIONS,
    N_CATEGORY_TAGS,
    PART_MIX,
    PARTS,
    PLATFORM_FOCUS,
    REVIEW,
    SECONDS_PER_QUESTION,
    SESSION_SOURCES,
    SPRINT,
    T_SPAN_MS,
    T_START_MS,
    SimParams,
)


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


def make_catalogue(sim: SimParams, rng: np.random.Generator) -> Catalogue:
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


def draw_learners(sim: SimParams, n: int, rng: np.random.Generator) -> Learners:
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


def simulate(cat: Catalogue, lrn: Learners, sim: SimParams, strengths: dict, rng: np.random.Generator):
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


def learner_rows(steps: dict, answers: dict, first: int, stop: int) -> tuple[dict, dict]:
    """The steps and answers of learners first..stop-1 (both tables are sorted by learner)."""
    lo, hi = np.searchsorted(steps["user"], [first, stop])
    a_lo, a_hi = np.searchsorted(answers["step_row"], [lo, hi])
    chunk_answers = {k: v[a_lo:a_hi] for k, v in answers.items()}
    chunk_answers["step_row"] = chunk_answers["step_row"] - lo
    return {k: v[lo:hi] for k, v in steps.items()}, chunk_answers
