"""Prepared Parquet -> batches (docs/data.md, docs/leakage.md): the dispatch to each dataset's module.

    prepared = open_prepared("data/ednet")            # checks manifest + every file's columns
    spec = make_spec(prepared, cfg.data)              # sizes the model
    loader = make_loader(prepared, "train", cfg.data, shuffle=True, seed=0, epoch=epoch)
    for batch in loader: ...                           # dsrsd_cli.types.Batch

Where the rules live:
  data/prepared.py       the prepared folder (`open_prepared`, `Prepared`, column checks),
                         learner-level splits, folds and the learning-curve subsample
  data/ednet_windows.py  EdNet: windows with carried context (context positions not
                         scored), fixed behaviour transforms, post-answer behaviour, bundles
  data/oulad_cutoff.py   OULAD: the cutoff day, who is in a cutoff's population, and what
                         reaches a feature before the cutoff (clicks, assessments)
  data/loader.py         this file: spec / dataset / collate dispatch, samplers, loaders

Built datasets are kept in a small in-process cache, so a loader made every epoch does not
re-read the files; the cache key includes every file's size and mtime.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator

from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data.ednet_windows import collate_ednet, ednet_dataset, ednet_spec
from dsrsd_cli.data.oulad_cutoff import OULAD_TARGETS, collate_oulad, oulad_dataset, oulad_spec
from dsrsd_cli.data.prepared import SPLITS, Example, Prepared, open_prepared
from dsrsd_cli.errors import BadInput
from dsrsd_cli.types import Batch, DataSpec

# Re-exported on purpose: callers open a folder and make loaders from this one module.
__all__ = ["Prepared", "collate", "make_dataset", "make_loader", "make_sampler", "make_spec", "open_prepared"]

# ================================================================ spec

def make_spec(prepared: Prepared, data_cfg: DataConfig) -> DataSpec:
    """What a model needs to size itself; depends on the folder and config, never on the split."""
    _check_config(prepared, data_cfg)
    return SPEC_BUILDERS[prepared.dataset](prepared, data_cfg)


def _check_config(prepared: Prepared, data_cfg: DataConfig) -> None:
    if data_cfg.dataset != prepared.dataset:
        raise BadInput(
            f"{prepared.path} holds {prepared.dataset} data but data.dataset is {data_cfg.dataset!r}; "
            f"use a {data_cfg.dataset} folder or --set data.dataset={prepared.dataset}"
        )
    targets = ("correct",) if prepared.dataset == "ednet" else tuple(OULAD_TARGETS)
    if data_cfg.target not in targets:
        raise BadInput(f"data.target {data_cfg.target!r} does not apply to {prepared.dataset}; choose one of {', '.join(targets)}")
    if prepared.dataset == "ednet" and data_cfg.context >= data_cfg.max_len:
        raise BadInput(
            f"data.context ({data_cfg.context}) must be smaller than data.max_len ({data_cfg.max_len}): "
            f"each window needs room for new positions; e.g. --set data.context={data_cfg.max_len // 2}"
        )


# ================================================================ datasets

_CACHE: OrderedDict[tuple, Dataset] = OrderedDict()
_CACHE_SIZE = 4


def make_dataset(prepared: Prepared, split: str, data_cfg: DataConfig) -> Dataset:
    """The examples of one split: "train" | "valid" | "test" | "all".

    With data_cfg.fold = k, "train" is every train+valid learner whose fold != k and
    "valid" those whose fold == k ("test" is unchanged). Splits are by learner, so no
    learner (EdNet user; OULAD student, across all their registrations) is in two splits.
    """
    _check_config(prepared, data_cfg)
    if split not in SPLITS:
        raise BadInput(f"split {split!r} is unknown; choose one of {', '.join(SPLITS)}")
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(prepared.path.glob("*.parquet")))
    key = (
        str(prepared.path.resolve()), prepared.manifest_hash, stamp, split,
        data_cfg.max_len, data_cfg.context, data_cfg.target, data_cfg.cutoff_day, data_cfg.max_weeks, data_cfg.fold,
        data_cfg.train_fraction if split == "train" else 1.0, data_cfg.train_fraction_seed if split == "train" else 0,
    )
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    dataset = DATASET_BUILDERS[prepared.dataset](prepared, split, data_cfg)
    _CACHE[key] = dataset
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return dataset


# ================================================================ batches and loaders

SPEC_BUILDERS: dict[str, Callable[[Prepared, DataConfig], DataSpec]] = {"ednet": ednet_spec, "oulad": oulad_spec}
DATASET_BUILDERS: dict[str, Callable[[Prepared, str, DataConfig], Dataset]] = {"ednet": ednet_dataset, "oulad": oulad_dataset}
COLLATORS: dict[str, Callable[[list[Example]], Batch]] = {"ednet": collate_ednet, "oulad": collate_oulad}


def collate(examples: list[Example]) -> Batch:
    """Examples of one dataset -> a padded `Batch` (EdNet: T = the longest window in the batch)."""
    if not examples:
        raise ValueError("collate needs at least one example")
    return COLLATORS[examples[0].dataset](examples)


class StridedShard(Sampler[int]):
    """Rank r of w gets indices r, r+w, r+2w, ...: disjoint shards that together cover every
    example once (no padding duplicates), for evaluation; sizes differ by at most one."""

    def __init__(self, n: int, *, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def make_sampler(dataset: Dataset, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, epoch: int = 0) -> Sampler:
    """The order of one epoch on one rank, fixed by (seed, epoch).

    Shuffled (training): DistributedSampler seeded with seed + epoch, also for a single
    process; with world_size > 1 it drops the < world_size leftover examples, so shards
    are disjoint and every rank runs the same number of steps (the shuffle changes which
    are left over). Unshuffled (evaluation): StridedShard, disjoint and complete.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if not shuffle:
        return StridedShard(len(dataset), rank=rank, world_size=world_size)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=world_size > 1)
    sampler.set_epoch(epoch)
    return sampler


def make_loader(
    prepared: Prepared,
    split: str,
    data_cfg: DataConfig,
    *,
    shuffle: bool,
    seed: int,
    batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
) -> DataLoader:
    dataset = make_dataset(prepared, split, data_cfg)
    return DataLoader(
        dataset,
        batch_size=batch_size or data_cfg.batch_size,
        sampler=make_sampler(dataset, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, epoch=epoch),
        collate_fn=collate,
        num_workers=data_cfg.num_workers,
    )
