"""Model registry (docs/extending.md#adding-a-model): model name -> builder. `dsrsd train --model NAME` picks one.

A builder composes encoders (encoders.py) and a fusion (fusion.py) for a DataSpec, so
every baseline shares DSRSD-Net's encoder classes and sizes. A family with variants,
like `single:<modality>`, registers once with a function listing its variants.

    check_model(spec, name)                   the one answer to "is this a model" (BadInput if not)
    build_model(spec, cfg.model, cfg.dsrsd)   the model; only DSRSD-Net's builder reads cfg.dsrsd
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from dsrsd_cli.config import DSRSDConfig, ModelConfig
from dsrsd_cli.errors import BadInput
from dsrsd_cli.model.dsrsd_joint import DSRSDJointEdNet
from dsrsd_cli.model.encoders import build_core, build_encoders, build_inputs
from dsrsd_cli.model.fusion import (
    EARLY, CoAttentionFusion, ConcatFusion, DSRSDFusion, LateFusion, MultimodalModel,
)
from dsrsd_cli.types import DataSpec

# builder(spec, model_cfg, variant), or builder(spec, model_cfg, variant, dsrsd=DSRSDConfig) for a
# family registered with reads_dsrsd=True (DSRSD-Net only).
Builder = Callable[..., nn.Module]
# How a model learns: "neural" by the gradient loop (engine/train.py), "fitted" by its own
# fit (engine/fit.py: the gbdt reference). Both write the same run folder.
KINDS = ("neural", "fitted")


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    variants: Callable[[DataSpec], Sequence[str]] | None
    plain: bool
    kind: str
    reads_dsrsd: bool


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, variants: Callable[[DataSpec], Sequence[str]] | None = None, plain: bool = False,
             kind: str = "neural", reads_dsrsd: bool = False):
    """Decorator: register `builder(spec, model_cfg, variant)` under `name`.

    With `variants`, the names are f"{name}:{v}" for v in variants(spec), plus `name`
    itself (variant None) when `plain`. With `reads_dsrsd`, the builder also gets the
    `dsrsd` config section as the keyword `dsrsd`.
    """
    assert kind in KINDS, kind

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = _Entry(builder, variants, plain, kind, reads_dsrsd)
        return builder
    return decorate


def model_names(spec: DataSpec, kind: str | None = None) -> list[str]:
    """Every model name valid for this data (of one `kind` if given), e.g. dsrsd,
    dsrsd:no-align, ..., early, ..., single:item, gbdt. To ask "is this a model", use check_model."""
    names: list[str] = []
    for name, entry in _REGISTRY.items():
        if kind is not None and entry.kind != kind:
            continue
        names += [name] if entry.variants is None or entry.plain else []
        names += [] if entry.variants is None else [f"{name}:{v}" for v in entry.variants(spec)]
    return names


def check_model(spec: DataSpec, name: str | Sequence[str], where: str = "model.name") -> None:
    """The one answer to "is this a model": BadInput unless every name is registered for this
    data, naming the unknown ones and listing the valid ones. `where` says which option or key
    gave the names (model.name, --model, --models)."""
    valid = model_names(spec)
    unknown = [n for n in ([name] if isinstance(name, str) else name) if n not in valid]
    if unknown:
        what = f"{where} {unknown[0]!r} is not a registered model" if isinstance(name, str) else \
            f"{where}: {', '.join(repr(n) for n in unknown)} not registered"
        raise BadInput(f"{what} for {spec.dataset}; choose one of {', '.join(valid)}")


def model_kind(name: str) -> str:
    """"neural" or "fitted" for a registered model name (the family decides); unknown -> "neural",
    which build_model then refuses (check_model) with the list of valid names."""
    entry = _REGISTRY.get(name.partition(":")[0])
    return entry.kind if entry is not None else "neural"


def build_model(spec: DataSpec, model_cfg: ModelConfig, dsrsd_cfg: DSRSDConfig | None = None) -> nn.Module:
    """The model named by model_cfg.name, sized for `spec`. Unknown name -> BadInput.

    `dsrsd_cfg` (the run's `dsrsd` section; default DSRSDConfig()) reaches DSRSD-Net's builder
    only; the other builders never see it."""
    check_model(spec, model_cfg.name)
    if model_cfg.d_model % model_cfg.n_heads:
        raise BadInput(f"model.d_model = {model_cfg.d_model} is not divisible by model.n_heads = {model_cfg.n_heads}")
    family, _, variant = model_cfg.name.partition(":")
    entry = _REGISTRY[family]
    extra = {"dsrsd": dsrsd_cfg if dsrsd_cfg is not None else DSRSDConfig()} if entry.reads_dsrsd else {}
    return entry.builder(spec, model_cfg, variant or None, **extra)


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


@register("dsrsd", variants=lambda spec: list(ABLATIONS), plain=True, reads_dsrsd=True)
def _dsrsd(spec: DataSpec, cfg: ModelConfig, variant: str | None, *, dsrsd: DSRSDConfig) -> nn.Module:
    """dsrsd.core "per-modality": DSRSDFusion on each modality's encoding; "joint" (EdNet): DSRSDFusion
    on each step's input embeddings, its head feeding ONE core (model/dsrsd_joint.py)."""
    joint = dsrsd.core == "joint"
    if joint and spec.dataset != "ednet":
        raise BadInput(f"dsrsd.core = 'joint' decomposes the steps of an EdNet sequence; {spec.dataset} has no steps: "
                       "use --set dsrsd.core=per-modality")
    fusion = DSRSDFusion(
        modalities=spec.modalities, d=cfg.d_model, k=dsrsd.k_shared, n_outputs=cfg.d_model if joint else spec.n_outputs,
        dropout=cfg.dropout, aux_rows=dsrsd.aux_rows, tau=dsrsd.tau, orth_private_pairs=dsrsd.orth_private_pairs,
        private_dropout=dsrsd.private_dropout, without=ABLATIONS[variant] if variant else frozenset(), gate=dsrsd.gate,
    )
    if joint:
        return DSRSDJointEdNet(
            inputs={m: build_inputs(spec, m, d=cfg.d_model) for m in spec.modalities}, decomposition=fusion,
            core=build_core(spec, cfg), d=cfg.d_model, n_outputs=spec.n_outputs, dropout=cfg.dropout,
            modality_dropout=cfg.modality_dropout,
        )
    return _multimodal(spec, cfg, fusion, spec.modalities)


@register("early")
def _early(spec: DataSpec, cfg: ModelConfig, variant: str | None) -> nn.Module:
    core = build_core(spec, cfg)
    return EARLY[spec.dataset](
        inputs={m: build_inputs(spec, m, d=cfg.d_model) for m in spec.modalities}, core=core, d=cfg.d_model,
        n_outputs=spec.n_outputs, dropout=cfg.dropout, modality_dropout=cfg.modality_dropout,
    )


@register("late")
def _late(spec: DataSpec, cfg: ModelConfig, variant: str | None) -> nn.Module:
    fusion = LateFusion(modalities=spec.modalities, d=cfg.d_model, n_outputs=spec.n_outputs, dropout=cfg.dropout)
    return _multimodal(spec, cfg, fusion, spec.modalities)


@register("concat")
def _concat(spec: DataSpec, cfg: ModelConfig, variant: str | None) -> nn.Module:
    fusion = ConcatFusion(modalities=spec.modalities, d=cfg.d_model, n_outputs=spec.n_outputs, dropout=cfg.dropout)
    return _multimodal(spec, cfg, fusion, spec.modalities)


@register("coattn")
def _coattn(spec: DataSpec, cfg: ModelConfig, variant: str | None) -> nn.Module:
    fusion = CoAttentionFusion(
        modalities=spec.modalities, d=cfg.d_model, n_heads=cfg.n_heads, n_outputs=spec.n_outputs,
        dropout=cfg.dropout, per_step=spec.dataset == "ednet",
    )
    return _multimodal(spec, cfg, fusion, spec.modalities)


@register("single", variants=lambda spec: spec.modalities)
def _single(spec: DataSpec, cfg: ModelConfig, variant: str | None) -> nn.Module:
    """One modality's encoder + head; the other modalities are ignored (SAKT-like for single:item)."""
    fusion = ConcatFusion(modalities=(variant,), d=cfg.d_model, n_outputs=spec.n_outputs, dropout=cfg.dropout)
    return _multimodal(spec, cfg, fusion, (variant,))


@register("gbdt", kind="fitted")
def _gbdt(spec: DataSpec, cfg: ModelConfig, variant: str | None) -> nn.Module:
    """LightGBM on causal per-answer / per-registration features (model/gbdt.py); fitted by engine/fit.py."""
    from dsrsd_cli.model.gbdt import GBDTModel

    return GBDTModel(spec=spec)
