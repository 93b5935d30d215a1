"""`dsrsd prepare --dataset oulad`: the seven OULAD CSVs to Parquet (DESIGN §2-§3).

    courses, assessments, vle, studentInfo, studentRegistration, studentAssessment, studentVle
      -> registrations.parquet  studentInfo + registration dates + module length
         clicks.parquet         studentVle summed per (registration, day, vle.csv activity_type)
         assessments.parquet    every registration x every assessment of its presentation,
                                with the submission (day, banked, score) or nulls
         splits.parquet         one split per student (or per presentation: --split-by presentation)
         manifest.json

Every file is read the same way: the header is checked by name (extra columns ignored), then
the rows are parsed in blocks of whole lines, all as text, and converted column by column,
vectorised. The formats seen in the wild are all taken: quoted or not, missing values as
empty or `?` (the UCI copy), integers written as `12.0`.

A bad row is a row with a problem the user can fix: a value that is missing, of the wrong
type or out of range, bytes that are not UTF-8, the wrong number of fields, an id that no
other file knows (a registration with no course, an assessment or a VLE site not listed), a
second row with the key of an earlier one. By default it is dropped and counted per reason
(`manifest["dropped"]`); with `strict` the first one raises `BadInput` naming file, line and
column. Problems with a whole file (missing, empty, a column missing) always raise.
A studentInfo row whose studentRegistration row is missing (or dropped) is kept with null
dates, counted in `manifest["registrations_without_dates"]`.

studentVle.csv (10.6M rows, ~450 MB in the release) is streamed and summed block by block,
so memory follows the size of the output, not of the file. Its identical rows are NOT
duplicates: they are separate visits with the same click count, and they are summed.
A quoted field holding a line break is not supported (OULAD has none): lines are rows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dsrsd_cli import __version__
from dsrsd_cli.data.archive import RawSource
from dsrsd_cli.data.schema import (
    OULAD_ASSESSMENTS,
    OULAD_CLICKS,
    OULAD_REGISTRATIONS,
    OULAD_RESULTS,
    OULAD_SPLITS,
    SCHEMA_VERSION,
)
from dsrsd_cli.data.splits import learner_split
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_dir, write_json

BLOCK_BYTES = 1 << 23          # bytes of whole lines parsed at once (~280K studentVle rows)
COMPACT_ROWS = 4_000_000       # re-sum the partial click sums when they grow past this
N_FOLDS = 5
SPLIT_NAMES = ("train", "valid", "test")
VOCAB_COLUMNS = ("gender", "region", "highest_education", "imd_band", "age_band", "disability", "code_module",
                 "code_presentation")
MISSING = ("", "?")            # the release writes "" (quoted), the UCI copy writes ?

INT16 = (-(2**15), 2**15 - 1)
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


# ----------------------------------------------------------------------------- file specs
@dataclass(frozen=True)
class Col:
    name: str
    kind: str = "str"                        # "str" | "int" | "float"
    nullable: bool = False
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CsvSpec:
    name: str                                # basename, found anywhere inside the raw source
    columns: tuple[Col, ...]
    key: tuple[str, ...] = ()                # a later row with an earlier row's key is a duplicate


def _id(name: str, hi: int = INT64_MAX) -> Col:
    return Col(name, "int", lo=0, hi=hi)


def _day(name: str, nullable: bool = False) -> Col:
    return Col(name, "int", nullable=nullable, lo=INT16[0], hi=INT16[1])


MODULE, PRESENTATION = Col("code_module"), Col("code_presentation")
REGISTRATION_KEY = ("code_module", "code_presentation", "id_student")

COURSES = CsvSpec(
    "courses.csv",
    (MODULE, PRESENTATION, Col("module_presentation_length", "int", lo=0, hi=INT16[1])),
    key=("code_module", "code_presentation"),
)
ASSESSMENTS = CsvSpec(
    "assessments.csv",
    (MODULE, PRESENTATION, _id("id_assessment", INT32_MAX), Col("assessment_type", choices=("TMA", "CMA", "Exam")),
     _day("date", nullable=True), Col("weight", "float", lo=0, hi=100)),
    key=("id_assessment",),
)
VLE = CsvSpec("vle.csv", (_id("id_site"), MODULE, PRESENTATION, Col("activity_type")), key=("id_site",))
STUDENT_INFO = CsvSpec(
    "studentInfo.csv",
    (MODULE, PRESENTATION, _id("id_student"), Col("gender"), Col("region"), Col("highest_education"),
     Col("imd_band", nullable=True), Col("age_band"), Col("num_of_prev_attempts", "int", lo=0, hi=INT16[1]),
     Col("studied_credits", "int", lo=0, hi=INT16[1]), Col("disability"), Col("final_result", choices=OULAD_RESULTS)),
    key=REGISTRATION_KEY,
)
STUDENT_REGISTRATION = CsvSpec(
    "studentRegistration.csv",
    (MODULE, PRESENTATION, _id("id_student"), _day("date_registration", True), _day("date_unregistration", True)),
    key=REGISTRATION_KEY,
)
STUDENT_ASSESSMENT = CsvSpec(
    "studentAssessment.csv",
    (_id("id_assessment", INT32_MAX), _id("id_student"), _day("date_submitted"), Col("is_banked", "int", lo=0, hi=1),
     Col("score", "float", nullable=True, lo=0, hi=100)),
    key=("id_assessment", "id_student"),
)
STUDENT_VLE = CsvSpec(
    "studentVle.csv",
    (MODULE, PRESENTATION, _id("id_student"), _id("id_site"), _day("date"),
     Col("sum_click", "int", lo=0, hi=INT32_MAX)),
)
SPECS = (COURSES, ASSESSMENTS, VLE, STUDENT_INFO, STUDENT_REGISTRATION, STUDENT_ASSESSMENT, STUDENT_VLE)

_INT = r"^[+-]?[0-9]{1,18}(\.0*)?$"              # "12.0" is an integer (pandas writes ints so)
_FLOAT = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_TEXT = {pa.string(): pd.StringDtype()}.get     # text columns as pandas' NA-aware string dtype (pandas 2 and 3)


# ----------------------------------------------------------------------------- rows and drops
@dataclass
class Rows:
    """Rows of one CSV (or one block of it): typed values and what is wrong with each row."""

    spec: CsvSpec
    where: str                               # the file, as the user knows it, for messages
    text: pa.Table                           # the text of each row, for messages
    frame: pd.DataFrame                      # typed values; column "line" = line in the file
    problem: np.ndarray                      # per row: index into `reasons`, -1 if fine
    reasons: list[tuple[str, str]]           # (column, problem), shared by a file's blocks
    # lines dropped before parsing (not UTF-8, wrong width): (line, column, problem, found)
    early: list[tuple[int, str, str, str]] = field(default_factory=list)

    def flag(self, mask, column: str, what: str) -> None:
        """Mark rows as bad; a row keeps the first reason it was given."""
        mask = np.asarray(mask, dtype=bool) & (self.problem < 0)
        if mask.any():
            reason = (column, f"{column} {what}")
            if reason not in self.reasons:
                self.reasons.append(reason)
            self.problem[mask] = self.reasons.index(reason)

    @property
    def ok(self) -> np.ndarray:
        return self.problem < 0

    def found(self, i: int, column: str) -> str:
        return ",".join(str(self.text[c][i].as_py()).strip() for c in column.split(","))


class Drops:
    """Counts dropped rows per reason, or (strict) raises on the first bad row."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.counts: dict[str, int] = {}

    def settle(self, rows: Rows) -> pd.DataFrame:
        """The good rows' frame; the bad ones are counted (or, strict, the first raises)."""
        file = rows.spec.name
        if self.strict:
            bad = list(rows.early)
            flagged = np.flatnonzero(~rows.ok)
            if len(flagged):
                i = flagged[np.argmin(rows.frame["line"].to_numpy()[flagged])]
                column, problem = rows.reasons[rows.problem[i]]
                bad.append((int(rows.frame["line"].iat[i]), column, problem, rows.found(i, column)))
            if bad:
                line, column, problem, found = min(bad)
                raise BadInput(
                    f"{rows.where}, line {line}, column {column}: {problem} (found {found[:80]!r}); "
                    "fix the file, or run without --strict to drop and count such rows"
                )
        for _, _, problem, _ in rows.early:
            self._count(f"{file}: {problem}", 1)
        codes, counts = np.unique(rows.problem[~rows.ok], return_counts=True)
        for code, n in zip(codes, counts):
            self._count(f"{file}: {rows.reasons[code][1]}", int(n))
        return rows.frame[rows.ok].reset_index(drop=True)

    def _count(self, reason: str, n: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n


# ----------------------------------------------------------------------------- reading
def _line_blocks(stream: BinaryIO, on_read: Callable[[int], None]) -> Iterator[tuple[int, int, bytes]]:
    """(line number of its first line, number of lines, bytes) for blocks of whole lines after the header."""
    line, carry = 2, b""
    while chunk := stream.read(BLOCK_BYTES):
        on_read(len(chunk))
        buf = carry + chunk
        cut = buf.rfind(b"\n") + 1
        block, carry = buf[:cut], buf[cut:]
        if block:
            n_lines = block.count(b"\n")
            yield line, n_lines, block
            line += n_lines
    if carry:
        yield line, 1, carry


def _header(first: bytes, spec: CsvSpec, where: str) -> list[str]:
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput(f"{where}, line 1: the header is not valid UTF-8; save the file as UTF-8") from None
    if not text.strip():
        raise BadInput(f"{where}: the file is empty; it needs a header line and rows (re-extract it)")
    names = [n.strip() for n in next(csv.reader([text.rstrip("\r\n")]))]
    for col in spec.columns:
        if col.name not in names:
            raise BadInput(
                f"{where}, line 1: column {col.name!r} is missing (the header has: {', '.join(names)}); "
                f"{spec.name} needs {', '.join(c.name for c in spec.columns)}"
            )
        if names.count(col.name) > 1:
            raise BadInput(f"{where}, line 1: column {col.name!r} appears twice; keep one")
    # pyarrow needs unique names; other repeated columns are not read anyway
    return [n if names.index(n) == i else f"{n}#{i}" for i, n in enumerate(names)]


def _blank_bad_utf8(block: bytes, first_line: int, names: list[str], early: list) -> bytes:
    """Blank out the lines that are not UTF-8 (keeping the line count) and note each one."""
    lines = block.split(b"\n")
    for i, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            # name the field holding the bad bytes: they decode to lone surrogates here
            fields = next(csv.reader([line.decode("utf-8", "surrogateescape")]), [""])
            bad = next((j for j, v in enumerate(fields) if re.search("[\udc80-\udcff]", v)), 0)
            column = names[min(bad, len(names) - 1)]
            found = fields[bad].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            early.append((first_line + i, column, f"{column} is not valid UTF-8", found))
            lines[i] = b""
    return b"\n".join(lines)


def _fields_fast(block: bytes, n_lines: int, names: list[str], wanted: list[str]) -> pa.Table | None:
    """pyarrow's parser; None if any line did not split into len(names) fields."""
    broken = []

    def note(row) -> str:
        broken.append(row)
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(block),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=note),
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted, column_types=dict.fromkeys(wanted, pa.string()),
                strings_can_be_null=False, quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid:
        return None
    return table if not broken and table.num_rows == n_lines else None


def _fields_slow(
    block: bytes, first_line: int, names: list[str], wanted: list[str], early: list
) -> tuple[pa.Table, np.ndarray]:
    """Line by line, for the rare block with a line of the wrong width: note and skip those."""
    columns: dict[str, list[str]] = {c: [] for c in wanted}
    lines = []
    texts = block.decode("utf-8").split("\n")
    if texts and texts[-1] == "":
        texts.pop()
    for i, text in enumerate(texts):
        text = text.rstrip("\r")
        if not text.strip():
            continue
        fields = next(csv.reader([text]))
        if len(fields) != len(names):
            column = names[min(len(fields), len(names) - 1)]
            found = f"{len(fields)} fields, header has {len(names)}"
            early.append((first_line + i, column, "row has the wrong number of fields", found))
            continue
        for c in wanted:
            columns[c].append(fields[names.index(c)])
        lines.append(first_line + i)
    table = pa.table({c: pa.array(v, pa.string()) for c, v in columns.items()})
    return table, np.asarray(lines, dtype=np.int64)


def _drop_blank_lines(
    table: pa.Table, lines: np.ndarray, block: bytes, first_line: int
) -> tuple[pa.Table, np.ndarray]:
    """pyarrow reads a blank line as a row of empty fields: drop those rows (keeping the numbering)."""
    empty = np.ones(table.num_rows, dtype=bool)
    for column in table.columns:
        empty &= pc.equal(column, "").to_numpy(zero_copy_only=False)
    if not empty.any():
        return table, lines
    texts = block.split(b"\n")
    blank = np.array([not texts[line - first_line].strip() for line in lines[empty]])
    drop = np.zeros(table.num_rows, dtype=bool)
    drop[np.flatnonzero(empty)[blank]] = True
    return table.filter(pa.array(~drop)), lines[~drop]


def _numbers(text: pa.ChunkedArray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, parsed, missing) of a numeric text column; values are 0 where not parsed."""
    target = pa.int64() if kind == "int" else pa.float64()
    with contextlib.suppress(pa.ArrowInvalid):     # the common case, and 10x faster: every value is clean
        values = pc.cast(text, target).to_numpy(zero_copy_only=False)
        if kind == "int" or np.isfinite(values).all():
            return values, np.ones(len(values), dtype=bool), np.zeros(len(values), dtype=bool)
    s = pc.utf8_trim_whitespace(text)
    missing = _missing(s)
    parsed = pc.match_substring_regex(s, _INT if kind == "int" else _FLOAT).to_numpy(zero_copy_only=False) & ~missing
    clean = pc.if_else(pa.array(parsed), s, "0")
    if kind == "int":
        clean = pc.replace_substring_regex(clean, r"\.0*$", "")
    return pc.cast(clean, target).to_numpy(zero_copy_only=False), parsed, missing


def _missing(s: pa.ChunkedArray) -> np.ndarray:
    missing = np.zeros(len(s), dtype=bool)
    for token in MISSING:                    # (pc.is_in rebuilds its hash set per chunk: slow)
        missing |= pc.equal(s, token).to_numpy(zero_copy_only=False)
    return missing


def _typed(rows: Rows) -> None:
    """Convert the text columns to values, flagging what is missing, does not convert or does not fit."""
    frame = {}
    for col in rows.spec.columns:
        text = rows.text[col.name]
        if col.kind == "str":
            s = pc.utf8_trim_whitespace(text)
            missing = _missing(s)
            values = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), s).to_pandas(types_mapper=_TEXT)
            if col.choices:
                unknown = ~missing & ~values.isin(col.choices).to_numpy()
                rows.flag(unknown, col.name, f"is not one of {'|'.join(col.choices)}")
            if col.name == "imd_band":        # the release writes "10-20" for "10-20%"
                values = values.str.replace(r"^(\d+-\d+)$", r"\1%", regex=True)
            parsed = ~missing
        else:
            values, parsed, missing = _numbers(text, col.kind)
            rows.flag(~parsed & ~missing, col.name, "is not an integer" if col.kind == "int" else "is not a number")
            if col.lo is not None:
                what = "is negative" if col.lo == 0 else f"is below {col.lo}"
                rows.flag(parsed & (values < col.lo), col.name, what)
            if col.hi is not None:
                rows.flag(parsed & (values > col.hi), col.name, f"is above {col.hi}")
            if col.kind == "float":
                values = np.where(parsed, values, np.nan)
            elif col.nullable:
                values = pd.arrays.IntegerArray(values, ~parsed)
        if not col.nullable:
            rows.flag(missing, col.name, "is missing")
        frame[col.name] = values
    rows.frame = pd.DataFrame(frame).assign(line=rows.frame["line"].to_numpy())


class Reader:
    """Reads the seven CSVs of one raw source; keeps rows_in and the drops."""

    def __init__(self, source: RawSource, drops: Drops):
        self.source, self.drops = source, drops
        self.members: dict[str, str] = {}
        for spec in SPECS:
            member = source.find(spec.name)
            if member is None:
                raise BadInput(
                    f"{source.path}: {spec.name} not found (looked for it by name anywhere inside); OULAD needs all "
                    f"seven: {', '.join(s.name for s in SPECS)}"
                )
            self.members[spec.name] = member
        self.rows_in: dict[str, int] = {}

    def where(self, spec: CsvSpec) -> str:
        member = self.members[spec.name]
        return str(self.source.path / member) if self.source.kind == "dir" else f"{self.source.path}:{member}"

    def blocks(self, spec: CsvSpec, on_read: Callable[[int, int], None] = lambda n, total: None) -> Iterator[Rows]:
        """The file's rows, block by block, typed and checked value by value (not yet settled)."""
        where, reasons = self.where(spec), []
        wanted = [c.name for c in spec.columns]
        self.rows_in[spec.name] = 0
        with self.source.open_member(self.members[spec.name]) as (stream, size):
            names = _header(stream.readline(), spec, where)
            for first_line, n_lines, block in _line_blocks(stream, lambda n: on_read(n, size)):
                early: list = []
                try:
                    block.decode("utf-8")
                except UnicodeDecodeError:
                    block = _blank_bad_utf8(block, first_line, names, early)
                table = _fields_fast(block, n_lines, names, wanted)
                if table is not None:
                    lines = first_line + np.arange(table.num_rows, dtype=np.int64)
                else:
                    table, lines = _fields_slow(block, first_line, names, wanted, early)
                table, lines = _drop_blank_lines(table, lines, block, first_line)
                self.rows_in[spec.name] += table.num_rows + len(early)
                problem = np.full(table.num_rows, -1, np.int32)
                rows = Rows(spec, where, table, pd.DataFrame({"line": lines}), problem, reasons, early)
                _typed(rows)
                yield rows
        if self.rows_in[spec.name] == 0:
            raise BadInput(f"{where}: the file has a header but no rows; re-extract it from the OULAD release")

    def whole(self, spec: CsvSpec) -> Rows:
        """A small file's rows in one piece, with duplicate keys flagged."""
        parts = list(self.blocks(spec))
        rows = parts[0]
        if len(parts) > 1:
            rows = Rows(
                spec, rows.where, pa.concat_tables([p.text for p in parts]),
                pd.concat([p.frame for p in parts], ignore_index=True),
                np.concatenate([p.problem for p in parts]), rows.reasons, [e for p in parts for e in p.early],
            )
        if spec.key:
            # only rows that are otherwise fine count as the "earlier row"
            dup = np.zeros(len(rows.frame), dtype=bool)
            dup[rows.ok] = rows.frame.loc[rows.ok, list(spec.key)].duplicated(keep="first").to_numpy()
            rows.flag(dup, ",".join(spec.key), "repeats the key of an earlier row")
        return rows


# ----------------------------------------------------------------------------- lookups
def _keys(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.Index:
    """One hashable string per row for a multi-column key."""
    key = frame[columns[0]].astype("string")
    for c in columns[1:]:
        key = key + "\x1f" + frame[c].astype("string")
    return pd.Index(key)


class Presentations:
    """Module presentations of courses.csv, in sorted order: index i <-> (module, presentation)."""

    def __init__(self, courses: pd.DataFrame):
        self.frame = courses.sort_values(["code_module", "code_presentation"]).reset_index(drop=True)
        self.index = _keys(self.frame, ("code_module", "code_presentation"))

    def of(self, frame: pd.DataFrame) -> np.ndarray:
        """Presentation index per row of `frame`; -1 where courses.csv does not list it."""
        # factorize first: a block has ~10^5 rows but only a few distinct (module, presentation)
        module, modules = pd.factorize(frame["code_module"])
        presentation, presentations = pd.factorize(frame["code_presentation"])
        pairs = pd.DataFrame({"code_module": np.repeat(modules, len(presentations)),
                              "code_presentation": np.tile(presentations, len(modules))})
        lookup = np.append(self.index.get_indexer(_keys(pairs, ("code_module", "code_presentation"))), -1)
        known = (module >= 0) & (presentation >= 0)
        return lookup[np.where(known, module * len(presentations) + presentation, -1)]


class Registrations:
    """Finds the registration (row of the sorted registrations frame) of (presentation index, id_student) pairs."""

    def __init__(self, presentation: np.ndarray, student: np.ndarray):
        self.students = pd.Index(np.unique(student))
        self.keys = pd.Index(self._key(presentation, self.students.get_indexer(student)))

    def _key(self, presentation: np.ndarray, student: np.ndarray) -> np.ndarray:
        return presentation.astype(np.int64) * len(self.students) + student

    def row(self, presentation: np.ndarray, student: np.ndarray) -> np.ndarray:
        """Registration row per pair; -1 where the student is not registered in that presentation."""
        s = self.students.get_indexer(student)
        found = self.keys.get_indexer(self._key(presentation, s))
        return np.where((presentation >= 0) & (s >= 0), found, -1)


class ClickSums:
    """Running click sums per (registration row, day, activity), one int64 key per cell.

    The key sorts like (registration, day, activity), and registrations are sorted by
    (module, presentation, student): sorting the keys gives the output order. Partial sums
    of many blocks are merged now and then, so memory follows the output, not the input."""

    DAYS = INT16[1] - INT16[0] + 1

    def __init__(self, n_activities: int):
        self.n_activities = n_activities
        self.parts: list[pd.Series] = []
        self.n_rows = 0

    def add(self, registration: np.ndarray, day: np.ndarray, activity: np.ndarray, clicks: np.ndarray) -> None:
        key = (registration.astype(np.int64) * self.DAYS + (day - INT16[0])) * self.n_activities + activity
        self.parts.append(pd.Series(clicks, index=key).groupby(level=0, sort=False).sum())
        self.n_rows += len(self.parts[-1])
        if self.n_rows > COMPACT_ROWS:
            self.parts = [self._merged(sort=False)]
            self.n_rows = len(self.parts[0])

    def _merged(self, sort: bool) -> pd.Series:
        if not self.parts:
            return pd.Series([], index=pd.Index([], dtype=np.int64), dtype=np.int64)
        return pd.concat(self.parts).groupby(level=0, sort=sort).sum()

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(registration row, day, activity, clicks), sorted."""
        sums = self._merged(sort=True)
        key = sums.index.to_numpy()
        cell, activity = np.divmod(key, self.n_activities)
        registration, day = np.divmod(cell, self.DAYS)
        return registration, day + INT16[0], activity, sums.to_numpy()


def _flag_unknown_course(rows: Rows, presentations: Presentations) -> None:
    unknown = presentations.of(rows.frame) < 0
    rows.flag(unknown, "code_module,code_presentation", "is not a module presentation of courses.csv")


# ----------------------------------------------------------------------------- the outputs
def _registrations(reader: Reader, presentations: Presentations) -> tuple[pd.DataFrame, int]:
    """studentInfo + studentRegistration dates + module length; and how many had no dates."""
    info = reader.whole(STUDENT_INFO)
    _flag_unknown_course(info, presentations)
    info = reader.drops.settle(info)

    dates = reader.whole(STUDENT_REGISTRATION)
    known = _keys(info, REGISTRATION_KEY)
    dates.flag(known.get_indexer(_keys(dates.frame, REGISTRATION_KEY)) < 0, "id_student",
               "has no studentInfo.csv row for this module presentation")
    dates = reader.drops.settle(dates)

    regs = info.drop(columns="line").merge(
        dates.drop(columns="line"), on=list(REGISTRATION_KEY), how="left", indicator=True)
    without_dates = int((regs["_merge"] == "left_only").sum())
    regs = regs.drop(columns="_merge").merge(presentations.frame, on=["code_module", "code_presentation"], how="left")
    return regs.sort_values(list(REGISTRATION_KEY), ignore_index=True), without_dates


def _assessments(
    reader: Reader, regs: pd.DataFrame, assessments: pd.DataFrame, presentations: Presentations
) -> pd.DataFrame:
    """One row per registration x assessment of its presentation, with the submission if any."""
    sub = reader.whole(STUDENT_ASSESSMENT)
    assessment = pd.Index(assessments["id_assessment"]).get_indexer(sub.frame["id_assessment"])
    sub.flag(assessment < 0, "id_assessment", "is not in assessments.csv")
    presentation = np.append(presentations.of(assessments), -1)[assessment]     # -1 stays -1
    registrations = Registrations(presentations.of(regs), regs["id_student"].to_numpy())
    sub.flag(registrations.row(presentation, sub.frame["id_student"].to_numpy()) < 0, "id_student",
             "has no registration (studentInfo.csv) in the assessment's module presentation")
    sub = reader.drops.settle(sub)

    table = regs[list(REGISTRATION_KEY)].merge(
        assessments.drop(columns="line"), on=["code_module", "code_presentation"])
    table = table.merge(sub.drop(columns="line"), on=["id_assessment", "id_student"], how="left")
    table = table.rename(columns={"date": "due_day", "date_submitted": "submitted_day"})
    order = ["code_module", "code_presentation", "id_student", "due_day", "id_assessment"]
    return table.sort_values(order, na_position="last", ignore_index=True)


def _clicks(reader: Reader, vle: pd.DataFrame, regs: pd.DataFrame, presentations: Presentations,
            activity_types: list[str], console: Console | None) -> dict[str, pa.Array | np.ndarray]:
    """studentVle summed per (registration, day, vle.csv activity type), streamed block by block."""
    site_index = pd.Index(vle["id_site"])
    site_presentation = presentations.of(vle)
    site_activity = pd.Index(activity_types).get_indexer(vle["activity_type"])
    registrations = Registrations(presentations.of(regs), regs["id_student"].to_numpy())
    sums = ClickSums(len(activity_types))

    with _progress(console, "studentVle.csv") as on_read:
        for block in reader.blocks(STUDENT_VLE, on_read):
            f = block.frame
            site = site_index.get_indexer(f["id_site"])
            block.flag(site < 0, "id_site", "is not in vle.csv")
            presentation = presentations.of(f)
            block.flag(site_presentation[site] != presentation, "id_site",
                       "belongs to another module presentation in vle.csv")
            registration = registrations.row(presentation, f["id_student"].to_numpy())
            block.flag(registration < 0, "id_student",
                       "has no registration (studentInfo.csv) in this module presentation")
            ok = block.ok
            good = reader.drops.settle(block)
            sums.add(registration[ok], good["date"].to_numpy(), site_activity[site[ok]], good["sum_click"].to_numpy())

    registration, day, activity, clicks = sums.result()
    if len(clicks) and clicks.max() > INT32_MAX:
        raise BadInput(f"{reader.where(STUDENT_VLE)}: a student's clicks of one day and activity type sum past "
                       f"{INT32_MAX}; check sum_click")
    return {
        "code_module": _decode(registration, regs["code_module"]),
        "code_presentation": _decode(registration, regs["code_presentation"]),
        "id_student": regs["id_student"].to_numpy()[registration],
        "day": day, "activity_type": _decode(activity, activity_types), "clicks": clicks,
    }


@contextlib.contextmanager
def _progress(console: Console | None, what: str) -> Iterator[Callable[[int, int], None]]:
    """An on_read(n_bytes, total_bytes) callback that drives a rich progress bar (or nothing)."""
    if console is None:
        yield lambda n, total: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(what, total=None)
        yield lambda n, total: progress.update(task, advance=n, total=total)


# ----------------------------------------------------------------------------- splits
def _split_by_learner(regs: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict]:
    """Every registration of a student in the student's split (a retake never crosses splits)."""
    per_student = learner_split(regs["id_student"].unique().tolist(), seed=seed, n_folds=N_FOLDS)
    per_student["learner"] = per_student["learner"].astype(np.int64)
    split = regs[list(REGISTRATION_KEY)].merge(per_student, left_on="id_student", right_on="learner", how="left")
    return split.drop(columns="learner"), {}


def _presentation_order(code: str) -> tuple[int, str]:
    match = re.fullmatch(r"(\d{4})([A-Z])", code)
    if not match:
        raise BadInput(f"code_presentation {code!r} is not YEAR+LETTER (e.g. 2013J), so presentations cannot be "
                       "ordered in time; use --split-by learner")
    return int(match[1]), match[2]         # B (February start) before J (October start)


def _split_by_presentation(regs: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict]:
    """Per module: latest presentation -> test, the one before -> valid, earlier ones -> train.

    A module with two presentations gives train + test (no valid); one with a single
    presentation gives train only (nothing later to test on). Folds are per student."""
    roles: dict[str, dict[str, str]] = {}
    for module, group in regs.groupby("code_module"):
        ordered = sorted(group["code_presentation"].unique(), key=_presentation_order)
        tail = ["valid", "test"] if len(ordered) >= 3 else ["test"] if len(ordered) == 2 else []
        roles[module] = dict(zip(ordered, ["train"] * (len(ordered) - len(tail)) + tail))
    split = regs[list(REGISTRATION_KEY)].copy()
    split["split"] = [roles[m][p] for m, p in zip(split["code_module"], split["code_presentation"])]
    dev_students = split.loc[split["split"] != "test", "id_student"].unique().tolist()
    folds = learner_split(dev_students, seed=seed, fractions=(1.0, 0.0, 0.0), n_folds=N_FOLDS)
    fold_of = dict(zip(folds["learner"].astype(np.int64), folds["fold"]))
    fold = split["id_student"].map(fold_of).fillna(-1)
    split["fold"] = np.where(split["split"] == "test", -1, fold).astype(np.int8)
    if not (split["split"] == "test").any():
        raise BadInput("--split-by presentation: no module has two presentations, so nothing is later to test on; "
                       "use --split-by learner")
    test_students = set(split.loc[split["split"] == "test", "id_student"])
    train_students = set(split.loc[split["split"] == "train", "id_student"])
    return split, {
        "presentations": roles,
        "test_students": len(test_students),
        "test_students_in_train": len(test_students & train_students),
    }


SPLITTERS: dict[str, Callable[[pd.DataFrame, int], tuple[pd.DataFrame, dict]]] = {
    "learner": _split_by_learner,
    "presentation": _split_by_presentation,
}


# ----------------------------------------------------------------------------- writing
def _write(frame: pd.DataFrame | dict, schema: pa.Schema, path: Path) -> int:
    arrays = [
        column if isinstance(column := frame[f.name], pa.Array) else pa.array(column, type=f.type, from_pandas=True)
        for f in schema
    ]
    table = pa.Table.from_arrays(arrays, schema=schema)
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def _decode(codes: np.ndarray, names) -> pa.Array:
    """Integer codes -> strings, through a dictionary (fast for millions of rows)."""
    dictionary = pa.array(list(names), pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dictionary).cast(pa.string())


def _print_drops(console: Console, counts: dict[str, int]) -> None:
    if not counts:
        console.print("[green]No rows dropped.[/green]")
        return
    table = Table(title="OULAD rows dropped (use --strict to stop at the first one)")
    table.add_column("file: column problem")
    table.add_column("rows", justify="right")
    for reason, n in sorted(counts.items()):
        table.add_row(reason, f"{n:,}")
    console.print(table)


# ----------------------------------------------------------------------------- entry point
def prepare_oulad(
    raw: Path,
    out: Path,
    *,
    seed: int = 0,
    split_by: str = "learner",
    force: bool = False,
    strict: bool = False,
    console: Console | None = None,
    extra_manifest: dict | None = None,
) -> dict:
    """The seven OULAD CSVs in `raw` (a folder or an archive) -> Parquet in `out`. Returns the manifest."""
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
    _flag_unknown_course(assessments, presentations)
    assessments = drops.settle(assessments)
    vle = reader.whole(VLE)
    _flag_unknown_course(vle, presentations)
    vle = drops.settle(vle)
    activity_types = sorted(vle["activity_type"].unique())

    regs, without_dates = _registrations(reader, presentations)
    if regs.empty:
        n_dropped = sum(drops.counts.values())
        raise BadInput(f"{reader.where(STUDENT_INFO)}: no registration left after dropping {n_dropped} bad rows; "
                       "run with --strict to see the first one")
    table = _assessments(reader, regs, assessments, presentations)
    clicks = _clicks(reader, vle, regs, presentations, activity_types, console)
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
    if console is not None:
        _print_drops(console, drops.counts)
    return manifest
