"""Fusions (docs/method.md): how the per-modality encodings become one prediction.

A model is encoders (encoders.py) + a fusion with its head, as in MultiBench's MMDL.
`MultimodalModel` runs the encoders, hides modalities (modality dropout in training),
puts each modality's learned absent token where it is absent (`AbsentTokens`), and calls
the fusion (a `Fusion`). DSRSD-Net and the baselines differ only in the fusion; `early`
alone has, by definition, one joint encoder instead (`EarlyFusionEdNet`,
`EarlyFusionOulad`). Every model lists the streams `dsrsd explain` may ablate
(`ablatable_streams()`): DSRSD-Net's shared and private streams; none for the baselines.

Encoders start from a small init (blocks.init_small_); fusions and heads keep PyTorch's
default init, so the DSRSD streams start at the scale of h, not near zero.

Fusions work on "units": the B x T steps of EdNet or the B rows of OULAD, flattened to
(U, d). Every model returns ModelOutput(logits, aux) with logits (B, T) for EdNet and
(B,) or (B, C) for OULAD.
"""

from __future__ import annotations

import zlib
from itertools import combinations, permutations
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsrsd_cli.errors import BadInput
from dsrsd_cli.model import losses
from dsrsd_cli.model.blocks import Attention, FeedForward, Head, StackedLinear, attention_bias, mlp
from dsrsd_cli.model.encoders import Encoded, Tokens
from dsrsd_cli.model.interaction_core import View, same_or_earlier_bundles
from dsrsd_cli.types import Batch, ModelOutput

STREAMS = ("shared", "private")   # what `ablate` entries name: "<modality>.shared" | "<modality>.private"
# Mechanisms a DSRSD-Net variant can be built without (registry `dsrsd:no-align`, ...): the paper's ablations.
MECHANISMS = ("align", "decorr", "orth", "private", "shared", "gate")


def to_logits(y: Tensor, batch: Batch) -> Tensor:
    """(U, C) -> (B, T) | (B,) for C == 1, (B, T, C) | (B, C) otherwise; float32 even
    under bf16 autocast, so probabilities keep their resolution (AUC ties otherwise)."""
    y = y.float().view(*batch.valid.shape, y.shape[-1])
    return y.squeeze(-1) if y.shape[-1] == 1 else y


def drop_modalities(present: dict[str, Tensor], p: float) -> dict[str, Tensor]:
    """Modality dropout: hide each modality of each row (all its steps) with probability p.

    A unit never loses all of the modalities it had: where that would happen it keeps
    them all. present: modality -> (B,) or (B, T) bool.
    """
    names = list(present)
    if p <= 0 or len(names) < 2:
        return present
    had = torch.stack([present[m] for m in names], dim=-1)                  # (B, [T,] M)
    B, M = had.shape[0], had.shape[-1]
    hide = torch.rand(B, M, device=had.device) < p
    hide = hide.view(B, *[1] * (had.dim() - 2), M)                          # same for every step of a row
    kept = had & ~hide
    kept = torch.where(kept.any(-1, keepdim=True), kept, had)
    return {m: kept[..., i] for i, m in enumerate(names)}


def effective_presence(batch: Batch, modalities: tuple[str, ...], *, training: bool, p: float) -> dict[str, Tensor]:
    present = {m: batch.present[m].bool() for m in modalities}
    return drop_modalities(present, p) if training else present


class AbsentTokens(nn.ParameterDict):
    """One learned token (d,) per modality, N(0, 0.02): what a unit carries in place of a
    modality it lacks (or one that modality dropout hid). Shared by MultimodalModel and
    the two `early` models. A ParameterDict, so its weights stay `absent.<modality>`.
    """

    def __init__(self, *, modalities: Sequence[str], d: int) -> None:
        super().__init__({m: nn.Parameter(torch.zeros(d)) for m in modalities})
        for token in self.values():
            nn.init.normal_(token, std=0.02)

    def fill(self, modality: str, x: Tensor, present: Tensor) -> Tensor:
        """x (B, [T,] d) where present (B, [T]), the modality's token elsewhere."""
        return torch.where(present.unsqueeze(-1), x, self[modality])

    def fill_encoded(self, modality: str, encoded: Encoded, present: Tensor) -> Encoded:
        """An encoding whose absent units carry the token. EdNet (h (B, T, d)): the tokens
        are h itself. OULAD (h (B, d)): an absent row's token sequence becomes just [token]."""
        h = self.fill(modality, encoded.h, present)
        if h.dim() == 3:
            return Encoded(h=h, tokens=h, token_mask=encoded.token_mask)
        tokens = torch.cat([h.unsqueeze(1), encoded.tokens[:, 1:]], dim=1)                # (B, 1+L, d)
        mask = torch.cat([encoded.token_mask[:, :1], encoded.token_mask[:, 1:] & present.unsqueeze(1)], dim=1)
        return Encoded(h=h, tokens=tokens, token_mask=mask)


def learner_groups(batch: Batch) -> Tensor | None:
    """(U,) int64: each unit's learner, as a CRC-32 of its key (stable across batches), for
    InfoNCE's negatives; None where a unit is a whole learner (OULAD: one row per registration)."""
    users = batch.keys.get("user")
    if users is None or batch.valid.dim() != 2:
        return None
    codes = torch.tensor([zlib.crc32(str(u).encode()) for u in users], dtype=torch.int64, device=batch.valid.device)
    return codes.repeat_interleave(batch.valid.shape[1])                                # (B * T,)


def sample_aux_rows(count: int, n: int, *, training: bool, device: torch.device) -> Tensor:
    """Indices (N <= n,) into `count` units for the auxiliary losses: a random subset in
    training, an evenly spaced (reproducible) one in evaluation."""
    if count <= n:
        return torch.arange(count, device=device)
    if training:
        return torch.randperm(count, device=device)[:n].sort().values
    return torch.linspace(0, count - 1, n, device=device).long()


# ----------------------------------------------------------------------------- the model


class Fusion(nn.Module):
    """What MultimodalModel fuses with: forward(encoded: modality -> Encoded, present:
    modality -> (B,) | (B, T) bool, batch, *, ablate) -> ModelOutput.

    `ablate` removes streams for `dsrsd explain`; ablatable_streams() lists the ones this
    fusion has ("<modality>.<stream>"), none unless a fusion overrides it (DSRSD-Net).
    A fusion without streams ignores `ablate`.
    """

    # True when the fusion reads the encodings of steps other than the scored ones (attention
    # across steps): then evaluation encodes every step (see needed_steps).
    reads_every_step = False

    def ablatable_streams(self) -> list[str]:
        return []


def needed_steps(batch: Batch, *, training: bool, reads_every_step: bool) -> Tensor | None:
    """(B, T) bool: the EdNet steps whose encodings evaluation reads, the scored ones (the core
    then skips the others, about half of an evaluation batch); None = encode every step. In
    training every step is encoded, so that dropout draws, and every trained model, stay as
    they were."""
    if training or reads_every_step or batch.mask.dim() < 2:
        return None
    return batch.mask.bool()


class MultimodalModel(nn.Module):
    """encoders (forward(batch) -> modality -> Encoded) + a Fusion.

    forward(batch, *, ablate) -> ModelOutput. `ablate` removes streams of the fusion
    (for `dsrsd explain`): the ones ablatable_streams() lists.
    """

    def __init__(self, *, encoders: nn.Module, modalities: tuple[str, ...], fusion: Fusion, d: int,
                 modality_dropout: float) -> None:
        super().__init__()
        self.encoders = encoders
        self.absent = AbsentTokens(modalities=modalities, d=d)
        self.fusion = fusion
        self.modality_dropout = modality_dropout

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.absent)

    def ablatable_streams(self) -> list[str]:
        return self.fusion.ablatable_streams()

    def forward(self, batch: Batch, *, ablate: frozenset[str] = frozenset()) -> ModelOutput:
        present = effective_presence(batch, self.modalities, training=self.training, p=self.modality_dropout)
        needed = needed_steps(batch, training=self.training, reads_every_step=self.fusion.reads_every_step)
        encoded = self.encoders(batch, present, self.absent, needed=needed)
        encoded = {m: self.absent.fill_encoded(m, encoded[m], present[m]) for m in self.modalities}
        return self.fusion(encoded, present, batch, ablate=ablate)


# ----------------------------------------------------------------------------- DSRSD-Net


class DSRSDFusion(Fusion):
    """Dual-stream residual decomposition, semantic alignment, decorrelation, gated fusion
    (equations: docs/method.md#dsrsd-fusion-dsrsdfusion).

    Per modality m (on units (U, d)): shared s_m = P_m(h_m); private residual p_m = h_m - s_m;
    q_m = LN(Q_m(p_m)) (U, k); z_m = G(s_m) (U, k), G ending in a LayerNorm, ONE head G for all modalities
    (both LayerNorms without gain).
    Consensus c = mean of the present z_m. A gate network scores [c, q_1..q_M] from their
    concatenation, and `gate` turns the scores into weights ("softmax": shares of 1; "sigmoid":
    each in (0, 1) on its own); absent (or ablated) streams get -inf, so their weight is exactly 0;
    fused = the weighted streams side by side (U, (1+M) k); head -> logits. In training, `private_dropout`
    also closes each private stream at random (robustness to a missing modality). The
    per-modality maps P_m, Q_m run stacked (one batched matmul for all M), on the scored
    units only (batch.mask): nothing reads a prediction elsewhere, and an EdNet window's
    context steps (a third of its units) are scored in the window before.

    aux: "losses" (training only: unweighted infonce, regression, decorrelation,
    orthogonality on at most aux_rows sampled scored units, each over the units where its
    modalities are present; {} in evaluation, where nothing reads them);
    "gates" (N_scored, 1+M) for the scored units in batch.mask order, "gate_names";
    "shared"/"private": modality -> z_m / q_m (N, k) of the sampled units, with
    "aux_rows" (N,) their flat unit indices and "aux_present": modality -> (N,) bool;
    EdNet also "aux_group" (N,): their learners (learner_groups), InfoNCE's excluded negatives.

    `without` removes mechanisms (MECHANISMS) for the ablation table: "align" / "decorr" /
    "orth" drop that loss term; "private" closes every private stream; "shared" closes the
    consensus (and drops the alignment and decorrelation terms, which act on it alone);
    "gate" weighs the open streams equally instead of by the gate network.
    """

    def __init__(
        self, *, modalities: tuple[str, ...], d: int, k: int, n_outputs: int, dropout: float,
        aux_rows: int, tau: float, orth_private_pairs: bool, private_dropout: float = 0.0,
        without: frozenset[str] = frozenset(), gate: str = "softmax",
    ) -> None:
        super().__init__()
        unknown = set(without) - set(MECHANISMS)
        if unknown:
            raise ValueError(f"unknown mechanisms {sorted(unknown)}; choose from {MECHANISMS}")
        self.modalities = tuple(modalities)
        self.without = frozenset(without)
        if gate not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown gate {gate!r}; choose softmax or sigmoid")
        self.gate_kind = gate
        # Closing private streams at random exists to make the head lean on the consensus;
        # without a consensus it would only leave units with nothing to read.
        self.private_dropout = 0.0 if "shared" in self.without else private_dropout
        M = len(self.modalities)
        self.aux_rows, self.tau, self.orth_private_pairs = aux_rows, tau, orth_private_pairs
        self.shared = nn.Sequential(StackedLinear(stacks=M, d_in=d, d_out=d), nn.GELU(),
                                    StackedLinear(stacks=M, d_in=d, d_out=d))                 # P_m, stacked
        # Both k-sized streams end in a LayerNorm without gain: every stream the gate weighs
        # has the same scale (so gate weights say how much each one counts), and the VICReg
        # variance hinge measures collapse of the shared space, not its scale.
        self.private = StackedLinear(stacks=M, d_in=d, d_out=k)                              # Q_m (+ the norm)
        self.align = nn.Sequential(mlp(d, d, k), nn.LayerNorm(k, elementwise_affine=False))  # G, shared by all
        self.predictors = nn.ModuleDict({f"{a}->{b}": nn.Linear(k, k) for a, b in permutations(self.modalities, 2)})
        self.gate = mlp((1 + M) * k, d, 1 + M)
        self.head = Head(d_in=(1 + M) * k, d=d, n_outputs=n_outputs, dropout=dropout)

    def ablatable_streams(self) -> list[str]:
        """Every modality's shared and private stream: "<modality>.shared" | "<modality>.private"."""
        return [f"{m}.{stream}" for m in self.modalities for stream in STREAMS]

    def _check(self, ablate: frozenset[str]) -> None:
        valid = set(self.ablatable_streams())
        wrong = set(ablate) - valid
        if wrong:
            raise BadInput(f"cannot ablate {sorted(wrong)}; valid entries: {', '.join(sorted(valid))}")

    def _kept(self, ablate: frozenset[str], stream: str, device: torch.device) -> Tensor:
        """(M, 1) bool: True where modality m's `stream` is not ablated."""
        return torch.tensor([[f"{m}.{stream}" not in ablate] for m in self.modalities], device=device)

    def forward(self, encoded: dict[str, Encoded], present: dict[str, Tensor], batch: Batch, *,
                ablate: frozenset[str] = frozenset()) -> ModelOutput:
        self._check(ablate)
        names = self.modalities
        # Only the scored units are fused (the others get logit 0): V of the U = B x T units.
        units = batch.mask.reshape(-1).nonzero().squeeze(1)                                  # (V,)
        h = torch.stack([encoded[m].h.flatten(0, -2).index_select(0, units) for m in names])  # (M, V, d)
        here = torch.stack([present[m].reshape(-1).index_select(0, units) for m in names])  # (M, V)
        s = self.shared(h)                                                                   # (M, V, d)
        p = h - s                                                                            # (M, V, d)
        q = self.private(p)
        q = F.layer_norm(q, q.shape[-1:])                                                    # (M, V, k)
        z = self.align(s)                                                                    # (M, V, k)

        in_consensus = here & self._kept(ablate, "shared", here.device)                      # (M, V)
        if "shared" in self.without:
            in_consensus = torch.zeros_like(in_consensus)
        weight = in_consensus.to(z.dtype).unsqueeze(-1)                                      # (M, V, 1)
        c = (z * weight).sum(0) / weight.sum(0).clamp(min=1)                                 # (V, k)
        streams = torch.cat([c.unsqueeze(0), q])                                             # (1+M, V, k)
        private_open = here & self._kept(ablate, "private", here.device)                     # (M, V)
        if "private" in self.without:
            private_open = torch.zeros_like(private_open)
        if self.training and self.private_dropout > 0:
            # Private streams hold what only their modality knows, so they are what a missing
            # modality takes away; closing them at random teaches the head to lean on the
            # consensus, which the other modalities' aligned shared streams still carry.
            private_open = private_open & (torch.rand(private_open.shape, device=here.device) >= self.private_dropout)
        # The consensus stays open when nothing else is, so every unit has one stream.
        consensus_open = in_consensus.any(0) | ~private_open.any(0)                          # (V,)
        is_open = torch.cat([consensus_open.unsqueeze(0), private_open]).T                   # (V, 1+M)
        if "gate" in self.without:   # a plain mean of the open streams
            scores = torch.zeros(is_open.shape, device=is_open.device).masked_fill(~is_open, float("-inf"))
        else:
            scores = self.gate(streams.transpose(0, 1).flatten(1)).float().masked_fill(~is_open, float("-inf"))
        # softmax: the open streams share a weight of 1; sigmoid: each open stream in (0, 1) on its own.
        gates = torch.softmax(scores, dim=-1) if self.gate_kind == "softmax" else torch.sigmoid(scores)   # (V, 1+M)
        # Gated concatenation: each stream scaled by its weight, side by side, so the head can
        # still tell them apart (a weighted sum would blur four k-spaces into one).
        fused = (gates.T.unsqueeze(-1) * streams).transpose(0, 1).flatten(1)                 # (V, (1+M) k)
        y = self.head(fused)                                                                 # (V, C)
        logits = to_logits(y.new_zeros(batch.valid.numel(), y.shape[-1]).index_copy(0, units, y), batch)

        picks = sample_aux_rows(units.numel(), self.aux_rows, training=self.training, device=units.device)  # (N,)
        z_rows, here_rows = z.index_select(1, picks), here[:, picks]                        # (M, N, k), (M, N)
        groups = learner_groups(batch)
        group_rows = None if groups is None else groups.index_select(0, units[picks])       # (N,)
        aux_losses = {} if not self.training else self._aux_losses(
            z=z_rows, s=s.index_select(1, picks), p=p.index_select(1, picks), here=here_rows, group=group_rows)
        aux = {
            "losses": aux_losses,
            "gates": gates.detach(),
            "gate_names": ["consensus", *names],
            "shared": {m: z_rows[i].detach() for i, m in enumerate(names)},
            "private": {m: q[i, picks].detach() for i, m in enumerate(names)},
            "aux_rows": units[picks],
            "aux_present": {m: here_rows[i] for i, m in enumerate(names)},
        }
        if group_rows is not None:
            aux["aux_group"] = group_rows
        return ModelOutput(logits, aux)

    def _aux_losses(self, *, z: Tensor, s: Tensor, p: Tensor, here: Tensor, group: Tensor | None) -> dict[str, Tensor]:
        """z (M, N, k), s and p (M, N, d), here (M, N), group (N,) | None of the sampled units -> unweighted losses.
        Decorrelation and orthogonality run on the stack of modalities at once."""
        names = self.modalities
        by_name = lambda x: {m: x[i] for i, m in enumerate(names)}  # noqa: E731
        predictors = {(a, b): self.predictors[f"{a}->{b}"] for a, b in permutations(names, 2)}
        terms = {}
        if not {"align", "shared"} & self.without:
            terms["infonce"] = losses.info_nce(by_name(z), by_name(here), self.tau, group)
            terms["regression"] = losses.regression_alignment(by_name(z), by_name(here), predictors)
        if not {"decorr", "shared"} & self.without:
            terms["decorrelation"] = losses.decorrelation(z, here).mean()
        if "orth" not in self.without:
            orth = [losses.orthogonality(s, p, here)]                                            # (M,)
            if self.orth_private_pairs:
                orth += [losses.orthogonality(p[i], p[j], here[i] & here[j]).view(1)
                         for i, j in combinations(range(len(names)), 2)]
            terms["orthogonality"] = torch.cat(orth).mean()
        return terms


# ----------------------------------------------------------------------------- baselines


class ConcatFusion(Fusion):
    """`concat` (and `single:<m>` with one modality): [h_1 .. h_M] (U, M*d) -> head."""

    def __init__(self, *, modalities: tuple[str, ...], d: int, n_outputs: int, dropout: float) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.head = Head(d_in=len(self.modalities) * d, d=d, n_outputs=n_outputs, dropout=dropout)

    def forward(self, encoded: dict[str, Encoded], present: dict[str, Tensor], batch: Batch, *,
                ablate: frozenset[str] = frozenset()) -> ModelOutput:
        fused = torch.cat([encoded[m].h for m in self.modalities], dim=-1)           # (B, [T,] M*d)
        return ModelOutput(to_logits(self.head(fused.reshape(-1, fused.shape[-1])), batch), {"losses": {}})


class LateFusion(Fusion):
    """`late`: one head per modality; logits averaged with learned softmax weights over the
    present modalities (absent ones weigh exactly 0; a unit with none present uses all)."""

    def __init__(self, *, modalities: tuple[str, ...], d: int, n_outputs: int, dropout: float) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.heads = nn.ModuleDict({m: Head(d_in=d, d=d, n_outputs=n_outputs, dropout=dropout) for m in self.modalities})
        self.weight = nn.Parameter(torch.zeros(len(self.modalities)))

    def forward(self, encoded: dict[str, Encoded], present: dict[str, Tensor], batch: Batch, *,
                ablate: frozenset[str] = frozenset()) -> ModelOutput:
        names = self.modalities
        per_modality = torch.stack([self.heads[m](encoded[m].h.reshape(-1, encoded[m].h.shape[-1])) for m in names], 1)  # (U, M, C)
        here = torch.stack([present[m].reshape(-1) for m in names], dim=1)           # (U, M)
        here = here | ~here.any(1, keepdim=True)
        weights = torch.softmax(self.weight.expand_as(here).masked_fill(~here, float("-inf")), dim=-1)   # (U, M)
        fused = (weights.unsqueeze(-1) * per_modality).sum(1)                        # (U, C)
        aux = {"losses": {}, "gates": weights[batch.mask.reshape(-1)].detach(), "gate_names": list(names)}
        return ModelOutput(to_logits(fused, batch), aux)


class CoAttentionFusion(Fusion):
    """`coattn`: pairwise cross-modal attention between the modalities' token sequences.

    u_a = tokens_a + mean_{b != a} Attn_ab(LN(tokens_a), LN(tokens_b)); u_a += MLP(LN(u_a));
    then pooling: per step for EdNet (attention to steps of the same or earlier bundles
    only, so nothing answered later leaks), masked mean over tokens for OULAD; fused =
    mean over modalities -> head.
    """

    reads_every_step = True   # per step, it attends to the encodings of earlier steps

    def __init__(self, *, modalities: tuple[str, ...], d: int, n_heads: int, n_outputs: int, dropout: float,
                 per_step: bool) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.per_step = per_step
        self.norm = nn.ModuleDict({m: nn.LayerNorm(d) for m in self.modalities})
        self.cross = nn.ModuleDict({f"{a}->{b}": Attention(d=d, n_heads=n_heads, dropout=dropout)
                                    for a, b in permutations(self.modalities, 2)})
        self.mlp = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), FeedForward(d=d, hidden=4 * d, dropout=dropout))
                                  for m in self.modalities})
        self.head = Head(d_in=d, d=d, n_outputs=n_outputs, dropout=dropout)

    def forward(self, encoded: dict[str, Encoded], present: dict[str, Tensor], batch: Batch, *,
                ablate: frozenset[str] = frozenset()) -> ModelOutput:
        names = self.modalities
        normed = {m: self.norm[m](encoded[m].tokens) for m in names}                 # (B, L_m, d)
        if self.per_step:
            steps = attention_bias(same_or_earlier_bundles(batch.context["bundle_group"], batch.valid))   # (B, 1, T, T)
            bias = {b: steps for b in names}
        else:
            bias = {b: attention_bias(encoded[b].token_mask.unsqueeze(1)) for b in names}           # (B, 1, 1, L_b)
        pooled = []
        for a in names:
            u = encoded[a].tokens
            others = [b for b in names if b != a]
            if others:
                u = u + torch.stack([
                    self.cross[f"{a}->{b}"](normed[a].unsqueeze(0), normed[b].unsqueeze(0), bias[b])[0] for b in others
                ]).mean(0)
            u = u + self.mlp[a](u)                                                   # (B, L_a, d)
            if not self.per_step:
                mask = encoded[a].token_mask.unsqueeze(-1).to(u.dtype)
                u = (u * mask).sum(1) / mask.sum(1)                                 # (B, d); summary token always in
            pooled.append(u)
        fused = torch.stack(pooled).mean(0)                                          # (B, [T,] d)
        return ModelOutput(to_logits(self.head(fused.reshape(-1, fused.shape[-1])), batch), {"losses": {}})


class EarlyFusionEdNet(nn.Module):
    """`early` for EdNet: the modalities' per-step input embeddings are summed (a linear map
    of their concatenation) and fed to ONE causal encoder, then the head. An absent
    modality's inputs are replaced by its learned absent token."""

    def __init__(self, *, inputs: dict[str, nn.Module], core: nn.Module, d: int, n_outputs: int, dropout: float,
                 modality_dropout: float) -> None:
        super().__init__()
        head = Head(d_in=d, d=d, n_outputs=n_outputs, dropout=dropout)   # drawn first: same seed, same weights
        self.inputs = nn.ModuleDict(inputs)
        self.core = core
        self.absent = AbsentTokens(modalities=tuple(inputs), d=d)
        self.head = head
        self.modality_dropout = modality_dropout

    def ablatable_streams(self) -> list[str]:
        return []                                                   # one joint encoder: no stream of one modality

    def forward(self, batch: Batch, *, ablate: frozenset[str] = frozenset()) -> ModelOutput:
        present = effective_presence(batch, tuple(self.inputs), training=self.training, p=self.modality_dropout)
        query = memory = 0.0
        for m, view_of in self.inputs.items():
            view, here = view_of(batch), present[m]                                 # View (B, T, d) x2, (B, T)
            query = query + self.absent.fill(m, view.query, here)
            memory = memory + self.absent.fill(m, view.memory, here)
        one = View(query.unsqueeze(0), memory.unsqueeze(0))                          # a stack of one: (1, B, T, d) x2
        needed = needed_steps(batch, training=self.training, reads_every_step=False)
        h = self.core(one, batch.context["response"], batch.context["bundle_group"], batch.valid,
                      batch.context.get("hours"), needed=needed)[0]                                  # (B, T, d)
        return ModelOutput(to_logits(self.head(h.reshape(-1, h.shape[-1])), batch), {"losses": {}})


class EarlyFusionOulad(nn.Module):
    """`early` for OULAD: all modalities' tokens in ONE sequence for one SetEncoder.

    Each modality's tokens carry its learned marker (a type embedding) and are led by the
    marker token, or, for an absent modality, by its absent token alone.
    """

    def __init__(self, *, inputs: dict[str, nn.Module], core: nn.Module, d: int, n_outputs: int, dropout: float,
                 modality_dropout: float) -> None:
        super().__init__()
        head = Head(d_in=d, d=d, n_outputs=n_outputs, dropout=dropout)   # drawn first: same seed, same weights
        self.inputs = nn.ModuleDict(inputs)
        self.core = core
        self.marker = nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m in inputs})
        for token in self.marker.values():
            nn.init.normal_(token, std=0.02)
        self.absent = AbsentTokens(modalities=tuple(inputs), d=d)
        self.head = head
        self.modality_dropout = modality_dropout

    def ablatable_streams(self) -> list[str]:
        return []                                                   # one joint encoder: no stream of one modality

    def forward(self, batch: Batch, *, ablate: frozenset[str] = frozenset()) -> ModelOutput:
        present = effective_presence(batch, tuple(self.inputs), training=self.training, p=self.modality_dropout)
        xs, masks = [], []
        for m, tokens_of in self.inputs.items():
            tokens, here = tokens_of(batch), present[m]                             # Tokens (B, L, d), (B,)
            lead = self.absent.fill(m, self.marker[m], here).unsqueeze(1)                  # (B, 1, d)
            xs += [lead, tokens.x + self.marker[m]]
            masks += [here.new_ones(here.shape[0], 1), tokens.mask & here.unsqueeze(1)]
        summary, _, _ = self.core(Tokens(torch.cat(xs, dim=1), torch.cat(masks, dim=1)))   # (B, d)
        return ModelOutput(to_logits(self.head(summary), batch), {"losses": {}})


EARLY: dict[str, type[nn.Module]] = {"ednet": EarlyFusionEdNet, "oulad": EarlyFusionOulad}
