"""Riiid's train.csv -> checked rows, one chunk of the file at a time.

train.csv (101M rows, 5.4 GB) is read as a stream of ~8 MB blocks cut at line ends, so
memory stays flat in the file size. Each block is one typed pyarrow.csv parse (every
column an integer, float or boolean); a block that does not parse (a field that is not a
number, a wrong number of fields, bytes that are not UTF-8) is re-read line by line to
find its bad lines, then parsed as text and converted column by column. The rows are then
checked column by column (`check_rows`):

    placement   user_id, timestamp, content_type_id, task_container_id: a row whose
                learner, time or container cannot be read cannot be placed, and is removed
    payload     content_id known in questions.csv / lectures.csv, answered_correctly
                (0/1 on a question, -1 on a lecture), user_answer -1..3, a finite
                prior_question_elapsed_time >= 0 (or empty), prior_question_had_explanation
                True/False (or empty)

A bad row is dropped and counted per reason in `Drops` (wrong_field_count, not_utf8,
bad_value, negative_time, unknown_question, unknown_lecture), or with strict the earliest is raised naming file,
line and column. A question row whose payload is bad stays as a *marker*: it is not an
answer (nothing is written for it) but its container still counts as shown, so the
learner's containers keep their order and the prior_* values of the next container are
never shifted onto the wrong one (riiid_interactions.py). Lines are counted from the
header (line 1); Riiid's train.csv has no quoted fields, so one line is one row.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from typing import BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dsrsd_cli.data.ednet_format import INT_TEXT, MAX_TIMESTAMP, NULL, Drops, location
from dsrsd_cli.data.riiid_contents import RiiidContents
from dsrsd_cli.errors import BadInput

INT_COLUMNS = ("timestamp", "user_id", "content_id", "content_type_id", "task_container_id", "user_answer",
               "answered_correctly")
ELAPSED, EXPLANATION = "prior_question_elapsed_time", "prior_question_had_explanation"
TRAIN_COLUMNS = (*INT_COLUMNS, ELAPSED, EXPLANATION)  # read; row_id is not needed
TYPES = {**{c: pa.int64() for c in INT_COLUMNS}, ELAPSED: pa.float64(), EXPLANATION: pa.bool_()}
TRUE, FALSE = ("True", "true", "TRUE", "1"), ("False", "false", "FALSE", "0")
CHUNK_BYTES = 8 << 20


# ---------------------------------------------------------------- checked rows
@dataclass
class Rows:
    """Checked rows of train.csv, one entry per placeable row, in file order."""

    user: np.ndarray       # int64 Riiid user_id
    ts: np.ndarray         # int64 ms since the learner's first event
    line: np.ndarray       # int64 line in train.csv (header = 1): the tie-break of equal timestamps
    lecture: np.ndarray    # bool: content_type_id 1
    container: np.ndarray  # int64 task_container_id
    item: np.ndarray       # int64 dense question (questions) or lecture (lectures) index; 0 on markers
    correct: np.ndarray    # int8 answered_correctly of answers
    elapsed: np.ndarray    # int64 prior_question_elapsed_time in ms (rounded); NULL if empty or bad
    answer: np.ndarray     # bool: a question row to write (False: a marker, see the module doc)

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray | slice) -> "Rows":
        return Rows(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: list["Rows"]) -> "Rows":
        return Rows(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Rows)})

    def to_arrow(self) -> pa.RecordBatch:
        return pa.record_batch({f.name: getattr(self, f.name) for f in fields(self)})

    @staticmethod
    def from_arrow(table: pa.Table) -> "Rows":
        return Rows(**{f.name: table[f.name].to_numpy() for f in fields(Rows)})


# ---------------------------------------------------------------- the stream of blocks
def read_header(f: BinaryIO, name: str) -> tuple[list[str], bytes]:
    """The header's column names (checked) and the bytes read past it."""
    buf = b""
    while b"\n" not in buf:
        more = f.read(1 << 16)
        if not more:
            break
        buf += more
    if buf.startswith(b"\xef\xbb\xbf"):
        buf = buf[3:]
    cut = buf.find(b"\n")
    head, rest = (buf, b"") if cut < 0 else (buf[:cut], buf[cut + 1 :])
    try:
        header = [h.strip().strip('"') for h in head.decode("utf-8").rstrip("\r").split(",")]
    except UnicodeDecodeError:
        raise BadInput(f"{location(name, 1)}: header is not UTF-8 text; use the Riiid train.csv as distributed") from None
    missing = [c for c in TRAIN_COLUMNS if c not in header]
    if not head.strip() or missing:
        found = ", ".join(h for h in header if h) or "an empty file"
        raise BadInput(f"{location(name, 1)}: missing column(s) {', '.join(missing)} (found: {found}); "
                       "use the Riiid train.csv as distributed on Kaggle")
    return header, rest


def iter_blocks(f: BinaryIO, rest: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[bytes, int, int, int]]:
    """(block of whole lines, its first line number, its number of lines, bytes of the
    body read so far)."""
    carry, line, done, eof = rest, 2, len(rest), False
    while not eof:
        more = f.read(chunk_bytes)
        eof = not more
        done += len(more)
        buf = carry + more if carry else more
        if eof:
            block, carry = buf, b""
        else:
            cut = buf.rfind(b"\n")
            if cut < 0:
                carry = buf
                continue
            block, carry = buf[: cut + 1], buf[cut + 1 :]
        if block:
            lines = block.count(b"\n") + (not block.endswith(b"\n"))
            yield block, line, lines, done
            line += lines


# ---------------------------------------------------------------- one block -> typed columns
@dataclass
class Columns:
    """The TRAIN_COLUMNS of a block as numpy: values, null masks, unparseable masks, lines."""

    values: dict[str, np.ndarray]
    null: dict[str, np.ndarray]
    unparsed: dict[str, np.ndarray]
    text: dict[str, list]       # the raw text of unparseable values, by column (for messages)
    line: np.ndarray


def parse_block(block: bytes, first_line: int, n_lines: int, header: list[str], name: str, drops: Drops) -> Columns:
    """One typed parse; if it fails, the slow path (`_parse_slowly`)."""
    try:
        table = _read(block, header, TYPES)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return _parse_slowly(block, first_line, header, name, drops)
    n = table.num_rows
    if n != n_lines:  # cannot happen without quoted newlines; be safe: line by line
        return _parse_slowly(block, first_line, header, name, drops)
    values, null = {}, {}
    for c in TRAIN_COLUMNS:
        values[c], null[c] = _numpy(table[c], TYPES[c])
    none = np.zeros(n, bool)
    return Columns(values, null, {c: none for c in TRAIN_COLUMNS}, {}, first_line + np.arange(n, dtype=np.int64))


def _read(block: bytes, header: list[str], types: dict) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(block),
        read_options=pacsv.ReadOptions(column_names=header, block_size=1 << 21),
        parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(TRAIN_COLUMNS),
                                             true_values=list(TRUE), false_values=list(FALSE),
                                             strings_can_be_null=True, quoted_strings_can_be_null=True),
    )


def _numpy(column, dtype) -> tuple[np.ndarray, np.ndarray]:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    null = column.is_null().to_numpy(zero_copy_only=False)
    fill = False if pa.types.is_boolean(dtype) else 0
    values = pc.fill_null(column, fill).to_numpy(zero_copy_only=False) if column.null_count else \
        column.to_numpy(zero_copy_only=False)
    return values, null


def _parse_slowly(block: bytes, first_line: int, header: list[str], name: str, drops: Drops) -> Columns:
    """Lines with the wrong number of fields or bytes that are not UTF-8 are dropped here;
    the others are parsed as text and converted column by column."""
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    commas = len(header) - 1
    kept, at = [], []
    for i, text in enumerate(lines):
        if text.endswith(b"\r"):
            text = text[:-1]
        where = location(name, first_line + i)
        if text.count(b",") != commas:
            drops.add("wrong_field_count", where, f"expected {commas + 1} fields, found {text.count(b',') + 1}",
                      at=(0, first_line + i))
            continue
        try:
            text.decode("utf-8")
        except UnicodeDecodeError:
            drops.add("not_utf8", where, "not UTF-8 text", at=(0, first_line + i))
            continue
        kept.append(text)
        at.append(first_line + i)
    line = np.asarray(at, dtype=np.int64)
    if not kept:
        empty = {c: np.zeros(0, bool) for c in TRAIN_COLUMNS}
        return Columns({c: np.zeros(0, TYPES[c].to_pandas_dtype()) for c in TRAIN_COLUMNS}, empty, empty, {}, line)
    table = _read(b"\n".join(kept) + b"\n", header, {c: pa.string() for c in TRAIN_COLUMNS})
    values, null, unparsed, text = {}, {}, {}, {}
    for c in TRAIN_COLUMNS:
        column = table[c].combine_chunks()
        try:
            typed = pc.cast(column, TYPES[c]) if c != EXPLANATION else _bools(column)
            values[c], null[c] = _numpy(typed, TYPES[c])
            unparsed[c] = np.zeros(len(line), bool)
        except (pa.ArrowInvalid, ValueError):
            values[c], null[c], unparsed[c] = _convert(column.to_pylist(), c)
            text[c] = column.to_pylist()
    return Columns(values, null, unparsed, text, line)


def _bools(column: pa.Array) -> pa.Array:
    null = column.is_null().to_numpy(zero_copy_only=False)
    known = pc.is_in(column, value_set=pa.array(TRUE + FALSE)).to_numpy(zero_copy_only=False)
    if not (known | null).all():
        raise ValueError("not a boolean")
    true = pc.is_in(column, value_set=pa.array(TRUE)).to_numpy(zero_copy_only=False)
    return pa.array(true, mask=null)


def _convert(texts: list, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Python conversion of a column that holds an unparseable value."""
    n = len(texts)
    null, bad = np.zeros(n, bool), np.zeros(n, bool)
    if column in INT_COLUMNS:
        values = np.zeros(n, np.int64)
        for i, v in enumerate(texts):
            if v is None:
                null[i] = True
            elif INT_TEXT.fullmatch(v.strip()):
                values[i] = int(v)
            else:
                bad[i] = True
    elif column == ELAPSED:
        values = np.zeros(n, np.float64)
        for i, v in enumerate(texts):
            if v is None:
                null[i] = True
                continue
            try:
                values[i] = float(v)
            except ValueError:
                bad[i] = True
    else:
        values = np.zeros(n, bool)
        for i, v in enumerate(texts):
            if v is None:
                null[i] = True
            elif v in TRUE or v in FALSE:
                values[i] = v in TRUE
            else:
                bad[i] = True
    return values, null, bad


# ---------------------------------------------------------------- typed columns -> checked rows
def check_rows(cols: Columns, contents: RiiidContents, name: str, drops: Drops) -> Rows:
    """Every row is checked; a bad row is counted once, under the first check it fails."""
    v, null, line = cols.values, cols.null, cols.line
    n = len(line)
    bad, removed = np.zeros(n, bool), np.zeros(n, bool)

    def check(reason: str, mask: np.ndarray, column: str, problem, place: bool) -> None:
        new = mask & ~bad
        if new.any():
            i = int(np.argmax(new))
            drops.add(reason, location(name, int(line[i]), column), problem(i), n=int(new.sum()), at=(0, int(line[i])))
            bad[new] = True
            if place:
                removed[new] = True

    def unparsed(column: str, place: bool, what: str = "a number") -> None:
        check("bad_value", cols.unparsed[column], column, lambda i: f"{cols.text[column][i]!r} is not {what}", place)

    def missing(column: str, place: bool) -> None:
        check("bad_value", null[column] & ~cols.unparsed[column], column, lambda i: "missing value", place)

    # placement: without these the row cannot be put into its learner's history
    for column in ("user_id", "timestamp", "content_type_id", "task_container_id"):
        unparsed(column, True, "an integer")
        missing(column, True)
    check("bad_value", v["user_id"] < 0, "user_id", lambda i: f"{v['user_id'][i]} is negative", True)
    check("negative_time", v["timestamp"] < 0, "timestamp", lambda i: f"{v['timestamp'][i]} is negative", True)
    check("bad_value", v["timestamp"] >= MAX_TIMESTAMP, "timestamp",
          lambda i: f"{v['timestamp'][i]} is too large for ms since the learner's first event", True)
    check("bad_value", (v["content_type_id"] != 0) & (v["content_type_id"] != 1), "content_type_id",
          lambda i: f"{v['content_type_id'][i]} is not 0 (question) or 1 (lecture)", True)
    check("bad_value", v["task_container_id"] < 0, "task_container_id",
          lambda i: f"{v['task_container_id'][i]} is negative", True)

    # payload: a bad question row stays as a marker of its container, a bad lecture row goes
    lecture = v["content_type_id"] == 1
    for column in ("content_id", "answered_correctly", "user_answer"):
        unparsed(column, False, "an integer")
        missing(column, False)
    content = v["content_id"]
    item = np.where(lecture, contents.lecture_index(content), contents.question_index(content))
    check("unknown_question", ~lecture & (item == 0), "content_id",
          lambda i: f"question {content[i]} is not in questions.csv", False)
    check("unknown_lecture", lecture & (item == 0), "content_id",
          lambda i: f"lecture {content[i]} is not in lectures.csv", False)
    correct = v["answered_correctly"]
    check("bad_value", (correct < -1) | (correct > 1), "answered_correctly",
          lambda i: f"{correct[i]} is not -1, 0 or 1", False)
    check("bad_value", ~lecture & (correct == -1), "answered_correctly",
          lambda i: "-1 (no answer) on a question row (content_type_id 0)", False)
    check("bad_value", lecture & (correct != -1), "answered_correctly",
          lambda i: f"{correct[i]} on a lecture row (content_type_id 1); lectures have -1", False)
    answer = v["user_answer"]
    check("bad_value", (answer < -1) | (answer > 3), "user_answer", lambda i: f"{answer[i]} is not -1..3", False)
    unparsed(ELAPSED, False)
    elapsed = v[ELAPSED]
    with np.errstate(invalid="ignore"):
        bad_elapsed = ~null[ELAPSED] & ~cols.unparsed[ELAPSED] & ~(np.isfinite(elapsed) & (elapsed >= 0))
    check("bad_value", bad_elapsed, ELAPSED, lambda i: f"{elapsed[i]} is not a time in ms", False)
    unparsed(EXPLANATION, False, "True or False")
    drops.raise_first()

    keep = ~(removed | (bad & lecture))
    elapsed_ok = ~null[ELAPSED] & ~cols.unparsed[ELAPSED] & ~bad_elapsed
    elapsed_ms = np.where(elapsed_ok, np.rint(np.where(elapsed_ok, elapsed, 0)), NULL).astype(np.int64)
    rows = Rows(
        user=v["user_id"].astype(np.int64), ts=v["timestamp"].astype(np.int64), line=line, lecture=lecture,
        container=v["task_container_id"].astype(np.int64), item=np.where(bad, 0, item).astype(np.int64),
        correct=np.where(bad, 0, correct).astype(np.int8), elapsed=np.where(lecture, NULL, elapsed_ms),
        answer=~bad & ~lecture,
    )
    return rows if keep.all() else rows.take(np.flatnonzero(keep))
