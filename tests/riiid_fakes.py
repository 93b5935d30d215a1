"""Generated Riiid files with the original Kaggle headers (tests and benchmarks/riiid_bench.py).

`write_riiid(folder, n_users, containers_per_user)` writes questions.csv, lectures.csv and
train.csv laid out like the competition's: per learner, a sequence of task containers
(a bundle of 1..5 questions shown together, or one lecture), timestamps in ms since the
learner's first event, and on each question container the prior_* values of the
learner's previous question container (empty on the first). Rows of a learner are
contiguous unless `interleave` shuffles blocks of rows between learners.
Returns the per-container truth (a pandas frame) for checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TRAIN_HEADER = ("row_id,timestamp,user_id,content_id,content_type_id,task_container_id,user_answer,"
                "answered_correctly,prior_question_elapsed_time,prior_question_had_explanation")
QUESTIONS_HEADER = "question_id,bundle_id,correct_answer,part,tags"
LECTURES_HEADER = "lecture_id,tag,part,type_of"


def write_contents(folder: Path, *, n_bundles: int = 300, n_lectures: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 2, 3, 4, 5], p=[0.7, 0.1, 0.1, 0.05, 0.05], size=n_bundles)
    qid = np.arange(sizes.sum())
    bundle = np.repeat(np.cumsum(sizes) - sizes, sizes)  # Riiid: bundle_id = its first question_id
    n_tags = rng.integers(0, 4, len(qid))
    tags = [" ".join(str(t) for t in sorted(rng.choice(188, k, replace=False))) for k in n_tags]
    questions = pd.DataFrame({"question_id": qid, "bundle_id": bundle, "correct_answer": rng.integers(0, 4, len(qid)),
                              "part": rng.integers(1, 8, len(qid)), "tags": tags})
    lectures = pd.DataFrame({"lecture_id": np.sort(rng.choice(40_000, n_lectures, replace=False)),
                             "tag": rng.integers(0, 188, n_lectures), "part": rng.integers(1, 8, n_lectures),
                             "type_of": rng.choice(["concept", "solving question", "intention"], n_lectures)})
    folder.mkdir(parents=True, exist_ok=True)
    questions.to_csv(folder / "questions.csv", index=False)
    lectures.to_csv(folder / "lectures.csv", index=False)
    return questions, lectures


def write_riiid(folder: Path, n_users: int = 30, containers_per_user: int = 40, *, seed: int = 0,
                lecture_rate: float = 0.05, interleave: bool = False, n_bundles: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    questions, lectures = write_contents(folder, n_bundles=n_bundles, seed=seed)
    bundle_ids = questions["bundle_id"].unique()
    bundle_first = questions.groupby("bundle_id").indices
    starts = np.array([bundle_first[b][0] for b in bundle_ids])
    sizes = np.array([len(bundle_first[b]) for b in bundle_ids])

    users = np.sort(rng.choice(2_000_000_000, n_users, replace=False)) if n_users else np.zeros(0, np.int64)
    n_ev = n_users * containers_per_user
    ev_user = np.repeat(users, containers_per_user)
    ev_container = np.tile(np.arange(containers_per_user), n_users)
    is_lecture = rng.random(n_ev) < lecture_rate
    ev_bundle = rng.integers(0, len(bundle_ids), n_ev)
    ev_rows = np.where(is_lecture, 1, sizes[ev_bundle])
    ev_elapsed = rng.integers(3, 60, n_ev) * 1000          # ms per question of the container
    ev_explained = rng.random(n_ev) < 0.6
    gap = ev_elapsed * ev_rows + rng.integers(1_000, 300_000, n_ev)
    gap[ev_container == 0] = 0
    cum = np.cumsum(gap)
    ev_ts = cum - np.repeat(cum[ev_container == 0] if n_ev else cum, containers_per_user)
    # prior_*: the learner's previous QUESTION container's elapsed and explanation
    ev_index = np.arange(n_ev)
    last_q = np.where(~is_lecture, ev_index, -1)
    last_q = np.maximum.accumulate(last_q) if n_ev else last_q
    prev_q = np.concatenate([[-1], last_q[:-1]]) if n_ev else last_q
    user_first = np.repeat(np.arange(n_users) * containers_per_user, containers_per_user)
    has_prev = prev_q >= user_first
    prior_el = np.where(has_prev, ev_elapsed[np.maximum(prev_q, 0)], -1)
    prior_ex = np.where(has_prev, ev_explained[np.maximum(prev_q, 0)], False)

    # rows
    r_ev = np.repeat(ev_index, ev_rows)
    within = np.arange(len(r_ev)) - np.repeat(np.cumsum(ev_rows) - ev_rows, ev_rows)
    r_lecture = is_lecture[r_ev]
    r_question = starts[ev_bundle[r_ev]] + within
    r_lecture_id = lectures["lecture_id"].to_numpy()[rng.integers(0, len(lectures), len(r_ev))]
    content = np.where(r_lecture, r_lecture_id, r_question)
    correct_answer = questions["correct_answer"].to_numpy()[np.where(r_lecture, 0, r_question)]
    right = rng.random(len(r_ev)) < 0.65
    user_answer = np.where(right, correct_answer, (correct_answer + rng.integers(1, 4, len(r_ev))) % 4)
    q_first = (~is_lecture) & ~has_prev
    elapsed = np.where(r_lecture | q_first[r_ev], np.nan, prior_el[r_ev].astype(float))
    explained = np.where(r_lecture, "False", np.where(q_first[r_ev], "", np.where(prior_ex[r_ev], "True", "False")))
    train = pd.DataFrame({
        "row_id": np.arange(len(r_ev)), "timestamp": ev_ts[r_ev], "user_id": ev_user[r_ev], "content_id": content,
        "content_type_id": r_lecture.astype(int), "task_container_id": ev_container[r_ev],
        "user_answer": np.where(r_lecture, -1, user_answer), "answered_correctly": np.where(r_lecture, -1, right.astype(int)),
        "prior_question_elapsed_time": elapsed, "prior_question_had_explanation": explained,
    })
    if interleave and len(train):
        blocks = np.arange(len(train)) // 7
        order = np.argsort(rng.permutation(blocks.max() + 1)[blocks], kind="stable")
        train = train.iloc[order].reset_index(drop=True)
        train["row_id"] = np.arange(len(train))
    train.to_csv(folder / "train.csv", index=False)
    return pd.DataFrame({"user_id": ev_user, "task_container_id": ev_container, "timestamp": ev_ts,
                         "lecture": is_lecture, "rows": ev_rows, "elapsed_per_question": ev_elapsed})
