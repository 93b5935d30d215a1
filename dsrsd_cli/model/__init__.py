"""Models (DESIGN §4-§6): encoders, the DSRSD-Net fusion, baseline fusions, losses, registry.

    from dsrsd_cli.model import build_model, model_names
    model = build_model(spec, cfg.model, cfg.loss)
    out = model(batch)                    # ModelOutput(logits, aux)
"""

from dsrsd_cli.model.registry import build_model, model_names, register

__all__ = ["build_model", "model_names", "register"]
