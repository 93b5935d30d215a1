"""The memory-mapped training arrays of an EdNet-schema folder (data/ednet_store.py): the
same arrays however they are written, mapped not copied, refused when stale or damaged."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data import ednet_store
from dsrsd_cli.data.ednet import prepare_ednet
from dsrsd_cli.data.ednet_store import STORE_DIR, open_store, refresh_store, write_store
from dsrsd_cli.data.ednet_windows import ednet_windows
from dsrsd_cli.data.loader import collate, make_dataset, make_loader, open_prepared
from dsrsd_cli.errors import BadInput
from prepared_fakes import ednet_tables, write_prepared

FIX = Path(__file__).parent / "fixtures" / "ednet"
CFG = DataConfig(dataset="ednet", max_len=16, context=6)


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    entry = json.loads((folder / "manifest.json").read_text())["arrays"]
    names = [*entry["columns"], "bundle_starts"]
    return {name: np.load(folder / STORE_DIR / f"{name}.npy") for name in names}


def _manifest_without_arrays(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("arrays")
    return manifest


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """The real EdNet extract (KT1 + KT4 learners), prepared."""
    out = tmp_path_factory.mktemp("store") / "ednet"
    prepare_ednet(FIX, out, workers=1)
    return out


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    tables = ednet_tables(n_users=12, lengths=[30, 5, 1, 40, 17, 9, 60, 2, 11, 25, 8, 3], kt1_users=3, seed=7)
    return write_prepared(tmp_path_factory.mktemp("fake") / "ednet", "ednet", tables)


# ---------------------------------------------------------------- one set of arrays, however written

def test_prepare_workers_write_the_arrays_that_the_parquet_file_gives(real, tmp_path):
    """prepare computes the arrays in its workers (KT4 sources remapped to the folder's
    vocabulary); recomputing them from interactions.parquet gives the same bytes."""
    from_workers = _arrays(real)
    copy = tmp_path / "copy"
    shutil.copytree(real, copy)
    write_store(copy, _manifest_without_arrays(copy))
    from_parquet = _arrays(copy)
    assert from_workers.keys() == from_parquet.keys()
    for name in from_workers:
        assert np.array_equal(from_workers[name], from_parquet[name]), name
    assert (from_workers["source"] > 0).any()                    # KT4 rows: their sources reached the arrays
    table = pq.read_table(real / "interactions.parquet")
    assert np.array_equal(from_workers["source"], table["source"].fill_null(0).to_numpy())


def test_chunk_boundaries_do_not_change_the_arrays(fake, tmp_path, monkeypatch):
    """Streamed in chunks of 7 rows (learners carried across chunks) = one chunk."""
    whole = _arrays(fake)
    copy = tmp_path / "copy"
    shutil.copytree(fake, copy)
    monkeypatch.setattr(ednet_store, "CHUNK_ROWS", 7)
    write_store(copy, _manifest_without_arrays(copy))
    for name, values in _arrays(copy).items():
        assert np.array_equal(values, whole[name]), name


def test_rows_out_of_learner_order_are_sorted(fake, tmp_path):
    """A hand-written interactions.parquet whose learners are interleaved: each learner's
    rows still come out contiguous and in position order, with the same values."""
    copy = tmp_path / "copy"
    shutil.copytree(fake, copy)
    table = pq.read_table(copy / "interactions.parquet")
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    pq.write_table(shuffled, copy / "interactions.parquet")
    refresh_store(copy)
    a, b = open_store(open_prepared(fake)), open_store(open_prepared(copy))
    names_a, names_b = a.users.to_pylist(), b.users.to_pylist()
    assert sorted(names_a) == sorted(names_b)
    for user in names_a:
        i, j = names_a.index(user), names_b.index(user)
        rows_a = slice(a.start[i], a.start[i] + a.length[i])
        rows_b = slice(b.start[j], b.start[j] + b.length[j])
        for name in a.columns:
            assert np.array_equal(a.columns[name][rows_a], b.columns[name][rows_b]), (user, name)
    assert np.all(np.diff(b.columns["position"][b.start[0]: b.start[0] + b.length[0]]) > 0)


def test_a_learner_met_again_in_a_later_chunk_is_not_grouped(tmp_path):
    """StoreWriter looks for a learner in two chunks once, when asked; each chunk alone is in order."""
    def arrays(position):
        return {"position": np.array(position, np.int32), "bundle": np.array(position, np.int32)}

    writer = ednet_store.StoreWriter(tmp_path)
    writer.add(np.array(["a", "b"], object), np.array([0, 0, 1]), arrays([0, 1, 0]))
    writer.add(np.array(["c"], object), np.array([0]), arrays([0]))
    assert writer.grouped
    writer.add(np.array(["a"], object), np.array([0, 0]), arrays([2, 3]))
    assert not writer.grouped
    writer.abort()
    assert not (tmp_path / f".{STORE_DIR}.partial").exists()


# ---------------------------------------------------------------- mapped, not copied

def test_datasets_map_the_arrays_and_never_read_the_parquet(fake, monkeypatch):
    def no_parquet(*args, **kwargs):
        raise AssertionError("the loader read a Parquet file it should not need")

    prepared = open_prepared(fake)
    monkeypatch.setattr(pq, "ParquetFile", no_parquet)
    dataset = make_dataset(prepared, "all", CFG.model_copy(update={"max_len": 15}))     # a fresh (uncached) build
    assert isinstance(dataset.arrays["question"], np.memmap)
    assert isinstance(dataset[0].arrays["question"], np.memmap)                       # an item: views, no copy


def test_the_store_pickles_as_its_path(fake):
    """DataLoader workers started by spawn get the folder's path and map it again."""
    store = open_store(open_prepared(fake))
    blob = pickle.dumps(store)
    assert len(blob) < 2_000
    again = pickle.loads(blob)
    for name in store.columns:
        assert np.array_equal(again.columns[name], store.columns[name])
    assert again.users.equals(store.users)


def test_worker_processes_give_the_same_batches(fake):
    prepared = open_prepared(fake)
    cfg = CFG.model_copy(update={"num_workers": 0})
    inline = list(make_loader(prepared, "all", cfg, shuffle=False, seed=0, batch_size=4))
    dataset = make_dataset(prepared, "all", cfg)
    spawned = list(DataLoader(dataset, batch_size=4, collate_fn=collate, num_workers=2,
                              multiprocessing_context="spawn"))
    assert len(inline) == len(spawned)
    for a, b in zip(inline, spawned):
        assert torch.equal(a.inputs["item"]["question"], b.inputs["item"]["question"])
        assert torch.equal(a.context["hours"], b.context["hours"]) and a.keys["user"] == b.keys["user"]


# ---------------------------------------------------------------- refused when stale or damaged

def test_a_folder_without_arrays_names_the_fix(fake, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(fake, copy)
    (copy / "manifest.json").write_text(json.dumps(_manifest_without_arrays(copy)))
    with pytest.raises(BadInput, match=r"manifest.json: no training arrays of version 1 .*dsrsd prepare --dataset ednet --force"):
        make_dataset(open_prepared(copy), "all", CFG)


def test_a_truncated_array_is_refused(fake, tmp_path):
    copy = tmp_path / "cut"
    shutil.copytree(fake, copy)
    file = copy / STORE_DIR / "num.npy"
    file.write_bytes(file.read_bytes()[:-40])
    with pytest.raises(BadInput, match=r"num.npy: missing or unreadable"):
        make_dataset(open_prepared(copy), "all", CFG)


def test_an_edited_parquet_file_is_refused_until_the_arrays_are_refreshed(fake, tmp_path):
    copy = tmp_path / "edited"
    shutil.copytree(fake, copy)
    table = pq.read_table(copy / "interactions.parquet")
    flipped = pa.array(1 - table["correct"].to_numpy(), pa.int8())
    pq.write_table(table.set_column(table.schema.get_field_index("correct"), "correct", flipped), copy / "interactions.parquet")
    with pytest.raises(BadInput, match=r"interactions.parquet: changed after the training arrays were written.*--refresh-arrays"):
        make_dataset(open_prepared(copy), "all", CFG)
    refresh_store(copy)
    store = open_store(open_prepared(copy))
    assert np.array_equal(store.columns["correct"], 1 - open_store(open_prepared(fake)).columns["correct"])
    assert not list(copy.glob(".arrays*"))


# ---------------------------------------------------------------- windows, vectorised

def _reference_windows(user_starts, user_ends, bundle_starts, *, max_len, context):
    """The windows one learner and one window at a time (the loop ednet_windows replaced)."""
    bundle_starts = np.append(bundle_starts, np.iinfo(np.int64).max)
    out = []
    for lo, hi in zip(user_starts.tolist(), user_ends.tolist()):
        start = lo
        while start < hi:
            ctx = start
            if start > lo and context > 0:
                earliest = max(lo, start - context)
                ctx = int(bundle_starts[np.searchsorted(bundle_starts, earliest)])
                if ctx >= start:
                    ctx = earliest
            limit = min(hi, ctx + max_len)
            end = limit
            if limit < hi:
                last = int(bundle_starts[np.searchsorted(bundle_starts, limit, side="right") - 1])
                if last > start:
                    end = last
            out.append((ctx, start, end))
            start = end
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_windows_match_the_loop(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, 40)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    bundles = [s + np.concatenate([[0], np.cumsum(rng.integers(1, 12, 100))]) for s in starts]
    bundle_starts = np.unique(np.concatenate([b[b < s + n] for b, s, n in zip(bundles, starts, lengths)]))
    chosen = np.sort(rng.choice(len(lengths), 25, replace=False))      # a split: some learners only
    lo, hi = starts[chosen], starts[chosen] + lengths[chosen]
    for max_len, context in [(16, 6), (50, 0), (100, 50), (5, 4)]:
        got = ednet_windows(lo, hi, bundle_starts, max_len=max_len, context=context)
        want = _reference_windows(lo, hi, bundle_starts, max_len=max_len, context=context)
        assert np.array_equal(got, want), (max_len, context)


def test_refresh_arrays_on_the_command_line(fake, tmp_path):
    """`dsrsd prepare --refresh-arrays` rebuilds the arrays of an edited folder; an OULAD folder
    is refused with one line and exit code 2."""
    import subprocess
    import sys

    copy = tmp_path / "edited"
    shutil.copytree(fake, copy)
    table = pq.read_table(copy / "interactions.parquet")
    pq.write_table(table.slice(0, table.num_rows - 3), copy / "interactions.parquet")   # an edit: fewer rows
    cli = [sys.executable, "-m", "dsrsd_cli", "prepare", "--dataset", "ednet", "--refresh-arrays", "--out"]
    res = subprocess.run([*cli, str(copy)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{table.num_rows - 3:,} answers" in res.stderr and res.stderr.count("\n") == 1   # one line, however long the path
    assert len(make_dataset(open_prepared(copy), "all", CFG).rows()) == table.num_rows - 3

    oulad = tmp_path / "oulad"
    (oulad).mkdir()
    from prepared_fakes import oulad_tables
    write_prepared(oulad, "oulad", oulad_tables(n_students=20, seed=1))
    res = subprocess.run([*cli, str(oulad)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "has no training arrays" in res.stderr and res.stderr.count("\n") == 1


def test_hours_of_grouped_rows_take_the_fast_path_with_the_same_values():
    """Rows grouped by learner without null timestamps skip pandas; the hours are the same."""
    import pandas as pd

    from dsrsd_cli.data.ednet_row_arrays import hours_since_first

    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(50), rng.integers(1, 40, 50))
    ms = 1_500_000_000_000 + np.cumsum(rng.integers(0, 10**8, len(codes)))       # in time order, as prepared
    series = pd.Series(ms.astype(np.float64))
    expected = ((series - series.groupby(codes).transform("min")) / 3.6e6).clip(lower=0).to_numpy(np.float32)
    got = hours_since_first(pa.chunked_array([pa.array(ms, pa.int64())]), codes)
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert (got[np.flatnonzero(np.diff(codes, prepend=-1))] == 0).all()     # each learner's first answer: hour 0


def _mapped_kb(file: Path) -> int:
    """Resident kB of this process's mappings of `file` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef" and "-" in line.split(" ")[0]:
            inside = line.rstrip().endswith(str(file))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_reading_a_split_keeps_the_mapped_pages_bounded(real, monkeypatch):
    """A pass over a split releases the pages it read (they stay in the OS cache): the
    process's resident share of the mapped arrays does not grow with the split."""
    from dsrsd_cli.data import ednet_windows

    store = open_store(open_prepared(real))
    file = (real / STORE_DIR / "num.npy").resolve()
    int(np.asarray(store.columns["num"]).sum())                     # touch every page
    assert _mapped_kb(file) > 0
    store.release_pages()
    assert _mapped_kb(file) == 0

    monkeypatch.setattr(ednet_windows, "RELEASE_EVERY", 2)
    dataset = make_dataset(open_prepared(real), "all", CFG.model_copy(update={"max_len": 14}))
    released = []
    monkeypatch.setattr(type(dataset.store), "release_pages", lambda self: released.append(1))
    for i in range(10):
        collate([dataset[i]])                                        # reads the window's rows
    assert len(released) == 5                                        # every RELEASE_EVERY windows read
