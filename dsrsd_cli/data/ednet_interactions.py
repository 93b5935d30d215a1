"""Checked EdNet rows -> interactions: one row per answered question with its features.

A bundle instance (`Instances`) is one showing of a bundle to a learner: the unit of
lag and of the lecture/media/platform/source features its questions share. KT1 answers
and action logs (KT2..KT4) give rows and instances each their own way (`kt1_rows`,
`action_rows`); a learner in both gets one history (`merge_kt1`); `assemble` computes
the lag and writes the EDNET_INTERACTIONS table. The row definitions are in ednet.py's
docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dsrsd_cli.data.ednet_arrays import (
    group_first_last,
    index_of,
    lex_order,
    lookup,
    ragged_take,
    run_starts,
    to_arrow,
)
from dsrsd_cli.data.ednet_format import (
    BUNDLE,
    ENTER,
    ERASE,
    EXPLANATION,
    LECTURE,
    NULL,
    PLAY,
    QUESTION,
    QUIT,
    RESPOND,
    SUBMIT,
)
from dsrsd_cli.data.ednet_rows import Batch, Parsed, sort_by_time
from dsrsd_cli.data.schema import EDNET_INTERACTIONS

# A KT1 bundle matches an action-log bundle when its timestamp lies within the log's
# enter..submit window widened by this much (the public KT1 timestamps sit a few
# seconds before the KT4 submit; clocks of the two exports differ slightly).
MATCH_TOLERANCE_MS = 10_000


# ---------------------------------------------------------------- rows and bundle instances
@dataclass
class Instances:
    """Bundle instances (one showing of a bundle to a learner): the unit of lag and of
    the lecture/media/platform/source features shared by its questions."""

    user: np.ndarray
    shown: np.ndarray
    end: np.ndarray          # submit (KT2+) or KT1 timestamp + elapsed; NULL if never submitted
    bundle: np.ndarray
    lecture_offsets: np.ndarray  # (I+1,) into lecture_values
    lecture_values: np.ndarray
    lecture_ms: np.ndarray
    media_plays: np.ndarray
    platform: np.ndarray
    source: np.ndarray       # index into the batch's source names; NULL = none
    level: np.ndarray

    @staticmethod
    def concat(parts: list["Instances"]) -> "Instances":
        parts = [p for p in parts if p is not None]
        offsets, shift = [np.zeros(1, np.int64)], 0
        for p in parts:
            offsets.append(p.lecture_offsets[1:] + shift)
            shift += len(p.lecture_values)
        out = {f: np.concatenate([getattr(p, f) for p in parts]) for f in
               ("user", "shown", "end", "bundle", "lecture_values", "lecture_ms", "media_plays", "platform", "source", "level")}
        return Instances(lecture_offsets=np.concatenate(offsets), **out)


def kt1_rows(batch: Batch, parsed: Parsed) -> tuple[dict, Instances]:
    """KT1 answers -> rows + bundle instances. An instance is a run of rows with one
    solving_id; a question seen again inside the run starts a new one (a re-attempt)."""
    c = batch.contents
    p = sort_by_time(parsed)
    u, ts, sid, q = p.user, p.cols["timestamp"], p.cols["solving_id"], p.cols["question"]
    run = np.cumsum(run_starts(u, sid)) - 1
    # occurrence number of each question inside its run (0 for the first showing)
    occ = np.zeros(len(q), np.int64)
    multi = np.flatnonzero(np.bincount(run, minlength=run.max() + 1 if len(run) else 0)[run] > 1)
    if len(multi):
        key = run[multi] * (len(c.q_bundle) + 1) + q[multi]
        order = np.argsort(key, kind="stable")
        k = key[order]
        group_start = np.flatnonzero(run_starts(k))
        rank = np.arange(len(k)) - np.repeat(group_start, np.diff(np.append(group_start, len(k))))
        occ[multi[order]] = rank
    inst = np.cumsum(run_starts(run, occ)) - 1
    first = np.flatnonzero(run_starts(inst))
    elapsed = p.cols["elapsed_time"]
    n_inst = len(first)
    shown = ts[first]
    end = shown + np.bincount(inst, weights=elapsed, minlength=n_inst).astype(np.int64)
    empty = np.zeros(n_inst, np.int64)
    instances = Instances(
        user=u[first], shown=shown, end=end, bundle=c.q_bundle[q[first]],
        lecture_offsets=np.zeros(n_inst + 1, np.int64), lecture_values=np.zeros(0, np.int32),
        lecture_ms=empty + NULL, media_plays=empty + NULL, platform=empty + NULL, source=empty + NULL,
        level=np.ones(n_inst, np.int8),
    )
    rows = {
        "user": u, "inst": inst, "order": ts, "question": q,
        "correct": (p.cols["answer"] == c.q_correct[q]).astype(np.int8),
        "elapsed_ms": elapsed, "answer_changes": np.full(len(q), NULL, np.int64),
        "explanation_ms": np.full(len(q), NULL, np.int64), "kt_level": np.ones(len(q), np.int8),
        "answer": p.cols["answer"],
    }
    return rows, instances


def action_rows(batch: Batch, parsed: Parsed, level: np.ndarray) -> tuple[dict, Instances, tuple]:
    """KT2..KT4 action logs -> one row per answered question, the bundle instances, and
    the explanation times per (instance, explanation). `level` (per learner) decides which
    features exist: KT3+ explanations and lectures, KT4 media plays."""
    c = batch.contents
    p = sort_by_time(parsed)
    u, ts, act, kind, item = p.user, p.cols["timestamp"], p.cols["action"], p.cols["kind"], p.cols["item"]
    n = len(u)
    idx = np.arange(n)

    # Bundle instances: an `enter` of a bundle opens one; it lasts until the next one.
    is_enter_b = (act == ENTER) & (kind == BUNDLE)
    enter_pos = np.flatnonzero(is_enter_b)
    n_inst = len(enter_pos)
    count = np.cumsum(is_enter_b)
    inst = count - 1
    inst_user = u[enter_pos]
    valid = inst >= 0
    valid[valid] &= inst_user[inst[valid]] == u[valid]
    inst_c = np.where(valid, inst, 0)
    bundle = item[enter_pos]

    submit = valid & (act == SUBMIT) & (kind == BUNDLE)
    submit[submit] &= item[submit] == bundle[inst[submit]]
    submit_pos = np.full(n_inst, n, np.int64)           # n = never submitted
    s_rows = np.flatnonzero(submit)
    first_submit = np.unique(inst[s_rows], return_index=True)
    submit_pos[first_submit[0]] = s_rows[first_submit[1]]
    submitted = submit_pos < n
    answering = valid & (idx < submit_pos[inst_c])       # between enter and submit

    # Answers: responds to a question of the entered bundle; the last one counts.
    n_q = len(c.q_bundle)
    resp = answering & (act == RESPOND) & (kind == QUESTION)
    resp[resp] &= c.q_bundle[item[resp]] == bundle[inst[resp]]
    resp[resp] &= submitted[inst[resp]]
    r_rows = np.flatnonzero(resp)
    r_key = inst[r_rows] * n_q + item[r_rows]
    order, keys, first, last = group_first_last(r_key)
    a_inst, a_q = keys // n_q, keys % n_q
    a_answer = p.cols["answer"][r_rows[order[last]]]
    a_responds = last - first + 1
    a_order = ts[r_rows[order[first]]]
    erase = answering & (act == ERASE) & (kind == QUESTION)
    e_keys, e_counts = np.unique(inst[erase] * n_q + item[erase], return_counts=True)
    a_changes = a_responds - 1 + lookup(keys, e_keys, e_counts, 0)

    # Explanations read after the submit, before the next bundle (later re-reads are
    # left out: they happen after other answers and would leak into their predictions).
    n_e = c.n_explanations + 1
    expl = valid & (act == ENTER) & (kind == EXPLANATION) & (idx > submit_pos[inst_c])
    x_rows = np.flatnonzero(expl)
    x_keys, x_inv = np.unique(inst[x_rows] * n_e + item[x_rows], return_inverse=True)
    x_ms = np.bincount(x_inv, weights=_next_boundary_duration(u, ts, act, x_rows), minlength=len(x_keys)).astype(np.int64)
    a_expl = lookup(a_inst * n_e + c.q_explanation[a_q], x_keys, x_ms, 0)

    # Lectures entered since the previous bundle was shown belong to the next bundle.
    lect = (act == ENTER) & (kind == LECTURE)
    l_rows = np.flatnonzero(lect)
    l_next = count[l_rows]                                # index of the next bundle instance
    ok = l_next < n_inst
    ok[ok] &= inst_user[l_next[ok]] == u[l_rows[ok]]
    l_rows, l_next = l_rows[ok], l_next[ok]
    l_dur = _next_boundary_duration(u, ts, act, l_rows)
    lecture_ms = np.bincount(l_next, weights=l_dur, minlength=n_inst).astype(np.int64)
    # one entry per lecture, ordered by its last entry (types.py: the last lecture matters)
    l_item = item[l_rows]
    l_key = l_next.astype(np.int64) * (c.n_lectures + 1) + l_item
    last_of = np.unique(l_key[::-1], return_index=True)[1]
    keep = np.sort(len(l_key) - 1 - last_of)
    lecture_values = l_item[keep].astype(np.int32)
    lecture_offsets = np.searchsorted(l_next[keep], np.arange(n_inst + 1)).astype(np.int64)

    play = answering & (act == PLAY)
    media = np.bincount(inst[play], minlength=n_inst).astype(np.int64)

    s_at = np.minimum(submit_pos, n - 1) if n else submit_pos
    platform = np.where(submitted & (p.cols["platform"][s_at] > 0), p.cols["platform"][s_at], p.cols["platform"][enter_pos])
    inst_level = level[inst_user] if n_inst else np.zeros(0, np.int8)
    instances = Instances(
        user=inst_user, shown=ts[enter_pos], end=np.where(submitted, ts[s_at], NULL), bundle=bundle,
        lecture_offsets=lecture_offsets, lecture_values=lecture_values, lecture_ms=lecture_ms,
        media_plays=media, platform=np.where(platform > 0, platform, NULL), source=p.cols["source"][enter_pos],
        level=inst_level,
    )
    answered = np.bincount(a_inst, minlength=n_inst) > 0
    batch.skipped["unanswered_bundle"] += int((submitted & ~answered).sum())
    batch.skipped["unsubmitted_bundle"] += int((~submitted).sum())

    a_level = inst_level[a_inst]
    rows = {
        "user": inst_user[a_inst], "inst": a_inst, "order": a_order, "question": a_q.astype(np.int32),
        "correct": (a_answer == c.q_correct[a_q]).astype(np.int8),
        "elapsed_ms": ts[s_at[a_inst]] - ts[enter_pos[a_inst]],
        "answer_changes": a_changes.astype(np.int64),
        "explanation_ms": np.where(a_level >= 3, a_expl, NULL),
        "kt_level": a_level.astype(np.int8),
        "answer": a_answer,
    }
    return rows, instances, (x_keys, x_ms)


def _next_boundary_duration(u: np.ndarray, ts: np.ndarray, act: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """How long an explanation/lecture entered at `rows` stayed open: until the next enter,
    quit, respond or submit of the learner (0 if the log ends first)."""
    boundary = np.flatnonzero(np.isin(act, (ENTER, QUIT, RESPOND, SUBMIT)))
    nxt = np.searchsorted(boundary, rows, side="right")
    ok = nxt < len(boundary)
    j = boundary[np.minimum(nxt, len(boundary) - 1)] if len(boundary) else rows
    ok &= u[j] == u[rows]
    return np.where(ok, ts[j] - ts[rows], 0)


def merge_kt1(batch: Batch, kt1: tuple, act: tuple, both: np.ndarray) -> tuple[dict, Instances]:
    """One history for learners with KT1 and an action log (`both`, per learner).

    A KT1 bundle instance matches the log's instance of the same learner and bundle whose
    enter..submit window (widened by MATCH_TOLERANCE_MS) holds the KT1 timestamp. Matched
    questions keep the log's row (KT1's answer is checked against it); a KT1 answer the
    log lacks joins the matched instance with its features; unmatched KT1 instances stay
    KT1 rows."""
    (k_rows, k_inst), (a_rows, a_inst, explanations) = kt1, act
    n_a, nb = len(a_inst.user), batch.contents.n_bundles + 1
    k_pair_id = k_inst.user.astype(np.int64) * nb + k_inst.bundle
    a_pair_id = a_inst.user.astype(np.int64) * nb + a_inst.bundle
    pairs, inv = np.unique(np.concatenate([a_pair_id, k_pair_id]), return_inverse=True)
    a_pair, k_pair = inv[:n_a], inv[n_a:]
    # search key (pair, time): the log instance with the latest enter <= KT1 time + tolerance
    t0 = min(a_inst.shown.min(initial=0), k_inst.shown.min(initial=0)) - MATCH_TOLERANCE_MS
    a_key = (a_pair << 43) | (a_inst.shown - t0)  # times < MAX_TIMESTAMP + tolerance < 2**43
    a_order = np.argsort(a_key, kind="stable")
    j = np.searchsorted(a_key[a_order], (k_pair << 43) | (k_inst.shown + MATCH_TOLERANCE_MS - t0), side="right") - 1
    cand = a_order[np.maximum(j, 0)] if n_a else np.zeros(len(j), np.int64)
    match = (j >= 0) & both[k_inst.user] & (n_a > 0)
    match[match] &= (a_pair[cand[match]] == k_pair[match]) & (a_inst.end[cand[match]] != NULL)
    match[match] &= k_inst.shown[match] <= a_inst.end[cand[match]] + MATCH_TOLERANCE_MS
    # one KT1 instance per log instance (a later KT1 re-showing stays a KT1 row)
    m = np.flatnonzero(match)
    match[:] = False
    match[m[np.unique(cand[m], return_index=True)[1]]] = True
    target = np.where(match, cand, -1)
    batch.merge["kt1_bundles_matched"] += int(match.sum())
    batch.merge["kt1_bundles_unmatched"] += int((both[k_inst.user] & ~match).sum())

    n_q = len(batch.contents.q_bundle)
    row_target = target[k_rows["inst"]]
    in_matched = row_target >= 0
    a_row = index_of(row_target.astype(np.int64) * n_q + k_rows["question"],
                      a_rows["inst"].astype(np.int64) * n_q + a_rows["question"])
    found = in_matched & (a_row >= 0)
    agree = found & (a_rows["answer"][a_row] == k_rows["answer"])
    batch.merge["answers_agree"] += int(agree.sum())
    batch.merge["answers_disagree"] += int((found & ~agree).sum())
    filled = in_matched & ~found
    batch.merge["kt1_answers_filled"] += int(filled.sum())

    kt1_only = {k: v[~in_matched] for k, v in k_rows.items()}
    kt1_only["inst"] = (np.cumsum(~match) - 1 + n_a)[kt1_only["inst"]]  # after the log's instances
    fill = {k: v[filled] for k, v in k_rows.items()}
    t = row_target[filled]
    level = a_inst.level[t]
    e_keys, e_ms = explanations
    n_e = batch.contents.n_explanations + 1
    expl = lookup(t.astype(np.int64) * n_e + batch.contents.q_explanation[fill["question"]], e_keys, e_ms, 0)
    fill.update(inst=t, kt_level=level, elapsed_ms=a_inst.end[t] - a_inst.shown[t],
                answer_changes=np.full(len(t), NULL, np.int64), explanation_ms=np.where(level >= 3, expl, NULL))
    parts = (a_rows, kt1_only, fill)
    rows = {k: np.concatenate([part[k] for part in parts]) for k in a_rows}
    return rows, Instances.concat([a_inst, _subset(k_inst, ~match)])


def _subset(i: Instances, keep: np.ndarray) -> Instances:
    offsets, values = ragged_take(i.lecture_offsets, i.lecture_values, np.flatnonzero(keep))
    return Instances(
        user=i.user[keep], shown=i.shown[keep], end=i.end[keep], bundle=i.bundle[keep],
        lecture_offsets=offsets, lecture_values=values, lecture_ms=i.lecture_ms[keep],
        media_plays=i.media_plays[keep], platform=i.platform[keep], source=i.source[keep], level=i.level[keep],
    )


# ---------------------------------------------------------------- the output table
def assemble(batch: Batch, rows: dict, inst: Instances, users: list[str]) -> pa.Table:
    """Rows + instances -> the EDNET_INTERACTIONS table (source as batch-local codes)."""
    c = batch.contents
    # lag: shown - end of the learner's latest submitted instance shown before it
    o = lex_order(inst.user, inst.shown)
    o = np.arange(len(inst.user)) if o is None else o
    done_at = np.where(inst.end[o] != NULL, np.arange(len(o)), -1)
    prev = np.concatenate([[-1], np.maximum.accumulate(done_at)[:-1]]) if len(o) else done_at
    ok = prev >= 0
    ok[ok] &= inst.user[o[prev[ok]]] == inst.user[o[ok]]
    prev_end = np.full(len(o), NULL, np.int64)
    prev_end[o[ok]] = inst.end[o[prev[ok]]]
    lag = np.where(prev_end != NULL, np.maximum(inst.shown - prev_end, 0), NULL)

    order = lex_order(rows["user"], inst.shown[rows["inst"]], rows["inst"], rows["order"], rows["question"])
    if order is not None:
        rows = {k: v[order] for k, v in rows.items()}
    r_inst, user, level, q = rows["inst"], rows["user"], rows["kt_level"], rows["question"]
    n = len(user)
    user_start = np.flatnonzero(run_starts(user))
    position = np.arange(n) - np.repeat(user_start, np.diff(np.append(user_start, n)))

    offsets, values = ragged_take(inst.lecture_offsets, inst.lecture_values, r_inst)
    lectures = pa.ListArray.from_arrays(to_arrow(offsets, np.int32), to_arrow(values, np.int32))
    if (level < 3).any():  # KT1/KT2 rows: the source has no lectures
        lectures = pa.ListArray.from_arrays(lectures.offsets, lectures.values, mask=pa.array(level < 3))
    columns = {
        "user": pa.array(users, pa.string()).take(to_arrow(user, np.int32)),
        "position": to_arrow(position, np.int32),
        "timestamp": to_arrow(inst.shown[r_inst], np.int64),
        "question": to_arrow(q, np.int32),
        "bundle": to_arrow(c.q_bundle[q], np.int32),
        "part": to_arrow(c.q_part[q], np.int8),
        "tags": c.q_tags.take(to_arrow(q, np.int32)),
        "correct": to_arrow(rows["correct"], np.int8),
        "elapsed_ms": to_arrow(rows["elapsed_ms"], np.int64, rows["elapsed_ms"] == NULL),
        "lag_ms": to_arrow(lag[r_inst], np.int64, lag[r_inst] == NULL),
        "answer_changes": to_arrow(rows["answer_changes"], np.int16, rows["answer_changes"] == NULL),
        "explanation_ms": to_arrow(rows["explanation_ms"], np.int64, rows["explanation_ms"] == NULL),
        "lectures": lectures,
        "lecture_ms": to_arrow(inst.lecture_ms[r_inst], np.int64, level < 3),
        "media_plays": to_arrow(inst.media_plays[r_inst], np.int16, level < 4),
        "platform": to_arrow(inst.platform[r_inst], np.int8, (level < 2) | (inst.platform[r_inst] == NULL)),
        "source": to_arrow(inst.source[r_inst], np.int8, (level < 2) | (inst.source[r_inst] == NULL)),
        "kt_level": to_arrow(level, np.int8),
    }
    return pa.table(columns, schema=EDNET_INTERACTIONS)
