"""Checked Riiid rows of complete learners -> the EDNET_INTERACTIONS table.

A learner's rows are ordered by (timestamp, line). A *container* is one showing of a task
container: consecutive question rows of the learner with the same timestamp and
task_container_id (Riiid's questions of one bundle, shown together). It is EdNet's bundle
instance: the unit of lag, of lectures, and of the shifted prior_* values:

    elapsed_ms  a container's prior_question_elapsed_time describes the learner's PREVIOUS
                question container (Riiid: the average time per question of that bundle),
                so it is written on every question of the previous container; the last
                container of a learner gets null (its time is never reported), and so does a
                container whose successor carries no value
    lag_ms      shown - end of the previous container, end = its shown + elapsed_ms x its
                number of questions (EdNet's KT1 rule); >= 0; null for the first container
                or when the previous container's elapsed_ms is null
    lectures    lecture rows (content_type_id 1) between the previous question container
                and this one, deduplicated, ordered by last entry (as EdNet's KT3+);
                lectures after a learner's last question container feed nothing (counted
                in "skipped": lecture_without_next_question)
    lecture_ms  null: Riiid has no lecture durations

Markers (question rows with a bad payload, riiid_rows.py) keep their container in the
sequence but write no row; a container of markers only writes nothing but still passes
its prior_* values back. answer_changes, explanation_ms (Riiid only says whether an
explanation was seen, not for how long), media_plays, platform and source are null;
kt_level is 1 (Riiid is KT1 plus lecture rows).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dsrsd_cli.data.ednet_arrays import lex_order, ragged_take, run_starts, to_arrow
from dsrsd_cli.data.ednet_format import NULL
from dsrsd_cli.data.riiid_contents import RiiidContents
from dsrsd_cli.data.riiid_rows import Rows
from dsrsd_cli.data.schema import EDNET_INTERACTIONS


def assemble(rows: Rows, contents: RiiidContents, skipped: Counter,
             rank: np.ndarray | None = None) -> tuple[pa.Table, np.ndarray]:
    """Rows holding every row of their learners -> (interactions sorted by (learner,
    timestamp, line), the Riiid ids of the learners written, in output order). Learners
    come in the order of `rank` (one number per row, the same for a learner's rows; e.g.
    the order of first appearance), by default by user_id."""
    o = lex_order(rows.user if rank is None else rank, rows.ts, rows.line)
    if o is not None:
        rows = rows.take(o)
    n = len(rows)
    user, ts = rows.user, rows.ts

    # containers: runs of question rows (answers and markers) with one (user, timestamp, container)
    qi = np.flatnonzero(~rows.lecture)
    start = run_starts(user[qi], ts[qi], rows.container[qi])
    q_inst = np.cumsum(start) - 1                      # (Nq,) container of each question row
    first = qi[start]                                  # (I,) row of each container's first question
    n_inst = len(first)
    i_user, shown = user[first], ts[first]
    n_questions = np.bincount(q_inst, minlength=n_inst)
    prior = np.full(n_inst, NULL, np.int64)            # the prior_* value each container carries
    has = rows.elapsed[qi] != NULL
    prior[q_inst[has]] = rows.elapsed[qi][has]

    # the shift: a container's own elapsed_ms is the value carried by the learner's next one
    same_next = np.zeros(n_inst, bool)
    same_next[:-1] = i_user[1:] == i_user[:-1]
    elapsed = np.full(n_inst, NULL, np.int64)
    elapsed[:-1] = np.where(same_next[:-1], prior[1:], NULL)
    end = np.where(elapsed != NULL, shown + elapsed * n_questions, NULL)
    lag = np.full(n_inst, NULL, np.int64)
    if n_inst > 1:
        ok = same_next[:-1] & (end[:-1] != NULL)
        lag[1:] = np.where(ok, np.maximum(shown[1:] - end[:-1], 0), NULL)

    # lectures feed the learner's next question container
    starts = np.zeros(n, np.int64)
    starts[first] = 1
    before = np.cumsum(starts) - starts                # containers starting before each row
    li = np.flatnonzero(rows.lecture)
    l_next = before[li]
    ok = l_next < n_inst
    ok[ok] &= i_user[l_next[ok]] == user[li[ok]]
    if (~ok).any():
        skipped["lecture_without_next_question"] += int((~ok).sum())
    l_next, l_item = l_next[ok], rows.item[li[ok]]
    key = l_next * (len(contents.lectures) + 1) + l_item
    last_of = np.unique(key[::-1], return_index=True)[1]   # one entry per lecture, by its last entry
    keep = np.sort(len(key) - 1 - last_of)
    l_offsets = np.searchsorted(l_next[keep], np.arange(n_inst + 1)).astype(np.int64)
    l_values = l_item[keep].astype(np.int32)

    # one row per answer
    inst_of_row = np.full(n, -1, np.int64)
    inst_of_row[qi] = q_inst
    a = np.flatnonzero(rows.answer)
    a_inst, a_user = inst_of_row[a], user[a]
    markers_only = np.bincount(a_inst, minlength=n_inst) == 0
    if markers_only.any():
        skipped["container_without_valid_answer"] += int(markers_only.sum())
    m = len(a)
    user_start = np.flatnonzero(run_starts(a_user))
    position = np.arange(m) - np.repeat(user_start, np.diff(np.append(user_start, m)))
    users = a_user[user_start]
    names = pc.binary_join_element_wise("u", pc.cast(pa.array(users, pa.int64()), pa.string()), "")
    user_code = np.repeat(np.arange(len(users)), np.diff(np.append(user_start, m)))
    q = rows.item[a]
    offsets, values = ragged_take(l_offsets, l_values, a_inst)
    columns = {
        "user": names.take(to_arrow(user_code, np.int32)),
        "position": to_arrow(position, np.int32),
        "timestamp": to_arrow(shown[a_inst], np.int64),
        "question": to_arrow(q, np.int32),
        "bundle": to_arrow(contents.q_bundle[q], np.int32),
        "part": to_arrow(contents.q_part[q], np.int8),
        "tags": contents.q_tags.take(to_arrow(q, np.int32)),
        "correct": to_arrow(rows.correct[a], np.int8),
        "elapsed_ms": to_arrow(elapsed[a_inst], np.int64, elapsed[a_inst] == NULL),
        "lag_ms": to_arrow(lag[a_inst], np.int64, lag[a_inst] == NULL),
        "answer_changes": pa.nulls(m, pa.int16()),
        "explanation_ms": pa.nulls(m, pa.int64()),
        "lectures": pa.ListArray.from_arrays(to_arrow(offsets, np.int32), to_arrow(values, np.int32)),
        "lecture_ms": pa.nulls(m, pa.int64()),
        "media_plays": pa.nulls(m, pa.int16()),
        "platform": pa.nulls(m, pa.int8()),
        "source": pa.nulls(m, pa.int8()),
        "kt_level": to_arrow(np.ones(m, np.int8), np.int8),
    }
    return pa.table(columns, schema=EDNET_INTERACTIONS), users
