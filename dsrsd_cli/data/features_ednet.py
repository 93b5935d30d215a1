"""Causal per-answer features of EdNet for the `gbdt` reference model.

Just over 500 lines on purpose: the custom-log features reuse the same running-sum cells
(`_earlier`, `_Answers`), which a second module would have to reach into.

    stats = fit_question_stats(prepared, cfg.data)                            # training learners only
    train = ednet_features(prepared, cfg.data, "train", None, out_of_fold=True)
    valid = ednet_features(prepared, cfg.data, "valid", stats)

One row per answer, sorted by (user, position). Every feature is known BEFORE the
answer's bundle is shown. A bundle is a run of consecutive answers of one learner with the
same `bundle` value (as in the loader); running statistics update at bundle ENDS, so an
answer never sees its own bundle's labels or post-answer behaviour (schema.BEHAVIOR_FEATURES
"post"), nor anything later. Question and tag difficulty come from the training learners
(`QuestionStats`); for the training rows themselves (`out_of_fold=True`) they come from the
other folds' learners only, so a row's own label never enters its own difficulty.

Everything is vectorised: running sums are cumulative sums over cells (group x bundle run)
sorted by (group, run), shifted by one cell so that a cell never sees itself. All summed
values are integers (counts, 0/1, milliseconds), so float64 sums are exact and an answer's
features are bit-identical whatever happens in later bundles.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data.feature_table import FeatureTable, assemble, rate
from dsrsd_cli.data.prepared import SPLITS, Prepared, learner_rank, rerun_prepare, split_mask, vocab_count
from dsrsd_cli.errors import BadInput

SMOOTHING = 5.0       # pseudo-answers at the prior in every smoothed accuracy
OOF_FOLDS = 5         # learner-level folds of the out-of-fold difficulty
OOF_SEED = 7919       # learner_rank seed of those folds (independent of the prepared splits' folds)
_CLIP = 1e-6          # probabilities are clipped to [_CLIP, 1 - _CLIP] before a logit

# EdNet features in column order: (modality group, name, categorical). `_ednet_columns` fills them.
EDNET_FEATURES: tuple[tuple[str, str, bool], ...] = (
    ("item", "item.q_difficulty", False),         # logit of the question's smoothed accuracy (training learners)
    ("item", "item.q_log_count", False),          # log1p(training answers to the question)
    ("item", "item.user_acc", False),             # learner's smoothed accuracy over earlier bundles
    ("item", "item.user_log_count", False),       # log1p(learner's earlier answers)
    ("item", "item.prev_bundle_acc", False),      # fraction correct in the learner's previous bundle
    ("item", "item.q_seen_count", False),         # learner's earlier answers to this question
    ("item", "item.q_seen_acc", False),           # their accuracy (NaN if never)
    ("item", "item.bundle_index", False),         # 0-based position of the question in its bundle
    ("item", "item.bundle_size", False),
    ("content", "content.part", True),            # TOEIC part 1..7 (NaN unknown)
    ("content", "content.part_user_acc", False),  # learner's smoothed accuracy on this part, earlier bundles
    ("content", "content.part_user_log_count", False),
    ("content", "content.tag_user_acc", False),   # mean over the question's tags of the learner's smoothed tag accuracy
    ("content", "content.tag_user_log_count", False),  # log1p(learner's earlier answers on those tags, summed)
    ("content", "content.tag_difficulty", False),  # mean over the tags of the tag's smoothed logit (training learners)
    ("content", "content.tag_since_log_s", False),  # log1p(seconds since any of the tags was last seen; NaN never)
    ("behavior", "behavior.since_prev_bundle_log_s", False),  # log1p(seconds since the previous bundle was shown)
    ("behavior", "behavior.lag_log_s", False),    # pre: log1p(lag_ms / 1000)
    ("behavior", "behavior.lecture_log_count", False),  # pre: log1p(lectures entered since the previous bundle)
    ("behavior", "behavior.lecture_log_s", False),  # pre: log1p(lecture_ms / 1000)
    ("behavior", "behavior.prev_elapsed_log_s", False),  # previous bundle's mean elapsed_ms, log1p seconds
    ("behavior", "behavior.elapsed_mean_log_s", False),  # mean elapsed_ms over earlier bundles, log1p seconds
    ("behavior", "behavior.answer_changes_mean", False),  # mean over earlier bundles
    ("behavior", "behavior.explanation_mean_log_s", False),
    ("behavior", "behavior.media_plays_mean", False),
    ("behavior", "behavior.platform", True),      # 1 mobile, 2 web (NaN unknown)
    ("behavior", "behavior.source", True),        # dense KT4 source (NaN unknown)
)

# Post-answer behaviour columns whose running means reach later bundles only.
_POST = ("elapsed_ms", "answer_changes", "explanation_ms", "media_plays")
_EDNET_READ = ["user", "position", "timestamp", "question", "bundle", "part", "tags", "correct", "lag_ms", "lectures",
               "lecture_ms", "platform", "source", *_POST]



@dataclass
class QuestionStats:
    """Per dense question (and tag) index: answers and correct answers of the training learners.
    Index 0 is padding/unknown and stays 0."""

    correct: np.ndarray              # (n_questions + 1,) float64
    count: np.ndarray                # (n_questions + 1,) float64
    tag_correct: np.ndarray          # (n_tags + 1,) float64 (an answer counts once per tag of its question)
    tag_count: np.ndarray            # (n_tags + 1,) float64

    @property
    def prior(self) -> float:
        """Overall training accuracy (0.5 when there are no training answers)."""
        return _prior(float(self.correct.sum()), float(self.count.sum()))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.ascontiguousarray(getattr(self, f.name), dtype=np.float64) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "QuestionStats":
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in arrays]
        if missing:
            raise BadInput(f"gbdt question statistics lack {', '.join(missing)}; retrain the run with this version of dsrsd")
        values = {name: np.asarray(arrays[name], dtype=np.float64).reshape(-1) for name in names}
        if len(values["correct"]) != len(values["count"]) or len(values["tag_correct"]) != len(values["tag_count"]):
            raise BadInput("gbdt question statistics have arrays of different lengths; retrain the run")
        return cls(**values)



def fit_question_stats(prepared: Prepared, data_cfg: DataConfig) -> QuestionStats:
    """Question and tag counts over the answers of the training learners (split "train",
    with data_cfg.fold and data_cfg.train_fraction applied as the loader does)."""
    check_dataset(prepared, data_cfg, "ednet")
    users = _split_users(prepared, data_cfg, "train")
    a = _answers(prepared, *_read_answers(prepared, users, ["user", "position", "question", "tags", "correct"]))
    n_q, n_t = vocab_count(prepared, "question") + 1, vocab_count(prepared, "tag") + 1
    return QuestionStats(
        correct=np.bincount(a.question, weights=a.correct, minlength=n_q),
        count=np.bincount(a.question, minlength=n_q).astype(np.float64),
        tag_correct=np.bincount(a.tag, weights=a.correct[a.tag_row], minlength=n_t),
        tag_count=np.bincount(a.tag, minlength=n_t).astype(np.float64),
    )


def ednet_features(
    prepared: Prepared, data_cfg: DataConfig, split: str, stats: QuestionStats | None, *, out_of_fold: bool = False
) -> FeatureTable:
    """Every answer of the split's learners, sorted by (user, position); EDNET_FEATURES columns.

    out_of_fold=True (the train split while fitting): each row's question/tag difficulty
    and prior come from the training learners of the OTHER `OOF_FOLDS` folds (`learner_folds`);
    `stats` is ignored then. Otherwise they come from `stats`.
    """
    check_dataset(prepared, data_cfg, "ednet")
    if out_of_fold and split != "train":
        raise ValueError(f"out-of-fold features are for the train split, not {split!r}")
    if stats is None and not out_of_fold:
        raise ValueError("EdNet features need the QuestionStats of the training learners (or out_of_fold=True)")
    table, user_code, names = _read_answers(prepared, _split_users(prepared, data_cfg, split), _EDNET_READ)
    a = _answers(prepared, table, user_code, names)
    if out_of_fold:
        difficulty = _out_of_fold_difficulty(a, learner_folds(names))
    else:
        difficulty = _fitted_difficulty(prepared, a, stats)
    columns = _ednet_columns(a, difficulty)
    keys = pd.DataFrame({"user": names[a.user].astype(str), "position": a.position})
    blocks = [(g, [n], columns[n][:, None], c) for g, n, c in EDNET_FEATURES]
    blocks += _custom_blocks(prepared, a, names, _split_users(prepared, data_cfg, split))
    return assemble(keys, a.correct.astype(np.float32), blocks, "ednet")


def _custom_blocks(prepared: Prepared, a: "_Answers", names: np.ndarray, users: list[str] | None) -> list:
    """`prepare --dataset custom` features (none for EdNet/Riiid folders): a `before` feature is a
    column of its modality group as is (categorical: its code, NaN unknown); an `after` one is
    its running mean over the learner's EARLIER bundles ("<modality>.custom.<name>_mean",
    NaN before any value), like the post-answer behaviour above."""
    from dsrsd_cli.data.ednet_row_arrays import custom_layout, read_custom_features

    layout = custom_layout(prepared)
    if not layout:
        return []
    table = read_custom_features(prepared, layout, users, names, a.user, a.position)
    blocks = []
    for m, kinds in layout.items():
        for kind in ("cat", "num"):
            for f in kinds[kind]:
                v = _floats(table[f["name"]])
                if kind == "cat":
                    v = _code(v)
                name = f"{m}.custom.{f['name']}"
                if f["known"] == "before":
                    blocks.append((m, [name], v[:, None], kind == "cat"))
                    continue
                if kind == "cat":   # after + categorical: running share of each category over earlier bundles
                    size = int(f["size"])
                    onehot = np.stack([v == c for c in range(1, size)] + [~np.isnan(v)], axis=1).astype(np.float64)
                    before, _ = _earlier(a.user, a.run, onehot)
                    shares = rate(before[:, :-1], before[:, -1:])
                    blocks.append((m, [f"{name}_share_{c}" for c in range(1, size)], shares, False))
                else:
                    before, _ = _earlier(a.user, a.run, np.stack([np.nan_to_num(v), ~np.isnan(v)], axis=1))
                    blocks.append((m, [f"{name}_mean"], rate(before[:, 0], before[:, 1])[:, None], False))
    return blocks


def learner_folds(users: np.ndarray) -> np.ndarray:
    """(n,) int64 out-of-fold fold 0..OOF_FOLDS-1 of each learner id, by a seeded hash."""
    if not len(users):
        return np.zeros(0, dtype=np.int64)
    return np.minimum((learner_rank(np.asarray(users), OOF_SEED) * OOF_FOLDS).astype(np.int64), OOF_FOLDS - 1)


# ================================================================ EdNet: reading

def check_dataset(prepared: Prepared, data_cfg: DataConfig, dataset: str) -> None:
    if prepared.dataset != dataset or data_cfg.dataset != dataset:
        raise BadInput(f"{prepared.path} holds {prepared.dataset} data and data.dataset is {data_cfg.dataset!r}, "
                       f"but these are {dataset} features; use a {dataset} folder with --set data.dataset={dataset}")
    if dataset == "ednet" and data_cfg.target != "correct":
        raise BadInput(f"data.target {data_cfg.target!r} does not apply to ednet; use --set data.target=correct")


def _split_users(prepared: Prepared, data_cfg: DataConfig, split: str) -> list[str] | None:
    """The split's learners (None = every learner of the interactions)."""
    if split not in SPLITS:
        raise BadInput(f"split {split!r} is unknown; choose one of {', '.join(SPLITS)}")
    if split == "all":
        return None
    file = prepared.file("splits.parquet")
    splits = pq.read_table(file, columns=["user", "split", "fold"]).to_pandas()
    return sorted(splits.loc[split_mask(splits, split, data_cfg, file, "ednet", "user"), "user"].astype(str))


def _read_answers(prepared: Prepared, users: list[str] | None, columns: list[str]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The interactions of `users` (None: all), sorted by (user, position).

    Returns the table, user codes (n,) int64 into the sorted learner names, and the names (object array).
    """
    file = prepared.file("interactions.parquet")
    table = pq.read_table(file, columns=columns, read_dictionary=["user"],
                          filters=None if users is None else pc.field("user").isin(pa.array(users, pa.string())))
    for column in ("user", "position", "question", "bundle", "correct"):
        if column in columns and table[column].null_count:
            raise BadInput(f"{file}: column {column!r} has null values; {rerun_prepare('ednet')}")
    user_cat = table["user"].to_pandas()
    names = np.asarray(sorted(str(u) for u in user_cat.cat.categories), dtype=object)
    user_code = pd.Categorical(user_cat, categories=names).codes.astype(np.int64)
    position = table["position"].to_numpy().astype(np.int64)
    order = np.lexsort((position, user_code))
    if not np.array_equal(order, np.arange(len(order))):
        table, user_code, position = table.take(pa.array(order)), user_code[order], position[order]
    same = (user_code[1:] == user_code[:-1]) & (position[1:] == position[:-1])
    if same.any():
        row = int(np.argmax(same)) + 1
        raise BadInput(f"{file}: user {names[user_code[row]]} has position {position[row]} twice; {rerun_prepare('ednet')}")
    return table, user_code, names


@dataclass
class _Answers:
    """One split's answers as numpy, sorted by (user, position): n answers, R bundle runs,
    P (answer, tag) pairs. Runs are numbered along the sort, so a learner's runs increase in time."""

    user: np.ndarray         # (n,) int64
    position: np.ndarray     # (n,) int64
    question: np.ndarray     # (n,) int64 1..Q
    correct: np.ndarray      # (n,) float64 0/1
    run: np.ndarray          # (n,) int64 bundle run of each answer
    run_start: np.ndarray    # (R,) first answer of each run
    tag_row: np.ndarray      # (P,) int64 answer of each pair, nondecreasing
    tag: np.ndarray          # (P,) int64 1..T
    columns: dict[str, np.ndarray]   # other read columns, (n,) float64, NaN where null

    @property
    def run_user(self) -> np.ndarray:
        return self.user[self.run_start]

    @property
    def prev_run(self) -> np.ndarray:
        """(R,) the learner's previous run, -1 for a learner's first."""
        prev = np.arange(len(self.run_start)) - 1
        first = np.ones(len(prev), dtype=bool)
        first[1:] = self.run_user[1:] != self.run_user[:-1]
        return np.where(first, -1, prev)


def _answers(prepared: Prepared, table: pa.Table, user_code: np.ndarray, names: np.ndarray) -> _Answers:
    """`_read_answers`' sorted table -> numpy, with ids checked against the manifest vocab.
    Bundle runs need the `bundle` column (without it every answer is its own run)."""
    file = prepared.file("interactions.parquet")
    n = table.num_rows
    position = table["position"].to_numpy().astype(np.int64)

    def in_range(values: np.ndarray, column: str, low: int, high: int, rows: np.ndarray | None = None) -> np.ndarray:
        bad = (values < low) | (values > high)
        if bad.any():
            first = int(np.argmax(bad))
            row = first if rows is None else int(rows[first])
            raise BadInput(f"{file}: column {column!r} = {values[first]} (user {names[user_code[row]]}, position "
                           f"{position[row]}) is outside {low}..{high}; {rerun_prepare('ednet')}")
        return values

    question = in_range(table["question"].to_numpy().astype(np.int64), "question", 1, vocab_count(prepared, "question"))
    correct = in_range(table["correct"].to_numpy().astype(np.int64), "correct", 0, 1).astype(np.float64)
    if "part" in table.column_names:
        in_range(pc.fill_null(table["part"], 0).to_numpy().astype(np.int64), "part", 0, 7)

    tags = table["tags"].combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(tags), 0).to_numpy().astype(np.int64)
    tag = pc.fill_null(pc.list_flatten(tags), 0).to_numpy().astype(np.int64)
    tag_row = np.repeat(np.arange(n), lengths)
    keep = tag > 0
    tag, tag_row = tag[keep], tag_row[keep]
    in_range(tag, "tags", 1, vocab_count(prepared, "tag"), rows=tag_row)

    new_run = np.ones(n, dtype=bool)
    if "bundle" in table.column_names:
        bundle = table["bundle"].to_numpy().astype(np.int64)
        new_run[1:] = (user_code[1:] != user_code[:-1]) | (bundle[1:] != bundle[:-1])
    run = np.cumsum(new_run) - 1
    skip = {"user", "position", "question", "bundle", "tags", "correct", "lectures"}
    columns = {name: _floats(table[name]) for name in table.column_names if name not in skip}
    if "lectures" in table.column_names:
        columns["lecture_count"] = _floats(pc.list_value_length(table["lectures"]))
    return _Answers(user=user_code, position=position, question=question, correct=correct, run=run,
                    run_start=np.flatnonzero(new_run), tag_row=tag_row, tag=tag, columns=columns)


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric Arrow column as float64, null -> NaN."""
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


# ================================================================ EdNet: difficulty

@dataclass
class _Difficulty:
    """Training counts seen by each answer: its question's, and each of its tag pairs'."""

    q_correct: np.ndarray    # (n,)
    q_count: np.ndarray      # (n,)
    prior: np.ndarray        # (n,) overall training accuracy the row may see
    t_correct: np.ndarray    # (P,)
    t_count: np.ndarray      # (P,)


def _fitted_difficulty(prepared: Prepared, a: _Answers, stats: QuestionStats) -> _Difficulty:
    for name, index, counts in (("question", a.question, stats.count), ("tag", a.tag, stats.tag_count)):
        if len(index) and index.max() >= len(counts):
            raise BadInput(f"{prepared.path}: {name} index {int(index.max())} is beyond the {len(counts) - 1} {name}s the gbdt "
                           "statistics were fitted on; fit the model on this prepared folder")
    return _Difficulty(
        q_correct=stats.correct[a.question], q_count=stats.count[a.question],
        prior=np.full(len(a.question), stats.prior),
        t_correct=stats.tag_correct[a.tag], t_count=stats.tag_count[a.tag],
    )


def _out_of_fold_difficulty(a: _Answers, fold_of_user: np.ndarray) -> _Difficulty:
    """Counts of every answer of `a` minus those of the row's own fold (fold_of_user indexed by a.user)."""
    fold = fold_of_user[a.user]
    pair_fold = fold[a.tag_row]

    def held_out(index: np.ndarray, which: np.ndarray, weights: np.ndarray) -> np.ndarray:
        size = int(index.max(initial=0)) + 1
        total = np.bincount(index, weights=weights, minlength=size)
        per_fold = np.bincount(which * size + index, weights=weights, minlength=OOF_FOLDS * size).reshape(OOF_FOLDS, size)
        return total[index] - per_fold[which, index]

    ones = np.ones(len(a.question))
    correct_in = np.bincount(fold, weights=a.correct, minlength=OOF_FOLDS)
    count_in = np.bincount(fold, minlength=OOF_FOLDS).astype(np.float64)
    prior_of_fold = np.array([_prior(correct_in.sum() - correct_in[f], count_in.sum() - count_in[f]) for f in range(OOF_FOLDS)])
    return _Difficulty(
        q_correct=held_out(a.question, fold, a.correct), q_count=held_out(a.question, fold, ones),
        prior=prior_of_fold[fold],
        t_correct=held_out(a.tag, pair_fold, a.correct[a.tag_row]), t_count=held_out(a.tag, pair_fold, ones[a.tag_row]),
    )


def _prior(correct: float, count: float) -> float:
    return correct / count if count > 0 else 0.5


# ================================================================ EdNet: features

def _ednet_columns(a: _Answers, d: _Difficulty) -> dict[str, np.ndarray]:
    """name -> (n,) float64 for every EDNET_FEATURES name."""
    n = len(a.question)
    one = np.ones(n)
    prev = a.prev_run[a.run]                                              # (n,) the learner's previous run, -1 none
    has_prev = prev >= 0
    run_time = a.columns["timestamp"][a.run_start]                        # (R,) when each run was shown

    # the learner's history: correctness and post-answer behaviour, summed over earlier runs
    post = [a.columns[name] for name in _POST]
    values = np.stack([a.correct, one] + [v for x in post for v in (np.nan_to_num(x), ~np.isnan(x))], axis=1)
    before, _ = _earlier(a.user, a.run, values)                            # (n, 2 + 2 * len(_POST))
    run_sums = _run_sums(a, values)                                        # (R, ...)
    last = np.where(has_prev, prev, 0)

    def previous(column: int, count: int) -> np.ndarray:
        return np.where(has_prev, rate(run_sums[last, column], run_sums[last, count]), np.nan)

    q_before, _ = _earlier(a.user * (int(a.question.max(initial=0)) + 1) + a.question, a.run, values[:, :2])
    part = a.columns["part"]
    part_code = np.nan_to_num(part).astype(np.int64)
    p_before, _ = _earlier(a.user * 8 + part_code, a.run, values[:, :2])

    columns = {
        "item.q_difficulty": _logit(_smoothed(d.q_correct, d.q_count, d.prior)),
        "item.q_log_count": np.log1p(d.q_count),
        "item.user_acc": _smoothed(before[:, 0], before[:, 1], d.prior),
        "item.user_log_count": np.log1p(before[:, 1]),
        "item.prev_bundle_acc": previous(0, 1),
        "item.q_seen_count": q_before[:, 1],
        "item.q_seen_acc": rate(q_before[:, 0], q_before[:, 1]),
        "item.bundle_index": (np.arange(n) - a.run_start[a.run]).astype(np.float64),
        "item.bundle_size": np.diff(np.append(a.run_start, n))[a.run].astype(np.float64),
        "content.part": np.where(part > 0, part, np.nan),
        "content.part_user_acc": np.where(part > 0, _smoothed(p_before[:, 0], p_before[:, 1], d.prior), np.nan),
        "content.part_user_log_count": np.where(part > 0, np.log1p(p_before[:, 1]), np.nan),
        **_tag_columns(a, d, run_time),
        "behavior.since_prev_bundle_log_s": np.where(has_prev, _log_seconds(run_time[a.run] - run_time[last]), np.nan),
        "behavior.lag_log_s": _log_seconds(a.columns["lag_ms"]),
        "behavior.lecture_log_count": np.log1p(np.clip(a.columns["lecture_count"], 0, None)),
        "behavior.lecture_log_s": _log_seconds(a.columns["lecture_ms"]),
        "behavior.prev_elapsed_log_s": _log_seconds(previous(2, 3)),
        "behavior.elapsed_mean_log_s": _log_seconds(rate(before[:, 2], before[:, 3])),
        "behavior.answer_changes_mean": rate(before[:, 4], before[:, 5]),
        "behavior.explanation_mean_log_s": _log_seconds(rate(before[:, 6], before[:, 7])),
        "behavior.media_plays_mean": rate(before[:, 8], before[:, 9]),
        "behavior.platform": _code(a.columns["platform"]),
        "behavior.source": _code(a.columns["source"]),
    }
    return columns


def _tag_columns(a: _Answers, d: _Difficulty, run_time: np.ndarray) -> dict[str, np.ndarray]:
    """Per answer, over its question's tags: the learner's smoothed accuracy (mean) and answers
    (sum) on them in earlier runs, the tags' training difficulty (mean), and log1p seconds since
    the learner last saw any of them (NaN when never, or untagged)."""
    n, rows = len(a.question), a.tag_row
    run = a.run[rows]
    values = np.stack([a.correct[rows], np.ones(len(rows))], axis=1)
    before, last_run = _earlier(a.user[rows] * (int(a.tag.max(initial=0)) + 1) + a.tag, run, values)   # (P, 2), (P,)
    prior = d.prior[rows]
    since = np.where(last_run >= 0, run_time[run] - run_time[np.maximum(last_run, 0)], np.nan)   # (P,) ms
    n_tags = np.bincount(rows, minlength=n).astype(np.float64)

    def mean(v: np.ndarray) -> np.ndarray:
        return rate(np.bincount(rows, weights=v, minlength=n), n_tags)

    return {
        "content.tag_user_acc": mean(_smoothed(before[:, 0], before[:, 1], prior)),
        "content.tag_user_log_count": np.where(n_tags > 0, np.log1p(np.bincount(rows, weights=before[:, 1], minlength=n)), np.nan),
        "content.tag_difficulty": mean(_logit(_smoothed(d.t_correct, d.t_count, prior))),
        "content.tag_since_log_s": _log_seconds(_row_min(rows, since, n)),
    }


def _earlier(group: np.ndarray, run: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Causal running sums per group.

    group, run: (m,) int64, run increasing in time within a group; values: (m, k) float64
    (integer-valued, so sums are exact). Returns (m, k): for element i the sum of values[j]
    over j with group[j] == group[i] and run[j] < run[i] (never i's own run); and (m,) the
    latest such run (-1 if none).
    """
    m, k = values.shape
    if m == 0:
        return np.zeros((0, k)), np.zeros(0, dtype=np.int64)
    order = np.lexsort((run, group))
    g, r = group[order], run[order]
    new_cell = np.ones(m, dtype=bool)
    new_cell[1:] = (g[1:] != g[:-1]) | (r[1:] != r[:-1])
    starts = np.flatnonzero(new_cell)
    sums = np.add.reduceat(values[order], starts, axis=0)                 # (C, k) per (group, run) cell
    cell_group, cell_run = g[starts], r[starts]
    first = np.ones(len(starts), dtype=bool)
    first[1:] = cell_group[1:] != cell_group[:-1]
    shifted = np.zeros_like(sums)                                          # cumulative sum up to the previous cell
    np.cumsum(sums[:-1], axis=0, out=shifted[1:])
    base = shifted[np.flatnonzero(first)][np.cumsum(first) - 1]            # ... at the group's first cell
    cell_before = shifted - base
    cell_last = np.where(first, -1, np.roll(cell_run, 1))
    cell_of = np.cumsum(new_cell) - 1
    out, last = np.empty((m, k)), np.empty(m, dtype=np.int64)
    out[order], last[order] = cell_before[cell_of], cell_last[cell_of]
    return out, last


def _run_sums(a: _Answers, values: np.ndarray) -> np.ndarray:
    """(R, k) sums of values (n, k) over each bundle run."""
    if not len(a.run_start):
        return np.zeros((0, values.shape[1]))
    return np.add.reduceat(values, a.run_start, axis=0)


def _row_min(rows: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """(n,) NaN-ignoring minimum of values over the pairs of each row (rows nondecreasing); NaN if none."""
    out = np.full(n, np.nan)
    if len(rows):
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        out[rows[starts]] = np.fmin.reduceat(values, starts)
    return out


def _smoothed(correct: np.ndarray, count: np.ndarray, prior: np.ndarray) -> np.ndarray:
    return (correct + SMOOTHING * prior) / (count + SMOOTHING)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _CLIP, 1 - _CLIP)
    return np.log(p) - np.log1p(-p)


def _log_seconds(ms: np.ndarray) -> np.ndarray:
    """log1p(seconds), negative -> 0, NaN stays NaN."""
    return np.log1p(np.clip(ms, 0, None) / 1000.0)


def _code(values: np.ndarray) -> np.ndarray:
    """A category code column: 0 (unknown) and null -> NaN."""
    return np.where(values > 0, values, np.nan)
