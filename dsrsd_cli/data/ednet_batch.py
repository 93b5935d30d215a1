"""One batch of EdNet learners: their files -> the rows of interactions.parquet.

`parse_batch` is what a worker process runs (ednet_workers.py): read each learner's
files, parse them by header (ednet_rows.py), turn the rows into features and one
history per learner (ednet_interactions.py). `parse_kt1` / `parse_kt4` run it on one file
in memory, for tests and notebooks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsrsd_cli.data.archive import MemberReader
from dsrsd_cli.data.ednet_contents import Contents
from dsrsd_cli.data.ednet_interactions import action_rows, assemble, kt1_rows, merge_kt1
from dsrsd_cli.data.ednet_format import SourceVocab, location
from dsrsd_cli.data.ednet_rows import (
    Batch,
    FileGroup,
    LearnerFile,
    file_format,
    parse_action_groups,
    parse_kt1_groups,
    split_header,
)
from dsrsd_cli.data.schema import EDNET_INTERACTIONS


def parse_batch(learners: list[tuple[str, list[LearnerFile]]], contents: Contents, reader: MemberReader, *,
                strict: bool = False, display: str = "") -> dict:
    """Parse one batch of learners (`display` prefixes file names in messages). Returns
    {"table" (EDNET_INTERACTIONS, `source` as indices into "sources"), "sources", "users"
    (those with rows), "rows_in", "levels", "drops", "skipped", "merge"}."""
    batch = Batch(contents, strict)
    kt1_group: dict[tuple, FileGroup] = {}
    act_group: dict[tuple, FileGroup] = {}
    level = np.zeros(len(learners), np.int8)       # richest action level per learner (0 = none)
    has_kt1 = np.zeros(len(learners), bool)
    formats: dict[tuple[bytes, int], tuple] = {}    # (header, folder level) -> file_format(...)
    for ui, (_, files) in enumerate(learners):
        for lf in files:
            fi = len(batch.names)
            batch.names.append(display + lf.name)
            data = reader.read(lf.name, lf.where)
            if not data or data.isspace():
                batch.drops.add("empty_file", location(batch.names[fi], 1), "empty file", at=(fi, 1))
                continue
            header, body = split_header(data)
            fmt = formats.get((header, lf.level)) or formats.setdefault((header, lf.level), file_format(header, lf.level))
            if fmt[0] not in ("kt1", "action"):
                batch.drops.add(fmt[0], location(batch.names[fi], 1), fmt[1], at=(fi, 1))
                continue
            if not body:
                continue  # header only: a learner without answers
            kind, columns, file_level = fmt
            batch.levels.add(file_level)
            if kind == "kt1":
                has_kt1[ui] = True
                kt1_group.setdefault(columns, FileGroup(list(columns))).files.append((fi, ui, body))
            elif file_level > level[ui]:  # several action levels: the richest log wins
                level[ui] = file_level
                for g in act_group.values():
                    g.files = [f for f in g.files if f[1] != ui]
                act_group.setdefault(columns, FileGroup(list(columns))).files.append((fi, ui, body))

    sources: dict[str, int] = {}
    kt1 = parse_kt1_groups(batch, kt1_group)
    act = parse_action_groups(batch, act_group, sources)
    batch.drops.raise_first()  # strict: the earliest bad line of the batch
    kt1 = kt1 and kt1_rows(batch, kt1)
    act = act and action_rows(batch, act, level)
    both = has_kt1 & (level > 0)
    if kt1 and act:
        rows, inst = merge_kt1(batch, kt1, act, both)
        batch.merge["learners"] += int(both.sum())
    else:
        rows, inst = kt1 or (act[:2] if act else (None, None))
    names = [u for u, _ in learners]
    if rows is None or len(rows["user"]) == 0:
        table = EDNET_INTERACTIONS.empty_table()
        users: list[str] = []
    else:
        table = assemble(batch, rows, inst, names)
        users = [names[i] for i in np.unique(rows["user"])]
    return {"table": table, "sources": list(sources), "users": users, "rows_in": batch.rows_in,
            "levels": batch.levels, "drops": batch.drops, "skipped": batch.skipped, "merge": batch.merge}


# ---------------------------------------------------------------- single files (tests, notebooks)
class _InMemory:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, name: str, where: Any) -> bytes:
        return self.data


def _one_file(csv_bytes: bytes, user: str, contents: Contents, level: int):
    out = parse_batch([(user, [LearnerFile(f"KT{level}/{user}.csv", level)])], contents, _InMemory(csv_bytes))
    frame = SourceVocab().apply(out["table"], out["sources"]).to_pandas()
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
