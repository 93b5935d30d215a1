"""The OULAD outputs as tables, from the checked rows of the seven CSVs.

    registrations   studentInfo + registration dates + module length
    clicks          studentVle summed per (registration, day, vle.csv activity_type),
                    streamed block by block so memory follows the output, not the file
    assessments     every registration x every assessment of its presentation, with the
                    submission (day, banked, score) or nulls
    splits          one split per student (or per presentation: --split-by presentation)

Here rows that name something no other file knows (a registration with no course, an
assessment or a VLE site not listed, a student not registered) are flagged and dropped.
studentVle's identical rows are NOT duplicates: they are separate visits with the same
click count, and they are summed.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from dsrsd_cli.data.oulad_csv import (
    INT16,
    INT32_MAX,
    REGISTRATION_KEY,
    STUDENT_ASSESSMENT,
    STUDENT_INFO,
    STUDENT_REGISTRATION,
    STUDENT_VLE,
    Reader,
    Rows,
)
from dsrsd_cli.data.splits import learner_split
from dsrsd_cli.errors import BadInput

COMPACT_ROWS = 4_000_000       # re-sum the partial click sums when they grow past this
N_FOLDS = 5


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


def flag_unknown_course(rows: Rows, presentations: Presentations) -> None:
    unknown = presentations.of(rows.frame) < 0
    rows.flag(unknown, "code_module,code_presentation", "is not a module presentation of courses.csv")


# ----------------------------------------------------------------------------- the outputs
def build_registrations(reader: Reader, presentations: Presentations) -> tuple[pd.DataFrame, int]:
    """studentInfo + studentRegistration dates + module length; and how many had no dates."""
    info = reader.whole(STUDENT_INFO)
    flag_unknown_course(info, presentations)
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


def build_assessments(
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


def build_clicks(reader: Reader, vle: pd.DataFrame, regs: pd.DataFrame, presentations: Presentations,
                 activity_types: list[str], progress: Callable[[int, int], None] | None = None
                 ) -> dict[str, pa.Array | np.ndarray]:
    """studentVle summed per (registration, day, vle.csv activity type), streamed block by block;
    `progress(bytes read, file size)` as it goes, (size, size) when the file is read."""
    site_index = pd.Index(vle["id_site"])
    site_presentation = presentations.of(vle)
    site_activity = pd.Index(activity_types).get_indexer(vle["activity_type"])
    registrations = Registrations(presentations.of(regs), regs["id_student"].to_numpy())
    sums = ClickSums(len(activity_types))

    read, size = 0, 0

    def on_read(n: int, total: int) -> None:
        nonlocal read, size
        read, size = read + n, total
        if progress:
            progress(read, total)

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
    if progress:
        progress(size, size)

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


def _decode(codes: np.ndarray, names) -> pa.Array:
    """Integer codes -> strings, through a dictionary (fast for millions of rows)."""
    dictionary = pa.array(list(names), pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dictionary).cast(pa.string())


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
