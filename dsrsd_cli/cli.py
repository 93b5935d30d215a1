"""The `dsrsd` command line. Each command parses its options, then calls one function.

No logic lives here: errors raised as `DsrsdError` become one line on
stderr with exit code 2 (bad input) or 1 (failure during work); `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from dsrsd_cli import __version__
from dsrsd_cli.errors import DsrsdError

app = typer.Typer(
    name="dsrsd",
    help="Raw EdNet/OULAD logs to Parquet; train, evaluate, explain and compare DSRSD-Net.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True, soft_wrap=True)   # progress and tables; stdout stays clean for --json.
# soft_wrap: a line of text (an error, a path) stays one line at any terminal width; tables still fit it
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dsrsd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
) -> None:
    _state["debug"] = debug or os.environ.get("DSRSD_DEBUG") == "1"


@app.command()
def prepare(
    dataset: Annotated[str, typer.Option(help="ednet, oulad, riiid (Kaggle's Riiid train.csv, questions.csv, lectures.csv; prepared as ednet), or custom (any answer log + --mapping; prepared as ednet).")],
    raw: Annotated[Optional[Path], typer.Option(help="Raw files: a folder or a .zip/.tar.gz archive. Omit to use the built-in sample.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default data/<dataset>).")] = None,
    max_users: Annotated[Optional[int], typer.Option(min=1, help="EdNet: keep only the first N learners (sorted by id).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the learner-level split (and of the sample).")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Parser processes.")] = 2,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    strict: Annotated[bool, typer.Option(help="Fail on the first bad row instead of dropping and counting it.")] = False,
    sample_size: Annotated[Optional[int], typer.Option(min=10, help="Built-in sample: learners (EdNet) or registrations (OULAD).")] = None,
    split_by: Annotated[str, typer.Option(help="OULAD: learner or presentation.")] = "learner",
    sample_strength: Annotated[Optional[list[str]], typer.Option(help="Built-in sample: signal a modality carries, e.g. behavior=3.0 (repeatable).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")] = False,
    mapping: Annotated[Optional[str], typer.Option(help="--dataset custom: a TOML mapping of the log's columns, or a shipped one by name (assistments_2009_skill_builder, assistments_2012_2013).")] = None,
    refresh_arrays: Annotated[bool, typer.Option(help="Only rebuild the training arrays (arrays/) of the prepared folder --out from its own Parquet files, e.g. after editing them.")] = False,
) -> None:
    """Turn raw logs into Parquet (files, columns, splits: docs/data.md).

    Example: [bold]dsrsd prepare --dataset ednet --raw ~/EdNet-KT4.zip --workers 2[/bold]
    """
    from dsrsd_cli.engine.prepare import prepare_from_cli, refresh_arrays_from_cli

    if refresh_arrays:
        refresh_arrays_from_cli(dataset=dataset, out=out, console=console)
        return
    prepare_from_cli(
        dataset=dataset, raw=raw, out=out, max_users=max_users, seed=seed, workers=workers, force=force,
        strict=strict, sample_size=sample_size, split_by=split_by, strengths=list(sample_strength or []),
        json_out=json_out, console=console, **({"mapping": mapping} if mapping is not None else {}),
    )


@app.command()
def train(
    preset: Annotated[str, typer.Option(help="Preset name (default, oulad, smoke) or a .toml path.")] = "default",
    model: Annotated[Optional[str], typer.Option(help="Any registered model: dsrsd (and its ablations dsrsd:no-align, ...), early, late, concat, coattn, single:<modality>, gbdt.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared data folder (overrides data.path).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set loss.lambda_orth=0.2.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/run_<N>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run folder.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Overrides train.seed.")] = None,
    nproc: Annotated[int, typer.Option(min=1, help="Processes for DDP (launches torchrun).")] = 1,
    log: Annotated[Optional[str], typer.Option(help="Training curves: tensorboard (writes RUN_DIR/tensorboard/; needs dsrsd-cli\\[tensorboard]) or none. Sets train.log.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the final metrics as JSON on stdout.")] = False,
) -> None:
    """Train a model from a preset; writes a run folder (layout: README.md, "Run folders").

    Example: [bold]dsrsd train --preset default --device cuda[/bold]
    """
    from dsrsd_cli.engine.train import train_from_cli

    train_from_cli(
        preset=preset, model=model, data=data, device=device, overrides=list(set_ or []), out=out,
        resume=resume, seed=seed, nproc=nproc, json_out=json_out, console=console, log=log,
    )


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `dsrsd train`.")],
    split: Annotated[str, typer.Option(help="valid or test.")] = "test",
    mask: Annotated[Optional[list[str]], typer.Option(help="Evaluate with this modality absent (repeatable).")] = None,
    cutoff_day: Annotated[Optional[list[int]], typer.Option(help="OULAD: evaluate at these cutoff days (repeatable).")] = None,
    robustness: Annotated[bool, typer.Option(help="Run the missing-modality and noise sweep.")] = True,
    data: Annotated[Optional[Path], typer.Option(help="Prepared data folder (default: the run's).")] = None,
    nproc: Annotated[int, typer.Option(min=1, help="Processes, each scoring a shard of the split (launches torchrun).")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Metrics of a trained run, with a robustness sweep.

    Example: [bold]dsrsd evaluate runs/run_1 --mask behavior --json[/bold]
    """
    from dsrsd_cli.engine.evaluate import evaluate_from_cli

    evaluate_from_cli(
        run_dir=run_dir, split=split, masks=list(mask or []), cutoff_days=list(cutoff_day or []),
        robustness=robustness, data=data, json_out=json_out, console=console, nproc=nproc,
    )


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `dsrsd train`.")],
    split: Annotated[str, typer.Option(help="valid or test.")] = "test",
    by: Annotated[Optional[str], typer.Option(help="Group results: part (EdNet), final_result or module (OULAD).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the attribution as JSON on stdout.")] = False,
) -> None:
    """Which modality drives the predictions: exact Shapley values over modalities.

    Example: [bold]dsrsd explain runs/run_1 --by part[/bold]
    """
    from dsrsd_cli.engine.explain import explain_from_cli

    explain_from_cli(run_dir=run_dir, split=split, by=by, json_out=json_out, console=console)


@app.command()
def compare(
    run_dirs: Annotated[Optional[list[Path]], typer.Argument(help="Existing run folders to compare.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Plan mode: train the missing runs from this preset.")] = None,
    models: Annotated[str, typer.Option(help="Plan mode: comma-separated model names.")] = "dsrsd,early,late,concat,coattn",
    seeds: Annotated[int, typer.Option(min=1, help="Plan mode: seeds per model.")] = 3,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Plan mode: config overrides for every run.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Plan mode: prepared data folder.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Comparison folder (default comparisons/<preset>).")] = None,
    train_fraction: Annotated[Optional[str], typer.Option(help="Plan mode: learning curve over these fractions of the training learners, e.g. 0.1,0.3,1.0.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as JSON on stdout.")] = False,
) -> None:
    """Baseline table: mean ± std over seeds, paired tests against DSRSD-Net.

    Example: [bold]dsrsd compare --preset default --models dsrsd,early,gbdt --seeds 5[/bold]
    Ablations: [bold]--models dsrsd,dsrsd:no-align,dsrsd:no-decorr,dsrsd:no-orth,dsrsd:no-private,dsrsd:no-shared,dsrsd:mean-gate[/bold]
    Learning curve: [bold]--models dsrsd,early,gbdt --train-fraction 0.1,0.3,1.0[/bold]
    """
    from dsrsd_cli.engine.compare import compare_from_cli

    compare_from_cli(
        run_dirs=list(run_dirs or []), preset=preset, models=models, seeds=seeds, overrides=list(set_ or []),
        data=data, out=out, json_out=json_out, console=console, train_fractions=train_fraction,
    )


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `dsrsd train`.")],
    data: Annotated[Path, typer.Option(help="A prepared data folder to score.")],
    out: Annotated[Path, typer.Option(help="Output .parquet file.")],
    split: Annotated[str, typer.Option(help="all, train, valid or test.")] = "all",
    nproc: Annotated[int, typer.Option(min=1, help="Processes, each scoring a shard (launches torchrun).")] = 1,
) -> None:
    """Score learners with a trained run.

    Example: [bold]dsrsd predict runs/run_1 --data data/ednet --out scores.parquet[/bold]
    """
    from dsrsd_cli.engine.predict import predict_from_cli

    predict_from_cli(run_dir=run_dir, data=data, out=out, split=split, console=console, nproc=nproc)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, runs and comparison.")] = Path("dsrsd_demo"),
    force: Annotated[bool, typer.Option(help="Start over in an existing demo folder.")] = False,
) -> None:
    """Prepare the built-in EdNet sample, train DSRSD-Net and baselines briefly, compare and explain.

    Example: [bold]dsrsd demo[/bold]
    """
    from dsrsd_cli.engine.demo import demo_from_cli

    demo_from_cli(out=out, force=force, console=console)


@app.command()
def tune(
    model: Annotated[str, typer.Option(help="The model to tune: dsrsd, a baseline (early, late, concat, coattn, single:<modality>) or gbdt.")],
    trials: Annotated[int, typer.Option(min=1, help="Finished trials (complete + pruned) the study should reach.")],
    preset: Annotated[str, typer.Option(help="Preset name (default, oulad, smoke) or a .toml path: the base of every trial.")] = "default",
    out: Annotated[Optional[Path], typer.Option(help="Study folder (default tunes/<preset>-<model>); the same command continues it.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key for every trial; a searched key set here is fixed.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared data folder (overrides data.path).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler (train.seed comes from the preset).")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the study summary as JSON on stdout.")] = False,
    into: Annotated[Optional[Path], typer.Option(help="Also put the best values into this preset file as its [tuned.<model>] table "
                                                      "(created from --preset if missing); compare applies them to this model only.")] = None,
) -> None:
    """Hyperparameter search with Optuna (TPE, median pruning) on validation AUC; writes OUT/best.toml.

    Example: [bold]dsrsd tune --model dsrsd --trials 30 --preset default --into tuned.toml[/bold]
    """
    from dsrsd_cli.engine.tune import tune_from_cli

    tune_from_cli(
        model=model, trials=trials, preset=preset, out=out, overrides=list(set_ or []), data=data, seed=seed,
        json_out=json_out, console=console, into=into,
    )


def main() -> None:
    try:
        app()  # standalone: typer handles --help, usage errors (exit 2) and Ctrl-C itself
    except DsrsdError as e:
        if _state["debug"]:
            raise
        if os.environ.get("RANK", "0") != "0":  # under DDP, rank 0 alone speaks
            sys.exit(e.exit_code)
        console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False)   # escape: "dsrsd-cli[tensorboard]" is not markup
        sys.exit(e.exit_code)
    except Exception as e:  # an unexpected failure: one line, the traceback behind --debug
        if _state["debug"]:
            raise
        console.print(f"[bold red]error:[/bold red] {type(e).__name__}: {e} (rerun with --debug for the traceback)", highlight=False)
        sys.exit(1)
