"""One config object (pydantic) for a run: data, model, loss, train. Presets are TOML files.

`load_config("default", overrides=["loss.lambda_orth=0.2"])` reads
dsrsd_cli/presets/default.toml (or a path to a .toml file), applies the `--set`
overrides and validates everything; an unknown key or a bad value is a BadInput
naming the key.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dsrsd_cli.errors import BadInput


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dataset: Literal["ednet", "oulad"] = "ednet"
    path: str = "data/ednet"            # prepared folder (output of `dsrsd prepare`)
    max_len: int = Field(100, ge=2, le=4096)        # EdNet window length
    context: int = Field(50, ge=0)                   # EdNet: positions of carried-over context per window
    batch_size: int = Field(64, ge=1)
    target: Literal["correct", "at_risk", "pass_fail", "withdrawn", "result4"] = "correct"
    cutoff_day: int | None = None       # OULAD: None = end of the presentation
    max_weeks: int = Field(40, ge=1)    # OULAD click sequence length (weeks from day -28)
    num_workers: int = Field(0, ge=0)
    fold: int | None = None             # use k-fold ids instead of train/valid (fold = valid)
    # Learning curves: train on a seeded subsample of the training learners (valid and test
    # unchanged). Subsamples of one seed are nested: the 0.1 learners are among the 0.3 ones.
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    train_fraction_seed: int = 0


class ModelConfig(_Strict):
    name: str = "dsrsd"                 # any registered model, see `dsrsd train --help`
    d_model: int = Field(64, ge=4)
    k_shared: int = Field(32, ge=2)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.15, ge=0.0, lt=1.0)
    private_dropout: float = Field(0.0, ge=0.0, lt=1.0)   # DSRSD-Net: close each private stream in training


class LossConfig(_Strict):
    lambda_align: float = Field(0.1, ge=0.0)
    mu_reg: float = Field(1.0, ge=0.0)
    lambda_dec: float = Field(0.04, ge=0.0)
    lambda_orth: float = Field(0.1, ge=0.0)
    tau: float = Field(0.1, gt=0.0)
    aux_rows: int = Field(1024, ge=8)
    orth_private_pairs: bool = False


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_frac: float = Field(0.05, ge=0.0, le=0.5)
    clip_grad: float = Field(1.0, gt=0.0)
    patience: int = Field(3, ge=1)       # early stopping on validation AUC
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    bf16: bool = True                    # autocast on CUDA only
    max_steps_per_epoch: int | None = Field(None, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)   # torch CPU threads; None = torch default


class GBDTConfig(_Strict):
    """The `gbdt` reference model (LightGBM on causal per-answer features); the neural models
    ignore it. The number of trees is chosen by early stopping on validation AUC."""

    learning_rate: float = Field(0.05, gt=0.0, le=1.0)
    num_leaves: int = Field(31, ge=2, le=4096)
    min_data_in_leaf: int = Field(50, ge=1)
    feature_fraction: float = Field(0.8, gt=0.0, le=1.0)
    lambda_l2: float = Field(1.0, ge=0.0)
    max_rounds: int = Field(2000, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)


class RunConfig(_Strict):
    preset: str = "default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    gbdt: GBDTConfig = GBDTConfig()


def preset_names() -> list[str]:
    folder = resources.files("dsrsd_cli") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read_preset(preset: str) -> dict[str, Any]:
    path = Path(preset)
    if path.suffix == ".toml" and path.exists():
        text = path.read_text(encoding="utf-8")
        where = str(path)
    else:
        res = resources.files("dsrsd_cli") / "presets" / f"{preset}.toml"
        if not res.is_file():
            raise BadInput(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())} or give a path to a .toml file")
        text = res.read_text(encoding="utf-8")
        where = f"preset {preset}"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{where}: invalid TOML ({e})") from None
    raw.setdefault("preset", path.stem if path.suffix == ".toml" else preset)
    return raw


def _parse_value(text: str) -> Any:
    """`--set` values: TOML/JSON literals where they parse (0.2, true, "x", [1,2]), else the string."""
    for parse in (lambda s: tomllib.loads(f"v = {s}")["v"], json.loads):
        try:
            return parse(text)
        except Exception:
            pass
    return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--set {item!r}: expected KEY=VALUE, e.g. --set loss.lambda_orth=0.2")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BadInput(f"--set {item!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(value.strip())
    return raw


def validate_config(raw: dict[str, Any], where: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise BadInput(f"{where}: unknown key {key!r}; check the spelling (see the preset files for valid keys)") from None
        raise BadInput(f"{where}: {key} = {err.get('input')!r} is invalid: {err['msg']}") from None


def load_config(preset: str = "default", overrides: list[str] | None = None) -> RunConfig:
    raw = apply_overrides(_read_preset(preset), list(overrides or []))
    return validate_config(raw, where=f"preset {preset}")


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config saved in a run folder (config.json carries it under "config")."""
    from dsrsd_cli.io import read_json

    obj = read_json(Path(run_dir) / "config.json")
    return validate_config(obj.get("config", obj), where=f"{run_dir}/config.json")
