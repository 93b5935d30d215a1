"""EdNet: prepared interactions -> windows of learner histories -> padded batches, and the
rules that keep a window's answers from leaking into its own scores.

One example = one window of one learner's history. A history is cut into windows of at
most `max_len` positions; every window after the first carries up to `context` earlier
positions as context (valid inputs, but `mask` False there, so context positions are
never scored), then new positions whose answers are scored. Every answer is scored
exactly once. Windows start at bundle boundaries where the bundles allow it, so a bundle
is normally not split between a window's context and its scored part (the model's
block-causal mask over `bundle_group` covers the rest). `behavior.num` at step t describes
step t itself; its "post" features (schema.BEHAVIOR_FEATURES) are known only once t is
answered, so the model must let them feed later bundles only.

The per-answer arrays (fixed transforms, checked ids) are written by `prepare` and mapped
here (data/ednet_store.py); a dataset holds only its windows, index ranges into them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data import schema
from dsrsd_cli.data.ednet_row_arrays import CUSTOM_MODALITIES, custom_layout, ednet_tag_width
from dsrsd_cli.data.ednet_store import Store, open_store
from dsrsd_cli.data.prepared import Example, Prepared, read_table, rerun_prepare, split_mask, vocab_count
from dsrsd_cli.errors import BadInput
from dsrsd_cli.types import Batch, DataSpec

# ---------------------------------------------------------------- custom features (prepare --dataset custom)

def custom_spec_entries(prepared: Prepared) -> tuple[dict[str, int], dict[str, int]]:
    """(vocab, dims) entries that size the encoders' CustomFeatures: dims "<m>.custom_cat" = Kc,
    "<m>.custom_cat_before" = how many of them are known before the answer (the first ones),
    likewise "<m>.custom_num" / "<m>.custom_num_before"; vocab "<m>.custom_cat.<j>" = table size."""
    vocab: dict[str, int] = {}
    dims: dict[str, int] = {}
    for m, kinds in custom_layout(prepared).items():
        for kind in ("cat", "num"):
            dims[f"{m}.custom_{kind}"] = len(kinds[kind])
            dims[f"{m}.custom_{kind}_before"] = sum(f["known"] == "before" for f in kinds[kind])
        for j, f in enumerate(kinds["cat"]):
            vocab[f"{m}.custom_cat.{j}"] = int(f["size"])
    return vocab, dims


def ednet_spec(prepared: Prepared, data_cfg: DataConfig) -> DataSpec:
    custom_vocab, custom_dims = custom_spec_entries(prepared)
    return DataSpec(
        dataset="ednet",
        modalities=schema.MODALITIES["ednet"],
        n_outputs=1,
        vocab={
            "item.question": vocab_count(prepared, "question") + 1,
            "item.bundle": vocab_count(prepared, "bundle") + 1,
            "content.tag": vocab_count(prepared, "tag") + 1,
            "content.part": 8,
            "behavior.platform": 3,
            "behavior.source": vocab_count(prepared, "source") + 1,
            **custom_vocab,
        },
        dims={"behavior.num": len(schema.BEHAVIOR_FEATURES), "content.tags": ednet_tag_width(prepared), **custom_dims},
        max_len=data_cfg.max_len,
        target="correct",
    )


# ---------------------------------------------------------------- windows

def ednet_windows(
    user_starts: np.ndarray, user_ends: np.ndarray, bundle_starts: np.ndarray, *, max_len: int, context: int
) -> np.ndarray:
    """(n_windows, 3) int64 rows (context_start, target_start, end) of flat index ranges,
    sorted by target_start.

    Per learner [lo, hi) (learners in increasing flat order): targets [target_start, end)
    tile the history exactly once. A window's context is [context_start, target_start): the
    earliest bundle start at most `context` positions back (or exactly `context` back when
    one bundle is longer than that). Its end is the last bundle start that fits in max_len
    (or max_len itself when no bundle boundary fits). `bundle_starts` are the sorted flat
    indices where a bundle run begins, including every learner's first position (it may be
    a memory map: only searched, never copied). Requires context < max_len.

    Vectorised over learners: iteration k cuts every learner's k-th window at once, so the
    loop runs as many times as the longest history has windows.
    """
    assert context < max_len
    starts, ends = np.asarray(user_starts, np.int64), np.asarray(user_ends, np.int64)
    n_starts = len(bundle_starts)

    def first_start_at_or_after(x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(bundle_starts, x)
        return np.where(i < n_starts, bundle_starts[np.minimum(i, max(n_starts - 1, 0))] if n_starts else 0, np.iinfo(np.int64).max)

    def last_start_at_or_before(x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(bundle_starts, x, side="right") - 1
        return np.where(i >= 0, bundle_starts[np.maximum(i, 0)] if n_starts else 0, -1)

    pieces: list[np.ndarray] = []
    learner = np.flatnonzero(ends > starts)
    start = starts[learner]
    while len(learner):
        lo, hi = starts[learner], ends[learner]
        ctx = start
        if context > 0:
            earliest = np.maximum(lo, start - context)
            nearest = first_start_at_or_after(earliest)
            carried = np.where(nearest >= start, earliest, nearest)   # one bundle covers the whole context span
            ctx = np.where(start > lo, carried, start)
        limit = np.minimum(hi, ctx + max_len)
        boundary = last_start_at_or_before(limit)
        end = np.where((limit < hi) & (boundary > start), boundary, limit)
        pieces.append(np.stack([ctx, start, end], axis=1))
        more = end < hi
        learner, start = learner[more], end[more]
    windows = np.concatenate(pieces) if pieces else np.zeros((0, 3), np.int64)
    return windows[np.argsort(windows[:, 1], kind="stable")]


# Windows between releases of the mapped pages read. Each page fault maps up to 16 cached
# neighbours too (the kernel's fault-around), so a window can hold ~64 kB per column: 256
# windows keep it near 16 MB a column.
RELEASE_EVERY = 256


class EdnetWindows(Dataset):
    """Windows of learner histories over the folder's mapped arrays (data/ednet_store.py);
    each item is an `Example` of array views [context_start:end)."""

    def __init__(self, store: Store, windows: np.ndarray, window_user: np.ndarray):
        self.store = store                # flat arrays, one row per interaction, grouped by learner
        self.windows = windows            # (n, 3) context_start, target_start, end (flat rows)
        self.window_user = window_user    # (n,) learner index into store.users
        self.served = 0                   # items read in this process (page release cadence)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return self.store.columns

    def user(self, index: int) -> str:
        """The name of learner `index` (store order)."""
        return self.store.users[int(index)].as_py()

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Example:
        self.served += 1
        if self.served % RELEASE_EVERY == 0:   # bounded RSS over a pass (Store.release_pages)
            self.store.release_pages()
        ctx, start, end = self.windows[i].tolist()
        return Example(
            dataset="ednet",
            arrays={name: values[ctx:end] for name, values in self.store.columns.items()},
            keys={"user": self.user(self.window_user[i])},
            n_context=start - ctx,
        )

    def rows(self) -> np.ndarray:
        """(n,) flat rows of the split's answers, in dataset order (each once)."""
        lengths = self.windows[:, 2] - self.windows[:, 1]
        offsets = np.repeat(self.windows[:, 1] - np.cumsum(lengths) + lengths, lengths)
        return offsets + np.arange(int(lengths.sum()))

    @property
    def n_interactions(self) -> int:
        return int((self.windows[:, 2] - self.windows[:, 1]).sum())


# ---------------------------------------------------------------- the dataset of a split

def ednet_dataset(prepared: Prepared, split: str, data_cfg: DataConfig) -> EdnetWindows:
    """The split's learners' windows over the mapped arrays: memory O(windows), not O(answers)."""
    store = open_store(prepared)
    if split == "all":
        chosen = np.arange(len(store.users))
    else:
        file = prepared.file("splits.parquet")
        splits = read_table(prepared, "splits.parquet", ["user", "split", "fold"]).to_pandas()
        wanted = splits.loc[split_mask(splits, split, data_cfg, file, "ednet", "user"), "user"].astype(str)
        found = pc.index_in(pa.array(wanted.to_numpy(dtype=object), pa.string()), value_set=store.users)
        chosen = pc.fill_null(found, -1).to_numpy().astype(np.int64)
        if (chosen < 0).any():
            raise BadInput(f"{file}: learner {wanted.iloc[int(np.argmax(chosen < 0))]} has no rows in the training arrays; "
                           f"{rerun_prepare('ednet')}")
        chosen = np.sort(chosen)
    lo = store.start[chosen]
    windows = ednet_windows(lo, lo + store.length[chosen], store.bundle_starts, max_len=data_cfg.max_len, context=data_cfg.context)
    window_user = chosen[np.searchsorted(lo, windows[:, 1], side="right") - 1] if len(windows) else np.zeros(0, np.int64)
    store.release_pages()   # the searches above touched pages all over bundle_starts
    return EdnetWindows(store, windows, window_user)
# ---------------------------------------------------------------- collation

def collate_ednet(examples: list[Example]) -> Batch:
    lengths = torch.tensor([len(ex.arrays["position"]) for ex in examples])
    n_context = torch.tensor([ex.n_context for ex in examples])
    B, T = len(examples), int(lengths.max())

    def pad(name: str, fill: int = 0) -> torch.Tensor:
        first = examples[0].arrays[name]
        out = np.full((B, T, *first.shape[1:]), fill, dtype=first.dtype)
        for row, ex in enumerate(examples):
            out[row, : len(ex.arrays[name])] = ex.arrays[name]
        return torch.from_numpy(out)

    steps = torch.arange(T)
    valid = steps < lengths[:, None]                                  # (B, T)
    mask = valid & (steps >= n_context[:, None])                      # (B, T) scored positions
    bundle = pad("bundle").long()                                     # (B, T)
    new_bundle = torch.ones(B, T, dtype=torch.long)
    new_bundle[:, 1:] = (bundle[:, 1:] != bundle[:, :-1]).long()
    bundle_group = new_bundle.cumsum(dim=1) * valid                   # (B, T) 1, 2, ... ; 0 pad
    num_present = pad("num_present")                                  # (B, T, F)
    correct = pad("correct").long()                                   # (B, T)
    inputs = {
        "item": {"question": pad("question").long(), "bundle": bundle},
        "content": {
            "part": pad("part").long(),
            "tags": pad("tags").long(),                               # (B, T, K)
            "lecture_part": pad("lecture_part").long(),
            "lecture_tags": pad("lecture_tags").long(),               # (B, T, K)
        },
        "behavior": {
            "num": pad("num"),                                        # (B, T, F)
            "num_present": num_present,
            "platform": pad("platform").long(),
            "source": pad("source").long(),
        },
    }
    behavior_present = num_present.any(dim=-1)
    for m in CUSTOM_MODALITIES:                                       # prepare --dataset custom only
        if f"custom_cat.{m}" in examples[0].arrays:
            inputs[m]["custom_cat"] = pad(f"custom_cat.{m}").long()               # (B, T, Kc) 0 unknown
            inputs[m]["custom_num"] = pad(f"custom_num.{m}")                      # (B, T, Kn)
            inputs[m]["custom_num_present"] = pad(f"custom_num_present.{m}")      # (B, T, Kn)
            if m == "behavior":
                behavior_present = (behavior_present | inputs[m]["custom_num_present"].any(dim=-1)
                                    | (inputs[m]["custom_cat"] > 0).any(dim=-1))
    return Batch(
        inputs=inputs,
        present={"item": valid.clone(), "content": valid.clone(), "behavior": valid & behavior_present},
        target=correct.float(),
        mask=mask,
        valid=valid,
        keys={"user": [ex.keys["user"] for ex in examples], "position": pad("position", fill=-1).long()},
        context={"response": correct, "bundle_group": bundle_group, "hours": pad("hours")},
    )
