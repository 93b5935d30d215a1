"""Mechanism diagnostics: does DSRSD-Net's machinery do what the paper says it does?

Pure functions on the tensors an evaluation forward returns in ModelOutput.aux
(fusion.DSRSDFusion: "shared" z_m, "private" q_m, "aux_present", "gates", "gate_names"),
plus `MechanismProbe`, which pools them over a split. Rows where a modality is absent never
enter anything (NaN there changes nothing); a statistic with fewer than 2 rows is NaN.
Each number below, with the reference it should be read against (MechanismProbe keys):

align_infonce          symmetric InfoNCE between the modalities' shared embeddings (mean over pairs).
  align_infonce_chance   reference ln N; without alignment the expected InfoNCE is >= ln N (Jensen), 0 = perfect.
  align_infonce_shuffled   the same rows with the pairing broken: chance for these embeddings (above ln N when
                         similarities spread: about ln N + 1/(2 tau^2 k) for random ones), so compare with both.
align_top1             share of units whose most cosine-similar unit in the other modality is itself.
  align_top1_chance      reference 1/N (random); 1 = perfect cross-modal retrieval (both directions).
  EdNet: a unit's candidates are its partner and the units of OTHER learners (fusion's
  "aux_group", as in the training loss), so N above is the mean number of candidates.
shared_effective_rank  exp(entropy of the normalised singular values) of the centred shared space (Roy & Vetterli 2007).
  shared_rank_max        reference k: near k = the space is used evenly; near 1 = collapsed to a line.
shared_mean_abs_offdiag_corr  mean |correlation| between different shared dimensions.
                       0 = decorrelated (what the VICReg covariance term asks); near 1 = redundant dimensions.
shared_std_mean / shared_std_min  per-dimension std over units (mean / min over the k dimensions).
                       1 = the LayerNorm bound and the VICReg hinge target; near 0 = dimension collapsed.
sp_cosine / sp_abs_cosine  cos(z_m, q_m) of a unit's shared and private embedding (signed / absolute mean).
  sp_abs_cosine_chance   reference E|cos| of random directions in k dims (~ sqrt(2/(pi k))); 1 = private duplicates shared.
gate_entropy           mean per-unit entropy of the gate weights (nats), each unit's weights taken
                       as shares of their sum (softmax gates are; sigmoid gates, dsrsd.gate, are not).
  gate_entropy_max       reference ln G: uniform weights (no gating); 0 = every unit picks one stream.
gate_dominant / gate_dominant_share  the stream with the largest mean weight, and that weight.
  (gate_mean_<stream>)   reference 1/G each; share 1 = one stream does everything, the others are unused.

The embeddings come from the sampled rows of each batch (fusion's aux_rows, evenly spaced in
evaluation); the probe pools them and keeps at most `max_rows` evenly spaced ones, so N (and
the InfoNCE / top-1 references) does not depend on the batch size. Gate statistics use every
unit given (exact running sums). Every mean over modalities or pairs skips NaN members.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from dsrsd_cli.model import losses

NAN = float("nan")
_GROUP = "\0group"   # MechanismProbe's key for aux["aux_group"] among the pooled per-row tensors

# Per key of MechanismProbe.result(): one line on what it is and what to read it against.
MEANINGS: dict[str, str] = {
    "align_infonce": "symmetric InfoNCE between modalities' shared embeddings (mean over pairs); lower = better aligned",
    "align_infonce_chance": "ln N (mean over pairs): the InfoNCE of equal similarities, and a lower bound on its expected value without alignment; below it = aligned",
    "align_infonce_shuffled": "InfoNCE of the same embeddings with the pairing broken (rows shifted by N/2): chance for this geometry, >= ln N",
    "align_top1": "share of units whose nearest (cosine) unit in the other modality is itself; both directions, mean over pairs",
    "align_top1_chance": "top-1 retrieval by chance: mean 1/N over pairs",
    "align_rows": "N: rows with both modalities present, mean over pairs",
    "align_pairs": "modality pairs with at least 2 such rows",
    "align_tau": "InfoNCE temperature (the run's dsrsd.tau)",
    "shared_effective_rank": "effective rank (Roy & Vetterli) of the centred shared space, mean over modalities; near shared_rank_max = used evenly, near 1 = collapsed",
    "shared_rank_max": "k, the shared dimension (largest possible effective rank, when N > k)",
    "shared_mean_abs_offdiag_corr": "mean |correlation| between distinct shared dimensions; 0 = decorrelated (VICReg covariance term)",
    "shared_std_mean": "per-dimension std of the shared embeddings, mean over dimensions; 1 = LayerNorm bound / VICReg target, 0 = collapsed",
    "shared_std_min": "per-dimension std, smallest dimension (mean over modalities); near 0 = some dimension collapsed",
    "shared_rows": "rows used per modality (present), mean over modalities",
    "sp_cosine": "mean signed cos(shared z_m, private q_m) per unit; 0 = unrelated directions",
    "sp_abs_cosine": "mean |cos(z_m, q_m)|; 1 = the private stream duplicates the shared one",
    "sp_abs_cosine_chance": "E|cos| of independent random directions in k dims (what unrelated streams give)",
    "gate_entropy": "mean per-unit entropy of the gate weights (nats); 0 = each unit uses one stream",
    "gate_entropy_max": "ln G: entropy of uniform weights (no gating at all)",
    "gate_dominant": "the stream with the largest mean gate weight",
    "gate_dominant_index": "its index in the gate's streams",
    "gate_dominant_share": "its mean weight; 1/G = balanced, 1 = the other streams are unused",
    "gate_units": "units the gate statistics cover",
}


def meaning(key: str) -> str:
    """One line for any key of MechanismProbe.result() (gate_mean_<stream> included)."""
    if key.startswith("gate_mean_"):
        return f"mean gate weight of the {key[len('gate_mean_'):]} stream (reference 1/G)"
    return MEANINGS.get(key, "")


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else NAN


def _present_rows(x: Tensor, present: Tensor) -> Tensor:
    """The rows of x (N, k) where present (N,) is True, as float64 on the CPU."""
    return x.detach()[present.detach().bool().to(x.device)].to("cpu", torch.float64)


# ---------------------------------------------------------------- alignment

def alignment(z: Mapping[str, Tensor], present: Mapping[str, Tensor], tau: float,
              group: Tensor | None = None) -> dict[str, float]:
    """Cross-modal alignment of the shared embeddings z: modality -> (N, k), over every pair of
    modalities, on the rows where both are present (pairs with < 2 such rows are skipped).
    group (N,), optional: rows of one learner are not candidates for each other (as in the
    training loss, losses.info_nce), in the InfoNCE, its chance and the retrieval alike.

    "infonce" mean symmetric InfoNCE (losses.info_nce) over pairs; "infonce_chance" mean ln n;
    "infonce_shuffled" the InfoNCE of the same rows with the pairing broken (the other
    modality's rows shifted by n // 2);
    "retrieval_top1" share of rows whose most cosine-similar row in the other modality is their
    own (mean of both directions, then over pairs); "retrieval_chance" mean 1/n; "rows" mean n;
    "pairs" pairs used. NaN where no pair has 2 rows.
    """
    infonce, shuffled, chance, top1, top1_chance, rows = [], [], [], [], [], []
    for a, b in combinations(sorted(z), 2):
        both = present[a].detach().bool().cpu() & present[b].detach().bool().cpu()
        za, zb = _present_rows(z[a], both), _present_rows(z[b], both)
        n = za.shape[0]
        if n < 2:
            continue
        everyone = torch.ones(n, dtype=torch.bool)
        g = None if group is None else group.detach().cpu()[both]
        infonce.append(float(losses.info_nce({a: za, b: zb}, {a: everyone, b: everyone}, tau, g)))
        # the same embeddings with the pairing broken (b's rows shifted by n // 2): chance for this geometry
        if g is None:
            shuffled.append(float(losses.info_nce({a: za, b: zb.roll(n // 2, 0)}, {a: everyone, b: everyone}, tau)))
        else:   # rows of b's new partner's learner are left out, as the true partner's are
            exclude = losses.same_group(g, g.roll(n // 2, 0))
            shuffled.append(float(losses._symmetric_cross_entropy(F.normalize(za.float(), dim=-1),
                                                                  F.normalize(zb.roll(n // 2, 0).float(), dim=-1), tau, exclude)))
        candidates = torch.full((n,), float(n)) if g is None else n - losses.same_group(g).sum(1).double()
        chance.append(float(candidates.log().mean()))
        sim = F.normalize(za, dim=-1) @ F.normalize(zb, dim=-1).T                      # (n, n)
        if g is not None:
            sim = sim.masked_fill(losses.same_group(g), float("-inf"))
        own = torch.arange(n)
        top1.append(0.5 * (float((sim.argmax(1) == own).double().mean()) + float((sim.argmax(0) == own).double().mean())))
        top1_chance.append(float((1.0 / candidates).mean()))
        rows.append(float(n))
    mean = lambda v: sum(v) / len(v) if v else NAN  # noqa: E731
    return {"infonce": mean(infonce), "infonce_chance": mean(chance), "infonce_shuffled": mean(shuffled), "retrieval_top1": mean(top1),
            "retrieval_chance": mean(top1_chance), "rows": mean(rows), "pairs": float(len(rows))}


# ---------------------------------------------------------------- health of the shared space

def effective_rank(x: Tensor) -> float:
    """exp(Shannon entropy of the singular values / their sum) of the centred x (n, k) (Roy &
    Vetterli 2007): between 1 (one direction) and min(n - 1, k); 0 for a constant matrix."""
    x = x.to(torch.float64)
    if x.shape[0] < 2 or x.shape[1] == 0:
        return NAN
    centred = x - x.mean(0)
    sv = torch.linalg.svdvals(centred)
    total = float(sv.sum())
    if total <= 1e-10 * float(torch.linalg.norm(x)) or total == 0.0:
        return 0.0                                     # every row the same: no direction at all
    p = sv / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _health_one(x: Tensor) -> dict[str, float]:
    n, k = x.shape
    if n < 2:
        return {"effective_rank": NAN, "mean_abs_offdiag_corr": NAN, "std_mean": NAN, "std_min": NAN}
    centred = x - x.mean(0)
    cov = centred.T @ centred / (n - 1)                                               # (k, k)
    std = torch.sqrt(torch.diagonal(cov).clamp(min=0))
    # A (near-)constant dimension has no correlation: its entries are left out.
    varies = std > 1e-12 * max(float(std.max()), 1e-300)
    defined = varies[:, None] & varies[None, :] & ~torch.eye(k, dtype=torch.bool)
    corr = cov / (std[:, None] * std[None, :]).clamp(min=1e-300)
    return {
        "effective_rank": effective_rank(x),
        "mean_abs_offdiag_corr": float(corr[defined].abs().mean()) if bool(defined.any()) else NAN,
        "std_mean": float(std.mean()),
        "std_min": float(std.min()),
    }


def shared_health(z: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> dict[str, float]:
    """Per modality on its present rows, then the mean over modalities: "effective_rank",
    "rank_max" (k), "mean_abs_offdiag_corr", "std_mean", "std_min" (per-dimension std, ddof 1),
    "rows" (mean rows per modality)."""
    per = {m: _health_one(_present_rows(z[m], present[m])) for m in sorted(z)}
    out = {key: _nanmean([p[key] for p in per.values()]) for key in ("effective_rank", "mean_abs_offdiag_corr", "std_mean", "std_min")}
    out["rank_max"] = float(next(iter(z.values())).shape[-1]) if z else NAN
    out["rows"] = _nanmean([float(int(present[m].bool().sum())) for m in sorted(z)]) if z else NAN
    return out


# ---------------------------------------------------------------- shared vs private

def abs_cosine_chance(k: int) -> float:
    """E|cos| between two independent uniformly random directions in k dims:
    Γ(k/2) / (√π Γ((k+1)/2)) (2/π for k = 2; about sqrt(2/(π k)) for large k)."""
    if k < 1:
        return NAN
    return math.exp(math.lgamma(k / 2) - math.lgamma((k + 1) / 2)) / math.sqrt(math.pi)


def shared_private_cosine(shared: Mapping[str, Tensor], private: Mapping[str, Tensor], present: Mapping[str, Tensor],
                          *, absolute: bool = False) -> float:
    """Mean over modalities of the mean over present rows of cos(z_m, q_m) (|cos| if absolute).
    z_m and q_m (N, k) are the two streams the gate adds up in one k-space. NaN without rows."""
    per = []
    for m in sorted(shared):
        z, q = _present_rows(shared[m], present[m]), _present_rows(private[m], present[m])
        if z.shape[0] == 0:
            continue
        cos = F.cosine_similarity(z, q, dim=-1)
        per.append(float((cos.abs() if absolute else cos).mean()))
    return _nanmean(per)


# ---------------------------------------------------------------- gates

def gate_shares(gates: Tensor) -> Tensor:
    """(V, G) gate weights -> (V, G) float64 on the CPU: each unit's weights as shares of their
    sum, which softmax gates already are and sigmoid gates (dsrsd.gate) are not. Every gate
    statistic (here and in `explain`) reads these."""
    g = gates.detach().to("cpu", torch.float64)
    return g / g.sum(-1, keepdim=True).clamp(min=1e-300)


def _gate_sums(gates: Tensor) -> tuple[float, Tensor, int]:
    """(sum of per-unit entropies, (G,) sum of shares, units) of gates (V, G)."""
    g = gate_shares(gates)
    entropy = -(g * g.clamp(min=1e-300).log()).sum(-1)     # 0 log 0 = 0: closed streams add nothing
    return float(entropy.sum()), g.sum(0), int(g.shape[0])


def _gate_result(entropy_sum: float, weight_sum: Tensor, units: int, names: list[str]) -> dict[str, Any]:
    G = len(names)
    out: dict[str, Any] = {"entropy": entropy_sum / units if units else NAN, "entropy_max": math.log(G) if G else NAN}
    mean = (weight_sum / units).tolist() if units else [NAN] * G
    if units and G:
        dominant = max(range(G), key=lambda i: mean[i])
        out.update(dominant=str(names[dominant]), dominant_index=dominant, dominant_share=float(mean[dominant]))
    else:
        out.update(dominant="", dominant_index=-1, dominant_share=NAN)
    out["units"] = units
    out.update({f"mean_{name}": float(w) for name, w in zip(names, mean)})
    return out


def gate_stats(gates: Tensor, names: list[str]) -> dict[str, Any]:
    """gates (V, G), rows summing to 1 -> "entropy" (mean per-unit entropy, nats), "entropy_max"
    (ln G), "dominant" (name of the stream with the largest mean weight), "dominant_index",
    "dominant_share" (its mean weight), "units" (V) and "mean_<name>" per stream."""
    if gates.dim() != 2 or gates.shape[1] != len(names):
        raise ValueError(f"gates of shape {tuple(gates.shape)} do not match the {len(names)} stream names {names}")
    return _gate_result(*_gate_sums(gates), [str(n) for n in names])


# ---------------------------------------------------------------- the accumulator

class MechanismProbe:
    """Pools eval forwards' aux over a split; `result()` gives the flat dict of the module doc.

    Embedding rows are pooled in order. To bound memory on a large split, once more than
    2 * max_rows are held only every 2nd (then 4th, ...) row (by position in the pooled order)
    is kept; result() then takes max_rows evenly spaced rows of those. All of it is
    deterministic, and with at most max_rows rows in all, every row is used.
    """

    def __init__(self, *, tau: float, max_rows: int = 2048) -> None:
        if max_rows < 2:
            raise ValueError("max_rows must be at least 2")
        self.tau, self.max_rows = float(tau), int(max_rows)
        self._modalities: list[str] | None = None
        self._chunks: list[tuple[Tensor, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]] = []   # (index, z, q, present)
        self._held = 0
        self._seen = 0
        self._stride = 1
        self._gate_names: list[str] | None = None
        self._gate_entropy = 0.0
        self._gate_weight: Tensor | None = None
        self._gate_units = 0

    def add(self, aux: Mapping[str, Any]) -> None:
        """One eval forward's ModelOutput.aux (its gates are the scored units'). Models
        without these keys: no-op."""
        if all(key in aux for key in ("shared", "private", "aux_present")) and aux["shared"]:
            present = dict(aux["aux_present"])
            if "aux_group" in aux:                    # carried as a pseudo-modality: pooled and thinned alike
                present[_GROUP] = aux["aux_group"]
            self._add_rows(aux["shared"], aux["private"], present)
        if "gates" in aux and "gate_names" in aux:
            gates = aux["gates"]
            names = [str(n) for n in aux["gate_names"]]
            if self._gate_names is None:
                self._gate_names = names
            elif names != self._gate_names:
                raise ValueError(f"gate streams changed between batches: {self._gate_names} then {names}")
            entropy, weight, units = _gate_sums(gates)
            self._gate_entropy += entropy
            self._gate_weight = weight if self._gate_weight is None else self._gate_weight + weight
            self._gate_units += units

    def _add_rows(self, shared: Mapping[str, Tensor], private: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> None:
        names = sorted(shared)
        extra = sorted(set(present) - set(names))     # _GROUP
        if self._modalities is None:
            self._modalities = names
        elif names != self._modalities:
            raise ValueError(f"modalities changed between batches: {self._modalities} then {names}")
        n = int(shared[names[0]].shape[0])
        index = torch.arange(self._seen, self._seen + n)
        self._seen += n
        keep = index % self._stride == 0
        cpu = lambda x: x.detach()[keep.to(x.device)].to("cpu", torch.float32 if x.is_floating_point() else x.dtype)  # noqa: E731
        self._chunks.append((index[keep], {m: cpu(shared[m]) for m in names}, {m: cpu(private[m]) for m in names},
                             {**{m: cpu(present[m].bool()) for m in names}, **{m: cpu(present[m]) for m in extra}}))
        self._held += int(keep.sum())
        while self._held > 2 * self.max_rows:
            self._stride *= 2
            self._chunks = [self._thin(chunk) for chunk in self._chunks]
            self._held = sum(len(chunk[0]) for chunk in self._chunks)

    def _thin(self, chunk):
        index, z, q, present = chunk
        keep = index % self._stride == 0
        return index[keep], {m: v[keep] for m, v in z.items()}, {m: v[keep] for m, v in q.items()}, {m: v[keep] for m, v in present.items()}

    def _pooled(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        names = self._modalities or []
        z = {m: torch.cat([c[1][m] for c in self._chunks]) for m in names}
        q = {m: torch.cat([c[2][m] for c in self._chunks]) for m in names}
        present = {m: torch.cat([c[3][m] for c in self._chunks]) for m in self._chunks[0][3]} if self._chunks else {}
        n = self._held
        if n > self.max_rows:
            pick = torch.linspace(0, n - 1, self.max_rows, dtype=torch.float64).round().long()
            z, q, present = ({m: v[pick] for m, v in d.items()} for d in (z, q, present))
        return z, q, present

    def result(self) -> dict[str, float | str]:
        out: dict[str, Any] = {}
        if self._modalities is not None:
            z, q, present = self._pooled()
            group = present.pop(_GROUP, None)
            a = alignment(z, present, self.tau, group)
            out.update(align_infonce=a["infonce"], align_infonce_chance=a["infonce_chance"], align_infonce_shuffled=a["infonce_shuffled"],
                       align_top1=a["retrieval_top1"], align_top1_chance=a["retrieval_chance"],
                       align_rows=a["rows"], align_pairs=a["pairs"], align_tau=self.tau)
            out.update({f"shared_{key}": value for key, value in shared_health(z, present).items()})
            out["sp_cosine"] = shared_private_cosine(z, q, present)
            out["sp_abs_cosine"] = shared_private_cosine(z, q, present, absolute=True)
            out["sp_abs_cosine_chance"] = abs_cosine_chance(int(next(iter(z.values())).shape[-1]))
        if self._gate_names is not None and self._gate_weight is not None:
            stats = _gate_result(self._gate_entropy, self._gate_weight, self._gate_units, self._gate_names)
            out.update({f"gate_{key}": value for key, value in stats.items()})
        return out
