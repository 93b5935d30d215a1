"""The seven OULAD CSVs read and checked: file specs, blocks of rows, bad rows counted.

Every file is read the same way: the header is checked by name (extra columns ignored), then
the rows are parsed in blocks of whole lines, all as text, and converted column by column,
vectorised. The formats seen in the wild are all taken: quoted or not, missing values as
empty or `?` (the UCI copy), integers written as `12.0`.

A bad row is a row with a problem the user can fix: a value that is missing, of the wrong
type or out of range, bytes that are not UTF-8, the wrong number of fields, a second row
with the key of an earlier one (and, checked by oulad_tables.py, an id that no other file
knows). By default it is dropped and counted per reason (`Drops`); with `strict` the first
one raises `BadInput` naming file, line and column. Problems with a whole file (missing,
empty, a column missing) always raise.

A quoted field holding a line break is not supported (OULAD has none): lines are rows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dsrsd_cli.data.archive import RawSource
from dsrsd_cli.data.schema import OULAD_RESULTS
from dsrsd_cli.errors import BadInput

BLOCK_BYTES = 1 << 23          # bytes of whole lines parsed at once (~280K studentVle rows)
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
            on_read(0, size)
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
