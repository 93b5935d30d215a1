"""The search space of `dsrsd tune`: config key -> Dim, per model family.

SEARCH_SPACE is the one place it is defined; engine/tune.py's docstring and docs/tuning.md
list it for users (tests/test_tune.py keeps both in step). Keys are config paths, as
`--set` takes them: the DSRSD-Net settings under dsrsd.*, the loss weights under loss.*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from dsrsd_cli.config import RunConfig
from dsrsd_cli.errors import BadInput


@dataclass(frozen=True)
class Dim:
    """One searched config key: a float or int range (optionally log-uniform) or a choice."""

    kind: str                       # "float", "int" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def sample(self, trial, name: str) -> Any:
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "int" and (isinstance(value, bool) or int(value) != value):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "choice":
            return "choice " + ", ".join(str(c) for c in self.choices)
        return f"{self.kind}{', log' if self.log else ''} {self.low:g} .. {self.high:g}"

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log, "choices": list(self.choices)}


def _float(low: float, high: float, log: bool = False) -> Dim:
    return Dim("float", low, high, log)


def _int(low: int, high: int, log: bool = False) -> Dim:
    return Dim("int", low, high, log)


def _choice(*choices: Any) -> Dim:
    return Dim("choice", choices=tuple(choices))


_NEURAL = {
    "train.lr": _float(3e-4, 5e-3, log=True),
    "train.weight_decay": _float(1e-4, 0.1, log=True),
    "model.dropout": _float(0.0, 0.3),
    "model.modality_dropout": _float(0.0, 0.4),
    "model.d_model": _choice(32, 64, 96),
    "model.n_layers": _choice(1, 2),
}

# Model family -> searched config keys. family_of() maps a model name to its family.
SEARCH_SPACE: dict[str, dict[str, Dim]] = {
    "neural": dict(_NEURAL),
    "dsrsd": {
        **_NEURAL,
        "loss.lambda_align": _float(0.003, 1.0, log=True),
        "loss.lambda_dec": _float(0.001, 0.3, log=True),
        "loss.lambda_orth": _float(0.001, 0.3, log=True),
        "dsrsd.tau": _float(0.05, 0.5),
        "dsrsd.k_shared": _choice(16, 32, 64),
        "dsrsd.private_dropout": _float(0.0, 0.5),
    },
    "gbdt": {
        "gbdt.learning_rate": _float(0.01, 0.2, log=True),
        "gbdt.num_leaves": _int(8, 256, log=True),
        "gbdt.min_data_in_leaf": _int(5, 500, log=True),
        "gbdt.feature_fraction": _float(0.4, 1.0),
        "gbdt.lambda_l2": _float(1e-3, 10.0, log=True),
        "model.modality_dropout": _float(0.0, 0.4),
    },
}


def family_of(model: str) -> str:
    """dsrsd and dsrsd:<variant> -> "dsrsd"; gbdt -> "gbdt"; every other model -> "neural"."""
    base = model.partition(":")[0]
    return base if base in ("dsrsd", "gbdt") else "neural"


def search_space(model: str, base: RunConfig, fixed: Sequence[str] = ()) -> dict[str, Dim]:
    """The keys searched for `model` on top of `base`: d_model choices that model.n_heads
    divides, without the keys fixed by --set."""
    space = dict(SEARCH_SPACE[family_of(model)])
    if "model.d_model" in space:
        dim = space["model.d_model"]
        ok = tuple(c for c in dim.choices if c % base.model.n_heads == 0)
        if not ok:
            raise BadInput(
                f"model.n_heads = {base.model.n_heads} divides none of the model.d_model choices "
                f"{', '.join(map(str, dim.choices))}; set --set model.n_heads=4 (or fix --set model.d_model=...)"
            )
        space["model.d_model"] = _choice(*ok)
    for key in fixed:
        space.pop(key, None)
    if not space:
        raise BadInput(f"every searched key of {model} is fixed by --set; nothing left to tune")
    return space
