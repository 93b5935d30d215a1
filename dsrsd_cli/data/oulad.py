"""`dsrsd prepare --dataset oulad`: the seven OULAD CSVs to Parquet (docs/data.md).

    courses, assessments, vle, studentInfo, studentRegistration, studentAssessment, studentVle
      -> registrations.parquet  studentInfo + registration dates + module length
         clicks.parquet         studentVle summed per (registration, day, vle.csv activity_type)
         assessments.parquet    every registration x every assessment of its presentation,
                                with the submission (day, banked, score) or nulls
         splits.parquet         one split per student (or per presentation: --split-by presentation)
         manifest.json

oulad_csv.py reads and checks the CSVs (bad rows dropped and counted per reason in
`manifest["dropped"]`, or with `strict` the first one raised); oulad_tables.py builds the
tables; this file runs both and writes the folder. A studentInfo row whose
studentRegistration row is missing (or dropped) is kept with null dates, counted in
`manifest["registrations_without_dates"]`.

studentVle.csv (10.6M rows, ~450 MB in the release) is streamed and summed block by block,
so memory follows the size of the output, not of the file.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dsrsd_cli import __version__
from dsrsd_cli.data.archive import RawSource
from dsrsd_cli.data.oulad_csv import ASSESSMENTS, COURSES, STUDENT_INFO, VLE, Drops, Reader
from dsrsd_cli.data.oulad_tables import (
    N_FOLDS,
    SPLITTERS,
    Presentations,
    build_assessments,
    build_clicks,
    build_registrations,
    flag_unknown_course,
)
from dsrsd_cli.data.schema import (
    OULAD_ASSESSMENTS,
    OULAD_CLICKS,
    OULAD_REGISTRATIONS,
    OULAD_RESULTS,
    OULAD_SPLITS,
    SCHEMA_VERSION,
)
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_dir, write_json

SPLIT_NAMES = ("train", "valid", "test")
VOCAB_COLUMNS = ("gender", "region", "highest_education", "imd_band", "age_band", "disability", "code_module",
                 "code_presentation")


# ----------------------------------------------------------------------------- entry point
def prepare_oulad(
    raw: Path,
    out: Path,
    *,
    seed: int = 0,
    split_by: str = "learner",
    force: bool = False,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    extra_manifest: dict | None = None,
) -> dict:
    """The seven OULAD CSVs in `raw` (a folder or an archive) -> Parquet in `out`. Returns the
    manifest ("dropped": rows dropped per file and reason). `progress(bytes read, size)` follows
    the streaming of studentVle.csv. Prints nothing."""
    if split_by not in SPLITTERS:
        raise BadInput(f"--split-by {split_by!r} is unknown; choose one of: {', '.join(SPLITTERS)}")
    out = Path(out)
    if out.exists() and not force:
        raise BadInput(f"{out}: output folder already exists; pass --force to replace it or choose another --out")
    source = RawSource.open(raw)
    drops = Drops(strict)
    reader = Reader(source, drops)

    courses = drops.settle(reader.whole(COURSES))
    presentations = Presentations(courses.drop(columns="line"))
    assessments = reader.whole(ASSESSMENTS)
    flag_unknown_course(assessments, presentations)
    assessments = drops.settle(assessments)
    vle = reader.whole(VLE)
    flag_unknown_course(vle, presentations)
    vle = drops.settle(vle)
    activity_types = sorted(vle["activity_type"].unique())

    regs, without_dates = build_registrations(reader, presentations)
    if regs.empty:
        n_dropped = sum(drops.counts.values())
        raise BadInput(f"{reader.where(STUDENT_INFO)}: no registration left after dropping {n_dropped} bad rows; "
                       "run with --strict to see the first one")
    table = build_assessments(reader, regs, assessments, presentations)
    clicks = build_clicks(reader, vle, regs, presentations, activity_types, progress)
    splits, split_info = SPLITTERS[split_by](regs, seed)

    manifest = {
        "tool_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "dataset": "oulad",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"kind": source.kind, "path": str(source.path), "files": source.fingerprint()},
        "rows_in": dict(reader.rows_in),
        "rows_out": {},                                  # filled as the files are written
        "dropped": dict(sorted(drops.counts.items())),
        "registrations_without_dates": without_dates,   # studentInfo rows with no studentRegistration row
        "vocab": {"activity_type": activity_types, **{c: sorted(regs[c].dropna().unique()) for c in VOCAB_COLUMNS}},
        "final_result": {r: int((regs["final_result"] == r).sum()) for r in OULAD_RESULTS},
        "splits": {
            "seed": seed, "by": split_by, "n_folds": N_FOLDS,
            "sizes": {s: int((splits["split"] == s).sum()) for s in SPLIT_NAMES},      # registrations
            "students": {s: int(splits.loc[splits["split"] == s, "id_student"].nunique()) for s in SPLIT_NAMES},
            **split_info,
        },
    }
    manifest.update(extra_manifest or {})
    with atomic_dir(out, force=force) as tmp:
        rows_out = manifest["rows_out"]
        rows_out["registrations.parquet"] = _write(regs, OULAD_REGISTRATIONS, tmp / "registrations.parquet")
        rows_out["clicks.parquet"] = _write(clicks, OULAD_CLICKS, tmp / "clicks.parquet")
        rows_out["assessments.parquet"] = _write(table, OULAD_ASSESSMENTS, tmp / "assessments.parquet")
        rows_out["splits.parquet"] = _write(splits, OULAD_SPLITS, tmp / "splits.parquet")
        write_json(tmp / "manifest.json", manifest)
    return manifest


# ----------------------------------------------------------------------------- writing
def _write(frame: pd.DataFrame | dict, schema: pa.Schema, path: Path) -> int:
    arrays = [
        column if isinstance(column := frame[f.name], pa.Array) else pa.array(column, type=f.type, from_pandas=True)
        for f in schema
    ]
    table = pa.Table.from_arrays(arrays, schema=schema)
    pq.write_table(table, path, compression="zstd")
    return table.num_rows
