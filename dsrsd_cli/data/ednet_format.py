"""What EdNet's files look like to the parser, and how it reports problems.

The columns of KT1 and of the action logs (KT2..KT4), the integer codes of answers,
platforms, actions and item kinds (`Codebook`: strings -> codes in bulk), the dense
`source` vocabulary of the output (`SourceVocab`), and `Drops`: rows dropped per reason,
or with strict the earliest problem raised as one line naming file, line and column.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dsrsd_cli.data.ednet_arrays import to_arrow
from dsrsd_cli.errors import BadInput

# ---------------------------------------------------------------- columns and codes
KT1_COLUMNS = ("timestamp", "solving_id", "question_id", "user_answer", "elapsed_time")
ACTION_COLUMNS = ("timestamp", "action_type", "item_id", "source", "user_answer", "platform")  # KT2..KT4
KT4_EXTRA = "cursor_time"
INT_COLUMNS = {"timestamp", "solving_id", "elapsed_time", KT4_EXTRA}
_DICT = pa.dictionary(pa.int32(), pa.string())
CSV_TYPES = {c: (pa.int64() if c in INT_COLUMNS else _DICT) for c in (*KT1_COLUMNS, *ACTION_COLUMNS, KT4_EXTRA)}
CSV_TYPES["question_id"] = pa.string()  # ~10K distinct values a batch: a dictionary costs more than it saves

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

INT_TEXT = re.compile(r"-?[0-9]{1,18}")
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as decode(errors="surrogateescape") gives them
NULL = -1  # sentinel of the nullable integer features while they are computed
MAX_TIMESTAMP = 1 << 42  # ms since 1970: year 2109; keeps (key << 43 | time) searches in int64


# ---------------------------------------------------------------- strings -> codes
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


class SourceVocab:
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
                                to_arrow(codes, np.int8, column.is_null().to_numpy(zero_copy_only=False)))


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

    def summary(self) -> dict[str, dict]:
        """The manifest's "dropped" (count per reason) and "dropped_first" (where each was first seen)."""
        return {"dropped": dict(sorted(self.counts.items())), "dropped_first": dict(sorted(self.first.items()))}

    def merge(self, other: "Drops") -> None:
        self.counts.update(other.counts)
        for reason, where in other.first.items():
            self.first.setdefault(reason, where)


def location(file: str, line: int | None = None, column: str | None = None) -> str:
    parts = [file] + ([f"line {line}"] if line is not None else []) + ([f"column {column!r}"] if column else [])
    return ", ".join(parts)
