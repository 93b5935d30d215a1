"""The built-in OULAD sample: real formats, a documented story, honest ground truth, working strengths."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from dsrsd_cli.samples import write_sample
from dsrsd_cli.samples.oulad import BURSTY_TYPES, QUOTED_FILES, oracle_at_risk, simulate_oulad, write_oulad_sample
from dsrsd_cli.errors import BadInput

CSV_FILES = ("courses.csv", "assessments.csv", "vle.csv", "studentInfo.csv", "studentRegistration.csv",
             "studentAssessment.csv", "studentVle.csv")
KEY = ["code_module", "code_presentation", "id_student"]
PROBS = ["p_Pass", "p_Fail", "p_Withdrawn", "p_Distinction"]
ORACLE_COLUMNS = ["p_fail_if_stay", "p_distinction_if_stay", "date_unregistration", "hazard_first_week", "weekly_hazard"]


def _read(path: Path) -> pd.DataFrame:
    """As a parser sees it: every value a string, missing values as empty strings."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("oulad_small")
    write_oulad_sample(folder, n_registrations=200, seed=3)
    return folder


@pytest.fixture(scope="module")
def big():
    """A few thousand registrations, in memory (the same frames write_oulad_sample writes)."""
    return simulate_oulad(n_registrations=3000, seed=0)


# ---------------------------------------------------------------- formats
def test_same_seed_gives_identical_files(small, tmp_path):
    write_oulad_sample(tmp_path / "again", n_registrations=200, seed=3)
    names = sorted(p.name for p in small.iterdir())
    assert names == sorted(CSV_FILES + ("ground_truth.parquet", "sample_params.json"))
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (small / name).read_bytes(), name
    write_oulad_sample(tmp_path / "other", n_registrations=200, seed=4)
    assert (tmp_path / "other" / "studentVle.csv").read_bytes() != (small / "studentVle.csv").read_bytes()


def test_headers_and_quoting_match_the_release(small, fixtures_dir):
    quoted_line = re.compile(r'^"[^"]*"(,"[^"]*")*$')
    for name in CSV_FILES:
        real = (fixtures_dir / "oulad" / name).read_text().splitlines()[0]
        text = (small / name).read_text()
        lines = text.splitlines()
        assert lines[0] == real, name
        assert text.endswith("\n") and "\r" not in text, name
        if name in QUOTED_FILES:
            bad = [line for line in lines if not quoted_line.match(line)]
            assert not bad, f"{name}: unquoted line {bad[:1]}"
        else:
            assert '"' not in text, name
        n_fields = lines[0].count(",") + 1
        assert all(line.count(",") + 1 == n_fields for line in lines), name


def test_values_come_from_the_release_vocabularies(small, big, fixtures_dir):
    real = {name: _read(fixtures_dir / "oulad" / name) for name in
            ("studentInfo.csv", "vle.csv", "assessments.csv", "courses.csv")}
    info = _read(small / "studentInfo.csv")
    for column in ("gender", "region", "highest_education", "imd_band", "age_band", "disability", "final_result"):
        extra = set(info[column]) - set(real["studentInfo.csv"][column])
        assert not extra, f"{column}: values the release never uses: {extra}"
    assert {"10-20", ""} <= set(info["imd_band"])                    # no "%" on this one; missing = ""
    assert "55<=" in set(big.tables["studentInfo.csv"]["age_band"])
    assert info["num_of_prev_attempts"].str.fullmatch(r"\d+").all()
    assert info["studied_credits"].str.fullmatch(r"\d+").all()

    vle = _read(small / "vle.csv")
    assert set(vle["activity_type"]) == set(real["vle.csv"]["activity_type"])      # all 20 types
    assert vle["id_site"].is_unique
    weekly = vle["week_from"] != ""
    assert weekly.any() and (~weekly).mean() > 0.5 and (vle["week_from"] == vle["week_to"]).all()

    # The assessment plans and lengths are the real ones of these presentations, byte for byte.
    for name in ("assessments.csv", "courses.csv"):
        ours = _read(small / name)
        theirs = real[name].merge(ours[["code_module", "code_presentation"]].drop_duplicates())
        pd.testing.assert_frame_equal(ours.reset_index(drop=True), theirs.reset_index(drop=True))
    plan = _read(small / "assessments.csv")
    plan["weight"] = plan["weight"].astype(float)
    coursework = plan[plan["assessment_type"] != "Exam"].groupby(["code_module", "code_presentation"])["weight"]
    assert (coursework.sum() == 100).all()
    assert (plan.loc[plan["assessment_type"] == "Exam", "weight"] == 100).all()
    assert (plan["date"] == "").any()                                # a missing exam date, as in the release

    sa = _read(small / "studentAssessment.csv")
    assert set(sa["id_assessment"]) <= set(plan["id_assessment"])
    assert sa["score"].str.fullmatch(r"\d{1,3}|").all() and set(sa["is_banked"]) <= {"0", "1"}


# ---------------------------------------------------------------- the story
def test_final_result_distribution_is_plausible(big):
    shares = big.tables["studentInfo.csv"]["final_result"].value_counts(normalize=True)
    # The release: Pass 0.38, Withdrawn 0.31, Fail 0.22, Distinction 0.09.
    assert 0.28 < shares["Pass"] < 0.48
    assert 0.22 < shares["Withdrawn"] < 0.40
    assert 0.14 < shares["Fail"] < 0.30
    assert 0.05 < shares["Distinction"] < 0.15


def test_withdrawn_students_leave_and_their_activity_stops(big):
    t = big.tables
    reg = t["studentRegistration.csv"].merge(t["studentInfo.csv"][KEY + ["final_result"]], on=KEY)
    reg = reg.merge(t["courses.csv"], on=KEY[:2])
    withdrawn = reg["final_result"] == "Withdrawn"
    assert ((reg["date_unregistration"] != "") == withdrawn).all()
    assert (reg["date_registration"] < 0).mean() > 0.9

    unreg = pd.to_numeric(reg["date_unregistration"].replace("", np.nan))
    reg["end"] = unreg.fillna(reg["module_presentation_length"])   # first day with no activity
    assert (reg.loc[withdrawn, "date_unregistration"].astype(int) > reg.loc[withdrawn, "date_registration"]).all()
    assert (unreg[withdrawn] <= 0).mean() > 0.1                    # some leave before the start

    clicks = t["studentVle.csv"].merge(reg[KEY + ["end", "date_registration"]], on=KEY)
    assert len(clicks) == len(t["studentVle.csv"])
    assert clicks["date"].min() == -20
    assert (clicks["date"] < clicks["end"]).all(), "clicks on or after the unregistration day / the end"
    assert (clicks["date"] >= clicks["date_registration"]).all()

    plan = t["assessments.csv"][["id_assessment", "code_module", "code_presentation"]]
    subs = t["studentAssessment.csv"].merge(plan, on="id_assessment").merge(reg[KEY + ["end"]], on=KEY)
    assert len(subs) == len(t["studentAssessment.csv"])
    assert (subs["date_submitted"] < subs["end"]).all()
    # Withdrawn students leave early: fewer submissions and clicks than those who stay.
    per_reg = clicks.groupby(KEY).size().reindex(pd.MultiIndex.from_frame(reg[KEY]), fill_value=0).to_numpy()
    assert per_reg[withdrawn.to_numpy()].mean() < 0.6 * per_reg[~withdrawn.to_numpy()].mean()


def test_retakes_share_students_and_may_bank_passed_tmas(big):
    info = big.tables["studentInfo.csv"]
    assert not info.duplicated(KEY).any()
    twice = info[info.duplicated("id_student", keep=False)]
    assert twice["id_student"].nunique() > 50                      # splits must group by id_student
    retakes = info[info.duplicated(["code_module", "id_student"], keep="first")]
    assert len(retakes) > 20 and (retakes["num_of_prev_attempts"] >= 1).all()

    sa = big.tables["studentAssessment.csv"].merge(big.tables["assessments.csv"], on="id_assessment")
    banked = sa[sa["is_banked"] == 1]
    assert len(banked) > 0 and (banked["date_submitted"] == -1).all() and (banked["assessment_type"] == "TMA").all()
    banked_keys = set(map(tuple, banked[KEY].to_numpy()))
    retake_keys = set(map(tuple, retakes[KEY].to_numpy()))
    assert banked_keys <= retake_keys


def test_bursty_types_have_high_variance(big):
    t = big.tables
    clicks = t["studentVle.csv"].merge(t["vle.csv"][["id_site", "activity_type"]], on="id_site")
    bursty = clicks["activity_type"].isin(BURSTY_TYPES)
    cv = lambda s: s.std() / s.mean()   # noqa: E731
    assert cv(clicks.loc[bursty, "sum_click"]) > 1.5 * cv(clicks.loc[~bursty, "sum_click"])


# ---------------------------------------------------------------- ground truth
def test_ground_truth_is_consistent_and_predicts_the_outcome(small, big):
    gt = pd.read_parquet(small / "ground_truth.parquet")
    assert list(gt.columns) == KEY + PROBS + ["p_at_risk", *ORACLE_COLUMNS]
    assert all(gt[c].dtype == np.float64 for c in PROBS + ["p_at_risk", "p_fail_if_stay", "date_unregistration"])
    info = _read(small / "studentInfo.csv")
    assert list(zip(gt["code_module"], gt["code_presentation"], gt["id_student"].astype(str))) == list(
        zip(info["code_module"], info["code_presentation"], info["id_student"]))

    gt, info = big.ground_truth, big.tables["studentInfo.csv"]
    assert ((gt[PROBS] >= 0) & (gt[PROBS] <= 1)).all().all()
    np.testing.assert_allclose(gt[PROBS].sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(gt["p_at_risk"], gt["p_Fail"] + gt["p_Withdrawn"], atol=1e-12)
    at_risk = info["final_result"].isin(["Fail", "Withdrawn"])
    auc = roc_auc_score(at_risk, gt["p_at_risk"])
    assert auc > 0.75
    assert big.params["ground_truth_auc_at_risk"] == pytest.approx(auc, abs=1e-4)
    # Calibrated: the outcomes were drawn from these probabilities.
    for result in ("Pass", "Fail", "Withdrawn", "Distinction"):
        assert gt[f"p_{result}"].mean() == pytest.approx((info["final_result"] == result).mean(), abs=0.025)


def test_oracle_conditions_on_the_withdrawal_the_logs_show(big):
    """At the end of the presentation the logs show who withdrew: the oracle knows it too,
    and beats the latent-only p_at_risk that a model reading the logs can beat."""
    gt, info = big.ground_truth, big.tables["studentInfo.csv"]
    at_risk = info["final_result"].isin(["Fail", "Withdrawn"]).to_numpy()
    end = oracle_at_risk(gt, None)
    withdrawn = (info["final_result"] == "Withdrawn").to_numpy()
    assert (end[withdrawn] == 1.0).all() and (end[~withdrawn] < 1.0).all()
    assert gt["date_unregistration"].notna().to_numpy().tolist() == withdrawn.tolist()
    assert roc_auc_score(at_risk, end) > roc_auc_score(at_risk, gt["p_at_risk"]) + 0.03
    assert big.params["oracle_auc_at_risk_end"] == pytest.approx(roc_auc_score(at_risk, end), abs=1e-4)


@pytest.mark.parametrize("cutoff", [60, 150])
def test_oracle_at_a_cutoff_is_calibrated_on_that_cutoffs_population(big, cutoff):
    gt, info = big.ground_truth, big.tables["studentInfo.csv"]
    p = oracle_at_risk(gt, cutoff)
    gone = (gt["date_unregistration"] < cutoff).to_numpy()
    assert p.isna().to_numpy().tolist() == gone.tolist()        # not in that cutoff's population
    kept = ~gone
    y = info["final_result"].isin(["Fail", "Withdrawn"]).to_numpy()[kept]
    p = p.to_numpy()[kept]
    assert ((p >= 0) & (p <= 1)).all()
    # the outcomes were drawn from these probabilities: calibrated overall and by quartile
    assert p.mean() == pytest.approx(y.mean(), abs=0.025)
    quartile = np.digitize(p, np.quantile(p, [0.25, 0.5, 0.75]))
    for q in range(4):
        assert p[quartile == q].mean() == pytest.approx(y[quartile == q].mean(), abs=0.06)


# ---------------------------------------------------------------- strengths
def _click_trend_vs_risk(sample) -> float:
    """Correlation of an observed click trend (log clicks days 70-139 minus days 0-69) with at-risk,
    among registrations still enrolled on day 140. Engagement E scales both windows alike and
    cancels; what remains is the click-only trend S."""
    t = sample.tables
    bursty = set(t["vle.csv"].loc[t["vle.csv"]["activity_type"].isin(BURSTY_TYPES), "id_site"])
    clicks = t["studentVle.csv"][~t["studentVle.csv"]["id_site"].isin(bursty)]
    early = clicks[clicks["date"].between(0, 69)].groupby(KEY)["sum_click"].sum().rename("early")
    late = clicks[clicks["date"].between(70, 139)].groupby(KEY)["sum_click"].sum().rename("late")
    reg = t["studentRegistration.csv"].merge(t["studentInfo.csv"][KEY + ["final_result"]], on=KEY)
    unreg = pd.to_numeric(reg["date_unregistration"].replace("", np.nan))
    reg = reg[(unreg.isna() | (unreg >= 140)).to_numpy()].set_index(KEY).join(early).join(late).fillna(0)
    trend = np.log1p(reg["late"].astype(float)) - np.log1p(reg["early"].astype(float))
    return float(np.corrcoef(trend, reg["final_result"].isin(["Fail", "Withdrawn"]))[0, 1])


def _latent_effects(sample) -> dict[str, float]:
    """Least-squares coefficients of logit(p_at_risk) on the standardised latents."""
    names = ["ability", "engagement", "click_habit", "click_trend", "demographic_risk", "burstiness"]
    x = sample.latents[names].to_numpy()
    x = (x - x.mean(0)) / x.std(0)
    p = sample.ground_truth["p_at_risk"].clip(1e-9, 1 - 1e-9).to_numpy()
    coef, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(x)), x]), np.log(p / (1 - p)), rcond=None)
    return dict(zip(names, coef[1:]))


def test_clicks_strength_sets_how_much_the_clicks_alone_tell(big):
    none = simulate_oulad(n_registrations=3000, seed=0, strengths={"clicks": 0.0})
    strong = simulate_oulad(n_registrations=3000, seed=0, strengths={"clicks": 2.0})
    r_none, r_default, r_strong = (_click_trend_vs_risk(s) for s in (none, big, strong))
    assert abs(r_none) < 0.06                      # a declining click trend says nothing ...
    assert r_strong < r_default < -0.06            # ... unless clicks carry signal: more with strength 2
    assert r_strong < -0.12
    # The same in the generator's latents: the outcome ignores click habit and trend at strength 0.
    eff_none, eff_strong = _latent_effects(none), _latent_effects(strong)
    for latent in ("click_habit", "click_trend"):
        assert abs(eff_none[latent]) < 0.06 and eff_strong[latent] < -1.0
    assert abs(eff_none["engagement"]) > 0.5       # the shared engagement still moves it


def test_zero_strengths_leave_only_the_shared_engagement(big):
    flat = simulate_oulad(n_registrations=3000, seed=0,
                          strengths={"demographics": 0, "clicks": 0, "assessments": 0})
    eff_flat, eff_default = _latent_effects(flat), _latent_effects(big)
    for latent in ("ability", "click_habit", "click_trend", "demographic_risk"):
        assert abs(eff_default[latent]) > 0.3, latent
        assert abs(eff_flat[latent]) < 0.05, latent
    assert abs(eff_default["burstiness"]) < 0.05 and abs(eff_flat["burstiness"]) < 0.05   # never in the outcome
    assert abs(eff_flat["engagement"]) > 0.5
    assert flat.params["ground_truth_auc_at_risk"] < big.params["ground_truth_auc_at_risk"]


# ---------------------------------------------------------------- the seam and bad input
def test_write_sample_dispatches_to_this_generator(tmp_path):
    params = write_sample("oulad", tmp_path / "s", size=40, seed=1, strengths={"clicks": 0.5})
    assert params["n_registrations"] == 40 and params["strengths"]["clicks"] == 0.5
    assert len(_read(tmp_path / "s" / "studentInfo.csv")) == 40


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strengths": {"video": 1.0}}, "unknown modality 'video'"),
        ({"strengths": {"clicks": -1.0}}, "clicks=-1.0 must be a finite number >= 0"),
        ({"strengths": {"assessments": float("nan")}}, "must be a finite number"),
        ({"n_registrations": 3}, "too small"),
    ],
)
def test_bad_arguments_are_one_line_bad_input(tmp_path, kwargs, message):
    with pytest.raises(BadInput, match=re.escape(message)):
        write_oulad_sample(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_the_manifest_finds_the_ground_truth_from_any_working_directory(tmp_path, monkeypatch):
    from dsrsd_cli.data.prepare import prepare_dataset

    monkeypatch.chdir(tmp_path)
    prepare_dataset(dataset="oulad", raw=None, out=Path("data/oulad"), sample_size=60, seed=0)   # a relative --out
    sample = json.loads((tmp_path / "data/oulad/manifest.json").read_text())["sample"]
    monkeypatch.chdir("/")
    assert Path(sample["ground_truth"]).is_absolute() and Path(sample["ground_truth"]).is_file()
    assert Path(sample["raw"]) == tmp_path / "data" / "oulad_raw_sample"
