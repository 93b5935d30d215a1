"""Raw EdNet (KT1..KT4 + contents) -> Parquet (docs/data.md).

EdNet ships one CSV per learner (u123.csv) in up to four folders of growing richness:
KT1 lists answered questions (timestamp, solving_id, question_id, user_answer,
elapsed_time); KT2..KT4 log UI actions (enter/respond/submit a bundle; KT3+ also
explanations and lectures; KT4 also audio/video, erased choices, payments).
questions.csv and lectures.csv give ids, answers, parts and tags.

Pipeline (memory stays flat in the number of learners):

    RawSource listing -> learners sorted by id (ednet_listing) -> batches of learners -> worker processes
      (read the members in place, one pyarrow.csv parse per batch on the concatenated
       bodies, numpy for every feature, the training arrays) -> results in order, by file
      (ednet_workers) -> ParquetWriter, one row group per batch, and the arrays appended
      (ednet_store) -> splits + manifest (only the learner ids are kept meanwhile)

Row definitions (one row per answered question; `shown` = when its bundle was shown:
the KT1 timestamp of the bundle's first question, or the `enter` of the bundle):
    correct         last `respond` before `submit` (KT2+) / `user_answer` (KT1) == correct_answer
    elapsed_ms      submit - enter of the bundle (KT2+) / KT1 elapsed_time (EdNet's share per
                    question of the bundle's time)
    lag_ms          shown - end of the learner's previous bundle (its submit; for a KT1
                    bundle: its shown time + the elapsed_time of its questions), >= 0
    answer_changes  extra `respond`s + `erase_choice`s on the question while answering (KT2+)
    explanation_ms  time on the question's explanation between its submit and the next
                    bundle (KT3+; later re-reads would leak into later predictions)
    lectures        lectures entered since the previous bundle was shown, by last entry (KT3+)
    lecture_ms      time in those lectures (KT3+)
    media_plays     play_audio + play_video between enter and submit (KT4)
A feature the source level lacks is null, never zero.

A learner in KT1 and in an action level (real EdNet: the same learner in several
downloads) gets one history: a KT1 bundle matches the action log's showing of the same
bundle whose enter..submit window (+- MATCH_TOLERANCE_MS) holds its timestamp. A matched
question takes the log's features (KT1's answer is checked against the log's: manifest
"kt1_merge"); a KT1 answer the log lacks joins the matched bundle with its features; an
unmatched KT1 bundle stays a KT1 row. kt_level says which level a row's features come from.

Bad input is dropped and counted per reason in manifest "dropped" (with, in
"dropped_first", where each reason was first seen), or with strict raised as BadInput
naming file, line and column: bad_header, empty_file (whole files); not_utf8,
wrong_field_count, bad_value, negative_time, unknown_question, unknown_lecture,
duplicate_row (rows: the file's other rows are kept); duplicate_file, unsafe_path
(members). Bundles submitted without an answer, or never submitted, are normal and
counted in "skipped".

Modules (each one concept, read in this order):
    archive.py          listing the raw source, reading members in place (folder, zip, tar)
    ednet_format.py     columns, codes, `Drops` (dropped rows per reason)
    ednet_listing.py    the source's contents files and learner files, grouped by learner (flat arrays)
    ednet_contents.py   questions.csv + lectures.csv -> `Contents`
    ednet_rows.py       learner files -> checked rows
    ednet_interactions.py checked rows -> interactions (features, KT1 merge, the output table)
    ednet_batch.py      one batch of learners through all of the above (+ single files)
    ednet_workers.py    batches on worker processes, results in order
    ednet.py            this file: listing, batches, Parquet, splits, manifest
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dsrsd_cli import __version__
from dsrsd_cli.data.archive import RawSource
from dsrsd_cli.data.ednet_contents import Contents, parse_contents
from dsrsd_cli.data.ednet_format import Drops, SourceVocab, location
from dsrsd_cli.data.ednet_listing import Learners, list_source
from dsrsd_cli.data.ednet_store import StoreWriter, write_store
from dsrsd_cli.data.ednet_workers import RESULTS_DIR, Runner, system_memory_pool
from dsrsd_cli.data.schema import EDNET_INTERACTIONS, EDNET_SPLITS, SCHEMA_VERSION
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_dir, write_json
from dsrsd_cli.memory import trim_heap

# Dictionary-encode only the low-cardinality columns and keep statistics for the sort keys:
# halves the write time of the defaults for the same file size.
PARQUET_OPTIONS = dict(
    use_dictionary=["user", "question", "bundle", "part", "tags.list.element", "correct", "platform", "source", "kt_level"],
    write_statistics=["user", "position", "timestamp"],
)


# ---------------------------------------------------------------- prepare: the pipeline
def prepare_ednet(
    raw: Path,
    out: Path,
    *,
    max_users: int | None = None,
    seed: int = 0,
    workers: int = 2,
    force: bool = False,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    extra_manifest: dict | None = None,
    batch_size: int | None = None,
) -> dict:
    """Raw EdNet (a folder, .zip or .tar.gz as distributed) -> the prepared folder `out`
    (docs/data.md): interactions, questions, lectures, splits (.parquet) and manifest.json.
    Returns the manifest, whose "dropped", "dropped_first" and "kt1_merge" say what was
    dropped and merged. `progress(done, total)` is called with the learners parsed so far;
    `batch_size` (learners per batch) is for tests and tuning. Prints nothing."""
    raw, out = Path(raw), Path(out)
    if out.exists() and not force:
        raise BadInput(f"{out}: output folder already exists; pass --force to replace it or choose another --out")
    clean_stale(out)
    runner, ok = Runner(workers), False  # the workers start while the source is listed
    try:
        source, display, learners, contents, drops = _read_source(raw, strict)
        learners = learners.head(max_users)
        n = len(learners)
        with system_memory_pool(), atomic_dir(out, force=force) as tmp:
            pq.write_table(contents.questions, tmp / "questions.parquet")
            pq.write_table(contents.lectures, tmp / "lectures.parquet")  # the workers read both
            # a tar's learner files are copied out once, into the temporary output folder
            reader = source.random_access(learners.file_names(source), tmp / ".spool")
            # ~120K answers a batch either way (EdNet: ~120 answers per KT1 learner, ~440
            # actions per KT2-4 learner); independent of `workers`, and so is the output
            size = batch_size or (250 if learners.with_action_logs() > n // 2 else 1000)
            tasks = ((learners.batch(i, min(i + size, n), source), strict, display, reader, str(tmp)) for i in range(0, n, size))
            if progress:
                progress(0, n)
            store = StoreWriter(tmp)   # the training arrays, from what the workers computed
            totals = _write_interactions(runner.map(tasks), tmp / "interactions.parquet", drops, progress, size, n, store)
            runner.close(ok=True)   # their memory is free for the splits and the manifest
            for scratch in (".spool", RESULTS_DIR):
                shutil.rmtree(tmp / scratch, ignore_errors=True)
            users = np.concatenate(totals.users)
            if not len(users):
                raise BadInput(f"{raw}: no usable answers in the learner files (dropped: {dict(drops.counts)}); "
                               "check them against the EdNet format")
            manifest = finish_folder(
                tmp, users=users, seed=seed,
                source={"kind": source.kind, "path": str(raw), "files": source.fingerprint(), "kt_levels": sorted(totals.levels)},
                counts={"rows_in": totals.rows_in,     # data lines of the learner files read
                        "rows_out": totals.rows_out,   # interactions written
                        **drops.summary(),             # dropped per reason, and where each was first seen
                        "skipped": dict(sorted(totals.skipped.items()))},   # bundles without an answer: not errors
                vocab={"question": contents.questions.num_rows, "bundle": contents.n_bundles, "tag": contents.n_tags,
                       "lecture": contents.lectures.num_rows, "part": 7, "source": totals.sources.names},
                # learners in KT1 and in an action level: how their histories matched
                more={"kt1_merge": dict(sorted(totals.merge.items()))} if totals.merge else {},
                extra_manifest=extra_manifest, store=store,
            )
        ok = True
    finally:
        runner.close(ok)
    return manifest


# ---------------------------------------------------------------- listing the source
def _read_source(raw: Path, strict: bool) -> tuple[RawSource, str, Learners, Contents, Drops]:
    """List the source (one pass over its names), parse the contents files."""
    source = RawSource.open(raw)
    drops = Drops(strict)
    for name in source.refused:
        drops.add("unsafe_path", location(f"{raw}:{name}"), "archive member path escapes the folder (refused, not read)")
    display = f"{raw}/" if source.kind == "dir" else f"{raw}:"  # how messages name a member
    found, learners = list_source(source, drops, display)
    drops.raise_first()
    if "questions.csv" not in found:
        raise BadInput(f"{raw}: questions.csv not found; add the EdNet contents files (questions.csv, lectures.csv)")
    if not len(learners):
        raise BadInput(f"{raw}: no learner files (u*.csv) found; expected KT1/u1.csv ... or KT4/u1.csv ...")
    data = dict(source.iter_bytes(found.values()))
    q_name, l_name = found["questions.csv"], found.get("lectures.csv")
    contents = parse_contents(data[q_name], data.get(l_name), drops=drops,
                              names=(display + q_name, display + str(l_name)))
    return source, display, learners, contents, drops


# ---------------------------------------------------------------- writing
@dataclass
class _Totals:
    users: list = field(default_factory=lambda: [np.zeros(0, str)])  # per batch, learners with rows (for the splits)
    sources: SourceVocab = field(default_factory=SourceVocab)
    levels: set = field(default_factory=set)   # KT levels of the files read
    rows_in: int = 0
    rows_out: int = 0
    skipped: Counter = field(default_factory=Counter)
    merge: Counter = field(default_factory=Counter)


def _write_interactions(results: Iterable[dict], path: Path, drops: Drops, progress: Callable[[int, int], None] | None,
                        batch_size: int, total: int, store: StoreWriter | None = None) -> _Totals:
    """Batch results, in order -> one row group each, and their training arrays to `store`;
    only the counts and learner ids stay."""
    totals = _Totals()
    with pq.ParquetWriter(path, EDNET_INTERACTIONS, **PARQUET_OPTIONS) as writer:
        for done, result in enumerate(results, 1):
            table = totals.sources.apply(result["table"], result["sources"])
            if table.num_rows:
                writer.write_table(table)
                if store is not None:
                    names, codes, arrays = result["arrays"]
                    local = np.array([0, *(totals.sources.index(s) for s in result["sources"])], np.int8)
                    store.add(names, codes, {**arrays, "source": local[arrays["source"]]})
            totals.users.append(np.array(result["users"], dtype=str))   # 4 bytes a character, not a str object
            totals.levels |= result["levels"]
            totals.rows_in += result["rows_in"]
            totals.rows_out += table.num_rows
            totals.skipped.update(result["skipped"])
            totals.merge.update(result["merge"])
            drops.merge(result["drops"])
            del result, table
            trim_heap()   # the batch's buffers, freed, go back to the OS (dsrsd_cli/memory.py)
            if progress:
                progress(min(done * batch_size, total), total)
    return totals


def finish_folder(tmp: Path, *, users: Sequence[str] | np.ndarray, seed: int, source: dict, counts: dict, vocab: dict,
                  more: dict | None = None, extra_manifest: dict | None = None, store: StoreWriter | None = None) -> dict:
    """splits.parquet, the training arrays (arrays/, data/ednet_store.py) and manifest.json of an
    EdNet-schema folder (prepare ednet, riiid, custom); returns the manifest. `store`: the
    arrays already written while parsing; without it (or when its rows were not grouped by
    learner) they are computed from interactions.parquet. `counts`: rows read/written and drops; `more`: the preparer's own keys."""
    sizes = _write_splits(users, seed, tmp / "splits.parquet")
    manifest = {
        "tool_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "dataset": "ednet",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        **counts,
        "vocab": vocab,
        "splits": {"seed": seed, "by": "learner", "sizes": sizes, "n_folds": 5},
        "users": len(users),
        **(more or {}),
        **(extra_manifest or {}),
    }
    # the training arrays every loader maps
    manifest["arrays"] = store.finish() if store is not None and store.grouped else write_store(tmp, manifest)
    if store is not None and not store.grouped:
        store.abort()
    write_json(tmp / "manifest.json", manifest)
    return manifest


def _write_splits(users: Sequence[str] | np.ndarray, seed: int, path: Path) -> dict[str, int]:
    from dsrsd_cli.data.splits import learner_split, split_sizes

    ids, first = np.unique(np.asarray(users, dtype=str), return_index=True)       # ids sorted, as learner_split's
    split = learner_split(ids.tolist(), seed=seed).iloc[np.argsort(first)]          # learners in output order
    pq.write_table(pa.table({"user": pa.array(split["learner"].tolist(), pa.string()),
                             "split": pa.array(split["split"].tolist(), pa.string()),
                             "fold": pa.array(split["fold"].to_numpy(np.int8))}, schema=EDNET_SPLITS), path)
    return split_sizes(split)


def clean_stale(out: Path) -> None:
    """Leftovers of a killed run (atomic_dir's temp siblings) are removed before starting."""
    if out.parent.is_dir():
        for p in out.parent.glob(f".{out.name}.partial-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in out.parent.glob(f".{out.name}.old-*"):
            shutil.rmtree(p, ignore_errors=True)
