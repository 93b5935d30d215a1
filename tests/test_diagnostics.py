"""Mechanism diagnostics (dsrsd_cli/model/diagnostics.py): each number against a case whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from dsrsd_cli.model.diagnostics import (
    MechanismProbe, abs_cosine_chance, alignment, effective_rank, gate_stats, meaning, shared_health, shared_private_cosine,
)

N, K = 256, 16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _all(n: int = N) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


# ---------------------------------------------------------------- alignment


def test_perfectly_aligned_views_retrieve_themselves_and_beat_chance():
    z = torch.randn(N, K, generator=_gen(0))
    a = alignment({"a": z, "b": z.clone()}, {"a": _all(), "b": _all()}, tau=0.1)
    assert a["retrieval_top1"] == 1.0
    assert a["infonce_chance"] == pytest.approx(math.log(N)) and a["retrieval_chance"] == pytest.approx(1 / N)
    assert a["infonce"] < 0.2 * math.log(N), a
    assert a["infonce_shuffled"] > math.log(N), a              # the same embeddings, pairing broken: no better than chance
    assert a["rows"] == N and a["pairs"] == 1


def test_independent_views_sit_at_chance():
    g = _gen(1)
    z = {m: torch.randn(N, K, generator=g) for m in "abc"}
    a = alignment(z, {m: _all() for m in "abc"}, tau=0.1)
    assert a["pairs"] == 3
    assert a["retrieval_top1"] < 5 / N, a                    # chance is 1/N; perfect would be 1
    # Unaligned, InfoNCE is at least about ln N (Jensen: E softmax_ii = 1/N); at tau 0.1 in k = 16 the
    # similarities spread over +-1/tau, which lifts it to about ln N + 1/(2 tau^2 k): the shuffled reference
    assert a["infonce"] > 0.95 * math.log(N), a
    assert a["infonce_shuffled"] == pytest.approx(a["infonce"], rel=0.1), a
    warm = alignment(z, {m: _all() for m in "abc"}, tau=1.0)
    assert warm["infonce"] == pytest.approx(math.log(N), rel=0.02), warm


def test_alignment_is_cosine_based_so_scaling_a_view_changes_nothing():
    z = torch.randn(N, K, generator=_gen(2))
    base = alignment({"a": z, "b": z}, {"a": _all(), "b": _all()}, tau=0.1)
    scaled = alignment({"a": z, "b": 3.0 * z}, {"a": _all(), "b": _all()}, tau=0.1)
    assert scaled["retrieval_top1"] == base["retrieval_top1"] and scaled["infonce"] == pytest.approx(base["infonce"], rel=1e-5)


# ---------------------------------------------------------------- the shared space


def test_effective_rank_of_a_rank_two_space_is_two_and_of_an_isotropic_one_near_k():
    g = _gen(3)
    low = torch.randn(2048, 2, generator=g) @ torch.randn(2, K, generator=g)
    full = torch.randn(2048, K, generator=g)
    health_low = shared_health({"a": low}, {"a": _all(2048)})
    health_full = shared_health({"a": full}, {"a": _all(2048)})
    assert 1.0 < health_low["effective_rank"] <= 2.0 + 1e-3, health_low
    assert health_full["effective_rank"] > 0.9 * K, health_full
    assert health_full["rank_max"] == K == health_low["rank_max"]
    assert health_full["mean_abs_offdiag_corr"] < 0.05 and health_low["mean_abs_offdiag_corr"] > 0.3
    assert health_full["std_mean"] == pytest.approx(1.0, abs=0.05) and health_full["std_min"] > 0.9
    # an exactly equal split of two directions has effective rank exactly 2
    two = torch.zeros(4, K)
    two[0, 0], two[1, 0], two[2, 1], two[3, 1] = 1, -1, 1, -1
    assert effective_rank(two) == pytest.approx(2.0)


def test_a_collapsed_space_reads_as_collapsed():
    same = torch.randn(1, K, generator=_gen(4)).expand(100, K)
    h = shared_health({"a": same}, {"a": _all(100)})
    assert h["effective_rank"] == 0.0 and h["std_mean"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(h["mean_abs_offdiag_corr"])            # no dimension varies: no correlation to speak of


def test_health_means_over_modalities():
    g = _gen(5)
    low = torch.randn(512, 1, generator=g) @ torch.randn(1, K, generator=g)
    full = torch.randn(512, K, generator=g)
    both = shared_health({"a": low, "b": full}, {"a": _all(512), "b": _all(512)})
    each = [shared_health({"x": x}, {"x": _all(512)})["effective_rank"] for x in (low, full)]
    assert both["effective_rank"] == pytest.approx(sum(each) / 2)


# ---------------------------------------------------------------- shared vs private


def test_identical_shared_and_private_give_cosine_one_and_opposite_minus_one():
    z = {m: torch.randn(N, K, generator=_gen(6 + i)) for i, m in enumerate("ab")}
    present = {m: _all() for m in "ab"}
    assert shared_private_cosine(z, {m: v.clone() for m, v in z.items()}, present) == pytest.approx(1.0)
    assert shared_private_cosine(z, {m: -v for m, v in z.items()}, present) == pytest.approx(-1.0)
    assert shared_private_cosine(z, {m: -v for m, v in z.items()}, present, absolute=True) == pytest.approx(1.0)


def test_independent_shared_and_private_sit_at_the_random_cosine():
    g = _gen(8)
    z, q = {"a": torch.randn(4096, K, generator=g)}, {"a": torch.randn(4096, K, generator=g)}
    assert abs(shared_private_cosine(z, q, {"a": _all(4096)})) < 0.02
    assert shared_private_cosine(z, q, {"a": _all(4096)}, absolute=True) == pytest.approx(abs_cosine_chance(K), abs=0.02)
    assert abs_cosine_chance(2) == pytest.approx(2 / math.pi)


# ---------------------------------------------------------------- gates


def test_one_hot_gates_have_zero_entropy_and_uniform_ones_ln_g():
    names = ["consensus", "a", "b", "c"]
    one_hot = torch.zeros(50, 4)
    one_hot[:, 1] = 1
    s = gate_stats(one_hot, names)
    assert s["entropy"] == 0.0 and s["dominant"] == "a" and s["dominant_index"] == 1 and s["dominant_share"] == 1.0
    assert s["entropy_max"] == pytest.approx(math.log(4)) and s["mean_b"] == 0.0 and s["units"] == 50
    u = gate_stats(torch.full((50, 4), 0.25), names)
    assert u["entropy"] == pytest.approx(math.log(4)) and u["dominant_share"] == pytest.approx(0.25)
    assert sum(u[f"mean_{n}"] for n in names) == pytest.approx(1.0)


def test_gates_with_a_closed_stream_and_no_units():
    names = ["consensus", "a", "b"]
    half = torch.tensor([[0.5, 0.5, 0.0]] * 10)                # b closed (absent): weight exactly 0
    assert gate_stats(half, names)["entropy"] == pytest.approx(math.log(2))
    empty = gate_stats(torch.zeros(0, 3), names)
    assert math.isnan(empty["entropy"]) and math.isnan(empty["dominant_share"]) and empty["units"] == 0
    with pytest.raises(ValueError):
        gate_stats(half, ["only", "two"])


# ---------------------------------------------------------------- absent rows and degenerate input


def _views(seed: int, n: int = 64):
    g = _gen(seed)
    z = {m: torch.randn(n, K, generator=g) for m in "abc"}
    q = {m: torch.randn(n, K, generator=g) for m in "abc"}
    present = {m: torch.rand(n, generator=g) > 0.3 for m in "abc"}
    return z, q, present


def _poisoned(x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for m, v in x.items():
        v = v.clone()
        v[~present[m]] = float("nan")
        v[~present[m] & (torch.arange(len(v)) % 2 == 0)] = 1e30
        out[m] = v
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


def test_absent_rows_never_enter_anything():
    z, q, present = _views(9)
    zp, qp = _poisoned(z, present), _poisoned(q, present)
    assert _same(alignment(z, present, 0.1), alignment(zp, present, 0.1))
    assert _same(shared_health(z, present), shared_health(zp, present))
    assert shared_private_cosine(z, q, present) == shared_private_cosine(zp, qp, present)
    clean, dirty = MechanismProbe(tau=0.1), MechanismProbe(tau=0.1)
    clean.add({"shared": z, "private": q, "aux_present": present})
    dirty.add({"shared": zp, "private": qp, "aux_present": present})
    r = dirty.result()
    assert _same(clean.result(), r) and all(not isinstance(v, float) or math.isfinite(v) for v in r.values())
    # and they do count when present: the same garbage in a present row changes the result
    present_all = {m: torch.ones_like(p) for m, p in present.items()}
    assert not _same(alignment(z, present_all, 0.1), alignment(z, present, 0.1))


def test_degenerate_input_gives_nan_not_a_crash():
    z = {"a": torch.randn(1, K), "b": torch.randn(1, K)}
    present = {"a": _all(1), "b": _all(1)}
    a = alignment(z, present, 0.1)
    assert math.isnan(a["infonce"]) and math.isnan(a["retrieval_top1"]) and a["pairs"] == 0
    h = shared_health(z, present)
    assert math.isnan(h["effective_rank"]) and math.isnan(h["std_min"])
    none = {"a": torch.zeros(5, dtype=torch.bool), "b": torch.zeros(5, dtype=torch.bool)}
    assert math.isnan(shared_private_cosine({"a": torch.randn(5, K)}, {"a": torch.randn(5, K)}, none))
    assert math.isnan(alignment({"a": torch.randn(5, K), "b": torch.randn(5, K)}, none, 0.1)["infonce"])
    probe = MechanismProbe(tau=0.1)
    probe.add({"shared": z, "private": z, "aux_present": present, "gates": torch.ones(1, 1), "gate_names": ["consensus"]})
    assert math.isnan(probe.result()["align_infonce"]) and probe.result()["gate_entropy"] == 0.0


# ---------------------------------------------------------------- the probe


def _aux(z, q, present, gates=None):
    aux = {"losses": {}, "shared": z, "private": q, "aux_present": present}
    if gates is not None:
        aux.update(gates=gates, gate_names=["consensus", "a", "b", "c"])
    return aux


def test_probe_pools_batches_like_one_batch_under_max_rows():
    z, q, present = _views(10, n=100)
    gates = torch.softmax(torch.randn(300, 4, generator=_gen(11)), -1)
    one = MechanismProbe(tau=0.1)
    one.add(_aux(z, q, present, gates))
    two = MechanismProbe(tau=0.1)
    cut = lambda d, s: {m: v[s] for m, v in d.items()}  # noqa: E731
    two.add(_aux(cut(z, slice(0, 37)), cut(q, slice(0, 37)), cut(present, slice(0, 37)), gates[:120]))
    two.add(_aux(cut(z, slice(37, None)), cut(q, slice(37, None)), cut(present, slice(37, None)), gates[120:]))
    a, b = one.result(), two.result()
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith("gate_") and isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-12), key      # running sums: another summation order
        else:
            assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), key
    for prefix in ("align_", "shared_", "sp_", "gate_"):
        assert any(key.startswith(prefix) for key in a), prefix
    assert a["align_rows"] < 100 and a["shared_rank_max"] == K and a["gate_units"] == 300


def test_probe_keeps_max_rows_evenly_spaced_deterministic_rows():
    g = _gen(12)
    chunks = [torch.randn(700, K, generator=g) for _ in range(9)]       # 6300 rows, max 512
    def run():
        probe = MechanismProbe(tau=0.1, max_rows=512)
        for c in chunks:
            probe.add(_aux({"a": c, "b": c}, {"a": c, "b": c}, {"a": _all(700), "b": _all(700)}))
        return probe.result()
    r = run()
    assert r["align_rows"] == 512 and r["shared_rows"] == 512 and r["align_top1"] == 1.0
    assert r["align_infonce_chance"] == pytest.approx(math.log(512)) and r["sp_cosine"] == pytest.approx(1.0)
    assert _same(r, run())


def test_probe_without_the_keys_is_empty_and_gates_alone_give_gate_keys():
    probe = MechanismProbe(tau=0.1)
    assert probe.result() == {}
    probe.add({"losses": {}})
    assert probe.result() == {}
    probe.add({"losses": {}, "gates": torch.full((6, 2), 0.5), "gate_names": ["item", "content"]})   # late fusion
    r = probe.result()
    assert set(r) == {"gate_entropy", "gate_entropy_max", "gate_dominant", "gate_dominant_index", "gate_dominant_share",
                      "gate_units", "gate_mean_item", "gate_mean_content"}
    assert r["gate_entropy"] == pytest.approx(math.log(2))


def test_every_key_has_a_meaning():
    z, q, present = _views(13)
    probe = MechanismProbe(tau=0.1)
    probe.add(_aux(z, q, present, torch.full((5, 4), 0.25)))
    assert all(meaning(key) for key in probe.result())


def test_the_probe_reads_a_real_dsrsd_fusion_forward():
    from dsrsd_cli.model.fusion import DSRSDFusion
    from dsrsd_cli.model.encoders import Encoded
    from dsrsd_cli.types import Batch

    torch.manual_seed(0)
    mods = ("a", "b")
    fusion = DSRSDFusion(modalities=mods, d=8, k=4, n_outputs=1, dropout=0.0, aux_rows=16, tau=0.1, orth_private_pairs=False).eval()
    B = 40
    h = {m: torch.randn(B, 8) for m in mods}
    encoded = {m: Encoded(h=h[m], tokens=h[m].unsqueeze(1), token_mask=torch.ones(B, 1, dtype=torch.bool)) for m in mods}
    present = {"a": torch.ones(B, dtype=torch.bool), "b": torch.arange(B) % 3 != 0}
    batch = Batch(inputs={}, present=present, target=torch.zeros(B), mask=torch.ones(B, dtype=torch.bool),
                  valid=torch.ones(B, dtype=torch.bool), keys={})
    with torch.no_grad():
        out = fusion(encoded, present, batch)
    probe = MechanismProbe(tau=0.1)
    probe.add(out.aux)
    r = probe.result()
    assert r["align_rows"] < 16 and r["shared_rank_max"] == 4 and r["gate_units"] == B
    assert r["gate_entropy"] <= r["gate_entropy_max"] + 1e-9
    assert sum(r[f"gate_mean_{n}"] for n in ("consensus", "a", "b")) == pytest.approx(1.0)


def test_alignment_with_learner_groups_counts_only_other_learners_as_candidates():
    g = _gen(21)
    learner = torch.randn(8, K, generator=g)
    group = torch.arange(N) // (N // 8)                                  # 8 learners, contiguous as in a batch
    # both views = the learner's vector + small step noise: only the learner is shared
    za = learner[group] + 0.05 * torch.randn(N, K, generator=g)
    zb = learner[group] + 0.05 * torch.randn(N, K, generator=g)
    z, present = {"a": za, "b": zb}, {"a": _all(), "b": _all()}
    plain, grouped = alignment(z, present, 0.1), alignment(z, present, 0.1, group)
    # counting same-learner steps as negatives, the views look barely aligned; without them, fully
    assert plain["infonce"] > 0.5 * plain["infonce_chance"]
    assert grouped["infonce"] < 0.1 * grouped["infonce_chance"] and grouped["retrieval_top1"] == 1.0
    # chance: ln of the candidates (the partner + the other learners' rows)
    assert grouped["infonce_chance"] == pytest.approx(math.log(N - N // 8 + 1))
    assert grouped["retrieval_chance"] == pytest.approx(1 / (N - N // 8 + 1))
    assert grouped["infonce_shuffled"] > grouped["infonce_chance"]

    probe = MechanismProbe(tau=0.1)                                     # the probe carries the groups through
    probe.add({"losses": {}, "shared": z, "private": z, "aux_present": present, "aux_group": group})
    result = probe.result()
    assert result["align_infonce"] == pytest.approx(grouped["infonce"]) and result["align_top1"] == 1.0
