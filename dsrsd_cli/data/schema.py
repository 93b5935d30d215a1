"""Parquet schemas of prepared data (docs/data.md#the-prepared-folder): the seam between `prepare` and the loader.

`prepare` writes exactly these columns (in this order, with these Arrow types);
the loader checks them on open, so a stale or foreign folder fails with one clear line.
Bump SCHEMA_VERSION whenever a column changes.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# ---------------------------------------------------------------- EdNet
# One row per answered question, sorted by (user, timestamp, position).
# Dense indices start at 1; 0 means padding / unknown. Behaviour columns are null
# where the source (e.g. KT1) does not provide them -- never silently zero.
EDNET_INTERACTIONS = pa.schema(
    [
        ("user", pa.string()),            # "u123" (file stem of the raw per-user CSV)
        ("position", pa.int32()),         # 0-based index of the answer in the user's history
        ("timestamp", pa.int64()),        # ms since epoch when the question (bundle) was shown
        ("question", pa.int32()),         # dense question index (questions.parquet)
        ("bundle", pa.int32()),           # dense bundle index
        ("part", pa.int8()),              # TOEIC part 1..7 (0 unknown)
        ("tags", pa.list_(pa.int16())),   # dense tag indices (1..n_tags); empty list if untagged
        ("correct", pa.int8()),           # 0/1: final answer == questions.correct_answer
        ("elapsed_ms", pa.int64()),       # time spent answering (KT1 elapsed_time or submit-enter); null if unknown
        ("lag_ms", pa.int64()),           # time since the previous bundle was finished; null for the first
        ("answer_changes", pa.int16()),   # erase_choice + extra respond events (KT2+); null for KT1
        ("explanation_ms", pa.int64()),   # time reading this question's explanation after answering (KT3+); 0 if not read
        ("lectures", pa.list_(pa.int32())),  # dense lecture indices entered since the previous bundle (KT3+)
        ("lecture_ms", pa.int64()),       # time in those lectures (KT3+)
        ("media_plays", pa.int16()),      # play_audio + play_video events while on this bundle (KT4)
        ("platform", pa.int8()),          # 1 mobile, 2 web (KT2+); null for KT1
        ("source", pa.int8()),            # dense index of the KT4 `source` (manifest vocab.source); null for KT1
        ("kt_level", pa.int8()),          # richest KT level the row came from: 1..4
    ]
)

EDNET_QUESTIONS = pa.schema(
    [
        ("question_id", pa.string()),
        ("question", pa.int32()),
        ("bundle_id", pa.string()),
        ("bundle", pa.int32()),
        ("explanation_id", pa.string()),
        ("correct_answer", pa.string()),
        ("part", pa.int8()),
        ("tags", pa.list_(pa.int16())),
        ("deployed_at", pa.int64()),      # null where the source says -1
    ]
)

EDNET_LECTURES = pa.schema(
    [
        ("lecture_id", pa.string()),
        ("lecture", pa.int32()),
        ("part", pa.int8()),              # 0 where the source says -1
        ("tags", pa.list_(pa.int16())),
        ("video_length_ms", pa.int64()),  # null where the source says -1
    ]
)

EDNET_SPLITS = pa.schema(
    [
        ("user", pa.string()),
        ("split", pa.string()),           # "train" | "valid" | "test"
        ("fold", pa.int8()),              # 0..k-1 on train+valid; -1 on test
    ]
)

# Behaviour features, in the order the loader stacks them into `behavior.num`.
# "pre" features are known when the question is shown; "post" ones only after it
# is answered, so they may only feed predictions of later bundles (docs/leakage.md).
BEHAVIOR_FEATURES: tuple[tuple[str, str], ...] = (
    ("lag_ms", "pre"),
    ("lecture_count", "pre"),   # len(lectures)
    ("lecture_ms", "pre"),
    ("elapsed_ms", "post"),
    ("answer_changes", "post"),
    ("explanation_ms", "post"),
    ("media_plays", "post"),
)

# ---------------------------------------------------------------- OULAD
OULAD_REGISTRATIONS = pa.schema(
    [
        ("code_module", pa.string()),
        ("code_presentation", pa.string()),
        ("id_student", pa.int64()),
        ("gender", pa.string()),
        ("region", pa.string()),
        ("highest_education", pa.string()),
        ("imd_band", pa.string()),        # normalised: "10-20%" (the release's "10-20" fixed); null if missing
        ("age_band", pa.string()),
        ("disability", pa.string()),
        ("num_of_prev_attempts", pa.int16()),
        ("studied_credits", pa.int16()),
        ("date_registration", pa.int16()),    # nullable
        ("date_unregistration", pa.int16()),  # nullable; NEVER a feature (docs/leakage.md#oulad)
        ("final_result", pa.string()),        # Pass | Fail | Withdrawn | Distinction
        ("module_presentation_length", pa.int16()),
    ]
)

OULAD_CLICKS = pa.schema(
    [
        ("code_module", pa.string()),
        ("code_presentation", pa.string()),
        ("id_student", pa.int64()),
        ("day", pa.int16()),              # days relative to the presentation start (may be negative)
        ("activity_type", pa.string()),   # one of vle.csv's activity types
        ("clicks", pa.int32()),           # sum_click over the day's sites of that type
    ]
)

OULAD_ASSESSMENTS = pa.schema(
    [
        ("code_module", pa.string()),
        ("code_presentation", pa.string()),
        ("id_student", pa.int64()),
        ("id_assessment", pa.int32()),
        ("assessment_type", pa.string()),  # TMA | CMA | Exam
        ("weight", pa.float32()),
        ("due_day", pa.int16()),           # assessments.date; null if missing
        ("submitted_day", pa.int16()),     # null = not submitted
        ("is_banked", pa.int8()),          # null = not submitted
        ("score", pa.float32()),           # null = not submitted or blank score
    ]
)

OULAD_SPLITS = pa.schema(
    [
        ("code_module", pa.string()),
        ("code_presentation", pa.string()),
        ("id_student", pa.int64()),
        ("split", pa.string()),
        ("fold", pa.int8()),
    ]
)

OULAD_RESULTS = ("Pass", "Fail", "Withdrawn", "Distinction")

# Files of a prepared folder, per dataset.
PREPARED_FILES: dict[str, dict[str, pa.Schema]] = {
    "ednet": {
        "interactions.parquet": EDNET_INTERACTIONS,
        "questions.parquet": EDNET_QUESTIONS,
        "lectures.parquet": EDNET_LECTURES,
        "splits.parquet": EDNET_SPLITS,
    },
    "oulad": {
        "registrations.parquet": OULAD_REGISTRATIONS,
        "clicks.parquet": OULAD_CLICKS,
        "assessments.parquet": OULAD_ASSESSMENTS,
        "splits.parquet": OULAD_SPLITS,
    },
}

MODALITIES: dict[str, tuple[str, ...]] = {
    "ednet": ("item", "content", "behavior"),
    "oulad": ("demographics", "clicks", "assessments"),
}
