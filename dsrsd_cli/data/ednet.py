"""Raw EdNet (KT1..KT4 + contents) -> Parquet (DESIGN §2-§3).

EdNet ships one CSV per learner (u123.csv) in up to four folders of growing richness:
KT1 lists answered questions (timestamp, solving_id, question_id, user_answer,
elapsed_time); KT2..KT4 log UI actions (enter/respond/submit a bundle; KT3+ also
explanations and lectures; KT4 also audio/video, erased choices, payments).
questions.csv and lectures.csv give ids, answers, parts and tags.

Pipeline (memory stays flat in the number of learners):

    RawSource listing -> learners sorted by id -> batches of learners -> worker processes
      (read the members in place, one pyarrow.csv parse per batch on the concatenated
       bodies, numpy for every feature) -> results in order -> ParquetWriter, one row
       group per batch -> splits + manifest (only the learner ids are kept meanwhile)

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
naming file, line and column: bad_header, empty_file, not_utf8 (whole files); bad_value,
negative_time, unknown_question, unknown_lecture, duplicate_row (rows); duplicate_file,
unsafe_path (members). Bundles submitted without an answer, or never submitted, are
normal and counted in "skipped".
"""

from __future__ import annotations

import csv
import io
import mmap
import multiprocessing as mp
import os
import re
import shutil
import struct
import sys
import threading
import time
import zipfile
import zlib
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dsrsd_cli import __version__
from dsrsd_cli.data.archive import RawSource
from dsrsd_cli.data.schema import EDNET_INTERACTIONS, EDNET_LECTURES, EDNET_QUESTIONS, EDNET_SPLITS, SCHEMA_VERSION
from dsrsd_cli.errors import BadInput, WorkFailed
from dsrsd_cli.io import atomic_dir, write_json

# ---------------------------------------------------------------- formats
KT1_COLUMNS = ("timestamp", "solving_id", "question_id", "user_answer", "elapsed_time")
ACTION_COLUMNS = ("timestamp", "action_type", "item_id", "source", "user_answer", "platform")  # KT2..KT4
KT4_EXTRA = "cursor_time"
_INT_COLUMNS = {"timestamp", "solving_id", "elapsed_time", KT4_EXTRA}
_DICT = pa.dictionary(pa.int32(), pa.string())
_TYPES = {c: (pa.int64() if c in _INT_COLUMNS else _DICT) for c in (*KT1_COLUMNS, *ACTION_COLUMNS, KT4_EXTRA)}
_TYPES["question_id"] = pa.string()  # ~10K distinct values a batch: a dictionary costs more than it saves

ANSWER_CODES = {"a": 1, "b": 2, "c": 3, "d": 4}
PLATFORM_CODES = {"mobile": 1, "web": 2}
# Seed of the `source` vocabulary (the values in the public KT4 files) so that dense
# indices are stable across datasets; other values are appended in order of first use.
SOURCE_NAMES = ("adaptive_offer", "archive", "diagnosis", "my_note", "review", "review_quiz", "sprint", "tutor")

# Action codes and item kinds used by the feature code.
OTHER, ENTER, RESPOND, SUBMIT, QUIT, ERASE, PLAY = range(7)
ACTION_CODES = {"enter": ENTER, "respond": RESPOND, "submit": SUBMIT, "quit": QUIT, "erase_choice": ERASE,
                "play_audio": PLAY, "play_video": PLAY}
KIND_CODES = {"b": 1, "q": 2, "e": 3, "l": 4}  # bundle, question, explanation, lecture
BUNDLE, QUESTION, EXPLANATION, LECTURE = 1, 2, 3, 4

# A KT1 bundle matches an action-log bundle when its timestamp lies within the log's
# enter..submit window widened by this much (the public KT1 timestamps sit a few
# seconds before the KT4 submit; clocks of the two exports differ slightly).
MATCH_TOLERANCE_MS = 10_000

_LEVEL_DIR = re.compile(r"^(?:ednet[-_])?kt([1-4])$", re.IGNORECASE)
_INT_TEXT = re.compile(r"-?[0-9]{1,18}")
NULL = -1  # sentinel of the nullable integer features while they are computed
MAX_TIMESTAMP = 1 << 42  # ms since 1970: year 2109; keeps (key << 43 | time) searches in int64
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
    console: Any = None,
    extra_manifest: dict | None = None,
    batch_size: int | None = None,
) -> dict:
    """Raw EdNet (a folder, .zip or .tar.gz as distributed) -> the prepared folder `out`
    (DESIGN §3): interactions, questions, lectures, splits (.parquet) and manifest.json.
    Returns the manifest. `batch_size` (learners per batch) is for tests and tuning."""
    raw, out = Path(raw), Path(out)
    if out.exists() and not force:
        raise BadInput(f"{out}: output folder already exists; pass --force to replace it or choose another --out")
    _clean_stale(out)
    runner, ok = _Runner(workers), False  # the workers start while the source is listed
    try:
        source, display, learners, contents, drops = _read_source(raw, strict)
        learners = learners[:max_users]
        with atomic_dir(out, force=force) as tmp:
            pq.write_table(contents.questions, tmp / "questions.parquet")
            pq.write_table(contents.lectures, tmp / "lectures.parquet")  # the workers read both
            reader = (source.kind, str(raw))
            if source.kind == "tar":
                reader = ("dir", str(_spool_tar(source, learners, tmp / ".spool")))
            # ~120K answers a batch either way (EdNet: ~120 answers per KT1 learner, ~440
            # actions per KT2-4 learner); independent of `workers`, and so is the output
            actions = sum(any(lf.level != 1 for lf in files) for _, files in learners)
            size = batch_size or (250 if actions > len(learners) // 2 else 1000)
            tasks = ((learners[i : i + size], strict, display, reader, str(tmp)) for i in range(0, len(learners), size))
            totals = _write_interactions(runner.map(tasks), tmp / "interactions.parquet", drops,
                                         _progress(console, len(learners)), size)
            shutil.rmtree(tmp / ".spool", ignore_errors=True)
            if not totals.users:
                raise BadInput(f"{raw}: no usable answers in the learner files (dropped: {dict(drops.counts)}); "
                               "check them against the EdNet format")
            sizes = _write_splits(totals.users, seed, tmp / "splits.parquet")
            manifest = {
                "tool_version": __version__,
                "schema_version": SCHEMA_VERSION,
                "dataset": "ednet",
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "source": {"kind": source.kind, "path": str(raw), "files": source.fingerprint(),
                           "kt_levels": sorted(totals.levels)},
                "rows_in": totals.rows_in,     # data lines of the learner files read
                "rows_out": totals.rows_out,   # interactions written
                "dropped": dict(sorted(drops.counts.items())),
                "dropped_first": dict(sorted(drops.first.items())),  # where each reason was first seen
                "skipped": dict(sorted(totals.skipped.items())),     # bundles without an answer: not errors
                "vocab": {"question": contents.questions.num_rows, "bundle": contents.n_bundles,
                          "tag": contents.n_tags, "lecture": contents.lectures.num_rows, "part": 7,
                          "source": totals.sources.names},
                "splits": {"seed": seed, "by": "learner", "sizes": sizes, "n_folds": 5},
                "users": len(totals.users),
            }
            if totals.merge:  # learners in KT1 and in an action level: how their histories matched
                manifest["kt1_merge"] = dict(sorted(totals.merge.items()))
            manifest.update(extra_manifest or {})
            write_json(tmp / "manifest.json", manifest)
        ok = True
    finally:
        runner.close(ok)
    if console is not None:
        _print_drops(console, drops, manifest)
    return manifest


def _read_source(raw: Path, strict: bool) -> tuple[RawSource, str, list, "Contents", "Drops"]:
    """List the source (one pass over its names), parse the contents files."""
    source = RawSource.open(raw)
    drops = Drops(strict)
    for name in source.refused:
        drops.add("unsafe_path", _where(f"{raw}:{name}"), "archive member path escapes the folder (refused, not read)")
    display = f"{raw}/" if source.kind == "dir" else f"{raw}:"  # how messages name a member
    members = zip_members(raw) if source.kind == "zip" else {}
    found, learners = _list_source(source.names, members, drops, display)
    drops.raise_first()
    if "questions.csv" not in found:
        raise BadInput(f"{raw}: questions.csv not found; add the EdNet contents files (questions.csv, lectures.csv)")
    if not learners:
        raise BadInput(f"{raw}: no learner files (u*.csv) found; expected KT1/u1.csv ... or KT4/u1.csv ...")
    if source.kind == "zip":  # RawSource.read_bytes would parse the central directory again per file
        reader = _Reader("zip", str(raw))
        data = {name: reader.read(name, members.get(name)) for name in found.values()}
        reader.close()
    else:
        data = dict(source.iter_bytes(found.values()))
    q_name, l_name = found["questions.csv"], found.get("lectures.csv")
    contents = parse_contents(data[q_name], data.get(l_name), drops=drops,
                              names=(display + q_name, display + str(l_name)))
    return source, display, learners, contents, drops


@dataclass
class _Totals:
    users: list = field(default_factory=list)  # learners with rows, in output order (for the splits)
    sources: "_SourceVocab" = field(default_factory=lambda: _SourceVocab())
    levels: set = field(default_factory=set)   # KT levels of the files read
    rows_in: int = 0
    rows_out: int = 0
    skipped: Counter = field(default_factory=Counter)
    merge: Counter = field(default_factory=Counter)


def _write_interactions(results: Iterable[dict], path: Path, drops: "Drops", progress, batch_size: int) -> _Totals:
    """Batch results, in order -> one row group each; only the counts and learner ids stay."""
    totals = _Totals()
    try:
        with pq.ParquetWriter(path, EDNET_INTERACTIONS, **PARQUET_OPTIONS) as writer:
            for done, result in enumerate(results, 1):
                table = totals.sources.apply(result["table"], result["sources"])
                if table.num_rows:
                    writer.write_table(table)
                totals.users.extend(result["users"])
                totals.levels |= result["levels"]
                totals.rows_in += result["rows_in"]
                totals.rows_out += table.num_rows
                totals.skipped.update(result["skipped"])
                totals.merge.update(result["merge"])
                drops.merge(result["drops"])
                if progress:
                    task = progress.task_ids[0]
                    progress.update(task, completed=min(done * batch_size, progress.tasks[0].total))
    finally:
        if progress:
            progress.stop()
    return totals


def _write_splits(users: list[str], seed: int, path: Path) -> dict[str, int]:
    from dsrsd_cli.data.splits import learner_split, split_sizes

    split = learner_split(users, seed=seed)
    rank = {u: i for i, u in enumerate(users)}
    split = split.sort_values("learner", key=lambda s: s.map(rank))  # learners in output order
    pq.write_table(pa.table({"user": pa.array(split["learner"].tolist(), pa.string()),
                             "split": pa.array(split["split"].tolist(), pa.string()),
                             "fold": pa.array(split["fold"].to_numpy(np.int8))}, schema=EDNET_SPLITS), path)
    return split_sizes(split)


def _clean_stale(out: Path) -> None:
    """Leftovers of a killed run (atomic_dir's temp siblings) are removed before starting."""
    if out.parent.is_dir():
        for p in out.parent.glob(f".{out.name}.partial-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in out.parent.glob(f".{out.name}.old-*"):
            shutil.rmtree(p, ignore_errors=True)


def _list_source(names: list[str], members: dict, drops: Drops, display: str) -> tuple[dict[str, str], list]:
    """One pass over the member names: the contents files (the shallowest questions.csv and
    lectures.csv) and the learner files u*.csv grouped by learner, learners sorted by id."""
    contents: dict[str, str] = {}
    by_user: dict[str, dict[int, LearnerFile]] = {}
    levels: dict[str, int] = {}  # folder -> KT level (EdNet: a few folders, 784K files)
    for name in names:
        folder, _, base = name.rpartition("/")
        if base in ("questions.csv", "lectures.csv"):
            if base not in contents or (name.count("/"), name) < (contents[base].count("/"), contents[base]):
                contents[base] = name
            continue
        if base[:1] not in "uU" or base[-4:].lower() != ".csv":
            continue
        level = levels.get(folder)
        if level is None:
            level = levels[folder] = _folder_level(name)
        user = base[:-4]
        files = by_user.get(user)
        if files is None:
            files = by_user[user] = {}
        elif level in files:
            drops.add("duplicate_file", _where(display + name), f"a second file for learner {user} at level "
                      f"KT{level or '?'} (kept {files[level].name})")
            continue
        files[level] = LearnerFile(name, level, members.get(name))
    learners = [(u, [files[k] for k in sorted(files)]) for u, files in by_user.items()]
    learners.sort(key=lambda x: _user_order(x[0]))
    return contents, learners


def _spool_tar(source: RawSource, learners: list, spool: Path) -> Path:
    """A compressed tar reads front to back only: copy its learner files out, once (into
    the temporary output folder, removed before it is renamed)."""
    for name, data in source.iter_bytes([lf.name for _, files in learners for lf in files]):
        target = spool / name  # RawSource lists only safe relative names
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return spool


class _SourceVocab:
    """Dense `source` indices: SOURCE_NAMES first, then new names in order of first use
    (the main process sees batches in order, so the vocabulary is deterministic)."""

    def __init__(self):
        self.names = list(SOURCE_NAMES)
        self._index = {s: i + 1 for i, s in enumerate(self.names)}

    def index(self, name: str) -> int:
        if name not in self._index:
            if len(self.names) >= 127:  # stored as int8
                raise BadInput(f"more than 127 distinct `source` values (e.g. {name!r}); is this EdNet data?")
            self.names.append(name)
            self._index[name] = len(self.names)
        return self._index[name]

    def apply(self, table: pa.Table, batch_names: list[str]) -> pa.Table:
        """A batch's `source` column: batch-local codes -> dense indices."""
        if not batch_names:
            return table
        column = table["source"].combine_chunks()
        lut = np.array([self.index(s) for s in batch_names], np.int8)
        codes = lut[column.fill_null(0).to_numpy(zero_copy_only=False)]
        return table.set_column(table.schema.get_field_index("source"), "source",
                                _arrow(codes, np.int8, column.is_null().to_numpy(zero_copy_only=False)))


def _progress(console, total: int):
    if console is None:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("ednet learners"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    progress.add_task("parse", total=total)
    progress.start()
    return progress


def _print_drops(console, drops: Drops, manifest: dict) -> None:
    from rich.table import Table

    if drops.counts:
        table = Table(title="EdNet rows dropped (run with --strict to stop at the first one)")
        table.add_column("reason")
        table.add_column("count", justify="right")
        table.add_column("first seen")
        for reason, n in sorted(drops.counts.items()):
            table.add_row(reason, f"{n:,}", drops.first.get(reason, ""))
        console.print(table)
    merge = manifest.get("kt1_merge")
    if merge and merge.get("answers_disagree"):
        console.print(f"[yellow]KT1 and the action logs disagree on {merge['answers_disagree']:,} answers "
                      "(the action log's last respond was used)[/yellow]")


# ---------------------------------------------------------------- dropped rows
class Drops:
    """Counts per reason and where each reason was first seen. With strict, problems are
    collected instead and `raise_first` raises the earliest (by file, then line)."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.counts: Counter = Counter()
        self.first: dict[str, str] = {}
        self.errors: list[tuple[tuple[int, int], str]] = []

    def add(self, reason: str, where: str, problem: str, n: int = 1, at: tuple[int, int] = (0, 0)) -> None:
        if self.strict:
            self.errors.append((at, f"{where}: {problem}"))
            return
        self.counts[reason] += n
        self.first.setdefault(reason, f"{where}: {problem}")

    def raise_first(self) -> None:
        if self.errors:
            raise BadInput(f"{min(self.errors)[1]}; fix or remove it, or run without --strict to drop and count it")

    def merge(self, other: "Drops") -> None:
        self.counts.update(other.counts)
        for reason, where in other.first.items():
            self.first.setdefault(reason, where)


def _where(file: str, line: int | None = None, column: str | None = None) -> str:
    parts = [file] + ([f"line {line}"] if line is not None else []) + ([f"column {column!r}"] if column else [])
    return ", ".join(parts)


# ---------------------------------------------------------------- contents: questions.csv + lectures.csv
@dataclass
class Codebook:
    """Strings -> integer codes, looked up in C++ (pyarrow index_in) one Arrow dictionary
    at a time: a batch has ~10K distinct ids, a Python dict lookup each would dominate."""

    values: pa.Array   # (K,) strings
    codes: np.ndarray  # (K,) int64
    prefix: int = 0    # > 0: look up only the first `prefix` characters

    @classmethod
    def of(cls, mapping: dict[str, int], prefix: int = 0) -> "Codebook":
        return cls(pa.array(list(mapping), pa.string()), np.fromiter(mapping.values(), np.int64, len(mapping)), prefix)

    def lookup(self, strings: pa.Array, missing: int) -> np.ndarray:
        if self.prefix:
            strings = pc.utf8_slice_codeunits(strings, 0, self.prefix)
        at = pc.index_in(strings, value_set=self.values).fill_null(-1).to_numpy(zero_copy_only=False)
        return np.where(at >= 0, self.codes[at], missing)


ANSWERS = Codebook.of(ANSWER_CODES)
PLATFORMS = Codebook.of(PLATFORM_CODES)
ACTIONS = Codebook.of(ACTION_CODES)
KINDS = Codebook.of(KIND_CODES, prefix=1)


@dataclass
class Contents:
    """questions.parquet + lectures.parquet as lookups (dense indices from 1; 0 = padding)."""

    questions: pa.Table                 # EDNET_QUESTIONS
    lectures: pa.Table                  # EDNET_LECTURES
    question_ids: Codebook              # "q123" -> dense question index
    item_ids: Codebook                  # any q/b/e/l id -> kind << 24 | dense index
    q_bundle: np.ndarray                # (Q+1,) dense bundle of each question
    q_part: np.ndarray                  # (Q+1,) int8
    q_correct: np.ndarray               # (Q+1,) answer code 1..4
    q_explanation: np.ndarray           # (Q+1,) dense explanation index (order of first use)
    q_tags: pa.ListArray                # (Q+1,) dense tag lists; entry 0 is empty
    n_bundles: int
    n_explanations: int
    n_lectures: int
    n_tags: int

    @classmethod
    def from_tables(cls, questions: pa.Table, lectures: pa.Table) -> "Contents":
        """Workers rebuild the lookups from the Parquet files instead of receiving them."""
        bundles = pc.unique(questions["bundle_id"])          # in order of first use = dense order
        explanations = pc.dictionary_encode(questions["explanation_id"]).combine_chunks()
        n_q, n_b, n_e, n_l = questions.num_rows, len(bundles), len(explanations.dictionary), lectures.num_rows

        def ids(kind: int, n: int) -> np.ndarray:
            return (kind << 24) | np.arange(1, n + 1, dtype=np.int64)

        def padded(column, dtype=np.int32) -> np.ndarray:  # index 0 = padding
            return np.concatenate([[0], np.asarray(column, dtype=dtype)]).astype(dtype)

        tags = [questions["tags"], lectures["tags"]]
        return cls(
            questions=questions,
            lectures=lectures,
            question_ids=Codebook(questions["question_id"].combine_chunks(), np.arange(1, n_q + 1, dtype=np.int64)),
            item_ids=Codebook(
                pa.concat_arrays([questions["question_id"].combine_chunks(), bundles, explanations.dictionary,
                                  lectures["lecture_id"].combine_chunks().cast(pa.string())]),
                np.concatenate([ids(QUESTION, n_q), ids(BUNDLE, n_b), ids(EXPLANATION, n_e), ids(LECTURE, n_l)]),
            ),
            q_bundle=padded(questions["bundle"]),
            q_part=padded(questions["part"], np.int8),
            q_correct=padded(ANSWERS.lookup(questions["correct_answer"].combine_chunks(), 0), np.int8),
            q_explanation=padded(explanations.indices.to_numpy() + 1),
            q_tags=pa.concat_arrays([pa.array([[]], pa.list_(pa.int16())), questions["tags"].combine_chunks()]),
            n_bundles=n_b,
            n_explanations=n_e,
            n_lectures=n_l,
            n_tags=max((pc.max(pc.list_flatten(t)).as_py() or 0) for t in tags),
        )


def _read_table_csv(data: bytes, name: str, required: tuple[str, ...]) -> tuple[list[str], Iterable[tuple[int, list[str]]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BadInput(f"{_where(name, line)}: not UTF-8 text; re-export the file as UTF-8") from None
    rows = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(rows, [])]
    missing = [c for c in required if c not in header]
    if not header or missing:
        raise BadInput(f"{_where(name, 1)}: missing column(s) {', '.join(missing or required)} (found: "
                       f"{', '.join(header) or 'an empty file'}); use the EdNet contents file as distributed")
    return header, ((i + 2, r) for i, r in enumerate(rows) if r)


def _int_field(value: str, name: str, line: int, column: str) -> int:
    value = value.strip()
    if not _INT_TEXT.fullmatch(value):
        raise ValueError(_where(name, line, column), f"{value!r} is not an integer")
    return int(value)


def _tag_list(value: str, name: str, line: int, column: str) -> list[int]:
    tags = [_int_field(t, name, line, column) for t in value.split(";") if t.strip()]
    return [t for t in tags if t != -1]  # -1 = no tag


def parse_contents(questions_csv: bytes, lectures_csv: bytes | None = None, *, drops: Drops | None = None,
                   names: tuple[str, str] = ("questions.csv", "lectures.csv")) -> Contents:
    """Dense indices: questions and lectures in file order, bundles in order of first use,
    tags sorted numerically over both files (-1 = no tag -> empty list)."""
    drops = drops if drops is not None else Drops()
    qname, lname = names
    q_cols = ("question_id", "bundle_id", "explanation_id", "correct_answer", "part", "tags", "deployed_at")
    header, rows = _read_table_csv(questions_csv, qname, q_cols)
    col = {c: header.index(c) for c in q_cols}
    questions: list[tuple] = []
    seen: set[str] = set()
    for line, r in rows:
        try:
            if len(r) != len(header):
                raise ValueError(_where(qname, line), f"expected {len(header)} fields, found {len(r)}")
            qid, bid, eid, answer = (r[col[c]].strip() for c in q_cols[:4])
            for c, v in (("question_id", qid), ("bundle_id", bid), ("explanation_id", eid)):
                if not v:
                    raise ValueError(_where(qname, line, c), "empty id")
            if answer not in ANSWER_CODES:
                raise ValueError(_where(qname, line, "correct_answer"), f"{answer!r} is not one of a, b, c, d")
            part = _int_field(r[col["part"]], qname, line, "part")
            if not 1 <= part <= 7:
                raise ValueError(_where(qname, line, "part"), f"{part} is not a TOEIC part 1..7")
            tags = _tag_list(r[col["tags"]], qname, line, "tags")
            deployed = _int_field(r[col["deployed_at"]], qname, line, "deployed_at")
        except ValueError as e:
            drops.add("bad_value", *e.args)
            continue
        if qid in seen:
            drops.add("duplicate_row", _where(qname, line, "question_id"), f"question {qid} listed twice")
            continue
        seen.add(qid)
        questions.append((qid, bid, eid, answer, part, tags, None if deployed == -1 else deployed))
    if not questions:
        raise BadInput(f"{qname}: no usable question rows; use the EdNet contents file as distributed")

    lectures: list[tuple] = []
    if lectures_csv is not None:
        l_cols = ("lecture_id", "part", "tags", "video_length")
        header, rows = _read_table_csv(lectures_csv, lname, l_cols)
        col = {c: header.index(c) for c in l_cols}
        seen = set()
        for line, r in rows:
            try:
                if len(r) != len(header):
                    raise ValueError(_where(lname, line), f"expected {len(header)} fields, found {len(r)}")
                lid = r[col["lecture_id"]].strip()
                if not lid:
                    raise ValueError(_where(lname, line, "lecture_id"), "empty id")
                part = _int_field(r[col["part"]], lname, line, "part")
                tags = _tag_list(r[col["tags"]], lname, line, "tags")
                video = _int_field(r[col["video_length"]], lname, line, "video_length")
            except ValueError as e:
                drops.add("bad_value", *e.args)
                continue
            if lid in seen:
                drops.add("duplicate_row", _where(lname, line, "lecture_id"), f"lecture {lid} listed twice")
                continue
            seen.add(lid)
            lectures.append((lid, part if 0 <= part <= 7 else 0, tags, None if video < 0 else video))

    tag_ids = sorted({t for q in questions for t in q[5]} | {t for lec in lectures for t in lec[2]})
    tag_index = {t: i + 1 for i, t in enumerate(tag_ids)}
    bundles: dict[str, int] = {}
    for q in questions:
        bundles.setdefault(q[1], len(bundles) + 1)
    q_tags = [[tag_index[t] for t in q[5]] for q in questions]
    questions_table = pa.table(
        {
            "question_id": [q[0] for q in questions],
            "question": pa.array(np.arange(1, len(questions) + 1), pa.int32()),
            "bundle_id": [q[1] for q in questions],
            "bundle": pa.array([bundles[q[1]] for q in questions], pa.int32()),
            "explanation_id": [q[2] for q in questions],
            "correct_answer": [q[3] for q in questions],
            "part": pa.array([q[4] for q in questions], pa.int8()),
            "tags": pa.array(q_tags, pa.list_(pa.int16())),
            "deployed_at": pa.array([q[6] for q in questions], pa.int64()),
        },
        schema=EDNET_QUESTIONS,
    )
    drops.raise_first()
    lectures_table = pa.table(
        {
            "lecture_id": [lec[0] for lec in lectures],
            "lecture": pa.array(np.arange(1, len(lectures) + 1), pa.int32()),
            "part": pa.array([lec[1] for lec in lectures], pa.int8()),
            "tags": pa.array([[tag_index[t] for t in lec[2]] for lec in lectures], pa.list_(pa.int16())),
            "video_length_ms": pa.array([lec[3] for lec in lectures], pa.int64()),
        },
        schema=EDNET_LECTURES,
    )

    return Contents.from_tables(questions_table, lectures_table)


# ---------------------------------------------------------------- reading members in place
# central directory entry (46 bytes): signature, flags, method, crc, sizes, name/extra/comment
# lengths, local header offset (the other fields are skipped)
_ZIP_ENTRY = struct.Struct("<4s4xHH4xIII3H8xI")


def zip_members(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """name -> (local header offset, compressed size, method, crc) from a zip's central
    directory. zipfile builds a ZipInfo per member (slow and heavy for EdNet's 784K
    members); the parser only needs where each member's bytes are."""
    try:
        return _read_central_directory(path)
    except (struct.error, ValueError, IndexError) as e:
        raise BadInput(f"{path}: corrupt zip central directory ({e}); re-download or re-create it") from None


def _read_central_directory(path: Path) -> dict[str, tuple[int, int, int, int]]:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        end = mm.rfind(b"PK\x05\x06", max(0, len(mm) - 65_557))
        if end < 0:
            raise BadInput(f"{path}: zip end record not found (truncated archive?); re-download or re-create it")
        count, cd_size, cd_offset = struct.unpack_from("<2xH2I", mm, end + 8)
        if end >= 20 and mm[end - 20 : end - 16] == b"PK\x06\x07":  # ZIP64 end record locator
            (z64,) = struct.unpack_from("<8xQ", mm, end - 20)
            count, cd_size, cd_offset = struct.unpack_from("<32xQQQ", mm, z64)
        cd = mm[cd_offset : cd_offset + cd_size]
    members: dict[str, tuple[int, int, int, int]] = {}
    pos = 0
    for _ in range(count):
        sig, flags, method, crc, csize, usize, nlen, elen, clen, offset = _ZIP_ENTRY.unpack_from(cd, pos)
        if sig != b"PK\x01\x02":
            raise BadInput(f"{path}: corrupt zip central directory; re-download or re-create it")
        raw = cd[pos + 46 : pos + 46 + nlen]
        name = raw.decode("utf-8" if flags & 0x800 else "cp437")
        if 0xFFFFFFFF in (csize, offset):  # ZIP64 sizes/offset live in extra field 0x0001
            extra, big = cd[pos + 46 + nlen : pos + 46 + nlen + elen], []
            at = 0
            while at + 4 <= len(extra):
                tag, size = struct.unpack_from("<HH", extra, at)
                if tag == 1:
                    big = list(struct.unpack_from(f"<{size // 8}Q", extra, at + 4))
                at += 4 + size
            if usize == 0xFFFFFFFF:
                big.pop(0)
            if csize == 0xFFFFFFFF:
                csize = big.pop(0)
            if offset == 0xFFFFFFFF:
                offset = big.pop(0)
        members[name] = (offset, csize, method if not flags & 1 else -1, crc)
        pos += 46 + nlen + elen + clen
    return members


class _Reader:
    """Reads member bytes: a file of a folder, or a zip member at its coordinates (pread:
    no mapping of the archive, whose pages would otherwise count in every worker's RSS)."""

    def __init__(self, kind: str, root: str):
        self.kind, self.root = kind, root
        self._fd: int | None = None
        self._zip: zipfile.ZipFile | None = None

    def read(self, name: str, where: Any) -> bytes:
        if self.kind == "dir":
            return Path(self.root, name).read_bytes()
        if where is None or where[2] not in (0, 8, -1):  # odd name encoding, bzip2, lzma...: zipfile
            self._zip = self._zip or zipfile.ZipFile(self.root)
            return self._zip.read(name)
        offset, csize, method, crc = where
        if method == -1:
            raise BadInput(f"{self.root}: member {name} is encrypted; re-create the archive without a password")
        if self._fd is None:
            self._fd = os.open(self.root, os.O_RDONLY)
        head = os.pread(self._fd, 30, offset)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise BadInput(f"{self.root}: member {name} is truncated or corrupt; re-download the archive")
        nlen, elen = struct.unpack_from("<HH", head, 26)
        raw = os.pread(self._fd, csize, offset + 30 + nlen + elen)
        try:
            data = zlib.decompress(raw, -15) if method == 8 else raw
        except zlib.error as e:
            raise BadInput(f"{self.root}: member {name} is unreadable or truncated ({e}); re-download the archive") from None
        if len(raw) != csize or zlib.crc32(data) != crc:
            raise BadInput(f"{self.root}: member {name} is truncated or corrupt (CRC mismatch); re-download the archive")
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._zip is not None:
            self._zip.close()
            self._zip = None


class LearnerFile(NamedTuple):
    name: str          # member path inside the source
    level: int         # 1..4 from the folder name (KT1..KT4); 0 = unknown, decided by the header
    where: Any = None  # zip coordinates (zip_members), None for folders


def _folder_level(name: str) -> int:
    for part in reversed(name.split("/")[:-1]):
        if m := _LEVEL_DIR.match(part):
            return int(m.group(1))
    return 0


def _user_order(user: str) -> tuple[int, str]:
    digits = user[1:]
    return (int(digits), user) if digits.isdigit() else (sys.maxsize, user)


# ---------------------------------------------------------------- worker processes
_CACHE: dict = {}  # per process: the contents and the open reader of the current run


def _work(task: tuple) -> dict:
    """One batch, in a worker process (or inline). The contents are read from the Parquet
    files already written to the output folder, once per process."""
    learners, strict, display, (kind, root), contents_dir = task
    if _CACHE.get("key") != (kind, root, contents_dir):
        _clear_cache()
        contents = Contents.from_tables(pq.read_table(Path(contents_dir, "questions.parquet")),
                                        pq.read_table(Path(contents_dir, "lectures.parquet")))
        _CACHE.update(key=(kind, root, contents_dir), contents=contents, reader=_Reader(kind, root))
    return parse_batch(learners, _CACHE["contents"], _CACHE["reader"], strict=strict, display=display)


def _clear_cache() -> None:
    if "reader" in _CACHE:
        _CACHE["reader"].close()
    _CACHE.clear()


def _init_worker(main_pid: int) -> None:
    # one worker = one core: no extra pyarrow threads competing with the other workers
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    threading.Thread(target=_exit_with, args=(main_pid,), daemon=True).start()


def _exit_with(main_pid: int) -> None:
    """A killed main process (SIGKILL) cannot stop its workers: they leave on their own."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(main_pid, 0)
        except ProcessLookupError:
            os._exit(1)


class _Runner:
    """Runs batches on worker processes (inline when workers == 1) and yields the results
    in submission order, with at most `workers + 1` batches in flight so that results never
    pile up. The workers start in a background thread, ready by the time the source is
    listed; a worker that dies (e.g. killed for memory) fails the run instead of hanging it."""

    def __init__(self, workers: int):
        self.workers, self.pool, self.error = workers, None, None
        self.starting = threading.Thread(target=self._start, daemon=True) if workers > 1 else None
        if self.starting:
            self.starting.start()

    def _start(self) -> None:
        try:
            if "forkserver" in mp.get_all_start_methods():
                context = mp.get_context("forkserver")
                context.set_forkserver_preload([__name__])  # import once, fork the workers from it
            else:
                context = mp.get_context("spawn")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                            initargs=(os.getpid(),))
            self.pool.submit(int).result()  # launches the processes now
        except BaseException as e:  # re-raised by map()
            self.error = e

    def map(self, tasks: Iterable[tuple]):
        if self.starting is None:
            yield from map(_work, tasks)
            return
        self.starting.join()
        if self.error is not None:
            raise WorkFailed(f"could not start {self.workers} worker processes ({self.error}); try --workers 1")
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append(self.pool.submit(_work, task))
                if len(pending) > self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise WorkFailed("a worker process died (out of memory?); retry with fewer --workers") from None

    def close(self, ok: bool) -> None:
        if self.starting is not None:
            self.starting.join()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=not ok)
        _clear_cache()


# ---------------------------------------------------------------- one batch: files -> checked rows
def parse_batch(learners: list[tuple[str, list[LearnerFile]]], contents: Contents, reader: _Reader, *,
                strict: bool = False, display: str = "") -> dict:
    """Parse one batch of learners (`display` prefixes file names in messages). Returns
    {"table" (EDNET_INTERACTIONS, `source` as indices into "sources"), "sources", "users"
    (those with rows), "rows_in", "levels", "drops", "skipped", "merge"}."""
    batch = _Batch(contents, strict)
    kt1_group: dict[tuple, _Group] = {}
    act_group: dict[tuple, _Group] = {}
    level = np.zeros(len(learners), np.int8)       # richest action level per learner (0 = none)
    has_kt1 = np.zeros(len(learners), bool)
    formats: dict[tuple[bytes, int], tuple] = {}    # (header, folder level) -> _file_format(...)
    for ui, (_, files) in enumerate(learners):
        for lf in files:
            fi = len(batch.names)
            batch.names.append(display + lf.name)
            data = reader.read(lf.name, lf.where)
            if not data or data.isspace():
                batch.drops.add("empty_file", _where(batch.names[fi], 1), "empty file", at=(fi, 1))
                continue
            header, body = _split_header(data)
            fmt = formats.get((header, lf.level)) or formats.setdefault((header, lf.level), _file_format(header, lf.level))
            if fmt[0] not in ("kt1", "action"):
                batch.drops.add(fmt[0], _where(batch.names[fi], 1), fmt[1], at=(fi, 1))
                continue
            if not body:
                continue  # header only: a learner without answers
            kind, columns, file_level = fmt
            batch.levels.add(file_level)
            if kind == "kt1":
                has_kt1[ui] = True
                kt1_group.setdefault(columns, _Group(list(columns))).files.append((fi, ui, body))
            elif file_level > level[ui]:  # several action levels: the richest log wins
                level[ui] = file_level
                for g in act_group.values():
                    g.files = [f for f in g.files if f[1] != ui]
                act_group.setdefault(columns, _Group(list(columns))).files.append((fi, ui, body))

    sources: dict[str, int] = {}
    kt1 = _parse_kt1_groups(batch, kt1_group)
    act = _parse_action_groups(batch, act_group, sources)
    batch.drops.raise_first()  # strict: the earliest bad line of the batch
    kt1 = kt1 and _kt1_rows(batch, kt1)
    act = act and _action_rows(batch, act, level)
    both = has_kt1 & (level > 0)
    if kt1 and act:
        rows, inst = _merge_kt1(batch, kt1, act, both)
        batch.merge["learners"] += int(both.sum())
    else:
        rows, inst = kt1 or (act[:2] if act else (None, None))
    names = [u for u, _ in learners]
    if rows is None or len(rows["user"]) == 0:
        table = EDNET_INTERACTIONS.empty_table()
        users: list[str] = []
    else:
        table = _assemble(batch, rows, inst, names)
        users = [names[i] for i in np.unique(rows["user"])]
    return {"table": table, "sources": list(sources), "users": users, "rows_in": batch.rows_in,
            "levels": batch.levels, "drops": batch.drops, "skipped": batch.skipped, "merge": batch.merge}


def _file_format(header: bytes, folder_level: int) -> tuple:
    """("kt1" | "action", columns, level) for a usable header, else (drop reason, problem).
    The folder (KT1..KT4) gives the level; outside such folders the header decides
    (KT1 columns -> 1, cursor_time -> 4, else 3)."""
    try:
        columns = tuple(c.strip() for c in header.decode("utf-8").rstrip("\r").split(","))
    except UnicodeDecodeError:
        return "not_utf8", "header is not UTF-8 text (whole file dropped)"
    is_kt1 = folder_level == 1 or (folder_level == 0 and "solving_id" in columns)
    required = KT1_COLUMNS if is_kt1 else ACTION_COLUMNS
    missing = [c for c in required if c not in columns]
    if missing:
        return "bad_header", (f"missing column(s) {', '.join(missing)} (found: {', '.join(columns)}); "
                              f"expected the EdNet KT{folder_level or ''} columns {','.join(required)} (whole file dropped)")
    if is_kt1:
        return "kt1", columns, 1
    return "action", columns, folder_level or (4 if KT4_EXTRA in columns else 3)


def _split_header(data: bytes) -> tuple[bytes, bytes]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    cut = data.find(b"\n")
    return (data, b"") if cut < 0 else (data[:cut], data[cut + 1 :])


class _Group:
    """Files of one header in a batch, parsed together: one pyarrow.csv call on the
    concatenated bodies; rows are tagged with their file by counting newlines."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        self.files: list[tuple[int, int, bytes]] = []  # (file index, user index, body)

    def parse(self, batch: "_Batch", wanted: tuple[str, ...]) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
        bodies = [b if b.endswith(b"\n") else b + b"\n" for _, _, b in self.files]
        counts = np.array([b.count(b"\n") for b in bodies], dtype=np.int64)
        batch.rows_in += int(counts.sum())
        try:
            table = self._read(b"".join(bodies), wanted)
            if table.num_rows != counts.sum():
                raise ValueError("blank or split lines")
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            line = np.arange(counts.sum(), dtype=np.int64) - starts + 2
        except (pa.ArrowInvalid, ValueError):
            return self._parse_slow(batch.names, wanted, batch.drops)
        file = np.repeat([f for f, _, _ in self.files], counts).astype(np.int32)
        user = np.repeat([u for _, u, _ in self.files], counts).astype(np.int32)
        return table, file, user, line

    def _read(self, data: bytes, wanted: tuple[str, ...]) -> pa.Table:
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=self.columns, use_threads=False, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(quote_char=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c: _TYPES[c] for c in wanted}, include_columns=list(wanted),
                null_values=[""], strings_can_be_null=True,
            ),
        )

    def _parse_slow(self, names: list[str], wanted: tuple[str, ...], drops: Drops):
        """Some file of the group is malformed: find its bad lines (and undecodable files)
        one by one, then parse the clean lines (which cannot fail)."""
        n_cols = len(self.columns)
        int_at = [i for i, c in enumerate(self.columns) if c in _INT_COLUMNS and c in wanted]
        kept, files, users, lines = [], [], [], []
        for f, u, body in self.files:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as e:
                line_start = body.rfind(b"\n", 0, e.start) + 1
                column = self.columns[min(body[line_start : e.start].count(b","), n_cols - 1)]
                line = body[: e.start].count(b"\n") + 2
                drops.add("not_utf8", _where(names[f], line, column),
                          "not UTF-8 text (whole file dropped); re-export it as UTF-8", at=(f, line))
                continue
            for i, row in enumerate(text.split("\n")):
                row = row[:-1] if row.endswith("\r") else row
                if not row.strip():
                    continue
                line, fields = i + 2, row.split(",")
                problem = None
                if len(fields) != n_cols or "\r" in row:
                    column = self.columns[min(len(fields), n_cols) - 1]
                    problem = (column, f"expected {n_cols} comma-separated fields, found {len(fields)}")
                else:
                    for j in int_at:
                        if fields[j] and not _INT_TEXT.fullmatch(fields[j]):
                            problem = (self.columns[j], f"{fields[j]!r} is not an integer")
                            break
                if problem:
                    drops.add("bad_value", _where(names[f], line, problem[0]), problem[1], at=(f, line))
                    continue
                kept.append(row)
                files.append(f)
                users.append(u)
                lines.append(line)
        table = self._read(("\n".join(kept) + "\n").encode() if kept else b"", wanted) if kept else None
        if table is None:
            table = pa.table({c: pa.array([], _TYPES[c]) for c in wanted})
        return table, np.array(files, np.int32), np.array(users, np.int32), np.array(lines, np.int64)


@dataclass
class _Parsed:
    """Rows of one file format for a batch, as numpy columns, plus where each row came from."""

    cols: dict[str, np.ndarray]
    user: np.ndarray   # (N,) index into the batch's learners
    file: np.ndarray   # (N,) index into the batch's file names
    line: np.ndarray   # (N,) 1-based line in that file


class _Batch:
    """Everything one worker computes for one batch of learners."""

    def __init__(self, contents: Contents, strict: bool):
        self.contents = contents
        self.drops = Drops(strict)
        self.skipped: Counter = Counter()
        self.merge: Counter = Counter()
        self.names: list[str] = []       # file names (for messages)
        self.levels: set[int] = set()    # KT levels of the files read
        self.rows_in = 0

    # ---------------------------------------------------------- flag bad rows
    def flag(self, parsed: _Parsed, checks: list[tuple[str, np.ndarray, str, str]]) -> np.ndarray:
        """checks: (reason, bad mask, column, problem); a row counts once, for its first
        failing check. Returns the mask of good rows."""
        bad_any = np.zeros(len(parsed.user), bool)
        for reason, bad, col, problem in checks:
            bad = bad & ~bad_any
            if bad.any():
                i = int(np.argmax(bad))
                f, line = int(parsed.file[i]), int(parsed.line[i])
                self.drops.add(reason, _where(self.names[f], line, col), problem, int(bad.sum()), at=(f, line))
                bad_any |= bad
        return ~bad_any

    def duplicates(self, parsed: _Parsed, keys: list[np.ndarray], ts: np.ndarray) -> np.ndarray:
        """Exact duplicate rows of a learner (all but the first line of each). Duplicates share
        (learner, timestamp), so only rows in such ties are compared: ties are rare, this is cheap."""
        order = _lex_order(parsed.user, ts)
        order = np.arange(len(ts)) if order is None else order
        u, t = parsed.user[order], ts[order]
        same = (u[1:] == u[:-1]) & (t[1:] == t[:-1])
        tie = np.zeros(len(order), bool)
        tie[1:] |= same
        tie[:-1] |= same
        dup = np.zeros(len(order), bool)
        cand = np.sort(order[tie])  # file order: np.unique keeps the earliest line of each copy
        if len(cand):
            rows = np.stack([parsed.user[cand].astype(np.int64), ts[cand]] + [k[cand].astype(np.int64) for k in keys], axis=1)
            _, first = np.unique(rows, axis=0, return_index=True)
            later = np.ones(len(cand), bool)
            later[first] = False
            dup[cand[later]] = True
        return dup


def _parse_kt1_groups(batch: _Batch, groups: dict) -> _Parsed | None:
    if not groups:
        return None
    c = batch.contents
    parts = []
    for g in groups.values():
        table, file, user, line = g.parse(batch, KT1_COLUMNS)
        parts.append(_Parsed({
            "timestamp": _ints(table["timestamp"]), "solving_id": _ints(table["solving_id"]),
            "elapsed_time": _ints(table["elapsed_time"]),
            "question": c.question_ids.lookup(table["question_id"].combine_chunks(), 0).astype(np.int32),
            "answer": _decode(table["user_answer"], ANSWERS, np.int8),
            "_null": (_nulls(table["timestamp"]) | _nulls(table["solving_id"]) | _nulls(table["elapsed_time"])
                      | _nulls(table["question_id"])),
        }, user, file, line))
    p = _concat_parsed(parts)
    cols = p.cols
    good = batch.flag(p, [
        ("bad_value", cols["_null"], "", "a required field is empty"),
        ("bad_value", cols["answer"] == 0, "user_answer", "answer is not one of a, b, c, d"),
        ("negative_time", cols["timestamp"] < 0, "timestamp", "negative timestamp"),
        ("negative_time", cols["elapsed_time"] < 0, "elapsed_time", "negative elapsed_time"),
        ("bad_value", cols["timestamp"] >= MAX_TIMESTAMP, "timestamp", "timestamp after the year 2100 (not ms since 1970?)"),
        ("unknown_question", cols["question"] == 0, "question_id", "question id not in questions.csv"),
    ])
    p = _take(p, good)
    dup = batch.duplicates(p, [p.cols["solving_id"], p.cols["question"], p.cols["answer"], p.cols["elapsed_time"]],
                           p.cols["timestamp"])
    p = _take(p, batch.flag(p, [("duplicate_row", dup, "", "exact duplicate of an earlier row")]))
    return p


def _parse_action_groups(batch: _Batch, groups: dict, sources: dict[str, int]) -> _Parsed | None:
    if not groups:
        return None
    c = batch.contents
    raw: dict[str, int] = {}  # raw strings of action_type / user_answer, to compare rows exactly
    parts = []
    for g in groups.values():
        wanted = ACTION_COLUMNS + ((KT4_EXTRA,) if KT4_EXTRA in g.columns else ())
        table, file, user, line = g.parse(batch, wanted)
        item = _decode(table["item_id"], c.item_ids, np.int64, missing=-1)
        cursor = _ints(table[KT4_EXTRA]) if KT4_EXTRA in wanted else np.zeros(len(item), np.int64)
        parts.append(_Parsed({
            "timestamp": _ints(table["timestamp"]),
            "cursor": cursor,
            "action": _decode(table["action_type"], ACTIONS, np.int8),
            "action_raw": _decode(table["action_type"], lambda v: raw.setdefault(v, len(raw)), np.int64, -1),
            "item_code": item,
            "kind": _decode(table["item_id"], KINDS, np.int8),
            "source": _decode(table["source"], lambda v: sources.setdefault(v, len(sources)), np.int64, NULL),
            "answer": _decode(table["user_answer"], ANSWERS, np.int8),
            "answer_raw": _decode(table["user_answer"], lambda v: raw.setdefault(v, len(raw)), np.int64, -1),
            "platform": _decode(table["platform"], PLATFORMS, np.int8, NULL),
            "_null": _nulls(table["timestamp"]) | _nulls(table["action_type"]) | _nulls(table["item_id"]),
        }, user, file, line))
    p = _concat_parsed(parts)
    cols = p.cols
    kind, dense = cols["kind"], np.where(cols["item_code"] >= 0, cols["item_code"] & 0xFFFFFF, 0)
    unknown = (cols["action"] != OTHER) & (kind > 0) & (cols["item_code"] < 0)
    good = batch.flag(p, [
        ("bad_value", cols["_null"], "", "a required field is empty"),
        ("bad_value", (cols["action"] == RESPOND) & (cols["answer"] == 0), "user_answer",
         "respond without an answer a, b, c or d"),
        ("negative_time", cols["timestamp"] < 0, "timestamp", "negative timestamp"),
        ("negative_time", cols["cursor"] < NULL, KT4_EXTRA, "negative cursor_time"),
        ("bad_value", cols["timestamp"] >= MAX_TIMESTAMP, "timestamp", "timestamp after the year 2100 (not ms since 1970?)"),
        ("unknown_lecture", unknown & (kind == LECTURE), "item_id", "lecture id not in lectures.csv"),
        ("unknown_question", unknown & (kind != LECTURE), "item_id", "question/bundle/explanation id not in questions.csv"),
    ])
    cols["item"] = dense.astype(np.int32)
    p = _take(p, good)
    dup = batch.duplicates(p, [p.cols[k] for k in ("action_raw", "item_code", "cursor", "source", "answer_raw", "platform")],
                           p.cols["timestamp"])
    p = _take(p, batch.flag(p, [("duplicate_row", dup, "", "exact duplicate of an earlier row")]))
    return p


def _lut(dictionary: pa.Array, mapping, dtype, missing: int) -> np.ndarray:
    """Codes of an Arrow dictionary's values, plus one slot at the end for nulls. `mapping`:
    a Codebook, or a function (for the few values that are collected as they come)."""
    if isinstance(mapping, Codebook):
        codes = mapping.lookup(dictionary, missing)
    else:
        codes = np.array([mapping(v) for v in dictionary.to_pylist()], np.int64)
    return np.append(codes, missing).astype(dtype)


def _decode(column: pa.ChunkedArray, mapping, dtype=np.int32, missing: int = 0) -> np.ndarray:
    """A dictionary-encoded string column -> integer codes via `mapping` (see _lut)."""
    parts = []
    for chunk in column.chunks:
        lut = _lut(chunk.dictionary, mapping, dtype, missing)
        idx = chunk.indices.fill_null(len(lut) - 1).to_numpy(zero_copy_only=False)
        parts.append(lut[idx])
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _ints(column: pa.ChunkedArray) -> np.ndarray:
    """int64 column -> numpy, nulls as NULL (negative values are rejected before use)."""
    return column.fill_null(NULL).to_numpy().astype(np.int64, copy=False)


def _nulls(column: pa.ChunkedArray) -> np.ndarray:
    return column.is_null().to_numpy(zero_copy_only=False)


def _concat_parsed(parts: list[_Parsed]) -> _Parsed:
    if len(parts) == 1:
        return parts[0]
    order_key = np.concatenate([p.user for p in parts])
    cat = _Parsed({k: np.concatenate([p.cols[k] for p in parts]) for k in parts[0].cols},
                  order_key, np.concatenate([p.file for p in parts]), np.concatenate([p.line for p in parts]))
    order = np.argsort(cat.file, kind="stable")  # groups -> file order (= learner order)
    return _take(cat, order)


def _take(parsed: _Parsed, keep: np.ndarray) -> _Parsed:
    return _Parsed({k: v[keep] for k, v in parsed.cols.items()}, parsed.user[keep], parsed.file[keep], parsed.line[keep])


def _sort_by_time(parsed: _Parsed) -> _Parsed:
    """Stable sort by (learner, timestamp): files are usually sorted already."""
    order = _lex_order(parsed.user, parsed.cols["timestamp"])
    return parsed if order is None else _take(parsed, order)


# ---------------------------------------------------------------- features: rows and bundle instances
@dataclass
class _Instances:
    """Bundle instances (one showing of a bundle to a learner): the unit of lag and of
    the lecture/media/platform/source features shared by its questions."""

    user: np.ndarray
    shown: np.ndarray
    end: np.ndarray          # submit (KT2+) or KT1 timestamp + elapsed; NULL if never submitted
    bundle: np.ndarray
    lecture_offsets: np.ndarray  # (I+1,) into lecture_values
    lecture_values: np.ndarray
    lecture_ms: np.ndarray
    media_plays: np.ndarray
    platform: np.ndarray
    source: np.ndarray       # index into the batch's source names; NULL = none
    level: np.ndarray

    @staticmethod
    def concat(parts: list["_Instances"]) -> "_Instances":
        parts = [p for p in parts if p is not None]
        offsets, shift = [np.zeros(1, np.int64)], 0
        for p in parts:
            offsets.append(p.lecture_offsets[1:] + shift)
            shift += len(p.lecture_values)
        out = {f: np.concatenate([getattr(p, f) for p in parts]) for f in
               ("user", "shown", "end", "bundle", "lecture_values", "lecture_ms", "media_plays", "platform", "source", "level")}
        return _Instances(lecture_offsets=np.concatenate(offsets), **out)


def _kt1_rows(batch: _Batch, parsed: _Parsed) -> tuple[dict, _Instances]:
    """KT1 answers -> rows + bundle instances. An instance is a run of rows with one
    solving_id; a question seen again inside the run starts a new one (a re-attempt)."""
    c = batch.contents
    p = _sort_by_time(parsed)
    u, ts, sid, q = p.user, p.cols["timestamp"], p.cols["solving_id"], p.cols["question"]
    run = np.cumsum(_run_starts(u, sid)) - 1
    # occurrence number of each question inside its run (0 for the first showing)
    occ = np.zeros(len(q), np.int64)
    multi = np.flatnonzero(np.bincount(run, minlength=run.max() + 1 if len(run) else 0)[run] > 1)
    if len(multi):
        key = run[multi] * (len(c.q_bundle) + 1) + q[multi]
        order = np.argsort(key, kind="stable")
        k = key[order]
        group_start = np.flatnonzero(_run_starts(k))
        rank = np.arange(len(k)) - np.repeat(group_start, np.diff(np.append(group_start, len(k))))
        occ[multi[order]] = rank
    inst = np.cumsum(_run_starts(run, occ)) - 1
    first = np.flatnonzero(_run_starts(inst))
    elapsed = p.cols["elapsed_time"]
    n_inst = len(first)
    shown = ts[first]
    end = shown + np.bincount(inst, weights=elapsed, minlength=n_inst).astype(np.int64)
    empty = np.zeros(n_inst, np.int64)
    instances = _Instances(
        user=u[first], shown=shown, end=end, bundle=c.q_bundle[q[first]],
        lecture_offsets=np.zeros(n_inst + 1, np.int64), lecture_values=np.zeros(0, np.int32),
        lecture_ms=empty + NULL, media_plays=empty + NULL, platform=empty + NULL, source=empty + NULL,
        level=np.ones(n_inst, np.int8),
    )
    rows = {
        "user": u, "inst": inst, "order": ts, "question": q,
        "correct": (p.cols["answer"] == c.q_correct[q]).astype(np.int8),
        "elapsed_ms": elapsed, "answer_changes": np.full(len(q), NULL, np.int64),
        "explanation_ms": np.full(len(q), NULL, np.int64), "kt_level": np.ones(len(q), np.int8),
        "answer": p.cols["answer"],
    }
    return rows, instances


def _action_rows(batch: _Batch, parsed: _Parsed, level: np.ndarray) -> tuple[dict, _Instances, tuple]:
    """KT2..KT4 action logs -> one row per answered question, the bundle instances, and
    the explanation times per (instance, explanation). `level` (per learner) decides which
    features exist: KT3+ explanations and lectures, KT4 media plays."""
    c = batch.contents
    p = _sort_by_time(parsed)
    u, ts, act, kind, item = p.user, p.cols["timestamp"], p.cols["action"], p.cols["kind"], p.cols["item"]
    n = len(u)
    idx = np.arange(n)

    # Bundle instances: an `enter` of a bundle opens one; it lasts until the next one.
    is_enter_b = (act == ENTER) & (kind == BUNDLE)
    enter_pos = np.flatnonzero(is_enter_b)
    n_inst = len(enter_pos)
    count = np.cumsum(is_enter_b)
    inst = count - 1
    inst_user = u[enter_pos]
    valid = inst >= 0
    valid[valid] &= inst_user[inst[valid]] == u[valid]
    inst_c = np.where(valid, inst, 0)
    bundle = item[enter_pos]

    submit = valid & (act == SUBMIT) & (kind == BUNDLE)
    submit[submit] &= item[submit] == bundle[inst[submit]]
    submit_pos = np.full(n_inst, n, np.int64)           # n = never submitted
    s_rows = np.flatnonzero(submit)
    first_submit = np.unique(inst[s_rows], return_index=True)
    submit_pos[first_submit[0]] = s_rows[first_submit[1]]
    submitted = submit_pos < n
    answering = valid & (idx < submit_pos[inst_c])       # between enter and submit

    # Answers: responds to a question of the entered bundle; the last one counts.
    n_q = len(c.q_bundle)
    resp = answering & (act == RESPOND) & (kind == QUESTION)
    resp[resp] &= c.q_bundle[item[resp]] == bundle[inst[resp]]
    resp[resp] &= submitted[inst[resp]]
    r_rows = np.flatnonzero(resp)
    r_key = inst[r_rows] * n_q + item[r_rows]
    order, keys, first, last = _group_first_last(r_key)
    a_inst, a_q = keys // n_q, keys % n_q
    a_answer = p.cols["answer"][r_rows[order[last]]]
    a_responds = last - first + 1
    a_order = ts[r_rows[order[first]]]
    erase = answering & (act == ERASE) & (kind == QUESTION)
    e_keys, e_counts = np.unique(inst[erase] * n_q + item[erase], return_counts=True)
    a_changes = a_responds - 1 + _lookup(keys, e_keys, e_counts, 0)

    # Explanations read after the submit, before the next bundle (later re-reads are
    # left out: they happen after other answers and would leak into their predictions).
    n_e = c.n_explanations + 1
    expl = valid & (act == ENTER) & (kind == EXPLANATION) & (idx > submit_pos[inst_c])
    x_rows = np.flatnonzero(expl)
    x_keys, x_inv = np.unique(inst[x_rows] * n_e + item[x_rows], return_inverse=True)
    x_ms = np.bincount(x_inv, weights=_next_boundary_duration(u, ts, act, x_rows), minlength=len(x_keys)).astype(np.int64)
    a_expl = _lookup(a_inst * n_e + c.q_explanation[a_q], x_keys, x_ms, 0)

    # Lectures entered since the previous bundle was shown belong to the next bundle.
    lect = (act == ENTER) & (kind == LECTURE)
    l_rows = np.flatnonzero(lect)
    l_next = count[l_rows]                                # index of the next bundle instance
    ok = l_next < n_inst
    ok[ok] &= inst_user[l_next[ok]] == u[l_rows[ok]]
    l_rows, l_next = l_rows[ok], l_next[ok]
    l_dur = _next_boundary_duration(u, ts, act, l_rows)
    lecture_ms = np.bincount(l_next, weights=l_dur, minlength=n_inst).astype(np.int64)
    # one entry per lecture, ordered by its last entry (types.py: the last lecture matters)
    l_item = item[l_rows]
    l_key = l_next.astype(np.int64) * (c.n_lectures + 1) + l_item
    last_of = np.unique(l_key[::-1], return_index=True)[1]
    keep = np.sort(len(l_key) - 1 - last_of)
    lecture_values = l_item[keep].astype(np.int32)
    lecture_offsets = np.searchsorted(l_next[keep], np.arange(n_inst + 1)).astype(np.int64)

    play = answering & (act == PLAY)
    media = np.bincount(inst[play], minlength=n_inst).astype(np.int64)

    s_at = np.minimum(submit_pos, n - 1) if n else submit_pos
    platform = np.where(submitted & (p.cols["platform"][s_at] > 0), p.cols["platform"][s_at], p.cols["platform"][enter_pos])
    inst_level = level[inst_user] if n_inst else np.zeros(0, np.int8)
    instances = _Instances(
        user=inst_user, shown=ts[enter_pos], end=np.where(submitted, ts[s_at], NULL), bundle=bundle,
        lecture_offsets=lecture_offsets, lecture_values=lecture_values, lecture_ms=lecture_ms,
        media_plays=media, platform=np.where(platform > 0, platform, NULL), source=p.cols["source"][enter_pos],
        level=inst_level,
    )
    answered = np.bincount(a_inst, minlength=n_inst) > 0
    batch.skipped["unanswered_bundle"] += int((submitted & ~answered).sum())
    batch.skipped["unsubmitted_bundle"] += int((~submitted).sum())

    a_level = inst_level[a_inst]
    rows = {
        "user": inst_user[a_inst], "inst": a_inst, "order": a_order, "question": a_q.astype(np.int32),
        "correct": (a_answer == c.q_correct[a_q]).astype(np.int8),
        "elapsed_ms": ts[s_at[a_inst]] - ts[enter_pos[a_inst]],
        "answer_changes": a_changes.astype(np.int64),
        "explanation_ms": np.where(a_level >= 3, a_expl, NULL),
        "kt_level": a_level.astype(np.int8),
        "answer": a_answer,
    }
    return rows, instances, (x_keys, x_ms)


def _next_boundary_duration(u: np.ndarray, ts: np.ndarray, act: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """How long an explanation/lecture entered at `rows` stayed open: until the next enter,
    quit, respond or submit of the learner (0 if the log ends first)."""
    boundary = np.flatnonzero(np.isin(act, (ENTER, QUIT, RESPOND, SUBMIT)))
    nxt = np.searchsorted(boundary, rows, side="right")
    ok = nxt < len(boundary)
    j = boundary[np.minimum(nxt, len(boundary) - 1)] if len(boundary) else rows
    ok &= u[j] == u[rows]
    return np.where(ok, ts[j] - ts[rows], 0)


def _merge_kt1(batch: _Batch, kt1: tuple, act: tuple, both: np.ndarray) -> tuple[dict, _Instances]:
    """One history for learners with KT1 and an action log (`both`, per learner).

    A KT1 bundle instance matches the log's instance of the same learner and bundle whose
    enter..submit window (widened by MATCH_TOLERANCE_MS) holds the KT1 timestamp. Matched
    questions keep the log's row (KT1's answer is checked against it); a KT1 answer the
    log lacks joins the matched instance with its features; unmatched KT1 instances stay
    KT1 rows."""
    (k_rows, k_inst), (a_rows, a_inst, explanations) = kt1, act
    n_a, nb = len(a_inst.user), batch.contents.n_bundles + 1
    k_pair_id = k_inst.user.astype(np.int64) * nb + k_inst.bundle
    a_pair_id = a_inst.user.astype(np.int64) * nb + a_inst.bundle
    pairs, inv = np.unique(np.concatenate([a_pair_id, k_pair_id]), return_inverse=True)
    a_pair, k_pair = inv[:n_a], inv[n_a:]
    # search key (pair, time): the log instance with the latest enter <= KT1 time + tolerance
    t0 = min(a_inst.shown.min(initial=0), k_inst.shown.min(initial=0)) - MATCH_TOLERANCE_MS
    a_key = (a_pair << 43) | (a_inst.shown - t0)  # times < MAX_TIMESTAMP + tolerance < 2**43
    a_order = np.argsort(a_key, kind="stable")
    j = np.searchsorted(a_key[a_order], (k_pair << 43) | (k_inst.shown + MATCH_TOLERANCE_MS - t0), side="right") - 1
    cand = a_order[np.maximum(j, 0)] if n_a else np.zeros(len(j), np.int64)
    match = (j >= 0) & both[k_inst.user] & (n_a > 0)
    match[match] &= (a_pair[cand[match]] == k_pair[match]) & (a_inst.end[cand[match]] != NULL)
    match[match] &= k_inst.shown[match] <= a_inst.end[cand[match]] + MATCH_TOLERANCE_MS
    # one KT1 instance per log instance (a later KT1 re-showing stays a KT1 row)
    m = np.flatnonzero(match)
    match[:] = False
    match[m[np.unique(cand[m], return_index=True)[1]]] = True
    target = np.where(match, cand, -1)
    batch.merge["kt1_bundles_matched"] += int(match.sum())
    batch.merge["kt1_bundles_unmatched"] += int((both[k_inst.user] & ~match).sum())

    n_q = len(batch.contents.q_bundle)
    row_target = target[k_rows["inst"]]
    in_matched = row_target >= 0
    a_row = _index_of(row_target.astype(np.int64) * n_q + k_rows["question"],
                      a_rows["inst"].astype(np.int64) * n_q + a_rows["question"])
    found = in_matched & (a_row >= 0)
    agree = found & (a_rows["answer"][a_row] == k_rows["answer"])
    batch.merge["answers_agree"] += int(agree.sum())
    batch.merge["answers_disagree"] += int((found & ~agree).sum())
    filled = in_matched & ~found
    batch.merge["kt1_answers_filled"] += int(filled.sum())

    kt1_only = {k: v[~in_matched] for k, v in k_rows.items()}
    kt1_only["inst"] = (np.cumsum(~match) - 1 + n_a)[kt1_only["inst"]]  # after the log's instances
    fill = {k: v[filled] for k, v in k_rows.items()}
    t = row_target[filled]
    level = a_inst.level[t]
    e_keys, e_ms = explanations
    n_e = batch.contents.n_explanations + 1
    expl = _lookup(t.astype(np.int64) * n_e + batch.contents.q_explanation[fill["question"]], e_keys, e_ms, 0)
    fill.update(inst=t, kt_level=level, elapsed_ms=a_inst.end[t] - a_inst.shown[t],
                answer_changes=np.full(len(t), NULL, np.int64), explanation_ms=np.where(level >= 3, expl, NULL))
    parts = (a_rows, kt1_only, fill)
    rows = {k: np.concatenate([part[k] for part in parts]) for k in a_rows}
    return rows, _Instances.concat([a_inst, _subset(k_inst, ~match)])


def _subset(i: _Instances, keep: np.ndarray) -> _Instances:
    offsets, values = _ragged_take(i.lecture_offsets, i.lecture_values, np.flatnonzero(keep))
    return _Instances(
        user=i.user[keep], shown=i.shown[keep], end=i.end[keep], bundle=i.bundle[keep],
        lecture_offsets=offsets, lecture_values=values, lecture_ms=i.lecture_ms[keep],
        media_plays=i.media_plays[keep], platform=i.platform[keep], source=i.source[keep], level=i.level[keep],
    )


# ---------------------------------------------------------------- the output table
def _assemble(batch: _Batch, rows: dict, inst: _Instances, users: list[str]) -> pa.Table:
    """Rows + instances -> the EDNET_INTERACTIONS table (source as batch-local codes)."""
    c = batch.contents
    # lag: shown - end of the learner's latest submitted instance shown before it
    o = _lex_order(inst.user, inst.shown)
    o = np.arange(len(inst.user)) if o is None else o
    done_at = np.where(inst.end[o] != NULL, np.arange(len(o)), -1)
    prev = np.concatenate([[-1], np.maximum.accumulate(done_at)[:-1]]) if len(o) else done_at
    ok = prev >= 0
    ok[ok] &= inst.user[o[prev[ok]]] == inst.user[o[ok]]
    prev_end = np.full(len(o), NULL, np.int64)
    prev_end[o[ok]] = inst.end[o[prev[ok]]]
    lag = np.where(prev_end != NULL, np.maximum(inst.shown - prev_end, 0), NULL)

    order = _lex_order(rows["user"], inst.shown[rows["inst"]], rows["inst"], rows["order"], rows["question"])
    if order is not None:
        rows = {k: v[order] for k, v in rows.items()}
    r_inst, user, level, q = rows["inst"], rows["user"], rows["kt_level"], rows["question"]
    n = len(user)
    user_start = np.flatnonzero(_run_starts(user))
    position = np.arange(n) - np.repeat(user_start, np.diff(np.append(user_start, n)))

    offsets, values = _ragged_take(inst.lecture_offsets, inst.lecture_values, r_inst)
    lectures = pa.ListArray.from_arrays(_arrow(offsets, np.int32), _arrow(values, np.int32))
    if (level < 3).any():  # KT1/KT2 rows: the source has no lectures
        lectures = pa.ListArray.from_arrays(lectures.offsets, lectures.values, mask=pa.array(level < 3))
    columns = {
        "user": pa.array(users, pa.string()).take(_arrow(user, np.int32)),
        "position": _arrow(position, np.int32),
        "timestamp": _arrow(inst.shown[r_inst], np.int64),
        "question": _arrow(q, np.int32),
        "bundle": _arrow(c.q_bundle[q], np.int32),
        "part": _arrow(c.q_part[q], np.int8),
        "tags": c.q_tags.take(_arrow(q, np.int32)),
        "correct": _arrow(rows["correct"], np.int8),
        "elapsed_ms": _arrow(rows["elapsed_ms"], np.int64, rows["elapsed_ms"] == NULL),
        "lag_ms": _arrow(lag[r_inst], np.int64, lag[r_inst] == NULL),
        "answer_changes": _arrow(rows["answer_changes"], np.int16, rows["answer_changes"] == NULL),
        "explanation_ms": _arrow(rows["explanation_ms"], np.int64, rows["explanation_ms"] == NULL),
        "lectures": lectures,
        "lecture_ms": _arrow(inst.lecture_ms[r_inst], np.int64, level < 3),
        "media_plays": _arrow(inst.media_plays[r_inst], np.int16, level < 4),
        "platform": _arrow(inst.platform[r_inst], np.int8, (level < 2) | (inst.platform[r_inst] == NULL)),
        "source": _arrow(inst.source[r_inst], np.int8, (level < 2) | (inst.source[r_inst] == NULL)),
        "kt_level": _arrow(level, np.int8),
    }
    return pa.table(columns, schema=EDNET_INTERACTIONS)


# ---------------------------------------------------------------- numpy helpers
def _run_starts(*keys: np.ndarray) -> np.ndarray:
    """True where any key differs from the previous row (and at row 0)."""
    n = len(keys[0])
    start = np.zeros(n, bool)
    if n:
        start[0] = True
        for k in keys:
            start[1:] |= k[1:] != k[:-1]
    return start


def _group_first_last(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For integer keys: (order, unique keys, index of first and of last of each key in `order`)."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    start = np.flatnonzero(_run_starts(k))
    last = np.append(start[1:], len(k))[: len(start)] - 1
    return order, k[start], start, last


def _lookup(keys: np.ndarray, table_keys: np.ndarray, values: np.ndarray, default) -> np.ndarray:
    """values[table_keys == key] for each key (table_keys sorted, unique); default if absent."""
    if len(table_keys) == 0:
        return np.full(len(keys), default, dtype=values.dtype if len(values) else np.int64)
    i = np.minimum(np.searchsorted(table_keys, keys), len(table_keys) - 1)
    return np.where(table_keys[i] == keys, values[i], default)


def _index_of(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Position of each key in `table` (unique values), -1 where absent."""
    if len(table) == 0:
        return np.full(len(keys), -1, np.int64)
    order = np.argsort(table)
    i = np.minimum(np.searchsorted(table[order], keys), len(table) - 1)
    return np.where(table[order][i] == keys, order[i], -1)


def _ragged_take(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists stored as (offsets (R+1,), values) -> the lists of `rows`, in the same layout."""
    counts = np.diff(offsets)[rows]
    starts = offsets[:-1][rows]
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), values[np.repeat(starts, counts) + within]


def _lex_order(*keys: np.ndarray) -> np.ndarray | None:
    """Permutation sorting rows by keys (primary first), or None when already sorted:
    batches mostly arrive in order, and the check is far cheaper than the sort."""
    n = len(keys[0])
    ok, undecided = np.ones(max(n - 1, 0), bool), np.ones(max(n - 1, 0), bool)
    for k in keys:
        lt, gt = k[:-1] < k[1:], k[:-1] > k[1:]
        ok &= ~(undecided & gt)
        undecided &= ~(lt | gt)
    return None if ok.all() else np.lexsort(keys[::-1])


def _arrow(values: np.ndarray, dtype, missing: np.ndarray | None = None) -> pa.Array:
    """numpy -> Arrow with an optional null mask (pa.array(mask=...) is ~50x slower)."""
    arr = pa.array(values.astype(dtype, copy=False))
    if missing is None or not missing.any():
        return arr
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little"))
    return pa.Array.from_buffers(arr.type, len(arr), [validity, arr.buffers()[1]], null_count=int(missing.sum()))


# ---------------------------------------------------------------- single files (tests, notebooks)
class _InMemory:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, name: str, where: Any) -> bytes:
        return self.data


def _one_file(csv_bytes: bytes, user: str, contents: Contents, level: int):
    out = parse_batch([(user, [LearnerFile(f"KT{level}/{user}.csv", level)])], contents, _InMemory(csv_bytes))
    frame = _SourceVocab().apply(out["table"], out["sources"]).to_pandas()
    frame.attrs.update(dropped=dict(out["drops"].counts), skipped=dict(out["skipped"]))
    return frame


def parse_kt1(csv_bytes: bytes, user: str, contents: Contents):
    """One KT1 file -> interaction rows (pandas, EDNET_INTERACTIONS columns)."""
    return _one_file(csv_bytes, user, contents, 1)


def parse_kt4(csv_bytes: bytes, user: str, contents: Contents, level: int = 4):
    """One KT2/KT3/KT4 action log -> interaction rows (pandas, EDNET_INTERACTIONS columns;
    `source` as dense indices of the default vocabulary SOURCE_NAMES). The DataFrame's
    attrs hold the dropped and skipped counts."""
    return _one_file(csv_bytes, user, contents, level)
