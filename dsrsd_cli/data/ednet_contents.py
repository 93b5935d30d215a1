"""EdNet's contents files -> `Contents`: questions.csv and lectures.csv as dense indices.

questions.csv lists every question with its bundle, explanation, correct answer, TOEIC
part and tags; lectures.csv every lecture with its part and tags. Questions and lectures
get dense indices in file order (from 1; 0 = padding), bundles in order of first use,
tags sorted numerically over both files. The tables are written as questions.parquet and
lectures.parquet; `Contents.from_tables` rebuilds the lookups from them in each worker.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dsrsd_cli.data.ednet_format import (
    ANSWER_CODES,
    ANSWERS,
    BUNDLE,
    EXPLANATION,
    INT_TEXT,
    LECTURE,
    NOT_UTF8,
    QUESTION,
    Codebook,
    Drops,
    location,
)
from dsrsd_cli.data.schema import EDNET_LECTURES, EDNET_QUESTIONS
from dsrsd_cli.errors import BadInput


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


def _read_table_csv(data: bytes, name: str, required: tuple[str, ...], drops: Drops, file_no: int
                    ) -> tuple[list[str], Iterable[tuple[int, list[str]]]]:
    """(header, (line, fields) of each non-blank row). A row that is not UTF-8 is dropped and
    counted (not_utf8), the others kept; a header that is not UTF-8 or lacks a column raises."""
    head, _, body = data.removeprefix(b"\xef\xbb\xbf").partition(b"\n")
    try:
        header = [h.strip() for h in next(csv.reader([head.decode("utf-8").rstrip("\r")]), [])]
    except UnicodeDecodeError:
        raise BadInput(f"{location(name, 1)}: the header is not UTF-8 text; re-export the file as UTF-8") from None
    missing = [c for c in required if c not in header]
    if not header or missing:
        raise BadInput(f"{location(name, 1)}: missing column(s) {', '.join(missing or required)} (found: "
                       f"{', '.join(header) or 'an empty file'}); use the EdNet contents file as distributed")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:  # find the bad lines (rare): each one blanked, dropped and counted
        lines = body.split(b"\n")
        for i, raw in enumerate(lines):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                fields = next(csv.reader([raw.decode("utf-8", "surrogateescape")]), [""])
                j = next((j for j, v in enumerate(fields) if NOT_UTF8.search(v)), 0)
                drops.add("not_utf8", location(name, i + 2, header[min(j, len(header) - 1)]),
                          "not UTF-8 text; re-export the file as UTF-8", at=(file_no, i + 2))
                lines[i] = b""  # a blank line: the other lines keep their numbers
        text = b"\n".join(lines).decode("utf-8")
    return header, ((i + 2, r) for i, r in enumerate(csv.reader(io.StringIO(text))) if r)


def _int_field(value: str, name: str, line: int, column: str) -> int:
    value = value.strip()
    if not INT_TEXT.fullmatch(value):
        raise ValueError(location(name, line, column), f"{value!r} is not an integer")
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
    header, rows = _read_table_csv(questions_csv, qname, q_cols, drops, 0)
    col = {c: header.index(c) for c in q_cols}
    questions: list[tuple] = []
    seen: set[str] = set()
    for line, r in rows:
        try:
            if len(r) != len(header):
                drops.add("wrong_field_count", location(qname, line, header[min(len(r), len(header) - 1)]),
                          f"expected {len(header)} fields, found {len(r)}", at=(0, line))
                continue
            qid, bid, eid, answer = (r[col[c]].strip() for c in q_cols[:4])
            for c, v in (("question_id", qid), ("bundle_id", bid), ("explanation_id", eid)):
                if not v:
                    raise ValueError(location(qname, line, c), "empty id")
            if answer not in ANSWER_CODES:
                raise ValueError(location(qname, line, "correct_answer"), f"{answer!r} is not one of a, b, c, d")
            part = _int_field(r[col["part"]], qname, line, "part")
            if not 1 <= part <= 7:
                raise ValueError(location(qname, line, "part"), f"{part} is not a TOEIC part 1..7")
            tags = _tag_list(r[col["tags"]], qname, line, "tags")
            deployed = _int_field(r[col["deployed_at"]], qname, line, "deployed_at")
        except ValueError as e:
            drops.add("bad_value", *e.args, at=(0, line))
            continue
        if qid in seen:
            drops.add("duplicate_row", location(qname, line, "question_id"), f"question {qid} listed twice", at=(0, line))
            continue
        seen.add(qid)
        questions.append((qid, bid, eid, answer, part, tags, None if deployed == -1 else deployed))
    if not questions:
        raise BadInput(f"{qname}: no usable question rows; use the EdNet contents file as distributed")

    lectures: list[tuple] = []
    if lectures_csv is not None:
        l_cols = ("lecture_id", "part", "tags", "video_length")
        header, rows = _read_table_csv(lectures_csv, lname, l_cols, drops, 1)
        col = {c: header.index(c) for c in l_cols}
        seen = set()
        for line, r in rows:
            try:
                if len(r) != len(header):
                    drops.add("wrong_field_count", location(lname, line, header[min(len(r), len(header) - 1)]),
                              f"expected {len(header)} fields, found {len(r)}", at=(1, line))
                    continue
                lid = r[col["lecture_id"]].strip()
                if not lid:
                    raise ValueError(location(lname, line, "lecture_id"), "empty id")
                part = _int_field(r[col["part"]], lname, line, "part")
                tags = _tag_list(r[col["tags"]], lname, line, "tags")
                video = _int_field(r[col["video_length"]], lname, line, "video_length")
            except ValueError as e:
                drops.add("bad_value", *e.args, at=(1, line))
                continue
            if lid in seen:
                drops.add("duplicate_row", location(lname, line, "lecture_id"), f"lecture {lid} listed twice",
                          at=(1, line))
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
