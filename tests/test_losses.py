"""Each loss's defining property on constructed inputs, and that masked rows never count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import hadamard

from dsrsd_cli.config import LossConfig
from dsrsd_cli.model.losses import combine, decorrelation, info_nce, orthogonality, regression_alignment, task_loss

N, D = 64, 16


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def orthogonal_streams() -> tuple[torch.Tensor, torch.Tensor]:
    """s, p (N, D) whose centred columns span orthogonal subspaces of R^N and whose rows
    all have the same norm, so centring and row normalisation keep them orthogonal:
    columns 1.. of a Hadamard matrix (orthogonal, orthogonal to the ones vector, entries
    ±1) rotated by random orthogonal D x D matrices."""
    H = torch.tensor(hadamard(N), dtype=torch.float64)
    s = H[:, 1:1 + D] @ random_orthogonal(D, 0)
    p = H[:, 1 + D:1 + 2 * D] @ random_orthogonal(D, 1)
    return s, p


def with_garbage(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x with huge random values written into `rows` (the masked-out ones)."""
    x = x.clone()
    x[rows] = torch.randn_like(x[rows]) * 1e4
    return x


def test_orthogonality_zero_for_orthogonal_streams_and_positive_for_correlated():
    s, p = orthogonal_streams()
    rows = torch.ones(N, dtype=torch.bool)
    assert float(orthogonality(s, p, rows)) < 1e-10
    noisy = s + 0.1 * torch.randn(N, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert float(orthogonality(s, noisy, rows)) > 0.5
    # it measures correlation, not scale
    scaled = orthogonality(s, 100 * noisy, rows)
    assert torch.allclose(scaled, orthogonality(s, noisy, rows), rtol=1e-5)


def test_decorrelation_zero_for_whitened_and_positive_for_correlated_or_collapsed():
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x - x.mean(0)
    cov = x.T @ x / (x.shape[0] - 1)
    eigenvalues, vectors = torch.linalg.eigh(cov)
    whitened = x @ vectors @ torch.diag(eigenvalues.rsqrt()) @ vectors.T              # ZCA: covariance = I
    assert torch.allclose(whitened.std(0), torch.ones(D, dtype=torch.float64))
    rows = torch.ones(256, dtype=torch.bool)
    assert float(decorrelation(whitened, rows)) < 1e-8

    correlated = torch.cat([whitened[:, : D // 2]] * 2, dim=1)                        # duplicated dimensions
    assert float(decorrelation(correlated, rows)) > 0.4

    collapsed = 1e-3 * whitened + 5.0                                                  # std 0.001 per dimension
    assert float(decorrelation(collapsed, rows)) == pytest.approx(1.0 - 1e-2, abs=0.01)   # the variance hinge


def test_info_nce_lower_for_aligned_than_shuffled_pairs_and_symmetric():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(N, D, generator=g)
    aligned = a + 0.1 * torch.randn(N, D, generator=g)
    shuffled = aligned[torch.randperm(N, generator=g)]
    rows = {"a": torch.ones(N, dtype=torch.bool), "b": torch.ones(N, dtype=torch.bool)}
    low = info_nce({"a": a, "b": aligned}, rows, tau=0.1)
    high = info_nce({"a": a, "b": shuffled}, rows, tau=0.1)
    assert float(low) < 0.1 < torch.log(torch.tensor(float(N))) < float(high)
    assert torch.allclose(info_nce({"a": aligned, "b": a}, rows, tau=0.1), low)


def test_regression_alignment_zero_when_predicted_and_stops_gradient_of_target():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(N, D, generator=g, requires_grad=True)
    b = (2.0 * a).detach().requires_grad_(True)                    # same directions
    rows = {"a": torch.ones(N, dtype=torch.bool), "b": torch.ones(N, dtype=torch.bool)}
    identity = {("a", "b"): lambda x: x, ("b", "a"): lambda x: x}
    loss = regression_alignment({"a": a, "b": b}, rows, identity)
    assert float(loss.detach()) < 1e-10
    flip = {("a", "b"): lambda x: -x, ("b", "a"): lambda x: x}
    loss = regression_alignment({"a": a, "b": b}, {"a": rows["a"], "b": rows["b"]}, flip)
    assert float(loss.detach()) == pytest.approx(2.0, abs=1e-5)            # (a->b) is 4 (opposite), (b->a) is 0
    loss.backward()
    # each direction's target is detached, so b gets gradient only as an input (b->a),
    # which is already perfect: zero; a gets the (a->b) gradient.
    assert float(a.grad.abs().sum()) > 0
    assert float(b.grad.abs().sum()) < 1e-6


def test_masked_rows_change_no_loss():
    g = torch.Generator().manual_seed(0)
    s, p = (x.float() for x in orthogonal_streams())
    z = {"a": torch.randn(N, D, generator=g), "b": torch.randn(N, D, generator=g), "c": torch.randn(N, D, generator=g)}
    here = {m: torch.rand(N, generator=g) < 0.7 for m in z}
    rows = here["a"]
    predictors = {(x, y): torch.nn.Linear(D, D) for x in z for y in z if x != y}

    garbage = {m: with_garbage(v, ~here[m]) for m, v in z.items()}
    assert torch.equal(info_nce(z, here, 0.1), info_nce(garbage, here, 0.1))
    assert torch.equal(regression_alignment(z, here, predictors), regression_alignment(garbage, here, predictors))
    assert torch.equal(decorrelation(z["a"], rows), decorrelation(garbage["a"], rows))
    assert torch.equal(orthogonality(s, p + s, rows), orthogonality(with_garbage(s, ~rows), with_garbage(p + s, ~rows), rows))

    logits, target = torch.randn(4, 10, generator=g), (torch.rand(4, 10, generator=g) < 0.5).float()
    mask = torch.rand(4, 10, generator=g) < 0.6
    assert torch.equal(task_loss(logits, target, mask, 1), task_loss(with_garbage(logits, ~mask), target, mask, 1))
    # ... and the value is the plain BCE over the scored positions
    assert torch.allclose(task_loss(logits, target, mask, 1), F.binary_cross_entropy_with_logits(logits[mask], target[mask]))


def test_absent_modality_pairs_are_skipped():
    g = torch.Generator().manual_seed(0)
    z = {"a": torch.randn(N, D, generator=g), "b": torch.randn(N, D, generator=g), "c": torch.randn(N, D, generator=g)}
    here = {"a": torch.ones(N, dtype=torch.bool), "b": torch.ones(N, dtype=torch.bool), "c": torch.zeros(N, dtype=torch.bool)}
    only_ab = info_nce({"a": z["a"], "b": z["b"]}, {"a": here["a"], "b": here["b"]}, 0.1)
    assert torch.equal(info_nce(z, here, 0.1), only_ab)
    assert float(decorrelation(z["c"], here["c"])) == 0.0          # no rows: defined as 0
    assert float(info_nce(z, {m: torch.zeros(N, dtype=torch.bool) for m in z}, 0.1)) == 0.0


def test_task_loss_multiclass_and_empty_mask():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 4, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (8,), generator=g)
    mask = torch.tensor([True, False] * 4)
    assert torch.allclose(task_loss(logits, target, mask, 4), F.cross_entropy(logits[mask], target[mask]))
    empty = task_loss(logits, target, torch.zeros(8, dtype=torch.bool), 4)
    assert float(empty.detach()) == 0.0
    empty.backward()                                                 # still part of the graph


def test_combine_weights_each_part():
    cfg = LossConfig(lambda_align=0.5, mu_reg=2.0, lambda_dec=0.25, lambda_orth=0.125)
    task = torch.tensor(1.0)
    aux = {"infonce": torch.tensor(2.0), "regression": torch.tensor(3.0),
           "decorrelation": torch.tensor(4.0), "orthogonality": torch.tensor(8.0)}
    total, parts = combine(task, aux, cfg)
    assert float(total) == pytest.approx(1.0 + 0.5 * (2.0 + 2.0 * 3.0) + 0.25 * 4.0 + 0.125 * 8.0)
    assert parts == {"task": 1.0, "infonce": 2.0, "regression": 3.0, "decorrelation": 4.0, "orthogonality": 8.0,
                     "total": float(total)}
    total, parts = combine(task, {}, cfg)                            # a baseline: task only
    assert float(total) == 1.0 and parts == {"task": 1.0, "total": 1.0}
    with pytest.raises(ValueError, match="unknown auxiliary"):
        combine(task, {"infonse": torch.tensor(1.0)}, cfg)


@pytest.mark.parametrize("tau", [0.5, 0.1, 0.01])          # 0.01: below the shifted-exp range, the plain path
def test_info_nce_is_the_mean_symmetric_cross_entropy_with_its_gradient(tau):
    g = torch.Generator().manual_seed(3)
    z = {m: torch.randn(N, D, generator=g, requires_grad=True) for m in "abc"}
    here = {m: torch.rand(N, generator=g) < 0.8 for m in "abc"}

    def reference():
        terms = []
        for a, b in [("a", "b"), ("a", "c"), ("b", "c")]:
            rows = here[a] & here[b]
            za, zb = F.normalize(z[a][rows], dim=-1), F.normalize(z[b][rows], dim=-1)
            logits, target = za @ zb.T / tau, torch.arange(int(rows.sum()))
            terms.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
        return torch.stack(terms).mean()

    fast, slow = info_nce(z, here, tau), reference()
    assert torch.allclose(fast, slow, rtol=1e-5)
    fast_grad = torch.autograd.grad(fast, list(z.values()))
    slow_grad = torch.autograd.grad(slow, list(z.values()))
    assert all(torch.allclose(f, s, rtol=1e-4, atol=1e-6) for f, s in zip(fast_grad, slow_grad))


@pytest.mark.parametrize("tau", [0.1, 0.01])
def test_info_nce_leaves_rows_of_the_same_learner_out_of_the_negatives(tau):
    g = torch.Generator().manual_seed(5)
    z = {m: torch.randn(N, D, generator=g, requires_grad=True) for m in "ab"}
    here = {m: torch.ones(N, dtype=torch.bool) for m in "ab"}
    group = torch.randint(0, 6, (N,), generator=g)

    za, zb = F.normalize(z["a"], dim=-1), F.normalize(z["b"], dim=-1)
    logits = (za @ zb.T / tau).masked_fill((group[:, None] == group[None, :]) & ~torch.eye(N, dtype=torch.bool), float("-inf"))
    target = torch.arange(N)
    reference = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert torch.allclose(info_nce(z, here, tau, group), reference, rtol=1e-5)
    fast_grad = torch.autograd.grad(info_nce(z, here, tau, group), list(z.values()))     # the written-out backward
    slow_grad = torch.autograd.grad(reference, list(z.values()))
    assert all(torch.allclose(f, s, rtol=1e-4, atol=1e-6) for f, s in zip(fast_grad, slow_grad))
    # one group per row is the plain InfoNCE; one group for all leaves only the positive: loss 0
    assert torch.allclose(info_nce(z, here, tau, torch.arange(N)), info_nce(z, here, tau), rtol=1e-6)
    assert float(info_nce(z, here, tau, torch.zeros(N, dtype=torch.long)).detach()) == pytest.approx(0.0, abs=1e-5)


def test_decorrelation_and_orthogonality_of_a_stack_are_each_members_value():
    g = torch.Generator().manual_seed(7)
    z, s, p = (torch.randn(3, N, D, generator=g) for _ in range(3))
    here = torch.rand(3, N, generator=g) < 0.7
    here[2, 1:] = False                                                   # one row only: defined as 0
    stacked_dec, stacked_orth = decorrelation(z, here), orthogonality(s, p, here)
    assert stacked_dec.shape == stacked_orth.shape == (3,)
    for m in range(3):
        assert torch.allclose(stacked_dec[m], decorrelation(z[m], here[m]), atol=1e-6)
        assert torch.allclose(stacked_orth[m], orthogonality(s[m], p[m], here[m]), atol=1e-6)
    assert float(stacked_dec[2]) == 0.0 and float(stacked_orth[2]) == 0.0
    # the values are those of the kept rows alone
    rows = here[0]
    assert torch.allclose(decorrelation(z[0], rows), decorrelation(z[0][rows], torch.ones(int(rows.sum()), dtype=torch.bool)), atol=1e-6)
