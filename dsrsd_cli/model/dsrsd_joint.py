"""DSRSD-Net ahead of one joint core (`dsrsd.core = "joint"`, EdNet; docs/method.md#where-the-decomposition-runs-dsrsdcore).

The per-modality design (`dsrsd.core = "per-modality"`, fusion.MultimodalModel + DSRSDFusion)
decomposes each modality's own contextual encoding h_m, so it runs M causal cores where
`early` runs one. This design decomposes each modality's *input embedding* of a step
instead, and hands the fused streams to ONE core, the one `early` uses:

    x_m  = modality m's query view of the step (known when the question is shown; its
           absent token where the modality is absent or hidden)            (B, T, d) each
    DSRSDFusion on the scored steps: shared / private split, alignment, decorrelation,
           orthogonality, gate; its head maps the gated streams to d   -> query (B, T, d)
    core(query, joint memory = sum of the modalities' memory views)     -> h     (B, T, d)
    head(h)                                                              -> logits (B, T)

So the shared streams align what the modalities say about the same step (a question's id
with its part and tags, ...), the history the core attends to is `early`'s, and a closed
private stream (a missing modality, `private_dropout`, an ablation) really leaves the step.
One core instead of M: 1.52x the training rows/s of `concat` (0.56x `early`'s; benchmarks/train_bench.py).
"""

from __future__ import annotations

from torch import nn

from dsrsd_cli.model.blocks import Head
from dsrsd_cli.model.encoders import Encoded
from dsrsd_cli.model.fusion import AbsentTokens, DSRSDFusion, effective_presence, needed_steps, to_logits
from dsrsd_cli.model.interaction_core import View
from dsrsd_cli.types import Batch, ModelOutput


class DSRSDJointEdNet(nn.Module):
    """inputs: modality -> View module; decomposition: a DSRSDFusion built with n_outputs = d
    (what it returns as "logits" is each scored step's fused query, 0 at the other steps);
    core: a CausalInteractionEncoder of one stack.

    forward(batch, *, ablate) -> ModelOutput(logits (B, T), aux of the decomposition).
    """

    def __init__(self, *, inputs: dict[str, nn.Module], decomposition: DSRSDFusion, core: nn.Module, d: int,
                 n_outputs: int, dropout: float, modality_dropout: float) -> None:
        super().__init__()
        self.inputs = nn.ModuleDict(inputs)
        self.absent = AbsentTokens(modalities=tuple(inputs), d=d)
        self.decomposition = decomposition
        self.core = core
        self.head = Head(d_in=d, d=d, n_outputs=n_outputs, dropout=dropout)
        self.modality_dropout = modality_dropout

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    def ablatable_streams(self) -> list[str]:
        return self.decomposition.ablatable_streams()

    def forward(self, batch: Batch, *, ablate: frozenset[str] = frozenset()) -> ModelOutput:
        present = effective_presence(batch, self.modalities, training=self.training, p=self.modality_dropout)
        views = {m: view_of(batch) for m, view_of in self.inputs.items()}                # View (B, T, d) x2 each
        steps = {}
        for m, view in views.items():
            x = self.absent.fill(m, view.query, present[m])                                # (B, T, d)
            steps[m] = Encoded(h=x, tokens=x, token_mask=batch.valid)
        fused = self.decomposition(steps, present, batch, ablate=ablate)                   # logits: (B, T, d)
        memory = sum(self.absent.fill(m, view.memory, present[m]) for m, view in views.items())   # (B, T, d)
        query = fused.logits.to(memory.dtype)
        needed = needed_steps(batch, training=self.training, reads_every_step=False)
        h = self.core(View(query.unsqueeze(0), memory.unsqueeze(0)), batch.context["response"],
                      batch.context["bundle_group"], batch.valid, batch.context.get("hours"), needed=needed)[0]
        logits = to_logits(self.head(h.reshape(-1, h.shape[-1])), batch)                  # (B, T)
        return ModelOutput(logits, fused.aux)
