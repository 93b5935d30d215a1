"""Losses of DSRSD-Net (equations: docs/method.md#losses), as pure functions with explicit masks.

Every function takes the rows to use as a bool mask (or a presence dict) and indexes
them out before computing anything, so padded or absent rows (whatever they hold)
never change a loss. The auxiliary losses run in float32 even inside a bf16 autocast
region (covariances and temperatures are poor in bf16). A loss with too few rows to be
defined is 0 (and carries no gradient).
"""

from __future__ import annotations

from itertools import combinations, permutations
from typing import Callable, Mapping

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from dsrsd_cli.config import LossConfig

AUX_LOSSES = ("infonce", "regression", "decorrelation", "orthogonality")


def _float32(loss):
    """Run `loss` with autocast off on the device of its first tensor argument."""
    @functools.wraps(loss)
    def run(first, *args, **kwargs):
        like = first if isinstance(first, Tensor) else next(iter(first.values()))
        with torch.autocast(like.device.type, enabled=False):
            return loss(first, *args, **kwargs)
    return run


def _zero(like: Tensor) -> Tensor:
    return like.new_zeros((), dtype=torch.float32)


def _mean(terms: list[Tensor], like: Tensor) -> Tensor:
    return torch.stack(terms).mean() if terms else _zero(like)


# exp(-80) is still a normal float32: a similarity shifted down by its bound 1/tau never
# underflows to 0 while 2/tau stays below this.
_MAX_SHIFTED_RANGE = 80.0


@_float32
def info_nce(z: Mapping[str, Tensor], present: Mapping[str, Tensor], tau: float, group: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between every pair of modalities (mean over pairs).

    z: modality -> (N, k); present: modality -> (N,) bool. For a pair (a, b), only rows
    where both are present count; row i of a and row i of b are the positive pair, the
    other rows are negatives. Cosine similarity / tau; the loss of a pair is the mean of
    the a->b and b->a cross-entropies.

    group (N,) int, optional: rows of one group (EdNet: one learner) are not negatives of
    each other. Another step of the same learner shares that learner's history, and a step
    of the same bundle shares its behaviour: they are false negatives, which would push the
    shared streams to forget the learner instead of aligning on it.
    """
    terms = []
    for a, b in combinations(sorted(z), 2):
        rows = (present[a] & present[b]).nonzero().squeeze(1)
        if rows.numel() < 2:
            continue
        za = F.normalize(z[a].index_select(0, rows).float(), dim=-1)      # (n, k)
        zb = F.normalize(z[b].index_select(0, rows).float(), dim=-1)
        exclude = None if group is None else same_group(group.index_select(0, rows))
        terms.append(_symmetric_cross_entropy(za, zb, tau, exclude))
    return _mean(terms, next(iter(z.values())))


def same_group(group: Tensor, other: Tensor | None = None) -> Tensor:
    """(n, n) bool: [i, j] True where row i (of `group`) and row j (of `other`, default
    `group`) share a group and i != j: the pairs InfoNCE leaves out."""
    other = group if other is None else other
    eye = torch.eye(group.shape[0], dtype=torch.bool, device=group.device)
    return (group.unsqueeze(1) == other.unsqueeze(0)) & ~eye


def _symmetric_cross_entropy(za: Tensor, zb: Tensor, tau: float, exclude: Tensor | None = None) -> Tensor:
    """0.5 (CE over rows + CE over columns) of the logits za @ zb.T / tau, targets on the
    diagonal; za, zb (n, k) unit rows; `exclude` (n, n) bool: off-diagonal pairs left out.

    The logits are bounded by 1/tau, so one exp of the logits shifted by that bound gives
    both the row and the column sums (log-sum-exp without a per-row maximum): a single
    pass over the n x n matrix where cross_entropy would take four. For a tau so small
    that the shifted exp could underflow, the two cross-entropies are taken as usual.
    """
    positives = (za * zb).sum(-1) / tau                                  # (n,) the diagonal
    if 2.0 / tau > _MAX_SHIFTED_RANGE:
        target = torch.arange(za.shape[0], device=za.device)
        logits = za @ zb.T / tau
        if exclude is not None:
            logits = logits.masked_fill(exclude, float("-inf"))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    shifted = torch.addmm(za.new_tensor(-1.0 / tau), za, zb.T, alpha=1.0 / tau).exp()   # (n, n) in (0, 1]
    if exclude is not None:
        shifted = shifted.masked_fill(exclude, 0.0)
    log_sums = 0.5 * (shifted.sum(1).log().mean() + shifted.sum(0).log().mean())
    return log_sums + 1.0 / tau - positives.mean()


@_float32
def regression_alignment(
    z: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    predictors: Mapping[tuple[str, str], Callable[[Tensor], Tensor]],
) -> Tensor:
    """Mean over ordered pairs (a, b) of ||n(P_ab(z_a)) - n(sg(z_b))||^2 (= 2 - 2 cos).

    predictors[(a, b)] maps z_a (n, k) -> (n, k); the target z_b is not differentiated
    (stop-gradient, as in BYOL), n() is L2 normalisation. Rows where both are present.
    """
    terms = []
    for a, b in permutations(sorted(z), 2):
        rows = present[a] & present[b]
        if not bool(rows.any()):
            continue
        predicted = F.normalize(predictors[(a, b)](z[a][rows].float()), dim=-1)   # (n, k)
        target = F.normalize(z[b][rows].detach().float(), dim=-1)
        terms.append((predicted - target).pow(2).sum(-1).mean())
    return _mean(terms, next(iter(z.values())))


@_float32
def decorrelation(z: Tensor, mask: Tensor) -> Tensor:
    """VICReg covariance + variance terms of z (N, k) over the rows where mask (N,) is True.

    sum of squared off-diagonal covariances of the centred z / k, plus the mean of
    relu(1 - std) per dimension (the hinge that keeps the space from collapsing).
    """
    x = z[mask].float()                                   # (n, k)
    n, k = x.shape
    if n < 2:
        return _zero(z)
    x = x - x.mean(0)
    cov = x.T @ x / (n - 1)                               # (k, k)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    std = torch.sqrt(torch.diagonal(cov) + 1e-4)
    return off_diagonal.pow(2).sum() / k + F.relu(1.0 - std).mean()


@_float32
def orthogonality(s: Tensor, p: Tensor, mask: Tensor) -> Tensor:
    """MISA's DiffLoss: mean squared entry of the cross-correlation of s and p.

    s (N, d1), p (N, d2): rows where mask (N,) is True are centred over the batch, then
    each row is L2-normalised; loss = mean((s^T p)^2) over the (d1, d2) entries.
    """
    s, p = s[mask].float(), p[mask].float()
    if s.shape[0] < 2:
        return _zero(s)
    s = F.normalize(s - s.mean(0), dim=-1, eps=1e-6)
    p = F.normalize(p - p.mean(0), dim=-1, eps=1e-6)
    return (s.T @ p).pow(2).mean()


def task_loss(logits: Tensor, target: Tensor, mask: Tensor, n_outputs: int) -> Tensor:
    """Mean loss over the scored positions (mask True).

    n_outputs == 1: BCE-with-logits; logits like target ((B, T) or (B,)), target 0/1.
    n_outputs > 1: cross-entropy; logits (…, C), target class indices (…).
    """
    logits, target = logits[mask].float(), target[mask]
    if logits.shape[0] == 0:
        return logits.sum()                               # 0, still attached to the graph
    if n_outputs == 1:
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target.long())


def combine(task: Tensor, aux_losses: Mapping[str, Tensor], loss_cfg: LossConfig) -> tuple[Tensor, dict[str, float]]:
    """total = task + λ_align (infonce + μ regression) + λ_dec decorrelation + λ_orth orthogonality.

    aux_losses: the model's aux["losses"] (unweighted; baselines give none); loss_cfg: the
    run's `loss` section (the weights; read nowhere else). Returns the total and its
    unweighted parts as floats (for logs), with "task" and "total".
    """
    unknown = set(aux_losses) - set(AUX_LOSSES)
    if unknown:
        raise ValueError(f"unknown auxiliary losses {sorted(unknown)}; expected some of {AUX_LOSSES}")
    zero = _zero(task)
    get = lambda name: aux_losses.get(name, zero)  # noqa: E731
    total = (
        task
        + loss_cfg.lambda_align * (get("infonce") + loss_cfg.mu_reg * get("regression"))
        + loss_cfg.lambda_dec * get("decorrelation")
        + loss_cfg.lambda_orth * get("orthogonality")
    )
    parts = {"task": float(task.detach())}
    parts.update({name: float(value.detach()) for name, value in aux_losses.items()})
    parts["total"] = float(total.detach())
    return total, parts
