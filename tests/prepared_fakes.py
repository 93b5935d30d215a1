"""Tiny, schema-exact prepared folders (what `dsrsd prepare` writes), for tests.

The tables are plain pandas frames with exactly the columns of dsrsd_cli/data/schema.py;
edit any value, then write the folder (manifest.json + Parquet):

    tables = ednet_tables(n_users=6, seed=0)
    tables["interactions"].loc[0, "lag_ms"] = None            # nullable columns take None
    prepared_dir = write_prepared(tmp_path / "ednet", "ednet", tables)

    tables = oulad_tables(n_students=40, seed=0)
    prepared_dir = write_prepared(tmp_path / "oulad", "oulad", tables)

The manifest's vocab is derived from the tables (`make_manifest`); pass
`manifest_updates={...}` to change or break any manifest field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dsrsd_cli.data import schema
from dsrsd_cli.data.ednet_store import write_store
from dsrsd_cli.data.splits import learner_split

TABLE_SCHEMAS: dict[str, dict[str, pa.Schema]] = {
    dataset: {name.removesuffix(".parquet"): table_schema for name, table_schema in files.items()}
    for dataset, files in schema.PREPARED_FILES.items()
}

EDNET_SOURCES = ["sprint", "adaptive_offer", "review", "archive"]
OULAD_ACTIVITY = ["forumng", "homepage", "oucontent", "quiz", "resource", "subpage", "url"]
OULAD_PRESENTATIONS = (("AAA", "2013J", 268), ("BBB", "2014B", 241))
OULAD_VALUES = {
    "gender": ["F", "M"],
    "region": ["East Anglian Region", "Scotland", "London Region", "Wales"],
    "highest_education": ["A Level or Equivalent", "HE Qualification", "Lower Than A Level"],
    "imd_band": ["0-10%", "10-20%", "20-30%", "90-100%"],
    "age_band": ["0-35", "35-55", "55<="],
    "disability": ["N", "Y"],
}


# ---------------------------------------------------------------- writing

def write_table(path: Path, frame: pd.DataFrame, table_schema: pa.Schema) -> None:
    """`frame` as Parquet with exactly `table_schema` (None/NaN -> null)."""
    arrays = [
        pa.array([None if _missing(v) else v for v in frame[f.name].tolist()], type=f.type)
        for f in table_schema
    ]
    pq.write_table(pa.Table.from_arrays(arrays, schema=table_schema), path)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def make_manifest(dataset: str, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    return {
        "tool_version": "test",
        "schema_version": schema.SCHEMA_VERSION,
        "dataset": dataset,
        "vocab": VOCABS[dataset](tables),
        "splits": {
            "seed": 0,
            "sizes": tables["splits"]["split"].value_counts().to_dict(),
            "n_folds": int(tables["splits"]["fold"].max()) + 1,
        },
        "rows_out": {name: len(frame) for name, frame in tables.items()},
    }


def write_prepared(
    folder: Path, dataset: str, tables: dict[str, pd.DataFrame], *, manifest_updates: dict[str, Any] | None = None
) -> Path:
    """Write manifest.json and every Parquet file of `dataset` into `folder`; returns `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, table_schema in TABLE_SCHEMAS[dataset].items():
        write_table(folder / f"{name}.parquet", tables[name], table_schema)
    manifest = make_manifest(dataset, tables)
    manifest.update(manifest_updates or {})
    if dataset == "ednet":   # the training arrays, as prepare writes them (data/ednet_store.py)
        manifest["arrays"] = write_store(folder, manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return folder


# ---------------------------------------------------------------- EdNet

def ednet_tables(
    *,
    n_users: int = 6,
    lengths: list[int] | None = None,
    n_questions: int = 60,
    n_tags: int = 12,
    n_lectures: int = 10,
    kt1_users: int = 1,
    max_bundle: int = 3,
    seed: int = 0,
    n_folds: int = 5,
) -> dict[str, pd.DataFrame]:
    """questions, lectures, interactions and splits of `n_users` learners.

    Learner i answers about lengths[i] questions (whole bundles of 1..max_bundle questions);
    the first `kt1_users` learners are KT1-only (behaviour beyond timing is null).
    """
    rng = np.random.default_rng(seed)
    lengths = lengths if lengths is not None else rng.integers(20, 120, size=n_users).tolist()

    # questions, grouped into bundles of consecutive questions
    bundle_of = np.zeros(n_questions, dtype=np.int64)
    bundle, i = 0, 0
    while i < n_questions:
        size = int(rng.integers(1, max_bundle + 1))
        bundle += 1
        bundle_of[i : i + size] = bundle
        i += size
    n_bundles = int(bundle_of.max())
    bundle_part = rng.integers(1, 8, size=n_bundles + 1)
    q_tags = [sorted(rng.choice(np.arange(1, n_tags + 1), size=int(rng.integers(0, 4)), replace=False).tolist()) for _ in range(n_questions)]
    questions = pd.DataFrame({
        "question_id": [f"q{q + 1}" for q in range(n_questions)],
        "question": np.arange(1, n_questions + 1),
        "bundle_id": [f"b{b}" for b in bundle_of],
        "bundle": bundle_of,
        "explanation_id": [f"e{b}" for b in bundle_of],
        "correct_answer": rng.choice(list("abcd"), size=n_questions),
        "part": bundle_part[bundle_of],
        "tags": q_tags,
        "deployed_at": [None if rng.random() < 0.2 else int(1.5e12 + rng.integers(0, 1e9)) for _ in range(n_questions)],
    })
    lectures = pd.DataFrame({
        "lecture_id": [f"l{i + 1}" for i in range(n_lectures)],
        "lecture": np.arange(1, n_lectures + 1),
        "part": rng.integers(0, 8, size=n_lectures),
        "tags": [sorted(rng.choice(np.arange(1, n_tags + 1), size=int(rng.integers(0, 3)), replace=False).tolist()) for _ in range(n_lectures)],
        "video_length_ms": [None if rng.random() < 0.3 else int(rng.integers(60_000, 600_000)) for _ in range(n_lectures)],
    })

    questions_of = {b: np.flatnonzero(bundle_of == b) + 1 for b in range(1, n_bundles + 1)}
    frames = []
    for u, length in enumerate(lengths):
        chosen: list[np.ndarray] = []
        while sum(len(q) for q in chosen) < length:
            chosen.append(questions_of[int(rng.integers(1, n_bundles + 1))])
        frames.append(_ednet_user(f"u{u + 1}", chosen, kt1=u < kt1_users, rng=rng, questions=questions, n_lectures=n_lectures))
    interactions = pd.concat(frames, ignore_index=True)

    split = learner_split(interactions["user"].unique(), seed=seed, n_folds=n_folds).rename(columns={"learner": "user"})
    return {"interactions": interactions, "questions": questions, "lectures": lectures, "splits": split}


def _ednet_user(user: str, bundles: list[np.ndarray], *, kt1: bool, rng, questions: pd.DataFrame, n_lectures: int) -> pd.DataFrame:
    sizes = np.array([len(b) for b in bundles])
    question = np.concatenate(bundles)
    n, n_b = len(question), len(bundles)
    first_of_bundle = np.zeros(n, dtype=bool)
    first_of_bundle[np.cumsum(sizes) - sizes] = True
    shown = 1_560_000_000_000 + np.cumsum(rng.integers(20_000, 3_600_000, size=n_b))
    lag = [None] + rng.integers(1_000, 600_000, size=n_b - 1).tolist()
    studied = [
        sorted(rng.choice(np.arange(1, n_lectures + 1), size=int(rng.integers(1, 3)), replace=False).tolist())
        if rng.random() < 0.2 else []
        for _ in range(n_b)
    ]
    q = questions.set_index("question").loc[question]

    def per_bundle(values) -> list:
        """One value per bundle -> one per question (values may be lists)."""
        return [value for value, size in zip(values, sizes) for _ in range(size)]

    def kt4(values) -> list:
        return [None] * n if kt1 else list(values)

    return pd.DataFrame({
        "user": user,
        "position": np.arange(n),
        "timestamp": np.repeat(shown, sizes),
        "question": question,
        "bundle": q["bundle"].to_numpy(),
        "part": q["part"].to_numpy(),
        "tags": q["tags"].tolist(),
        "correct": rng.integers(0, 2, size=n),
        "elapsed_ms": rng.integers(2_000, 90_000, size=n),
        "lag_ms": per_bundle(lag),
        "answer_changes": kt4(rng.integers(0, 3, size=n)),
        "explanation_ms": kt4(np.where(rng.random(n) < 0.3, rng.integers(1_000, 60_000, size=n), 0)),
        "lectures": kt4(per_bundle(studied)),
        "lecture_ms": kt4(per_bundle([int(rng.integers(10_000, 900_000)) if s else 0 for s in studied])),
        "media_plays": kt4(np.where(first_of_bundle, rng.integers(0, 3, size=n), 0)),
        "platform": kt4(np.repeat(rng.integers(1, 3), n)),
        "source": kt4(per_bundle(rng.integers(1, len(EDNET_SOURCES) + 1, size=n_b).tolist())),
        "kt_level": 1 if kt1 else 4,
    })


def _ednet_vocab(tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    questions, lectures = tables["questions"], tables["lectures"]
    all_tags = [t for tags in list(questions["tags"]) + list(lectures["tags"]) for t in tags]
    return {
        "question": int(questions["question"].max()),
        "bundle": int(questions["bundle"].max()),
        "tag": int(max(all_tags, default=0)),
        "lecture": int(lectures["lecture"].max()),
        "source": list(EDNET_SOURCES),
        "part": 7,
    }


# ---------------------------------------------------------------- OULAD

def oulad_assessment_catalogue(presentations=OULAD_PRESENTATIONS) -> pd.DataFrame:
    """Per presentation: 3 TMAs, 2 CMAs and an exam (the first presentation's exam has no date)."""
    rows, next_id = [], 1000
    for p, (module, presentation, length) in enumerate(presentations):
        plan = [("TMA", 20.0, 25), ("CMA", 0.0, 40), ("TMA", 30.0, 70), ("CMA", 0.0, 100), ("TMA", 50.0, 150),
                ("Exam", 100.0, None if p == 0 else length - 6)]
        for kind, weight, due in plan:
            rows.append({"code_module": module, "code_presentation": presentation, "id_assessment": next_id,
                         "assessment_type": kind, "weight": weight, "due_day": due})
            next_id += 1
    return pd.DataFrame(rows)


def oulad_tables(
    *, n_students: int = 40, presentations=OULAD_PRESENTATIONS, retake_frac: float = 0.25, seed: int = 0, n_folds: int = 5
) -> dict[str, pd.DataFrame]:
    """registrations, clicks, assessments and splits.

    Every student registers on one presentation; `retake_frac` of them on a second one
    too (so splits must group by student). Withdrawn registrations have an
    unregistration day and no activity after it.
    """
    rng = np.random.default_rng(seed)
    students = (100_000 + rng.choice(900_000, size=n_students, replace=False)).tolist()
    pairs = [(s, int(rng.integers(len(presentations)))) for s in students]
    pairs += [(s, (p + 1) % len(presentations)) for s, p in pairs[: int(retake_frac * n_students)]]

    regs = []
    for student, p in pairs:
        module, presentation, length = presentations[p]
        result = str(rng.choice(schema.OULAD_RESULTS, p=[0.4, 0.2, 0.3, 0.1]))
        unregistered = int(rng.integers(-20, length - 20)) if result == "Withdrawn" and rng.random() < 0.9 else None
        regs.append({
            "code_module": module, "code_presentation": presentation, "id_student": student,
            **{column: str(rng.choice(values)) for column, values in OULAD_VALUES.items()},
            "num_of_prev_attempts": int(rng.integers(0, 3)),
            "studied_credits": int(rng.choice([30, 60, 90, 120])),
            "date_registration": None if rng.random() < 0.1 else int(rng.integers(-150, 0)),
            "date_unregistration": unregistered,
            "final_result": result,
            "module_presentation_length": length,
        })
    regs = pd.DataFrame(regs)
    regs.loc[rng.random(len(regs)) < 0.1, "imd_band"] = None

    clicks, assessments = [], []
    catalogue = oulad_assessment_catalogue(presentations)
    for reg in regs.itertuples():
        last = reg.module_presentation_length if reg.date_unregistration is None or pd.isna(reg.date_unregistration) else reg.date_unregistration
        days = np.sort(rng.choice(np.arange(-25, int(last)), size=min(15, int(last) + 25), replace=False))
        for day in days:
            for kind in rng.choice(OULAD_ACTIVITY, size=int(rng.integers(1, 3)), replace=False):
                clicks.append((reg.code_module, reg.code_presentation, reg.id_student, int(day), str(kind), int(rng.integers(1, 20))))
        own = catalogue[(catalogue["code_module"] == reg.code_module) & (catalogue["code_presentation"] == reg.code_presentation)]
        for a in own.itertuples():
            due = a.due_day if a.due_day is not None and not pd.isna(a.due_day) else reg.module_presentation_length
            submitted = int(due + rng.integers(-5, 12))
            done = submitted < last and rng.random() < 0.85
            banked = int(rng.random() < 0.05) if done else None
            score = (None if rng.random() < 0.05 else float(rng.integers(0, 101))) if done else None
            assessments.append({**a._asdict(), "id_student": reg.id_student, "submitted_day": submitted if done else None,
                                "is_banked": banked, "score": score})
    clicks = pd.DataFrame(clicks, columns=["code_module", "code_presentation", "id_student", "day", "activity_type", "clicks"])
    assessments = pd.DataFrame(assessments).drop(columns="Index")[schema.OULAD_ASSESSMENTS.names]

    per_student = learner_split(regs["id_student"], seed=seed, n_folds=n_folds).rename(columns={"learner": "id_student"})
    splits = regs[["code_module", "code_presentation", "id_student"]].merge(per_student, on="id_student")
    return {"registrations": regs, "clicks": clicks, "assessments": assessments, "splits": splits}


def _oulad_vocab(tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    regs = tables["registrations"]

    def names(values) -> list[str]:
        return sorted({str(v) for v in values if not _missing(v)})

    vocab = {column: names(regs[column]) for column in [*OULAD_VALUES, "code_module", "code_presentation"]}
    vocab["activity_type"] = names(list(tables["clicks"]["activity_type"]) + OULAD_ACTIVITY)
    return vocab


VOCABS = {"ednet": _ednet_vocab, "oulad": _oulad_vocab}
