"""Issue 26 items 6 and 8: BCa intervals (against scipy.stats.bootstrap run on the raw data with scikit-learn's
AUC), their coverage, p = 0 as "< 2/B", the small-test-set warning; the TRIPOD+AI numbers of the report
(reverse Kaplan–Meier follow-up against scikit-survival, calibration slope/intercept against scikit-learn and a
score equation, net benefit and PPV/NPV against hand counts, per-class AUC against scikit-learn, the participant
flow) and the report sections that show them."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq
from scipy.special import expit, logit
from scipy.stats import bootstrap, norm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sksurv.nonparametric import kaplan_meier_estimator

# tests/test_evaluation.py by its module name: the `tests` package that torchmil and torchstain install into
# site-packages shadows `tests.test_evaluation`
from test_evaluation import CLASSES, SETTINGS, classification_frame, survival_frame  # isort: skip

from mambamil import paths
from mambamil.evaluation import bootstrap as bs
from mambamil.evaluation import clinical, cohort_table
from mambamil.evaluation.compare import compare_models
from mambamil.evaluation.evaluate import evaluate_predictions
from mambamil.evaluation.summary import summary_table
from mambamil.report import build_report


# -- intervals -------------------------------------------------------------------------------------------------
def _small_cohort(seed: int, n: int = 30, prevalence: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    y[:3] = True  # at least 3 positives: every jackknife sample has both classes
    return rng.normal(1.0 * y, 1.0), y


def test_bca_interval_equals_scipy_bca_on_the_raw_data() -> None:
    score, y = _small_cohort(0, prevalence=0.0)  # 3 positives of 30
    n = len(y)
    W = bs.bootstrap_weights(np.arange(n), 1000, seed=3)
    reps = bs.auc(score, y, W)
    assert np.isnan(reps).sum() > 0  # single-class resamples: left out, as the evaluation does
    low, high, used = bs.bca_interval(reps, lambda w: bs.auc(score, y, w), np.arange(n), 0.9)

    # scipy, independently: BCa on (score, y) pairs with scikit-learn's AUC as the statistic, given the same
    # finite bootstrap distribution (its bias correction and jackknife acceleration are scipy's own).
    def sk_auc(s: np.ndarray, t: np.ndarray, axis: int = -1) -> float:
        return roc_auc_score(t, s)

    finite = reps[np.isfinite(reps)]
    ref = bootstrap(
        (score, y),
        sk_auc,
        paired=True,
        vectorized=False,
        n_resamples=0,
        bootstrap_result=type("R", (), {"bootstrap_distribution": finite})(),
        method="BCa",
        confidence_level=0.9,
    ).confidence_interval
    assert used == finite.size
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert (low, high) != pytest.approx(bs.percentile_interval(reps, 0.9)[:2], abs=1e-6)  # BCa moved it
    # two identical rows per patient: resampled and left out by patient, the same interval
    groups = np.repeat(np.arange(n), 2)
    W2 = bs.bootstrap_weights(groups, 1000, seed=3)
    reps2 = bs.auc(score[groups], y[groups], W2)
    assert reps2 == pytest.approx(reps, nan_ok=True)
    twice = bs.bca_interval(reps2, lambda w: bs.auc(score[groups], y[groups], w), groups, 0.9)
    assert twice == pytest.approx((low, high, used), abs=1e-12)


def test_bca_falls_back_to_percentile_where_undefined_and_says_so() -> None:
    score, y = _small_cohort(1)
    y[:] = False
    y[0] = True  # one positive: leaving it out makes the AUC undefined, so the acceleration is
    W = bs.bootstrap_weights(np.arange(len(y)), 1000, seed=0)
    reps = bs.auc(score, y, W)
    low, high, used, method = bs.interval("bca", reps, lambda w: bs.auc(score, y, w), np.arange(len(y)))
    assert method == "percentile (BCa undefined)"
    assert (low, high, used) == bs.percentile_interval(reps)
    with pytest.raises(ValueError, match="unknown interval method"):
        bs.interval("basic", reps, lambda w: bs.auc(score, y, w), np.arange(len(y)))


def test_bca_covers_better_than_percentile_on_small_cohorts() -> None:
    # benchmarks/interval_coverage.py's n = 40, 15 % row on 300 seeded cohorts (deterministic): percentile 0.907,
    # BCa 0.937 (results-issue-26-report.md).
    d, n, prevalence = 1.0, 40, 0.15
    true_auc = norm.cdf(d / math.sqrt(2))
    hits = {"percentile": 0, "bca": 0}
    for r in range(300):
        rng = np.random.default_rng(10_000 + r)
        while True:
            y = rng.random(n) < prevalence
            if 0 < y.sum() < n:
                break
        score = rng.normal(d * y, 1.0)
        W = bs.bootstrap_weights(np.arange(n), 1000, seed=r)
        reps = bs.auc(score, y, W)
        for method in hits:
            low, high, _, _ = bs.interval(method, reps, lambda w, s=score, t=y: bs.auc(s, t, w), np.arange(n))
            hits[method] += bool(low <= true_auc <= high)
    assert hits["bca"] / 300 >= 0.92 and hits["bca"] - hits["percentile"] >= 5, hits


def test_a_zero_bootstrap_p_value_is_printed_below_two_over_b() -> None:
    good = classification_frame(n=80)
    useless = good.assign(prob_pos=0.5, prob_neg=0.5)
    row = compare_models({"a": good, "b": useless}, "classification", CLASSES, "t", SETTINGS).iloc[0]
    assert row["p_value"] == 0 and row["resamples"] == 1000
    assert row["p_value_text"] == "< 0.002 (2/B, B = 1000)"
    assert bs.format_p_value(0.0123, 1000) == "0.012" and bs.format_p_value(float("nan"), 0) == "NaN"


def test_small_test_sets_are_warned_about() -> None:
    preds = pd.DataFrame(
        {
            "fold": [0] * 5 + [1] * 6,
            "case_id": [f"P{i}" for i in range(11)],
            "target": [0, 0, 1, 1, 1] + [0] * 3 + [1] * 3,
        }
    )
    warned = cohort_table.small_sample_warnings(preds, "classification", CLASSES, minimum=3)
    assert warned == ["test fold 0: 2 patients of class neg, fewer than 3; intervals may under-cover"]
    surv = pd.DataFrame({"fold": [0, 0, 1, 1], "case_id": list("abcd"), "event": [1, 0, 1, 1], "time": [1, 2, 3, 4]})
    assert cohort_table.small_sample_warnings(surv, "survival", [], minimum=2) == [
        "test fold 0: 1 events, fewer than 2; intervals may under-cover"
    ]


def test_evaluation_counts_usable_resamples_and_writes_the_warnings(tmp_path) -> None:
    preds = classification_frame(n=30, seed=4)
    result = evaluate_predictions(preds, "classification", CLASSES, tmp_path, "t", {**SETTINGS, "min_per_class": 12})
    assert result["metrics"]["auc"]["interval"] == "bca" and result["metrics"]["auc"]["resamples"] == 1000
    assert "bias-corrected and accelerated" in result["interval_method"]
    folds = [w.split(":")[0] for w in result["warnings"] if w.startswith("test fold")]
    assert folds == ["test fold 0", "test fold 1", "test fold 2"]  # 10 patients per fold: each class < 12
    assert all(w.endswith("fewer than 12; intervals may under-cover") for w in result["warnings"])
    row = summary_table({("s", "m"): paths.evaluation_outputs(tmp_path)["metrics"]}).iloc[0]
    assert row["auc_resamples"] == 1000 and row["warnings"] == "; ".join(result["warnings"])


# -- cohort numbers ------------------------------------------------------------------------------------------
def test_median_follow_up_is_the_reverse_kaplan_meier_median() -> None:
    frame = survival_frame(n=80, seed=3)
    time, event = frame["time"].to_numpy(), frame["event"].to_numpy().astype(bool)
    # scikit-survival's Kaplan–Meier with censoring as the event; the median = first time it is ≤ 0.5
    t, s = kaplan_meier_estimator(~event, time)
    expected = t[np.argmax(s <= 0.5)]
    assert cohort_table.median_follow_up(time, event) == pytest.approx(expected)
    assert math.isnan(cohort_table.median_follow_up(time, np.ones_like(event)))  # nobody censored


def test_participant_flow_counts_slides_and_patients_by_cause() -> None:
    qc = pd.DataFrame(
        {
            "slide_id": ["S1", "S2", "S3", "S4", "S5", "S6"],
            "case_id": ["P1", "P1", "P2", "P3", "P4", "P5"],
            "status": ["ok", "excluded", "excluded", "excluded", "ok", "ok"],
            "stage": ["", "tile", "tile", "features", "", ""],
            "cause": ["", "no tissue found", "no tissue found", "unreadable", "", ""],
        }
    )
    flow = cohort_table.participant_flow(qc, {"subtype": 2})
    rows = {r.step: (r.slides, r.patients) for r in flow.itertuples()}
    assert rows["slides in"] == (6, 5)
    assert rows["excluded at tile: no tissue found"] == (-2, None)
    assert rows["excluded at features: unreadable"] == (-1, None)
    assert rows["usable after QC"] == (3, 3)
    assert rows["patients without a usable slide"] == (None, -2)
    assert rows["analysed, task subtype (labelled, predicted)"] == (None, 2)
    preds = pd.DataFrame({"case_id": ["P1", "P4"], "target": [0, 1]})
    stats = cohort_table.cohort_characteristics(preds, "classification", CLASSES, qc)
    assert stats == {"patients": 2, "slides": 2, "class neg": 1, "class pos": 1}


# -- clinical numbers ------------------------------------------------------------------------------------------
def test_calibration_slope_and_intercept_match_independent_fits() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0.05, 0.95, 400)
    y = rng.random(400) < expit(0.4 + 0.6 * logit(p))  # too extreme (slope 0.6), risks under-estimated
    fit = clinical.calibration_slope_intercept(y, p)
    lp = logit(p)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(lp[:, None], y)
    assert fit["slope"] == pytest.approx(ref.coef_[0, 0], rel=1e-5)
    # calibration-in-the-large: the a with Σ (y − expit(a + lp)) = 0 (maximum likelihood, slope fixed at 1)
    assert fit["intercept"] == pytest.approx(brentq(lambda a: np.sum(y - expit(a + lp)), -5, 5), abs=1e-6)
    assert fit["slope_low"] < fit["slope"] < fit["slope_high"] < 1 and fit["intercept_low"] > 0
    assert clinical.calibration_slope_intercept(np.zeros(5), p[:5])["reason"] == "only one class present"


def test_net_benefit_equals_the_hand_counted_decision_curve() -> None:
    y = np.array([1, 1, 0, 0, 1], dtype=bool)
    p = np.array([0.9, 0.4, 0.6, 0.2, 0.7])
    curve = clinical.net_benefit(y, p, np.array([0.25, 0.5]))
    # pt = 0.25: treated 0, 1, 2, 4 → TP 3, FP 1 → 3/5 − 1/5 · (0.25/0.75); treat all: 3/5 − 2/5 · 1/3
    # pt = 0.5: treated 0, 2, 4 → TP 2, FP 1 → 2/5 − 1/5 · 1; treat all: 3/5 − 2/5 · 1
    assert curve["model"].tolist() == pytest.approx([0.6 - 0.2 / 3, 0.2])
    assert curve["treat_all"].tolist() == pytest.approx([0.6 - 0.4 / 3, 0.2])
    assert curve["treat_none"].tolist() == [0, 0]
    assert clinical.decision_curve_png(curve, "t").startswith(b"\x89PNG")


def test_operating_points_give_ppv_and_npv_at_each_fold_threshold() -> None:
    preds = pd.DataFrame(
        {
            "fold": [0, 0, 0, 0, 1, 1, 1, 1],
            "case_id": list("abcdefgh"),
            "target": [1, 1, 0, 0, 1, 0, 0, 0],
            "prob_pos": [0.9, 0.3, 0.6, 0.1, 0.6, 0.55, 0.2, 0.1],
            "threshold": [0.5, 0.5, 0.5, 0.5, 0.52, 0.52, 0.52, 0.52],
        }
    )
    preds["prob_neg"] = 1 - preds["prob_pos"]
    table = clinical.operating_points(preds, CLASSES, SETTINGS).set_index("test fold")
    # fold 0 at 0.5: called a, c → TP 1 (a), FP 1 (c), FN 1 (b), TN 1 (d)
    # fold 1 at 0.52: called e, f → TP 1 (e), FP 1 (f), FN 0, TN 2; pooled TP 2, FP 2, FN 1, TN 3
    assert table.loc[0, ["TP", "FP", "TN", "FN"]].tolist() == [1, 1, 1, 1]
    assert table.loc["all", ["TP", "FP", "TN", "FN"]].tolist() == [2, 2, 3, 1]
    assert table.loc["all", "PPV"] == pytest.approx(2 / 4) and table.loc["all", "NPV"] == pytest.approx(3 / 4)
    assert table.loc["all", "sensitivity"] == pytest.approx(2 / 3)
    assert table.loc["all", "specificity"] == pytest.approx(3 / 5)
    assert table.loc[1, "threshold"] == "0.520" and table.loc["all", "threshold"] == "2 fold thresholds"
    assert clinical.operating_points(preds.drop(columns="threshold"), CLASSES, SETTINGS).empty


def test_per_class_auc_is_one_vs_rest() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60) + 0.5 * np.eye(3)[y]
    probs /= probs.sum(1, keepdims=True)
    classes = ["a", "b", "c"]
    preds = pd.DataFrame({"case_id": [f"P{i}" for i in range(60)], "target": y})
    for k, c in enumerate(classes):
        preds[f"prob_{c}"] = probs[:, k]
    table = clinical.per_class_auc(preds, classes, SETTINGS)
    for k in range(3):
        assert table.loc[k, "auc"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
        assert table.loc[k, "ci_low"] < table.loc[k, "auc"] < table.loc[k, "ci_high"]
        assert table.loc[k, "patients"] == (y == k).sum() and table.loc[k, "resamples"] == 1000


# -- the report ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("results")
    binary = classification_frame(seed=1).assign(threshold=0.5)
    evaluate_predictions(binary, "classification", CLASSES, paths.evaluation_dir(root, "subtype", "m"), "m")
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60) + np.eye(3)[y]
    probs /= probs.sum(1, keepdims=True)
    three = pd.DataFrame({"fold": np.arange(60) % 3, "sample_id": binary["case_id"], "case_id": binary["case_id"],
                          "target": y, **{f"prob_{c}": probs[:, k] for k, c in enumerate("xyz")}})  # fmt: skip
    evaluate_predictions(three, "classification", ["x", "y", "z"], paths.evaluation_dir(root, "grade", "m"), "m")
    evaluate_predictions(survival_frame(), "survival", [], paths.evaluation_dir(root, "os", "m"), "m")
    ids = binary["case_id"].tolist()
    qc = pd.DataFrame({"slide_id": [f"S{i}" for i in range(62)], "case_id": [*ids, "P900", "P901"],
                       "status": ["ok"] * 60 + ["excluded"] * 2, "stage": [""] * 60 + ["tile", "features"],
                       "cause": [""] * 60 + ["no tissue found", "unreadable"]})  # fmt: skip
    paths.qc_dir(root).mkdir()
    qc.to_csv(paths.qc_tables(paths.qc_dir(root))["slides"], index=False)
    external = paths.external_dir(root) / "hospital_b" / "subtype" / "m"
    evaluate_predictions(classification_frame(seed=3).drop(columns="fold"), "classification", CLASSES, external, "x")
    return root


def _text(report: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", "[img]", report)))


def test_report_shows_the_tripod_sections(results) -> None:
    report = build_report(results, {"tasks": {"os": {"type": "survival", "time_unit": "days"}}})
    text = _text(report)
    for expected in (
        "Participant flow, development cohort",
        "slides in 62 62",
        "excluded at tile: no tissue found -1",
        "patients without a usable slide — -2",
        "analysed, task subtype (labelled, predicted) — 60",
        "Cohort characteristics, task subtype",
        "characteristic development external hospital_b",
        "slides 60 —",
        "Cohort characteristics, task os",
        "median follow-up (reverse KM, days)",
        "Test folds, task os",
        "test fold patients slides class neg class pos 0 20 20",
        "Survival times in days.",
        "m: τ = ",  # what the survival numbers hang on: τ, td-AUC times, IBS range, risk cut-off
        "time-dependent AUC at",
        "risk groups cut at",
        "Confusion matrix",
        "One-vs-rest AUC per class",
        "Calibration slope and intercept",
        "Operating thresholds on P(pos)",
        "PPV",
        "decision curve (net benefit)",
        "B = 1000",
        "bias-corrected and accelerated",
    ):
        assert expected in text, expected
    assert "Warning (m): test fold" in text  # 20 patients per fold, some class below 10
    assert report.count("decision curve (net benefit)") == 2 * 2  # alt + caption, binary dev + external
    assert "median follow-up (reverse KM, time units)" in _text(build_report(results))  # the schema default
