"""`dsrsd prepare` on the console: the progress bar, the rows-dropped tables and the summary.

The data layer (dsrsd_cli.data) prints nothing: it reports progress through a callback
`progress(done, total)` (EdNet: learners parsed; OULAD: bytes of studentVle.csv read;
done == total ends the stage) and returns the manifest, which holds everything the
tables show. This module turns both into what the user sees, on `console` (stderr, so
that stdout stays clean for --json).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def prepare_from_cli(*, dataset: str, raw: Path | None, out: Path | None, json_out: bool = False,
                     console: Console | None = None, **options) -> dict:
    """`dsrsd prepare`: data.prepare.prepare_dataset with the progress bar and the tables on
    `console`, then the manifest as JSON on stdout (--json) or a summary table."""
    from dsrsd_cli.data.prepare import output_dir, prepare_dataset

    def on_sample(folder: Path) -> None:
        if console is not None:
            console.print(
                f"[bold]No --raw given:[/bold] generating the built-in {dataset} sample (a documented simulator, "
                f"not real learners) in {folder}"
            )

    with progress_bar(console, dataset) as progress:
        manifest = prepare_dataset(dataset=dataset, raw=raw, out=out, progress=progress, on_sample=on_sample,
                                   **options)
    if console is not None:
        print_drops(console, manifest)
    if json_out:
        sys.stdout.write(json.dumps(manifest, indent=2, default=str) + "\n")
    elif console is not None:
        print_summary(console, manifest, output_dir(dataset, out))
    return manifest


def refresh_arrays_from_cli(*, dataset: str, out: Path | None, console: Console) -> dict:
    """`dsrsd prepare --refresh-arrays`: rebuild an EdNet-schema folder's training arrays from its
    own Parquet files (data/ednet_store.py), keeping everything else; returns the manifest."""
    from dsrsd_cli.data.ednet_store import refresh_store
    from dsrsd_cli.data.prepare import output_dir
    from dsrsd_cli.data.prepared import open_prepared
    from dsrsd_cli.errors import BadInput

    folder = output_dir(dataset, out)
    prepared = open_prepared(folder)
    if prepared.dataset != "ednet":
        raise BadInput(f"{folder}: holds {prepared.dataset} data, which has no training arrays; --refresh-arrays "
                       "applies to EdNet-schema folders (prepare --dataset ednet, riiid, custom)")
    manifest = refresh_store(folder)
    entry = manifest["arrays"]
    console.print(f"rebuilt {folder / 'arrays'}: {entry['rows']:,} answers of {entry['learners']:,} learners", highlight=False)
    return manifest


def prepare_ednet(raw: Path, out: Path, *, console: Console | None = None, **options) -> dict:
    """data.ednet.prepare_ednet with its progress bar and rows-dropped table on `console`."""
    from dsrsd_cli.data.ednet import prepare_ednet as prepare

    return _shown(console, "ednet", lambda progress: prepare(raw, out, progress=progress, **options))


def prepare_oulad(raw: Path, out: Path, *, console: Console | None = None, **options) -> dict:
    """data.oulad.prepare_oulad with its progress bar and rows-dropped table on `console`."""
    from dsrsd_cli.data.oulad import prepare_oulad as prepare

    return _shown(console, "oulad", lambda progress: prepare(raw, out, progress=progress, **options))


def _shown(console: Console | None, dataset: str, run: Callable[[Callable | None], dict]) -> dict:
    with progress_bar(console, dataset) as progress:
        manifest = run(progress)
    if console is not None:
        print_drops(console, manifest)
    return manifest


# ---------------------------------------------------------------- progress
_BARS = {
    # dataset: (columns, task description)
    "ednet": (lambda: (TextColumn("ednet learners"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TimeRemainingColumn()), "parse"),
    "oulad": (lambda: (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                       TimeRemainingColumn()), "studentVle.csv"),
    "riiid": (lambda: (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                       TimeRemainingColumn()), "train.csv"),
}


@contextlib.contextmanager
def progress_bar(console: Console | None, dataset: str) -> Iterator[Callable[[int, int], None] | None]:
    """A `progress(done, total)` callback drawing a transient rich bar on `console` (None
    without a console). The bar appears on the first call and goes at done == total or
    when the block ends."""
    if console is None:
        yield None
        return
    bar: Progress | None = None
    task, shown = None, False

    def stop() -> None:
        nonlocal shown
        if shown:  # once: a stop prints a line break on a non-terminal console
            bar.stop()
            shown = False

    def progress(done: int, total: int) -> None:
        nonlocal bar, task, shown
        if bar is None:
            if done >= total:
                return
            columns, description = _BARS[dataset]
            bar = Progress(*columns(), console=console, transient=True)
            task = bar.add_task(description, total=total)
            bar.start()
            shown = True
        bar.update(task, completed=done, total=total)
        if done >= total:
            stop()

    try:
        yield progress
    finally:
        stop()


# ---------------------------------------------------------------- tables
def print_drops(console: Console, manifest: dict) -> None:
    """What the parser dropped (and, EdNet, how KT1 and the action logs disagreed)."""
    if manifest.get("dataset") == "oulad":
        _print_oulad_drops(console, manifest.get("dropped") or {})
    else:
        _print_ednet_drops(console, manifest)


def _print_ednet_drops(console: Console, manifest: dict) -> None:
    counts, first = manifest.get("dropped") or {}, manifest.get("dropped_first") or {}
    if counts:
        table = Table(title="EdNet rows dropped (run with --strict to stop at the first one)")
        table.add_column("reason")
        table.add_column("count", justify="right")
        table.add_column("first seen")
        for reason, n in sorted(counts.items()):
            table.add_row(reason, f"{n:,}", first.get(reason, ""))
        console.print(table)
    merge = manifest.get("kt1_merge")
    if merge and merge.get("answers_disagree"):
        console.print(f"[yellow]KT1 and the action logs disagree on {merge['answers_disagree']:,} answers "
                      "(the action log's last respond was used)[/yellow]")


def _print_oulad_drops(console: Console, counts: dict[str, int]) -> None:
    if not counts:
        console.print("[green]No rows dropped.[/green]")
        return
    table = Table(title="OULAD rows dropped (use --strict to stop at the first one)")
    table.add_column("file: column problem")
    table.add_column("rows", justify="right")
    for reason, n in sorted(counts.items()):
        table.add_row(reason, f"{n:,}")
    console.print(table)


def print_summary(console: Console, manifest: dict, out: Path) -> None:
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
    for split, n in (manifest.get("splits", {}).get("sizes") or {}).items():
        table.add_row(f"split: {split}", f"{n:,}")
    console.print(table)
