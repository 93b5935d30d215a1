"""One config object (pydantic) for a run: data, model, dsrsd, loss, train, gbdt. Presets are TOML files.

`load_config("default", overrides=["loss.lambda_orth=0.2"])` reads
dsrsd_cli/presets/default.toml (or a path to a .toml file), applies the model's own
`[tuned.<model>]` table if the preset has one (see "per-model tuned values" below), then the
`--set` overrides, and validates everything; an unknown key or a bad value is a BadInput
naming the key.

One reader per section: `model` sizes every neural model (encoders, fusions), `dsrsd` is
read by the DSRSD-Net builder only (model/registry.py), `loss` (the weights of the
auxiliary terms) by losses.combine only, `gbdt` by the fitted reference model only.
Run folders written before `[dsrsd]` existed load through `migrate_config` (MOVED_KEYS).
"""

from __future__ import annotations

import copy
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
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.15, ge=0.0, lt=1.0)
    # EdNet: each modality's encoder reads the joint interaction history (docs/method.md#encoders-h_m)
    joint_memory: bool = True


class DSRSDConfig(_Strict):
    """DSRSD-Net's own settings (the `dsrsd` and `dsrsd:*` models); the baselines never see them."""

    k_shared: int = Field(32, ge=2)                       # size of the shared (consensus) space
    private_dropout: float = Field(0.0, ge=0.0, lt=1.0)   # close each private stream in training
    tau: float = Field(0.1, gt=0.0)                       # InfoNCE temperature
    aux_rows: int = Field(1024, ge=8)                     # units sampled per batch for the auxiliary losses
    orth_private_pairs: bool = False                      # also push private streams apart pairwise
    # Where the decomposition runs (docs/method.md#where-the-decomposition-runs-dsrsdcore): "per-modality"
    # decomposes each modality's own encoding (M cores); "joint" (EdNet only) each step's input
    # embeddings, ahead of the one core `early` uses. Run folders written before this key were
    # "per-modality", its default.
    core: Literal["per-modality", "joint"] = "per-modality"
    # The gate (docs/method.md#dsrsd-fusion-dsrsdfusion): "softmax" weights the streams against
    # each other (they compete, weights sum to 1); "sigmoid" opens each stream on its own
    # (a Gated Multimodal Unit's gate), so using one stream never forces the others shut.
    gate: Literal["softmax", "sigmoid"] = "softmax"


class LossConfig(_Strict):
    """Weights of the auxiliary losses in the total (read by losses.combine only)."""

    lambda_align: float = Field(0.1, ge=0.0)
    mu_reg: float = Field(1.0, ge=0.0)
    lambda_dec: float = Field(0.04, ge=0.0)
    lambda_orth: float = Field(0.1, ge=0.0)


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
    log: Literal["none", "tensorboard"] = "none"   # training curves: "tensorboard" writes RUN_DIR/tensorboard/ (engine/tensorboard.py)


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
    dsrsd: DSRSDConfig = DSRSDConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    gbdt: GBDTConfig = GBDTConfig()

    @property
    def eval_batch(self) -> int:
        """Rows per batch when scoring (validation, evaluate, predict, explain, compare):
        train.eval_batch_size, else data.batch_size."""
        return self.train.eval_batch_size or self.data.batch_size


# Keys that never change a run's result: they may differ on --resume (engine/checkpoint.py),
# between the runs of one model in `compare` and between the trials of one `tune` study.
RESULT_FREE_KEYS = frozenset({"preset", "data.path", "data.num_workers", "train.device", "train.threads", "train.eval_batch_size",
                              "train.log"})


def flat_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat_dict(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def flat_keys(cfg: RunConfig) -> dict[str, Any]:
    """Every setting of `cfg` as "section.key" -> value."""
    return flat_dict(cfg.model_dump())


# Sections one model family alone reads (section -> family): no other model's result depends on them.
OWN_SECTIONS = {"dsrsd": "dsrsd", "gbdt": "gbdt"}


def reads_key(model: str, key: str) -> bool:
    """False for a key of a section another model family owns (OWN_SECTIONS): e.g. dsrsd.tau for `early`."""
    owner = OWN_SECTIONS.get(key.partition(".")[0])
    return owner is None or owner == model.partition(":")[0]


def result_settings(cfg: RunConfig) -> dict[str, Any]:
    """The settings that can change a run's result: flat_keys without RESULT_FREE_KEYS and
    without the sections the model does not read (reads_key)."""
    return {k: v for k, v in flat_keys(cfg).items() if k not in RESULT_FREE_KEYS and reads_key(cfg.model.name, k)}


def preset_names() -> list[str]:
    folder = resources.files("dsrsd_cli") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _preset_text(preset: str) -> tuple[str, str]:
    """(TOML text, where it came from) of a preset name or a .toml path."""
    path = Path(preset)
    if path.suffix == ".toml" and path.exists():
        return path.read_text(encoding="utf-8"), str(path)
    res = resources.files("dsrsd_cli") / "presets" / f"{preset}.toml"
    if not res.is_file():
        raise BadInput(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())} or give a path to a .toml file")
    return res.read_text(encoding="utf-8"), f"preset {preset}"


def _parse_preset(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{where}: invalid TOML ({e})") from None


def _read_preset(preset: str) -> dict[str, Any]:
    raw = _parse_preset(*_preset_text(preset))
    path = Path(preset)
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


# Keys that moved to their own section: old path -> new path. A run folder's config.json from
# before the move is migrated (migrate_config); a preset or --set naming an old path is refused
# with the new one.
MOVED_KEYS = {
    "model.k_shared": "dsrsd.k_shared",
    "model.private_dropout": "dsrsd.private_dropout",
    "loss.tau": "dsrsd.tau",
    "loss.aux_rows": "dsrsd.aux_rows",
    "loss.orth_private_pairs": "dsrsd.orth_private_pairs",
}


def migrate_config(raw: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """A saved config (config.json of a run folder) in today's layout: the keys of MOVED_KEYS
    moved to their new place. Returns a new dict; one already in today's layout is unchanged."""
    raw = copy.deepcopy(raw)
    for old, new in MOVED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = raw.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = raw.setdefault(new_section, {})
        if isinstance(target, dict):
            if new_key in target and target[new_key] != value:
                raise BadInput(f"{where}: {old} = {value!r} and {new} = {target[new_key]!r} are both given; {old} moved to {new}, keep only that one")
            target[new_key] = value
    return raw


def validate_config(raw: dict[str, Any], where: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden" and key in MOVED_KEYS:
            new = MOVED_KEYS[key]
            section, name = new.split(".")
            raise BadInput(f"{where}: {key} moved to {new}; use --set {new}=... (in a preset: {name} under [{section}])") from None
        if err["type"] == "extra_forbidden":
            raise BadInput(f"{where}: unknown key {key!r}; check the spelling (see the preset files for valid keys)") from None
        raise BadInput(f"{where}: {key} = {err.get('input')!r} is invalid: {err['msg']}") from None


# ---------------------------------------------------------------- per-model tuned values
#
# A preset may end with tables of values tuned for one model each, written by
# `dsrsd tune --into PRESET.toml` (or by hand):
#
#     [tuned.early.train]
#     lr = 0.0031
#     [tuned."single:item".model]
#     dropout = 0.2
#
# They apply to a run of that model only, on top of the preset's sections and under the
# --set overrides; a variant without a table of its own takes its family's ("dsrsd:no-align",
# DSRSD-Net with one part removed, takes [tuned.dsrsd]), so `dsrsd compare --preset P --models a,b` trains every model with its own
# tuned values and the same data, seeds and budget. What every model of a comparison must
# share cannot be tuned per model: the data section and the keys below.

TUNED = "tuned"
TUNED_NOTE = "note"
TUNED_MARKER = "# ---- values tuned per model: `dsrsd tune --into` rewrites everything below this line ----"
SHARED_BY_ALL = ("model.name", "train.seed", "train.epochs", "train.max_steps_per_epoch", "train.patience")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """base with extra's values put in (nested sections merged key by key); base is not changed."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def _tuned_tables(raw: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Pops and checks the preset's [tuned.<model>] tables: model name -> nested sections."""
    tuned = raw.pop(TUNED, {})
    if not isinstance(tuned, dict) or not all(isinstance(v, dict) for v in tuned.values()):
        raise BadInput(f"{where}: [{TUNED}] must hold one table per model, e.g. [{TUNED}.early.train] with lr = 0.003")
    for model, values in tuned.items():
        values.pop(TUNED_NOTE, None)   # where the values came from (a string), for the reader only
        for key in flat_dict(values):
            if key.startswith("data.") or key in SHARED_BY_ALL:
                raise BadInput(f"{where}: [{TUNED}.{model}] sets {key}, which every model of a comparison shares; "
                               f"move it to the preset's own [{key.split('.')[0]}] section")
        validate_config(_merge(raw, values), where=f"{where} [{TUNED}.{model}]")
    return tuned


def tuned_models(preset: str) -> list[str]:
    """The models a preset holds tuned values for (to check their names against the registry)."""
    return list(_tuned_tables(_read_preset(preset), where=f"preset {preset}"))


def write_tuned(path: Path, *, model: str, values: dict[str, Any], note: str, base_preset: str) -> None:
    """Puts `values` ("section.key" -> value) into the preset file `path` as its [tuned.<model>]
    table, replacing that model's earlier one (other models' stay), atomically. A file that does
    not exist yet starts as a copy of `base_preset`. The text above the tuned tables (its
    comments included) is kept; the tuned tables are rewritten, sorted by model."""
    from dsrsd_cli.io import atomic_write_text, dumps_toml

    path = Path(path)
    if path.suffix != ".toml":
        raise BadInput(f"--into {path}: give a .toml file (a preset to hold the tuned values)")
    text, where = (path.read_text(encoding="utf-8"), str(path)) if path.exists() else _preset_text(base_preset)
    tuned = _parse_preset(text, where).get(TUNED, {})
    lines = text.splitlines()
    cut = next((i for i, line in enumerate(lines) if line.strip() == TUNED_MARKER or line.lstrip().startswith(f"[{TUNED}.")),
               len(lines))
    nested: dict[str, Any] = {TUNED_NOTE: note}
    for key, value in values.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    tuned = {**{m: v for m, v in tuned.items() if m != model}, model: nested}
    head = "\n".join(lines[:cut]).rstrip()
    new = f"{head}\n\n{TUNED_MARKER}\n" + dumps_toml({TUNED: dict(sorted(tuned.items()))})
    raw = _parse_preset(new, str(path))
    _tuned_tables(raw, str(path))                  # refuse (before writing) what load_config would refuse
    atomic_write_text(path, new)


def load_config(preset: str = "default", overrides: list[str] | None = None) -> RunConfig:
    """The preset, then its tuned values for the model this run trains (model.name after the
    overrides), then the --set overrides; validated."""
    where = f"preset {preset}"
    overrides = list(overrides or [])
    raw = _read_preset(preset)
    tuned = _tuned_tables(raw, where)
    model = apply_overrides(copy.deepcopy(raw), overrides).get("model", {}).get("name", ModelConfig().name)
    family = model.partition(":")[0]         # dsrsd:no-align, an ablation, is DSRSD-Net with one part removed
    values = tuned.get(model, tuned.get(family))
    if values is not None:
        raw = _merge(raw, values)
    return validate_config(apply_overrides(raw, overrides), where=where)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config saved in a run folder (config.json carries it under "config")."""
    from dsrsd_cli.io import read_json

    obj = read_json(Path(run_dir) / "config.json")
    where = f"{run_dir}/config.json"
    return validate_config(migrate_config(obj.get("config", obj), where), where=where)
