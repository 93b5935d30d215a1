"""Generic building blocks: nothing here knows a dataset or a modality.

Every attention block is "stacked": it holds S independent copies of its weights (one per
EdNet modality) and runs them in one batched computation on (S, B, L, d) tensors, so the
M modality encoders of a model take one sequence of kernel calls, not M. S = 1 is the
plain block (single:<m>, early, OULAD, the fusions). Each copy is an ordinary nn.Linear /
nn.LayerNorm, so the initialisation and the optimizer's decay rules (weights decay, biases
and norms do not) see ordinary parameters; the copies are stacked at call time (cheap:
they are small).

- dropout / Dropout: inverted dropout, faster than torch's on CPU.
- attention_bias: a bool visibility mask -> the additive mask every head shares.
- StackedLinear, StackedLayerNorm, Attention, FeedForward, Block: the transformer parts.
- Head, mlp: the small MLPs of the fusions (the task head, DSRSD-Net's maps).
- init_small_: the nanoGPT-style init of the encoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsrsd_cli.errors import BadInput


def stack_copies(tensors: list[Tensor]) -> Tensor:
    """(S, ...) from S tensors: a view when S = 1, else a copy."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout. On CPU, torch's dropout draws one random number per element
    (bernoulli_), which made dropout a large share of a small model's step; this draws
    one 64-bit number per four elements and compares each 16-bit quarter with p (about
    3x faster). Same distribution up to p's 1/65536 resolution; elsewhere F.dropout."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= round(p * 65536) - 32768     # P(keep) = 1 - p
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` above."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def attention_bias(visible: Tensor) -> Tensor:
    """bool (B, Lq, Lk) -> (B, 1, Lq, Lk) float: 0 where visible, -inf elsewhere.

    Built once per batch and shared by every head, layer and modality. An additive float
    mask lets scaled_dot_product_attention use its fused (flash) kernel on CPU too.
    """
    bias = torch.zeros(visible.shape, dtype=torch.float32, device=visible.device)
    return bias.masked_fill_(~visible, float("-inf")).unsqueeze(1)


class StackedLinear(nn.Module):
    """S independent nn.Linear(d_in, d_out): x (S, ..., d_in) -> (S, ..., d_out), one batched
    matmul. With S = 1 it is the plain nn.Linear: any (..., d_in)."""

    def __init__(self, *, stacks: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.each = nn.ModuleList(nn.Linear(d_in, d_out) for _ in range(stacks))

    def forward(self, x: Tensor) -> Tensor:
        if len(self.each) == 1:
            return self.each[0](x)
        weight = stack_copies([linear.weight for linear in self.each])             # (S, d_out, d_in)
        bias = stack_copies([linear.bias for linear in self.each])                 # (S, d_out)
        y = torch.baddbmm(bias.unsqueeze(1), x.reshape(x.shape[0], -1, x.shape[-1]), weight.transpose(1, 2))
        return y.view(*x.shape[:-1], -1)


class StackedLayerNorm(nn.Module):
    """S independent nn.LayerNorm(d): x (S, ..., d) -> (S, ..., d). With S = 1: any (..., d)."""

    def __init__(self, *, stacks: int, d: int) -> None:
        super().__init__()
        self.each = nn.ModuleList(nn.LayerNorm(d) for _ in range(stacks))

    def forward(self, x: Tensor) -> Tensor:
        if len(self.each) == 1:
            return self.each[0](x)
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)               # (S, 1.., d)
        weight = torch.stack([norm.weight for norm in self.each]).view(shape)
        bias = torch.stack([norm.bias for norm in self.each]).view(shape)
        return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:]), weight)


class Attention(nn.Module):
    """S independent multi-head attentions, each of its x over its context, in ONE call.

    x (S, B, Lq, d), context (S, B, Lk, d), bias additive, (B, 1, Lq, Lk) (attention_bias: the
    same for every head) or (B, S*H, Lq, Lk) (one per head, e.g. the EdNet core's forgetting)
    -> (S, B, Lq, d). The S x H heads run as the heads of one
    attention. Every query row must see at least one key (callers add an always-visible
    slot). Regularised by dropout on the output; none on the attention weights, which
    would force the unfused kernel and materialise B x H x Lq x Lk random numbers.
    """

    def __init__(self, *, d: int, n_heads: int, dropout: float, stacks: int = 1) -> None:
        super().__init__()
        if d % n_heads:
            raise BadInput(f"model.d_model = {d} is not divisible by model.n_heads = {n_heads}; pick sizes that divide")
        self.n_heads = n_heads
        self.to_q = StackedLinear(stacks=stacks, d_in=d, d_out=d)
        self.to_kv = StackedLinear(stacks=stacks, d_in=d, d_out=2 * d)
        self.proj = StackedLinear(stacks=stacks, d_in=d, d_out=d)
        self.resid_dropout = Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor, bias: Tensor) -> Tensor:
        S, B, Lq, d = x.shape
        Lk, H = context.shape[2], self.n_heads
        q = self.to_q(x).view(S, B, Lq, H, d // H).permute(1, 0, 3, 2, 4).reshape(B, S * H, Lq, d // H)
        kv = self.to_kv(context).view(S, B, Lk, 2, H, d // H).permute(3, 1, 0, 4, 2, 5)      # (2, B, S, H, Lk, dh)
        k, v = kv.reshape(2, B, S * H, Lk, d // H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))           # (B, S*H, Lq, dh)
        y = y.view(B, S, H, Lq, d // H).permute(1, 0, 3, 2, 4).reshape(S, B, Lq, d)
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Sequential):
    """(S, …, d) -> (S, …, d): Linear -> GELU -> Linear -> Dropout, S independent copies."""

    def __init__(self, *, d: int, hidden: int, dropout: float, stacks: int = 1) -> None:
        super().__init__(StackedLinear(stacks=stacks, d_in=d, d_out=hidden), nn.GELU(),
                         StackedLinear(stacks=stacks, d_in=hidden, d_out=d), Dropout(dropout))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x), LN(context)); x + MLP(LN(x)).

    cross=False: self-attention (context is x). x (S, B, Lq, d), bias (B, 1, Lq, Lk) -> (S, B, Lq, d).
    """

    def __init__(self, *, d: int, n_heads: int, dropout: float, cross: bool, stacks: int = 1) -> None:
        super().__init__()
        self.ln_x = StackedLayerNorm(stacks=stacks, d=d)
        self.ln_context = StackedLayerNorm(stacks=stacks, d=d) if cross else None
        self.attn = Attention(d=d, n_heads=n_heads, dropout=dropout, stacks=stacks)
        self.ln_mlp = StackedLayerNorm(stacks=stacks, d=d)
        self.mlp = FeedForward(d=d, hidden=4 * d, dropout=dropout, stacks=stacks)

    def forward(self, x: Tensor, bias: Tensor, context: Tensor | None = None) -> Tensor:
        x_norm = self.ln_x(x)
        context_norm = x_norm if self.ln_context is None else self.ln_context(context)
        x = x + self.attn(x_norm, context_norm, bias)
        return x + self.mlp(self.ln_mlp(x))


class Head(nn.Sequential):
    """Task head: (U, d_in) -> (U, n_outputs). LN -> Linear -> GELU -> Dropout -> Linear."""

    def __init__(self, *, d_in: int, d: int, n_outputs: int, dropout: float) -> None:
        super().__init__(nn.LayerNorm(d_in), nn.Linear(d_in, d), nn.GELU(), Dropout(dropout), nn.Linear(d, n_outputs))


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """(…, d_in) -> (…, d_out): Linear -> GELU -> Linear."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


def init_small_(module: nn.Module) -> nn.Module:
    """nanoGPT-style init: N(0, 0.02) weights and embeddings, zero biases, padding rows 0."""
    for part in module.modules():
        if isinstance(part, (nn.Linear, nn.Embedding)):
            nn.init.normal_(part.weight, std=0.02)
        if isinstance(part, nn.Linear) and part.bias is not None:
            nn.init.zeros_(part.bias)
        if isinstance(part, nn.Embedding) and part.padding_idx is not None:
            with torch.no_grad():
                part.weight[part.padding_idx].zero_()
    return module
