"""`prepare --dataset ednet`: real EdNet extracts -> Parquet, bad input, splits, atomicity.

The expected numbers below were read off the raw CSVs in tests/fixtures/ednet (see the
comments next to each); nothing here is computed by the code under test.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from dsrsd_cli.data.ednet_batch import parse_kt1, parse_kt4
from dsrsd_cli.data.ednet_contents import parse_contents
from dsrsd_cli.data.ednet_format import SOURCE_NAMES
from dsrsd_cli.data.ednet_rows import FileGroup
from dsrsd_cli.engine.prepare import prepare_ednet
from dsrsd_cli.data.schema import EDNET_INTERACTIONS, EDNET_LECTURES, EDNET_QUESTIONS, EDNET_SPLITS
from dsrsd_cli.errors import BadInput

FIX = Path(__file__).parent / "fixtures" / "ednet"
KT1_HEADER = "timestamp,solving_id,question_id,user_answer,elapsed_time\n"
KT4_HEADER = "timestamp,action_type,item_id,cursor_time,source,user_answer,platform\n"


@pytest.fixture(scope="module")
def contents():
    return parse_contents((FIX / "questions.csv").read_bytes(), (FIX / "lectures.csv").read_bytes())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("ednet") / "prepared"
    manifest = prepare_ednet(FIX, out, workers=1)
    return out, manifest, pq.read_table(out / "interactions.parquet")


# ---------------------------------------------------------------- real extracts
def test_contents_counts(prepared):
    out, manifest, _ = prepared
    questions = pq.read_table(out / "questions.parquet")
    lectures = pq.read_table(out / "lectures.parquet")
    assert questions.schema.equals(EDNET_QUESTIONS) and lectures.schema.equals(EDNET_LECTURES)
    assert questions.num_rows == 13_169 and lectures.num_rows == 1_021
    # PROVENANCE.md: 797 questions have tags -1, 2,101 have deployed_at -1
    assert sum(len(t) == 0 for t in questions["tags"].to_pylist()) == 797
    assert questions["deployed_at"].null_count == 2_101
    assert questions["question"].to_pylist() == list(range(1, 13_170))
    # questions.csv line 2: q1,b1,e1,b,1,"1;2;179;181". Tag ids over both files run 1..300
    # without 127, 139, 197, 198, 217, 218, 299: dense 179 -> 177, 181 -> 179
    assert questions.slice(0, 1).to_pylist()[0]["question_id"] == "q1"
    assert questions["tags"][0].as_py() == [1, 2, 177, 179]
    vocab = manifest["vocab"]
    assert vocab["question"] == 13_169 and vocab["lecture"] == 1_021 and vocab["part"] == 7
    assert vocab["bundle"] == 9_534
    assert vocab["tag"] == 293  # 189 question tags + lecture-only tags: EdNet's "293 types of skills"
    # lectures.csv line 2: l520,5,142,-1,-1 -> tag 142 is dense 140; video length unknown -> null
    assert lectures.slice(0, 1).to_pylist()[0] == {"lecture_id": "l520", "lecture": 1, "part": 5, "tags": [140],
                                                   "video_length_ms": None}


def test_kt1_u1_answers(contents):
    rows = parse_kt1((FIX / "KT1" / "u1.csv").read_bytes(), "u1", contents)
    assert len(rows) == 1_082
    assert rows["position"].tolist() == list(range(1_082))
    first = rows.iloc[0]
    # KT1/u1.csv line 2: 1565096190868,1,q5012,b,38000 ; questions.csv: q5012 correct answer c
    assert (first["timestamp"], first["question"], first["correct"], first["elapsed_ms"]) == (1565096190868, 5012, 0, 38000)
    assert np.isnan(first["lag_ms"])  # first bundle: no previous one
    # line 3: 1565096221062,2,q4706,c,24000 ; q4706 answer c -> correct. Previous bundle ended at
    # 1565096190868 + 38000 > 1565096221062, so the lag is clamped at 0.
    assert (rows.iloc[1]["correct"], rows.iloc[1]["lag_ms"]) == (1, 0)
    # KT1 has no behaviour: null, not zero
    for col in ("answer_changes", "explanation_ms", "lecture_ms", "media_plays", "platform", "source"):
        assert rows[col].isna().all(), col
    assert rows["lectures"].isna().all() and (rows["kt_level"] == 1).all()
    # bundle 68 (lines 69-72): 4 questions of one bundle share the shown time of the first
    bundle = rows[rows["bundle"] == rows.iloc[67]["bundle"]]
    assert len(bundle) == 4 and bundle["timestamp"].nunique() == 1 and bundle["timestamp"].iloc[0] == 1565395558060


def test_kt4_correctness_matches_kt1_for_u1(contents):
    kt1 = parse_kt1((FIX / "KT1" / "u1.csv").read_bytes(), "u1", contents)
    kt4 = parse_kt4((FIX / "KT4" / "u1.csv").read_bytes(), "u1", contents)
    # KT4/u1.csv has 584 respond rows on 504 distinct (bundle showing, question) pairs
    assert len(kt4) == 504
    matched = 0
    kt1_by_question = {q: g for q, g in kt1.groupby("question")}
    for row in kt4.itertuples():
        same = kt1_by_question.get(row.question)
        if same is None:
            continue
        # the KT1 record of this answer lies within the bundle's enter..submit window (+-10 s)
        hit = same[(same["timestamp"] >= row.timestamp - 10_000) & (same["timestamp"] <= row.timestamp + row.elapsed_ms + 10_000)]
        if len(hit):
            matched += 1
            assert (hit["correct"] == row.correct).all(), row
    assert matched >= 490


def test_hand_checked_kt4_question(contents):
    rows = parse_kt4((FIX / "KT4" / "u1.csv").read_bytes(), "u1", contents)
    # KT4/u1.csv
    # 2273: 1569330888504,submit,b4096            <- previous bundle ends
    # 2276: 1569331101511,enter,l266,,archive     -> quit at 2279: 1569331438466 (336,955 ms)
    # 2280: 1569331453709,enter,l332,,archive     -> quit at 2285: 1569331596979 (143,270 ms)
    # 2286: 1569331846211,enter,b5536,,sprint,,mobile
    # 2287: 1569331846688,play_audio,b5536,0      (1 media play while answering)
    # 2288: ...respond,q8065,d / 2290: respond,q8065,c / 2291: respond,q8065,d   (2 changes; last d)
    # 2292: 1569331878509,submit,b5536
    # 2293: 1569331878556,enter,e5536 / 2294: 1569331881636,quit,e5536        (3,080 ms)
    # questions.csv: q8065,b5536,e5536,d ; lectures.csv: l266 line 851, l332 line 917 -> 850, 916
    row = rows[rows["timestamp"] == 1569331846211].iloc[0]
    assert row["question"] == 8065 and row["correct"] == 1
    assert row["elapsed_ms"] == 1569331878509 - 1569331846211
    assert row["lag_ms"] == 1569331846211 - 1569330888504
    assert row["answer_changes"] == 2
    assert row["explanation_ms"] == 1569331881636 - 1569331878556
    assert list(row["lectures"]) == [850, 916]
    assert row["lecture_ms"] == (1569331438466 - 1569331101511) + (1569331596979 - 1569331453709)
    assert row["media_plays"] == 1 and row["platform"] == 1 and row["kt_level"] == 4
    assert row["source"] == SOURCE_NAMES.index("sprint") + 1
    # the same bundle shown again at 2295 and submitted without an answer: no row, counted
    assert rows.attrs["skipped"]["unanswered_bundle"] > 0
    assert rows.attrs["dropped"] == {"duplicate_row": 1}  # lines 1485/1486 are identical responds


def test_prepared_folder(prepared):
    out, manifest, table = prepared
    assert table.schema.equals(EDNET_INTERACTIONS)
    frame = table.to_pandas()
    users = list(dict.fromkeys(frame["user"]))
    assert users == ["u1", "u3", "u4", "u5", "u6", "u7", "u8", "u9", "u10"]  # numeric order
    for _, g in frame.groupby("user"):
        assert g["position"].tolist() == list(range(len(g)))
        assert g["timestamp"].is_monotonic_increasing
    # u1 is in KT1 and KT4: all 1,082 KT1 answers kept, KT4 features where the log has them,
    # no disagreement between KT1's answer and KT4's last respond
    merge = manifest["kt1_merge"]
    assert merge["learners"] == 1 and merge["answers_disagree"] == 0
    assert merge["answers_agree"] + merge["kt1_answers_filled"] + (frame[frame.user == "u1"].kt_level == 1).sum() == 1_082
    assert manifest["dropped"] == {"duplicate_row": 1}
    assert manifest["source"]["kt_levels"] == [1, 4] and manifest["dataset"] == "ednet"
    assert manifest["rows_in"] == 1_082 + 18_256  # data lines of KT1/u1 + the nine KT4 files
    assert manifest["rows_out"] == len(frame) and manifest["users"] == 9
    assert json.loads((out / "manifest.json").read_text())["rows_out"] == len(frame)


def test_splits_by_learner(prepared):
    out, manifest, table = prepared
    splits = pq.read_table(out / "splits.parquet")
    assert splits.schema.equals(EDNET_SPLITS)
    s = splits.to_pandas()
    assert s["user"].is_unique and set(s["user"]) == set(table["user"].to_pylist())
    assert set(s["split"]) <= {"train", "valid", "test"}
    assert manifest["splits"]["sizes"] == s["split"].value_counts().to_dict() | {
        k: 0 for k in {"train", "valid", "test"} - set(s["split"])}
    assert (s.loc[s["split"] == "test", "fold"] == -1).all()


# ---------------------------------------------------------------- small raw folders
def _raw(tmp_path: Path, files: dict[str, str | bytes], n_questions: int = 200) -> Path:
    raw = tmp_path / "raw"
    (raw / "contents").mkdir(parents=True)
    lines = (FIX / "questions.csv").read_text().splitlines(keepends=True)[: n_questions + 1]
    (raw / "contents" / "questions.csv").write_text("".join(lines))
    shutil.copy(FIX / "lectures.csv", raw / "contents" / "lectures.csv")
    for name, text in files.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return raw


# q1..q5 correct answers: b, a, b, b, c
GOOD = KT1_HEADER + "1000,1,q1,b,5000\n9000,2,q2,c,4000\n20000,3,q3,b,3000\n"
BAD_CASES = {
    # reason: (KT1/u2.csv, rows of u2 kept, the strict error's location)
    "missing column": ("bad_header", "timestamp,solving_id,question_id,user_answer\n1000,1,q1,b\n", 0,
                       r"KT1/u2\.csv, line 1: missing column\(s\) elapsed_time"),
    "renamed column": ("bad_header", KT1_HEADER.replace("elapsed_time", "elapsed") + "1000,1,q1,b,5000\n", 0,
                       r"KT1/u2\.csv, line 1: missing column\(s\) elapsed_time"),
    "wrong type": ("bad_value", KT1_HEADER + "1000,1,q1,b,5000\n2000,2,q2,a,abc\n", 1,
                   r"KT1/u2\.csv, line 3, column 'elapsed_time': 'abc' is not an integer"),
    # one byte that is not UTF-8 costs its row only: line 2 of u2 is kept
    "not utf-8": ("not_utf8", KT1_HEADER.encode() + b"1000,1,q1,b,5000\n2000,2,q\xff2,a,5000\n", 1,
                  r"KT1/u2\.csv, line 3, column 'question_id': not UTF-8"),
    "not utf-8 in an integer": ("not_utf8", KT1_HEADER.encode() + b"1000,1,q1,b,5\xe9000\n2000,2,q2,a,5000\n", 1,
                                r"KT1/u2\.csv, line 2, column 'elapsed_time': not UTF-8"),
    "header not utf-8": ("bad_header", b"timestamp,solving_id,question_id,user_\xffanswer,elapsed_time\n1000,1,q1,b,5000\n",
                         0, r"KT1/u2\.csv, line 1: header is not UTF-8"),
    "missing field": ("wrong_field_count", KT1_HEADER + "1000,1,q1,b,5000\n2000,2,q2,a\n20000,3,q3,b,3000\n", 2,
                      r"KT1/u2\.csv, line 3, column 'elapsed_time': expected 5 comma-separated fields, found 4"),
    "extra field": ("wrong_field_count", KT1_HEADER + "1000,1,q1,b,5000,7\n2000,2,q2,a,5000\n", 1,
                    r"KT1/u2\.csv, line 2, column 'elapsed_time': expected 5 comma-separated fields, found 6"),
    "empty file": ("empty_file", b"", 0, r"KT1/u2\.csv, line 1: empty file"),
    "unknown question": ("unknown_question", KT1_HEADER + "1000,1,q1,b,5000\n2000,2,q99999,a,5000\n", 1,
                         r"KT1/u2\.csv, line 3, column 'question_id'"),
    "negative timestamp": ("negative_time", KT1_HEADER + "-5,1,q1,b,5000\n2000,2,q2,a,5000\n", 1,
                           r"KT1/u2\.csv, line 2, column 'timestamp'"),
    "negative elapsed": ("negative_time", KT1_HEADER + "1000,1,q1,b,5000\n2000,2,q2,a,-1\n", 1,
                         r"KT1/u2\.csv, line 3, column 'elapsed_time'"),
    "duplicate row": ("duplicate_row", KT1_HEADER + "1000,1,q1,b,5000\n1000,1,q1,b,5000\n2000,2,q2,a,5000\n", 2,
                      r"KT1/u2\.csv, line 3: exact duplicate"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_dropped_or_strict(tmp_path, case):
    reason, text, kept, location = BAD_CASES[case]
    raw = _raw(tmp_path, {"KT1/u1.csv": GOOD, "KT1/u2.csv": text})
    manifest = prepare_ednet(raw, tmp_path / "out", workers=1)
    assert manifest["dropped"] == {reason: 1}
    frame = pq.read_table(tmp_path / "out" / "interactions.parquet").to_pandas()
    assert (frame["user"] == "u1").sum() == 3 and (frame["user"] == "u2").sum() == kept
    with pytest.raises(BadInput, match=location):
        prepare_ednet(raw, tmp_path / "strict", workers=1, strict=True)
    assert not (tmp_path / "strict").exists()


def _with_bad_byte(path: Path, line: int, column: str) -> bytes:
    """The file's bytes with 0xFF (never UTF-8) put in the middle of `column` on `line` (1-based)."""
    lines = path.read_bytes().split(b"\n")
    fields = lines[line - 1].split(b",")
    j = lines[0].decode().split(",").index(column)
    half = len(fields[j]) // 2
    fields[j] = fields[j][:half] + b"\xff" + fields[j][half:]
    lines[line - 1] = b",".join(fields)
    return b"\n".join(lines)


@pytest.mark.parametrize("column", ["question_id", "user_answer", "elapsed_time", "timestamp"])
def test_one_bad_byte_in_a_kt1_file_costs_one_answer(contents, column):
    # KT1/u1.csv line 101: 1566219216118,90,q8482,a,33000 (the only row of solving_id 90)
    rows = parse_kt1(_with_bad_byte(FIX / "KT1" / "u1.csv", 101, column), "u1", contents)
    assert len(rows) == 1_081 and rows.attrs["dropped"] == {"not_utf8": 1}
    full = parse_kt1((FIX / "KT1" / "u1.csv").read_bytes(), "u1", contents)
    assert 1566219216118 in set(full["timestamp"])
    assert sorted(rows["timestamp"]) == sorted(t for t in full["timestamp"] if t != 1566219216118)


def test_a_bad_byte_keeps_the_fast_path(contents, monkeypatch):
    # only the bad line is found line by line; the rest is parsed by pyarrow as usual
    monkeypatch.setattr(FileGroup, "_parse_slow", lambda *a, **k: pytest.fail("line-by-line parse of the whole group"))
    rows = parse_kt1(_with_bad_byte(FIX / "KT1" / "u1.csv", 101, "question_id"), "u1", contents)
    assert len(rows) == 1_081 and rows.attrs["dropped"] == {"not_utf8": 1}


def test_one_bad_byte_in_a_kt4_file_costs_one_action(contents):
    # KT4/u1.csv line 2287: 1569331846688,play_audio,b5536,0,sprint,,mobile (see test_hand_checked_kt4_question)
    rows = parse_kt4(_with_bad_byte(FIX / "KT4" / "u1.csv", 2287, "source"), "u1", contents)
    assert len(rows) == 504                                             # every answer kept
    assert rows.attrs["dropped"] == {"not_utf8": 1, "duplicate_row": 1}
    row = rows[rows["timestamp"] == 1569331846211].iloc[0]
    assert (row["question"], row["correct"], row["answer_changes"]) == (8065, 1, 2)
    assert row["media_plays"] == 0                                      # the dropped play_audio


def test_bad_bytes_in_kt1_and_kt4_files_through_prepare(tmp_path):
    kt1 = _with_bad_byte(FIX / "KT1" / "u1.csv", 101, "question_id")
    kt4 = _with_bad_byte(FIX / "KT4" / "u1.csv", 2287, "source")
    raw = _raw(tmp_path, {"KT1/u1.csv": kt1, "KT4/u2.csv": kt4}, n_questions=13_169)
    console = Console(file=io.StringIO(), width=200)
    manifest = prepare_ednet(raw, tmp_path / "out", workers=1, console=console)
    assert manifest["dropped"] == {"not_utf8": 2, "duplicate_row": 1}
    assert manifest["dropped_first"]["not_utf8"].endswith("KT1/u1.csv, line 101, column 'question_id': "
                                                          "not UTF-8 text; re-export the file as UTF-8")
    assert manifest["rows_in"] == 1_082 + 3_995                         # data lines of the two files
    frame = pq.read_table(tmp_path / "out" / "interactions.parquet").to_pandas()
    assert (frame["user"] == "u1").sum() == 1_081 and (frame["user"] == "u2").sum() == 504
    shown = console.file.getvalue()
    assert "rows dropped" in shown and "not_utf8" in shown                # the console's table
    with pytest.raises(BadInput, match=r"KT1/u1\.csv, line 101, column 'question_id': not UTF-8"):
        prepare_ednet(raw, tmp_path / "strict", workers=1, strict=True)
    assert not (tmp_path / "strict").exists()
    res = subprocess.run([sys.executable, "-m", "dsrsd_cli", "prepare", "--dataset", "ednet", "--raw", str(raw),
                          "--out", str(tmp_path / "cli"), "--strict"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "KT1/u1.csv, line 101, column 'question_id': not UTF-8" in res.stderr
    assert not (tmp_path / "cli").exists()


def test_bad_bytes_and_a_short_row_in_one_file(tmp_path):
    text = KT1_HEADER.encode() + b"1000,1,q1,b,5000\n2000,2,q\xff2,a,5000\n9000,3,q3\n20000,4,q4,b,3000\n"
    raw = _raw(tmp_path, {"KT1/u1.csv": GOOD, "KT1/u2.csv": text})
    manifest = prepare_ednet(raw, tmp_path / "out", workers=1)
    assert manifest["dropped"] == {"not_utf8": 1, "wrong_field_count": 1}
    rows = pq.read_table(tmp_path / "out" / "interactions.parquet").to_pandas()
    assert rows.loc[rows["user"] == "u2", "question"].tolist() == [1, 4]  # lines 2 and 5
    assert (rows["user"] == "u1").sum() == 3
    with pytest.raises(BadInput, match=r"KT1/u2\.csv, line 3, column 'question_id': not UTF-8"):
        prepare_ednet(raw, tmp_path / "strict", workers=1, strict=True)


@pytest.mark.parametrize("short_row", [False, True])
def test_bad_bytes_in_a_column_not_read_are_ignored(tmp_path, short_row):
    # an extra column is not read (by pyarrow nor by the line-by-line path): its bytes do not matter
    text = (KT1_HEADER.rstrip("\n") + ",note\n").encode() + b"1000,1,q1,b,5000,caf\xe9\n9000,2,q2,c,4000,x\n"
    raw = _raw(tmp_path, {"KT1/u1.csv": text + (b"9500,3,q3\n" if short_row else b"")})
    manifest = prepare_ednet(raw, tmp_path / "out", workers=1)
    assert manifest["dropped"] == ({"wrong_field_count": 1} if short_row else {})
    assert manifest["rows_out"] == 2


def test_a_bad_row_in_the_contents_files_costs_that_row(tmp_path):
    raw = _raw(tmp_path, {"KT1/u1.csv": GOOD})
    questions = raw / "contents" / "questions.csv"
    questions.write_bytes(_with_bad_byte(questions, 151, "tags"))          # line 151: q150,...,5;2;182,...
    lectures = raw / "contents" / "lectures.csv"
    lines = lectures.read_bytes().split(b"\n")
    lines[2] = lines[2].rsplit(b",", 1)[0]                                 # line 3 (l592): deployed_at missing
    lectures.write_bytes(b"\n".join(lines))
    manifest = prepare_ednet(raw, tmp_path / "out", workers=1)
    assert manifest["dropped"] == {"not_utf8": 1, "wrong_field_count": 1}
    q = pq.read_table(tmp_path / "out" / "questions.parquet")["question_id"].to_pylist()
    lec = pq.read_table(tmp_path / "out" / "lectures.parquet")["lecture_id"].to_pylist()
    assert len(q) == 199 and "q150" not in q and "q151" in q
    assert len(lec) == 1_020 and "l592" not in lec and lec[:2] == ["l520", "l1259"]
    assert manifest["rows_out"] == 3
    # strict: the earliest problem of the first file (questions.csv), not the first by name
    with pytest.raises(BadInput, match=r"questions\.csv, line 151, column 'tags': not UTF-8"):
        prepare_ednet(raw, tmp_path / "strict", workers=1, strict=True)
    assert not (tmp_path / "strict").exists()


def test_bad_action_rows(tmp_path):
    log = KT4_HEADER + (
        "1000,enter,b1,,sprint,,mobile\n"
        "2000,respond,q1,,sprint,a,mobile\n"       # changed to b below
        "2500,erase_choice,q1,,sprint,a,mobile\n"
        "3000,respond,q1,,sprint,b,mobile\n"
        "4000,submit,b1,,sprint,,mobile\n"
        "5000,enter,b2,,sprint,,web\n"
        "6000,respond,q99999,,sprint,a,web\n"      # unknown question: dropped
        "x,respond,q2,,sprint,a,web\n"             # bad timestamp: dropped
        "7000,respond,q2,,sprint,a,web\n"
        "8000,submit,b2,,sprint,,web\n"
    )
    raw = _raw(tmp_path, {"KT4/u1.csv": log})
    manifest = prepare_ednet(raw, tmp_path / "out", workers=1)
    assert manifest["dropped"] == {"unknown_question": 1, "bad_value": 1}
    rows = pq.read_table(tmp_path / "out" / "interactions.parquet").to_pylist()
    assert [(r["question"], r["correct"], r["answer_changes"], r["elapsed_ms"], r["lag_ms"], r["platform"]) for r in rows] == [
        (1, 1, 2, 3000, None, 1),   # q1 answered b (correct): one re-respond + one erase
        (2, 1, 0, 3000, 1000, 2),   # q2 answered a (correct)
    ]
    assert all(r["explanation_ms"] == 0 and r["lectures"] == [] and r["media_plays"] == 0 for r in rows)
    with pytest.raises(BadInput, match=r"KT4/u1\.csv, line 8, column 'item_id'"):
        prepare_ednet(raw, tmp_path / "strict", workers=1, strict=True)


def test_feature_availability_follows_the_level(tmp_path):
    # the same log as KT2 and as KT3 (no cursor_time column): a lecture, one answer, an explanation
    log = "timestamp,action_type,item_id,source,user_answer,platform\n" + (
        "1000,enter,l520,archive,,mobile\n"     # lectures.csv line 2: l520 -> dense 1
        "61000,quit,l520,archive,,mobile\n"     # 60 s in the lecture
        "70000,enter,b1,sprint,,mobile\n"
        "75000,respond,q1,sprint,b,mobile\n"    # q1: correct answer b
        "80000,submit,b1,sprint,,mobile\n"
        "80100,enter,e1,sprint,,mobile\n"
        "90100,quit,e1,sprint,,mobile\n"        # 10 s on the explanation
    )
    raw = _raw(tmp_path, {"KT2/u1.csv": log, "KT3/u2.csv": log})
    console = Console(file=io.StringIO(), width=200)
    manifest = prepare_ednet(raw, tmp_path / "out", workers=1, console=console)
    assert manifest["source"]["kt_levels"] == [2, 3] and manifest["dropped"] == {}
    kt2, kt3 = pq.read_table(tmp_path / "out" / "interactions.parquet").to_pylist()
    shared = {"question": 1, "correct": 1, "elapsed_ms": 10_000, "lag_ms": None, "answer_changes": 0, "platform": 1,
              "source": SOURCE_NAMES.index("sprint") + 1, "media_plays": None}
    assert kt2 == kt2 | shared | {"user": "u1", "kt_level": 2, "explanation_ms": None, "lectures": None, "lecture_ms": None}
    assert kt3 == kt3 | shared | {"user": "u2", "kt_level": 3, "explanation_ms": 10_000, "lectures": [1], "lecture_ms": 60_000}
    assert "dropped" not in console.file.getvalue()  # nothing dropped: no table


def test_missing_required_files(tmp_path):
    raw = _raw(tmp_path, {"KT1/u1.csv": GOOD})
    (raw / "contents" / "questions.csv").unlink()
    with pytest.raises(BadInput, match="questions.csv not found"):
        prepare_ednet(raw, tmp_path / "out", workers=1)
    raw2 = _raw(tmp_path / "b", {"notes.txt": "no learners here"})
    with pytest.raises(BadInput, match=r"no learner files \(u\*\.csv\)"):
        prepare_ednet(raw2, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()


def test_max_users_and_force(tmp_path):
    out = tmp_path / "out"
    manifest = prepare_ednet(FIX, out, workers=1, max_users=3)
    assert manifest["users"] == 3
    assert sorted(set(pq.read_table(out / "interactions.parquet")["user"].to_pylist())) == ["u1", "u3", "u4"]
    with pytest.raises(BadInput, match="--force"):
        prepare_ednet(FIX, out, workers=1)
    (out / "stale.txt").write_text("from an older run")
    manifest = prepare_ednet(FIX, out, workers=1, max_users=1, force=True)
    assert manifest["users"] == 1 and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_prepare_gives_back_the_arrow_memory_pool_it_found(tmp_path):
    """prepare allocates Arrow buffers from malloc (ednet_workers.system_memory_pool) and leaves
    the caller's process with the pool it had."""
    import pyarrow as pa

    before = pa.default_memory_pool().backend_name
    prepare_ednet(FIX, tmp_path / "out", workers=1, max_users=2)
    assert pa.default_memory_pool().backend_name == before


def test_two_workers_identical(prepared, tmp_path):
    out, _, table = prepared
    # batches of 2 learners so that both workers get several
    prepare_ednet(FIX, tmp_path / "w2", workers=2, batch_size=2)
    prepare_ednet(FIX, tmp_path / "w1", workers=1, batch_size=2)
    assert pq.read_table(tmp_path / "w2" / "interactions.parquet").equals(table)
    for name in ("interactions.parquet", "splits.parquet", "questions.parquet"):
        assert (tmp_path / "w2" / name).read_bytes() == (tmp_path / "w1" / name).read_bytes(), name
    # the training arrays came back from the workers through files (ednet_workers._send): the
    # same bytes, and nothing of that traffic is left in the folder
    listing = sorted(str(f.relative_to(tmp_path / "w1")) for f in (tmp_path / "w1").rglob("*"))
    assert sorted(str(f.relative_to(tmp_path / "w2")) for f in (tmp_path / "w2").rglob("*")) == listing
    for name in listing:
        if name.startswith("arrays/"):
            assert (tmp_path / "w2" / name).read_bytes() == (tmp_path / "w1" / name).read_bytes(), name


@pytest.mark.parametrize("users", [["u1", "u2"], []])
def test_a_batch_result_sent_by_file_comes_back_whole(tmp_path, users):
    """A worker's table and arrays travel by file (ednet_workers._send / _receive), an empty
    batch too; the files are gone once received."""
    import pyarrow as pa
    from dsrsd_cli.data.ednet_workers import _receive, _send

    n = 3 if users else 0
    table = pa.table({"user": pa.array(["u1", "u1", "u2"][:n]), "position": pa.array([0, 1, 0][:n], pa.int32())})
    codes = np.array([0, 0, 1][:n], np.int64)
    arrays = {"question": np.arange(n, dtype=np.int32), "tags": np.arange(2 * n, dtype=np.int16).reshape(n, 2)} if n else {}
    sent = _send({"table": table, "arrays": (np.array(users, object), codes, arrays), "rows_in": 7},
                 tmp_path / "000003")
    assert "table" not in sent and "arrays" not in sent      # what the pipe carries: no rows
    back = _receive(sent)
    assert back["rows_in"] == 7 and back["table"].equals(table)
    names, back_codes, back_arrays = back["arrays"]
    assert list(names) == users and np.array_equal(back_codes, codes) and back_codes.dtype == np.int64
    assert back_arrays.keys() == arrays.keys()
    for key, values in arrays.items():
        assert back_arrays[key].dtype == values.dtype and np.array_equal(back_arrays[key], values), key
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- interrupted runs
_RUN = """
import sys
from pathlib import Path
from dsrsd_cli.data.ednet import prepare_ednet
import signal, time
# a shell's background job (CI launched with &) ignores SIGINT, and a child inherits that: Ctrl-C
# must reach this run as it reaches a user's
signal.signal(signal.SIGINT, signal.default_int_handler)
# a pause after each batch (the progress callback): the run lasts seconds, so the signal lands
# while it writes, on a fast or a busy machine alike
prepare_ednet(Path(sys.argv[1]), Path(sys.argv[2]), workers=int(sys.argv[3]), batch_size=20,
              progress=lambda done, total: time.sleep(0.02))
"""


def _many_learners(tmp_path: Path, n: int = 3000) -> Path:
    rows = "".join(f"{1000 + 60_000 * i},{i + 1},q{1 + i % 200},a,20000\n" for i in range(100))
    return _raw(tmp_path, {f"KT1/u{u}.csv": KT1_HEADER + rows for u in range(1, n + 1)})


def _descendants(pid: int) -> set[int]:
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parent.items() if pp == p}
        found |= kids
        todo.extend(kids)
    return found


@pytest.mark.parametrize("sig,workers", [(signal.SIGKILL, 2), (signal.SIGINT, 1)])
def test_interrupted_run_leaves_no_output(tmp_path, sig, workers):
    raw = _many_learners(tmp_path)
    out = tmp_path / "out"
    for attempt in range(3):  # on a busy machine the run may finish before the signal lands: retry
        child = subprocess.Popen([sys.executable, "-c", _RUN, str(raw), str(out), str(workers)], stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while not any((p / "interactions.parquet").exists() for p in tmp_path.glob(".out.partial-*")):
            if child.poll() is not None:
                break
            assert time.time() < deadline, "prepare started no output within 180 s"
            time.sleep(0.02)
        if child.poll() is not None:  # finished before it could be interrupted: try again
            assert child.returncode == 0, f"prepare failed before the signal (exit {child.returncode})"
            shutil.rmtree(out, ignore_errors=True)
            continue
        helpers = _descendants(child.pid)
        child.send_signal(sig)
        if child.wait(timeout=120) != 0:
            break
        shutil.rmtree(out)
    else:
        pytest.skip("prepare kept finishing before the signal landed")
    deadline = time.time() + 120
    assert not out.exists()
    if sig == signal.SIGINT:
        assert list(tmp_path.glob(".out.*")) == []  # Ctrl-C: the temp folder is removed
    # SIGKILL: the worker processes leave by themselves...
    while any(Path(f"/proc/{p}").exists() for p in helpers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in helpers)
    # ...and the temp folder left behind is removed by the next run, which succeeds
    prepare_ednet(_raw(tmp_path / "small", {"KT1/u1.csv": GOOD}), out, workers=1)
    assert out.exists() and list(tmp_path.glob(".out.*")) == []
