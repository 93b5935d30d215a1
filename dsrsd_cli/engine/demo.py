"""`dsrsd demo`: the whole tool in a few minutes on a laptop CPU, on the built-in EdNet sample.

  1. prepare the built-in EdNet sample (DEMO_LEARNERS simulated learners) -> OUT/data/ednet
  2. train DSRSD-Net and every baseline with one small, equal budget (the smoke preset with
     DEMO_OVERRIDES, DEMO_SEEDS seeds) -> OUT/comparison/runs/<model>__seed<s> (compare's plan mode)
  3. print the comparison (OUT/comparison/comparison.md, .csv, .json, .png)
  4. explain DSRSD-Net (seed 0) by TOEIC part (OUT/comparison/runs/dsrsd__seed0/explain/)

A rerun reuses what is there (the data, finished runs); an interrupted demo resumes.
--force starts over. OUT/demo.json marks the folder as a demo folder: --force only ever
deletes such a folder (or an empty one). The numbers are a smoke test of the pipeline on
a simulator, not results.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from dsrsd_cli import __version__
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import read_json, write_json

DEMO_LEARNERS = 300
DEMO_PRESET = "smoke"
DEMO_MODELS = ("dsrsd", "early", "late", "concat", "coattn", "single:item", "single:content", "single:behavior", "gbdt")
DEMO_OVERRIDES = ("train.epochs=4", "train.max_steps_per_epoch=60", "train.patience=4")
DEMO_SEEDS = 2
MARKER = "demo.json"


def demo_settings() -> dict[str, Any]:
    return {
        "learners": DEMO_LEARNERS, "preset": DEMO_PRESET, "models": list(DEMO_MODELS),
        "overrides": list(DEMO_OVERRIDES), "seeds": DEMO_SEEDS,
    }


def _claim(out: Path, force: bool) -> None:
    """Make OUT a demo folder: new, reused (same settings), or wiped with --force."""
    marker = out / MARKER
    is_demo = marker.is_file()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_demo)):
        raise BadInput(f"--out {out}: exists and is not a demo folder (no {MARKER}); refusing to use or delete it, choose another --out")
    if force and out.exists():
        shutil.rmtree(out)
        is_demo = False
    if is_demo:
        saved = read_json(marker)
        if saved.get("settings") != demo_settings() or saved.get("tool_version") != __version__:
            raise BadInput(f"{out}: made by another version of the demo (dsrsd {saved.get('tool_version')}); rerun with --force to start over")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"tool_version": __version__, "settings": demo_settings()})


def demo(out: Path, *, force: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run the demo into OUT; returns {"comparison": ..., "explanation": ..., "seconds": ...}."""
    from dsrsd_cli.data.prepare import prepare_dataset
    from dsrsd_cli.engine.compare import compare
    from dsrsd_cli.engine.explain import explain_run

    console = console or Console(stderr=True, quiet=True)
    out = Path(out)
    started = time.perf_counter()
    _claim(out, force)

    data = out / "data" / "ednet"
    if (data / "manifest.json").is_file():
        console.print(f"[bold]1/4[/bold] data: reusing {data}", highlight=False)
    else:
        console.print(f"[bold]1/4[/bold] data: the built-in EdNet sample, {DEMO_LEARNERS} simulated learners -> {data}", highlight=False)
        prepare_dataset(dataset="ednet", raw=None, out=data, sample_size=DEMO_LEARNERS, seed=0, workers=1, force=True)

    console.print(
        f"[bold]2/4[/bold] training {len(DEMO_MODELS)} models with the same budget "
        f"(preset {DEMO_PRESET}, {', '.join(DEMO_OVERRIDES)}): {', '.join(DEMO_MODELS)}", highlight=False,
    )
    comparison = compare(
        preset=DEMO_PRESET, models=DEMO_MODELS, seeds=DEMO_SEEDS, overrides=DEMO_OVERRIDES, data=data,
        out=out / "comparison", console=console, quiet=True,
    )
    console.print("[bold]3/4[/bold] comparison", highlight=False)
    from dsrsd_cli.report import comparison_robustness_table, comparison_table, explain_groups_table, explain_table

    console.print(comparison_table(comparison))
    console.print(comparison_robustness_table(comparison))

    dsrsd_run = out / "comparison" / "runs" / "dsrsd__seed0"
    console.print(f"[bold]4/4[/bold] explaining DSRSD-Net ({dsrsd_run})", highlight=False)
    explanation = explain_run(dsrsd_run, split="test", by="part", console=console)
    console.print(explain_table(explanation))
    console.print(explain_groups_table(explanation))

    seconds = time.perf_counter() - started
    console.print(
        f"demo done in {seconds:.0f} s. Files: {out}/comparison/comparison.md (.csv .json .png), "
        f"{dsrsd_run}/explain/. A simulator and a tiny budget: a smoke test, not results.", highlight=False,
    )
    return {"comparison": comparison, "explanation": explanation, "seconds": seconds}


def demo_from_cli(*, out: Path, force: bool, console: Console) -> None:
    demo(out, force=force, console=console)
