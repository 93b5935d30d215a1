"""Prepared Parquet -> Batch: windows, padding, fixed transforms, the OULAD cutoff rules, splits, errors, sharding."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data import schema
from dsrsd_cli.data.ednet_windows import ednet_windows
from dsrsd_cli.data.loader import collate, make_dataset, make_loader, make_spec, open_prepared
from dsrsd_cli.data.oulad_cutoff import ASSESSMENT_FEATURES
from dsrsd_cli.errors import BadInput
from prepared_fakes import ednet_tables, oulad_tables, write_prepared, write_table

EDNET_LENGTHS = [150, 5, 1, 40, 64, 33, 17, 90]


def ednet_cfg(**kw) -> DataConfig:
    return DataConfig(dataset="ednet", **{"max_len": 16, "context": 6, **kw})


def oulad_cfg(**kw) -> DataConfig:
    return DataConfig(dataset="oulad", **{"target": "at_risk", "cutoff_day": 60, **kw})


def whole(prepared, split: str, cfg: DataConfig):
    dataset = make_dataset(prepared, split, cfg)
    return collate([dataset[i] for i in range(len(dataset))])


def assert_same_batch(a, b) -> None:
    for m in a.inputs:
        for k in a.inputs[m]:
            assert torch.equal(a.inputs[m][k], b.inputs[m][k]), f"{m}.{k} changed"
    for m in a.present:
        assert torch.equal(a.present[m], b.present[m]), f"present[{m}] changed"
    assert torch.equal(a.target, b.target) and torch.equal(a.mask, b.mask)
    assert a.keys["code_module"] == b.keys["code_module"] and torch.equal(a.keys["id_student"], b.keys["id_student"])


@pytest.fixture(scope="module")
def ednet(tmp_path_factory):
    tables = ednet_tables(n_users=len(EDNET_LENGTHS), lengths=EDNET_LENGTHS, kt1_users=2, seed=1)
    return tables, open_prepared(write_prepared(tmp_path_factory.mktemp("ednet"), "ednet", tables))


@pytest.fixture(scope="module")
def oulad(tmp_path_factory):
    tables = oulad_tables(n_students=60, seed=2)
    return tables, open_prepared(write_prepared(tmp_path_factory.mktemp("oulad"), "oulad", tables))


# ================================================================ EdNet

@pytest.mark.parametrize("max_len,context", [(16, 6), (8, 0), (2, 1), (100, 50), (40, 39)])
@pytest.mark.parametrize("split", ["train", "valid", "test", "all"])
def test_every_answer_is_scored_exactly_once(ednet, split, max_len, context):
    tables, prepared = ednet
    cfg = ednet_cfg(max_len=max_len, context=context)
    splits = tables["splits"]
    users = set(splits["user"]) if split == "all" else set(splits.loc[splits["split"] == split, "user"])
    expected = tables["interactions"].loc[tables["interactions"]["user"].isin(users), ["user", "position"]]

    scored = []
    for batch in make_loader(prepared, split, cfg, shuffle=True, seed=0, batch_size=5):
        B, T = batch.mask.shape
        assert T <= max_len
        position = batch.keys["position"]
        for row in range(B):
            valid = position[row][batch.valid[row]]
            assert torch.equal(valid, torch.arange(int(valid[0]), int(valid[0]) + len(valid)))  # a contiguous slice
            assert batch.valid[row][: len(valid)].all()                                           # padding only at the end
            scored += [(batch.keys["user"][row], int(p)) for p in position[row][batch.mask[row]]]
        assert (batch.mask <= batch.valid).all()
    assert len(scored) == len(set(scored)) == len(expected)
    assert set(scored) == set(map(tuple, expected.itertuples(index=False)))


def test_windows_start_at_bundle_boundaries_and_carry_context(ednet):
    _, prepared = ednet
    dataset = make_dataset(prepared, "all", ednet_cfg(max_len=16, context=6))
    bundle = dataset.arrays["bundle"]
    position = dataset.arrays["position"]
    starts_bundle = np.ones(len(bundle), dtype=bool)
    starts_bundle[1:] = (bundle[1:] != bundle[:-1]) | (position[1:] == 0)
    ctx, start, end = dataset.windows.T
    # bundles have at most 3 questions < context 6 < max_len 16: every cut can fall on a boundary
    assert starts_bundle[ctx].all() and starts_bundle[start].all()
    assert ((end == len(bundle)) | starts_bundle[np.minimum(end, len(bundle) - 1)]).all()
    later = position[start] > 0
    assert (start[later] - ctx[later] > 0).all() and (start - ctx <= 6).all()   # context carried, at most 6
    assert (ctx[~later] == start[~later]).all()                                  # a first window has none


def test_window_cuts_on_explicit_histories():
    def cut(lengths, bundle_starts, max_len, context):
        starts = np.cumsum([0, *lengths[:-1]])
        return ednet_windows(starts, starts + np.array(lengths), np.array(bundle_starts), max_len=max_len, context=context).tolist()

    # bundles [0-2] [3] [4-6] [7-9]: cuts fall on bundle starts; the last context starts mid-bundle
    # because no bundle starts within 2 positions of position 7; then a one-bundle learner
    assert cut([10, 3], [0, 3, 4, 7, 10], max_len=5, context=2) == [[0, 0, 4], [3, 4, 7], [5, 7, 10], [10, 10, 13]]
    # one bundle longer than max_len: cut inside it, every window still at most 5 long
    assert cut([12], [0], max_len=5, context=2) == [[0, 0, 5], [3, 5, 8], [6, 8, 11], [9, 11, 12]]
    # the limit falls one short of the end: still cut on the bundle start before it
    assert cut([6], [0, 2, 4], max_len=5, context=0) == [[0, 0, 4], [4, 4, 6]]


def test_padding_and_group_conventions(ednet):
    _, prepared = ednet
    batch = whole(prepared, "all", ednet_cfg())
    pad = ~batch.valid
    assert pad.any()
    assert (batch.keys["position"][pad] == -1).all()
    for m, tensors in batch.inputs.items():
        for name, t in tensors.items():
            assert not t[pad].any(), f"{m}.{name} is not 0 on padding"
    for m, present in batch.present.items():
        assert not present[pad].any()
    assert torch.equal(batch.present["item"], batch.valid) and torch.equal(batch.present["content"], batch.valid)
    assert not batch.mask[pad].any() and not batch.target[pad].any()
    assert batch.target.dtype == torch.float32 and set(batch.target.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(batch.context["response"], batch.target.long())

    group = batch.context["bundle_group"]
    assert not group[pad].any() and (group[batch.valid] >= 1).all()
    assert (group[:, 0] == 1).all()
    step = group[:, 1:] - group[:, :-1]
    same_bundle = batch.inputs["item"]["bundle"][:, 1:] == batch.inputs["item"]["bundle"][:, :-1]
    inside = batch.valid[:, 1:]
    assert ((step == 0) == same_bundle)[inside].all() and (step[inside] <= 1).all()


def test_behavior_transforms_nulls_and_lectures(tmp_path):
    tables = ednet_tables(n_users=3, lengths=[12, 12, 12], kt1_users=1, seed=3)
    rows = tables["interactions"]
    kt4 = rows.index[rows["user"] == "u2"]
    first, second, third = kt4[:3]
    # lecture 2 and 3 carry known tags/parts
    tables["lectures"].at[1, "tags"], tables["lectures"].at[1, "part"] = [5, 2], 3
    tables["lectures"].at[2, "tags"], tables["lectures"].at[2, "part"] = [2, 9, 1], 6
    rows.at[first, "lag_ms"], rows.at[first, "elapsed_ms"], rows.at[first, "lectures"] = 3000, -500, [2, 3]
    rows.at[first, "lecture_ms"], rows.at[first, "answer_changes"], rows.at[first, "media_plays"] = 59_000, None, 4
    rows.at[second, "lectures"] = None
    for column in ("lag_ms", "elapsed_ms", "answer_changes", "explanation_ms", "lectures", "lecture_ms", "media_plays", "platform", "source"):
        rows.at[third, column] = None
    prepared = open_prepared(write_prepared(tmp_path, "ednet", tables))
    batch = whole(prepared, "all", ednet_cfg())

    def cell(index):
        user, position = rows.at[index, "user"], rows.at[index, "position"]
        row = batch.keys["user"].index(user)
        return row, int((batch.keys["position"][row] == position).nonzero()[0, 0])

    names = [name for name, _ in schema.BEHAVIOR_FEATURES]
    num, present = batch.inputs["behavior"]["num"], batch.inputs["behavior"]["num_present"]
    r, t = cell(first)
    want = {"lag_ms": np.log1p(3.0), "lecture_count": np.log1p(2), "lecture_ms": np.log1p(59.0), "elapsed_ms": 0.0, "media_plays": np.log1p(4)}
    for name, value in want.items():
        assert present[r, t, names.index(name)] and num[r, t, names.index(name)].item() == pytest.approx(value, rel=1e-6)
    assert not present[r, t, names.index("answer_changes")] and num[r, t, names.index("answer_changes")] == 0
    assert batch.inputs["content"]["lecture_part"][r, t] == 6                       # the last lecture's part
    assert batch.inputs["content"]["lecture_tags"][r, t].tolist() == [1, 2, 5]      # sorted union, K = 3 here
    assert make_spec(prepared, ednet_cfg()).dims["content.tags"] == 3

    r, t = cell(second)
    assert not present[r, t, names.index("lecture_count")] and batch.inputs["content"]["lecture_part"][r, t] == 0
    r, t = cell(third)
    assert not present[r, t].any() and not batch.present["behavior"][r, t] and batch.present["item"][r, t]
    assert batch.inputs["behavior"]["platform"][r, t] == 0 and batch.inputs["behavior"]["source"][r, t] == 0

    kt1 = torch.tensor([u == "u1" for u in batch.keys["user"]])[:, None] & batch.valid
    for name in ("answer_changes", "explanation_ms", "lecture_count", "lecture_ms", "media_plays"):
        assert not present[..., names.index(name)][kt1].any(), name                 # KT1 lacks them: absent, not 0
    assert present[..., names.index("elapsed_ms")][kt1].all()
    assert batch.present["behavior"][kt1].all()


def test_tags_are_capped_and_ids_checked_against_the_vocab(tmp_path):
    tables = ednet_tables(n_users=2, lengths=[10, 10], seed=4)
    tables["questions"].at[0, "tags"] = list(range(1, 11))
    rows = tables["interactions"]
    rows["tags"] = [list(range(1, 11)) if q == 1 else t for q, t in zip(rows["question"], rows["tags"])]
    prepared = open_prepared(write_prepared(tmp_path / "a", "ednet", tables))
    assert make_spec(prepared, ednet_cfg()).dims["content.tags"] == 8
    batch = whole(prepared, "all", ednet_cfg())
    assert batch.inputs["content"]["tags"].shape[-1] == 8

    rows.at[3, "question"] = 10_000     # refused when the training arrays are written (prepare)
    with pytest.raises(BadInput, match=r"interactions.parquet: column 'question' = 10000 \(user u\d+, position \d+\)"):
        write_prepared(tmp_path / "b", "ednet", tables)


def test_ednet_spec(ednet):
    tables, prepared = ednet
    spec = make_spec(prepared, ednet_cfg(max_len=32, context=8))
    assert spec.vocab == {
        "item.question": 61, "item.bundle": int(tables["questions"]["bundle"].max()) + 1, "content.tag": 13,
        "content.part": 8, "behavior.platform": 3, "behavior.source": 5,
    }
    assert spec.dims["behavior.num"] == 7 and spec.max_len == 32 and spec.n_outputs == 1 and spec.target == "correct"
    assert spec.modalities == ("item", "content", "behavior")


def test_ednet_splits_never_mix_learners_and_folds(ednet):
    tables, prepared = ednet
    splits = tables["splits"]

    def users(split, **kw):
        return set(whole(prepared, split, ednet_cfg(**kw)).keys["user"])

    parts = {s: users(s) for s in ("train", "valid", "test")}
    assert not (parts["train"] & parts["valid"]) and not (parts["train"] & parts["test"]) and not (parts["valid"] & parts["test"])
    assert parts["train"] | parts["valid"] | parts["test"] == set(splits["user"]) == users("all")
    fold = int(splits.loc[splits["split"] != "test", "fold"].iloc[0])
    dev = splits[splits["split"] != "test"]
    assert users("valid", fold=fold) == set(dev.loc[dev["fold"] == fold, "user"])
    assert users("train", fold=fold) == set(dev.loc[dev["fold"] != fold, "user"])
    assert users("test", fold=fold) == parts["test"]
    with pytest.raises(BadInput, match="data.fold 9"):
        make_dataset(prepared, "train", ednet_cfg(fold=9))


# ================================================================ OULAD

def test_oulad_rows_on_or_after_the_cutoff_change_nothing(oulad, tmp_path):
    tables, prepared = oulad
    cutoff = 45          # assessments due on days 25, 40 (submitted up to 11 days late), 70, ...
    cfg = oulad_cfg(cutoff_day=cutoff)
    before = whole(prepared, "all", cfg)

    changed = {name: frame.copy() for name, frame in tables.items()}
    clicks, marks = changed["clicks"], changed["assessments"]
    clicks.loc[clicks["day"] >= cutoff, "clicks"] = 999
    regs = changed["registrations"]
    extra = regs[["code_module", "code_presentation", "id_student"]].assign(day=cutoff, activity_type="quiz", clicks=50)
    changed["clicks"] = pd.concat([clicks, extra, extra.assign(day=cutoff + 15)], ignore_index=True)
    late = marks["submitted_day"] >= cutoff
    assert late.any() and (late & (marks["due_day"] < cutoff)).any()        # both kinds of late rows are exercised
    marks.loc[late, "score"] = 3.0
    marks.loc[late, "is_banked"] = 1
    marks.loc[late, "submitted_day"] = marks.loc[late, "submitted_day"] + 7
    marks.loc[marks["due_day"] >= cutoff, "weight"] = 77.0
    after = whole(open_prepared(write_prepared(tmp_path / "after", "oulad", changed)), "all", cfg)
    assert_same_batch(before, after)

    # the control: a click before the cutoff does change a tensor
    control = {name: frame.copy() for name, frame in tables.items()}
    control["clicks"].loc[control["clicks"]["day"] < cutoff, "clicks"] += 5
    moved = whole(open_prepared(write_prepared(tmp_path / "control", "oulad", control)), "all", cfg)
    assert not torch.equal(before.inputs["clicks"]["weeks"], moved.inputs["clicks"]["weeks"])


def test_oulad_population_at_a_cutoff(oulad):
    tables, prepared = oulad
    regs = tables["registrations"]
    for cutoff in (0, 60, 150):
        batch = whole(prepared, "all", oulad_cfg(cutoff_day=cutoff))
        left = regs["date_unregistration"].notna() & (regs["date_unregistration"] < cutoff)
        not_yet = regs["date_registration"].notna() & (regs["date_registration"] >= cutoff)
        out = left | not_yet
        want = set(zip(regs.loc[~out, "code_module"], regs.loc[~out, "id_student"]))
        assert set(zip(batch.keys["code_module"], batch.keys["id_student"].tolist())) == want
        assert len(want) < len(regs) or cutoff == 0
    assert whole(prepared, "all", oulad_cfg(cutoff_day=None)).size == len(regs)   # end of presentation: everyone


def test_registering_on_or_after_the_cutoff_day_is_out(tmp_path):
    """At the cutoff they are not students yet; their registration date would be a look ahead."""
    tables = oulad_tables(n_students=6, seed=5)
    regs = tables["registrations"]
    regs["date_registration"] = [-30, 49, 50, 80, None, -1, 0, 51][: len(regs)]
    regs["date_unregistration"] = None
    prepared = open_prepared(write_prepared(tmp_path, "oulad", tables))
    batch = whole(prepared, "all", oulad_cfg(cutoff_day=50))
    kept = regs[regs["date_registration"].isna() | (regs["date_registration"] < 50)]
    assert sorted(batch.keys["id_student"].tolist()) == sorted(kept["id_student"])
    assert len(kept) < len(regs)
    assert whole(prepared, "all", oulad_cfg(cutoff_day=None)).size == len(regs)   # end of presentation: everyone


def test_unregistering_on_the_cutoff_day_is_still_in(tmp_path):
    tables = oulad_tables(n_students=6, seed=5)
    regs = tables["registrations"]
    regs["date_unregistration"] = [50, 49, None, 120, 10, 50, 49, 49][: len(regs)]
    regs["final_result"] = "Withdrawn"
    prepared = open_prepared(write_prepared(tmp_path, "oulad", tables))
    batch = whole(prepared, "all", oulad_cfg(cutoff_day=50, target="withdrawn"))
    kept = regs[regs["date_unregistration"].isna() | (regs["date_unregistration"] >= 50)]
    assert sorted(batch.keys["id_student"].tolist()) == sorted(kept["id_student"])
    assert batch.target.tolist() == [1.0] * len(kept)


def test_date_unregistration_is_never_a_feature(oulad, tmp_path):
    tables, prepared = oulad
    for cutoff, name in ((60, "at60"), (None, "end")):
        cfg = oulad_cfg(cutoff_day=cutoff)
        before = whole(prepared, "all", cfg)
        changed = {k: frame.copy() for k, frame in tables.items()}
        regs = changed["registrations"]
        if cutoff is None:
            regs["date_unregistration"] = np.where(regs["date_unregistration"].isna(), 30.0, np.nan)
        else:  # included rows only: stay registered through the cutoff, with another date
            included = regs["date_unregistration"].isna() | (regs["date_unregistration"] >= cutoff)
            regs.loc[included, "date_unregistration"] = np.where(regs.loc[included, "date_unregistration"].isna(), 200.0, np.nan)
        after = whole(open_prepared(write_prepared(tmp_path / name, "oulad", changed)), "all", cfg)
        assert_same_batch(before, after)


@pytest.mark.parametrize("target", ["at_risk", "pass_fail", "withdrawn", "result4"])
def test_oulad_targets(oulad, target):
    tables, prepared = oulad
    regs = tables["registrations"].set_index(["code_module", "id_student"])
    batch = whole(prepared, "all", oulad_cfg(target=target, cutoff_day=None))
    results = [regs.at[(m, s), "final_result"] for m, s in zip(batch.keys["code_module"], batch.keys["id_student"].tolist())]
    want = {
        "at_risk": [float(r in ("Fail", "Withdrawn")) for r in results],
        "pass_fail": [float(r == "Fail") for r in results],
        "withdrawn": [float(r == "Withdrawn") for r in results],
        "result4": [schema.OULAD_RESULTS.index(r) for r in results],
    }[target]
    assert batch.target.tolist() == want
    assert batch.target.dtype == (torch.long if target == "result4" else torch.float32)
    assert ("Withdrawn" in results) == (target != "pass_fail")
    assert make_spec(prepared, oulad_cfg(target=target)).n_outputs == (4 if target == "result4" else 1)


def test_oulad_feature_values(oulad):
    tables, prepared = oulad
    cutoff = 60
    batch = whole(prepared, "all", oulad_cfg(cutoff_day=cutoff, max_weeks=20))
    spec = make_spec(prepared, oulad_cfg(max_weeks=20))
    activity = prepared.manifest["vocab"]["activity_type"]
    regs, clicks, marks = tables["registrations"], tables["clicks"], tables["assessments"]

    assert batch.inputs["clicks"]["weeks"].shape[1:] == (20, len(activity))
    assert batch.inputs["clicks"]["week_mask"][0].tolist() == [7 * w - 28 < cutoff for w in range(20)]
    assert batch.inputs["assessments"]["num"].shape[1:] == (spec.dims["assessments.len"], len(ASSESSMENT_FEATURES))
    assert spec.dims["assessments.len"] == 6 and spec.cat_sizes[0] == 3 and len(spec.cat_sizes) == 8

    for row in range(0, batch.size, 7):
        module, student = batch.keys["code_module"][row], int(batch.keys["id_student"][row])
        reg = regs[(regs["code_module"] == module) & (regs["id_student"] == student)].iloc[0]
        mine = clicks[(clicks["code_module"] == module) & (clicks["id_student"] == student) & (clicks["day"] < cutoff)]
        dense = np.zeros((20, len(activity)))
        for c in mine.itertuples():
            dense[(c.day + 28) // 7, activity.index(c.activity_type)] += c.clicks
        assert np.allclose(batch.inputs["clicks"]["weeks"][row].numpy(), np.log1p(dense), atol=1e-6)
        assert bool(batch.present["clicks"][row]) == (len(mine) > 0)

        due = marks[(marks["code_module"] == module) & (marks["id_student"] == student) & (marks["due_day"] < cutoff)]
        due = due.sort_values(["due_day", "id_assessment"])
        seq = batch.inputs["assessments"]
        assert seq["seq_mask"][row].sum() == len(due) and bool(batch.present["assessments"][row]) == (len(due) > 0)
        for slot, a in enumerate(due.itertuples()):
            on_time = pd.notna(a.submitted_day) and a.submitted_day < cutoff
            want = [
                a.weight / 100, a.due_day / 365,
                np.clip(a.submitted_day - a.due_day, -30, 90) / 30 if on_time else 0.0,
                (0.0 if pd.isna(a.score) else a.score / 100) if on_time else 0.0,
                float(a.is_banked) if on_time else 0.0,
                0.0 if on_time else 1.0,
            ]
            assert seq["num"][row, slot].tolist() == pytest.approx(want, abs=1e-6)
            assert seq["type"][row, slot] == {"TMA": 1, "CMA": 2, "Exam": 3}[a.assessment_type]

        cat = batch.inputs["demographics"]["cat"][row].tolist()
        vocab = prepared.manifest["vocab"]
        assert cat[0] == vocab["gender"].index(reg["gender"]) + 1
        assert cat[3] == (0 if pd.isna(reg["imd_band"]) else vocab["imd_band"].index(reg["imd_band"]) + 1)
        assert cat[7] == sorted({p[-1] for p in vocab["code_presentation"]}).index(reg["code_presentation"][-1]) + 1
        num, num_present = batch.inputs["demographics"]["num"][row], batch.inputs["demographics"]["num_present"][row]
        assert num[1].item() == pytest.approx(reg["studied_credits"] / 60)
        assert bool(num_present[2]) == pd.notna(reg["date_registration"])
    assert batch.present["demographics"].all() and batch.valid.all() and batch.mask.all()


def test_oulad_exam_without_a_date_is_due_at_the_end(oulad):
    _, prepared = oulad
    batch = whole(prepared, "all", oulad_cfg(cutoff_day=None))
    types = batch.inputs["assessments"]["type"]
    first = torch.tensor([p == "2013J" for p in batch.keys["code_presentation"]])   # its exam has no due day
    assert not (types[first] == 3).any() and (types[~first] == 3).any(dim=1).all()


def test_oulad_splits_group_students_and_folds(oulad):
    tables, prepared = oulad
    students = {s: set(whole(prepared, s, oulad_cfg()).keys["id_student"].tolist()) for s in ("train", "valid", "test")}
    assert not (students["train"] & students["valid"]) and not (students["train"] & students["test"])
    assert not (students["valid"] & students["test"])
    retakers = tables["registrations"]["id_student"].value_counts()
    assert (retakers > 1).any()
    dev = tables["splits"][tables["splits"]["split"] != "test"]
    valid = set(whole(prepared, "valid", oulad_cfg(fold=2, cutoff_day=None)).keys["id_student"].tolist())
    assert valid == set(dev.loc[dev["fold"] == 2, "id_student"])


# ================================================================ bad input

@pytest.mark.parametrize("case", ["missing_file", "missing_column", "wrong_type", "schema_version", "dataset", "manifest", "vocab"])
def test_bad_prepared_folders_fail_with_one_line(tmp_path, case):
    folder = write_prepared(tmp_path / "ednet", "ednet", ednet_tables(n_users=2, lengths=[5, 5]))
    manifest = json.loads((folder / "manifest.json").read_text())
    expect = {
        "missing_file": r"lectures.parquet: missing .* `dsrsd prepare --dataset ednet --force`",
        "missing_column": r"splits.parquet: column 'fold' is missing",
        "wrong_type": r"interactions.parquet: column 'correct' has type double, expected int8",
        "schema_version": r"schema_version 99, but this dsrsd reads version 1; rerun",
        "dataset": r"dataset 'kt' is not one of ednet, oulad",
        "manifest": r"manifest.json: missing",
        "vocab": r"vocab lacks source",
    }[case]
    if case == "missing_file":
        (folder / "lectures.parquet").unlink()
    elif case == "missing_column":
        pq.write_table(pq.read_table(folder / "splits.parquet").drop_columns(["fold"]), folder / "splits.parquet")
    elif case == "wrong_type":
        table = pq.read_table(folder / "interactions.parquet")
        index = table.schema.get_field_index("correct")
        pq.write_table(table.set_column(index, "correct", table["correct"].cast(pa.float64())), folder / "interactions.parquet")
    elif case == "manifest":
        (folder / "manifest.json").unlink()
    else:
        manifest.update({"schema_version": {"schema_version": 99}, "dataset": {"dataset": "kt"}}.get(case, {}))
        if case == "vocab":
            del manifest["vocab"]["source"]
        (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput, match=expect) as err:
        open_prepared(folder)
    assert "\n" not in str(err.value)


def test_config_must_fit_the_folder(ednet, oulad):
    _, ednet_prepared = ednet
    _, oulad_prepared = oulad
    with pytest.raises(BadInput, match="holds oulad data but data.dataset is 'ednet'"):
        make_spec(oulad_prepared, ednet_cfg())
    with pytest.raises(BadInput, match="data.target 'correct' does not apply to oulad"):
        make_dataset(oulad_prepared, "train", oulad_cfg(target="correct"))
    with pytest.raises(BadInput, match=r"data.context \(16\) must be smaller than data.max_len \(16\)"):
        make_dataset(ednet_prepared, "train", ednet_cfg(context=16))
    with pytest.raises(BadInput, match="split 'dev' is unknown"):
        make_dataset(ednet_prepared, "dev", ednet_cfg())
    # a good folder's hash is that of the manifest's bytes
    assert ednet_prepared.manifest_hash == hashlib.sha256((ednet_prepared.path / "manifest.json").read_bytes()).hexdigest()


def test_write_table_is_schema_exact(tmp_path):
    frame = pd.DataFrame({"user": ["a"], "split": ["train"], "fold": [None]})
    write_table(tmp_path / "s.parquet", frame, schema.EDNET_SPLITS)
    assert pq.read_schema(tmp_path / "s.parquet").equals(schema.EDNET_SPLITS, check_metadata=False)


# ================================================================ loaders and sharding

def _keys(loader) -> list[tuple]:
    out = []
    for batch in loader:
        first = batch.keys["position"][:, 0].tolist()
        out += list(zip(batch.keys["user"], first))
    return out


def test_distributed_shards_are_disjoint_and_deterministic(ednet):
    _, prepared = ednet
    cfg = ednet_cfg(max_len=8, context=2)
    n = len(make_dataset(prepared, "all", cfg))
    world = next(w for w in (3, 5, 7) if n % w)      # exercise the leftover (n not divisible by world)

    def shards(shuffle, epoch=0, seed=0):
        return [_keys(make_loader(prepared, "all", cfg, shuffle=shuffle, seed=seed, batch_size=4, rank=r, world_size=world, epoch=epoch))
                for r in range(world)]

    train = shards(True)
    flat = [k for shard in train for k in shard]
    assert len(flat) == len(set(flat)) == n - n % world and len({len(s) for s in train}) == 1
    assert shards(True) == train and shards(True, epoch=1) != train and shards(True, seed=1) != train
    evaluation = shards(False)
    flat = [k for shard in evaluation for k in shard]
    assert len(flat) == len(set(flat)) == n

    single = _keys(make_loader(prepared, "all", cfg, shuffle=True, seed=0, epoch=0))
    assert single == _keys(make_loader(prepared, "all", cfg, shuffle=True, seed=0, epoch=0))
    assert single != _keys(make_loader(prepared, "all", cfg, shuffle=True, seed=0, epoch=1))
    assert sorted(single) == sorted(_keys(make_loader(prepared, "all", cfg, shuffle=False, seed=0)))


def test_empty_splits_give_empty_loaders(tmp_path):
    tables = ednet_tables(n_users=2, lengths=[5, 5])
    assert "valid" not in set(tables["splits"]["split"])
    prepared = open_prepared(write_prepared(tmp_path, "ednet", tables))
    assert len(make_dataset(prepared, "valid", ednet_cfg())) == 0
    assert list(make_loader(prepared, "valid", ednet_cfg(), shuffle=True, seed=0)) == []
    assert list(make_loader(prepared, "valid", ednet_cfg(), shuffle=False, seed=0, rank=1, world_size=2)) == []


def test_oulad_loader_batches(oulad):
    _, prepared = oulad
    batches = list(make_loader(prepared, "train", oulad_cfg(batch_size=16), shuffle=False, seed=0))
    assert [b.size for b in batches[:-1]] == [16] * (len(batches) - 1)
    assert batches[0].inputs["demographics"]["cat"].dtype == torch.long
    assert batches[0].keys["id_student"].dtype == torch.long
