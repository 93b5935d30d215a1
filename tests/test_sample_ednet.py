"""The built-in EdNet sample generator: real formats, KT1/KT4 agreement, a ground truth with known signal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dsrsd_cli.samples.ednet import write_ednet_sample
from dsrsd_cli.errors import BadInput

N = 30   # learners per sample: small and fast, still ~5,000 answers


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ednet") / "raw"
    return folder, write_ednet_sample(folder, n_learners=N, seed=0)


def _kt1(folder: Path) -> pd.DataFrame:
    frames = [pd.read_csv(f).assign(user=f.stem) for f in sorted((folder / "KT1").glob("u*.csv"))]
    return pd.concat(frames, ignore_index=True)


def _kt4(folder: Path, user: str) -> pd.DataFrame:
    return pd.read_csv(folder / "KT4" / f"{user}.csv", dtype={"user_answer": str, "cursor_time": "Int64"})


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _kt4_answers(kt4: pd.DataFrame) -> pd.DataFrame:
    """Per answered question: the bundle's enter time, the last respond before submit, and the changes."""
    kt4 = kt4.assign(visit=(kt4.action_type.eq("enter") & kt4.item_id.str.startswith("b")).cumsum())
    enter = kt4[kt4.action_type.eq("enter") & kt4.item_id.str.startswith("b")].set_index("visit").timestamp
    submit = kt4[kt4.action_type.eq("submit")].set_index("visit").timestamp
    acts = kt4[kt4.action_type.isin(["respond", "erase_choice"])]
    assert (acts.timestamp.values < submit.loc[acts.visit].values).all()
    responds = acts[acts.action_type.eq("respond")]
    out = responds.groupby(["visit", "item_id"], sort=False).agg(user_answer=("user_answer", "last")).reset_index()
    changes = acts.groupby(["visit", "item_id"], sort=False).size() - 1
    out["changes"] = changes.loc[list(zip(out.visit, out.item_id))].values
    out["timestamp"] = enter.loc[out.visit].values
    out["bundle_ms"] = (submit - enter).loc[out.visit].values
    return out.rename(columns={"item_id": "question_id"})


def test_same_seed_same_bytes_other_seed_differs(sample, tmp_path):
    folder, params = sample
    again = write_ednet_sample(tmp_path / "again", n_learners=N, seed=0)
    assert again == params
    assert _files(tmp_path / "again") == _files(folder)
    write_ednet_sample(tmp_path / "other", n_learners=N, seed=1)
    other = _files(tmp_path / "other")
    for name in ("KT1/u1.csv", "KT4/u1.csv", "ground_truth.parquet", "questions.csv"):
        assert other[name] != _files(folder)[name], name
    assert json.loads((folder / "sample_params.json").read_text()) == params


def test_files_have_the_real_headers_and_value_styles(sample, fixtures_dir):
    folder, _ = sample
    for name in ("questions.csv", "lectures.csv", "KT1/u1.csv", "KT4/u1.csv"):
        real = (fixtures_dir / "ednet" / name).read_text().splitlines()[0]
        assert (folder / name).read_text().splitlines()[0] == real, name
    assert len(list((folder / "KT1").glob("u*.csv"))) == N

    questions = pd.read_csv(folder / "questions.csv", dtype=str)
    assert questions.question_id.str.fullmatch(r"q\d+").all() and questions.bundle_id.str.fullmatch(r"b\d+").all()
    assert (questions.explanation_id == "e" + questions.bundle_id.str[1:]).all()
    assert questions.tags.str.fullmatch(r"-1|\d+(;\d+)*").all() and (questions.tags == "-1").any()
    assert set(questions.part.astype(int)) == set(range(1, 8))
    assert set(questions.correct_answer) == set("abcd")
    assert set(questions.correct_answer[questions.part == "2"]) == set("abc")   # part 2 has three choices
    assert questions.deployed_at.str.fullmatch(r"-1|1\d{12}").all() and (questions.deployed_at == "-1").any()
    bundle_sizes = questions.groupby("bundle_id").part.agg(["first", "size"])
    assert set(bundle_sizes[bundle_sizes["first"].isin(["1", "2", "5"])]["size"]) == {1}
    assert set(bundle_sizes[bundle_sizes["first"] == "7"]["size"]) == {2, 3, 4, 5}
    lectures = pd.read_csv(folder / "lectures.csv", dtype=str)
    assert lectures.lecture_id.str.fullmatch(r"l\d+").all() and (lectures.video_length == "-1").any()

    kt1 = _kt1(folder)
    assert kt1.question_id.isin(questions.question_id).all() and kt1.user_answer.isin(list("abcd")).all()
    for _, rows in kt1.groupby("user"):
        first = rows.drop_duplicates("solving_id")
        assert (first.solving_id.values == np.arange(1, len(first) + 1)).all()
        assert (np.diff(first.timestamp.values) > 0).all() and (np.diff(rows.timestamp.values) >= 0).all()
    sizes = kt1.groupby("user").size()
    assert sizes.min() >= 50 and sizes.max() <= 304 and sizes.std() > 10
    assert 1000 <= kt1.elapsed_time.median() <= 120_000

    kt4 = pd.concat([_kt4(folder, f"u{i}") for i in (1, 2, 3)])
    assert set(kt4.action_type) <= {"enter", "respond", "submit", "quit", "erase_choice", "play_audio", "pause_audio",
                                    "play_video", "pause_video"}
    assert {"enter", "respond", "submit", "quit", "play_audio", "pause_audio"} <= set(kt4.action_type)
    assert kt4.item_id.str.fullmatch(r"[bqel]\d+").all()
    assert set(kt4.source) <= {"diagnosis", "sprint", "tutor", "adaptive_offer", "review", "archive"}
    assert set(kt4.platform) <= {"mobile", "web"}
    media = kt4.action_type.str.startswith(("play_", "pause_"))
    assert kt4.cursor_time[media].notna().all() and kt4.cursor_time[~media].isna().all()
    answering = kt4.action_type.isin(["respond", "erase_choice"])
    assert kt4.user_answer[answering].isin(list("abcd")).all() and kt4.user_answer[~answering].isna().all()
    assert kt4.item_id[answering].str.startswith("q").all()
    for user in ("u1", "u2", "u3"):
        rows = _kt4(folder, user)
        assert (np.diff(rows.timestamp.values) > 0).all()
        media = rows[rows.action_type.str.startswith(("play_", "pause_"))]   # (play, pause) pairs in a row
        plays, pauses = media.iloc[::2], media.iloc[1::2]
        assert plays.action_type.str.startswith("play_").all() and pauses.action_type.str.startswith("pause_").all()
        assert (pauses.cursor_time.values > plays.cursor_time.values).all()


def test_kt1_and_kt4_agree_on_every_answer(sample):
    folder, _ = sample
    kt1 = _kt1(folder)
    questions = pd.read_csv(folder / "questions.csv")
    truth = pd.read_parquet(folder / "ground_truth.parquet")
    n_rows = 0
    for user in sorted({p.stem for p in (folder / "KT4").glob("u*.csv")}):
        from_kt4 = _kt4_answers(_kt4(folder, user))
        mine = kt1[kt1.user == user].reset_index(drop=True)
        assert len(from_kt4) == len(mine)
        assert (from_kt4.timestamp.values == mine.timestamp.values).all()
        assert (from_kt4.question_id.values == mine.question_id.values).all()
        assert (from_kt4.user_answer.values == mine.user_answer.values).all()
        per_bundle = mine.groupby("solving_id").question_id.transform("size").values
        assert (from_kt4.bundle_ms.values // per_bundle == mine.elapsed_time.values).all()
        n_rows += len(mine)
    assert n_rows == len(kt1)   # kt4_fraction=1.0: every learner has a KT4 file
    # correctness derived from the files equals the ground truth's observed outcome
    merged = kt1.merge(questions, on="question_id").merge(truth, on=["user", "timestamp", "question_id"])
    assert len(merged) == len(kt1)
    assert ((merged.user_answer == merged.correct_answer).astype(int) == merged.correct).all()


def test_ground_truth_covers_every_kt1_row(sample):
    folder, params = sample
    kt1 = _kt1(folder)
    truth = pd.read_parquet(folder / "ground_truth.parquet")
    assert list(truth.columns[:8]) == ["user", "timestamp", "question_id", "p_correct", "logit_item", "logit_content",
                                      "logit_behavior", "logit_base"]
    assert truth.timestamp.dtype == np.int64 and truth.p_correct.dtype == np.float64
    assert len(truth) == len(kt1) == params["summary"]["answers"]
    assert not truth.duplicated(["user", "timestamp", "question_id"]).any()
    assert len(kt1.merge(truth, on=["user", "timestamp", "question_id"])) == len(kt1)
    assert ((truth.p_correct > 0) & (truth.p_correct < 1)).all()
    logit = truth[["logit_item", "logit_content", "logit_behavior", "logit_base"]].sum(axis=1)
    np.testing.assert_allclose(truth.p_correct, 1 / (1 + np.exp(-logit)), rtol=1e-12)
    assert 0.75 < params["summary"]["bayes_auc"] < 0.9 and 0.55 < truth.correct.mean() < 0.8


@pytest.mark.parametrize("dominant", ["behavior", "item"])
def test_strengths_decide_which_modality_carries_the_signal(tmp_path, dominant):
    strengths = {"item": 0.2, "content": 0.2, "behavior": 0.2, dominant: 3.0}
    write_ednet_sample(tmp_path / "s", n_learners=N, seed=3, strengths=strengths)
    var = pd.read_parquet(tmp_path / "s" / "ground_truth.parquet").filter(like="logit_").var()
    others = [m for m in ("item", "content", "behavior") if m != dominant]
    assert all(var[f"logit_{dominant}"] > 25 * var[f"logit_{m}"] for m in others), var.to_dict()
    assert var[f"logit_{dominant}"] > 2 * var["logit_base"]


def test_zero_strength_silences_a_modality(tmp_path):
    write_ednet_sample(tmp_path / "s", n_learners=N, seed=4, strengths={"content": 0.0, "behavior": 0})
    truth = pd.read_parquet(tmp_path / "s" / "ground_truth.parquet")
    assert (truth.logit_content == 0).all() and (truth.logit_behavior == 0).all()
    assert truth.logit_item.std() > 0.3


def test_behaviour_depends_on_mastery(sample):
    folder, _ = sample
    truth = pd.read_parquet(folder / "ground_truth.parquet")
    rows = []
    for user in ("u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9", "u10"):
        rows.append(_kt4_answers(_kt4(folder, user)).assign(user=user))
    rows = pd.concat(rows).merge(truth, on=["user", "timestamp", "question_id"])
    low, high = rows[rows.p_correct < 0.5], rows[rows.p_correct > 0.85]
    assert len(low) > 100 and len(high) > 100
    assert low.bundle_ms.mean() > 1.3 * high.bundle_ms.mean()
    assert low.changes.mean() > 3 * high.changes.mean()
    kt1 = _kt1(folder).merge(truth, on=["user", "timestamp", "question_id"])
    assert kt1[kt1.p_correct < 0.5].elapsed_time.mean() > kt1[kt1.p_correct > 0.85].elapsed_time.mean()


def test_learners_learn(sample):
    truth = pd.read_parquet(sample[0] / "ground_truth.parquet")
    per_user = truth.groupby("user").p_correct.agg(first=lambda p: p.iloc[:30].mean(), last=lambda p: p.iloc[-30:].mean())
    assert (per_user["last"] - per_user["first"]).mean() > 0.05
    assert (per_user["last"] > per_user["first"]).mean() > 0.7


def test_kt4_fraction_keeps_a_subset_of_learners(tmp_path):
    params = write_ednet_sample(tmp_path / "s", n_learners=N, seed=0, kt4_fraction=0.5)
    kt4_users = {p.stem for p in (tmp_path / "s" / "KT4").glob("u*.csv")}
    assert len(kt4_users) == N // 2 == params["summary"]["kt4_learners"]
    assert kt4_users < {p.stem for p in (tmp_path / "s" / "KT1").glob("u*.csv")}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_learners": 0}, "n_learners"),
        ({"strengths": {"items": 1.0}}, "unknown strength"),
        ({"strengths": {"item": -1.0}}, "must be a finite number"),
        ({"kt4_fraction": 1.5}, "kt4_fraction"),
    ],
)
def test_bad_arguments_are_bad_input(tmp_path, kwargs, message):
    with pytest.raises(BadInput, match=re.escape(message)):
        write_ednet_sample(tmp_path / "s", **kwargs)


def test_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="not empty"):
        write_ednet_sample(tmp_path / "s", n_learners=N)
    assert (tmp_path / "s" / "keep.txt").read_text() == "mine"


def test_every_simulator_parameter_is_documented():
    from dataclasses import fields

    import dsrsd_cli.samples.ednet_model as module

    missing = [f.name for f in fields(module.SimParams) if f"`{f.name}`" not in module.__doc__]
    assert not missing, f"explain these in the module docstring: {missing}"


def test_summary_auc_matches_sklearn(sample):
    from sklearn.metrics import roc_auc_score

    from dsrsd_cli.samples.ednet import _auc

    truth = pd.read_parquet(sample[0] / "ground_truth.parquet")
    assert sample[1]["summary"]["bayes_auc"] == round(roc_auc_score(truth.correct, truth.p_correct), 4)
    label, score = np.array([0, 1, 1, 0, 1]), np.array([0.2, 0.2, 0.9, 0.5, 0.5])   # ties
    assert _auc(label, score) == pytest.approx(roc_auc_score(label, score))
