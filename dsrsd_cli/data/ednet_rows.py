"""EdNet learner files -> checked rows (one worker's batch at a time).

A learner file's header says its format: KT1 (answers) or an action log (KT2..KT4), the
level coming from its folder (KT1..KT4) or else from its columns. Files of one header are
parsed together (`FileGroup`: one pyarrow.csv call on the concatenated bodies; if it
fails, lines that are not UTF-8 are dropped and the rest parsed again, and a group still
malformed is re-read line by line to find its bad lines). The rows become numpy
columns with their learner, file and line (`Parsed`), and are checked column by column:
a bad row is dropped and counted in the batch's `Drops` (with strict, the earliest bad
line is raised). What the rows mean (the features): ednet_interactions.py.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from dsrsd_cli.data.ednet_arrays import lex_order
from dsrsd_cli.data.ednet_contents import Contents
from dsrsd_cli.data.ednet_format import (
    ACTION_COLUMNS,
    ACTIONS,
    ANSWERS,
    CSV_TYPES,
    INT_COLUMNS,
    INT_TEXT,
    KINDS,
    KT1_COLUMNS,
    KT4_EXTRA,
    LECTURE,
    MAX_TIMESTAMP,
    NOT_UTF8,
    NULL,
    OTHER,
    PLATFORMS,
    RESPOND,
    Codebook,
    Drops,
    location,
)


# ---------------------------------------------------------------- learner files and their headers
class LearnerFile(NamedTuple):
    name: str          # member path inside the source
    level: int         # 1..4 from the folder name (KT1..KT4); 0 = unknown, decided by the header
    where: Any = None  # zip coordinates (archive.zip_members), None for folders


def file_format(header: bytes, folder_level: int) -> tuple:
    """("kt1" | "action", columns, level) for a usable header, else (drop reason, problem).
    The folder (KT1..KT4) gives the level; outside such folders the header decides
    (KT1 columns -> 1, cursor_time -> 4, else 3)."""
    try:
        columns = tuple(c.strip() for c in header.decode("utf-8").rstrip("\r").split(","))
    except UnicodeDecodeError:
        return "bad_header", "header is not UTF-8 text (whole file dropped); re-export the file as UTF-8"
    is_kt1 = folder_level == 1 or (folder_level == 0 and "solving_id" in columns)
    required = KT1_COLUMNS if is_kt1 else ACTION_COLUMNS
    missing = [c for c in required if c not in columns]
    if missing:
        return "bad_header", (f"missing column(s) {', '.join(missing)} (found: {', '.join(columns)}); "
                              f"expected the EdNet KT{folder_level or ''} columns {','.join(required)} (whole file dropped)")
    if is_kt1:
        return "kt1", columns, 1
    return "action", columns, folder_level or (4 if KT4_EXTRA in columns else 3)


def split_header(data: bytes) -> tuple[bytes, bytes]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    cut = data.find(b"\n")
    return (data, b"") if cut < 0 else (data[:cut], data[cut + 1 :])


# ---------------------------------------------------------------- parsing files of one header together
class FileGroup:
    """Files of one header in a batch, parsed together: one pyarrow.csv call on the
    concatenated bodies; rows are tagged with their file by counting newlines."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        self.files: list[tuple[int, int, bytes]] = []  # (file index, user index, body)

    def parse(self, batch: "Batch", wanted: tuple[str, ...]) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
        bodies = [b if b.endswith(b"\n") else b + b"\n" for _, _, b in self.files]
        counts = np.array([b.count(b"\n") for b in bodies], dtype=np.int64)
        batch.rows_in += int(counts.sum())
        with contextlib.suppress(pa.ArrowInvalid, ValueError):
            return self._parse_fast(bodies, [None] * len(bodies), wanted, counts)
        # not UTF-8 (rare): drop those lines only, then the fast path again on the rest
        bodies, line_maps = self._drop_bad_utf8(bodies, batch.names, wanted, batch.drops)
        if any(m is not None for m in line_maps):
            with contextlib.suppress(pa.ArrowInvalid, ValueError):
                return self._parse_fast(bodies, line_maps, wanted)
        return self._parse_slow(bodies, line_maps, batch.names, wanted, batch.drops)

    def _parse_fast(self, bodies: list[bytes], line_maps: list, wanted: tuple[str, ...], counts=None):
        """One pyarrow call on all bodies; raises if any line does not parse. line_maps:
        per file, None (line i of the body is line i + 2 of the file) or the line numbers."""
        if counts is None:
            counts = np.array([b.count(b"\n") for b in bodies], dtype=np.int64)
        total = int(counts.sum())
        table = self._read(b"".join(bodies), wanted) if total else self._empty(wanted)
        if table.num_rows != total:
            raise ValueError("blank or split lines")
        if all(m is None for m in line_maps):
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            line = np.arange(total, dtype=np.int64) - starts + 2
        else:
            line = np.concatenate([np.arange(2, n + 2, dtype=np.int64) if m is None else m
                                   for m, n in zip(line_maps, counts)])
        file = np.repeat([f for f, _, _ in self.files], counts).astype(np.int32)
        user = np.repeat([u for _, u, _ in self.files], counts).astype(np.int32)
        return table, file, user, line

    def _read(self, data: bytes, wanted: tuple[str, ...]) -> pa.Table:
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=self.columns, use_threads=False, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(quote_char=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c: CSV_TYPES[c] for c in wanted}, include_columns=list(wanted),
                null_values=[""], strings_can_be_null=True,
            ),
        )

    @staticmethod
    def _empty(wanted: tuple[str, ...]) -> pa.Table:
        return pa.table({c: pa.array([], CSV_TYPES[c]) for c in wanted})

    def _drop_bad_utf8(self, bodies: list[bytes], names: list[str], wanted: tuple[str, ...], drops: Drops):
        """Bodies without their lines that are not UTF-8 in a column read, each such line
        dropped and counted (not_utf8); the other lines and bodies are kept as they are.
        Returns (bodies, line maps): a changed body's map holds its lines' numbers."""
        n_cols = len(self.columns)
        read_at = [j for j, c in enumerate(self.columns) if c in wanted]
        out, maps = [], []
        for (f, _, _), body in zip(self.files, bodies):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                out.append(body)
                maps.append(None)
                continue
            kept, numbers = [], []
            for i, raw in enumerate(body[:-1].split(b"\n")):  # bodies end with a line break
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    fields = raw.decode("utf-8", "surrogateescape").split(",")
                    bad = [j for j, v in enumerate(fields) if NOT_UTF8.search(v)]
                    hit = [j for j in bad if j in read_at] if len(fields) == n_cols else bad
                    if hit:  # (bad bytes in a column that is not read are ignored, as by pyarrow)
                        line, column = i + 2, self.columns[min(hit[0], n_cols - 1)]
                        drops.add("not_utf8", location(names[f], line, column),
                                  "not UTF-8 text; re-export the file as UTF-8", at=(f, line))
                        continue
                kept.append(raw)
                numbers.append(i + 2)
            out.append(b"".join(r + b"\n" for r in kept))
            maps.append(np.array(numbers, np.int64))
        return out, maps

    def _parse_slow(self, bodies: list[bytes], line_maps: list, names: list[str], wanted: tuple[str, ...],
                    drops: Drops):
        """Some line of the group does not parse: find the bad lines one by one (wrong
        number of fields, not an integer), then parse the clean lines (which cannot fail)."""
        n_cols = len(self.columns)
        int_at = [i for i, c in enumerate(self.columns) if c in INT_COLUMNS and c in wanted]
        kept, files, users, lines = [], [], [], []
        for (f, u, _), body, line_map in zip(self.files, bodies, line_maps):
            text = body.decode("utf-8", "surrogateescape")  # what is left undecodable is not read
            for i, row in enumerate(text.split("\n")):
                row = row[:-1] if row.endswith("\r") else row
                if not row.strip():
                    continue
                line, fields = (i + 2 if line_map is None else int(line_map[i])), row.split(",")
                problem = None
                if len(fields) != n_cols or "\r" in row:
                    column = self.columns[min(len(fields), n_cols - 1)]
                    problem = ("wrong_field_count", column, f"expected {n_cols} comma-separated fields, found {len(fields)}")
                else:
                    for j in int_at:
                        if fields[j] and not INT_TEXT.fullmatch(fields[j]):
                            problem = ("bad_value", self.columns[j], f"{fields[j]!r} is not an integer")
                            break
                if problem:
                    drops.add(problem[0], location(names[f], line, problem[1]), problem[2], at=(f, line))
                    continue
                kept.append(row)
                files.append(f)
                users.append(u)
                lines.append(line)
        table = (self._read(("\n".join(kept) + "\n").encode("utf-8", "surrogateescape"), wanted) if kept
                 else self._empty(wanted))
        return table, np.array(files, np.int32), np.array(users, np.int32), np.array(lines, np.int64)


@dataclass
class Parsed:
    """Rows of one file format for a batch, as numpy columns, plus where each row came from."""

    cols: dict[str, np.ndarray]
    user: np.ndarray   # (N,) index into the batch's learners
    file: np.ndarray   # (N,) index into the batch's file names
    line: np.ndarray   # (N,) 1-based line in that file


class Batch:
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
    def flag(self, parsed: Parsed, checks: list[tuple[str, np.ndarray, str, str]]) -> np.ndarray:
        """checks: (reason, bad mask, column, problem); a row counts once, for its first
        failing check. Returns the mask of good rows."""
        bad_any = np.zeros(len(parsed.user), bool)
        for reason, bad, col, problem in checks:
            bad = bad & ~bad_any
            if bad.any():
                i = int(np.argmax(bad))
                f, line = int(parsed.file[i]), int(parsed.line[i])
                self.drops.add(reason, location(self.names[f], line, col), problem, int(bad.sum()), at=(f, line))
                bad_any |= bad
        return ~bad_any

    def duplicates(self, parsed: Parsed, keys: list[np.ndarray], ts: np.ndarray) -> np.ndarray:
        """Exact duplicate rows of a learner (all but the first line of each). Duplicates share
        (learner, timestamp), so only rows in such ties are compared: ties are rare, this is cheap."""
        order = lex_order(parsed.user, ts)
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


def parse_kt1_groups(batch: Batch, groups: dict) -> Parsed | None:
    if not groups:
        return None
    c = batch.contents
    parts = []
    for g in groups.values():
        table, file, user, line = g.parse(batch, KT1_COLUMNS)
        parts.append(Parsed({
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
    p = take_rows(p, good)
    dup = batch.duplicates(p, [p.cols["solving_id"], p.cols["question"], p.cols["answer"], p.cols["elapsed_time"]],
                           p.cols["timestamp"])
    p = take_rows(p, batch.flag(p, [("duplicate_row", dup, "", "exact duplicate of an earlier row")]))
    return p


def parse_action_groups(batch: Batch, groups: dict, sources: dict[str, int]) -> Parsed | None:
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
        parts.append(Parsed({
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
    p = take_rows(p, good)
    dup = batch.duplicates(p, [p.cols[k] for k in ("action_raw", "item_code", "cursor", "source", "answer_raw", "platform")],
                           p.cols["timestamp"])
    p = take_rows(p, batch.flag(p, [("duplicate_row", dup, "", "exact duplicate of an earlier row")]))
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


def _concat_parsed(parts: list[Parsed]) -> Parsed:
    if len(parts) == 1:
        return parts[0]
    order_key = np.concatenate([p.user for p in parts])
    cat = Parsed({k: np.concatenate([p.cols[k] for p in parts]) for k in parts[0].cols},
                  order_key, np.concatenate([p.file for p in parts]), np.concatenate([p.line for p in parts]))
    order = np.argsort(cat.file, kind="stable")  # groups -> file order (= learner order)
    return take_rows(cat, order)


def take_rows(parsed: Parsed, keep: np.ndarray) -> Parsed:
    return Parsed({k: v[keep] for k, v in parsed.cols.items()}, parsed.user[keep], parsed.file[keep], parsed.line[keep])


def sort_by_time(parsed: Parsed) -> Parsed:
    """Stable sort by (learner, timestamp): files are usually sorted already."""
    order = lex_order(parsed.user, parsed.cols["timestamp"])
    return parsed if order is None else take_rows(parsed, order)
