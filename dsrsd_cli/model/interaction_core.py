"""The EdNet contextual core (docs/method.md#ednet-block-causal-interaction-encoder): SAKT's
interaction attention, block-causal by bundle, with AKT-style forgetting.

`CausalInteractionEncoder` turns S modalities' per-step `View`s (stacked, one weight copy per
modality) into their encodings h. The two mask helpers are the EdNet leakage rule for
attention (docs/leakage.md#the-block-causal-mask); fusions that attend across steps use them too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsrsd_cli.errors import BadInput
from dsrsd_cli.model.blocks import Block, Dropout, StackedLayerNorm, StackedLinear, stack_copies


class View(NamedTuple):
    """EdNet per-step embeddings of one modality, each (B, T, d) (stacked for the core: (M, B, T, d)).

    query:  what is known when step t is shown; it may feed step t's own prediction.
    memory: the whole interaction of step t (the query plus what is known only after
            answering); the core lets it reach only steps of LATER bundles.
    """

    query: Tensor
    memory: Tensor


def earlier_bundles(bundle_group: Tensor, valid: Tensor) -> Tensor:
    """(B, T, T) bool: [b, t, t'] is True iff t' is a real step of a bundle before t's bundle.

    This is the leakage rule of docs/leakage.md#the-block-causal-mask: responses and "post" features of step t' may
    reach step t only then.
    """
    return (bundle_group.unsqueeze(1) < bundle_group.unsqueeze(2)) & valid.unsqueeze(1)


def same_or_earlier_bundles(bundle_group: Tensor, valid: Tensor) -> Tensor:
    """(B, T, T) bool: t' is a real step of t's bundle or an earlier one, or t' == t.

    For attention between encoder OUTPUTS: h(t') holds only what is known when t' is shown,
    which for a step of the same bundle is known when t is shown too.
    """
    T = bundle_group.shape[1]
    diagonal = torch.eye(T, dtype=torch.bool, device=bundle_group.device)
    return ((bundle_group.unsqueeze(1) <= bundle_group.unsqueeze(2)) & valid.unsqueeze(1)) | diagonal


class CausalInteractionEncoder(nn.Module):
    """SAKT-like encoder of S EdNet views at once (one per modality), causal and
    block-causal by bundle; the S copies share nothing but the mask.

    Step t's query attends to the memory of steps of EARLIER bundles (their full
    interaction, with a projection chosen by the response: SAKT's interaction
    embedding), plus a learned start slot that is always visible, so the first bundle
    has something to attend to. The query enters the output through the residual.

    forward(view: View (S, B, T, d) x2, response (B, T) long, bundle_group (B, T) long,
            valid (B, T) bool) -> h (S, B, T, d)
    """

    def __init__(self, *, d: int, n_heads: int, n_layers: int, dropout: float, max_len: int, stacks: int = 1) -> None:
        super().__init__()
        self.max_len = max_len
        self.n_heads = n_heads
        # Forgetting (AKT's monotonic attention, simplified): each head's scores fall by
        # softplus(decay_h) * log(1 + bundles between query and key) + softplus(decay_time_h) *
        # log(1 + hours between them); learnt per head, head 0 starts without decay.
        decay = [-8.0] + [math.log(math.expm1(0.5 * 2.0 ** -h)) for h in range(n_heads - 1)]      # softplus^-1
        self.decay = nn.ParameterList(nn.Parameter(torch.tensor(decay)) for _ in range(stacks))       # S x (H,)
        self.decay_time = nn.ParameterList(nn.Parameter(torch.tensor(decay)) for _ in range(stacks))  # S x (H,)
        self.position = nn.ModuleList(nn.Embedding(max_len, d) for _ in range(stacks))
        self.by_response = StackedLinear(stacks=stacks, d_in=d, d_out=2 * d)   # [wrong | right] projections of the memory
        self.start = nn.ParameterList(nn.Parameter(torch.randn(1, 1, d) * 0.02) for _ in range(stacks))
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d=d, n_heads=n_heads, dropout=dropout, cross=True, stacks=stacks) for _ in range(n_layers)
        )
        self.ln_out = StackedLayerNorm(stacks=stacks, d=d)

    def forward(self, view: View, response: Tensor, bundle_group: Tensor, valid: Tensor, hours: Tensor | None = None,
                needed: Tensor | None = None) -> Tensor:
        """view.memory may be (S, B, T, d) or (1, B, T, d): one joint memory read by every stack.
        hours (B, T) float: when each step was shown (None: no time passes, only steps).
        needed (B, T) bool: the steps whose encoding is read (None: all). Only the spans of
        whole QUERY_GRAIN steps that hold them are encoded; the other steps come out as zeros
        (_query_groups)."""
        S, B, T, d = view.query.shape
        if T > self.max_len:
            raise BadInput(f"EdNet window of {T} steps is longer than the model's max_len {self.max_len}; "
                           "use the data.max_len the model was built with")
        position = stack_copies([table.weight[:T] for table in self.position]).unsqueeze(1)   # (S, 1, T, d)
        x = self.dropout(view.query + position)                                           # (S, B, T, d)
        wrong, right = self.by_response(view.memory.expand(S, B, T, d)).chunk(2, dim=-1)  # 2 x (S, B, T, d)
        memory = torch.where(response.unsqueeze(-1) == 1, right, wrong) + position
        memory = torch.where(valid.unsqueeze(-1), memory, 0.0)                 # padding carries nothing (not even NaN)
        start = stack_copies(list(self.start)).expand(S, B, 1, d)
        memory = torch.cat([start, self.dropout(memory)], dim=2)                          # (S, B, 1+T, d)
        visible = earlier_bundles(bundle_group, valid)                                    # (B, T, T)
        visible = torch.cat([visible.new_ones(B, T, 1), visible], dim=-1)                 # (B, T, 1+T): start slot
        groups = _query_groups(needed, QUERY_GRAIN) if needed is not None else None
        if groups is None or (len(groups) == 1 and len(groups[0][0]) == B and groups[0][1:] == (0, T)):
            return self._encode(x, memory, self._bias(visible, bundle_group, hours))
        h = x.new_zeros(S, B, T, d)
        for rows, j0, j1 in groups:   # the windows whose needed steps lie in [j0, j1)
            group_hours = None if hours is None else hours.index_select(0, rows)
            bias = self._bias(visible.index_select(0, rows)[:, j0:j1], bundle_group.index_select(0, rows), group_hours,
                              queries=slice(j0, j1))
            h[:, rows, j0:j1] = self._encode(x.index_select(1, rows)[:, :, j0:j1], memory.index_select(1, rows), bias)
        return h

    def _encode(self, x: Tensor, memory: Tensor, bias: Tensor) -> Tensor:
        """x (S, n, L, d) queries, memory (S | 1, n, 1+T, d), bias (n, S*H, L, 1+T) -> (S, n, L, d)."""
        for block in self.blocks:
            x = block(x, bias, context=memory)
        return self.ln_out(x)

    def _bias(self, visible: Tensor, bundle_group: Tensor, hours: Tensor | None, queries: slice = slice(None)) -> Tensor:
        """(B, Lq, 1+T) bool, (B, T) x2 -> (B, S*H, Lq, 1+T): the additive attention bias of the
        query steps `queries` (all T by default). Each head's score of key t' falls by its rates
        times log(1 + bundles) and log(1 + hours) between t' and query t (0 for the start slot);
        -inf where t' is not visible.

        Written by one matmul of the (S*H, clocks) rates with the (clocks, Lq(1+T)) distances of
        each learner: at eval batch sizes the bias is the largest tensor of the core, and a
        multiply and an add per clock over it took a quarter of the forward pass.
        """

        def log_distance(x: Tensor) -> Tensor:                                   # (B, T) -> (B, Lq(1+T))
            gap = (x[:, queries].unsqueeze(2) - x.unsqueeze(1)).float().clamp(min=0)   # keys after t: masked anyway
            return F.pad(torch.log1p(gap), (1, 0)).flatten(1)

        clocks, rates = [log_distance(bundle_group)], [torch.cat(list(self.decay))]
        if hours is not None:
            clocks.append(log_distance(hours))
            rates.append(torch.cat(list(self.decay_time)))
        fall = -F.softplus(torch.stack(rates, dim=1))                            # (S*H, clocks)
        bias = torch.matmul(fall, torch.stack(clocks, dim=1))                    # (B, S*H, Lq(1+T))
        B, Lq, T1 = visible.shape
        return bias.view(B, -1, Lq, T1).masked_fill_(~visible.unsqueeze(1), float("-inf"))


# Needed steps are encoded in spans of whole QUERY_GRAIN steps: finer spans skip more unread
# steps but split a batch into more groups (more, smaller kernel calls).
QUERY_GRAIN = 10


def _query_groups(needed: Tensor, grain: int) -> list[tuple[Tensor, int, int]]:
    """(B, T) bool -> [(rows (n,) long, j0, j1)]: each window with a needed step, grouped with
    the windows whose needed steps span the same grain-aligned steps [j0, j1).

    A query's encoding depends on its own step and the memory only (the memory is not updated
    by the blocks), so encoding just these steps gives them exactly what encoding all would.
    Evaluation needs the scored steps alone: an EdNet window's context steps were scored in the
    window before, and its padding never; together half of an evaluation batch's steps.
    """
    B, T = needed.shape
    has = needed.any(1)
    first = needed.int().argmax(1)                                               # (B,) first needed step
    last = T - 1 - needed.flip(1).int().argmax(1)                                # (B,) last needed step
    j0 = torch.div(first, grain, rounding_mode="floor") * grain
    j1 = (torch.div(last, grain, rounding_mode="floor") * grain + grain).clamp(max=T)
    key = torch.where(has, j0 * (T + 1) + j1, -1)
    groups = []
    for k in key.unique().tolist():
        if k >= 0:
            groups.append(((key == k).nonzero().squeeze(1), k // (T + 1), k % (T + 1)))
    return groups
