"""Batch, DataSpec and ModelOutput: the seam between the loader, the models and the engine (docs/data.md#from-parquet-to-batches).

Tensor keys per dataset (B = batch rows, T = window length <= max_len):

EdNet (one row = one window of one learner's history; 0 = padding everywhere)
  context   response      (B, T) long   0/1 correctness of step t (encoders may use it
                                        only for steps of EARLIER bundles: docs/leakage.md)
            bundle_group  (B, T) long   1, 2, ... per bundle inside the window (0 = pad);
                                        questions of one bundle share the id
  item      question      (B, T) long   dense question index
            bundle        (B, T) long   dense bundle index
  content   part          (B, T) long   0..7
            tags          (B, T, K) long  dense tag indices, 0-padded
            lecture_part  (B, T) long   part of the last lecture studied since the previous bundle (0 none)
            lecture_tags  (B, T, K) long  tags of those lectures, 0-padded
  behavior  num           (B, T, F) float  schema.BEHAVIOR_FEATURES order, transformed (log1p, scaled)
            num_present   (B, T, F) bool   False where the source lacks the value (null)
            platform      (B, T) long   0 unknown, 1 mobile, 2 web
            source        (B, T) long   0 unknown, else dense source index
  present[m]  (B, T) bool; valid (B, T) bool (non-padding); mask (B, T) bool (positions whose
  prediction is scored: valid and not carried-over context); target (B, T) float 0/1.
  keys: {"user": list[str] (B), "position": (B, T) long (-1 on padding)}

OULAD (one row = one student x module presentation, features cut at the cutoff day)
  demographics  cat          (B, C) long   per-column dense codes (0 unknown); sizes in spec.cat_sizes
                num          (B, N) float  numeric columns divided by fixed scales (attempts, credits / 60, date_registration / 100)
                num_present  (B, N) bool
  clicks        weeks        (B, W, A) float  log1p(clicks) per week x activity type (A = spec.dims["clicks.types"])
                week_mask    (B, W) bool   weeks that lie before the cutoff
  assessments   type         (B, S) long   1 TMA, 2 CMA, 3 Exam, 0 pad
                num          (B, S, F) float  weight, due day, days late, score, banked, missing (scaled)
                seq_mask     (B, S) bool   assessments due before the cutoff
  present[m]  (B,) bool; valid (B,) bool (all True); mask (B,) bool; target (B,) float 0/1 for
  binary targets, long class index for result4.
  keys: {"code_module": list[str], "code_presentation": list[str], "id_student": (B,) long}
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about the data to size itself."""

    dataset: str                      # "ednet" | "oulad"
    modalities: tuple[str, ...]
    n_outputs: int                    # 1 = binary (logits (…,)); C > 1 = multi-class (logits (…, C))
    vocab: dict[str, int] = field(default_factory=dict)   # "item.question" -> table size incl. 0
    cat_sizes: tuple[int, ...] = ()   # OULAD demographics.cat table sizes incl. 0
    dims: dict[str, int] = field(default_factory=dict)    # "behavior.num" -> F, "clicks.weeks" -> W, ...
    max_len: int = 0                  # EdNet window length; 0 for OULAD
    target: str = "correct"           # EdNet: correct; OULAD: at_risk | pass_fail | withdrawn | result4


@dataclass
class Batch:
    inputs: dict[str, dict[str, Tensor]]
    present: dict[str, Tensor]
    target: Tensor
    mask: Tensor
    valid: Tensor
    keys: dict[str, Any]
    context: dict[str, Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.target.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        mv = lambda t: t.to(device, non_blocking=non_blocking) if isinstance(t, Tensor) else t  # noqa: E731
        return Batch(
            inputs={m: {k: mv(v) for k, v in d.items()} for m, d in self.inputs.items()},
            present={m: mv(v) for m, v in self.present.items()},
            target=mv(self.target),
            mask=mv(self.mask),
            valid=mv(self.valid),
            keys={k: mv(v) for k, v in self.keys.items()},
            context={k: mv(v) for k, v in self.context.items()},
        )

    def without(self, *modalities: str) -> "Batch":
        """The same batch with the given modalities marked absent (evaluation masks, explain)."""
        present = dict(self.present)
        for m in modalities:
            present[m] = torch.zeros_like(present[m])
        return replace(self, present=present)


class ModelOutput(NamedTuple):
    """What every model's forward returns. No state lives on module attributes.

    logits: EdNet (B, T); OULAD (B,) for binary targets or (B, C) for result4. Only the
         scored positions (batch.mask) are defined; a model may leave 0 elsewhere.
    aux: "losses" -> dict of UNWEIGHTED auxiliary loss scalars (the engine weights them
         with the loss config); "gates" -> (n_scored, n_streams) gate weights of the scored
         units in batch.mask order where the fusion has gates, with "gate_names" naming the streams; "shared"/"private" -> dict
         modality -> (N, k) embeddings of the sampled aux rows (for explain/analysis).
    """

    logits: Tensor
    aux: dict[str, Any]
