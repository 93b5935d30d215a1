"""`dsrsd prepare --dataset custom`: any answer log + a TOML mapping -> the EdNet prepared schema.

Generated logs with the original ASSISTments headers and quirks (tests/custom_fakes.py): exact
counts for both shipped mappings, training end to end, the before/after leakage rule for
every neural model and for the gbdt features, and bad input (one line, exit 2, nothing written).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dsrsd_cli.config import DSRSDConfig, ModelConfig, load_config
from dsrsd_cli.data.features import build_features, fit_question_stats
from dsrsd_cli.data.ednet_store import refresh_store
from dsrsd_cli.data.loader import make_dataset, make_loader, make_spec
from dsrsd_cli.data.prepare import prepare_dataset
from dsrsd_cli.data.prepared import open_prepared
from dsrsd_cli.errors import BadInput
from dsrsd_cli.model.registry import build_model, model_names

sys.path.insert(0, str(Path(__file__).parent))
from custom_fakes import write_2009, write_2012  # noqa: E402


def _prepare(raw: Path, out: Path, mapping, **kw) -> dict:
    return prepare_dataset(dataset="custom", raw=raw, out=out, mapping=mapping, **kw)


@pytest.fixture(scope="module")
def a2009(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("a2009")
    truth = write_2009(tmp / "skill_builder_data.csv")
    manifest = _prepare(tmp / "skill_builder_data.csv", tmp / "out", "assistments_2009_skill_builder")
    return truth, manifest, tmp / "out"


@pytest.fixture(scope="module")
def a2012(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("a2012")
    truth = write_2012(tmp / "2012-2013.csv")
    manifest = _prepare(tmp / "2012-2013.csv", tmp / "out", "assistments_2012_2013")
    return truth, manifest, tmp / "out"


# ---------------------------------------------------------------- counts
def test_2009_counts(a2009):
    truth, manifest, out = a2009
    assert manifest["dataset"] == "ednet" and manifest["source"]["format"] == "custom"
    assert manifest["source"]["mapping"]["order"] == "order_id"
    assert manifest["rows_in"] == truth["rows_in"]
    assert manifest["rows_out"] == truth["answers"]
    assert manifest["users"] == truth["learners"]
    assert manifest["merged_rows"] == truth["merged"]
    assert manifest["dropped"] == truth["dropped"]
    assert manifest["vocab"]["tag"] == truth["skills"]
    prepared = open_prepared(out)                                 # every schema check passes
    inter = pq.read_table(out / "interactions.parquet").to_pandas()
    assert len(inter) == truth["answers"] and inter["timestamp"].isna().all()
    n_tags = inter["tags"].map(len).to_numpy()
    # generator: answer a has 2 skills if a % 3 == 0 and a % 5 != 4, none if a % 5 == 4, else 1
    a = inter["position"].to_numpy()
    want = np.where(a % 5 == 4, 0, np.where(a % 3 == 0, 2, 1))
    assert np.array_equal(n_tags, want)
    # positions 0.. per learner, answers in order_id order
    assert (inter.groupby("user")["position"].apply(lambda p: list(p) == list(range(len(p))))).all()
    # the two problems of one assistment share a bundle
    q = pq.read_table(out / "questions.parquet").to_pandas()
    assert q["bundle"].nunique() == manifest["vocab"]["bundle"] < len(q)
    assert (pq.read_table(out / "lectures.parquet").num_rows == 0)
    feats = pq.read_table(out / "custom_features.parquet")
    assert feats.num_rows == truth["answers"]
    assert [f["name"] for f in manifest["custom_features"]] == feats.column_names[2:]
    assert feats["answer_type"].type == pa.int32() and feats["ms_first_response"].type == pa.float64()
    sizes = {f["name"]: f.get("size") for f in manifest["custom_features"]}
    assert sizes["original"] == 3 and sizes["answer_type"] == 3 and sizes["tutor_mode"] == 2
    assert prepared.dataset == "ednet"


def test_2012_counts(a2012):
    truth, manifest, out = a2012
    assert manifest["rows_in"] == truth["rows_in"]
    assert manifest["rows_out"] == truth["answers"]
    assert manifest["users"] == truth["learners"]
    assert manifest["dropped"] == truth["dropped"]
    assert manifest["vocab"]["tag"] == truth["skills"]
    assert manifest["merged_rows"] == 0
    inter = pq.read_table(out / "interactions.parquet").to_pandas()
    assert inter["timestamp"].notna().all()
    assert (inter.groupby("user")["timestamp"].apply(lambda t: t.is_monotonic_increasing)).all()
    assert inter["timestamp"].min() >= np.datetime64("2012-09-01", "ms").astype(np.int64)


def test_strict_fails_on_the_first_bad_row_with_file_line_column(tmp_path):
    raw = tmp_path / "log.csv"
    write_2012(raw)
    with pytest.raises(BadInput, match=r"log\.csv, line 5, column 'correct'"):
        _prepare(raw, tmp_path / "out", "assistments_2012_2013", strict=True)
    assert not (tmp_path / "out").exists()


def test_separator_skills_numeric_time_and_parquet_input(tmp_path):
    """Skills in one cell with a separator, a numeric time in seconds, a Parquet log, no features."""
    table = pa.table({"student": ["s1", "s1", "s1", "s2", "s2"], "t": [30, 10, 20, 5, 6],
                      "q": ["q1", "q2", "q1", "q3", "q2"], "ok": [1, 0, 1, 1, 0],
                      "kc": ["a~b", "b", "a~b", "", "b~c~b"]})
    pq.write_table(table, tmp_path / "log.parquet")
    mapping = tmp_path / "m.toml"
    mapping.write_text('learner = "student"\ntime = "t"\nitem = "q"\ncorrect = "ok"\nskills = "kc"\nskill_separator = "~"\n')
    manifest = _prepare(tmp_path / "log.parquet", tmp_path / "out", mapping)
    assert manifest["rows_out"] == 5 and manifest["vocab"]["tag"] == 3 and "custom_features" not in manifest
    assert not (tmp_path / "out" / "custom_features.parquet").exists()
    inter = pq.read_table(tmp_path / "out" / "interactions.parquet").to_pandas()
    s1 = inter[inter["user"] == "us1"]
    assert s1["timestamp"].tolist() == [10_000, 20_000, 30_000]
    assert [len(t) for t in inter["tags"]] == [1, 2, 2, 0, 2]
    batch = next(iter(make_loader(open_prepared(tmp_path / "out"), "all", load_config("smoke").data.model_copy(
        update={"path": str(tmp_path / "out")}), shuffle=False, seed=0)))
    assert not any(k.startswith("custom") for m in batch.inputs.values() for k in m)


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("model", ["dsrsd", "gbdt"])
def test_a_model_trains_on_it(a2009, tmp_path, model):
    _, _, out = a2009
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "dsrsd_cli", "train", "--preset", "smoke", "--data", str(out),
                          "--model", model, "--out", str(run), "--json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())


# ---------------------------------------------------------------- leakage
def _edit(src: Path, dst: Path, user: str, positions: list[int], changes: dict) -> None:
    """A copy of prepared folder `src` whose custom features of (user, positions) get new values."""
    shutil.copytree(src, dst)
    table = pq.read_table(dst / "custom_features.parquet")
    df = table.to_pandas()
    rows = (df["user"] == user) & df["position"].isin(positions)
    assert rows.sum() == len(positions)
    for column, value in changes.items():
        df.loc[rows, column] = value
    pq.write_table(pa.Table.from_pandas(df, schema=table.schema, preserve_index=False), dst / "custom_features.parquet")
    with pytest.raises(BadInput, match="changed after the training arrays were written"):
        make_dataset(open_prepared(dst), "all", load_config("smoke").data)
    refresh_store(dst)


def _bundles(out: Path, user: str) -> list[list[int]]:
    inter = pq.read_table(out / "interactions.parquet").to_pandas()
    rows = inter[inter["user"] == user].sort_values("position")
    runs = (rows["bundle"] != rows["bundle"].shift()).cumsum()
    return [g["position"].tolist() for _, g in rows.groupby(runs)]


def _logits(out: Path, name: str) -> dict[tuple[str, int], float]:
    cfg = load_config("smoke").data.model_copy(update={"path": str(out)})
    prepared = open_prepared(out)
    spec = make_spec(prepared, cfg)
    torch.manual_seed(0)
    model = build_model(spec, ModelConfig(name=name, d_model=16, n_heads=2), DSRSDConfig(k_shared=8)).eval()
    found = {}
    with torch.no_grad():
        for batch in make_loader(prepared, "all", cfg, shuffle=False, seed=0):
            logits = model(batch).logits
            for b, user in enumerate(batch.keys["user"]):
                for t in torch.nonzero(batch.mask[b]).flatten().tolist():
                    found[(user, int(batch.keys["position"][b, t]))] = float(logits[b, t])
    return found


@pytest.fixture(scope="module")
def edited(a2009, tmp_path_factory):
    """The 2009 folder, and copies where bundle 2 of one learner has other `after` features
    (ms_first_response, hint_count, first_action) or another `before` one (answer_type)."""
    _, manifest, out = a2009
    tmp = tmp_path_factory.mktemp("edited")
    user = "u70003"
    bundles = _bundles(out, user)
    target, later = bundles[2], [p for b in bundles[3:] for p in b]
    _edit(out, tmp / "after", user, target, {"ms_first_response": 987654.0, "hint_count": 9.0, "first_action": 2})
    _edit(out, tmp / "before", user, target, {"answer_type": 2})
    return out, tmp / "after", tmp / "before", user, target, later


def test_after_features_never_reach_their_own_bundle_neural(edited):
    out, after, before, user, target, later = edited
    spec = make_spec(open_prepared(out), load_config("smoke").data.model_copy(update={"path": str(out)}))
    assert spec.dims["behavior.custom_num"] == 3 and spec.dims["behavior.custom_num_before"] == 0
    for name in model_names(spec, "neural"):
        base, moved = _logits(out, name), _logits(after, name)
        assert base.keys() == moved.keys()
        for p in target:
            assert base[(user, p)] == moved[(user, p)], (name, p)
        for p in range(min(target)):                               # earlier bundles: untouched
            assert base[(user, p)] == moved[(user, p)], (name, p)
        if "behavior" in name or name in ("dsrsd", "early", "late", "concat", "coattn"):
            assert any(base[(user, p)] != moved[(user, p)] for p in later), name   # later bundles read it
    # the test can fail: a `before` feature does reach its own bundle
    base, moved = _logits(out, "early"), _logits(before, "early")
    assert any(base[(user, p)] != moved[(user, p)] for p in target)


def test_after_features_never_reach_their_own_bundle_gbdt(edited):
    out, after, _, user, target, later = edited
    cfg = load_config("smoke").data.model_copy(update={"path": str(out)})

    def table(folder: Path):
        prepared = open_prepared(folder)
        t = build_features(prepared, cfg, "all", fit_question_stats(prepared, cfg))
        return t, {(u, int(p)): i for i, (u, p) in enumerate(zip(t.keys["user"], t.keys["position"]))}

    (a, ia), (b, ib) = table(out), table(after)
    assert a.names == b.names
    custom = [i for i, n in enumerate(a.names) if ".custom." in n]
    assert {"behavior.custom.ms_first_response_mean", "content.custom.answer_type",
            "behavior.custom.first_action_share_1"} <= {a.names[i] for i in custom}
    assert set(custom) <= set(a.groups["behavior"]) | set(a.groups["content"]) | set(a.groups["item"])
    assert a.names.index("content.custom.answer_type") in a.categorical
    for p in range(max(target) + 1):
        assert np.array_equal(a.x[ia[(user, p)]], b.x[ib[(user, p)]], equal_nan=True), p
    assert all(not np.array_equal(a.x[ia[(user, p)]], b.x[ib[(user, p)]], equal_nan=True) for p in later)


# ---------------------------------------------------------------- bad input
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsrsd_cli", "prepare", *args], capture_output=True, text=True,
                          timeout=120)


def _one_line_exit_2(res: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


BASE = 'learner = "user_id"\nitem = "problem_id"\ncorrect = "correct"\norder = "order_id"\n'


@pytest.mark.parametrize("mapping, needles", [
    (BASE.replace('"problem_id"', '"problem"'), ["'problem'", "missing"]),
    (BASE.replace('correct = "correct"', 'correct = "answer_text"'), ["answer_text", "0/1"]),
    (BASE.replace('order = "order_id"', 'time = "tutor_mode"'), ["tutor_mode", "no value parses"]),
    (BASE + '[[features]]\ncolumn = "hint_count"\nmodality = "hints"\nkind = "numeric"\nknown = "after"\n', ["modality", "hints"]),
    (BASE + '[[features]]\ncolumn = "hint_count"\nmodality = "behavior"\nkind = "number"\nknown = "after"\n', ["kind", "number"]),
    (BASE + '[[features]]\ncolumn = "hint_count"\nmodality = "behavior"\nkind = "numeric"\nknown = "later"\n', ["known", "later"]),
    (BASE + '[[features]]\ncolumn = "hint_cnt"\nmodality = "behavior"\nkind = "numeric"\nknown = "after"\n', ["hint_cnt", "missing"]),
    (BASE + 'colour = "x"\n', ["unknown key", "colour"]),
    (BASE.replace('order = "order_id"\n', ''), ["time", "order"]),
])
def test_bad_mapping_is_one_line_exit_2(tmp_path, mapping, needles):
    write_2009(tmp_path / "log.csv", learners=3, answers=4)
    (tmp_path / "m.toml").write_text('encoding = "latin-1"\n' + mapping)
    res = _cli("--dataset", "custom", "--raw", str(tmp_path / "log.csv"), "--mapping", str(tmp_path / "m.toml"),
               "--out", str(tmp_path / "out"))
    _one_line_exit_2(res, *needles)
    assert not (tmp_path / "out").exists()


def test_other_bad_invocations(tmp_path):
    write_2009(tmp_path / "log.csv", learners=3, answers=4)
    out = str(tmp_path / "out")
    _one_line_exit_2(_cli("--dataset", "custom", "--raw", str(tmp_path / "log.csv"), "--out", out), "--mapping")
    _one_line_exit_2(_cli("--dataset", "custom", "--raw", str(tmp_path / "log.csv"), "--mapping", "nope", "--out", out),
                     "nope", "assistments_2009_skill_builder")
    _one_line_exit_2(_cli("--dataset", "custom", "--mapping", "assistments_2009_skill_builder", "--out", out), "--raw")
    _one_line_exit_2(_cli("--dataset", "ednet", "--mapping", "assistments_2009_skill_builder", "--out", out), "--mapping")
    (tmp_path / "utf8.toml").write_text(BASE)      # latin-1 bytes read as utf-8
    _one_line_exit_2(_cli("--dataset", "custom", "--raw", str(tmp_path / "log.csv"), "--mapping",
                          str(tmp_path / "utf8.toml"), "--out", out), "latin-1")
    assert not (tmp_path / "out").exists()


def test_cli_end_to_end_with_a_shipped_mapping(tmp_path):
    truth = write_2009(tmp_path / "log.csv", learners=5, answers=6)
    res = _cli("--dataset", "custom", "--raw", str(tmp_path), "--mapping", "assistments_2009_skill_builder",
               "--out", str(tmp_path / "out"), "--json")
    assert res.returncode == 0, res.stderr
    manifest = json.loads(res.stdout)
    assert manifest["rows_out"] == truth["answers"] and manifest["users"] == 5


def test_strict_names_the_earliest_bad_row_of_any_kind(tmp_path):
    (tmp_path / "log.csv").write_text("u,t,q,c\nA,5,q1,1\nA,5,q2,2\nB,later,q1,1\nB,7,q2,1\n")
    (tmp_path / "m.toml").write_text('learner = "u"\ntime = "t"\nitem = "q"\ncorrect = "c"\n')
    with pytest.raises(BadInput, match=r"log\.csv, line 3, column 'c'"):
        _prepare(tmp_path / "log.csv", tmp_path / "out", tmp_path / "m.toml", strict=True)
    (tmp_path / "log.csv").write_text("u,t,q,c\nA,5,q1,1\nB,later,q1,1\nA,5,q2,2\nB,7,q2,1\n")
    with pytest.raises(BadInput, match=r"log\.csv, line 3, column 't'"):
        _prepare(tmp_path / "log.csv", tmp_path / "out", tmp_path / "m.toml", strict=True)
    manifest = _prepare(tmp_path / "log.csv", tmp_path / "out", tmp_path / "m.toml")
    assert manifest["rows_out"] == 2 and manifest["dropped"] == {"correct: not 0/1": 1, "time: unparseable": 1}
