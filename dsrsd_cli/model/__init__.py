"""Models (docs/method.md; adding one: docs/extending.md), one file per concept:

    blocks.py       generic parts: stacked linear / layer norm, attention, feed-forward, head, init
    encoders.py     per-dataset input embeddings and sequence encoders (modality -> h_m)
    fusion.py       MultimodalModel, AbsentTokens, DSRSD-Net and the baseline fusions
    dsrsd_joint.py  DSRSD-Net with the decomposition per step ahead of one joint core (dsrsd.core = "joint")
    losses.py       pure loss functions;  diagnostics.py  mechanism statistics for explain
    gbdt.py         the LightGBM reference;  registry.py  model name -> builder

    from dsrsd_cli.model import build_model, model_names
    model = build_model(spec, cfg.model, cfg.dsrsd)
    out = model(batch)                    # ModelOutput(logits, aux)
"""

from dsrsd_cli.model.registry import build_model, model_names, register

__all__ = ["build_model", "model_names", "register"]
