"""`dsrsd predict`: score learners of a prepared folder with a trained run.

The data must be readable by the run's model, row for row:
  - its schema version is this tool's (open_prepared) and its dataset, target and every
    vocabulary / table size are the run's (runs.check_compatible);
  - its vocabularies map the same names to the same indices as the run's training data:
    EdNet questions.parquet / lectures.parquet (id -> index, bundle, part, tags) and every
    name list in manifest.json's vocab (sources; OULAD categories, modules, activity types).
    A different contents file can have the same sizes and still shift every id, so sizes
    alone are not enough. This needs the run's training data folder; where it is gone, only
    the sizes are checked and a warning says so.
OUT (Parquet, written atomically): the keys (EdNet user, position; OULAD code_module,
code_presentation, id_student), label (the data's own outcome), probability (or one
probability_<class> column per class). It is written as the batches are scored, row group
by row group, under a temporary name renamed to OUT at the end (runs.PredictionsWriter), so
memory does not grow with the number of rows scored. Under torchrun (`--nproc N`) each rank
scores its shard and rank 0 concatenates the parts (engine/distributed.py); the rows are
then in rank order, not in the single-process order (the keys identify them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from rich.console import Console

from dsrsd_cli.engine.distributed import DistEnv, from_rank0, launch_torchrun, output_file, process_group, rank_device, score_split
from dsrsd_cli.engine.runs import load_run, read_run_info, torch_threads
from dsrsd_cli.engine.scoring import class_names
from dsrsd_cli.errors import BadInput

SPLITS = ("all", "train", "valid", "test")

# Tables whose id -> index mapping the model's embeddings depend on, and the columns that matter.
VOCAB_TABLES: dict[str, dict[str, list[str]]] = {
    "ednet": {
        "questions.parquet": ["question_id", "question", "bundle", "part", "tags"],
        "lectures.parquet": ["lecture_id", "lecture", "part", "tags"],
    },
    "oulad": {},
}


def vocabularies(prepared) -> dict[str, list[Any]]:
    """Every name -> index mapping of a prepared folder, as comparable lists."""
    out: dict[str, list[Any]] = {}
    for key, value in sorted(prepared.manifest.get("vocab", {}).items()):
        if isinstance(value, list):
            out[f"manifest.json vocab.{key}"] = value
    for name, columns in VOCAB_TABLES[prepared.dataset].items():
        table = pq.read_table(prepared.file(name), columns=columns).sort_by(columns[1])
        out[name] = table.to_pylist()
    return out


def check_same_vocabularies(run_prepared, data_prepared) -> None:
    """BadInput naming the first entry whose name -> index mapping differs."""
    mine, theirs = vocabularies(run_prepared), vocabularies(data_prepared)
    for name in sorted(set(mine) | set(theirs)):
        a, b = mine.get(name), theirs.get(name)
        if a == b:
            continue
        where = data_prepared.path / name.split(" ")[0]
        if a is None or b is None:
            raise BadInput(f"{where}: {name} is {'missing' if b is None else 'unexpected'} compared with the run's training data; prepare it like the training data")
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        detail = f"entry {i + 1}: {_short(b[i]) if i < len(b) else 'none'} (run: {_short(a[i]) if i < len(a) else 'none'})"
        raise BadInput(
            f"{where}: {name} does not match the run's training data ({detail}); the same ids would reach the "
            f"model as different indices. Prepare the data with the contents files used for training, or retrain"
        )


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def check_request(run_dir: Path, *, data: Path, out: Path, split: str):
    """The options that need no model: the split, OUT not a folder, the data's dataset is the
    run's. Returns (run info, prepared data). Also run before `--nproc` launches workers."""
    from dsrsd_cli.data.loader import open_prepared

    if split not in SPLITS:
        raise BadInput(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if Path(out).is_dir():
        raise BadInput(f"--out {out}: is a folder; give a file name such as {Path(out) / 'scores.parquet'}")
    info, prepared = read_run_info(run_dir), open_prepared(data)
    if prepared.dataset != info.spec.dataset:
        raise BadInput(f"{data}: holds {prepared.dataset} data, but {run_dir} was trained on {info.spec.dataset}; give a prepared {info.spec.dataset} folder")
    return info, prepared


def predict_to_file(run_dir: Path, *, data: Path, out: Path, split: str = "all", device: str = "auto", console: Console | None = None) -> int:
    """Score `split` of the prepared folder `data` with the run, streaming the predictions to
    OUT; returns the number of rows written (every rank gets rank 0's count under torchrun)."""
    from dsrsd_cli.data.loader import open_prepared

    env = DistEnv.from_env()
    if console is None or not env.is_main:
        console = Console(stderr=True, quiet=True)
    check_request(run_dir, data=data, out=out, split=split)
    run = load_run(run_dir, device=rank_device(device, env), data=data)  # schema version, target and every size
    if not run.same_data:
        trained_on = Path(run.info.data.path)
        training = None
        if (trained_on / "manifest.json").is_file():
            training = open_prepared(trained_on)
        if training is not None and training.manifest_hash == run.info.data.manifest_hash:
            check_same_vocabularies(training, run.prepared)
        else:
            console.print(
                f"[yellow]warning:[/yellow] the run's training data ({trained_on}) is gone or changed, so only the "
                "vocabulary sizes could be checked, not that ids map to the same indices", highlight=False,
            )
    elif split in ("all", "train", "valid"):
        console.print(f"note: {split} includes learners the run was trained or early-stopped on; their scores are optimistic", highlight=False)

    with process_group(env, run.device), torch_threads(run.cfg.train.threads):
        loader = run.loader(split, rank=env.rank, world_size=env.world_size)
        if len(loader.dataset) == 0:
            raise BadInput(f"{data}: the {split} split has no rows to score")
        with output_file(Path(out), env) as target:
            scores = score_split(run.model, loader, run.device, env, n_outputs=run.spec.n_outputs, classes=class_names(run.spec), out=target)
            if scores is not None and not len(scores):
                raise BadInput(f"{data}: the {split} split has no rows to score")
        return from_rank0(len(scores) if scores is not None else None, env)


def predict_run(run_dir: Path, *, data: Path, out: Path, split: str = "all", device: str = "auto", console: Console | None = None) -> pd.DataFrame:
    """predict_to_file, then OUT read back as a DataFrame (for Python callers and tests;
    the command line never holds the rows in memory)."""
    predict_to_file(run_dir, data=data, out=out, split=split, device=device, console=console)
    return pd.read_parquet(out)


def predict_from_cli(*, run_dir: Path, data: Path, out: Path, split: str, console: Console, nproc: int = 1) -> None:
    env = DistEnv.from_env()
    if nproc > 1 and not env.distributed:
        check_request(run_dir, data=data, out=out, split=split)
        launch_torchrun(["predict", str(run_dir), "--data", str(data), "--out", str(out), "--split", split], nproc=nproc, console=console)
        return
    rows = predict_to_file(run_dir, data=data, out=out, split=split, console=console)
    if env.is_main:
        console.print(f"scored {rows:,} rows of {data} ({split}) with {run_dir}: wrote {out}", highlight=False)
