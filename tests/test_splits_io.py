"""Learner-level splits and atomic outputs: the guarantees every command builds on."""

from __future__ import annotations

import pytest

from dsrsd_cli.data.splits import learner_split, split_sizes
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_dir, read_json, write_json


def test_split_fractions_folds_and_order_independence():
    ids = [f"u{i}" for i in range(1000)]
    a = learner_split(ids, seed=3)
    b = learner_split(list(reversed(ids)) + ids[:10], seed=3)  # order and duplicates don't matter
    assert a.equals(b)
    assert split_sizes(a) == {"train": 700, "valid": 100, "test": 200}
    assert a["learner"].is_unique
    dev = a[a["split"] != "test"]
    assert sorted(dev["fold"].unique()) == [0, 1, 2, 3, 4]
    assert (a.loc[a["split"] == "test", "fold"] == -1).all()
    assert not learner_split(ids, seed=4).equals(a)


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (dest / "a.txt").read_text() == "1"
    with pytest.raises(BadInput, match="--force"):
        with atomic_dir(dest):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(dest, force=True) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("interrupted")
    assert (dest / "a.txt").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial folder left behind


def test_json_roundtrip_and_bad_json(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1})
    assert read_json(tmp_path / "m.json") == {"a": 1}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadInput, match="bad.json"):
        read_json(tmp_path / "bad.json")
