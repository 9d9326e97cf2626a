"""Survival statistics and external scoring a reviewer signs (issue 26): each fold's targets from its training
patients only; the model's curve as one step function (IBS = scikit-survival's on that curve, beside the
Kaplan–Meier no-skill IBS and IPA); τ for the IPCW metrics; fold summaries over the folds that computed a metric;
risk groups cut on validation predictions; ensembles averaged on one time grid; the development operating point,
risk cut-off and survival times carried to external cohorts."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from sksurv.functions import StepFunction
from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv

# tests/test_evaluation.py by its module name (the `tests` package torchmil/torchstain install shadows `tests.`)
from test_evaluation import classification_frame  # isort: skip

from mambamil.bags import Sample, TaskSpec
from mambamil.evaluation import registry
from mambamil.evaluation.evaluate import evaluate_folds, evaluate_predictions, metrics_with_intervals
from mambamil.evaluation.frame import EvaluationSettings, prepare
from mambamil.evaluation.summary import fold_text
from mambamil.evaluation.survival import kaplan_meier_at, survival_curves
from mambamil.paths import evaluation_outputs, fold_outputs
from mambamil.train.engine import fold_subsets

SETTINGS = {"n_resamples": 1000, "seed": 0}


def survival_frame(n: int = 60, seed: int = 0, folds: int = 3) -> pd.DataFrame:
    """Risk-driven exponential times with censoring; each fold's model has its own bin ends (as per-fold bins)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    t, c = rng.exponential(10 * np.exp(-x)), rng.exponential(20, n)
    time, event = np.round(np.minimum(t, c), 2), (t <= c).astype(int)
    ids = [f"P{i:03d}" for i in range(n)]
    fold = np.arange(n) % folds
    frame = pd.DataFrame({"fold": fold, "sample_id": ids, "case_id": ids, "risk": x, "time": time, "event": event})
    for f in range(folds):
        rows = fold == f
        edges = np.quantile(time[event == 1], [0, 0.25, 0.5, 0.75, 1.0]) * (1 + 0.1 * f)  # bins differ by fold
        for k in range(1, 5):
            frame.loc[rows, f"surv_{k}"] = np.exp(-edges[k] / (10 * np.exp(-x[rows])))
            frame.loc[rows, f"surv_time_{k}"] = edges[k]
    return frame




def test_each_folds_training_targets_come_from_its_training_patients_only() -> None:
    rng = np.random.default_rng(0)
    n = 40
    samples = [Sample(f"P{i}", f"P{i}", [f"S{i}"], time=float(t), event=int(e))
               for i, (t, e) in enumerate(zip(rng.exponential(30, n), rng.random(n) < 0.7, strict=True))]  # fmt: skip
    split = np.array(["train"] * 24 + ["val"] * 6 + ["test"] * 10)
    splits = pd.DataFrame({"fold": 0, "case_id": [s.case_id for s in samples], "split": split})
    task = TaskSpec("os", "survival", n_bins=4)
    subsets, meta = fold_subsets(task, samples, splits, 0, {})
    # Only the test patients' times change (much longer follow-up): the training targets must not move.
    moved = [replace(s, time=s.time * 5 + 100) if k == "test" else s for s, k in zip(samples, split, strict=True)]
    moved_subsets, moved_meta = fold_subsets(task, moved, splits, 0, {})
    assert moved_meta["bin_edges"] == meta["bin_edges"]
    assert [s.label for s in moved_subsets["train"]] == [s.label for s in subsets["train"]]
    train_times = [s.time for s in subsets["train"] if s.event]
    assert meta["bin_edges"][2] == pytest.approx(np.quantile(train_times, 0.5))  # the training patients' median


def step_reference(preds: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    """Each row's curve through scikit-survival's own StepFunction (1 at time 0, surv_k from the end of bin k)."""
    times, surv = survival_curves(preds)
    return np.stack([StepFunction(np.r_[0.0, t], np.r_[1.0, s])(grid) for t, s in zip(times, surv, strict=True)])


def test_ibs_is_scikit_survivals_on_the_step_curve_beside_the_no_skill_reference() -> None:
    preds = survival_frame()
    study = metrics_with_intervals(preds, "survival", [], SETTINGS)
    m, grid, tau = study["metrics"], study["grid"], study["tau"]
    assert grid[-1] < tau  # default grid: first to third quartile of the event times, before τ
    y = Surv.from_arrays(event=preds["event"].astype(bool), time=preds["time"])
    assert m["ibs"]["estimate"] == pytest.approx(integrated_brier_score(y, y, step_reference(preds, grid), grid))
    km = KaplanMeierFitter().fit(preds["time"], preds["event"]).survival_function_at_times(grid).to_numpy()
    ibs_km = integrated_brier_score(y, y, np.tile(km, (len(preds), 1)), grid)
    assert m["ibs_km"]["estimate"] == pytest.approx(ibs_km)
    assert m["ipa"]["estimate"] == pytest.approx(1 - m["ibs"]["estimate"] / ibs_km)
    # The bootstrap estimators at weight one are the point estimates (the weighted KM is lifelines' KM).
    f = study["frame"]
    ones = np.ones((1, len(preds)))
    assert kaplan_meier_at(f.time, f.event, ones, grid)[0] == pytest.approx(km)
    for name in ("ibs", "ibs_km", "ipa", "uno_c_index"):
        assert registry.replicates(f, ones, [name])[name][0] == pytest.approx(m[name]["estimate"]), name


def tied_at_last_follow_up() -> pd.DataFrame:
    preds = survival_frame().drop(columns="fold")
    last = preds["time"].max() + 5
    preds.loc[[0, 1], ["time", "event"]] = [[last, 1], [last, 0]]  # an event tied with a censoring, last of all
    return preds


def test_a_tie_at_the_last_follow_up_with_tau_set_gives_finite_uno_and_td_auc() -> None:
    preds = tied_at_last_follow_up()
    y = Surv.from_arrays(event=preds["event"].astype(bool), time=preds["time"])
    with pytest.raises(ValueError, match="censoring survival function is zero"):  # the failure without τ
        concordance_index_ipcw(y, y, preds["risk"])
    tau = float(np.quantile(preds["time"], 0.9))
    result = metrics_with_intervals(preds, "survival", [], {**SETTINGS, "survival_times": [5.0, 10.0], "tau": tau})
    m = result["metrics"]
    assert result["tau"] == tau and result["tau_source"] == "evaluation.tau"
    for name in ("uno_c_index", "td_auc_5", "td_auc_10", "ibs"):
        assert math.isfinite(m[name]["estimate"]) and m[name]["resamples"] == 1000, (name, m[name])
    assert m["uno_c_index"]["estimate"] == pytest.approx(concordance_index_ipcw(y, y, preds["risk"], tau=tau)[0])
    # td-AUC before τ is unchanged by the truncation: the same as on data without the tie.
    clean = preds.drop(index=[0, 1])
    yc = Surv.from_arrays(event=clean["event"].astype(bool), time=clean["time"])
    assert math.isfinite(cumulative_dynamic_auc(yc, yc, clean["risk"], [5.0])[0][0])
    # The default τ (censoring survival positive) also avoids the tie.
    default = metrics_with_intervals(preds, "survival", [], SETTINGS)
    assert default["tau"] == preds["time"].max() and math.isfinite(default["metrics"]["uno_c_index"]["estimate"])


def test_fold_summaries_count_the_folds_that_computed_a_metric(tmp_path) -> None:
    preds = survival_frame(n=60, folds=3)
    preds.loc[preds["fold"] == 2, "event"] = 0  # fold 2 has no events: none of its metrics can be computed
    result = evaluate_predictions(preds, "survival", [], tmp_path, "t", SETTINGS)
    summary = result["summary"]["c_index"]
    folds = [result["per_fold"][k].get("c_index", np.nan) for k in (0, 1, 2)]
    assert (summary["computed"], summary["n_folds"]) == (2, 3) and math.isnan(folds[2])
    assert summary["mean"] == pytest.approx(np.mean(folds[:2]))
    assert summary["std"] == pytest.approx(np.std(folds[:2], ddof=1))
    assert fold_text(summary).endswith("(2 of 3 folds)")
    assert result["per_fold_reasons"][2]["c_index"] == "no events"
    logrank = result["summary"]["logrank_p"]
    assert math.isnan(logrank["mean"]) and fold_text(logrank) == "not averaged (2 of 3 folds)"  # no mean p-value
    assert result["metrics"]["c_index"]["reason"] is None  # the pooled estimate stays the headline


def test_risk_groups_are_cut_on_each_folds_validation_predictions(tmp_path) -> None:
    preds = survival_frame(n=60, folds=2)
    files = []
    cutoffs = {0: -0.5, 1: 0.7}
    for fold, cut in cutoffs.items():
        out = fold_outputs(tmp_path / f"fold_{fold}")
        out["predictions"].parent.mkdir(parents=True)
        preds[preds["fold"] == fold].to_csv(out["predictions"], index=False)
        pd.DataFrame({"risk": [cut - 1, cut, cut + 5]}).to_csv(out["val_predictions"], index=False)  # median = cut
        files.append(out["predictions"])
    result = evaluate_folds(files, "survival", [], tmp_path / "ev", "t", SETTINGS, time_unit="months")
    written = json.loads(evaluation_outputs(tmp_path / "ev")["metrics"].read_text())
    assert written["risk_cutoff"]["per_fold"] == {"0": -0.5, "1": 0.7}
    assert written["risk_cutoff"]["development"] == pytest.approx(0.1) and written["time_unit"] == "months"
    high = preds["risk"] > preds["fold"].map(cutoffs)
    expected = logrank_test(preds.loc[high, "time"], preds.loc[~high, "time"], preds.loc[high, "event"],
                            preds.loc[~high, "event"]).p_value  # fmt: skip
    assert result["metrics"]["logrank_p"]["estimate"] == pytest.approx(expected)


def test_frame_truncation_keeps_the_events_before_tau() -> None:
    preds = survival_frame().drop(columns="fold")
    f = prepare(preds, "survival", [], EvaluationSettings.from_config(SETTINGS), tau=5.0)
    from mambamil.evaluation.survival import truncated

    time, event = truncated(f)
    assert time.max() == 5.0 and not event[preds["time"].to_numpy() >= 5.0].any()
    assert (event == (preds["event"].astype(bool) & (preds["time"] < 5.0))).all()


def test_an_ensemble_averages_its_members_step_curves_on_one_time_grid() -> None:
    import torch

    from mambamil.inference import summarise

    task = TaskSpec("os", "survival", n_bins=3)
    edges = [[0.0, 10.0, 20.0, 30.0], [0.0, 15.0, 25.0, 40.0]]  # two folds, two sets of bins
    outs = [{"risk": torch.tensor([[-2.0]]), "S": torch.tensor([[0.9, 0.6, 0.3]])},
            {"risk": torch.tensor([[-1.0]]), "S": torch.tensor([[0.8, 0.5, 0.2]])}]  # fmt: skip
    row = summarise(outs, task, "bag", edges)
    ends = [row[f"surv_time_{k}"] for k in range(1, 7)]
    assert ends == [10.0, 15.0, 20.0, 25.0, 30.0, 40.0]
    # Each member's own step function at the union of bin ends, then the mean (never bin 1 with bin 1).
    first, second = [0.9, 0.9, 0.6, 0.6, 0.3, 0.3], [1.0, 0.8, 0.8, 0.5, 0.5, 0.2]
    expected = (np.array(first) + np.array(second)) / 2
    assert [row[f"surv_{k}"] for k in range(1, 7)] == pytest.approx(expected)
    assert row["risk"] == pytest.approx(-1.5)


def test_external_scoring_carries_the_development_operating_point_and_survival_times(tmp_path) -> None:
    from mambamil.external import evaluate_cohort, read_development

    dev = classification_frame(n=60, folds=3)
    dev["threshold"] = dev["fold"].map({0: 0.4, 1: 0.5, 2: 0.7})
    evaluate_predictions(dev, "classification", ["neg", "pos"], tmp_path / "dev", "dev", SETTINGS)
    development = read_development(evaluation_outputs(tmp_path / "dev")["metrics"])
    assert development["threshold"] == pytest.approx(0.5)  # the median over the folds' operating points
    ext = classification_frame(n=30, seed=4).drop(columns="fold")
    result = evaluate_cohort(ext, "classification", ["neg", "pos"], tmp_path / "ext", "ext", [],
                             development=development)  # fmt: skip
    m, positive = result["metrics"], ext["target"] == 1
    assert m["sensitivity"]["estimate"] == pytest.approx((ext.loc[positive, "prob_pos"] >= 0.5).mean())
    assert m["specificity"]["estimate"] == pytest.approx((ext.loc[~positive, "prob_pos"] < 0.5).mean())
    assert result["settings"]["development_metrics"] == development["path"]

    dev_surv = survival_frame(n=60, folds=3)
    evaluate_predictions(dev_surv, "survival", [], tmp_path / "dev_s", "dev", SETTINGS)
    development = read_development(evaluation_outputs(tmp_path / "dev_s")["metrics"])
    ext = survival_frame(n=40, seed=9).drop(columns="fold")
    result = evaluate_cohort(ext, "survival", [], tmp_path / "ext_s", "ext", [], development=development)
    assert result["survival_times"] == development["survival_times"]  # the development cohort's times
    for name in ("ibs", "ipa", *[registry.time_key("td_auc", t) for t in development["survival_times"]]):
        assert math.isfinite(result["metrics"][name]["estimate"]), (name, result["metrics"][name])
    assert result["risk_cutoff"]["development"] == pytest.approx(development["risk_cutoff"])


def test_time_auc_plot_draws_an_estimate_outside_its_interval(tmp_path: Path) -> None:
    """A pooled estimate can lie outside its bootstrap interval (BCa, few usable resamples): the plot draws it
    rather than failing on negative error bars (which stopped `predict --metrics-dir` of a survival model)."""
    from mambamil.evaluation.plots import time_auc_plot

    metrics = {
        "td_auc_5": {"estimate": 0.90, "ci_low": 0.92, "ci_high": 0.99},
        "td_auc_10": {"estimate": 0.70, "ci_low": 0.50, "ci_high": 0.80},
        "c_index": {"estimate": 0.70},
    }
    time_auc_plot(metrics, [5.0, 10.0], tmp_path / "time_auc.png", "t", "months")
    assert (tmp_path / "time_auc.png").stat().st_size > 0
