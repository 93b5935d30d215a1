"""Fake DataSpecs and Batches for the model tests and benchmarks, exactly per the tensor
keys of dsrsd_cli/types.py.

Random numbers, shaped like the real data: EdNet windows of bundles of 1-3 questions
with right padding, carried-over context, KT1-like rows whose "post" behaviour columns
are null, and a few units with a modality absent; OULAD rows with no clicks or no
assessments before the cutoff and some missing numeric columns.
"""

from __future__ import annotations

import torch

from dsrsd_cli.data.schema import BEHAVIOR_FEATURES, MODALITIES
from dsrsd_cli.types import Batch, DataSpec


def ednet_spec(*, max_len: int = 16, n_questions: int = 60, n_bundles: int = 30, n_tags: int = 12,
               n_sources: int = 5, tags_per_question: int = 3) -> DataSpec:
    return DataSpec(
        dataset="ednet",
        modalities=MODALITIES["ednet"],
        n_outputs=1,
        vocab={"item.question": n_questions, "item.bundle": n_bundles, "content.tag": n_tags, "content.part": 8,
               "behavior.platform": 3, "behavior.source": n_sources},
        dims={"behavior.num": len(BEHAVIOR_FEATURES), "content.tags": tags_per_question},
        max_len=max_len,
        target="correct",
    )


def ednet_batch(spec: DataSpec, *, batch_size: int = 4, seed: int = 0, context: int = 4) -> Batch:
    """Row 0 fills the window; the others are right-padded. Row 1 is KT1-like (post
    features null except elapsed time); the last row has no behaviour; row 0 lacks
    content on a few steps; row 1 lacks item on a few steps."""
    g = torch.Generator().manual_seed(seed)
    B, T, K = batch_size, spec.max_len, spec.dims["content.tags"]
    randint = lambda low, high, *shape: torch.randint(low, high, shape, generator=g)  # noqa: E731

    lengths = [T] + [int(randint(T // 2, T + 1)) for _ in range(B - 1)]
    bundle_group = torch.zeros(B, T, dtype=torch.long)
    bundle = torch.zeros(B, T, dtype=torch.long)
    for b, length in enumerate(lengths):
        t, group = 0, 0
        while t < length:
            size, group = int(randint(1, 4)), group + 1
            bundle_group[b, t:min(t + size, length)] = group
            bundle[b, t:min(t + size, length)] = int(randint(1, spec.vocab["item.bundle"]))
            t += size
    valid = bundle_group > 0
    on = lambda x: x * valid.view(B, T, *[1] * (x.dim() - 2)).to(x.dtype)  # noqa: E731  zero on padding

    response = on(randint(0, 2, B, T))
    first_of_bundle = valid & torch.cat([torch.ones(B, 1, dtype=torch.bool), bundle_group[:, 1:] != bundle_group[:, :-1]], 1)
    lecture_part = randint(0, 8, B, T) * (first_of_bundle & (torch.rand(B, T, generator=g) < 0.4))
    tags = on(randint(0, spec.vocab["content.tag"], B, T, K))
    tags[..., 0] = on(randint(1, spec.vocab["content.tag"], B, T))            # every question has a tag
    num_present = torch.rand(B, T, len(BEHAVIOR_FEATURES), generator=g) < 0.85
    num_present[1, :, 4:] = False                                             # KT1-like: no answer changes etc.
    num = torch.randn(B, T, len(BEHAVIOR_FEATURES), generator=g)
    num = torch.where(num_present, num, torch.nan) * 1.0                      # nulls arrive as NaN: must not leak
    num_present &= valid.unsqueeze(-1)
    num = torch.where(valid.unsqueeze(-1), num, 0.0)

    present = {m: valid.clone() for m in spec.modalities}
    present["behavior"][-1] = False
    present["content"][0, 1:T:5] = False
    present["item"][1, 2:T:6] = False
    mask = valid.clone()
    mask[1:, :context] = False                                                # carried-over context is not scored
    position = torch.where(valid, torch.arange(T).expand(B, T) + 10 * torch.arange(B).unsqueeze(1), -1)
    gaps = torch.rand(B, T, generator=g).pow(4) * 48.0 * (first_of_bundle & valid)      # hours between bundles
    hours = gaps.cumsum(dim=1) * valid
    return Batch(
        inputs={
            "item": {"question": on(randint(1, spec.vocab["item.question"], B, T)), "bundle": bundle},
            "content": {"part": on(randint(1, 8, B, T)), "tags": tags, "lecture_part": lecture_part,
                        "lecture_tags": on(randint(0, spec.vocab["content.tag"], B, T, K)) * (lecture_part > 0).unsqueeze(-1)},
            "behavior": {"num": num, "num_present": num_present, "platform": on(randint(0, 3, B, T)),
                         "source": on(randint(0, spec.vocab["behavior.source"], B, T))},
        },
        present=present,
        target=response.float(),
        mask=mask,
        valid=valid,
        keys={"user": [f"u{b + 1}" for b in range(B)], "position": position},
        context={"response": response, "bundle_group": bundle_group, "hours": hours},
    )


def oulad_spec(*, n_outputs: int = 1, weeks: int = 10, activity_types: int = 20, assessments: int = 6) -> DataSpec:
    return DataSpec(
        dataset="oulad",
        modalities=MODALITIES["oulad"],
        n_outputs=n_outputs,
        vocab={"assessments.type": 4},
        cat_sizes=(3, 14, 6, 11, 4, 3, 8, 5),
        dims={"demographics.num": 3, "clicks.weeks": weeks, "clicks.types": activity_types,
              "assessments.len": assessments, "assessments.num": 6},
        target="result4" if n_outputs > 1 else "at_risk",
    )


def oulad_batch(spec: DataSpec, *, batch_size: int = 8, seed: int = 0) -> Batch:
    """Row 0 has no clicks before the cutoff, row 1 no assessments; row 2 lacks the
    clicks modality, row 3 the demographics one, row 4 the assessments one."""
    g = torch.Generator().manual_seed(seed)
    B = batch_size
    W, A = spec.dims["clicks.weeks"], spec.dims["clicks.types"]
    S, F = spec.dims["assessments.len"], spec.dims["assessments.num"]
    N = spec.dims["demographics.num"]

    cat = torch.stack([torch.randint(0, size, (B,), generator=g) for size in spec.cat_sizes], dim=1)
    num_present = torch.rand(B, N, generator=g) < 0.8
    weeks_seen = torch.randint(1, W + 1, (B,), generator=g)
    weeks_seen[0] = 0
    week_mask = torch.arange(W) < weeks_seen.unsqueeze(1)
    weeks = torch.log1p(torch.poisson(torch.full((B, W, A), 2.0), generator=g)) * week_mask.unsqueeze(-1)
    n_assessments = torch.randint(1, S + 1, (B,), generator=g)
    n_assessments[1] = 0
    seq_mask = torch.arange(S) < n_assessments.unsqueeze(1)
    present = {m: torch.ones(B, dtype=torch.bool) for m in spec.modalities}
    present["clicks"][2] = False
    present["demographics"][3] = False
    present["assessments"][4 % B] = False
    if spec.n_outputs > 1:
        target = torch.randint(0, spec.n_outputs, (B,), generator=g)
    else:
        target = torch.randint(0, 2, (B,), generator=g).float()
    return Batch(
        inputs={
            "demographics": {"cat": cat, "num": torch.randn(B, N, generator=g) * num_present, "num_present": num_present},
            "clicks": {"weeks": weeks, "week_mask": week_mask},
            "assessments": {"type": torch.randint(1, 4, (B, S), generator=g) * seq_mask,
                            "num": torch.randn(B, S, F, generator=g) * seq_mask.unsqueeze(-1), "seq_mask": seq_mask},
        },
        present=present,
        target=target,
        mask=torch.ones(B, dtype=torch.bool),
        valid=torch.ones(B, dtype=torch.bool),
        keys={"code_module": ["AAA"] * B, "code_presentation": ["2013J"] * B, "id_student": torch.arange(B) + 1000},
        context={},
    )


def fake(dataset: str, **kwargs) -> tuple[DataSpec, Batch]:
    """(spec, batch) for "ednet" or "oulad"; kwargs go to the spec builder."""
    if dataset == "ednet":
        spec = ednet_spec(**kwargs)
        return spec, ednet_batch(spec)
    spec = oulad_spec(**kwargs)
    return spec, oulad_batch(spec)
