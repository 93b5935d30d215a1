"""Learner-level splits (docs/data.md#splits): every learner lands in exactly one of train/valid/test.

Assignment depends only on the seed and the SET of learner ids (ids are sorted before
the seeded shuffle), so re-running prepare on the same data gives the same split,
whatever order the raw files were read in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FRACTIONS = (0.7, 0.1, 0.2)


def learner_split(
    learner_ids, *, seed: int, fractions: tuple[float, float, float] = FRACTIONS, n_folds: int = 5
) -> pd.DataFrame:
    """Columns: learner (as given), split ("train"|"valid"|"test"), fold (0..k-1; -1 on test).

    Folds partition train+valid, for cross-validation on everything but the test set.
    """
    ids = np.array(sorted(set(learner_ids)), dtype=object)
    n = len(ids)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_train = int(round(fractions[0] * n))
    n_valid = int(round(fractions[1] * n))
    split = np.empty(n, dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train : n_train + n_valid]] = "valid"
    split[order[n_train + n_valid :]] = "test"
    fold = np.full(n, -1, dtype=np.int8)
    dev = order[: n_train + n_valid]
    fold[dev] = (np.arange(len(dev)) % n_folds).astype(np.int8)
    return pd.DataFrame({"learner": ids, "split": split, "fold": fold})


def split_sizes(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame["split"].value_counts()
    return {s: int(counts.get(s, 0)) for s in ("train", "valid", "test")}
