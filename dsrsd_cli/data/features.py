"""Causal tabular features for the `gbdt` reference model, one row per scored unit:
the dispatch by dataset (the per-dataset builders are data/features_ednet.py and
data/features_oulad.py; the matrix type is data/feature_table.FeatureTable).

    stats = fit_question_stats(prepared, cfg.data)                            # EdNet; training learners only
    train = build_features(prepared, cfg.data, "train", stats, out_of_fold=True)
    valid = build_features(prepared, cfg.data, "valid", stats)
    # train.x (n, F) float32, NaN = unknown; train.label (n,); train.groups {modality: [column, ...]}
"""

from __future__ import annotations

from typing import Callable

from dsrsd_cli.config import DataConfig
from dsrsd_cli.data.features_ednet import QuestionStats, ednet_features, fit_question_stats  # noqa: F401  (fit_question_stats re-exported)
from dsrsd_cli.data.features_ednet import EDNET_FEATURES, learner_folds  # noqa: F401  (re-exported)
from dsrsd_cli.data.feature_table import FeatureTable
from dsrsd_cli.data.features_oulad import oulad_features
from dsrsd_cli.data.prepared import Prepared


def _build_ednet(prepared: Prepared, data_cfg: DataConfig, split: str, stats: QuestionStats | None, out_of_fold: bool) -> FeatureTable:
    return ednet_features(prepared, data_cfg, split, stats, out_of_fold=out_of_fold)


def _build_oulad(prepared: Prepared, data_cfg: DataConfig, split: str, stats: QuestionStats | None, out_of_fold: bool) -> FeatureTable:
    return oulad_features(prepared, data_cfg, split)     # no feature is fitted on labels: nothing to hold out


BUILDERS: dict[str, Callable[[Prepared, DataConfig, str, QuestionStats | None, bool], FeatureTable]] = {
    "ednet": _build_ednet,
    "oulad": _build_oulad,
}


def build_features(
    prepared: Prepared, data_cfg: DataConfig, split: str, stats: QuestionStats | None, *, out_of_fold: bool = False
) -> FeatureTable:
    """The feature table of `split` ("train" | "valid" | "test" | "all") for prepared.dataset."""
    return BUILDERS[prepared.dataset](prepared, data_cfg, split, stats, out_of_fold)
