"""Generated answer logs with the original ASSISTments headers and quirks (the datasets' terms
do not allow shipping rows): latin-1 text, a BOM, CRLF line ends, blank skill ids, several
skills per answer on repeated rows, fractional `correct` (2012-2013). Each writer returns
the exact counts a correct `prepare --dataset custom` must report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

A2009 = ("order_id,assignment_id,user_id,assistment_id,problem_id,original,correct,attempt_count,ms_first_response,"
         "tutor_mode,answer_type,sequence_id,student_class_id,position,type,base_sequence_id,skill_id,skill_name,"
         "teacher_id,school_id,hint_count,hint_total,overlap_time,template_id,answer_id,answer_text,first_action,"
         "bottom_hint,opportunity,opportunity_original").split(",")
A2012 = ("problem_log_id,skill,problem_id,user_id,assignment_id,assistment_id,start_time,end_time,problem_type,"
         "original,correct,bottom_hint,hint_count,actions,attempt_count,ms_first_response,tutor_mode,answer_type,"
         "answer_id,answer_text,skill_id,overlap_time,template_id,first_action,Average_confidence(FRUSTRATED),"
         "Average_confidence(CONFUSED),Average_confidence(CONCENTRATING),Average_confidence(BORED)").split(",")


def _write(path: Path, header: list[str], rows: list[dict], *, bom: bool = True) -> None:
    lines = [",".join(header)] + [",".join(str(r.get(h, "")) for h in header) for r in rows]
    data = "\r\n".join(lines).encode("latin-1") + b"\r\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)


def write_2009(path: Path, *, learners: int = 24, answers: int = 14, seed: int = 0) -> dict:
    """skill_builder_data.csv-like. Every 3rd answer has 2 skills (2 rows), every 5th a blank skill id."""
    rng = np.random.default_rng(seed)
    rows, order_id, n_answers, n_rows, n_bad = [], 1000, 0, 0, 0
    skills = set()
    names = {1: "Équations", 2: "Fractions ½", 3: "Área", 4: "Probabilité"}
    for u in range(learners):
        for a in range(answers):
            order_id += int(rng.integers(1, 5))
            assistment = 500 + (a // 2) + 10 * (u % 3)
            problem = assistment * 10 + a % 2
            base = dict(order_id=order_id, assignment_id=7, user_id=70000 + u, assistment_id=assistment,
                        problem_id=problem, original=int(a % 2 == 0), correct=int(rng.random() < 0.6),
                        attempt_count=int(rng.integers(1, 4)), ms_first_response=int(rng.integers(-50, 90000)),
                        tutor_mode="tutor", answer_type="algebra" if a % 2 else "choose_1", sequence_id=5,
                        student_class_id=1, position=a, type="MasterySection", base_sequence_id=5,
                        teacher_id=3, school_id=4, hint_count=int(rng.integers(0, 3)), hint_total=3,
                        overlap_time=int(rng.integers(0, 90000)), template_id=9, answer_id="",
                        answer_text="réponse", first_action=int(rng.integers(0, 2)), bottom_hint="",
                        opportunity=a, opportunity_original=a)
            if a % 5 == 4:
                sk = [""]
            elif a % 3 == 0:
                sk = [1 + (a % 4), 1 + ((a + 1) % 4)]
            else:
                sk = [1 + (a % 4)]
            for s in sk:
                rows.append({**base, "skill_id": s, "skill_name": names.get(s, "")})
                if s != "":
                    skills.add(s)
            n_answers += 1
    # one bad row: a correct of 2 (dropped and counted), in an answer of its own
    order_id += 1
    rows.append({**rows[0], "order_id": order_id, "correct": 2})
    n_bad += 1
    _write(path, A2009, rows)
    return {"rows_in": len(rows), "answers": n_answers, "learners": learners, "skills": len(skills),
            "merged": len(rows) - n_bad - n_answers, "dropped": {"correct: not 0/1": n_bad}}


def write_2012(path: Path, *, learners: int = 24, answers: int = 12, seed: int = 0) -> dict:
    """2012-2013-data-with-predictions-4-final.csv-like. Every 7th answer has a fractional correct;
    one row has an unparseable start_time; skill ids blank on every 4th answer."""
    rng = np.random.default_rng(seed)
    rows, log_id, kept, frac, bad_time = [], 1, 0, 0, 0
    skills = set()
    for u in range(learners):
        t = np.datetime64("2012-09-01T08:00:00") + np.timedelta64(int(rng.integers(0, 10_000)), "s")
        for a in range(answers):
            t = t + np.timedelta64(int(rng.integers(5, 600)), "s")
            correct: object = int(rng.random() < 0.6)
            if (u * answers + a) % 7 == 3:
                correct, frac = 0.25, frac + 1
            sk = "" if a % 4 == 1 else str(10 + (a % 3))
            start = str(t).replace("T", " ") + ".0"
            if u == 2 and a == 6:      # (2 * 12 + 6) % 7 != 3: not also fractional
                start, bad_time = "not a time", bad_time + 1
            elif correct in (0, 1):
                kept += 1
                if sk:
                    skills.add(sk)
            rows.append(dict(problem_log_id=log_id, skill="Probabilité" if sk else "", problem_id=300 + a,
                             user_id=900 + u, assignment_id=2, assistment_id=200 + a // 3, start_time=start,
                             end_time=start, problem_type="algebra", original=1, correct=correct, bottom_hint="",
                             hint_count=int(rng.integers(0, 3)), actions=2, attempt_count=int(rng.integers(1, 3)),
                             ms_first_response=int(rng.integers(1000, 60000)), tutor_mode="tutor",
                             answer_type="algebra", answer_id="", answer_text="x", skill_id=sk,
                             overlap_time=int(rng.integers(1000, 60000)), template_id=1, first_action=0))
            log_id += 1
    _write(path, A2012, rows, bom=False)
    return {"rows_in": len(rows), "answers": kept, "learners": learners, "skills": len(skills),
            "dropped": {"correct: fractional": frac, "time: unparseable": bad_time}}
