"""gbdt features: EdNet features are causal (nothing from the answer's own bundle or later),
out-of-fold difficulty never sees a row's own label, hand-computed values, OULAD rows are the
loader's, groups partition the columns, QuestionStats round-trips."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data import schema
from dsrsd_cli.data.features import (
    EDNET_FEATURES,
    FeatureTable,
    QuestionStats,
    build_features,
    ednet_features,
    fit_question_stats,
    learner_folds,
    oulad_features,
)
from dsrsd_cli.data.loader import collate, make_dataset, open_prepared
from dsrsd_cli.errors import BadInput
from prepared_fakes import ednet_tables, oulad_tables, write_prepared

EDNET = DataConfig(dataset="ednet")
POST = ["elapsed_ms", "answer_changes", "explanation_ms", "media_plays"]


def oulad_cfg(**kw) -> DataConfig:
    return DataConfig(dataset="oulad", **{"target": "at_risk", "cutoff_day": 60, **kw})


def prepared_from(tmp_path, name: str, dataset: str, tables: dict[str, pd.DataFrame]):
    return open_prepared(write_prepared(tmp_path / name, dataset, tables))


def copy(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {name: frame.copy() for name, frame in tables.items()}


def column(table, name: str) -> np.ndarray:
    return table.x[:, table.names.index(name)]


def rows_of(table, user: str) -> np.ndarray:
    return np.flatnonzero(table.keys["user"].to_numpy() == user)


def runs(interactions: pd.DataFrame, user: str) -> pd.DataFrame:
    """The user's rows (index = frame index) in position order, with their bundle run 0, 1, ..."""
    mine = interactions[interactions["user"] == user].sort_values("position")
    return mine.assign(run=(mine["bundle"] != mine["bundle"].shift()).cumsum() - 1)


@pytest.fixture(scope="module")
def ednet(tmp_path_factory):
    tables = ednet_tables(n_users=8, lengths=[30, 60, 60, 60, 45, 60, 40, 50], kt1_users=1, seed=3)
    return tables, prepared_from(tmp_path_factory.mktemp("ednet"), "original", "ednet", tables)


def kt4_train_user(tables) -> str:
    splits = tables["splits"]
    kt4 = set(tables["interactions"].loc[tables["interactions"]["kt_level"] == 4, "user"])
    return sorted(set(splits.loc[splits["split"] == "train", "user"]) & kt4)[0]


def middle_run(history: pd.DataFrame) -> int:
    """A run with at least two answers that has a run before it and two after it."""
    sizes = history.groupby("run").size()
    return int(next(r for r in sizes.index if sizes[r] >= 2 and 0 < r < sizes.index.max() - 1))


# ================================================================ EdNet: causality

MODES = {
    "fitted": dict(split="all", out_of_fold=False),
    "out_of_fold": dict(split="train", out_of_fold=True),
}


def features(prepared, mode: str, stats: QuestionStats):
    return ednet_features(prepared, EDNET, MODES[mode]["split"], stats, out_of_fold=MODES[mode]["out_of_fold"])


def changed_features(tmp_path, tables, mode: str, stats: QuestionStats, change) -> FeatureTable:
    changed = copy(tables)
    change(changed["interactions"])
    return features(prepared_from(tmp_path, "changed", "ednet", changed), mode, stats)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("what", ["later_label", "same_bundle_label", "same_bundle_behavior"])
def test_nothing_from_the_own_bundle_or_later_reaches_an_answer(ednet, tmp_path, mode, what):
    tables, prepared = ednet
    user = kt4_train_user(tables)
    history = runs(tables["interactions"], user)
    k = middle_run(history)
    in_run = history.index[history["run"] == k]
    stats = fit_question_stats(prepared, EDNET)            # fitted once: the change is not in the training data
    before = features(prepared, mode, stats)

    def change(frame: pd.DataFrame) -> None:
        if what == "later_label":
            row = history.index[history["run"] == k + 1][0]
            frame.loc[row, "correct"] = 1 - frame.loc[row, "correct"]
        elif what == "same_bundle_label":
            frame.loc[in_run[1], "correct"] = 1 - frame.loc[in_run[1], "correct"]
        else:
            frame.loc[in_run, "elapsed_ms"] = 777_000
            frame.loc[in_run, "answer_changes"] = 9
            frame.loc[in_run, "explanation_ms"] = 555_000
            frame.loc[in_run, "media_plays"] = 7

    after = changed_features(tmp_path, tables, mode, stats, change)
    mine = rows_of(before, user)
    assert np.array_equal(rows_of(after, user), mine)
    position = before.keys["position"].to_numpy()[mine]
    unchanged = mine[np.isin(position, history.loc[history["run"] <= k, "position"])]   # runs up to the k-th, included
    assert len(unchanged) > 2
    np.testing.assert_array_equal(after.x[unchanged], before.x[unchanged])      # NaN == NaN, else bit-identical
    if mode == "fitted":
        others = np.setdiff1d(np.arange(len(before.label)), mine)
        np.testing.assert_array_equal(after.x[others], before.x[others])

    # the control: the change does reach the answers after the changed run
    changed_run = k + 1 if what == "later_label" else k
    later = mine[np.isin(position, history.loc[history["run"] > changed_run, "position"])]
    name = "behavior.elapsed_mean_log_s" if what == "same_bundle_behavior" else "item.user_acc"
    assert not np.array_equal(column(after, name)[later], column(before, name)[later])


def test_an_earlier_bundle_changes_the_running_accuracy_of_later_answers(ednet, tmp_path):
    tables, prepared = ednet
    user = kt4_train_user(tables)
    history = runs(tables["interactions"], user)
    k = middle_run(history)
    row = history.index[history["run"] == k - 1][0]
    stats = fit_question_stats(prepared, EDNET)
    before = features(prepared, "fitted", stats)

    def flip(frame: pd.DataFrame) -> None:
        frame.loc[row, "correct"] = 1 - frame.loc[row, "correct"]

    after = changed_features(tmp_path, tables, "fitted", stats, flip)
    mine = rows_of(before, user)
    position = before.keys["position"].to_numpy()[mine]
    later = mine[np.isin(position, history.loc[history["run"] >= k, "position"])]
    earlier = mine[np.isin(position, history.loc[history["run"] < k - 1, "position"])]
    assert (column(after, "item.user_acc")[later] != column(before, "item.user_acc")[later]).all()
    next_run = mine[np.isin(position, history.loc[history["run"] == k, "position"])]
    assert (column(after, "item.prev_bundle_acc")[next_run] != column(before, "item.prev_bundle_acc")[next_run]).all()
    np.testing.assert_array_equal(after.x[earlier], before.x[earlier])
    part_changed = column(after, "content.part_user_acc")[later] != column(before, "content.part_user_acc")[later]
    assert part_changed.any()


# ================================================================ EdNet: out of fold

def test_out_of_fold_difficulty_never_sees_the_rows_own_label(tmp_path):
    tables = ednet_tables(n_users=30, lengths=[24] * 30, n_questions=12, n_tags=5, kt1_users=0, seed=5)
    prepared = prepared_from(tmp_path, "original", "ednet", tables)
    inter, splits = tables["interactions"], tables["splits"]
    train_users = sorted(splits.loc[splits["split"] == "train", "user"])
    fold = dict(zip(train_users, learner_folds(np.array(train_users, dtype=object)).tolist()))
    assert len(set(fold.values())) > 1

    # a training answer whose question other-fold training learners also answered
    train_rows = inter[inter["user"].isin(train_users)]
    for index, r in train_rows.iterrows():
        others = train_rows[(train_rows["question"] == r["question"]) & (train_rows["user"].map(fold) != fold[r["user"]])]
        if len(others):
            break
    assert len(others)
    user, position = r["user"], int(r["position"])
    changed = copy(tables)
    changed["interactions"].loc[index, "correct"] = 1 - r["correct"]
    changed_prepared = prepared_from(tmp_path, "changed", "ednet", changed)

    before = ednet_features(prepared, EDNET, "train", None, out_of_fold=True)
    after = ednet_features(changed_prepared, EDNET, "train", None, out_of_fold=True)
    own = np.flatnonzero((before.keys["user"] == user).to_numpy() & (before.keys["position"] == position).to_numpy())
    assert len(own) == 1
    np.testing.assert_array_equal(after.x[own], before.x[own])         # its own label reaches nothing of its own row
    mine = rows_of(before, user)
    for name in ("item.q_difficulty", "content.tag_difficulty"):
        np.testing.assert_array_equal(column(after, name)[mine], column(before, name)[mine])
    # the control: other folds' answers to the question do see it
    same_q = np.flatnonzero(pd.MultiIndex.from_frame(before.keys).isin(list(zip(others["user"], others["position"]))))
    assert len(same_q) == len(others)
    assert (column(after, "item.q_difficulty")[same_q] != column(before, "item.q_difficulty")[same_q]).any()
    # ... and without out-of-fold, the refitted difficulty of the row does move with its own label
    fitted_before = ednet_features(prepared, EDNET, "train", fit_question_stats(prepared, EDNET))
    fitted_after = ednet_features(changed_prepared, EDNET, "train", fit_question_stats(changed_prepared, EDNET))
    assert column(fitted_after, "item.q_difficulty")[own] != column(fitted_before, "item.q_difficulty")[own]


def test_learner_folds_are_stable_and_spread():
    users = np.array([f"u{i}" for i in range(500)], dtype=object)
    folds = learner_folds(users)
    assert np.array_equal(folds, learner_folds(users[::-1])[::-1])
    assert set(folds.tolist()) == {0, 1, 2, 3, 4} and np.bincount(folds).min() > 60


# ================================================================ EdNet: hand-computed values

T0 = 1_600_000_000_000


def hand_tables() -> dict[str, pd.DataFrame]:
    """One learner, 4 bundle runs: [q1 q2] [q3] [q4 q5 q6] [q1 again]."""
    tables = ednet_tables(n_users=1, lengths=[5], n_questions=10, n_tags=4, kt1_users=0, seed=0)
    tags = [[1], [1, 2], [2], [], [3], [1], [4], [4], [4], [4]]
    tables["questions"]["tags"] = tags
    rows = [  # question, bundle, part, correct, shown (s after T0), elapsed s
        (1, 1, 1, 1, 0, 10), (2, 1, 1, 1, 0, 20),
        (3, 2, 2, 0, 60, 30),
        (4, 3, 1, 0, 180, 40), (5, 3, 1, 0, 180, 50), (6, 3, 1, 1, 180, 60),
        (1, 1, 1, 1, 600, 70),
    ]
    n = len(rows)
    tables["interactions"] = pd.DataFrame({
        "user": "h1", "position": np.arange(n), "timestamp": [T0 + 1000 * r[4] for r in rows],
        "question": [r[0] for r in rows], "bundle": [r[1] for r in rows], "part": [r[2] for r in rows],
        "tags": [tags[r[0] - 1] for r in rows], "correct": [r[3] for r in rows],
        "elapsed_ms": [1000 * r[5] for r in rows], "lag_ms": [None, None, 5000, 9000, 9000, 9000, None],
        "answer_changes": [0, 2, 1, 0, 0, 3, 0], "explanation_ms": [0, 4000, 0, 0, 0, 0, 0],
        "lectures": [[], [], [1, 2], [], [], [], []], "lecture_ms": [0, 0, 8000, 0, 0, 0, 0],
        "media_plays": [1, 0, 0, 2, 0, 0, 0], "platform": [2] * n, "source": [1] * n, "kt_level": 4,
    })
    tables["splits"] = pd.DataFrame({"user": ["h1"], "split": ["train"], "fold": [0]})
    return tables


def test_hand_computed_history(tmp_path):
    prepared = prepared_from(tmp_path, "hand", "ednet", hand_tables())
    correct, count = np.zeros(11), np.zeros(11)
    correct[[1, 2]], count[[1, 2]] = [3, 1], [4, 4]                     # prior = 4 / 8 = 0.5
    stats = QuestionStats(correct=correct, count=count, tag_correct=np.zeros(5), tag_count=np.zeros(5))
    table = ednet_features(prepared, EDNET, "all", stats)
    nan = math.nan
    s = lambda c, n: (c + 5 * 0.5) / (n + 5)  # noqa: E731
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    log_s = lambda seconds: math.log1p(seconds)  # noqa: E731
    expected = {
        "item.q_difficulty": [logit(5.5 / 9), logit(3.5 / 9), 0, 0, 0, 0, logit(5.5 / 9)],
        "item.q_log_count": [math.log(5), math.log(5), 0, 0, 0, 0, math.log(5)],
        "item.user_acc": [0.5, 0.5, s(2, 2), s(2, 3), s(2, 3), s(2, 3), s(3, 6)],
        "item.user_log_count": [0, 0, math.log(3), math.log(4), math.log(4), math.log(4), math.log(7)],
        "item.prev_bundle_acc": [nan, nan, 1, 0, 0, 0, 1 / 3],
        "item.q_seen_count": [0, 0, 0, 0, 0, 0, 1],
        "item.q_seen_acc": [nan] * 6 + [1],
        "item.bundle_index": [0, 1, 0, 0, 1, 2, 0],
        "item.bundle_size": [2, 2, 1, 3, 3, 3, 1],
        "content.part": [1, 1, 2, 1, 1, 1, 1],
        "content.part_user_acc": [0.5, 0.5, 0.5, s(2, 2), s(2, 2), s(2, 2), s(3, 5)],
        "content.tag_user_acc": [0.5, 0.5, s(1, 1), nan, 0.5, s(2, 2), s(3, 3)],
        "content.tag_user_log_count": [0, 0, math.log(2), nan, 0, math.log(3), math.log(4)],
        "content.tag_difficulty": [0, 0, 0, nan, 0, 0, 0],
        "content.tag_since_log_s": [nan, nan, log_s(60), nan, nan, log_s(180), log_s(420)],
        "behavior.since_prev_bundle_log_s": [nan, nan, log_s(60), log_s(120), log_s(120), log_s(120), log_s(420)],
        "behavior.lag_log_s": [nan, nan, log_s(5), log_s(9), log_s(9), log_s(9), nan],
        "behavior.lecture_log_count": [0, 0, math.log(3), 0, 0, 0, 0],
        "behavior.lecture_log_s": [0, 0, log_s(8), 0, 0, 0, 0],
        "behavior.prev_elapsed_log_s": [nan, nan, log_s(15), log_s(30), log_s(30), log_s(30), log_s(50)],
        "behavior.elapsed_mean_log_s": [nan, nan, log_s(15), log_s(20), log_s(20), log_s(20), log_s(35)],
        "behavior.answer_changes_mean": [nan, nan, 1, 1, 1, 1, 1],
        "behavior.explanation_mean_log_s": [nan, nan, log_s(2), log_s(4 / 3), log_s(4 / 3), log_s(4 / 3), log_s(4 / 6)],
        "behavior.media_plays_mean": [nan, nan, 0.5, 1 / 3, 1 / 3, 1 / 3, 0.5],
        "behavior.platform": [2] * 7,
        "behavior.source": [1] * 7,
    }
    assert set(expected) <= set(table.names)
    for name, values in expected.items():
        np.testing.assert_allclose(column(table, name), values, rtol=1e-6, atol=1e-6, err_msg=name)
    assert table.keys["user"].tolist() == ["h1"] * 7 and table.keys["position"].tolist() == list(range(7))
    assert table.label.tolist() == [1, 1, 0, 0, 0, 1, 1] and table.label.dtype == np.float32


def test_question_stats_count_the_training_answers(tmp_path):
    prepared = prepared_from(tmp_path, "hand", "ednet", hand_tables())
    stats = fit_question_stats(prepared, EDNET)
    assert stats.count[[1, 2, 3]].tolist() == [2, 1, 1] and stats.correct[[1, 2, 3]].tolist() == [2, 1, 0]
    assert stats.tag_count[1:].tolist() == [4, 2, 1, 0] and stats.tag_correct[1:].tolist() == [4, 1, 0, 0]
    assert len(stats.count) == 11 and len(stats.tag_count) == 5
    assert stats.prior == pytest.approx(4 / 7)


# ================================================================ EdNet: rows, groups, errors

def test_ednet_rows_are_the_loaders_answers(ednet):
    tables, prepared = ednet
    cfg = DataConfig(dataset="ednet", train_fraction=0.5)
    stats = fit_question_stats(prepared, cfg)
    table = ednet_features(prepared, cfg, "train", stats)
    dataset = make_dataset(prepared, "train", cfg)
    rows = dataset.rows()                                   # the loader's answers, in its learner order
    users = np.repeat([dataset.user(u) for u in dataset.window_user], dataset.windows[:, 2] - dataset.windows[:, 1])
    loader = pd.DataFrame({"user": users, "position": dataset.arrays["position"][rows].astype(np.int64),
                           "label": dataset.arrays["correct"][rows].astype(np.float32)})
    loader = loader.sort_values(["user", "position"], ignore_index=True)   # the features' order
    assert table.keys["user"].tolist() == loader["user"].tolist() and len(rows) == dataset.n_interactions
    assert np.array_equal(table.keys["position"].to_numpy(), loader["position"].to_numpy())
    assert table.keys["position"].dtype == np.int64
    assert np.array_equal(table.label, loader["label"].to_numpy())
    assert stats.count.sum() == len(table.label) < len(tables["interactions"])
    oof = ednet_features(prepared, cfg, "train", None, out_of_fold=True)
    assert oof.keys.equals(table.keys) and oof.names == table.names


def check_groups(table, dataset: str) -> None:
    columns = sorted(i for group in table.groups.values() for i in group)
    assert columns == list(range(len(table.names)))                       # a partition
    assert list(table.groups) == list(schema.MODALITIES[dataset]) and all(table.groups.values())
    assert len(set(table.names)) == len(table.names)
    assert table.x.dtype == np.float32 and table.x.shape == (len(table.keys), len(table.names))
    for m, group in table.groups.items():
        assert all(table.names[i].startswith(m + ".") for i in group)
    cat = table.x[:, table.categorical]
    assert np.all(np.isnan(cat) | ((cat == np.round(cat)) & (cat >= 1)))


def test_ednet_groups_partition_the_columns(ednet):
    _, prepared = ednet
    table = build_features(prepared, EDNET, "all", fit_question_stats(prepared, EDNET))
    check_groups(table, "ednet")
    assert table.names == [name for _, name, _ in EDNET_FEATURES]
    assert [table.names[i] for i in table.categorical] == ["content.part", "behavior.platform", "behavior.source"]
    assert np.isfinite(column(table, "item.user_acc")).all()


def test_kt1_behaviour_is_unknown_not_zero(ednet):
    tables, prepared = ednet
    table = build_features(prepared, EDNET, "all", fit_question_stats(prepared, EDNET))
    kt1 = set(tables["interactions"].loc[tables["interactions"]["kt_level"] == 1, "user"])
    rows = np.flatnonzero(table.keys["user"].isin(kt1).to_numpy())
    assert len(rows)
    for name in ("behavior.answer_changes_mean", "behavior.explanation_mean_log_s", "behavior.media_plays_mean",
                 "behavior.platform", "behavior.source", "behavior.lecture_log_count"):
        assert np.isnan(column(table, name)[rows]).all(), name


def test_empty_split(tmp_path):
    tables = ednet_tables(n_users=2, lengths=[5, 5])
    assert "valid" not in set(tables["splits"]["split"])
    prepared = prepared_from(tmp_path, "e", "ednet", tables)
    table = ednet_features(prepared, EDNET, "valid", fit_question_stats(prepared, EDNET))
    assert table.x.shape == (0, len(EDNET_FEATURES)) and len(table.label) == 0
    o_tables = oulad_tables(n_students=6, seed=1)
    o_tables["splits"]["split"] = "train"
    o_prepared = prepared_from(tmp_path, "o", "oulad", o_tables)
    empty, full = oulad_features(o_prepared, oulad_cfg(), "valid"), oulad_features(o_prepared, oulad_cfg(), "train")
    assert empty.x.shape == (0, len(full.names)) and empty.names == full.names and empty.groups == full.groups


def test_bad_inputs(ednet, tmp_path):
    _, prepared = ednet
    stats = fit_question_stats(prepared, EDNET)
    small = QuestionStats(stats.correct[:3], stats.count[:3], stats.tag_correct, stats.tag_count)
    with pytest.raises(BadInput, match="fitted on"):
        ednet_features(prepared, EDNET, "all", small)
    with pytest.raises(ValueError, match="QuestionStats"):
        build_features(prepared, EDNET, "all", None)
    with pytest.raises(ValueError, match="train split"):
        ednet_features(prepared, EDNET, "valid", None, out_of_fold=True)
    with pytest.raises(BadInput, match="split 'dev'"):
        ednet_features(prepared, EDNET, "dev", stats)
    with pytest.raises(BadInput, match="data.dataset"):
        ednet_features(prepared, oulad_cfg(), "all", stats)
    tables = ednet_tables(n_users=2, lengths=[5, 5])
    trained = tables["splits"].loc[tables["splits"]["split"] == "train", "user"].iloc[0]
    tables["interactions"].loc[tables["interactions"]["user"] == trained, "correct"] = 2
    with pytest.raises(BadInput, match="'correct' = 2"):
        fit_question_stats(prepared_from(tmp_path, "bad", "ednet", tables), EDNET)


def test_question_stats_round_trip(ednet):
    _, prepared = ednet
    stats = fit_question_stats(prepared, EDNET)
    arrays = stats.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float64 and v.flags.c_contiguous for v in arrays.values())
    back = QuestionStats.from_arrays({k: v.astype(np.float32) for k, v in arrays.items()})
    for name, value in arrays.items():
        assert np.array_equal(getattr(back, name), value)
    assert back.prior == stats.prior
    a = ednet_features(prepared, EDNET, "test", stats)
    b = ednet_features(prepared, EDNET, "test", back)
    np.testing.assert_array_equal(a.x, b.x)
    with pytest.raises(BadInput, match="tag_count"):
        QuestionStats.from_arrays({k: v for k, v in arrays.items() if k != "tag_count"})


# ================================================================ OULAD

@pytest.fixture(scope="module")
def oulad(tmp_path_factory):
    tables = oulad_tables(n_students=60, seed=2)
    return tables, prepared_from(tmp_path_factory.mktemp("oulad"), "original", "oulad", tables)


@pytest.mark.parametrize("cfg", [oulad_cfg(), oulad_cfg(target="result4", cutoff_day=None), oulad_cfg(target="pass_fail", cutoff_day=120)])
@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_oulad_rows_are_the_loaders(oulad, cfg, split):
    _, prepared = oulad
    table = build_features(prepared, cfg, split, None)
    dataset = make_dataset(prepared, split, cfg)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert table.keys["code_module"].tolist() == batch.keys["code_module"]
    assert table.keys["code_presentation"].tolist() == batch.keys["code_presentation"]
    assert np.array_equal(table.keys["id_student"].to_numpy(), batch.keys["id_student"].numpy())
    assert table.keys["id_student"].dtype == np.int64
    assert np.array_equal(table.label, batch.target.numpy()) and table.label.dtype == batch.target.numpy().dtype
    check_groups(table, "oulad")
    cat = batch.inputs["demographics"]["cat"].numpy()
    demo = table.x[:, [i for i in table.categorical if table.names[i].startswith("demographics.")]]
    assert np.array_equal(np.nan_to_num(demo), cat)


def test_oulad_clicks_after_the_cutoff_change_no_feature(oulad, tmp_path):
    tables, prepared = oulad
    cfg = oulad_cfg(cutoff_day=45)
    before = oulad_features(prepared, cfg, "all")

    changed = copy(tables)
    clicks = changed["clicks"]
    clicks.loc[clicks["day"] >= 45, "clicks"] = 999
    regs = changed["registrations"][["code_module", "code_presentation", "id_student"]]
    changed["clicks"] = pd.concat([clicks, regs.assign(day=45, activity_type="quiz", clicks=50)], ignore_index=True)
    marks = changed["assessments"]
    marks.loc[marks["submitted_day"] >= 45, "score"] = 3.0
    after = oulad_features(prepared_from(tmp_path, "after", "oulad", changed), cfg, "all")
    assert after.keys.equals(before.keys)
    np.testing.assert_array_equal(after.x, before.x)

    # the control: a click before the cutoff changes a clicks feature and nothing else
    control = copy(tables)
    control["clicks"].loc[control["clicks"]["day"] < 45, "clicks"] += 5
    moved = oulad_features(prepared_from(tmp_path, "control", "oulad", control), cfg, "all")
    same = (moved.x == before.x) | (np.isnan(moved.x) & np.isnan(before.x))
    diff = np.flatnonzero(~same.all(0))
    assert len(diff) and set(diff.tolist()) <= set(moved.groups["clicks"])


def test_oulad_unknown_values_are_nan(oulad):
    tables, prepared = oulad
    table = oulad_features(prepared, oulad_cfg(), "all")
    week_mask = make_dataset(prepared, "all", oulad_cfg())[0].arrays["week_mask"]
    weeks = [i for i, n in enumerate(table.names) if n.startswith("clicks.week_")]
    assert np.isnan(table.x[0, weeks]).tolist() == (~week_mask).tolist()
    imd = table.names.index("demographics.imd_band")
    missing = tables["registrations"].set_index(["code_module", "code_presentation", "id_student"])["imd_band"].isna()
    keys = list(table.keys.itertuples(index=False, name=None))
    assert np.isnan(table.x[:, imd]).tolist() == missing.loc[keys].tolist()
    slot_type = [i for i, n in enumerate(table.names) if n.endswith(".type")]
    assert set(slot_type) <= set(table.categorical)
