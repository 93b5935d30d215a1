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
    unit = {m: F.normalize(x.float(), dim=-1) for m, x in z.items()}    # row-wise: absent rows touch no other row
    n_all = next(iter(z.values())).shape[0]
    exclude_all = None                                                 # same_group over all N rows, built once
    terms = []
    for a, b in combinations(sorted(z), 2):
        rows = (present[a] & present[b]).nonzero().squeeze(1)
        if rows.numel() < 2:
            continue
        exclude = None
        if group is not None and rows.numel() == n_all:
            exclude_all = same_group(group) if exclude_all is None else exclude_all
            exclude = exclude_all
        elif group is not None:
            exclude = same_group(group.index_select(0, rows))
        za, zb = unit[a].index_select(0, rows), unit[b].index_select(0, rows)        # (n, k)
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
    both the row and the column sums (log-sum-exp without a per-row maximum): see
    _ShiftedLogSumExps. For a tau so small that the shifted exp could underflow, the two
    cross-entropies are taken as usual.
    """
    positives = (za * zb).sum(-1) / tau                                  # (n,) the diagonal
    if 2.0 / tau > _MAX_SHIFTED_RANGE:
        target = torch.arange(za.shape[0], device=za.device)
        logits = za @ zb.T / tau
        if exclude is not None:
            logits = logits.masked_fill(exclude, float("-inf"))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return _ShiftedLogSumExps.apply(za, zb, tau, exclude) + 1.0 / tau - positives.mean()


class _ShiftedLogSumExps(torch.autograd.Function):
    """0.5 (mean_i log r_i + mean_j log c_j): r and c are the row and column sums of
    e = exp((za @ zb.T - 1) / tau), with e = 0 where `exclude`.

    Written out because autograd would keep and walk several (n, n) intermediates; this
    keeps e alone and its backward is one (n, n) pass and two matmuls: d/de_ij =
    (1/r_i + 1/c_j) / 2n, de/dlogit = e, dlogit/dza_i = zb_j / tau. It is most of the
    auxiliary losses' cost at N = 1024 rows.
    """

    @staticmethod
    def forward(ctx, za: Tensor, zb: Tensor, tau: float, exclude: Tensor | None) -> Tensor:
        e = torch.addmm(za.new_tensor(-1.0 / tau), za, zb.T, alpha=1.0 / tau).exp_()   # (n, n) in (0, 1]
        if exclude is not None:
            e.masked_fill_(exclude, 0.0)
        r, c = e.sum(1), e.sum(0)                                                         # (n,) x2
        ctx.save_for_backward(za, zb, e, r, c)
        ctx.tau = tau
        return 0.5 * (r.log().mean() + c.log().mean())

    @staticmethod
    def backward(ctx, grad: Tensor):
        za, zb, e, r, c = ctx.saved_tensors
        scale = grad * 0.5 / (za.shape[0] * ctx.tau)
        weight = ((scale / r).unsqueeze(1) + (scale / c).unsqueeze(0)).mul_(e)             # (n, n)
        return weight @ zb, weight.T @ za, None, None


def _rows(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """x (..., N, d) float32 with the rows where mask (..., N) is False set to 0 (whatever
    they held, NaN included: they reach neither the loss nor a gradient), and the count
    of kept rows (..., 1, 1). Masking instead of indexing keeps a stack of modalities in
    one batched computation and avoids the slow backward of boolean indexing."""
    return torch.where(mask.unsqueeze(-1), x.float(), 0.0), mask.sum(-1).float()[..., None, None]


def _centred(x: Tensor, mask: Tensor, n: Tensor) -> Tensor:
    """The kept rows of x (from _rows) minus their mean; the other rows stay 0."""
    return torch.where(mask.unsqueeze(-1), x - x.sum(-2, keepdim=True) / n.clamp(min=1), 0.0)


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
    target = {m: F.normalize(_rows(x.detach(), present[m])[0], dim=-1) for m, x in z.items()}   # (N, k) each
    terms = []
    for a, b in permutations(sorted(z), 2):
        rows = present[a] & present[b]                                     # (N,)
        if not bool(rows.any()):
            continue
        source, n = _rows(z[a], rows)                                      # (N, k), (1, 1)
        miss = (F.normalize(predictors[(a, b)](source), dim=-1) - target[b]).pow(2).sum(-1)   # (N,)
        terms.append(torch.where(rows, miss, 0.0).sum() / n.view(()))
    return _mean(terms, next(iter(z.values())))


@_float32
def decorrelation(z: Tensor, mask: Tensor) -> Tensor:
    """VICReg covariance + variance terms of z (..., N, k) over the rows where mask
    (..., N) is True -> (...): one value per stack (e.g. per modality).

    sum of squared off-diagonal covariances of the centred z / k, plus the mean of
    relu(1 - std) per dimension (the hinge that keeps the space from collapsing).
    """
    x, n = _rows(z, mask)                                                   # (..., N, k), (..., 1, 1)
    k = x.shape[-1]
    x = _centred(x, mask, n)
    cov = x.transpose(-1, -2) @ x / (n - 1).clamp(min=1)                    # (..., k, k)
    variance = torch.diagonal(cov, dim1=-2, dim2=-1)                        # (..., k)
    off_diagonal = cov.masked_fill(torch.eye(k, dtype=torch.bool, device=cov.device), 0.0)
    std = torch.sqrt(variance + 1e-4)
    loss = off_diagonal.pow(2).sum((-2, -1)) / k + F.relu(1.0 - std).mean(-1)
    return torch.where(n.view(loss.shape) < 2, 0.0, loss)


@_float32
def orthogonality(s: Tensor, p: Tensor, mask: Tensor) -> Tensor:
    """MISA's DiffLoss: mean squared entry of the cross-correlation of s and p.

    s (..., N, d1), p (..., N, d2): rows where mask (..., N) is True are centred over the
    batch, then each row is L2-normalised; loss = mean((s^T p)^2) over the (d1, d2)
    entries -> (...): one value per stack.
    """
    (s, n), (p, _) = _rows(s, mask), _rows(p, mask)
    s = F.normalize(_centred(s, mask, n), dim=-1, eps=1e-6)
    p = F.normalize(_centred(p, mask, n), dim=-1, eps=1e-6)
    loss = (s.transpose(-1, -2) @ p).pow(2).mean((-2, -1))
    return torch.where(n.view(loss.shape) < 2, 0.0, loss)


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
