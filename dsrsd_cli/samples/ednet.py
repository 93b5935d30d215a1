"""The built-in EdNet sample: raw files in the real formats, written by a documented simulator.

`dsrsd prepare --dataset ednet` without `--raw` calls `write_ednet_sample`, then parses its
output with the same parser as real data: `questions.csv`, `lectures.csv`, `KT1/u<N>.csv`
for every learner and `KT4/u<N>.csv` for a `kt4_fraction` of them, `ground_truth.parquet`
(the true probability of every answer) and `sample_params.json` (everything needed to
regenerate the folder). What is simulated, and every parameter: ednet_model.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_dir
from dsrsd_cli.samples.ednet_events import kt4_events
from dsrsd_cli.samples.ednet_model import (
    ACTIONS,
    GENERATOR_VERSION,
    LETTERS,
    PARTS,
    PLATFORMS,
    PREFIXES,
    SOURCES,
    SimParams,
)
from dsrsd_cli.samples.ednet_simulate import Catalogue, draw_learners, learner_rows, make_catalogue, simulate

KT1_HEADER = "timestamp,solving_id,question_id,user_answer,elapsed_time"
KT4_HEADER = "timestamp,action_type,item_id,cursor_time,source,user_answer,platform"
QUESTIONS_HEADER = "question_id,bundle_id,explanation_id,correct_answer,part,tags,deployed_at"
LECTURES_HEADER = "lecture_id,part,tags,video_length,deployed_at"
CHUNK_LEARNERS = 500   # learners whose KT1/KT4 files are built at once


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

    cat = make_catalogue(sim, rng_contents)
    lrn = draw_learners(sim, n_learners, rng_learners)
    steps, answers = simulate(cat, lrn, sim, strengths, rng_steps)
    in_kt4 = np.zeros(n_learners, bool)
    in_kt4[rng_events.permutation(n_learners)[: round(kt4_fraction * n_learners)]] = True

    params = {
        "generator": "dsrsd_cli.samples.ednet",
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
            chunk_steps, chunk_answers = learner_rows(steps, answers, first, first + CHUNK_LEARNERS)
            _write_kt1(tmp / "KT1", chunk_steps, chunk_answers)
            events = kt4_events(cat, chunk_steps, chunk_answers, in_kt4[chunk_steps["user"]], rng_events)
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
