"""Model registry (DESIGN §4): model name -> builder. `dsrsd train --model NAME` picks one.

A builder composes encoders (encoders.py) and a fusion (fusion.py) for a DataSpec, so
every baseline shares DSRSD-Net's encoder classes and sizes. A family with variants,
like `single:<modality>`, registers once with a function listing its variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from dsrsd_cli.config import LossConfig, ModelConfig
from dsrsd_cli.errors import BadInput
from dsrsd_cli.model.encoders import build_core, build_encoders, build_inputs
from dsrsd_cli.model.fusion import (
    EARLY, CoAttentionFusion, ConcatFusion, DSRSDFusion, LateFusion, MultimodalModel,
)
from dsrsd_cli.types import DataSpec

Builder = Callable[[DataSpec, ModelConfig, LossConfig, "str | None"], nn.Module]
# How a model learns: "neural" by the gradient loop (engine/train.py), "fitted" by its own
# fit (engine/fit.py: the gbdt reference). Both write the same run folder.
KINDS = ("neural", "fitted")


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    variants: Callable[[DataSpec], Sequence[str]] | None
    plain: bool
    kind: str


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, variants: Callable[[DataSpec], Sequence[str]] | None = None, plain: bool = False,
             kind: str = "neural"):
    """Decorator: register `builder(spec, model_cfg, loss_cfg, variant)` under `name`.

    With `variants`, the names are f"{name}:{v}" for v in variants(spec), plus `name`
    itself (variant None) when `plain`.
    """
    assert kind in KINDS, kind

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = _Entry(builder, variants, plain, kind)
        return builder
    return decorate


def model_names(spec: DataSpec, kind: str | None = None) -> list[str]:
    """Every model name valid for this data (of one `kind` if given), e.g. dsrsd,
    dsrsd:no-align, ..., early, ..., single:item, gbdt. The one answer to "is this a model"."""
    names: list[str] = []
    for name, entry in _REGISTRY.items():
        if kind is not None and entry.kind != kind:
            continue
        names += [name] if entry.variants is None or entry.plain else []
        names += [] if entry.variants is None else [f"{name}:{v}" for v in entry.variants(spec)]
    return names


def model_kind(name: str) -> str:
    """"neural" or "fitted" for a registered model name (the family decides); unknown -> "neural",
    which build_model then refuses with the list of valid names."""
    entry = _REGISTRY.get(name.partition(":")[0])
    return entry.kind if entry is not None else "neural"


def build_model(spec: DataSpec, model_cfg: ModelConfig, loss_cfg: LossConfig) -> nn.Module:
    """The model named by model_cfg.name, sized for `spec`. Unknown name -> BadInput."""
    valid = model_names(spec)
    if model_cfg.name not in valid:
        raise BadInput(f"unknown model {model_cfg.name!r} for {spec.dataset}; choose one of {', '.join(valid)} "
                       "(--model or --set model.name=...)")
    if model_cfg.d_model % model_cfg.n_heads:
        raise BadInput(f"model.d_model = {model_cfg.d_model} is not divisible by model.n_heads = {model_cfg.n_heads}")
    family, _, variant = model_cfg.name.partition(":")
    return _REGISTRY[family].builder(spec, model_cfg, loss_cfg, variant or None)


def _multimodal(spec: DataSpec, cfg: ModelConfig, fusion: nn.Module, modalities: Sequence[str]) -> MultimodalModel:
    return MultimodalModel(encoders=build_encoders(spec, modalities, cfg), modalities=tuple(modalities), fusion=fusion,
                           d=cfg.d_model, modality_dropout=cfg.modality_dropout)


# The paper's ablation table: `dsrsd:<name>` is DSRSD-Net without these mechanisms (fusion.MECHANISMS).
ABLATIONS: dict[str, frozenset[str]] = {
    "no-align": frozenset({"align"}),       # no InfoNCE / regression alignment terms
    "no-decorr": frozenset({"decorr"}),     # no decorrelation (VICReg) term
    "no-orth": frozenset({"orth"}),         # no shared-private orthogonality term
    "no-private": frozenset({"private"}),   # private streams closed: consensus only
    "no-shared": frozenset({"shared"}),     # consensus closed: private streams only
    "mean-gate": frozenset({"gate"}),       # plain mean of the open streams instead of the gate
}


@register("dsrsd", variants=lambda spec: list(ABLATIONS), plain=True)
def _dsrsd(spec: DataSpec, cfg: ModelConfig, loss: LossConfig, variant: str | None) -> nn.Module:
    fusion = DSRSDFusion(
        modalities=spec.modalities, d=cfg.d_model, k=cfg.k_shared, n_outputs=spec.n_outputs, dropout=cfg.dropout,
        aux_rows=loss.aux_rows, tau=loss.tau, orth_private_pairs=loss.orth_private_pairs,
        private_dropout=cfg.private_dropout, without=ABLATIONS[variant] if variant else frozenset(),
    )
    return _multimodal(spec, cfg, fusion, spec.modalities)


@register("early")
def _early(spec: DataSpec, cfg: ModelConfig, loss: LossConfig, variant: str | None) -> nn.Module:
    core = build_core(spec, cfg)
    return EARLY[spec.dataset](
        inputs={m: build_inputs(spec, m, d=cfg.d_model) for m in spec.modalities}, core=core, d=cfg.d_model,
        n_outputs=spec.n_outputs, dropout=cfg.dropout, modality_dropout=cfg.modality_dropout,
    )


@register("late")
def _late(spec: DataSpec, cfg: ModelConfig, loss: LossConfig, variant: str | None) -> nn.Module:
    fusion = LateFusion(modalities=spec.modalities, d=cfg.d_model, n_outputs=spec.n_outputs, dropout=cfg.dropout)
    return _multimodal(spec, cfg, fusion, spec.modalities)


@register("concat")
def _concat(spec: DataSpec, cfg: ModelConfig, loss: LossConfig, variant: str | None) -> nn.Module:
    fusion = ConcatFusion(modalities=spec.modalities, d=cfg.d_model, n_outputs=spec.n_outputs, dropout=cfg.dropout)
    return _multimodal(spec, cfg, fusion, spec.modalities)


@register("coattn")
def _coattn(spec: DataSpec, cfg: ModelConfig, loss: LossConfig, variant: str | None) -> nn.Module:
    fusion = CoAttentionFusion(
        modalities=spec.modalities, d=cfg.d_model, n_heads=cfg.n_heads, n_outputs=spec.n_outputs,
        dropout=cfg.dropout, per_step=spec.dataset == "ednet",
    )
    return _multimodal(spec, cfg, fusion, spec.modalities)


@register("single", variants=lambda spec: spec.modalities)
def _single(spec: DataSpec, cfg: ModelConfig, loss: LossConfig, variant: str | None) -> nn.Module:
    """One modality's encoder + head; the other modalities are ignored (SAKT-like for single:item)."""
    fusion = ConcatFusion(modalities=(variant,), d=cfg.d_model, n_outputs=spec.n_outputs, dropout=cfg.dropout)
    return _multimodal(spec, cfg, fusion, (variant,))


@register("gbdt", kind="fitted")
def _gbdt(spec: DataSpec, cfg: ModelConfig, loss: LossConfig, variant: str | None) -> nn.Module:
    """LightGBM on causal per-answer / per-registration features (model/gbdt.py); fitted by engine/fit.py."""
    from dsrsd_cli.model.gbdt import GBDTModel

    return GBDTModel(spec=spec)
