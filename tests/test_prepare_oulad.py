"""`dsrsd prepare --dataset oulad` on the real OULAD extracts in tests/fixtures/oulad.

The full extracts (32,593 registrations, 173,912 submissions, 13,905 click rows) are prepared
a few times; bad-input cases run on `mini`, the AAA 2013J presentation only, edited line by line.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from dsrsd_cli.data import oulad, oulad_csv
from dsrsd_cli.engine.prepare import prepare_oulad
from dsrsd_cli.data.schema import PREPARED_FILES
from dsrsd_cli.errors import BadInput

CSVS = ("courses.csv", "assessments.csv", "vle.csv", "studentInfo.csv", "studentRegistration.csv",
        "studentAssessment.csv", "studentVle.csv")
OUTPUTS = ("registrations.parquet", "clicks.parquet", "assessments.parquet", "splits.parquet")


def read(out: Path, name: str) -> pd.DataFrame:
    return pq.read_table(out / name).to_pandas()


def rows_of(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def assert_same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        assert pq.read_table(a / name).equals(pq.read_table(b / name)), name


@pytest.fixture(scope="module")
def real(tmp_path_factory, fixtures_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("real") / "oulad"
    return out, prepare_oulad(fixtures_dir / "oulad", out)


@pytest.fixture(scope="module")
def mini(tmp_path_factory, fixtures_dir) -> Path:
    """A small real raw folder: the AAA 2013J presentation, 1,500 click rows, the original quoting."""
    src, dst = fixtures_dir / "oulad", tmp_path_factory.mktemp("mini")
    for name in ("courses.csv", "assessments.csv", "vle.csv"):
        shutil.copy(src / name, dst / name)
    for name in ("studentInfo.csv", "studentRegistration.csv"):
        lines = (src / name).read_text().splitlines(keepends=True)
        (dst / name).write_text(lines[0] + "".join(x for x in lines[1:] if x.startswith('"AAA","2013J"')))
    ids = {row[2] for row in rows_of(src / "assessments.csv")[1] if row[:2] == ["AAA", "2013J"]}
    lines = (src / "studentAssessment.csv").read_text().splitlines(keepends=True)
    (dst / "studentAssessment.csv").write_text(lines[0] + "".join(x for x in lines[1:] if x.split(",")[0] in ids))
    lines = (src / "studentVle.csv").read_text().splitlines(keepends=True)
    (dst / "studentVle.csv").write_text("".join(lines[:1501]))
    return dst


@pytest.fixture(scope="module")
def mini_prepared(mini, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mini_out") / "oulad"
    return out, prepare_oulad(mini, out)


def copy_raw(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "raw"))


# ------------------------------------------------------------------ the real extracts
def test_counts_of_the_real_release(real):
    out, manifest = real
    regs = read(out, "registrations.parquet")
    assert len(regs) == 32_593 == manifest["rows_out"]["registrations.parquet"]
    expected = {"Pass": 12_361, "Withdrawn": 10_156, "Fail": 7_052, "Distinction": 3_024}
    assert regs["final_result"].value_counts().to_dict() == expected
    assert manifest["final_result"] == expected
    assert manifest["dropped"] == {}
    assert manifest["rows_in"] == {"courses.csv": 22, "assessments.csv": 206, "vle.csv": 6_364, "studentInfo.csv": 32_593,
                                   "studentRegistration.csv": 32_593, "studentAssessment.csv": 173_912,
                                   "studentVle.csv": 13_905}
    assert regs["date_registration"].isna().sum() == 45
    assert regs.duplicated(["code_module", "code_presentation", "id_student"]).sum() == 0
    assert set(regs["age_band"]) == {"0-35", "35-55", "55<="}


def test_every_student_assessment_row_is_accounted_for(real, fixtures_dir):
    out, manifest = real
    table = read(out, "assessments.parquet")
    submitted = table[table["submitted_day"].notna()]
    assert manifest["rows_in"]["studentAssessment.csv"] == 173_912
    assert len(submitted) == 173_912                              # none dropped, none invented
    assert submitted["score"].isna().sum() == 173                 # the blank scores
    assert table.loc[table["submitted_day"].isna(), ["is_banked", "score"]].isna().all().all()
    # one row per registration x assessment of its presentation
    per_presentation = pd.read_csv(fixtures_dir / "oulad/assessments.csv")
    n_assessments = per_presentation.groupby(["code_module", "code_presentation"]).size()
    regs = read(out, "registrations.parquet").groupby(["code_module", "code_presentation"]).size()
    assert len(table) == int((regs * n_assessments).sum())
    assert not table.duplicated(["code_module", "code_presentation", "id_student", "id_assessment"]).any()


def test_clicks_of_one_student_day_match_the_csv(real, fixtures_dir):
    out, _ = real
    activity = {row[0]: row[3] for row in rows_of(fixtures_dir / "oulad/vle.csv")[1]}
    _, clicks_in = rows_of(fixtures_dir / "oulad/studentVle.csv")
    per_day = defaultdict(list)
    for module, presentation, student, site, day, n in clicks_in:
        per_day[(module, presentation, int(student), int(day))].append((activity[site], int(n)))
    # the busiest student-day of the extract, so several sites and activity types are summed
    key, rows = max(per_day.items(), key=lambda kv: (len({a for a, _ in kv[1]}), len(kv[1])))
    expected = defaultdict(int)
    for activity_type, n in rows:
        expected[activity_type] += n
    assert len(rows) > len(expected) > 2
    clicks = read(out, "clicks.parquet")
    got = clicks[(clicks["code_module"] == key[0]) & (clicks["code_presentation"] == key[1])
                 & (clicks["id_student"] == key[2]) & (clicks["day"] == key[3])]
    assert dict(zip(got["activity_type"], got["clicks"])) == dict(expected)
    assert clicks["clicks"].sum() == sum(int(r[5]) for r in clicks_in)
    assert list(got["activity_type"]) == sorted(expected)         # sorted by activity type within the day


def test_imd_band_10_20_is_normalised(real, fixtures_dir):
    out, manifest = real
    header, rows = rows_of(fixtures_dir / "oulad/studentInfo.csv")
    raw = pd.Series([r[header.index("imd_band")] for r in rows])
    assert (raw == "10-20").sum() > 0 and (raw == "10-20%").sum() == 0
    imd = read(out, "registrations.parquet")["imd_band"]
    assert (imd == "10-20%").sum() == (raw == "10-20").sum()
    assert (imd == "10-20").sum() == 0
    assert imd.isna().sum() == (raw == "").sum() == 1_111
    assert "10-20%" in manifest["vocab"]["imd_band"]


def test_manifest_describes_the_run(real):
    out, manifest = real
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "oulad" and manifest["source"]["kind"] == "dir"
    assert sorted(f["path"] for f in manifest["source"]["files"]) == sorted(CSVS)
    assert all(len(f["sha256"]) == 64 for f in manifest["source"]["files"])
    assert len(manifest["vocab"]["activity_type"]) == 20
    assert manifest["vocab"]["activity_type"] == sorted(manifest["vocab"]["activity_type"])
    assert manifest["vocab"]["code_module"] == ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG"]
    assert manifest["rows_out"] == {name: pq.read_metadata(out / name).num_rows for name in OUTPUTS}
    for name, schema in PREPARED_FILES["oulad"].items():
        assert pq.read_schema(out / name).remove_metadata().equals(schema), name


def test_uci_copy_and_zip_give_identical_parquet(real, fixtures_dir, tmp_path):
    out, manifest = real
    uci = tmp_path / "uci"
    uci.mkdir()
    for name in CSVS:                          # no quoting, ? for missing (the UCI copy)
        header, rows = rows_of(fixtures_dir / "oulad" / name)
        assert not any("," in v for r in rows for v in r)
        lines = [",".join(header)] + [",".join(v if v != "" else "?" for v in r) for r in rows]
        (uci / name).write_text("\n".join(lines) + "\n")
    assert "?" in (uci / "studentInfo.csv").read_text() and '"' not in (uci / "studentInfo.csv").read_text()
    uci_manifest = prepare_oulad(uci, tmp_path / "from_uci")
    assert_same_outputs(out, tmp_path / "from_uci")
    assert uci_manifest["rows_in"] == manifest["rows_in"] and uci_manifest["dropped"] == {}

    archive = tmp_path / "OULAD.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in CSVS:                      # nested, as in the release's anonymisedData/ folder
            zf.write(fixtures_dir / "oulad" / name, f"OULAD/anonymisedData/{name}")
    zip_manifest = prepare_oulad(archive, tmp_path / "from_zip")
    assert_same_outputs(out, tmp_path / "from_zip")
    assert zip_manifest["source"]["kind"] == "zip" and zip_manifest["rows_in"] == manifest["rows_in"]


def test_learner_split_keeps_each_student_in_one_split(real):
    out, manifest = real
    splits = read(out, "splits.parquet")
    regs = read(out, "registrations.parquet")
    key = ["code_module", "code_presentation", "id_student"]
    assert splits[key].equals(regs[key])                          # one split row per registration, same order
    assert (regs["id_student"].value_counts() > 1).sum() > 500    # retakes and multi-module students exist
    assert (splits.groupby("id_student")["split"].nunique() == 1).all()
    assert (splits.groupby("id_student")["fold"].nunique() == 1).all()
    assert ((splits["split"] == "test") == (splits["fold"] == -1)).all()
    assert set(splits.loc[splits["split"] != "test", "fold"]) == {0, 1, 2, 3, 4}
    students = splits.drop_duplicates("id_student")["split"].value_counts(normalize=True)
    assert students["train"] == pytest.approx(0.7, abs=0.01) and students["test"] == pytest.approx(0.2, abs=0.01)
    assert manifest["splits"]["sizes"] == splits["split"].value_counts().to_dict()
    assert manifest["splits"] | {"sizes": None, "students": None} == {
        "seed": 0, "by": "learner", "n_folds": 5, "sizes": None, "students": None}


def test_presentation_split_follows_the_rule(fixtures_dir, tmp_path):
    raw = tmp_path / "raw"                     # all registrations, a few logs: the split only needs registrations
    shutil.copytree(fixtures_dir / "oulad", raw)
    for name in ("studentAssessment.csv", "studentVle.csv"):
        lines = (raw / name).read_text().splitlines(keepends=True)
        (raw / name).write_text("".join(lines[:50]))
    manifest = prepare_oulad(raw, tmp_path / "out", split_by="presentation", seed=3)
    splits = read(tmp_path / "out", "splits.parquet")
    roles = splits.drop_duplicates(["code_module", "code_presentation"]).set_index(
        ["code_module", "code_presentation"])["split"].to_dict()
    four = {"2013B": "train", "2013J": "train", "2014B": "valid", "2014J": "test"}    # B (Feb) before J (Oct)
    three = {"2013J": "train", "2014B": "valid", "2014J": "test"}
    expected = {"AAA": {"2013J": "train", "2014J": "test"}, "BBB": four, "CCC": {"2014B": "train", "2014J": "test"},
                "DDD": four, "EEE": three, "FFF": four, "GGG": three}
    assert roles == {(m, p): role for m, ps in expected.items() for p, role in ps.items()}
    assert manifest["splits"]["presentations"] == expected
    test_students = set(splits.loc[splits["split"] == "test", "id_student"])
    in_train = test_students & set(splits.loc[splits["split"] == "train", "id_student"])
    assert manifest["splits"]["test_students"] == len(test_students)
    assert manifest["splits"]["test_students_in_train"] == len(in_train) > 0
    assert ((splits["split"] == "test") == (splits["fold"] == -1)).all()
    dev = splits[splits["split"] != "test"]
    assert (dev.groupby("id_student")["fold"].nunique() == 1).all()
    assert set(dev["fold"]) == {0, 1, 2, 3, 4}
    assert manifest["splits"]["by"] == "presentation" and manifest["splits"]["seed"] == 3


def test_presentation_split_needs_a_later_presentation(mini, tmp_path):
    with pytest.raises(BadInput, match="--split-by learner"):
        prepare_oulad(mini, tmp_path / "out", split_by="presentation")      # AAA 2013J only


def test_a_tar_gz_gives_the_same_output(mini, mini_prepared, tmp_path):
    archive = tmp_path / "oulad.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name in CSVS:
            tf.add(mini / name, f"anonymisedData/{name}")
    manifest = prepare_oulad(archive, tmp_path / "out")
    assert manifest["source"]["kind"] == "tar"
    assert_same_outputs(mini_prepared[0], tmp_path / "out")


# ------------------------------------------------------------------ bad input, row by row
def set_field(path: Path, line: int, column: str, value: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    header = next(csv.reader([lines[0].decode()]))
    fields = [v.encode() for v in next(csv.reader([lines[line - 1].decode()]))]
    fields[header.index(column)] = value
    lines[line - 1] = b",".join(fields)
    path.write_bytes(b"\n".join(lines))


def replace(file: str, line: int, column: str, value: bytes):
    return lambda raw: set_field(raw / file, line, column, value)


def repeat_line(file: str, line: int, at: int):
    def edit(raw: Path) -> None:
        lines = (raw / file).read_bytes().split(b"\n")
        lines.insert(at - 1, lines[line - 1])
        (raw / file).write_bytes(b"\n".join(lines))
    return edit


def extra_field(file: str, line: int):
    def edit(raw: Path) -> None:
        lines = (raw / file).read_bytes().split(b"\n")
        lines[line - 1] += b",7"
        (raw / file).write_bytes(b"\n".join(lines))
    return edit


BAD_ROWS = [  # edit, file, line, column named by --strict, reason counted by default
    (replace("studentAssessment.csv", 9, "score", b"abc"), "studentAssessment.csv", 9, "score",
     "score is not a number"),
    (replace("studentRegistration.csv", 5, "date_registration", b"soon"), "studentRegistration.csv", 5,
     "date_registration", "date_registration is not an integer"),
    (replace("studentVle.csv", 40, "date", b"x"), "studentVle.csv", 40, "date", "date is not an integer"),
    (replace("studentInfo.csv", 7, "region", b"Scotl\xe4nd"), "studentInfo.csv", 7, "region",
     "region is not valid UTF-8"),
    (replace("studentAssessment.csv", 12, "id_assessment", b"999999"), "studentAssessment.csv", 12, "id_assessment",
     "id_assessment is not in assessments.csv"),
    (replace("studentVle.csv", 41, "id_site", b"1"), "studentVle.csv", 41, "id_site", "id_site is not in vle.csv"),
    (replace("studentVle.csv", 44, "id_site", b"703732"), "studentVle.csv", 44, "id_site",   # a BBB 2013J site
     "id_site belongs to another module presentation in vle.csv"),
    (replace("studentInfo.csv", 8, "code_module", b"ZZZ"), "studentInfo.csv", 8, "code_module,code_presentation",
     "code_module,code_presentation is not a module presentation of courses.csv"),
    (replace("studentVle.csv", 42, "sum_click", b"-3"), "studentVle.csv", 42, "sum_click", "sum_click is negative"),
    (replace("studentVle.csv", 43, "id_student", b"123"), "studentVle.csv", 43, "id_student",
     "id_student has no registration (studentInfo.csv) in this module presentation"),
    (replace("studentInfo.csv", 9, "final_result", b""), "studentInfo.csv", 9, "final_result",
     "final_result is missing"),
    (replace("studentInfo.csv", 10, "final_result", b"Passed"), "studentInfo.csv", 10, "final_result",
     "final_result is not one of Pass|Fail|Withdrawn|Distinction"),
    (replace("studentAssessment.csv", 14, "is_banked", b"2"), "studentAssessment.csv", 14, "is_banked",
     "is_banked is above 1"),
    (repeat_line("studentAssessment.csv", 3, at=20), "studentAssessment.csv", 20, "id_assessment,id_student",
     "id_assessment,id_student repeats the key of an earlier row"),
    (repeat_line("studentInfo.csv", 3, at=30), "studentInfo.csv", 30, "code_module,code_presentation,id_student",
     "code_module,code_presentation,id_student repeats the key of an earlier row"),
    (extra_field("studentVle.csv", 45), "studentVle.csv", 45, "sum_click", "row has the wrong number of fields"),
    (replace("studentVle.csv", 46, "id_site", b"7\xff"), "studentVle.csv", 46, "id_site", "id_site is not valid UTF-8"),
    (replace("studentAssessment.csv", 15, "id_student", b"\xc3"), "studentAssessment.csv", 15, "id_student",
     "id_student is not valid UTF-8"),
]


@pytest.mark.parametrize("edit, file, line, column, reason", BAD_ROWS, ids=[case[4] for case in BAD_ROWS])
def test_a_bad_row_is_dropped_and_counted_or_strict_names_it(mini, mini_prepared, tmp_path, edit, file, line, column,
                                                             reason):
    raw = copy_raw(mini, tmp_path)
    edit(raw)
    assert mini_prepared[1]["dropped"] == {}
    shown = io.StringIO()
    manifest = prepare_oulad(raw, tmp_path / "out", console=Console(file=shown, width=200))
    assert manifest["dropped"][f"{file}: {reason}"] == 1
    assert f"{file}: {reason}" in shown.getvalue()                   # the rich summary table
    with pytest.raises(BadInput) as err:
        prepare_oulad(raw, tmp_path / "strict", strict=True)
    message = str(err.value)
    assert f"{file}, line {line}, column {column}: {reason}" in message and "--strict" in message
    assert "\n" not in message
    assert not (tmp_path / "strict").exists()


def drop_last_field(file: str, line: int):
    def edit(raw: Path) -> None:
        lines = (raw / file).read_bytes().split(b"\n")
        lines[line - 1] = lines[line - 1].rsplit(b",", 1)[0]
        (raw / file).write_bytes(b"\n".join(lines))
    return edit


def test_a_bad_byte_or_a_short_row_costs_that_row_only(mini, mini_prepared, tmp_path):
    raw = copy_raw(mini, tmp_path)
    _, clicks_in = rows_of(raw / "studentVle.csv")
    _, submissions_in = rows_of(raw / "studentAssessment.csv")
    set_field(raw / "studentVle.csv", 40, "code_module", b"AA\xffA")            # not UTF-8
    drop_last_field("studentVle.csv", 50)(raw)                                   # sum_click missing
    set_field(raw / "studentAssessment.csv", 9, "score", b"7\xe98")              # not UTF-8 (latin-1 e-acute)
    drop_last_field("studentAssessment.csv", 12)(raw)                            # score missing
    shown = io.StringIO()
    manifest = prepare_oulad(raw, tmp_path / "out", console=Console(file=shown, width=200))
    assert manifest["dropped"] == {
        "studentVle.csv: code_module is not valid UTF-8": 1,
        "studentVle.csv: row has the wrong number of fields": 1,
        "studentAssessment.csv: score is not valid UTF-8": 1,
        "studentAssessment.csv: row has the wrong number of fields": 1,
    }
    assert "studentVle.csv: code_module is not valid UTF-8" in shown.getvalue()   # the rows-dropped table
    assert manifest["rows_in"] == mini_prepared[1]["rows_in"]                     # every line read and counted
    # every other row is kept: the clicks lose exactly lines 40 and 50, the submissions lines 9 and 12
    before = read(mini_prepared[0], "clicks.parquet")["clicks"].sum()
    lost = int(clicks_in[40 - 2][5]) + int(clicks_in[50 - 2][5])
    assert read(tmp_path / "out", "clicks.parquet")["clicks"].sum() == before - lost
    submitted = read(tmp_path / "out", "assessments.parquet")["submitted_day"].notna().sum()
    assert submitted == len(submissions_in) - 2
    with pytest.raises(BadInput) as err:
        prepare_oulad(raw, tmp_path / "strict", strict=True)
    assert "studentAssessment.csv, line 9, column score: score is not valid UTF-8" in str(err.value)
    assert not (tmp_path / "strict").exists()


def test_dropped_rows_leave_no_trace_in_the_outputs(mini, mini_prepared, tmp_path):
    raw = copy_raw(mini, tmp_path)
    header, rows = rows_of(raw / "studentAssessment.csv")
    bad_submission = rows[9 - 2]
    set_field(raw / "studentAssessment.csv", 9, "score", b"abc")
    _, clicks_in = rows_of(raw / "studentVle.csv")
    set_field(raw / "studentVle.csv", 42, "sum_click", b"-3")
    manifest = prepare_oulad(raw, tmp_path / "out")
    assert sum(manifest["dropped"].values()) == 2

    table = read(tmp_path / "out", "assessments.parquet")
    row = table[(table["id_assessment"] == int(bad_submission[0])) & (table["id_student"] == int(bad_submission[1]))]
    assert len(row) == 1 and row["submitted_day"].isna().all()   # the registration stays, unsubmitted
    before = read(mini_prepared[0], "clicks.parquet")["clicks"].sum()
    assert read(tmp_path / "out", "clicks.parquet")["clicks"].sum() == before - int(clicks_in[42 - 2][5])


def test_a_bad_date_row_keeps_the_registration_without_dates(mini, mini_prepared, tmp_path):
    raw = copy_raw(mini, tmp_path)
    set_field(raw / "studentRegistration.csv", 5, "date_registration", b"soon")
    manifest = prepare_oulad(raw, tmp_path / "out")
    assert manifest["registrations_without_dates"] == 1
    assert manifest["rows_out"]["registrations.parquet"] == mini_prepared[1]["rows_out"]["registrations.parquet"]


def test_small_blocks_give_the_same_output_and_line_numbers(mini, mini_prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(oulad_csv, "BLOCK_BYTES", 4096)         # ~130 lines a block: lines cross block borders
    prepare_oulad(mini, tmp_path / "out")
    assert_same_outputs(mini_prepared[0], tmp_path / "out")
    raw = copy_raw(mini, tmp_path)
    set_field(raw / "studentVle.csv", 1_400, "date", b"x")
    (raw / "studentInfo.csv").write_bytes((raw / "studentInfo.csv").read_bytes() + b"\n\n")  # trailing blank lines
    with pytest.raises(BadInput, match=r"studentVle.csv, line 1400, column date"):
        prepare_oulad(raw, tmp_path / "strict", strict=True)
    assert prepare_oulad(raw, tmp_path / "lenient")["dropped"] == {"studentVle.csv: date is not an integer": 1}


def test_bom_crlf_blank_lines_and_padding_are_taken(mini, mini_prepared, tmp_path):
    raw = copy_raw(mini, tmp_path)
    text = (raw / "studentVle.csv").read_text().replace(",", " , ")
    (raw / "studentVle.csv").write_text(text.replace("\n", "\r\n").replace("\r\n", "\r\n\r\n", 3))
    (raw / "courses.csv").write_bytes(b"\xef\xbb\xbf" + (raw / "courses.csv").read_bytes())
    set_field(raw / "studentAssessment.csv", 5, "score", b"78.0")
    set_field(raw / "studentAssessment.csv", 6, "date_submitted", b"20.0")
    manifest = prepare_oulad(raw, tmp_path / "out")
    assert manifest["dropped"] == {}
    assert manifest["rows_in"] == mini_prepared[1]["rows_in"]
    clicks = read(tmp_path / "out", "clicks.parquet")
    assert clicks.equals(read(mini_prepared[0], "clicks.parquet"))


# ------------------------------------------------------------------ bad input, whole files
def test_a_missing_or_renamed_column_is_one_clear_error(mini, tmp_path):
    raw = copy_raw(mini, tmp_path)
    path = raw / "studentAssessment.csv"
    path.write_text(path.read_text().replace("score", "scor", 1))
    for strict in (False, True):
        with pytest.raises(BadInput, match=r"studentAssessment.csv, line 1: column 'score' is missing"):
            prepare_oulad(raw, tmp_path / "out", strict=strict)


@pytest.mark.parametrize("content, message", [(b"", "the file is empty"),
                                              (b"id_site,code_module,code_presentation,activity_type\n", "no rows")])
def test_an_empty_file_is_one_clear_error(mini, tmp_path, content, message):
    raw = copy_raw(mini, tmp_path)
    (raw / "vle.csv").write_bytes(content)
    with pytest.raises(BadInput, match=message):
        prepare_oulad(raw, tmp_path / "out")


def test_a_missing_file_is_one_clear_error(mini, tmp_path):
    raw = copy_raw(mini, tmp_path)
    (raw / "studentRegistration.csv").unlink()
    with pytest.raises(BadInput, match=r"studentRegistration.csv not found"):
        prepare_oulad(raw, tmp_path / "out")


def test_a_truncated_or_corrupt_zip_is_one_clear_error(mini, tmp_path):
    archive = tmp_path / "oulad.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in CSVS:
            zf.write(mini / name, f"data/{name}")
    data = archive.read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="cut.zip"):
        prepare_oulad(tmp_path / "cut.zip", tmp_path / "out")
    # the directory at the end intact, a member's compressed bytes damaged
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("data/studentVle.csv")
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    damaged = bytearray(data)
    damaged[middle : middle + 64] = bytes(64)
    (tmp_path / "bad.zip").write_bytes(bytes(damaged))
    with pytest.raises(BadInput, match="bad.zip: archive is unreadable or truncated"):
        prepare_oulad(tmp_path / "bad.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the output folder
def test_existing_output_needs_force(mini, tmp_path):
    out = tmp_path / "out"
    first = prepare_oulad(mini, out, seed=1)
    with pytest.raises(BadInput, match="--force"):
        prepare_oulad(mini, out, seed=2)
    assert json.loads((out / "manifest.json").read_text())["splits"]["seed"] == 1
    second = prepare_oulad(mini, out, seed=2, force=True)
    assert second["splits"]["seed"] == 2 and first["splits"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]         # no partial or old folder left
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, "manifest.json"])


def test_an_interrupted_prepare_leaves_no_half_written_output(mini, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare_oulad(mini, out)
    before = (out / "manifest.json").read_bytes()
    real_write = oulad.pq.write_table
    calls = []

    def write_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(oulad.pq, "write_table", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_oulad(mini, out, seed=5, force=True)
    assert (out / "manifest.json").read_bytes() == before              # the old folder is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        prepare_oulad(mini, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
