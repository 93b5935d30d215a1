"""Metrics of a set of predictions, from scikit-learn wherever it has them.

Binary targets (EdNet `correct`, OULAD at_risk / pass_fail / withdrawn), from labels y (0/1)
and probabilities p of the positive class:
  auc, accuracy (p >= 0.5), f1, log_loss, brier, rmse, ece, n, positive_rate.
Multi-class targets (OULAD result4), from labels y (class index) and probabilities P (n, C):
  auc (macro one-vs-rest), accuracy, f1 (macro), log_loss, brier (multi-class: mean over rows
  of the squared distance between P and the one-hot label), ece (on the top-class
  confidence), n, class_rates.

`auc` is the headline for both, so early stopping, `compare` and the robustness sweep use one
key. A metric that is undefined on the given labels (AUC with a single class present) is NaN;
io.to_jsonable writes NaN as null.

ECE is the 15-bin equal-width expected calibration error (Guo et al., 2017):
sum over bins b of |B_b|/n * |mean(label in B_b) - mean(confidence in B_b)|, bins over [0, 1],
the last bin closed. sklearn's `calibration_curve` drops empty bins without giving their
counts, so the weighting is done here, in a few lines.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, mean_squared_error, roc_auc_score

ECE_BINS = 15
_EPS = 1e-7


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """`correct`: 0/1 outcome per row; `confidence`: the predicted probability of that outcome."""
    correct = np.asarray(correct, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    if correct.size == 0:
        return float("nan")
    # bin index 0..n_bins-1; confidence == 1.0 goes to the last bin
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    # |B_b| * |acc_b - conf_b| = |sum of correct in b - sum of confidence in b|
    gap = np.abs(np.bincount(bins, weights=correct, minlength=n_bins) - np.bincount(bins, weights=confidence, minlength=n_bins))
    return float(gap.sum() / correct.size)


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), 0.0, 1.0)
    n = int(y.size)
    if n == 0:
        return {"n": 0}
    both_classes = np.unique(y).size == 2
    pred = (p >= 0.5).astype(np.int64)
    return {
        "auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "log_loss": float(log_loss(y, np.clip(p, _EPS, 1 - _EPS), labels=[0, 1])),
        "brier": float(brier_score_loss(y, p, pos_label=1)),
        "rmse": float(math.sqrt(mean_squared_error(y, p))),
        "ece": expected_calibration_error(y, p),
        "n": n,
        "positive_rate": float(y.mean()),
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    y = np.asarray(y).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    n, n_classes = probs.shape
    if n == 0:
        return {"n": 0}
    probs = np.clip(probs, _EPS, 1.0)
    probs = probs / probs.sum(axis=1, keepdims=True)
    labels = list(range(n_classes))
    pred = probs.argmax(axis=1)
    present = np.unique(y)
    if present.size == n_classes:
        auc = float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels))
    elif present.size >= 2:
        # sklearn refuses ovr AUC when a class is missing from y; average over the classes present
        auc = float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))
    else:
        auc = float("nan")
    onehot = np.eye(n_classes)[y]
    return {
        "auc": auc,
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "log_loss": float(log_loss(y, probs, labels=labels)),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
        "ece": expected_calibration_error(pred == y, probs.max(axis=1)),
        "n": int(n),
        "class_rates": [float((y == c).mean()) for c in labels],
    }


def compute_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Binary when `probs` is 1-D (probability of class 1), multi-class when it is (n, C)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on degenerate tiny sets; NaN says it already
        probs = np.asarray(probs)
        if probs.ndim == 2 and probs.shape[1] > 1:
            return multiclass_metrics(y, probs)
        return binary_metrics(y, probs.ravel())


def area_under_curve(levels, values) -> float:
    """Trapezoid area of values over levels, divided by the level range (so a flat curve at v gives v)."""
    levels = np.asarray(levels, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    span = levels[-1] - levels[0]
    if span <= 0 or not np.all(np.isfinite(values)):
        return float("nan")
    return float(np.trapezoid(values, levels) / span)
