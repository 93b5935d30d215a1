"""Per-modality encoders (docs/method.md#encoders-h_m): one modality's batch tensors -> its encoding h_m.

An encoder is an *input module* (one modality's tensors -> embeddings) followed by a
*core* that puts them in context. The cores are shared classes, so every model of a
comparison uses the same encoders at the same sizes:

- EdNet: `CausalInteractionEncoder`, SAKT-like and block-causal by bundle. Step t's
  query (what is known when the question is shown) attends to the memory (the full
  interaction, response included) of steps of EARLIER bundles only.
- OULAD: `SetEncoder`, a small transformer over one row's tokens (demographic columns,
  weeks of clicks, assessments) with an always-visible summary token.

The EdNet core and its masks live in interaction_core.py. This file holds the input modules
of both datasets, `CustomFeatures`, the OULAD set encoder and the builders: about 500 lines,
kept together because they share `NumericEmbedding`, `View` and `Tokens`.

The EdNet modalities share one core module *stacked* over them: each modality keeps its
own weights, but the M encoders run as one batched computation (`EdNetEncoders`), with
the block-causal mask built once per batch. `single:<m>` is the M = 1 case of the same
class. The `early` baseline reuses the input modules with one joint core (fusion.py).
The transformer parts they are made of and their init are generic: blocks.py.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsrsd_cli.config import ModelConfig
from dsrsd_cli.data.schema import BEHAVIOR_FEATURES
from dsrsd_cli.errors import BadInput
from dsrsd_cli.model.blocks import Block, Dropout, attention_bias, init_small_
from dsrsd_cli.model.interaction_core import CausalInteractionEncoder, View
from dsrsd_cli.types import Batch, DataSpec


class Tokens(NamedTuple):
    """OULAD tokens of one row: x (B, L, d); mask (B, L) bool, True where the token exists."""

    x: Tensor
    mask: Tensor


class Encoded(NamedTuple):
    """One modality's encoding, what the fusions consume.

    h:          (B, T, d) EdNet, one vector per step | (B, d) OULAD, one per row.
    tokens:     (B, L, d) the sequence cross-modal attention reads. EdNet: h itself (L = T);
                OULAD: [summary, token states] (L = 1 + tokens), summary == h.
    token_mask: (B, L) bool, tokens that exist (EdNet: valid steps; OULAD: summary + mask).
    """

    h: Tensor
    tokens: Tensor
    token_mask: Tensor


# ----------------------------------------------------------------------------- EdNet


def bag_mean(table: nn.Embedding, ids: Tensor) -> Tensor:
    """Mean embedding of the non-zero ids: (…, K) long -> (…, d); all-padding -> zeros.
    (embedding_bag skips the padding index without building the (…, K, d) lookups.)"""
    bags = F.embedding_bag(ids.reshape(-1, ids.shape[-1]), table.weight, mode="mean", padding_idx=0)   # (…, d) flat
    return bags.view(*ids.shape[:-1], -1)


class NumericEmbedding(nn.Module):
    """Numeric features with a presence mask -> one vector.

    x (…, F) float, present (…, F) bool -> (…, d) = bias + sum_j (x_j w_j if present else missing_j).
    A null is its own learned embedding, never a silent zero.
    """

    def __init__(self, *, n_features: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, d) * 0.02)
        self.missing = nn.Parameter(torch.randn(n_features, d) * 0.02)
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        x = torch.where(present, x, 0.0)                 # nulls may arrive as NaN
        return x @ self.weight + (~present).to(x.dtype) @ self.missing + self.bias


def _size(table: dict[str, int], key: str, where: str = "vocab") -> int:
    if key not in table:
        raise BadInput(f"data spec has no {where} entry {key!r}; re-run `dsrsd prepare` with this version of dsrsd")
    return int(table[key])


class CustomFeatures(nn.Module):
    """The `prepare --dataset custom` features of one modality (docs/data.md#bring-your-own-logs).

    inputs[modality]: custom_cat (B, T, Kc) long (0 unknown), custom_num (B, T, Kn) float,
    custom_num_present (B, T, Kn) bool; in each, the features known BEFORE the answer come
    first (spec.dims "<m>.custom_cat_before" / "<m>.custom_num_before"), then those known only
    AFTER it. forward -> (before, after), each (B, T, d): `before` may join the query, `after`
    only the memory (as BehaviorView's "post" features). Built only when the spec has such
    features, so EdNet/OULAD models keep their exact parameters.
    """

    def __init__(self, *, cat_sizes: tuple[int, ...], cat_before: int, n_num: int, num_before: int, d: int) -> None:
        super().__init__()
        self.cat_before, self.num_before = cat_before, num_before
        offsets = torch.tensor((0, *cat_sizes[:-1])).cumsum(0) if cat_sizes else torch.zeros(0, dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)
        self.categories = nn.Embedding(max(sum(cat_sizes), 1), d)
        self.pre = NumericEmbedding(n_features=num_before, d=d) if num_before else None
        self.post = NumericEmbedding(n_features=n_num - num_before, d=d) if n_num - num_before else None
        self.n_cat = len(cat_sizes)

    @classmethod
    def from_spec(cls, spec: DataSpec, modality: str, *, d: int) -> "CustomFeatures | None":
        n_cat, n_num = spec.dims.get(f"{modality}.custom_cat", 0), spec.dims.get(f"{modality}.custom_num", 0)
        if not n_cat and not n_num:
            return None
        sizes = tuple(_size(spec.vocab, f"{modality}.custom_cat.{j}") for j in range(n_cat))
        return cls(cat_sizes=sizes, cat_before=int(spec.dims.get(f"{modality}.custom_cat_before", 0)), n_num=int(n_num),
                   num_before=int(spec.dims.get(f"{modality}.custom_num_before", 0)), d=d)

    def forward(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        before: Tensor | float = 0.0
        after: Tensor | float = 0.0
        if self.n_cat:
            codes = x["custom_cat"]                                            # (B, T, Kc)
            e = self.categories(codes + self.offsets) * (codes > 0).unsqueeze(-1)   # unknown -> nothing
            before = e[..., : self.cat_before, :].sum(dim=-2)
            after = e[..., self.cat_before :, :].sum(dim=-2)
        if self.pre is not None or self.post is not None:
            num, present = x["custom_num"], x["custom_num_present"]          # (B, T, Kn)
            k = self.num_before
            if self.pre is not None:
                before = before + self.pre(num[..., :k], present[..., :k])
            if self.post is not None:
                after = after + self.post(num[..., k:], present[..., k:])
        return before, after


def _with_custom(view: nn.Module, spec: DataSpec, modality: str, d: int) -> nn.Module:
    """Attach CustomFeatures to a View module when the spec has custom features for `modality`
    (created after the view's own layers, so nothing else changes)."""
    custom = CustomFeatures.from_spec(spec, modality, d=d)
    if custom is not None:
        view.custom = custom
    return view


def _add_custom(module: nn.Module, x: dict[str, Tensor], query: Tensor, memory: Tensor) -> View:
    """query + before; memory + before + after (after: known only once the step is answered)."""
    custom = getattr(module, "custom", None)
    if custom is None:
        return View(query=query, memory=memory)
    before, after = custom(x)
    return View(query=query + before, memory=memory + before + after)


class ItemView(nn.Module):
    """item: question and bundle ids. Known when shown, so query and memory are the same."""

    def __init__(self, *, n_questions: int, n_bundles: int, d: int) -> None:
        super().__init__()
        self.question = nn.Embedding(n_questions, d, padding_idx=0)
        self.bundle = nn.Embedding(n_bundles, d, padding_idx=0)
        # Rasch-style difficulty (AKT): one scalar per question along a shared direction. A
        # scalar is learnt from few answers, so a rare question gets a usable difficulty
        # long before its d-sized embedding is trained.
        self.difficulty = nn.Embedding(n_questions, 1, padding_idx=0)
        self.difficulty_direction = nn.Linear(1, d, bias=False)

    @classmethod
    def from_spec(cls, spec: DataSpec, *, d: int) -> "ItemView":
        return _with_custom(cls(n_questions=_size(spec.vocab, "item.question"),
                                n_bundles=_size(spec.vocab, "item.bundle"), d=d), spec, "item", d)

    def forward(self, batch: Batch) -> View:
        x = batch.inputs["item"]
        q = x["question"]
        e = self.question(q) + self.bundle(x["bundle"]) + self.difficulty_direction(self.difficulty(q))   # (B, T, d)
        return _add_custom(self, x, e, e)


class ContentView(nn.Module):
    """content: TOEIC part, bag of skill tags, and the lectures studied before the bundle.

    Lecture tags share the question tags' table (same skills) through their own projection.
    """

    def __init__(self, *, n_parts: int, n_tags: int, d: int) -> None:
        super().__init__()
        self.part = nn.Embedding(n_parts, d, padding_idx=0)
        self.tag = nn.Embedding(n_tags, d, padding_idx=0)
        self.lecture_part = nn.Embedding(n_parts, d, padding_idx=0)
        self.lecture_tags = nn.Linear(d, d)

    @classmethod
    def from_spec(cls, spec: DataSpec, *, d: int) -> "ContentView":
        return _with_custom(cls(n_parts=_size(spec.vocab, "content.part"), n_tags=_size(spec.vocab, "content.tag"), d=d),
                            spec, "content", d)

    def forward(self, batch: Batch) -> View:
        x = batch.inputs["content"]
        e = (self.part(x["part"]) + bag_mean(self.tag, x["tags"])
             + self.lecture_part(x["lecture_part"]) + self.lecture_tags(bag_mean(self.tag, x["lecture_tags"])))
        return _add_custom(self, x, e, e)                               # (B, T, d)


class BehaviorView(nn.Module):
    """behavior: the "pre" features of schema.BEHAVIOR_FEATURES + platform + source form the
    query; the memory adds the "post" features (elapsed time, answer changes, explanation,
    media), which are known only after answering."""

    def __init__(self, *, n_platforms: int, n_sources: int, d: int) -> None:
        super().__init__()
        kinds = [kind for _, kind in BEHAVIOR_FEATURES]
        pre = [i for i, kind in enumerate(kinds) if kind == "pre"]
        post = [i for i, kind in enumerate(kinds) if kind == "post"]
        self.register_buffer("pre_index", torch.tensor(pre), persistent=False)
        self.register_buffer("post_index", torch.tensor(post), persistent=False)
        self.pre = NumericEmbedding(n_features=len(pre), d=d)
        self.post = NumericEmbedding(n_features=len(post), d=d)
        self.platform = nn.Embedding(n_platforms, d)
        self.source = nn.Embedding(n_sources, d)

    @classmethod
    def from_spec(cls, spec: DataSpec, *, d: int) -> "BehaviorView":
        n = _size(spec.dims, "behavior.num", where="dims")
        if n != len(BEHAVIOR_FEATURES):
            raise BadInput(f"data spec dims['behavior.num'] = {n}, this dsrsd expects {len(BEHAVIOR_FEATURES)} "
                           "behaviour features; re-run `dsrsd prepare` with this version")
        return _with_custom(cls(n_platforms=_size(spec.vocab, "behavior.platform"),
                                n_sources=_size(spec.vocab, "behavior.source"), d=d), spec, "behavior", d)

    def forward(self, batch: Batch) -> View:
        x = batch.inputs["behavior"]
        num, present = x["num"], x["num_present"]                      # (B, T, F)
        query = (self.pre(num[..., self.pre_index], present[..., self.pre_index])
                 + self.platform(x["platform"]) + self.source(x["source"]))        # (B, T, d)
        memory = query + self.post(num[..., self.post_index], present[..., self.post_index])
        return _add_custom(self, x, query, memory)


class Absent(Protocol):
    """What the encoders need of fusion.AbsentTokens: fill(modality, x (B, [T,] d), present
    (B, [T])) -> x with the modality's absent token where it is absent; its token."""

    def fill(self, modality: str, x: Tensor, present: Tensor) -> Tensor: ...

    def __getitem__(self, modality: str) -> Tensor: ...


class EdNetEncoders(nn.Module):
    """Every modality's View module + ONE CausalInteractionEncoder stacked over them.

    joint_memory=True: every modality's query reads the JOINT interaction history (the sum
    of all modalities' memories, absent ones replaced by their absent token), so each
    modality's encoding h_m is "this modality's question to everything the learner did":
    per-modality streams that see what `early`'s joint core sees. False: each reads only its
    own modality's memory (the classic per-modality encoder). Queries are filled after
    encoding (MultimodalModel), where an absent unit's h becomes its absent token anyway.

    forward(batch, present, absent, needed) -> modality -> Encoded, h (B, T, d) (views into one
    (M, B, T, d) tensor); present: modality -> (B, T) bool, None = as the batch says; needed
    (B, T) bool: the steps the caller reads (steps outside the spans that hold them come out as
    zeros; CausalInteractionEncoder), None = all.
    """

    def __init__(self, *, views: dict[str, nn.Module], core: CausalInteractionEncoder, joint_memory: bool) -> None:
        super().__init__()
        self.views = nn.ModuleDict(views)
        self.core = core
        self.joint_memory = joint_memory

    def forward(self, batch: Batch, present: dict[str, Tensor] | None = None, absent: Absent | None = None,
                needed: Tensor | None = None) -> dict[str, Encoded]:
        views = {m: view_of(batch) for m, view_of in self.views.items()}
        query = torch.stack([v.query for v in views.values()])                             # (M, B, T, d)
        memory = torch.stack([v.memory for v in views.values()])                           # (M, B, T, d)
        if self.joint_memory:   # an absent modality leaves the history its absent token (as in `early`)
            present = present or {m: batch.present[m].bool() for m in views}
            memory = sum(v.memory if absent is None else absent.fill(m, v.memory, present[m])
                         for m, v in views.items()).unsqueeze(0)                           # (1, B, T, d)
        h = self.core(View(query, memory), batch.context["response"], batch.context["bundle_group"], batch.valid,
                      batch.context.get("hours"), needed=needed)
        return {m: Encoded(h=h[i], tokens=h[i], token_mask=batch.valid) for i, m in enumerate(self.views)}


# ----------------------------------------------------------------------------- OULAD


class SetEncoder(nn.Module):
    """Transformer over one row's tokens with a learned summary token ([CLS]).

    The summary is always visible, so a row with no tokens (nothing before the cutoff)
    still gets a finite encoding. Masked tokens never reach a real one.
    forward(Tokens x (B, L, d), mask (B, L)) -> summary (B, d), states (B, 1+L, d), mask (B, 1+L)
    """

    def __init__(self, *, d: int, n_heads: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        self.summary = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d=d, n_heads=n_heads, dropout=dropout, cross=False) for _ in range(n_layers))
        self.ln_out = nn.LayerNorm(d)

    def forward(self, tokens: Tokens) -> tuple[Tensor, Tensor, Tensor]:
        B, L, d = tokens.x.shape
        x = torch.where(tokens.mask.unsqueeze(-1), tokens.x, 0.0)                   # (B, L, d)
        x = torch.cat([self.summary.expand(B, 1, d), self.dropout(x)], dim=1)      # (B, 1+L, d)
        mask = torch.cat([tokens.mask.new_ones(B, 1), tokens.mask], dim=1)         # (B, 1+L)
        bias = attention_bias(mask.unsqueeze(1))                                   # keys: (B, 1, 1, 1+L)
        x = x.unsqueeze(0)                                                         # one stack: (1, B, 1+L, d)
        for block in self.blocks:
            x = block(x, bias)
        x = self.ln_out(x[0])
        return x[:, 0], x, mask


class DemographicsTokens(nn.Module):
    """demographics: one token per categorical column (its own codes) and per numeric
    column (value * w_j + b_j, or a learned missing token) - the FT-Transformer tokenizer."""

    def __init__(self, *, cat_sizes: tuple[int, ...], n_num: int, d: int) -> None:
        super().__init__()
        if not cat_sizes and not n_num:
            raise BadInput("data spec has no demographics columns (cat_sizes and dims['demographics.num'] are empty)")
        offsets = torch.tensor((0, *cat_sizes[:-1])).cumsum(0) if cat_sizes else torch.zeros(0, dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)
        self.categories = nn.Embedding(max(sum(cat_sizes), 1), d)
        self.column = nn.Parameter(torch.randn(len(cat_sizes), d) * 0.02)
        self.num_weight = nn.Parameter(torch.randn(n_num, d) * 0.02)
        self.num_bias = nn.Parameter(torch.randn(n_num, d) * 0.02)
        self.num_missing = nn.Parameter(torch.randn(n_num, d) * 0.02)

    @classmethod
    def from_spec(cls, spec: DataSpec, *, d: int) -> "DemographicsTokens":
        return cls(cat_sizes=tuple(spec.cat_sizes), n_num=_size(spec.dims, "demographics.num", where="dims"), d=d)

    def forward(self, batch: Batch) -> Tokens:
        x = batch.inputs["demographics"]
        cat = self.categories(x["cat"] + self.offsets) + self.column              # (B, C, d)
        present = x["num_present"].unsqueeze(-1)                                   # (B, N, 1)
        value = torch.where(present, x["num"].unsqueeze(-1), 0.0)
        num = torch.where(present, value * self.num_weight + self.num_bias, self.num_missing)  # (B, N, d)
        tokens = torch.cat([cat, num], dim=1)                                      # (B, C+N, d)
        return Tokens(tokens, tokens.new_ones(tokens.shape[:2], dtype=torch.bool))


class ClickTokens(nn.Module):
    """clicks: one token per week before the cutoff, log-clicks per activity type -> d."""

    def __init__(self, *, n_weeks: int, n_types: int, d: int) -> None:
        super().__init__()
        self.clicks = nn.Linear(n_types, d)
        self.week = nn.Embedding(n_weeks, d)

    @classmethod
    def from_spec(cls, spec: DataSpec, *, d: int) -> "ClickTokens":
        return cls(n_weeks=_size(spec.dims, "clicks.weeks", where="dims"),
                   n_types=_size(spec.dims, "clicks.types", where="dims"), d=d)

    def forward(self, batch: Batch) -> Tokens:
        x = batch.inputs["clicks"]
        weeks, mask = x["weeks"], x["week_mask"]                        # (B, W, A), (B, W)
        weeks = torch.where(mask.unsqueeze(-1), weeks, 0.0)           # after the cutoff: nothing
        return Tokens(self.clicks(weeks) + self.week.weight[: weeks.shape[1]], mask)


class AssessmentTokens(nn.Module):
    """assessments: one token per assessment due before the cutoff: type + numeric columns + slot."""

    def __init__(self, *, n_types: int, n_slots: int, n_num: int, d: int) -> None:
        super().__init__()
        self.kind = nn.Embedding(n_types, d, padding_idx=0)
        self.num = nn.Linear(n_num, d)
        self.slot = nn.Embedding(n_slots, d)

    @classmethod
    def from_spec(cls, spec: DataSpec, *, d: int) -> "AssessmentTokens":
        return cls(n_types=_size(spec.vocab, "assessments.type"), n_slots=_size(spec.dims, "assessments.len", where="dims"),
                   n_num=_size(spec.dims, "assessments.num", where="dims"), d=d)

    def forward(self, batch: Batch) -> Tokens:
        x = batch.inputs["assessments"]
        mask = x["seq_mask"]                                            # (B, S)
        num = torch.where(mask.unsqueeze(-1), x["num"], 0.0)           # (B, S, F)
        tokens = self.kind(x["type"]) + self.num(num) + self.slot.weight[: mask.shape[1]]
        return Tokens(tokens, mask)


class OuladEncoder(nn.Module):
    """inputs (a Tokens module) + SetEncoder. forward(batch) -> Encoded, h (B, d)."""

    def __init__(self, *, inputs: nn.Module, core: SetEncoder) -> None:
        super().__init__()
        self.inputs = inputs
        self.core = core

    def forward(self, batch: Batch) -> Encoded:
        summary, states, mask = self.core(self.inputs(batch))
        return Encoded(h=summary, tokens=states, token_mask=mask)


class OuladEncoders(nn.Module):
    """One OuladEncoder per modality (their token counts differ, so they are not stacked).

    joint_memory=True: each modality's encoder reads its own tokens AND the other present
    modalities' tokens, each led by a learned marker of their modality (as `early`'s one
    sequence is built; an absent modality contributes only its absent token): the set
    analogue of EdNet's joint interaction memory. Each encoder keeps its own weights and
    summary token, so h_m is still "modality m's reading" of the row.
    forward(batch, present, absent, needed) -> modality -> Encoded, h (B, d); present: modality ->
    (B,) bool; needed: unused (a row is one unit, always read).
    """

    def __init__(self, *, encoders: dict[str, "OuladEncoder"], d: int, joint_memory: bool) -> None:
        super().__init__()
        self.each = nn.ModuleDict(encoders)
        self.joint_memory = joint_memory
        self.marker = nn.ParameterDict({m: nn.Parameter(torch.randn(d) * 0.02) for m in encoders}) if joint_memory else None

    def forward(self, batch: Batch, present: dict[str, Tensor] | None = None, absent: Absent | None = None,
                needed: Tensor | None = None) -> dict[str, Encoded]:
        if not self.joint_memory:
            return {m: encoder(batch) for m, encoder in self.each.items()}
        present = present or {m: batch.present[m].bool() for m in self.each}
        own = {m: encoder.inputs(batch) for m, encoder in self.each.items()}          # modality -> Tokens (B, L_m, d)
        out = {}
        for m, encoder in self.each.items():
            xs, masks = [own[m].x], [own[m].mask]
            for b, tokens in own.items():
                if b == m:
                    continue
                here = present[b]                                                    # (B,)
                lead = self.marker[b].expand(here.shape[0], -1)
                lead = lead if absent is None else absent.fill(b, lead, here)        # (B, d)
                xs += [lead.unsqueeze(1), tokens.x + self.marker[b]]
                masks += [here.new_ones(here.shape[0], 1), tokens.mask & here.unsqueeze(1)]
            summary, states, mask = encoder.core(Tokens(torch.cat(xs, dim=1), torch.cat(masks, dim=1)))
            L = own[m].x.shape[1]                                                    # cross-modal attention reads m's own tokens
            out[m] = Encoded(h=summary, tokens=states[:, : 1 + L], token_mask=mask[:, : 1 + L])
        return out


# ----------------------------------------------------------------------------- factories

INPUTS: dict[str, type[nn.Module]] = {
    "item": ItemView,
    "content": ContentView,
    "behavior": BehaviorView,
    "demographics": DemographicsTokens,
    "clicks": ClickTokens,
    "assessments": AssessmentTokens,
}


def _ednet_core(spec: DataSpec, cfg: ModelConfig, stacks: int) -> nn.Module:
    return CausalInteractionEncoder(d=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers, dropout=cfg.dropout,
                                    max_len=max(spec.max_len, 1), stacks=stacks)


def _oulad_core(spec: DataSpec, cfg: ModelConfig, stacks: int) -> nn.Module:
    if stacks != 1:
        raise ValueError("OULAD cores are not stacked: one SetEncoder per modality")
    return SetEncoder(d=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers, dropout=cfg.dropout)


def _ednet_encoders(spec: DataSpec, modalities: Sequence[str], cfg: ModelConfig) -> nn.Module:
    views = {m: build_inputs(spec, m, d=cfg.d_model) for m in modalities}
    return EdNetEncoders(views=views, core=build_core(spec, cfg, stacks=len(views)), joint_memory=cfg.joint_memory)


def _oulad_encoders(spec: DataSpec, modalities: Sequence[str], cfg: ModelConfig) -> nn.Module:
    encoders = {m: OuladEncoder(inputs=build_inputs(spec, m, d=cfg.d_model), core=build_core(spec, cfg)) for m in modalities}
    return OuladEncoders(encoders=encoders, d=cfg.d_model, joint_memory=cfg.joint_memory and len(modalities) > 1)


CORES = {"ednet": _ednet_core, "oulad": _oulad_core}
ENCODERS = {"ednet": _ednet_encoders, "oulad": _oulad_encoders}


def build_inputs(spec: DataSpec, modality: str, *, d: int) -> nn.Module:
    """The input module of one modality (a View module for EdNet, a Tokens module for OULAD)."""
    if modality not in INPUTS:
        raise BadInput(f"no encoder for modality {modality!r}; known: {', '.join(INPUTS)}")
    return init_small_(INPUTS[modality].from_spec(spec, d=d))


def build_core(spec: DataSpec, cfg: ModelConfig, *, stacks: int = 1) -> nn.Module:
    """The dataset's contextual core: CausalInteractionEncoder (EdNet; `stacks` modalities
    at once) or SetEncoder (OULAD)."""
    if spec.dataset not in CORES:
        raise BadInput(f"unknown dataset {spec.dataset!r}; choose one of {', '.join(CORES)}")
    return init_small_(CORES[spec.dataset](spec, cfg, stacks))


def build_encoders(spec: DataSpec, modalities: Sequence[str], cfg: ModelConfig) -> nn.Module:
    """The encoders of `modalities`: forward(batch) -> modality -> Encoded."""
    if spec.dataset not in ENCODERS:
        raise BadInput(f"unknown dataset {spec.dataset!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[spec.dataset](spec, modalities, cfg)
