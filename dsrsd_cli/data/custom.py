"""`dsrsd prepare --dataset custom --raw FILE|DIR --mapping my.toml`: any answer log -> the EdNet prepared schema.

A TOML mapping names the log's columns (docs/data.md#bring-your-own-logs):

    learner = "user_id"            # required
    item = "problem_id"            # required: the question
    correct = "correct"            # required: 0/1
    time = "start_time"            # a datetime or a number (time_unit "s" | "ms"); or instead
    order = "order_id"             #   a number that orders a learner's answers (no time known)
    answer = "order_id"            # optional: rows sharing (learner, answer) are ONE answer
                                   #   (one row per skill, as ASSISTments); default (learner, time|order, item)
    group = "assistment_id"        # optional: items shown together (consecutive rows = one bundle)
    skills = "skill_id"            # optional: skills; skill_separator = "_" when one cell holds several
    encoding = "latin-1"           # optional, default utf-8 (a BOM is always skipped)
    [[features]]                   # optional, per modality item | content | behavior
    name = "hints"; column = "hint_count"; modality = "behavior"; kind = "numeric"; known = "after"

Output (schema.py, dataset "ednet"): interactions.parquet (one row per answer; behaviour
columns null, timestamp null for an `order` log, part 0, tags = the answer's skills),
questions.parquet (distinct items; bundle = the item's first group, else its own),
lectures.parquet empty, splits.parquet (learner_split), manifest.json with
`source.format = "custom"`, `custom_features`, and custom_features.parquet (user, position,
one column per feature: categorical as dense int32 codes, 0 = unknown; numeric float64, null)
when features are mapped. `known = "before"` features may feed the answer's own prediction,
`"after"` ones only later bundles (docs/leakage.md).

Bad rows (unparseable time, correctness not 0/1 -- ASSISTments 2012-2013 has fractional
`correct` for some open-response rows --, empty learner or item) are dropped and counted in
the manifest "dropped"; with strict the first one fails, naming file, line and column.
A mapping error, a missing column, or a column where no row parses is one BadInput line.
"""

from __future__ import annotations

import io
import tomllib
import warnings
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dsrsd_cli.data.ednet import PARQUET_OPTIONS, clean_stale, finish_folder
from dsrsd_cli.data.ednet_format import Drops, location
from dsrsd_cli.data.schema import EDNET_INTERACTIONS, EDNET_LECTURES, EDNET_QUESTIONS
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import atomic_dir

MODALITIES = ("item", "content", "behavior")
KINDS = ("categorical", "numeric")
KNOWN = ("before", "after")
_TOP = {"learner", "item", "correct", "time", "order", "answer", "group", "skills", "skill_separator", "encoding",
        "time_unit", "features"}
_FEATURE_KEYS = {"name", "column", "modality", "kind", "known"}
_BOM = b"\xef\xbb\xbf"


# ---------------------------------------------------------------- the mapping

def shipped_mappings() -> list[str]:
    folder = resources.files("dsrsd_cli") / "mappings"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_mapping(mapping: str | Path | None) -> tuple[dict, str]:
    """A mapping file, or the name of a shipped one (dsrsd_cli/mappings/NAME.toml) -> (checked dict, where)."""
    if mapping is None or str(mapping) == "":
        raise BadInput("--dataset custom needs --mapping FILE.toml (or a shipped one: "
                       f"{', '.join(shipped_mappings())}); see docs/data.md#bring-your-own-logs")
    path = Path(mapping)
    if path.is_file():
        text, where = path.read_bytes(), str(path)
    else:
        shipped = resources.files("dsrsd_cli") / "mappings" / f"{mapping}.toml"
        if not shipped.is_file():
            raise BadInput(f"--mapping {mapping}: no such file, nor a shipped mapping; shipped: {', '.join(shipped_mappings())}")
        text, where = shipped.read_bytes(), f"dsrsd_cli/mappings/{mapping}.toml"
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BadInput(f"{where}: not valid TOML ({e})") from None
    return check_mapping(raw, where), where


def check_mapping(raw: dict, where: str) -> dict:
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise BadInput(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(_TOP))}")
    for key in ("learner", "item", "correct"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise BadInput(f"{where}: {key} = \"COLUMN\" is required (the log's column holding the {key})")
    if ("time" in raw) == ("order" in raw):
        raise BadInput(f"{where}: give exactly one of time = \"COLUMN\" (a datetime or a number) or order = \"COLUMN\"")
    for key in ("time", "order", "answer", "group", "skills", "skill_separator", "encoding", "time_unit"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key]):
            raise BadInput(f"{where}: {key} must be a non-empty string")
    if raw.get("time_unit", "s") not in ("s", "ms"):
        raise BadInput(f"{where}: time_unit {raw['time_unit']!r} is not s or ms")
    try:
        "".encode(raw.get("encoding", "utf-8"))
    except LookupError:
        raise BadInput(f"{where}: encoding {raw['encoding']!r} is unknown; e.g. utf-8 or latin-1") from None
    features = raw.get("features", [])
    if not isinstance(features, list):
        raise BadInput(f"{where}: features must be an array of tables ([[features]])")
    names: set[str] = set()
    for i, f in enumerate(features):
        at = f"{where}: features[{i}]"
        if not isinstance(f, dict):
            raise BadInput(f"{at}: expected a table with {', '.join(sorted(_FEATURE_KEYS))}")
        extra = sorted(set(f) - _FEATURE_KEYS)
        if extra:
            raise BadInput(f"{at}: unknown key {extra[0]!r}; known: {', '.join(sorted(_FEATURE_KEYS))}")
        if not isinstance(f.get("column"), str) or not f["column"]:
            raise BadInput(f"{at}: column = \"COLUMN\" is required")
        f.setdefault("name", f["column"])
        for key, allowed in (("modality", MODALITIES), ("kind", KINDS), ("known", KNOWN)):
            if f.get(key) not in allowed:
                raise BadInput(f"{at} ({f['name']}): {key} = {f.get(key)!r} is not one of {', '.join(allowed)}")
        if not isinstance(f["name"], str) or not f["name"].replace("_", "").isalnum():
            raise BadInput(f"{at}: name {f['name']!r} must be letters, digits and _")
        if f["name"] in names or f["name"] in ("user", "position"):
            raise BadInput(f"{at}: name {f['name']!r} is used twice (or reserved)")
        names.add(f["name"])
    raw["features"] = features
    return raw


def mapped_columns(mapping: dict) -> list[str]:
    keys = ("learner", "item", "correct", "time", "order", "answer", "group", "skills")
    cols = [mapping[k] for k in keys if k in mapping] + [f["column"] for f in mapping["features"]]
    return list(dict.fromkeys(cols))


# ---------------------------------------------------------------- reading the log

def _files(raw: Path) -> list[Path]:
    if raw.is_file():
        return [raw]
    if raw.is_dir():
        files = sorted(p for p in raw.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".parquet", ".txt"))
        if files:
            return files
        raise BadInput(f"{raw}: no .csv or .parquet file in the folder; --raw takes an answer log or a folder of them")
    raise BadInput(f"{raw}: not found; --raw takes an answer log (.csv or .parquet) or a folder of them")


def _read(file: Path, columns: list[str], encoding: str) -> pd.DataFrame:
    """The mapped columns as strings ("" = empty) plus `_line` (CSV line; Parquet row + 1)."""
    if file.suffix.lower() == ".parquet":
        try:
            have = pq.read_schema(file).names
        except (pa.ArrowException, OSError) as e:
            raise BadInput(f"{file}: not a readable Parquet file ({e})") from None
        _check_columns(file, have, columns)
        table = pq.read_table(file, columns=columns).to_pandas()
        frame = pd.DataFrame({c: table[c].astype(object).where(table[c].notna(), "").astype(str) for c in columns})
        frame["_line"] = np.arange(len(frame)) + 1
        return frame
    data = file.read_bytes()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise BadInput(f"{file}: not {encoding} text (byte {e.start}); set encoding = \"latin-1\" (or the right one) in the mapping") from None
    try:
        header = pd.read_csv(io.StringIO(text), nrows=0).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise BadInput(f"{file}: not a CSV file with a header line ({e})") from None
    header = [h.strip() for h in header]
    _check_columns(file, header, columns)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, usecols=lambda c: c.strip() in columns)
    except pd.errors.ParserError as e:
        raise BadInput(f"{file}: CSV parse error ({e})") from None
    frame.columns = [c.strip() for c in frame.columns]
    frame["_line"] = np.arange(len(frame)) + 2
    return frame


def _check_columns(file: Path, have: list[str], want: list[str]) -> None:
    missing = [c for c in want if c not in have]
    if missing:
        raise BadInput(f"{file}: column {missing[0]!r} named by the mapping is missing; the file has: "
                       f"{', '.join(have[:30])}{' ...' if len(have) > 30 else ''}")


# ---------------------------------------------------------------- prepare

def prepare_custom(
    raw: Path, out: Path, *, mapping: str | Path | None = None, max_users: int | None = None, seed: int = 0,
    force: bool = False, strict: bool = False, progress: Callable[[int, int], None] | None = None,
    extra_manifest: dict | None = None,
) -> dict:
    """An answer log (a file or a folder of them) + a mapping -> the prepared EdNet folder `out`; the manifest."""
    raw, out = Path(raw), Path(out)
    spec, mapping_where = load_mapping(mapping)
    if out.exists() and not force:
        raise BadInput(f"{out}: output folder already exists; pass --force to replace it or choose another --out")
    files = _files(raw)
    columns = mapped_columns(spec)
    encoding = spec.get("encoding", "utf-8")
    frames = []
    for i, file in enumerate(files):
        frame = _read(file, columns, encoding)
        frame["_file"] = i
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    rows_in = len(rows)
    drops = Drops(strict)
    names = [str(f) for f in files]

    def bad(mask: np.ndarray, reason: str, column: str, problem: str) -> None:
        """Drop (and count) the rows of `mask`; strict: the first one fails."""
        nonlocal rows
        mask = np.asarray(mask, bool)
        if not mask.any():
            return
        at = np.flatnonzero(mask)
        first = rows.iloc[at[0]]
        where = location(names[int(first["_file"])], int(first["_line"]), column)
        # strict: Drops keeps the problem and raise_first (below) names the earliest (file, line) of all checks
        drops.add(reason, where, problem.format(value=first[column]), n=len(at),
                  at=(int(first["_file"]), int(first["_line"])))
        rows = rows.loc[~mask].reset_index(drop=True)

    if not rows_in:
        raise BadInput(f"{raw}: no answer rows")
    for key in ("learner", "item"):
        col = spec[key]
        bad((rows[col].str.strip() == "").to_numpy(), f"{key}: empty", col, f"{key} is empty")
    # correctness: 0/1 only (documented policy: anything else, e.g. ASSISTments' fractional scores, is dropped)
    col = spec["correct"]
    rows[col] = rows[col].str.strip().replace({"True": "1", "False": "0", "true": "1", "false": "0"})
    value = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=np.float64)
    fractional = (value > 0) & (value < 1)
    if len(value) and not ((value == 0) | (value == 1)).any():
        raise BadInput(f"{names[0]}: column {col!r} (correct) holds no 0/1 value (e.g. {rows[col].iloc[0]!r}); "
                       "map a 0/1 correctness column")
    bad(fractional, "correct: fractional", col, "correct = {value!r} is a partial score, not 0/1")
    value = pd.to_numeric(rows[col].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad(~((value == 0) | (value == 1)), "correct: not 0/1", col, "correct = {value!r} is not 0 or 1")
    # time or order -> float key (ms for a time)
    tcol = spec.get("time") or spec["order"]
    stamp, is_time = _times(rows[tcol], "time" in spec, spec.get("time_unit", "s"), names[0], tcol)
    bad(np.isnan(stamp), "time: unparseable" if "time" in spec else "order: not a number", tcol,
        "{value!r} is not a " + ("time" if "time" in spec else "number"))
    stamp, _ = _times(rows[tcol], "time" in spec, spec.get("time_unit", "s"), names[0], tcol)
    feature_values = {}
    for f in spec["features"]:
        if f["kind"] == "numeric":
            text = rows[f["column"]].str.strip()
            v = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
            bad(np.isnan(v) & (text != "").to_numpy() & ~text.str.lower().isin(["nan", "null", "na"]).to_numpy(),
                f"{f['name']}: not a number", f["column"], "{value!r} is not a number")
    for f in spec["features"]:
        text = rows[f["column"]].str.strip()
        if f["kind"] == "numeric":
            feature_values[f["name"]] = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        else:
            feature_values[f["name"]] = text.to_numpy(dtype=object)
    drops.raise_first()
    if not len(rows):
        raise BadInput(f"{raw}: no usable answers (dropped: {dict(drops.counts)})")

    learner = rows[spec["learner"]].str.strip().to_numpy(dtype=object)
    item = rows[spec["item"]].str.strip().to_numpy(dtype=object)
    correct = pd.to_numeric(rows[spec["correct"]].str.strip()).to_numpy().astype(np.int8)
    order_in_file = np.arange(len(rows))

    # one answer per (learner, answer key): repeated rows (one per skill) merged
    if "answer" in spec:
        key = rows[spec["answer"]].str.strip().to_numpy(dtype=object)
        answer_key = pd.MultiIndex.from_arrays([learner, key])
    else:
        answer_key = pd.MultiIndex.from_arrays([learner, stamp, item])
    answer_code, _ = pd.factorize(answer_key)
    first_row = pd.Series(order_in_file).groupby(answer_code).min().to_numpy()   # answer -> its first row
    skills_of = _skills(rows, spec, answer_code, len(first_row))                # answer -> list of skill names
    merged = len(rows) - len(first_row)
    # conflicting correctness between repeated rows of one answer: the first row's value

    keep = first_row
    learner, item, correct, stamp = learner[keep], item[keep], correct[keep], stamp[keep]
    feature_values = {k: v[keep] for k, v in feature_values.items()}
    group = rows[spec["group"]].str.strip().to_numpy(dtype=object)[keep] if "group" in spec else None

    # learners ordered by first appearance; answers by (time|order, file order)
    learner_codes, learner_names = pd.factorize(learner)
    if max_users is not None:
        sel = learner_codes < max_users
        learner, item, correct, stamp, learner_codes = learner[sel], item[sel], correct[sel], stamp[sel], learner_codes[sel]
        feature_values = {k: v[sel] for k, v in feature_values.items()}
        skills_of = [s for s, k in zip(skills_of, sel) if k]
        group = group[sel] if group is not None else None
        keep = keep[sel]
        learner_names = learner_names[:max_users]
    sort = np.lexsort((keep, stamp, learner_codes))
    learner, item, correct, stamp, learner_codes = learner[sort], item[sort], correct[sort], stamp[sort], learner_codes[sort]
    feature_values = {k: v[sort] for k, v in feature_values.items()}
    skills_of = [skills_of[i] for i in sort]
    group = group[sort] if group is not None else None
    n = len(learner)
    starts = np.r_[True, learner_codes[1:] != learner_codes[:-1]]
    position = (np.arange(n) - np.maximum.accumulate(np.where(starts, np.arange(n), 0))).astype(np.int32)
    users = [f"u{name}" for name in learner_names]
    user = np.array(users, dtype=object)[learner_codes]

    # questions: dense by first appearance; bundle = the item's first group (else its own)
    q_code, q_names = pd.factorize(item)
    question = (q_code + 1).astype(np.int32)
    if group is not None:
        first_of_q = pd.Series(np.arange(n)).groupby(q_code).min().to_numpy()
        b_code, b_names = pd.factorize(group[first_of_q])
        bundle_of_q = (b_code + 1).astype(np.int32)
        bundle_ids = [str(b_names[c]) for c in b_code]
    else:
        bundle_of_q = np.arange(1, len(q_names) + 1, dtype=np.int32)
        bundle_ids = [str(q) for q in q_names]
    bundle = bundle_of_q[q_code]
    # skills: dense by first appearance; a question's tags = the union over its answers
    s_index: dict[str, int] = {}
    tags_of_answer = []
    for s in skills_of:
        tags_of_answer.append(sorted({s_index.setdefault(k, len(s_index) + 1) for k in s}))
    if len(s_index) > np.iinfo(np.int16).max:
        raise BadInput(f"{raw}: {len(s_index):,} distinct skills; the prepared schema holds at most 32,767")
    q_tags: list[set] = [set() for _ in range(len(q_names))]
    for q, t in zip(q_code.tolist(), tags_of_answer):
        q_tags[q].update(t)

    interactions = pa.table({
        "user": pa.array(user.tolist(), pa.string()),
        "position": pa.array(position, pa.int32()),
        "timestamp": pa.array(stamp.astype(np.int64), pa.int64()) if is_time else pa.nulls(n, pa.int64()),
        "question": pa.array(question, pa.int32()),
        "bundle": pa.array(bundle, pa.int32()),
        "part": pa.array(np.zeros(n, np.int8), pa.int8()),
        "tags": pa.array(tags_of_answer, pa.list_(pa.int16())),
        "correct": pa.array(correct, pa.int8()),
        "elapsed_ms": pa.nulls(n, pa.int64()), "lag_ms": pa.nulls(n, pa.int64()),
        "answer_changes": pa.nulls(n, pa.int16()), "explanation_ms": pa.nulls(n, pa.int64()),
        "lectures": pa.array([[]] * n, pa.list_(pa.int32())), "lecture_ms": pa.nulls(n, pa.int64()),
        "media_plays": pa.nulls(n, pa.int16()), "platform": pa.nulls(n, pa.int8()), "source": pa.nulls(n, pa.int8()),
        "kt_level": pa.nulls(n, pa.int8()),
    }, schema=EDNET_INTERACTIONS)
    questions = pa.table({
        "question_id": pa.array([str(q) for q in q_names], pa.string()),
        "question": pa.array(np.arange(1, len(q_names) + 1, dtype=np.int32), pa.int32()),
        "bundle_id": pa.array(bundle_ids, pa.string()),
        "bundle": pa.array(bundle_of_q, pa.int32()),
        "explanation_id": pa.nulls(len(q_names), pa.string()),
        "correct_answer": pa.nulls(len(q_names), pa.string()),
        "part": pa.array(np.zeros(len(q_names), np.int8), pa.int8()),
        "tags": pa.array([sorted(t) for t in q_tags], pa.list_(pa.int16())),
        "deployed_at": pa.nulls(len(q_names), pa.int64()),
    }, schema=EDNET_QUESTIONS)

    custom_features, feature_table = [], None
    if spec["features"]:
        cols: dict[str, pa.Array] = {"user": interactions["user"].combine_chunks(), "position": interactions["position"].combine_chunks()}
        for f in spec["features"]:
            v = feature_values[f["name"]]
            record = {"name": f["name"], "column": f["column"], "modality": f["modality"], "kind": f["kind"],
                      "known": f["known"]}
            if f["kind"] == "categorical":
                codes, cats = pd.factorize(np.where(v == "", None, v).astype(object))   # "" (blank) -> -1 -> 0 unknown
                cols[f["name"]] = pa.array((codes + 1).astype(np.int32), pa.int32())
                record["size"] = int(len(cats)) + 1
            else:
                cols[f["name"]] = pa.array(v, pa.float64(), mask=np.isnan(v))
            custom_features.append(record)
        feature_table = pa.table(cols)

    clean_stale(out)
    with atomic_dir(out, force=force) as tmp:
        pq.write_table(interactions, tmp / "interactions.parquet", **PARQUET_OPTIONS)
        pq.write_table(questions, tmp / "questions.parquet", **PARQUET_OPTIONS)
        pq.write_table(EDNET_LECTURES.empty_table(), tmp / "lectures.parquet", **PARQUET_OPTIONS)
        if feature_table is not None:
            pq.write_table(feature_table, tmp / "custom_features.parquet", **PARQUET_OPTIONS)
        manifest = finish_folder(
            tmp, users=users, seed=seed,
            source={"format": "custom", "path": str(raw), "files": [str(f) for f in files],
                    "mapping": dict(spec), "mapping_file": mapping_where,
                    "timestamps": "ms since 1970 (or the log's own number x time_unit)" if is_time
                    else "null: the log has an order, no time"},
            counts={"rows_in": rows_in,                 # data rows read
                    "rows_out": n,                      # answers written
                    "merged_rows": int(merged),         # repeated rows of one answer (one per skill) merged into it
                    **drops.summary()},
            vocab={"question": len(q_names), "bundle": int(bundle_of_q.max(initial=0)), "tag": len(s_index),
                   "lecture": 0, "part": 7, "source": []},
            more={"custom_features": custom_features} if custom_features else {},
            extra_manifest=extra_manifest,
        )
    return manifest


def _times(values: pd.Series, is_time: bool, unit: str, file: str, column: str) -> tuple[np.ndarray, bool]:
    """(n,) float64 ordering key, NaN where unparseable: ms for a time (datetime text or a number x unit),
    the number itself for an order column. Raises when no row parses."""
    text = values.str.strip()
    number = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    if not is_time:
        out = number
    elif np.isfinite(number).any() and np.isfinite(number).sum() >= (text != "").sum() / 2:
        out = number * (1000.0 if unit == "s" else 1.0)
    else:
        given = text.where(text != "", None)
        with warnings.catch_warnings():                                    # "could not infer format": handled below
            warnings.simplefilter("ignore", UserWarning)
            parsed = pd.to_datetime(given, errors="coerce", utc=True)      # one inferred format: fast
            retry = parsed.isna().to_numpy() & given.notna().to_numpy()
            if retry.any():                                                # other formats row by row
                parsed[retry] = pd.to_datetime(given[retry], errors="coerce", utc=True, format="mixed")
        out = _ms(parsed)
    out = np.where(np.isfinite(out), out, np.nan)
    if len(out) and np.isnan(out).all():
        raise BadInput(f"{file}: column {column!r} ({'time' if is_time else 'order'}): no value parses "
                       f"(e.g. {text.iloc[0]!r}); map a datetime or numeric column")
    return out, is_time


def _ms(parsed: pd.Series) -> np.ndarray:
    """UTC datetimes -> float ms since 1970, NaN for NaT."""
    values = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ms]")
    out = values.astype(np.int64).astype(np.float64)
    out[np.isnat(values)] = np.nan
    return out


def _skills(rows: pd.DataFrame, spec: dict, answer_code: np.ndarray, n_answers: int) -> list[list[str]]:
    """answer -> its skills (in first-seen order), from repeated rows and/or a separator; blanks skipped."""
    out: list[list[str]] = [[] for _ in range(n_answers)]
    if "skills" not in spec:
        return out
    sep = spec.get("skill_separator")
    for a, cell in zip(answer_code.tolist(), rows[spec["skills"]].tolist()):
        parts = cell.split(sep) if sep else [cell]
        for p in parts:
            p = p.strip()
            if p and p.lower() not in ("nan", "null", "na") and p not in out[a]:
                out[a].append(p)
    return out
