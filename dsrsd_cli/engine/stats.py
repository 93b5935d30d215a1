"""Paired tests of models scored on the SAME test rows (used by `dsrsd compare`).

Rows of one learner are correlated (an EdNet learner answers hundreds of questions; an
OULAD student can retake a module), so every test here treats LEARNERS as the independent
units (clusters), never rows.

  AUC (binary)      Clustered DeLong: the nonparametric covariance of correlated AUCs of
                    Obuchowski (1997, Biometrics 53:567), i.e. DeLong et al. (1988) with the
                    structural components summed per learner; midranks as in Sun & Xu (2014),
                    so it costs one sort per model. With one row per learner it is DeLong's
                    test. A difference of AUCs (or the mean of several seed pairs' differences,
                    a linear contrast of all the AUCs) gets a z-test from that covariance.
  accuracy,         Paired cluster bootstrap: resample learners with replacement, recompute
  log_loss, brier   the mean per-row difference of the two models on the same resample,
  (and multi-class  and read a two-sided p-value off the replicates by inverting the
  AUC)              percentile interval: p = min(1, 2 * (min(#{d* <= 0}, #{d* >= 0}) + 1) / (R + 1)).
                    Several seed pairs share each resample, so their averaged difference gets
                    the same treatment: a COMBINED test that accounts for the pairs sharing
                    the test rows (Fisher's or Stouffer's combination would assume
                    independent tests and be anti-conservative).

Row metrics are bootstrapped from per-learner sums (cost: replicates x learners); the
multi-class AUC needs row weights (cost: replicates x rows), so it is the slow path.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import norm, rankdata

_EPS = 1e-7
_CHUNK_CELLS = 20_000_000          # replicates x (learners or rows) held in memory at once

# Metrics the paired tests know, and whether higher is better.
HIGHER_IS_BETTER: dict[str, bool] = {"auc": True, "accuracy": True, "log_loss": False, "brier": False}


# ---------------------------------------------------------------- per-row values and weighted AUC


def nearly_constant(scores: np.ndarray, tol: float = 1e-6) -> bool:
    """Scores that differ only by float noise (a model with no input left gives the same
    output on every row, up to the rounding of batched kernels): their AUC is 0.5, not a
    ranking of that noise."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores.size > 0 and bool(np.all(np.ptp(scores, axis=0) <= tol * max(1.0, float(np.abs(scores).max()))))


def row_values(metric: str, probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row values whose mean is the metric (accuracy, log_loss, brier); probs (n,) or (n, C)."""
    y = np.asarray(y).astype(np.int64)
    if probs.ndim == 1:
        p = np.clip(probs, 0.0, 1.0)
        if metric == "accuracy":
            return ((p >= 0.5) == (y == 1)).astype(np.float64)
        if metric == "log_loss":
            p = np.clip(p, _EPS, 1 - _EPS)
            return -(y * np.log(p) + (1 - y) * np.log(1 - p))
        if metric == "brier":
            return (p - y) ** 2
    else:
        if metric == "accuracy":
            return (probs.argmax(1) == y).astype(np.float64)
        if metric == "log_loss":
            p = np.clip(probs, _EPS, 1.0)
            return -np.log(p[np.arange(len(y)), y] / p.sum(1))
        if metric == "brier":
            return ((probs - np.eye(probs.shape[1])[y]) ** 2).sum(1)
    raise ValueError(f"no per-row form for metric {metric!r}")


def weighted_auc(score: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of `score` for binary labels `y` under row weights; ties count one half.

    score, y: (n,); weights: (R, n) -> (R,) (NaN where a class has no weight). Equals
    sklearn's roc_auc_score when the weights are all 1.
    """
    order = np.argsort(score, kind="stable")
    s, pos = score[order], np.asarray(y)[order].astype(bool)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])                   # first row of each tied group
    w = weights[:, order]
    wp = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)              # (R, G) positive weight per score
    wn = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)              # (R, G) negative weight per score
    below = np.cumsum(wn, axis=1) - wn                                       # negative weight strictly below
    total_p, total_n = wp.sum(1), wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (wp * (below + 0.5 * wn)).sum(1) / (total_p * total_n)
    return np.where((total_p > 0) & (total_n > 0), auc, np.nan)


def macro_auc(probs: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC over the classes present, (n, C) probabilities -> (R,)."""
    y = np.asarray(y)
    per_class = [weighted_auc(probs[:, c], y == c, weights) for c in np.unique(y)]
    if len(per_class) < 2:
        return np.full(len(weights), np.nan)
    return np.nanmean(np.stack(per_class), axis=0)


# ---------------------------------------------------------------- clustered DeLong


def auc_covariance(y: np.ndarray, scores: Sequence[np.ndarray], clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of several models on the same rows and their (R, R) covariance, learners as clusters.

    y: (n,) 0/1; scores[r]: (n,) of model r; clusters: (n,) learner of each row.
    Obuchowski (1997): with M positives, N negatives, I learners, per learner i the sums
    X_ri = sum of V10 over its positives - m_i * AUC_r and Y_ri = sum of V01 over its
    negatives - n_i * AUC_r, the covariance is
        f * (X X^T / M^2 + Y Y^T / N^2 + (X Y^T + Y X^T) / (M N)),  f = I / (I - 1).
    """
    y = np.asarray(y).astype(bool)
    _, learner = np.unique(np.asarray(clusters), return_inverse=True)
    n_learners, M, N = int(learner.max()) + 1 if len(learner) else 0, int(y.sum()), int((~y).sum())
    R = len(scores)
    if M == 0 or N == 0 or n_learners < 2:
        return np.full(R, np.nan), np.full((R, R), np.nan)
    m_i = np.bincount(learner[y], minlength=n_learners)
    n_i = np.bincount(learner[~y], minlength=n_learners)
    aucs, X, Y = [], [], []
    for score in scores:
        score = np.asarray(score, dtype=np.float64)
        rank_all = rankdata(score)                                            # midranks
        v10 = (rank_all[y] - rankdata(score[y])) / N                          # per positive: negatives below (+ half ties)
        v01 = 1.0 - (rank_all[~y] - rankdata(score[~y])) / M                 # per negative: positives above (+ half ties)
        auc = float(v10.mean())
        aucs.append(auc)
        X.append(np.bincount(learner[y], weights=v10, minlength=n_learners) - m_i * auc)
        Y.append(np.bincount(learner[~y], weights=v01, minlength=n_learners) - n_i * auc)
    X, Y = np.stack(X), np.stack(Y)                                           # (R, I)
    f = n_learners / (n_learners - 1)
    cross = X @ Y.T / (M * N)
    cov = f * (X @ X.T / M**2 + Y @ Y.T / N**2 + cross + cross.T)
    return np.asarray(aucs), cov


def contrast_test(estimates: np.ndarray, cov: np.ndarray, contrast: np.ndarray, level: float = 0.95) -> dict[str, float | list]:
    """z-test of contrast @ estimates = 0 under the covariance `cov`; normal-theory interval."""
    diff = float(contrast @ estimates)
    var = float(contrast @ cov @ contrast)
    if not math.isfinite(diff) or not math.isfinite(var):
        return {"diff": diff, "se": math.nan, "ci": [math.nan, math.nan], "z": math.nan, "p": math.nan}
    se = math.sqrt(max(var, 0.0))
    if se == 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    half = float(norm.ppf(0.5 + level / 2)) * se
    return {"diff": diff, "se": se, "ci": [diff - half, diff + half], "z": z, "p": float(2 * norm.sf(abs(z)))}


def paired_auc_tests(y: np.ndarray, scores_a: Sequence[np.ndarray], scores_b: Sequence[np.ndarray], clusters: np.ndarray) -> dict:
    """Clustered DeLong tests of AUC(b_k) - AUC(a_k) per seed pair k and of their mean."""
    K = len(scores_a)
    aucs, cov = auc_covariance(y, [*scores_a, *scores_b], clusters)          # a_0..a_{K-1}, b_0..b_{K-1}
    pairs = []
    for k in range(K):
        contrast = np.zeros(2 * K)
        contrast[k], contrast[K + k] = -1.0, 1.0
        pairs.append(contrast_test(aucs, cov, contrast))
    combined = np.r_[np.full(K, -1.0 / K), np.full(K, 1.0 / K)]
    return {"pairs": pairs, "combined": contrast_test(aucs, cov, combined)}


# ---------------------------------------------------------------- paired cluster bootstrap


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p-value of "difference = 0" by inverting the percentile interval."""
    d = replicates[np.isfinite(replicates)]
    if d.size == 0:
        return math.nan
    below, above = np.count_nonzero(d <= 0), np.count_nonzero(d >= 0)
    return float(min(1.0, 2.0 * (min(below, above) + 1) / (d.size + 1)))


def _summary(observed: float, replicates: np.ndarray, level: float) -> dict:
    d = replicates[np.isfinite(replicates)]
    tail = (1.0 - level) / 2.0
    ci = [float(np.quantile(d, tail)), float(np.quantile(d, 1.0 - tail))] if d.size else [math.nan, math.nan]
    return {"diff": float(observed), "ci": ci, "p": bootstrap_p(replicates)}


def paired_bootstrap(
    y: np.ndarray,
    probs_a: Sequence[np.ndarray],
    probs_b: Sequence[np.ndarray],
    clusters: np.ndarray,
    *,
    metrics: Sequence[str] = ("accuracy", "log_loss", "brier"),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict]:
    """Model B minus model A per seed pair and averaged over pairs, learners resampled.

    y: (n,) labels of the shared test rows; probs_a[k], probs_b[k]: (n,) or (n, C) of seed
    pair k, row-aligned with y; clusters: (n,) learner of each row. Every metric and pair
    sees the same resamples (seeded). `metrics` may include "auc" (macro one-vs-rest for
    (n, C) probabilities; replicates x rows work).
    Returns {metric: {"pairs": [{"diff", "ci", "p"}...], "combined": {"diff", "ci", "p"}}}.
    """
    if len(probs_a) != len(probs_b) or not probs_a:
        raise ValueError("paired_bootstrap needs the same number (>= 1) of runs on each side")
    y = np.asarray(y).astype(np.int64)
    _, learner = np.unique(np.asarray(clusters), return_inverse=True)
    n_learners, K = int(learner.max()) + 1, len(probs_a)
    counts = np.random.default_rng(seed).multinomial(n_learners, np.full(n_learners, 1.0 / n_learners), size=n_boot)  # (R, I)
    rows_per_learner = np.bincount(learner, minlength=n_learners).astype(np.float64)

    out: dict[str, dict] = {}
    for metric in metrics:
        replicates = np.empty((n_boot, K))
        if metric == "auc":
            auc = weighted_auc if probs_a[0].ndim == 1 else macro_auc
            ones = np.ones((1, len(y)))
            observed = np.array([auc(b, y, ones)[0] - auc(a, y, ones)[0] for a, b in zip(probs_a, probs_b)])
            step = max(1, _CHUNK_CELLS // len(y))
            for lo in range(0, n_boot, step):
                w = counts[lo:lo + step][:, learner].astype(np.float64)          # (r, n) row weights
                for k, (a, b) in enumerate(zip(probs_a, probs_b)):
                    replicates[lo:lo + step, k] = auc(b, y, w) - auc(a, y, w)
        else:
            diffs = np.stack([row_values(metric, b, y) - row_values(metric, a, y) for a, b in zip(probs_a, probs_b)])  # (K, n)
            observed = diffs.mean(1)
            per_learner = np.stack([np.bincount(learner, weights=d, minlength=n_learners) for d in diffs])  # (K, I)
            step = max(1, _CHUNK_CELLS // n_learners)
            for lo in range(0, n_boot, step):
                c = counts[lo:lo + step].astype(np.float64)                      # (r, I)
                replicates[lo:lo + step] = (c @ per_learner.T) / (c @ rows_per_learner)[:, None]
        out[metric] = {
            "pairs": [_summary(observed[k], replicates[:, k], level) for k in range(K)],
            "combined": _summary(float(observed.mean()), replicates.mean(1), level),
        }
    return out
