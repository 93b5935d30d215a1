"""Listing an EdNet source: its contents files, and its learner files grouped by learner.

The full KT1 has 784K learner files. Held as Python objects (a tuple, a list, a LearnerFile
and the zip coordinates' tuple of ints per learner) they took about 1 KB a learner in the
main process, for the whole run. `Learners` keeps them in flat arrays instead, and builds
the LearnerFile lists of one batch at a time, when its task is sent to a worker.
"""

from __future__ import annotations

import array
import re
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from dsrsd_cli.data.archive import RawSource
from dsrsd_cli.data.ednet_format import Drops, location
from dsrsd_cli.data.ednet_rows import LearnerFile

_LEVEL_DIR = re.compile(r"^(?:ednet[-_])?kt([1-4])$", re.IGNORECASE)
CONTENTS_FILES = ("questions.csv", "lectures.csv")


@dataclass
class Learners:
    """The learner files of a source, learners in output order (by the number in their id,
    then by id), each learner's files by KT level."""

    users: np.ndarray    # (L,) str: learner ids
    starts: np.ndarray   # (L + 1,) int64: learner l's files are files[starts[l] : starts[l + 1]]
    files: np.ndarray    # (F,) int64: index into the source's names
    levels: np.ndarray   # (F,) int8: KT level from the folder name (0 = unknown, decided by the header)

    def __len__(self) -> int:
        return len(self.users)

    def head(self, n: int | None) -> "Learners":
        """The first n learners (all with None)."""
        if n is None or n >= len(self):
            return self
        end = int(self.starts[n])
        return Learners(self.users[:n], self.starts[: n + 1], self.files[:end], self.levels[:end])

    def with_action_logs(self) -> int:
        """How many learners have a file of another level than KT1."""
        if not len(self):
            return 0
        return int(np.count_nonzero(np.add.reduceat(self.levels != 1, self.starts[:-1])))

    def file_names(self, source: RawSource) -> Iterator[str]:
        return (source.names[f] for f in self.files.tolist())

    def batch(self, start: int, stop: int, source: RawSource) -> list[tuple[str, list[LearnerFile]]]:
        """Learners start..stop-1 as parse_batch takes them: (id, [LearnerFile, ...])."""
        lo, hi = int(self.starts[start]), int(self.starts[stop])
        index = self.files[lo:hi]
        where = [tuple(w) for w in source.coords[index].tolist()] if source.coords is not None else [None] * (hi - lo)
        files = [LearnerFile(source.names[f], level, w) for f, level, w in zip(index.tolist(), self.levels[lo:hi].tolist(), where)]
        bounds = (self.starts[start : stop + 1] - lo).tolist()
        return [(str(self.users[start + k]), files[bounds[k] : bounds[k + 1]]) for k in range(stop - start)]


def list_source(source: RawSource, drops: Drops, display: str) -> tuple[dict[str, str], Learners]:
    """One pass over the member names: the contents files (the shallowest questions.csv and
    lectures.csv) and the learner files u*.csv. A second file of one learner at one level is
    dropped (duplicate_file; the first by name is kept)."""
    contents: dict[str, str] = {}
    folder_levels: dict[str, int] = {}   # folder -> KT level (EdNet: a few folders, 784K files)
    index, level, user = array.array("q"), array.array("b"), []
    for i, name in enumerate(source.names):
        folder, _, base = name.rpartition("/")
        if base in CONTENTS_FILES:
            if base not in contents or (name.count("/"), name) < (contents[base].count("/"), contents[base]):
                contents[base] = name
            continue
        if base[:1] not in "uU" or base[-4:].lower() != ".csv":
            continue
        found = folder_levels.get(folder)
        if found is None:
            found = folder_levels[folder] = _folder_level(name)
        index.append(i)
        level.append(found)
        user.append(base[:-4])
    ids, of_file = np.unique(np.array(user, dtype=str), return_inverse=True)   # ids sorted as text
    del user
    rank = np.empty(len(ids), np.int64)
    rank[_by_number(ids)] = np.arange(len(ids))
    index_a, level_a, learner_a = np.frombuffer(index, np.int64), np.frombuffer(level, np.int8), rank[of_file.reshape(-1)]
    order = np.lexsort((index_a, level_a, learner_a))                            # by learner, level, name
    learner, files, levels = learner_a[order], index_a[order], level_a[order]
    again = np.zeros(len(order), bool)
    again[1:] = (learner[1:] == learner[:-1]) & (levels[1:] == levels[:-1])
    for k in np.flatnonzero(again).tolist():                                     # rare: report each
        first = k - 1
        while again[first]:
            first -= 1
        name, kept = source.names[int(files[k])], source.names[int(files[first])]
        drops.add("duplicate_file", location(display + name), f"a second file for learner {name.rpartition('/')[2][:-4]} "
                  f"at level KT{int(levels[k]) or '?'} (kept {kept})")
    learner, files, levels = learner[~again], files[~again], levels[~again]
    users = ids[np.argsort(rank)]
    starts = np.searchsorted(learner, np.arange(len(users) + 1)).astype(np.int64)
    return contents, Learners(users=users, starts=starts, files=files, levels=levels)


def _by_number(ids: np.ndarray) -> list[int]:
    """Positions of the (text-sorted) ids in output order: by the number after their first
    letter, ids without one last; ties (u01, u1) stay in text order (a stable sort)."""
    numbers = [int(u[1:]) if u[1:].isdigit() else sys.maxsize for u in ids.tolist()]
    return sorted(range(len(numbers)), key=numbers.__getitem__)


def _folder_level(name: str) -> int:
    for part in reversed(name.split("/")[:-1]):
        if m := _LEVEL_DIR.match(part):
            return int(m.group(1))
    return 0
