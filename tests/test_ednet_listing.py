"""Listing an EdNet source (data/ednet_listing.py): learners in output order, their files by
level, duplicates dropped, batches built with each member's zip coordinates."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np

from dsrsd_cli.data.archive import MemberReader, RawSource
from dsrsd_cli.data.ednet_format import Drops
from dsrsd_cli.data.ednet_listing import list_source


def _listing(names: list[str]):
    drops = Drops()
    contents, learners = list_source(RawSource(path=Path("raw"), kind="dir", names=sorted(names)), drops, "raw/")
    return contents, learners, drops


def test_learners_come_by_number_then_id_and_their_files_by_level():
    names = ["KT1/u10.csv", "KT1/u9.csv", "KT1/u01.csv", "KT1/u1.csv", "KT1/uX.csv", "KT1/U2.csv",
             "KT4/u9.csv", "KT3/u9.csv", "contents/questions.csv", "questions.csv", "notes.txt", "KT1/x1.csv"]
    contents, learners, drops = _listing(names)
    assert contents == {"questions.csv": "questions.csv"}                   # the shallowest
    assert learners.users.tolist() == ["u01", "u1", "U2", "u9", "u10", "uX"]
    source = RawSource(path=Path("raw"), kind="dir", names=sorted(names))
    batch = learners.batch(2, 5, source)
    assert [(user, [(f.name, f.level, f.where) for f in files]) for user, files in batch] == [
        ("U2", [("KT1/U2.csv", 1, None)]),
        ("u9", [("KT1/u9.csv", 1, None), ("KT3/u9.csv", 3, None), ("KT4/u9.csv", 4, None)]),
        ("u10", [("KT1/u10.csv", 1, None)]),
    ]
    assert learners.with_action_logs() == 1
    assert learners.head(3).users.tolist() == ["u01", "u1", "U2"] and len(learners.head(None)) == 6
    assert list(learners.file_names(source)) == ["KT1/u01.csv", "KT1/u1.csv", "KT1/U2.csv", "KT1/u9.csv", "KT3/u9.csv",
                                                  "KT4/u9.csv", "KT1/u10.csv", "KT1/uX.csv"]
    assert not drops.counts


def test_a_second_file_of_a_learner_at_one_level_is_dropped_and_the_first_by_name_kept():
    _, learners, drops = _listing(["KT1/u5.csv", "ednet-kt1/u5.csv", "KT1/u6.csv"])
    assert learners.users.tolist() == ["u5", "u6"]
    assert drops.counts["duplicate_file"] == 1
    assert "ednet-kt1/u5.csv" in drops.first["duplicate_file"] and "kept KT1/u5.csv" in drops.first["duplicate_file"]
    assert np.diff(learners.starts).tolist() == [1, 1]


def test_an_empty_listing_has_no_learners():
    contents, learners, _ = _listing(["questions.csv", "lectures.csv"])
    assert set(contents) == {"questions.csv", "lectures.csv"} and len(learners) == 0
    assert learners.with_action_logs() == 0


def test_zip_coordinates_reach_each_file_and_a_twice_listed_name_reads_its_last_entry(tmp_path):
    path = tmp_path / "raw.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("KT1/u2.csv", b"first")
        zf.writestr("KT1/u1.csv", b"one")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                         # zipfile warns about the duplicate name
            zf.writestr("KT1/u2.csv", b"second")
    source = RawSource.open(path)
    assert source.names == ["KT1/u1.csv", "KT1/u2.csv", "KT1/u2.csv"]
    assert dict(source.iter_bytes(["KT1/u2.csv"]))["KT1/u2.csv"] == b"second"
    assert source.where_named("KT1/u3.csv") is None
    _, learners = list_source(source, Drops(), f"{path}:")
    (u1, (one,)), (u2, (two,)) = learners.batch(0, 2, source)
    reader = MemberReader("zip", str(path))
    assert (u1, reader.read(one.name, one.where)) == ("u1", b"one")
    assert (u2, reader.read(two.name, two.where)) == ("u2", b"second")  # the last entry, as unzip leaves it
