"""`dsrsd prepare`: pick the dataset's parser, generating the built-in sample when no raw data is given."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from dsrsd_cli.data.sample import write_sample
from dsrsd_cli.errors import BadInput


def _ednet(raw: Path, out: Path, **kw) -> dict:
    from dsrsd_cli.data.ednet import prepare_ednet

    kw.pop("split_by")
    return prepare_ednet(raw, out, **kw)


def _oulad(raw: Path, out: Path, **kw) -> dict:
    from dsrsd_cli.data.oulad import prepare_oulad

    kw.pop("max_users")
    kw.pop("workers")
    return prepare_oulad(raw, out, **kw)


PREPARERS: dict[str, Callable[..., dict]] = {"ednet": _ednet, "oulad": _oulad}


def parse_strengths(items: list[str]) -> dict[str, float]:
    """["behavior=3", "item=0.2"] -> {"behavior": 3.0, "item": 0.2} (the generator checks the names)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise BadInput(f"--sample-strength {item!r}: expected MODALITY=NUMBER, e.g. behavior=3.0")
    return out


def sample_raw_dir(out: Path) -> Path:
    """Where the built-in sample's raw files go: beside the prepared folder."""
    return out.parent / f"{out.name}_raw_sample"


def prepare_dataset(
    *,
    dataset: str,
    raw: Path | None,
    out: Path | None,
    max_users: int | None = None,
    seed: int = 0,
    workers: int = 2,
    force: bool = False,
    strict: bool = False,
    sample_size: int | None = None,
    split_by: str = "learner",
    strengths: dict[str, float] | list[str] | None = None,
    json_out: bool = False,
    console: Console | None = None,
) -> dict:
    if dataset not in PREPARERS:
        raise BadInput(f"--dataset {dataset!r} is unknown; choose one of: {', '.join(PREPARERS)}")
    if split_by not in ("learner", "presentation") or (split_by == "presentation" and dataset != "oulad"):
        raise BadInput(f"--split-by {split_by!r} is not valid for {dataset}; use learner (or presentation for oulad)")
    out = Path(out) if out is not None else Path("data") / dataset
    if out.exists() and not force:
        raise BadInput(f"{out}: output folder already exists; pass --force to replace it or choose another --out")

    if isinstance(strengths, list):
        strengths = parse_strengths(strengths) if strengths else None
    extra: dict = {}
    if raw is None:
        raw = sample_raw_dir(out)
        if console:
            console.print(
                f"[bold]No --raw given:[/bold] generating the built-in {dataset} sample (a documented simulator, "
                f"not real learners) in {raw}"
            )
        if raw.exists():
            shutil.rmtree(raw)
        params = write_sample(dataset, raw, size=sample_size, seed=seed, strengths=strengths)
        extra["sample"] = {"raw": str(raw), "ground_truth": str(raw / "ground_truth.parquet"), "params": params}
    elif sample_size is not None or strengths:
        raise BadInput("--sample-size and --sample-strength only apply to the built-in sample; drop them or drop --raw")

    manifest = PREPARERS[dataset](
        Path(raw), out, max_users=max_users, seed=seed, workers=workers, force=force, strict=strict,
        split_by=split_by, console=console, extra_manifest=extra,
    )
    if json_out:
        sys.stdout.write(json.dumps(manifest, indent=2, default=str) + "\n")
    elif console:
        _print_summary(manifest, out, console)
    return manifest


def _print_summary(manifest: dict, out: Path, console: Console) -> None:
    table = Table(title=f"dsrsd prepare: {manifest.get('dataset')} -> {out}", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in ("rows_in", "rows_out"):
        value = manifest.get(key)
        if isinstance(value, dict):
            for name, n in value.items():
                table.add_row(f"{key}: {name}", f"{n:,}")
        elif value is not None:
            table.add_row(key, f"{value:,}")
    # rows dropped per reason are tabled by the dataset's own parser, as it goes
    for split, n in (manifest.get("splits", {}).get("sizes") or {}).items():
        table.add_row(f"split: {split}", f"{n:,}")
    console.print(table)
