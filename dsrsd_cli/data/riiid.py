"""Kaggle's "Riiid Answer Correctness Prediction" files -> the prepared EdNet schema.

Riiid's files are EdNet-derived (101M rows of Santa TOEIC learners), and most people who
work with EdNet hold them rather than the EdNet zips. `dsrsd prepare --dataset riiid
--raw DIR|ZIP` reads them (a folder, or the competition .zip / a .tar.gz, read in place)
and writes exactly what `prepare --dataset ednet` writes (schema.py: interactions,
questions, lectures, splits .parquet + manifest.json with dataset "ednet"), so every model,
preset, explain, compare and the gbdt reference work unchanged. The manifest records
`"source": {"format": "riiid", ...}`.

    train.csv      row_id, timestamp, user_id, content_id, content_type_id, task_container_id,
                   user_answer, answered_correctly, prior_question_elapsed_time,
                   prior_question_had_explanation
    questions.csv  question_id, bundle_id, correct_answer, part, tags
    lectures.csv   lecture_id, tag, part, type_of

Mapping (details: riiid_contents.py, riiid_interactions.py):
    user            "u<user_id>"; questions "q<question_id>", bundles "b<bundle_id>",
                    lectures "l<lecture_id>" (dense indices as EdNet's)
    timestamp       Riiid's timestamp as is: ms since the learner's FIRST event (relative,
                    not since 1970; only differences within a learner mean anything)
    bundle          one showing per (learner, timestamp, task_container_id) run of question
                    rows; bundle = the question's bundle_id from questions.csv
    correct         answered_correctly
    elapsed_ms      the NEXT container's prior_question_elapsed_time (it describes the previous
                    container: Riiid's average ms per question of that bundle), written on the
                    container it describes; null on a learner's last container
    lag_ms          as EdNet's KT1: shown - (previous shown + its elapsed_ms x its questions)
    lectures        lecture rows since the previous question container (dense indices)
    lecture_ms      null (Riiid has no lecture durations)
    explanation_ms  null: prior_question_had_explanation says whether the previous container's
                    explanation was seen, not for how long (checked, not written)
    answer_changes, media_plays, platform, source: null (KT1-like); kt_level 1
Learners are written in the order they complete in train.csv (the Kaggle file keeps each
learner's rows together), rows by (timestamp, line); `max_users` keeps the first N
learners by first appearance in train.csv (the whole file is still read, to check that
their rows are complete).

Memory (train.csv is 5.4 GB): the file is read in ~8 MB blocks (riiid_rows.py). A learner
whose rows are all read (a later learner's row follows) is converted and written at once,
so only the current learner's rows wait between blocks. If a learner's rows turn out not
to be contiguous (a learner seen complete appears again), the conversion restarts with a
spill: the checked rows are partitioned by user_id into Arrow files of ~32 MB of input
each, then each part is sorted and converted ~260K rows (whole learners) at a time.
Either way memory is O(block) plus the writer (measured: benchmarks/riiid_bench.py).

Bad input: a missing file or column is one line (BadInput, exit 2), nothing written; a
bad row is dropped and counted (manifest "dropped"/"dropped_first", never a whole file),
or with strict the first raised naming file, line and column (riiid_rows.py).
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dsrsd_cli.data.archive import RawSource
from dsrsd_cli.data.ednet_arrays import run_starts
from dsrsd_cli.data.ednet import PARQUET_OPTIONS, clean_stale, finish_folder
from dsrsd_cli.data.ednet_format import SOURCE_NAMES, Drops
from dsrsd_cli.data.riiid_contents import RiiidContents, parse_riiid_contents
from dsrsd_cli.data.riiid_interactions import assemble
from dsrsd_cli.data.riiid_rows import CHUNK_BYTES, Rows, check_rows, iter_blocks, parse_block, read_header
from dsrsd_cli.data.schema import EDNET_INTERACTIONS
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_dir

FILES = ("train.csv", "questions.csv", "lectures.csv")
SPILL_BYTES = 32 << 20  # train.csv bytes per spill part (5.4 GB: ~170 files)
EMIT_ROWS = 1 << 18     # rows converted at once from a spill part (whole learners)


class _NotGrouped(Exception):
    """A learner seen complete appears again: the streaming pass cannot be used."""


@dataclass
class _Totals:
    users: list = field(default_factory=list)  # "u<id>" of learners with rows, in output order
    rows_in: int = 0
    rows_out: int = 0
    skipped: Counter = field(default_factory=Counter)


def prepare_riiid(
    raw: Path,
    out: Path,
    *,
    max_users: int | None = None,
    seed: int = 0,
    force: bool = False,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    extra_manifest: dict | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    spill_bytes: int = SPILL_BYTES,
) -> dict:
    """Riiid's train.csv, questions.csv, lectures.csv (a folder or an archive) -> the prepared
    EdNet folder `out`; returns the manifest. `progress(done, total)` gets the bytes of
    train.csv read. `chunk_bytes` and `spill_bytes` are for tests and tuning. Prints nothing."""
    raw, out = Path(raw), Path(out)
    if out.exists() and not force:
        raise BadInput(f"{out}: output folder already exists; pass --force to replace it or choose another --out")
    clean_stale(out)
    source = RawSource.open(raw)
    display = f"{raw}/" if source.kind == "dir" else f"{raw}:"
    found = {name: source.find(name) for name in FILES}
    missing = [name for name, member in found.items() if member is None]
    if missing:
        raise BadInput(f"{raw}: {', '.join(missing)} not found; --dataset riiid reads the Kaggle Riiid files "
                       "train.csv, questions.csv and lectures.csv (a folder or the competition .zip)")
    drops = Drops(strict)
    data = dict(source.iter_bytes([found["questions.csv"], found["lectures.csv"]]))
    contents = parse_riiid_contents(data[found["questions.csv"]], data[found["lectures.csv"]], drops=drops,
                                    names=(display + found["questions.csv"], display + found["lectures.csv"]))
    del data
    train = found["train.csv"]
    with atomic_dir(out, force=force) as tmp:
        pq.write_table(contents.questions, tmp / "questions.parquet")
        pq.write_table(contents.lectures, tmp / "lectures.parquet")
        job = _Job(source, train, display + train, contents, strict, progress, max_users, chunk_bytes)
        try:
            totals, train_drops = job.stream(tmp / "interactions.parquet")
            grouped = True
        except _NotGrouped:
            totals, train_drops = job.spill(tmp / "interactions.parquet", tmp / ".spill", spill_bytes)
            grouped = False
        drops.merge(train_drops)
        if not totals.users:
            raise BadInput(f"{display}{train}: no usable answers (dropped: {dict(drops.counts)}); "
                           "check it against the Riiid train.csv format")
        manifest = finish_folder(
            tmp, users=totals.users, seed=seed,
            source={"format": "riiid", "kind": source.kind, "path": str(raw), "files": source.fingerprint(),
                    "kt_levels": [1], "timestamps": "ms since each learner's first event", "learners_contiguous": grouped},
            counts={"rows_in": totals.rows_in,     # data lines of train.csv read
                    "rows_out": totals.rows_out,   # interactions written
                    **drops.summary(), "skipped": dict(sorted(totals.skipped.items()))},
            vocab={"question": contents.questions.num_rows, "bundle": contents.n_bundles, "tag": contents.n_tags,
                   "lecture": contents.lectures.num_rows, "part": 7, "source": list(SOURCE_NAMES)},
            extra_manifest=extra_manifest,
        )
    return manifest


@dataclass
class _Job:
    source: RawSource
    member: str
    name: str                  # how messages name train.csv
    contents: RiiidContents
    strict: bool
    progress: Callable[[int, int], None] | None
    max_users: int | None
    chunk_bytes: int

    def _chunks(self, totals: _Totals, drops: Drops) -> Iterator[Rows]:
        """Checked rows of train.csv, one block at a time, in file order."""
        with self.source.open_member(self.member) as (f, size):
            header, rest = read_header(f, self.name)
            if self.progress:
                self.progress(0, size)
            for block, first_line, lines, done in iter_blocks(f, rest, self.chunk_bytes):
                totals.rows_in += lines
                yield check_rows(parse_block(block, first_line, lines, header, self.name, drops), self.contents,
                                 self.name, drops)
                if self.progress:
                    self.progress(min(done, size), size)
            if self.progress:
                self.progress(size, size)

    def _new_users(self, rows: Rows, ranks: dict[int, int]) -> list[int]:
        """The block's learners in order of first appearance; new ones get the next rank."""
        unique, first = np.unique(rows.user, return_index=True)
        users = unique[np.argsort(first)].tolist()
        for u in users:
            if u not in ranks:
                ranks[u] = len(ranks)
        return users

    def _kept(self, rows: Rows, ranks: dict[int, int]) -> Rows:
        """max_users: only the first N learners by first appearance."""
        if self.max_users is None or len(ranks) <= self.max_users:
            return rows
        unique, inverse = np.unique(rows.user, return_inverse=True)
        keep = np.array([ranks[u] < self.max_users for u in unique.tolist()], bool)[inverse]
        return rows if keep.all() else rows.take(np.flatnonzero(keep))

    def _emit(self, rows: Rows, ranks: dict[int, int], writer: pq.ParquetWriter, totals: _Totals) -> None:
        """Complete learners -> interactions, learners in order of first appearance."""
        if not len(rows):
            return
        unique, inverse = np.unique(rows.user, return_inverse=True)
        rank = np.array([ranks[u] for u in unique.tolist()], np.int64)[inverse]
        table, users = assemble(rows, self.contents, totals.skipped, rank)
        if table.num_rows:
            writer.write_table(table)
        totals.users.extend(f"u{u}" for u in users.tolist())
        totals.rows_out += table.num_rows

    def stream(self, path: Path) -> tuple[_Totals, Drops]:
        """One pass: learners are written as soon as a later learner's row follows theirs."""
        totals, drops = _Totals(), Drops(self.strict)
        ranks: dict[int, int] = {}
        done: set[int] = set()
        pending: Rows | None = None
        with pq.ParquetWriter(path, EDNET_INTERACTIONS, **PARQUET_OPTIONS) as writer:
            for rows in self._chunks(totals, drops):
                if not len(rows):
                    continue
                users = self._new_users(rows, ranks)
                if not done.isdisjoint(users):
                    raise _NotGrouped
                rows = self._kept(rows, ranks)
                if pending is not None and len(pending):
                    rows = Rows.concat([pending, rows])
                if not len(rows):
                    continue
                last = np.flatnonzero(rows.user == rows.user[-1])
                if last[0] == len(rows) - len(last):  # the last learner's rows end the block: slices
                    head, pending = rows.take(slice(0, last[0])), rows.take(slice(last[0], None))
                else:
                    head, pending = rows.take(np.flatnonzero(rows.user != rows.user[-1])), rows.take(last)
                self._emit(head, ranks, writer, totals)
                done.update(np.unique(head.user).tolist())
            if pending is not None:
                self._emit(pending, ranks, writer, totals)
        return totals, drops

    def spill(self, path: Path, folder: Path, spill_bytes: int) -> tuple[_Totals, Drops]:
        """Two passes: rows partitioned by user_id into Arrow files, then each file whole."""
        totals, drops = _Totals(), Drops(self.strict)
        with self.source.open_member(self.member) as (_, size):
            parts = max(1, math.ceil(size / spill_bytes))
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        files = [folder / f"part-{i:04d}.arrow" for i in range(parts)]
        writers: list[pa.ipc.RecordBatchStreamWriter | None] = [None] * parts
        ranks: dict[int, int] = {}
        try:
            for rows in self._chunks(totals, drops):
                self._new_users(rows, ranks)
                rows = self._kept(rows, ranks)
                part = rows.user % parts
                order = np.argsort(part, kind="stable")
                bounds = np.searchsorted(part[order], np.arange(parts + 1))
                for i in np.flatnonzero(np.diff(bounds)):
                    batch = rows.take(order[bounds[i] : bounds[i + 1]]).to_arrow()
                    if writers[i] is None:
                        writers[i] = pa.ipc.new_stream(files[i], batch.schema)
                    writers[i].write_batch(batch)
        finally:
            for w in writers:
                if w is not None:
                    w.close()
        with pq.ParquetWriter(path, EDNET_INTERACTIONS, **PARQUET_OPTIONS) as writer:
            for i, file in enumerate(files):
                if writers[i] is not None:
                    with pa.ipc.open_stream(file) as reader:
                        rows = Rows.from_arrow(reader.read_all())
                    file.unlink()
                    # sorted once, then converted a slice of whole learners at a time
                    unique, inverse = np.unique(rows.user, return_inverse=True)
                    rank = np.array([ranks[u] for u in unique.tolist()], np.int64)[inverse]
                    rows = rows.take(np.lexsort((rows.line, rows.ts, rank)))
                    learner_starts = np.flatnonzero(run_starts(rows.user))
                    begin = 0
                    while begin < len(rows):
                        at = np.searchsorted(learner_starts, begin + EMIT_ROWS)
                        end = learner_starts[at] if at < len(learner_starts) else len(rows)
                        self._emit(rows.take(slice(begin, end)), ranks, writer, totals)
                        begin = end
        shutil.rmtree(folder, ignore_errors=True)
        return totals, drops
