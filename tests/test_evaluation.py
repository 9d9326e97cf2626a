"""Study statistics: the vectorised bootstrap estimators against scikit-learn / lifelines / scikit-survival, the
coverage of the intervals on simulated cohorts, determinism, paired comparison, NaN-with-reason inputs, and the
files the evaluation writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

from mambamil.errors import MambamilError
from mambamil.evaluation import bootstrap as bs
from mambamil.evaluation.classification import add_operating_thresholds, brier_rows, operating_threshold
from mambamil.evaluation.compare import compare_models
from mambamil.evaluation.evaluate import evaluate_folds, evaluate_predictions, metrics_with_intervals
from mambamil.evaluation.summary import summary_table
from mambamil.paths import evaluation_outputs, fold_outputs

SETTINGS = {"n_resamples": 1000, "seed": 0}


def ones(n: int) -> np.ndarray:
    return np.ones((1, n))


@pytest.fixture(scope="module")
def cls_data():
    rng = np.random.default_rng(1)
    n = 90
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3)) + np.eye(3)[y]
    probs = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2)  # rounding makes ties
    probs /= probs.sum(1, keepdims=True)
    counts = rng.integers(0, 4, n)  # a bootstrap-like integer weighting: the library sees repeated rows
    return y, probs, counts


def test_classification_estimators_match_scikit_learn(cls_data) -> None:
    y, probs, counts = cls_data
    yb, pb = (y == 2).astype(int), probs[:, 2]
    rep = np.repeat(np.arange(len(y)), counts)
    for W, idx in ((ones(len(y)), np.arange(len(y))), (counts[None, :].astype(float), rep)):
        assert bs.auc(pb, yb == 1, W)[0] == pytest.approx(roc_auc_score(yb[idx], pb[idx]))
        assert bs.macro_ovr_auc(y, probs, W)[0] == pytest.approx(roc_auc_score(y[idx], probs[idx], multi_class="ovr"))
        assert bs.average_precision(pb, yb == 1, W)[0] == pytest.approx(average_precision_score(yb[idx], pb[idx]))
        onehot = label_binarize(y[idx], classes=[0, 1, 2])
        assert bs.macro_average_precision(y, probs, W)[0] == pytest.approx(
            average_precision_score(onehot, probs[idx], average="macro")
        )
        pred = probs.argmax(1)
        assert bs.balanced_accuracy(y, pred, 3, W)[0] == pytest.approx(balanced_accuracy_score(y[idx], pred[idx]))
        assert bs.weighted_f1(y, pred, 3, W)[0] == pytest.approx(f1_score(y[idx], pred[idx], average="weighted"))
        assert bs.weighted_mean(brier_rows(y, probs), W)[0] == pytest.approx(
            brier_score_loss(y[idx], probs[idx], labels=[0, 1, 2])
        )
        two = np.c_[1 - pb, pb]
        assert bs.weighted_mean(brier_rows(yb, two), W)[0] == pytest.approx(brier_score_loss(yb[idx], pb[idx]))
    # A resample without one of the classes has no AUC (NaN, left out of the interval), not an error.
    assert np.isnan(bs.auc(pb, yb == 1, (yb == 1)[None, :].astype(float))[0])


def test_expected_calibration_error_matches_calibration_curve_bins(cls_data) -> None:
    _, probs, _ = cls_data
    rng = np.random.default_rng(2)
    p = probs[:, 0]
    outcome = (rng.random(len(p)) < p).astype(float)
    n_bins = 5
    observed, predicted = calibration_curve(outcome, p, n_bins=n_bins, strategy="uniform")
    # calibration_curve drops empty bins; weight each remaining bin by its share of patients.
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    shares = np.bincount(bins, minlength=n_bins)[np.bincount(bins, minlength=n_bins) > 0] / len(p)
    expected = float(np.sum(shares * np.abs(observed - predicted)))
    assert bs.expected_calibration_error(p, outcome, n_bins, ones(len(p)))[0] == pytest.approx(expected)


@pytest.fixture(scope="module")
def surv_data():
    rng = np.random.default_rng(3)
    n = 80
    x = rng.normal(0, 1, n)
    t = np.ceil(rng.exponential(10 * np.exp(-x)))  # integer times: ties in time
    c = np.ceil(rng.exponential(20, n))
    time, event = np.minimum(t, c), t <= c
    risk = np.round(x + rng.normal(0, 0.5, n), 1)  # ties in risk
    return time, event, risk, rng.integers(0, 4, n)


def test_concordance_matches_lifelines_and_scikit_survival(surv_data) -> None:
    time, event, risk, counts = surv_data
    expected = concordance_index(time, -risk, event)
    assert expected == pytest.approx(concordance_index_censored(event, time, risk)[0])
    assert bs.concordance(time, event, risk, ones(len(time)))[0] == pytest.approx(expected)
    assert bs.concordance(time, event, risk, ones(len(time)), block=7)[0] == pytest.approx(expected)
    rep = np.repeat(np.arange(len(time)), counts)
    assert bs.concordance(time, event, risk, counts[None, :].astype(float))[0] == pytest.approx(
        concordance_index(time[rep], -risk[rep], event[rep])
    )


def test_ipcw_estimators_match_scikit_survival(surv_data) -> None:
    time, event, risk, _ = surv_data
    y = Surv.from_arrays(event=event, time=time)
    cens = CensoringDistributionEstimator().fit(y)
    ipcw = cens.predict_ipcw(y)
    W = ones(len(time))
    uno = bs.concordance(time, event, risk, W, row_weight=ipcw**2)[0]
    assert uno == pytest.approx(concordance_index_ipcw(y, y, risk)[0])
    times = np.quantile(time[event], [0.25, 0.5, 0.75])
    aucs, _ = cumulative_dynamic_auc(y, y, risk, times)
    for t, expected in zip(times, aucs, strict=True):
        case = (time <= t) & event
        assert bs.weighted_mann_whitney(risk, W * (case * ipcw), W * (time > t))[0] == pytest.approx(expected)
    grid = np.linspace(*np.quantile(time, [0.1, 0.9]), 30)
    surv = np.exp(-grid[None, :] / (10 * np.exp(-risk[:, None])))
    brier = bs.survival_brier(time, event, surv, grid, cens.predict_proba(time), cens.predict_proba(grid), W)
    assert bs.integrated(brier, grid)[0] == pytest.approx(integrated_brier_score(y, y, surv, grid))


def test_bootstrap_weights_resample_patients_with_a_seed() -> None:
    groups = np.array(["a", "a", "b", "c", "c", "c", "d"])
    W = bs.bootstrap_weights(groups, 500, seed=4)
    assert W.shape == (500, 7)
    assert (W[:, 0] == W[:, 1]).all() and (W[:, 3] == W[:, 5]).all()  # a patient's rows go together
    patients = W[:, [0, 2, 3, 6]]
    assert (patients.sum(axis=1) == 4).all()  # as many patients drawn as there are
    assert np.array_equal(W, bs.bootstrap_weights(groups, 500, seed=4))
    assert not np.array_equal(W, bs.bootstrap_weights(groups, 500, seed=5))


# -- coverage on simulated cohorts ------------------------------------------------------------------------------
COHORTS = 300  # 95 % coverage: SD 1.3 %; 80 % would be 6 SD below the lower bound of the check


def _coverage(estimate_interval, true_value: float) -> float:
    hits = [low <= true_value <= high for low, high in (estimate_interval(r) for r in range(COHORTS))]
    return float(np.mean(hits))


def test_auc_interval_covers_the_true_auc_in_95_percent_of_cohorts() -> None:
    d = 1.0
    true_auc = norm.cdf(d / math.sqrt(2))  # binormal: positives N(d, 1), negatives N(0, 1)

    def interval(r: int) -> tuple[float, float]:
        rng = np.random.default_rng(100 + r)
        y = rng.random(60) < 0.4
        score = rng.normal(d * y, 1)
        W = bs.bootstrap_weights(np.arange(60), 1000, seed=r)
        return bs.percentile_interval(bs.auc(score, y, W))[:2]

    coverage = _coverage(interval, true_auc)
    assert 0.9 <= coverage <= 0.99, coverage


def test_c_index_interval_covers_the_true_c_index_in_95_percent_of_cohorts() -> None:
    def cohort(rng: np.random.Generator, n: int):
        x = rng.normal(0, 1, n)
        t = rng.exponential(np.exp(-x))
        c = rng.exponential(2.0, n)
        return np.minimum(t, c), t <= c, x

    # The population value of Harrell's C under this censoring: P(concordant | comparable) over many pairs.
    rng = np.random.default_rng(0)
    (ti, ei, xi), (tj, ej, xj) = cohort(rng, 2_000_000), cohort(rng, 2_000_000)
    first_i = ti < tj
    comparable = np.where(first_i, ei, ej)
    concordant = np.where(first_i, xi > xj, xj > xi)
    true_c = concordant[comparable].mean()

    def interval(r: int) -> tuple[float, float]:
        time, event, risk = cohort(np.random.default_rng(1000 + r), 60)
        W = bs.bootstrap_weights(np.arange(60), 1000, seed=r)
        return bs.percentile_interval(bs.concordance(time, event, risk, W))[:2]

    coverage = _coverage(interval, true_c)
    assert 0.9 <= coverage <= 0.99, coverage


# -- evaluate_predictions: files, determinism, operating point, comparison, bad input ------------------------------
def classification_frame(n: int = 60, seed: int = 0, folds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-rng.normal(1.5 * (y - 0.5), 1)))
    ids = [f"P{i:03d}" for i in range(n)]
    return pd.DataFrame(
        {"fold": np.arange(n) % folds, "sample_id": ids, "case_id": ids, "target": y, "prob_neg": 1 - p, "prob_pos": p}
    )


def survival_frame(n: int = 60, seed: int = 0, folds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    t, c = rng.exponential(10 * np.exp(-x)), rng.exponential(20, n)
    time = np.minimum(t, c)
    event = (t <= c).astype(int)
    ids = [f"P{i:03d}" for i in range(n)]
    frame = pd.DataFrame({"fold": np.arange(n) % folds, "sample_id": ids, "case_id": ids, "risk": x, "time": time,
                          "event": event})  # fmt: skip
    edges = np.quantile(time[event == 1], [0, 0.25, 0.5, 0.75, 1.0])
    for k in range(1, 5):
        frame[f"surv_{k}"] = np.exp(-edges[k] / (10 * np.exp(-x)))
        frame[f"surv_time_{k}"] = edges[k]
    return frame


CLASSES = ["neg", "pos"]


def test_evaluation_writes_intervals_and_plots_and_is_deterministic(tmp_path) -> None:
    preds = classification_frame().assign(threshold=0.5)
    a = evaluate_predictions(preds, "classification", CLASSES, tmp_path / "a", "t", SETTINGS)
    b = evaluate_predictions(preds, "classification", CLASSES, tmp_path / "b", "t", SETTINGS)
    files = evaluation_outputs(tmp_path / "a")
    for key in ("metrics", "predictions", "curves", "calibration"):
        assert files[key].exists(), key
    written = json.loads(files["metrics"].read_text())
    assert written["metrics"] == json.loads(evaluation_outputs(tmp_path / "b")["metrics"].read_text())["metrics"]
    assert "1000 resamples" in written["interval_method"] and "seed 0" in written["interval_method"]
    for name, m in a["metrics"].items():
        assert m["reason"] is None, (name, m)
        assert m["ci_low"] <= m["estimate"] <= m["ci_high"], (name, m)
        assert m["resamples"] == 1000
        assert written["summary"][name]["mean"] == pytest.approx(np.mean(written["summary"][name]["folds"]))
    assert a["metrics"]["auc"]["estimate"] == pytest.approx(roc_auc_score(preds["target"], preds["prob_pos"]))
    assert b["metrics"] == a["metrics"]  # same seed, same numbers


def test_survival_evaluation_has_every_metric(tmp_path) -> None:
    preds = survival_frame()
    result = evaluate_predictions(preds, "survival", [], tmp_path, "s", {**SETTINGS, "survival_times": [2.0, 5.0]})
    m = result["metrics"]
    assert set(m) == {"c_index", "uno_c_index", "td_auc_2", "td_auc_5", "ibs", "ibs_km", "ipa", "logrank_p"}
    for name in ("c_index", "uno_c_index", "td_auc_2", "td_auc_5", "ibs", "ibs_km", "ipa"):
        assert m[name]["ci_low"] < m[name]["estimate"] < m[name]["ci_high"], name
    assert m["ibs"]["estimate"] < m["ibs_km"]["estimate"]  # the risk is informative: better than no skill
    assert result["ibs_range"] == [2.0, 5.0] and result["tau"] < preds["time"].max()
    assert m["logrank_p"]["reason"] is None and np.isnan(m["logrank_p"]["ci_low"])  # a p-value has no interval
    assert evaluation_outputs(tmp_path)["time_auc"].exists()
    default = evaluate_predictions(preds, "survival", [], tmp_path / "q", "s", SETTINGS)
    observed = preds.loc[preds["event"] == 1, "time"]
    assert default["survival_times"] == pytest.approx(np.quantile(observed, [0.25, 0.5, 0.75]), rel=1e-5)


def test_operating_point_is_chosen_on_validation_predictions(tmp_path) -> None:
    val = pd.DataFrame({"target": [0, 0, 0, 1, 1, 1, 1], "prob_pos": [0.1, 0.2, 0.7, 0.3, 0.8, 0.85, 0.9]})
    assert operating_threshold(val, CLASSES) == (0.8, None)  # Youden's J is highest at 0.8 (3/4 − 0)
    thr, reason = operating_threshold(val.assign(target=1), CLASSES)
    assert math.isnan(thr) and "one class" in reason
    preds = classification_frame(n=40, folds=2)
    files = []
    for fold in (0, 1):
        out = fold_outputs(tmp_path / f"fold_{fold}")
        out["predictions"].parent.mkdir(parents=True)
        preds[preds["fold"] == fold].to_csv(out["predictions"], index=False)
        files.append(out["predictions"])
    val.assign(fold=0).to_csv(fold_outputs(tmp_path / "fold_0")["val_predictions"], index=False)
    missing = add_operating_thresholds(preds, {0: fold_outputs(tmp_path / "fold_0")["val_predictions"]}, CLASSES)
    m = metrics_with_intervals(missing, "classification", CLASSES, SETTINGS)["metrics"]
    assert "no validation predictions for fold 1" in m["sensitivity"]["reason"]
    assert math.isnan(m["sensitivity"]["estimate"])
    val.assign(fold=1).to_csv(fold_outputs(tmp_path / "fold_1")["val_predictions"], index=False)
    result = evaluate_folds(files, "classification", CLASSES, tmp_path / "ev", "t", SETTINGS)
    positive, m = preds["target"] == 1, result["metrics"]
    assert m["sensitivity"]["estimate"] == pytest.approx((preds.loc[positive, "prob_pos"] >= 0.8).mean())
    assert m["specificity"]["estimate"] == pytest.approx((preds.loc[~positive, "prob_pos"] < 0.8).mean())


@pytest.mark.parametrize("kind", ["classification", "survival"])
def test_a_model_compared_with_itself_differs_by_zero_with_p_one(kind: str) -> None:
    preds = classification_frame() if kind == "classification" else survival_frame()
    table = compare_models({"a": preds, "b": preds.sample(frac=1, random_state=0)}, kind, CLASSES, "t", SETTINGS)
    row = table.iloc[0]
    assert (row["difference"], row["ci_low"], row["ci_high"], row["p_value"]) == (0, 0, 0, 1)
    assert row["metric"] == ("auc" if kind == "classification" else "c_index") and row["n_patients"] == 60


def test_a_better_model_wins_the_paired_comparison() -> None:
    good = classification_frame(n=120)
    rng = np.random.default_rng(5)
    noisy = good.assign(prob_pos=np.clip(good["prob_pos"] + rng.normal(0, 0.4, 120), 0, 1))
    noisy["prob_neg"] = 1 - noisy["prob_pos"]
    row = compare_models({"good": good, "noisy": noisy}, "classification", CLASSES, "t", SETTINGS).iloc[0]
    auc_good, auc_noisy = (roc_auc_score(f["target"], f["prob_pos"]) for f in (good, noisy))
    assert row["difference"] == pytest.approx(auc_good - auc_noisy)
    assert 0 < row["ci_low"] < row["difference"] < row["ci_high"] and row["p_value"] < 0.05


def test_metrics_that_cannot_be_computed_are_nan_with_the_reason(tmp_path) -> None:
    def metrics(frame: pd.DataFrame, kind: str = "classification", classes=CLASSES, **settings) -> dict:
        return metrics_with_intervals(frame, kind, classes, {**SETTINGS, **settings})["metrics"]

    m = metrics(classification_frame().assign(target=1))
    assert math.isnan(m["auc"]["estimate"]) and m["auc"]["reason"] == "only one class present"
    assert math.isnan(m["auc"]["ci_low"]) and m["specificity"]["reason"].startswith("no operating point")
    assert m["brier"]["reason"] is None  # still defined
    m = metrics(classification_frame(n=6))
    assert all(math.isnan(v["estimate"]) and "fewer than 10 patients (6)" in v["reason"] for v in m.values())
    m = metrics(classification_frame().assign(prob_mid=0.0), classes=["neg", "pos", "mid"])
    assert "no patients of class ['mid']" in m["auc"]["reason"] and "binary" in m["sensitivity"]["reason"]
    m = metrics(survival_frame().assign(event=0), "survival")
    assert all(math.isnan(v["estimate"]) and v["reason"] == "no events" for v in m.values())
    with pytest.raises(MambamilError, match=r"evaluation.survival_times: t=1e\+06 is outside the follow-up of every"):
        metrics(survival_frame(), "survival", survival_times=[1e6])
    with pytest.raises(MambamilError, match=r"evaluation.tau = 1e\+06 is beyond the follow-up"):
        metrics(survival_frame(), "survival", tau=1e6)
    m = metrics(survival_frame(), "survival", survival_times=[0.5, 20.0], tau=10.0)
    assert "not before τ=10" in m["td_auc_20"]["reason"] and "not before τ=10" in m["ibs"]["reason"]
    m = metrics(survival_frame().drop(columns=[f"surv_time_{k}" for k in range(1, 5)]), "survival")
    assert "no per-bin survival curves" in m["ibs"]["reason"]
    evaluate_predictions(survival_frame().assign(event=0), "survival", [], tmp_path, "t", SETTINGS)
    json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)  # strict JSON: NaN as null


def test_summary_table_has_fold_mean_and_pooled_interval_columns(tmp_path) -> None:
    result = evaluate_predictions(classification_frame(), "classification", CLASSES, tmp_path, "t", SETTINGS)
    table = summary_table({("subtype", "m"): evaluation_outputs(tmp_path)["metrics"]})
    row = table.iloc[0]
    fold = result["summary"]["auc"]
    assert row["auc"] == f"{fold['mean']:.3f} ± {fold['std']:.3f} (3 of 3 folds)"
    assert row["auc_pooled"] == pytest.approx(result["metrics"]["auc"]["estimate"])
    assert row["auc_ci_low"] < row["auc_pooled"] < row["auc_ci_high"] and row["auc_reason"] is None
    assert "no operating point" in row["sensitivity_reason"]
    assert "bootstrap" in row["ci_method"]


def test_training_writes_validation_predictions_and_survival_curves(tmp_path) -> None:
    """The engine's outputs the evaluation needs: val_predictions.csv, and each survival row's curve (surv_k at
    surv_time_k = the task's bin ends, stored in the checkpoint)."""
    from mambamil.cli import main
    from mambamil.config import default_section
    from mambamil.h5layout import CoordsAttrs, FeatureAttrs, write_features
    from mambamil.models import load_checkpoint

    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        feats = rng.normal(size=(20, 8)).astype(np.float32)
        coords = np.stack([np.arange(20) * 256, np.zeros(20, int)], axis=1)
        write_features(tmp_path / "features" / f"S{i:02d}.h5", feats, coords, FeatureAttrs(patch_size=256),
                       CoordsAttrs(patch_size=256, patch_size_level0=256, step_level0=256))  # fmt: skip
        rows.append({"case_id": f"P{i:02d}", "slide_id": f"S{i:02d}", "time": 1.0 + i, "event": i % 3 != 0})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    training = {**default_section("training"), "folds": 2, "epochs": 1, "min_epochs": 1, "device": "cpu"}
    task = {"type": "survival", "n_bins": 3}
    spec = json.dumps({"task_name": "os", "task": task, "training": training, "model_name": "mean",
                       "model": {"model": "mean"}})  # fmt: skip
    common = ["--labels", tmp_path / "labels.csv", "--features-dir", tmp_path / "features", "--settings", spec]
    argv = ["--quiet", "--threads", "1"]
    assert main([*argv, *map(str, ["splits", *common, "--out", tmp_path / "splits.csv"])]) == 0
    out = tmp_path / "fold_0"
    assert (
        main([*argv, *map(str, ["train", *common, "--splits", tmp_path / "splits.csv", "--fold", 0, "--out", out])])
        == 0
    )
    files = fold_outputs(out)
    edges = load_checkpoint(files["checkpoint"])[1]["meta"]["bin_edges"]
    for key in ("predictions", "val_predictions"):
        preds = pd.read_csv(files[key])
        assert len(preds) and (preds["fold"] == 0).all(), key
        surv = preds[["surv_1", "surv_2", "surv_3"]].to_numpy()
        assert (np.diff(surv, axis=1) <= 1e-7).all() and ((surv > 0) & (surv < 1)).all(), key  # a survival curve
        np.testing.assert_allclose(preds[["surv_time_1", "surv_time_2", "surv_time_3"]].iloc[0], edges[1:])
        np.testing.assert_allclose(preds["risk"], -surv.sum(axis=1), rtol=1e-5)
