"""Riiid's contents files -> `RiiidContents`: questions.csv and lectures.csv as the EdNet
questions.parquet and lectures.parquet, plus the lookups train.csv needs.

    questions.csv  question_id, bundle_id, correct_answer (0..3), part (1..7), tags ("1 22 81", may be empty)
    lectures.csv   lecture_id, tag, part, type_of

Ids become EdNet-style strings, stable across runs: question 5 -> "q5", bundle 5 -> "b5",
lecture 89 -> "l89". Dense indices as EdNet's: questions and lectures in file order (from 1;
0 = padding / unknown), bundles in order of first use in questions.csv, tags sorted
numerically over both files (Riiid's tag 0 is a real tag: it gets a dense index like any
other). correct_answer 0..3 is written as EdNet's a..d; Riiid has no explanation ids,
deployment times or lecture durations (explanation_id, deployed_at, video_length_ms null);
type_of is not kept. A bad row is dropped and counted (or with strict raised naming file,
line and column), as for EdNet's contents files.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dsrsd_cli.data.ednet_format import INT_TEXT, Drops, location
from dsrsd_cli.data.schema import EDNET_LECTURES, EDNET_QUESTIONS
from dsrsd_cli.errors import BadInput

QUESTION_COLUMNS = ("question_id", "bundle_id", "correct_answer", "part", "tags")
LECTURE_COLUMNS = ("lecture_id", "tag", "part", "type_of")
ANSWER_LETTERS = "abcd"  # Riiid correct_answer 0..3 -> EdNet a..d
DENSE_LOOKUP = 1 << 24  # ids below this are looked up in a table, others searched


@dataclass
class RiiidContents:
    """questions.parquet + lectures.parquet and the lookups of train.csv's content_id."""

    questions: pa.Table        # EDNET_QUESTIONS
    lectures: pa.Table         # EDNET_LECTURES
    question_keys: np.ndarray  # (Q,) sorted Riiid question ids
    question_codes: np.ndarray  # (Q,) their dense indices
    lecture_keys: np.ndarray   # (L,) sorted Riiid lecture ids
    lecture_codes: np.ndarray  # (L,) their dense indices
    q_bundle: np.ndarray       # (Q+1,) dense bundle of each dense question; 0 = padding
    q_part: np.ndarray         # (Q+1,) int8
    q_tags: pa.ListArray       # (Q+1,) dense tag lists; entry 0 is empty
    n_bundles: int
    n_tags: int

    def __post_init__(self):
        self._tables = (_table(self.question_keys, self.question_codes), _table(self.lecture_keys, self.lecture_codes))

    def question_index(self, ids: np.ndarray) -> np.ndarray:
        """Riiid question ids -> dense indices, 0 where unknown."""
        return _lookup(ids, self.question_keys, self.question_codes, self._tables[0])

    def lecture_index(self, ids: np.ndarray) -> np.ndarray:
        """Riiid lecture ids -> dense indices, 0 where unknown."""
        return _lookup(ids, self.lecture_keys, self.lecture_codes, self._tables[1])


def _lookup(ids: np.ndarray, keys: np.ndarray, codes: np.ndarray, table: np.ndarray | None) -> np.ndarray:
    if table is not None:  # Riiid: ids < 33K, a table beats a search
        inside = (ids >= 0) & (ids < len(table))
        return np.where(inside, table[np.where(inside, ids, 0)], 0)
    if len(keys) == 0:
        return np.zeros(len(ids), np.int64)
    at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    return np.where(keys[at] == ids, codes[at], 0)


def _table(keys: np.ndarray, codes: np.ndarray) -> np.ndarray | None:
    if not len(keys) or keys[0] < 0 or keys[-1] >= DENSE_LOOKUP:
        return None
    table = np.zeros(keys[-1] + 1, np.int64)
    table[keys] = codes
    return table


def _rows(data: bytes, name: str, required: tuple[str, ...]):
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BadInput(f"{location(name, line)}: not UTF-8 text; re-export the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in required if c not in header]
    if not header or missing:
        raise BadInput(f"{location(name, 1)}: missing column(s) {', '.join(missing or required)} (found: "
                       f"{', '.join(header) or 'an empty file'}); use the Riiid file as distributed on Kaggle")
    return header, ((i + 2, r) for i, r in enumerate(reader) if r)


def _int(value: str, name: str, line: int, column: str) -> int:
    value = value.strip()
    if not INT_TEXT.fullmatch(value):
        raise ValueError(location(name, line, column), f"{value!r} is not an integer")
    return int(value)


def parse_riiid_contents(questions_csv: bytes, lectures_csv: bytes, *, drops: Drops | None = None,
                         names: tuple[str, str] = ("questions.csv", "lectures.csv")) -> RiiidContents:
    drops = drops if drops is not None else Drops()
    qname, lname = names
    header, rows = _rows(questions_csv, qname, QUESTION_COLUMNS)
    col = {c: header.index(c) for c in QUESTION_COLUMNS}
    questions: list[tuple[int, int, int, int, list[int]]] = []
    seen: set[int] = set()
    for line, r in rows:
        try:
            if len(r) != len(header):
                raise ValueError(location(qname, line), f"expected {len(header)} fields, found {len(r)}")
            qid, bid, answer, part = (_int(r[col[c]], qname, line, c) for c in QUESTION_COLUMNS[:4])
            if qid < 0 or bid < 0:
                raise ValueError(location(qname, line, "question_id" if qid < 0 else "bundle_id"), "negative id")
            if not 0 <= answer <= 3:
                raise ValueError(location(qname, line, "correct_answer"), f"{answer} is not one of 0, 1, 2, 3")
            if not 1 <= part <= 7:
                raise ValueError(location(qname, line, "part"), f"{part} is not a TOEIC part 1..7")
            tags = [_int(t, qname, line, "tags") for t in r[col["tags"]].split()]
        except ValueError as e:
            drops.add("bad_value", *e.args, at=(-2, line))
            continue
        if qid in seen:
            drops.add("duplicate_row", location(qname, line, "question_id"), f"question {qid} listed twice", at=(-2, line))
            continue
        seen.add(qid)
        questions.append((qid, bid, answer, part, [t for t in tags if t >= 0]))

    header, rows = _rows(lectures_csv, lname, LECTURE_COLUMNS)
    col = {c: header.index(c) for c in LECTURE_COLUMNS}
    lectures: list[tuple[int, int, int]] = []
    seen = set()
    for line, r in rows:
        try:
            if len(r) != len(header):
                raise ValueError(location(lname, line), f"expected {len(header)} fields, found {len(r)}")
            lid, tag, part = (_int(r[col[c]], lname, line, c) for c in LECTURE_COLUMNS[:3])
            if lid < 0:
                raise ValueError(location(lname, line, "lecture_id"), "negative id")
        except ValueError as e:
            drops.add("bad_value", *e.args, at=(-1, line))
            continue
        if lid in seen:
            drops.add("duplicate_row", location(lname, line, "lecture_id"), f"lecture {lid} listed twice", at=(-1, line))
            continue
        seen.add(lid)
        lectures.append((lid, tag, part if 0 <= part <= 7 else 0))
    drops.raise_first()
    if not questions:
        raise BadInput(f"{qname}: no usable question rows; use the Riiid file as distributed on Kaggle")

    tag_ids = sorted({t for q in questions for t in q[4]} | {lec[1] for lec in lectures if lec[1] >= 0})
    tag_index = {t: i + 1 for i, t in enumerate(tag_ids)}
    bundles: dict[int, int] = {}
    for q in questions:
        bundles.setdefault(q[1], len(bundles) + 1)
    n_q, n_l = len(questions), len(lectures)
    q_tags = pa.array([[tag_index[t] for t in q[4]] for q in questions], pa.list_(pa.int16()))
    questions_table = pa.table(
        {
            "question_id": [f"q{q[0]}" for q in questions],
            "question": pa.array(np.arange(1, n_q + 1), pa.int32()),
            "bundle_id": [f"b{q[1]}" for q in questions],
            "bundle": pa.array([bundles[q[1]] for q in questions], pa.int32()),
            "explanation_id": pa.nulls(n_q, pa.string()),
            "correct_answer": [ANSWER_LETTERS[q[2]] for q in questions],
            "part": pa.array([q[3] for q in questions], pa.int8()),
            "tags": q_tags,
            "deployed_at": pa.nulls(n_q, pa.int64()),
        },
        schema=EDNET_QUESTIONS,
    )
    lectures_table = pa.table(
        {
            "lecture_id": [f"l{lec[0]}" for lec in lectures],
            "lecture": pa.array(np.arange(1, n_l + 1), pa.int32()),
            "part": pa.array([lec[2] for lec in lectures], pa.int8()),
            "tags": pa.array([[tag_index[lec[1]]] if lec[1] >= 0 else [] for lec in lectures], pa.list_(pa.int16())),
            "video_length_ms": pa.nulls(n_l, pa.int64()),
        },
        schema=EDNET_LECTURES,
    )
    q_ids = np.array([q[0] for q in questions], np.int64)
    l_ids = np.array([lec[0] for lec in lectures], np.int64)
    q_order, l_order = np.argsort(q_ids), np.argsort(l_ids)
    return RiiidContents(
        questions=questions_table,
        lectures=lectures_table,
        question_keys=q_ids[q_order],
        question_codes=(q_order + 1).astype(np.int64),
        lecture_keys=l_ids[l_order],
        lecture_codes=(l_order + 1).astype(np.int64),
        q_bundle=np.concatenate([[0], [bundles[q[1]] for q in questions]]).astype(np.int32),
        q_part=np.concatenate([[0], [q[3] for q in questions]]).astype(np.int8),
        q_tags=pa.concat_arrays([pa.array([[]], pa.list_(pa.int16())), q_tags]),
        n_bundles=len(bundles),
        n_tags=len(tag_ids),
    )
