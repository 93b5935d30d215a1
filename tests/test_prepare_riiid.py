"""`prepare --dataset riiid`: Kaggle's Riiid files -> the prepared EdNet schema.

The hand-written files below (HAND_*) use the original Kaggle headers; every expected value
in the tests on them was worked out by hand in the comments, not by the code under test.
Larger generated files (tests/riiid_fakes.py) check the shift against the generator's truth,
the spill path, folder vs zip, and a model trained end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dsrsd_cli.data.prepare import prepare_dataset
from dsrsd_cli.data.prepared import open_prepared
from dsrsd_cli.data.riiid import prepare_riiid
from dsrsd_cli.data.schema import EDNET_INTERACTIONS, EDNET_LECTURES, EDNET_QUESTIONS, EDNET_SPLITS
from dsrsd_cli.errors import BadInput

sys.path.insert(0, str(Path(__file__).parent))
from riiid_fakes import TRAIN_HEADER, write_riiid  # noqa: E402

# Dense indices: questions in file order q0->1, q1->2, q10->3, q11->4, q12->5, q20->6;
# bundles by first use b0->1, b1->2, b10->3, b20->4; lectures l89->1, l100->2, l185->3;
# tags over both files sorted 7,45,51,70,131,159,200 -> 1..7.
HAND_QUESTIONS = """question_id,bundle_id,correct_answer,part,tags
0,0,0,1,51 131
1,1,1,2,
10,10,2,3,7
11,10,3,3,7 51
12,10,0,3,7
20,20,1,5,200
"""
HAND_LECTURES = """lecture_id,tag,part,type_of
89,159,5,concept
100,70,1,concept
185,45,6,solving question
"""
# Learner 115: containers 0 (q0), 1 (q1), lectures 89, 100, 89, container 4 (bundle 10: three
# questions), container 5 (q20), a trailing lecture 185. Learner 2746: containers 0 (q20), 1 (q0).
HAND_TRAIN = TRAIN_HEADER + """
0,0,115,0,0,0,0,1,,
1,56943,115,1,0,1,2,0,37000.0,False
2,118363,115,89,1,2,-1,-1,,False
3,120000,115,100,1,3,-1,-1,,False
4,125000,115,89,1,4,-1,-1,,False
5,131167,115,10,0,5,2,1,55000.0,False
6,131167,115,11,0,5,0,0,55000.0,False
7,131167,115,12,0,5,0,1,55000.0,False
8,250000,115,20,0,6,1,1,19000.0,True
9,260000,115,185,1,7,-1,-1,,False
10,0,2746,20,0,0,1,1,,
11,30000,2746,0,0,1,1,0,12000.0,True
"""
# train.csv line of row_id r is r + 2.

# Learner 115 by hand (position: question, bundle, part, tags, correct, elapsed_ms, lag_ms, lectures):
#   elapsed_ms = the NEXT container's prior_question_elapsed_time; lag = shown - (previous shown
#   + previous elapsed x its questions)
HAND_115 = [
    (0, 1, 1, 1, [3, 5], 1, 37000, None, []),            # container 0; elapsed from container 1
    (56943, 2, 2, 2, [], 0, 55000, 56943 - 37000, []),    # elapsed from container 5
    (131167, 3, 3, 3, [1], 1, 19000, 131167 - (56943 + 55000), [2, 1]),   # lectures 100, 89 by last entry
    (131167, 4, 3, 3, [1, 3], 0, 19000, 131167 - (56943 + 55000), [2, 1]),
    (131167, 5, 3, 3, [1], 1, 19000, 131167 - (56943 + 55000), [2, 1]),
    (250000, 6, 4, 5, [7], 1, None, 250000 - (131167 + 19000 * 3), []),   # last container: null
]
HAND_2746 = [
    (0, 6, 4, 5, [7], 1, 12000, None, []),
    (30000, 1, 1, 1, [3, 5], 0, None, 30000 - 12000, []),
]
COLUMNS = ["timestamp", "question", "bundle", "part", "tags", "correct", "elapsed_ms", "lag_ms", "lectures"]


def _hand(tmp_path: Path, train: str = HAND_TRAIN, questions: str = HAND_QUESTIONS, lectures: str = HAND_LECTURES,
          skip: tuple[str, ...] = ()) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.csv", train), ("questions.csv", questions), ("lectures.csv", lectures)):
        if name not in skip:
            (raw / name).write_text(text.lstrip("\n") if name != "train.csv" else text.replace("\n\n", "\n"))
    return raw


def _learner(out: Path, user: str) -> list[tuple]:
    table = pq.read_table(out / "interactions.parquet").to_pandas()
    rows = table[table["user"] == user].sort_values("position")
    assert rows["position"].tolist() == list(range(len(rows)))
    return [tuple(None if isinstance(v, float) and np.isnan(v) else (list(v) if hasattr(v, "__len__") else v)
                  for v in r) for r in rows[COLUMNS].itertuples(index=False)]


def _line(train: str, row_id: int, new: str) -> str:
    """train.csv text with the row of `row_id` replaced by `new`."""
    lines = train.strip("\n").split("\n")
    lines[row_id + 1] = new
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- hand-checked
@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("riiid_hand")
    out = tmp / "prepared"
    return out, prepare_riiid(_hand(tmp), out)


def test_hand_counts_and_manifest(hand):
    out, manifest = hand
    assert manifest["dataset"] == "ednet" and manifest["source"]["format"] == "riiid"
    assert manifest["rows_in"] == 12 and manifest["rows_out"] == 8 and manifest["users"] == 2
    assert manifest["dropped"] == {}
    assert manifest["skipped"] == {"lecture_without_next_question": 1}   # learner 115's lecture 185
    assert manifest["vocab"] == {"question": 6, "bundle": 4, "tag": 7, "lecture": 3, "part": 7,
                                 "source": manifest["vocab"]["source"]}
    for name, schema in (("interactions", EDNET_INTERACTIONS), ("questions", EDNET_QUESTIONS),
                         ("lectures", EDNET_LECTURES), ("splits", EDNET_SPLITS)):
        assert pq.read_schema(out / f"{name}.parquet").equals(schema), name
    prepared = open_prepared(out)    # what every model and command opens
    assert prepared.dataset == "ednet"
    questions = pq.read_table(out / "questions.parquet").to_pylist()
    assert [q["question_id"] for q in questions] == ["q0", "q1", "q10", "q11", "q12", "q20"]
    assert [q["bundle_id"] for q in questions] == ["b0", "b1", "b10", "b10", "b10", "b20"]
    assert [q["correct_answer"] for q in questions] == ["a", "b", "c", "d", "a", "b"]
    assert questions[3]["tags"] == [1, 3] and questions[1]["tags"] == []
    lectures = pq.read_table(out / "lectures.parquet").to_pylist()
    assert [(lec["lecture_id"], lec["lecture"], lec["part"], lec["tags"]) for lec in lectures] == [
        ("l89", 1, 5, [6]), ("l100", 2, 1, [4]), ("l185", 3, 6, [2])]
    splits = pq.read_table(out / "splits.parquet").to_pydict()
    assert sorted(splits["user"]) == ["u115", "u2746"]


def test_hand_checked_learners(hand):
    out, _ = hand
    assert _learner(out, "u115") == HAND_115
    assert _learner(out, "u2746") == HAND_2746
    table = pq.read_table(out / "interactions.parquet")
    for column in ("answer_changes", "explanation_ms", "lecture_ms", "media_plays", "platform", "source"):
        assert table[column].null_count == table.num_rows, column
    assert set(table["kt_level"].to_pylist()) == {1}


def test_prior_values_land_on_the_previous_container(hand):
    """Each container's elapsed_ms is the prior_question_elapsed_time of the learner's NEXT
    container, never its own row's value; the last container gets null."""
    out, _ = hand
    rows = _learner(out, "u115")
    own_prior = {0: None, 56943: 37000, 131167: 55000, 250000: 19000}   # the value on each container's rows
    next_prior = {0: 37000, 56943: 55000, 131167: 19000, 250000: None}
    for ts, *_, elapsed, _lag, _lectures in rows:
        assert elapsed == next_prior[ts]
        assert elapsed != own_prior[ts]


def test_prior_values_match_the_generator_truth(tmp_path):
    """On generated learners (bundles of 1..5 questions, lectures in between), every
    container's elapsed_ms is its own true time per question; the last is null."""
    truth = write_riiid(tmp_path / "raw", n_users=12, containers_per_user=30, seed=3, lecture_rate=0.15)
    prepare_riiid(tmp_path / "raw", tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "interactions.parquet").to_pandas()
    q = truth[~truth["lecture"]].copy()
    q["user"] = "u" + q["user_id"].astype(str)
    q["last"] = ~q.duplicated("user_id", keep="last")
    merged = table.merge(q, on=["user", "timestamp"], how="left", validate="many_to_one")
    assert len(merged) == len(table) == q["rows"].sum()
    last = merged["last"].to_numpy(bool)
    assert merged.loc[last, "elapsed_ms"].isna().all()
    assert (merged.loc[~last, "elapsed_ms"] == merged.loc[~last, "elapsed_per_question"]).all()
    # the previous container's true time differs from its own somewhere: a shift by one would fail
    assert (q.groupby("user_id")["elapsed_per_question"].diff().dropna() != 0).any()


def test_lectures_feed_the_next_question_container(tmp_path):
    """Learner 115's lectures 89, 100, 89 sit between containers 1 and 5: they belong to
    container 5 only, one entry each, ordered by last entry (100, then 89)."""
    raw = _hand(tmp_path)
    prepare_riiid(raw, tmp_path / "out")
    lectures = [r[-1] for r in _learner(tmp_path / "out", "u115")]
    assert lectures == [[], [], [2, 1], [2, 1], [2, 1], []]
    # moved after container 5 (timestamps > 131167), they feed container 6 instead
    train = HAND_TRAIN
    for row_id, new_ts in ((2, 140000), (3, 141000), (4, 142000)):
        old = train.strip("\n").split("\n")[row_id + 1]
        fields = old.split(",")
        fields[1] = str(new_ts)
        train = _line(train, row_id, ",".join(fields))
    raw2 = _hand(tmp_path / "moved", train)
    prepare_riiid(raw2, tmp_path / "out2")
    assert [r[-1] for r in _learner(tmp_path / "out2", "u115")] == [[], [], [], [], [], [2, 1]]


# ---------------------------------------------------------------- sources, order, streaming
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("riiid_gen")
    write_riiid(tmp / "raw", n_users=40, containers_per_user=50, seed=1)
    out = tmp / "prepared"
    return tmp, prepare_riiid(tmp / "raw", out), out


def _tables(out: Path) -> dict:
    return {name: pq.read_table(out / f"{name}.parquet") for name in ("interactions", "questions", "lectures", "splits")}


def test_folder_and_zip_give_identical_parquet(generated):
    tmp, manifest, out = generated
    archive = tmp / "riiid-test-answer-prediction.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("train.csv", "questions.csv", "lectures.csv"):
            zf.write(tmp / "raw" / name, name)
    zipped = prepare_riiid(archive, tmp / "from_zip")
    assert zipped["source"]["kind"] == "zip" and manifest["source"]["kind"] == "dir"
    a, b = _tables(out), _tables(tmp / "from_zip")
    for name in a:
        assert a[name].equals(b[name]), name
    assert manifest["rows_out"] == zipped["rows_out"] > 2000


def test_block_size_and_scattered_learners_do_not_change_the_result(generated, tmp_path):
    """Tiny blocks (learners cut across blocks), and a train.csv whose learners' rows are
    scattered (the spill path, two passes), give the same interactions."""
    tmp, manifest, out = generated
    reference = _tables(out)["interactions"]
    small = prepare_riiid(tmp / "raw", tmp_path / "small", chunk_bytes=777)
    assert small["source"]["learners_contiguous"] is True
    assert _tables(tmp_path / "small")["interactions"].equals(reference)

    write_riiid(tmp_path / "scattered", n_users=40, containers_per_user=50, seed=1, interleave=True)
    spilled = prepare_riiid(tmp_path / "scattered", tmp_path / "spilled", chunk_bytes=2000, spill_bytes=9000)
    assert spilled["source"]["learners_contiguous"] is False
    assert spilled["rows_out"] == manifest["rows_out"]
    got = _tables(tmp_path / "spilled")["interactions"]
    # same learners, same rows; within a container the order of equal-timestamp rows follows the file
    keys = [("user", "ascending"), ("timestamp", "ascending"), ("question", "ascending")]
    assert got.drop(["position"]).sort_by(keys).equals(reference.drop(["position"]).sort_by(keys))
    assert not (tmp_path / "spilled" / ".spill").exists()


def test_max_users_keeps_the_first_learners(generated, tmp_path):
    tmp, _, out = generated
    first = pq.read_table(out / "interactions.parquet")["user"].unique().to_pylist()[:3]
    manifest = prepare_riiid(tmp / "raw", tmp_path / "three", max_users=3)
    assert manifest["users"] == 3
    assert sorted(pq.read_table(tmp_path / "three" / "interactions.parquet")["user"].unique().to_pylist()) == sorted(first)


def test_a_model_trains_on_it(generated, tmp_path):
    _, _, out = generated
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "dsrsd_cli", "train", "--preset", "smoke", "--data", str(out),
                          "--out", str(run), "--json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics


# ---------------------------------------------------------------- bad input
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsrsd_cli", "prepare", "--dataset", "riiid", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("skip", ["train.csv", "questions.csv", "lectures.csv"])
def test_missing_file_is_one_line_exit_2(tmp_path, skip):
    raw = _hand(tmp_path, skip=(skip,))
    res = _cli("--raw", str(raw), "--out", str(tmp_path / "out"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and skip in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


def test_no_raw_is_one_line_exit_2(tmp_path):
    res = _cli("--out", str(tmp_path / "out"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "--raw" in lines[0], res.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("file, old, new, column", [
    ("train.csv", "answered_correctly", "answered_correct", "answered_correctly"),
    ("train.csv", "prior_question_elapsed_time,", "", "prior_question_elapsed_time"),
    ("questions.csv", "bundle_id", "bundle", "bundle_id"),
    ("lectures.csv", "lecture_id", "id", "lecture_id"),
])
def test_missing_or_renamed_column_is_one_line_exit_2(tmp_path, file, old, new, column):
    texts = {"train": HAND_TRAIN, "questions": HAND_QUESTIONS, "lectures": HAND_LECTURES}
    key = file[:-4]
    texts[key] = texts[key].replace(old, new, 1)
    raw = _hand(tmp_path, **texts)
    with pytest.raises(BadInput, match=f"{file}, line 1: missing column.*{column}"):
        prepare_riiid(raw, tmp_path / "api")
    res = _cli("--raw", str(raw), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "api").exists()


# (row_id, replacement line, drop reason, column named by --strict)
BAD_ROWS = [
    (6, "6,131167,115,11,0,5,0,2,55000.0,False", "bad_value", "answered_correctly"),    # not -1/0/1
    (6, "6,131167,115,11,0,5,0,-1,55000.0,False", "bad_value", "answered_correctly"),   # -1 on a question
    (6, "6,131167,115,99999,0,5,0,0,55000.0,False", "unknown_question", "content_id"),
    (6, "6,131167,115,1x1,0,5,0,0,55000.0,False", "bad_value", "content_id"),           # unparseable
    (6, "6,131167,115,11,0,5,0,0,55e3x,False", "bad_value", "prior_question_elapsed_time"),
    (6, "6,131167,115,11,0,5,0,0,55000.0,Maybe", "bad_value", "prior_question_had_explanation"),
    (6, "6,131167,115,11,0,5,0,0,55000.0", "wrong_field_count", None),
]


@pytest.mark.parametrize("row_id, line, reason, column", BAD_ROWS)
def test_a_bad_row_is_dropped_and_the_rest_of_the_learner_kept(tmp_path, row_id, line, reason, column):
    raw = _hand(tmp_path, _line(HAND_TRAIN, row_id, line))
    manifest = prepare_riiid(raw, tmp_path / "out")
    assert manifest["dropped"] == {reason: 1}
    assert f"train.csv, line {row_id + 2}" in manifest["dropped_first"][reason]
    # q11 (position 3 of the hand learner) is gone; everything else, its container's
    # elapsed, lag and lectures included, is unchanged. A line that cannot be read at all
    # (wrong field count) is not known to be a question of container 5: that container then
    # counts 2 questions, and the next lag is 250000 - (131167 + 19000 x 2).
    expected = HAND_115[:3] + HAND_115[4:]
    if reason == "wrong_field_count":
        expected[-1] = expected[-1][:7] + (250000 - (131167 + 19000 * 2), [])
    assert _learner(tmp_path / "out", "u115") == expected
    assert _learner(tmp_path / "out", "u2746") == HAND_2746

    with pytest.raises(BadInput) as e:
        prepare_riiid(raw, tmp_path / "strict", strict=True)
    message = str(e.value)
    assert f"train.csv, line {row_id + 2}" in message and "--strict" in message
    if column:
        assert f"column '{column}'" in message
    assert not (tmp_path / "strict").exists()
    res = _cli("--raw", str(raw), "--out", str(tmp_path / "cli"), "--strict")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and f"line {row_id + 2}" in res.stderr
    assert not (tmp_path / "cli").exists()


def test_a_container_of_bad_rows_still_passes_its_prior_value_back(tmp_path):
    """Container 1 (q1 only) has an unknown content_id: it writes nothing, but container 0
    still gets its prior value (37000) as elapsed_ms, and container 5's lag still counts
    from container 1's end; container 5's prior value (55000, about container 1) is not
    moved onto container 0."""
    raw = _hand(tmp_path, _line(HAND_TRAIN, 1, "1,56943,115,4242,0,1,2,0,37000.0,False"))
    manifest = prepare_riiid(raw, tmp_path / "out")
    assert manifest["dropped"] == {"unknown_question": 1}
    assert manifest["skipped"]["container_without_valid_answer"] == 1
    assert _learner(tmp_path / "out", "u115") == HAND_115[:1] + HAND_115[2:]


def test_unplaceable_and_bad_lecture_rows(tmp_path):
    """A row without a readable learner is dropped whole; a bad lecture row is dropped and
    its lecture is not fed to the next container."""
    train = _line(HAND_TRAIN, 11, "11,30000,x2746,0,0,1,1,0,12000.0,True")
    train = _line(train, 3, "3,120000,115,5555,1,3,-1,-1,,False")         # lecture 5555 unknown
    raw = _hand(tmp_path, train)
    manifest = prepare_riiid(raw, tmp_path / "out")
    assert manifest["dropped"] == {"bad_value": 1, "unknown_lecture": 1}
    assert "line 13, column 'user_id'" in manifest["dropped_first"]["bad_value"]
    rows = _learner(tmp_path / "out", "u115")
    assert [r[-1] for r in rows] == [[], [], [1], [1], [1], []]           # lecture 100 gone
    assert _learner(tmp_path / "out", "u2746") == [HAND_2746[0][:6] + (None, None, [])]


def test_questions_csv_bad_row_is_dropped_or_strict(tmp_path):
    raw = _hand(tmp_path, questions=HAND_QUESTIONS.replace("20,20,1,5,200", "20,20,7,5,200"))
    manifest = prepare_riiid(raw, tmp_path / "out")
    # q20 dropped from questions.csv: its two answers become unknown_question rows
    assert manifest["dropped"] == {"bad_value": 1, "unknown_question": 2}
    assert "questions.csv, line 7, column 'correct_answer'" in manifest["dropped_first"]["bad_value"]
    with pytest.raises(BadInput, match=r"questions.csv, line 7, column 'correct_answer'"):
        prepare_riiid(raw, tmp_path / "strict", strict=True)


def test_cli_prepare_riiid_end_to_end(tmp_path):
    raw = _hand(tmp_path)
    res = _cli("--raw", str(raw), "--out", str(tmp_path / "out"), "--json")
    assert res.returncode == 0, res.stderr
    manifest = json.loads(res.stdout)
    assert manifest["source"]["format"] == "riiid" and manifest["rows_out"] == 8
    assert open_prepared(tmp_path / "out").dataset == "ednet"


def test_prepare_dataset_dispatch(tmp_path):
    manifest = prepare_dataset(dataset="riiid", raw=_hand(tmp_path), out=tmp_path / "out")
    assert manifest["users"] == 2
