"""EdNet-schema interactions -> the per-answer training arrays (data/ednet_store.py writes them).

One chunk of whole learners, grouped and in position order, becomes flat numpy arrays, one
row per answer: ids checked against the vocab, tags as a fixed-width matrix, behaviour
through FIXED transforms (log1p of seconds or counts: nothing is fitted on the data, so
nothing leaks across splits), the lecture content studied before each bundle, the hours
since the learner's first answer, and a custom log's own features (prepare --dataset custom).
`RowRules` is what a chunk needs to know about its folder; prepare's worker processes build
it from the contents they already hold, so the arrays are computed in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsrsd_cli.data import schema
from dsrsd_cli.data.prepared import Prepared, read_table, rerun_prepare, vocab_count
from dsrsd_cli.errors import BadInput

MAX_TAGS = 8

# ---------------------------------------------------------------- fixed transforms

def _log_seconds(ms: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(ms, 0, None) / 1000.0)


def _log_count(count: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(count, 0, None))


# Fixed transform per behaviour feature (schema.BEHAVIOR_FEATURES order): nothing fitted on data.
BEHAVIOR_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "lag_ms": _log_seconds,
    "lecture_count": _log_count,
    "lecture_ms": _log_seconds,
    "elapsed_ms": _log_seconds,
    "answer_changes": _log_count,
    "explanation_ms": _log_seconds,
    "media_plays": _log_count,
}
assert tuple(BEHAVIOR_TRANSFORMS) == tuple(name for name, _ in schema.BEHAVIOR_FEATURES)


def signed_log(x: np.ndarray) -> np.ndarray:
    """Fixed transform of a custom numeric feature (nothing fitted): sign(x) log1p(|x|)."""
    return np.sign(x) * np.log1p(np.abs(x))


# ---------------------------------------------------------------- what a chunk needs to know

@dataclass(frozen=True)
class RowRules:
    """The folder-level facts a chunk's arrays depend on."""

    file: Path                     # interactions.parquet, for messages
    high: dict[str, int]           # largest valid id: question, bundle, tag, source
    width: int                     # K: tag slots per row
    lecture_part: np.ndarray       # (n_lectures + 1,) int8, by lecture index
    lecture_tags: np.ndarray       # (n_lectures + 1, K) int16
    question_tags: np.ndarray | None = None   # (Q + 1, K) int16 when every row's tags are its question's (prepare ednet)

    @classmethod
    def from_tables(cls, file: Path, questions: pa.Table, lectures: pa.Table, high: dict[str, int],
                    question_tags: pa.ListArray | None = None) -> "RowRules":
        width = tag_width(questions["tags"])
        index = pc.fill_null(lectures["lecture"], 0).to_numpy().astype(np.int64)
        size = int(index.max(initial=0)) + 1
        part_of = np.zeros(size, dtype=np.int8)
        part_of[index] = pc.fill_null(lectures["part"], 0).to_numpy()
        tags_of = np.zeros((size, width), dtype=np.int16)
        tags_of[index] = list_matrix(lectures["tags"], width, np.int16)
        by_question = None if question_tags is None else list_matrix(question_tags, width, np.int16)
        return cls(file=file, high=high, width=width, lecture_part=part_of, lecture_tags=tags_of, question_tags=by_question)

    @classmethod
    def of(cls, prepared: Prepared) -> "RowRules":
        high = {key: vocab_count(prepared, key) for key in ("question", "bundle", "tag", "source")}
        return cls.from_tables(prepared.file("interactions.parquet"), read_table(prepared, "questions.parquet", ["tags"]),
                               read_table(prepared, "lectures.parquet", ["lecture", "part", "tags"]), high)


def ednet_tag_width(prepared: Prepared) -> int:
    """K of a prepared folder (questions.parquet)."""
    return tag_width(read_table(prepared, "questions.parquet", ["tags"])["tags"])


def tag_width(tags: pa.ChunkedArray) -> int:
    """K: the most tags any question has, capped at MAX_TAGS (at least 1)."""
    longest = pc.max(pc.list_value_length(tags)).as_py() if len(tags) else 0
    return int(min(max(longest or 0, 1), MAX_TAGS))


# ---------------------------------------------------------------- custom features (prepare --dataset custom)

CUSTOM_MODALITIES = ("item", "content", "behavior")


def custom_layout(prepared: Prepared) -> dict[str, dict[str, list[dict]]]:
    """modality -> {"cat": [...], "num": [...]} of the manifest's `custom_features`, `known = "before"`
    ones first in each list (the order of the tensors custom_cat / custom_num). Empty when the
    folder has none (every EdNet / Riiid folder)."""
    features = prepared.manifest.get("custom_features") or []
    layout: dict[str, dict[str, list[dict]]] = {}
    for m in CUSTOM_MODALITIES:
        of = [f for f in features if f.get("modality") == m]
        if not of:
            continue
        rank = {"before": 0, "after": 1}
        layout[m] = {
            "cat": sorted((f for f in of if f.get("kind") == "categorical"), key=lambda f: rank[f["known"]]),
            "num": sorted((f for f in of if f.get("kind") == "numeric"), key=lambda f: rank[f["known"]]),
        }
    return layout


def read_custom_features(prepared: Prepared, layout: dict, users: list[str] | None, names, user_code: np.ndarray,
                         position: np.ndarray) -> pa.Table:
    """custom_features.parquet of `users` (None: all), in the order of the sorted interactions
    given by (user_code into `names`, position); BadInput when the rows do not match."""
    file = prepared.file("custom_features.parquet")
    if not file.is_file():
        raise BadInput(f"{file}: missing, but the manifest lists custom_features; rerun `dsrsd prepare --dataset custom --force`")
    wanted = [f["name"] for kinds in layout.values() for k in ("cat", "num") for f in kinds[k]]
    try:
        table = pq.read_table(file, columns=["user", "position", *wanted],
                              filters=None if users is None else pc.field("user").isin(pa.array(users, pa.string())))
    except (pa.ArrowException, OSError) as e:
        raise BadInput(f"{file}: not readable or lacks a listed feature ({e}); rerun `dsrsd prepare --dataset custom --force`") from None
    codes = pd.Categorical(table["user"].to_pandas(), categories=list(names)).codes.astype(np.int64)
    pos = pc.fill_null(table["position"], -1).to_numpy().astype(np.int64)
    order = np.lexsort((pos, codes))
    if len(order) != len(position) or not (np.array_equal(codes[order], user_code)
                                           and np.array_equal(pos[order], np.asarray(position).astype(np.int64))):
        raise BadInput(f"{file}: its (user, position) rows do not match interactions.parquet; "
                       "rerun `dsrsd prepare --dataset custom --force`")
    return table.take(pa.array(order))


# ================================================================ one chunk's arrays

def learner_codes(user: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """((n,) int64 codes, names (object)): codes number the learners by first appearance;
    a null user gets -1."""
    encoded = pc.dictionary_encode(user.combine_chunks())
    codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
    return codes, encoded.dictionary.to_numpy(zero_copy_only=False)


def chunk_arrays(rules: RowRules, table: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Rows of whole learners, grouped and in position order -> (learner names in order of
    appearance, (n,) user codes into them, the per-row arrays), after checking keys and ids."""
    user_code, names = learner_codes(table["user"])
    position = pc.fill_null(table["position"], -1).to_numpy()
    for column in ("user", "position", "question", "bundle", "correct"):
        if table[column].null_count:
            row = int(np.argmax(table[column].is_null().to_numpy(zero_copy_only=False)))
            who = names[user_code[row]] if user_code[row] >= 0 else "?"
            raise BadInput(f"{rules.file}: column {column!r} is null (user {who}); {rerun_prepare('ednet')}")
    same = (user_code[1:] == user_code[:-1]) & (position[1:] == position[:-1])
    if same.any():
        row = int(np.argmax(same)) + 1
        raise BadInput(f"{rules.file}: user {names[user_code[row]]} has position {position[row]} twice; {rerun_prepare('ednet')}")

    def ints(column: str, dtype) -> np.ndarray:
        return pc.fill_null(table[column], 0).to_numpy().astype(dtype)

    def in_range(values: np.ndarray, column: str, high: int, low: int = 0, rows: np.ndarray | None = None) -> np.ndarray:
        """`values`, after checking low <= v <= high; rows[i] is the interaction of values[i]."""
        bad = (values < low) | (values > high)
        if bad.ndim > 1:
            bad = bad.any(axis=1)
        if bad.any():
            first = int(np.argmax(bad))
            row = first if rows is None else int(rows[first])
            raise BadInput(
                f"{rules.file}: column {column!r} = {values[first].tolist()} (user {names[user_code[row]]}, position "
                f"{table['position'][row].as_py()}) is outside {low}..{high}; {rerun_prepare('ednet')}"
            )
        return values

    high, width = rules.high, rules.width
    question = in_range(ints("question", np.int32), "question", high["question"], low=1)
    arrays = {
        "position": ints("position", np.int32),
        "question": question,
        "bundle": in_range(ints("bundle", np.int32), "bundle", high["bundle"], low=1),
        "part": in_range(ints("part", np.int8), "part", 7),
        "tags": (rules.question_tags[question] if rules.question_tags is not None       # a gather: ~10x faster
                 else in_range(list_matrix(table["tags"], width, np.int16), "tags", high["tag"])),
        "correct": in_range(ints("correct", np.int8), "correct", 1),
        "platform": in_range(ints("platform", np.int8), "platform", 2),
        "source": in_range(ints("source", np.int8), "source", high["source"]),
    }

    # behaviour: raw values (null -> absent), then the fixed transforms
    raw = {name: table[name] for name in BEHAVIOR_TRANSFORMS if name != "lecture_count"}
    raw["lecture_count"] = pc.list_value_length(table["lectures"])
    num = np.zeros((table.num_rows, len(BEHAVIOR_TRANSFORMS)), dtype=np.float32)
    present = np.zeros(num.shape, dtype=bool)
    for f, (name, transform) in enumerate(BEHAVIOR_TRANSFORMS.items()):
        column = raw[name]
        if column.null_count == 0:
            present[:, f] = True
            num[:, f] = transform(column.to_numpy().astype(np.float64))
            continue
        present[:, f] = column.is_valid().to_numpy(zero_copy_only=False)
        num[:, f] = np.where(present[:, f], transform(pc.fill_null(column, 0).to_numpy().astype(np.float64)), 0.0)
    arrays["num"], arrays["num_present"] = num, present
    arrays["lecture_part"], arrays["lecture_tags"] = _lecture_content(rules, table["lectures"], in_range)
    arrays["hours"] = hours_since_first(table["timestamp"], user_code)
    return names, user_code, arrays


def custom_arrays(prepared: Prepared, users: list[str], user_code: np.ndarray, position: np.ndarray) -> dict[str, np.ndarray]:
    """custom_features.parquet aligned with a chunk's rows (`users`: its learner names, in
    order; `user_code` (n,) into them): per modality custom_cat.<m>
    (n, Kc) int64, custom_num.<m> (n, Kn) float32, custom_num_present.<m> (n, Kn) bool."""
    layout = custom_layout(prepared)
    if not layout:
        return {}
    table = read_custom_features(prepared, layout, users, users, user_code, position)
    file = prepared.file("custom_features.parquet")
    out: dict[str, np.ndarray] = {}
    n = table.num_rows
    for m, kinds in layout.items():
        cat = np.zeros((n, len(kinds["cat"])), dtype=np.int64)
        for j, f in enumerate(kinds["cat"]):
            values = pc.fill_null(table[f["name"]], 0).to_numpy().astype(np.int64)
            if len(values) and (values.min() < 0 or values.max() >= int(f["size"])):
                raise BadInput(f"{file}: feature {f['name']!r} has a code outside 0..{int(f['size']) - 1}; "
                               "rerun `dsrsd prepare --dataset custom --force`")
            cat[:, j] = values
        num = np.zeros((n, len(kinds["num"])), dtype=np.float32)
        present = np.zeros(num.shape, dtype=bool)
        for j, f in enumerate(kinds["num"]):
            values = np.asarray(pc.cast(table[f["name"]], pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
            present[:, j] = np.isfinite(values)
            num[:, j] = np.where(present[:, j], signed_log(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)), 0.0)
        out[f"custom_cat.{m}"], out[f"custom_num.{m}"], out[f"custom_num_present.{m}"] = cat, num, present
    return out


def hours_since_first(timestamp: pa.ChunkedArray, user_code: np.ndarray) -> np.ndarray:
    """(n,) float32 hours since the learner's first timestamp: the clock of the encoders'
    forgetting. A null timestamp (an `order` custom log) repeats the learner's previous one;
    a learner without any has 0 throughout (no time passes, only steps)."""
    if timestamp.null_count == 0 and len(user_code) and (np.diff(user_code) >= 0).all():   # grouped, no nulls: numpy only
        ms = timestamp.to_numpy().astype(np.float64)
        first = np.flatnonzero(np.diff(user_code, prepend=-1))
        start = np.repeat(np.minimum.reduceat(ms, first), np.diff(np.append(first, len(ms))))
        return np.clip((ms - start) / 3.6e6, 0.0, None).astype(np.float32)
    ms = pd.Series(timestamp.to_numpy(zero_copy_only=False), dtype="float64")
    ms = ms.groupby(user_code).ffill()
    first = ms.groupby(user_code).transform("min")
    return ((ms - first) / 3.6e6).fillna(0.0).clip(lower=0.0).to_numpy(np.float32)


def list_matrix(column: pa.ChunkedArray | pa.Array, width: int, dtype) -> np.ndarray:
    """(rows, width) matrix of a list column's first `width` values, 0-padded (null list = empty)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.asarray(array.offsets)[: len(array) + 1].astype(np.int64)       # (rows + 1,)
    lengths = np.where(array.is_null().to_numpy(zero_copy_only=False), 0, np.diff(offsets))
    values = pc.fill_null(array.values, 0).to_numpy()
    out = np.zeros((len(array), width), dtype=dtype)
    for slot in range(width):   # K small gathers instead of one ragged scatter
        has = lengths > slot
        if not has.any():
            break
        out[has, slot] = values[offsets[:-1][has] + slot]
    return out


def _lecture_content(rules: RowRules, lectures: pa.ChunkedArray, in_range) -> tuple[np.ndarray, np.ndarray]:
    """Per interaction: part of the last lecture studied since the previous bundle, and the
    sorted union of those lectures' tags (first K)."""
    width, size = rules.width, len(rules.lecture_part)
    array = lectures.combine_chunks()
    n = len(array)
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy().astype(np.int64)
    lecture_part = np.zeros(n, dtype=np.int8)
    lecture_tags = np.zeros((n, width), dtype=np.int16)
    if not lengths.any():            # KT1: no lectures at all
        return lecture_part, lecture_tags
    rows = np.repeat(np.arange(n), lengths)
    studied = in_range(pc.fill_null(pc.list_flatten(array), 0).to_numpy().astype(np.int64), "lectures", size - 1, rows=rows)

    has = lengths > 0
    lecture_part[has] = rules.lecture_part[studied[np.cumsum(lengths)[has] - 1]]

    pair_rows = np.repeat(rows, width)
    pair_tags = rules.lecture_tags[studied].reshape(-1).astype(np.int64)
    keep = pair_tags > 0
    pairs = np.unique(pair_rows[keep] * (1 << 16) + pair_tags[keep])    # sorted by row, then tag
    pair_rows, pair_tags = pairs >> 16, pairs & 0xFFFF
    counts = np.bincount(pair_rows, minlength=n)
    slot = np.arange(len(pairs)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = slot < width
    lecture_tags[pair_rows[keep], slot[keep]] = pair_tags[keep]
    return lecture_part, lecture_tags
