"""Evaluation on held-out test predictions only: per-fold metrics with mean ± std, metrics of the pooled
out-of-fold predictions with patient-level bootstrap intervals, and the plots.

The test predictions it reads are written by the training engine through :mod:`mambamil.inference` (the module
``predict`` and ``heatmap`` use), so evaluated scores are the scores those commands give. The metrics are the
entries of :mod:`mambamil.evaluation.registry`; a metric that cannot be computed is NaN with its reason, never an
exception."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mambamil.columns import probability_column
from mambamil.errors import InputFileError
from mambamil.evaluation import bootstrap as bs
from mambamil.evaluation import registry
from mambamil.evaluation.classification import OPERATING_POINT_METHOD, add_operating_thresholds, calibration_pairs
from mambamil.evaluation.cohort_table import small_sample_warnings
from mambamil.evaluation.frame import EvaluationSettings, as_settings, cutoff_summary, prepare
from mambamil.evaluation.metrics import classification_metrics
from mambamil.evaluation.plots import calibration_plot, km_plot, roc_pr_plot, time_auc_plot
from mambamil.evaluation.survival import (
    MEDIAN_CUTOFF,
    RISK_CUTOFF_METHOD,
    add_risk_cutoffs,
    evaluation_times,
    ibs_grid,
    risk_groups,
    truncation_time,
)
from mambamil.fileio import atomic_output, write_json
from mambamil.paths import evaluation_outputs, fold_outputs


def metrics_with_intervals(
    preds: pd.DataFrame,
    kind: str,
    classes: list[str],
    settings: dict[str, Any] | EvaluationSettings | None = None,
    survival_times: list[float] | None = None,
) -> dict[str, Any]:
    """Every metric of the pooled frame: ``metrics`` {name: {estimate, ci_low, ci_high, resamples (usable),
    interval (the method that made it), reason}}, the
    interval ``method``, the ``survival_times``, IBS range and τ; and, for the plots (not JSON), the prepared
    ``frame``, the bootstrap ``weights`` and the IBS ``grid``. ``survival_times``: the development cohort's times
    (external cohorts), instead of :func:`evaluation_times`."""
    settings = as_settings(settings)
    times, grid, tau, tau_source = [], None, None, None
    if kind == "survival":
        if survival_times is not None:
            times = sorted(float(t) for t in survival_times)
            grid = ibs_grid(times)
        else:
            times, grid = evaluation_times(preds, settings)
        tau, tau_source = truncation_time(preds, settings, external=survival_times is not None)
    names = registry.metric_names(kind, times)
    f = prepare(preds, kind, classes, settings, times, grid, tau)
    if f.n_patients < settings.min_patients:
        values, reasons = {}, dict.fromkeys(names, f"fewer than {settings.min_patients} patients ({f.n_patients})")
    else:
        values, reasons = registry.estimates(f, names)
    groups = preds["case_id"].to_numpy()
    W = bs.bootstrap_weights(groups, settings.n_resamples, settings.seed)
    todo = [n for n in names if n in values and registry.has_interval(n)]
    replicates = registry.replicates(f, W, todo) if todo else {}
    metrics = {}
    for name in names:
        low, high, used, interval = bs.interval(
            settings.interval if name in replicates else "percentile",
            replicates.get(name, []),
            lambda w, name=name: registry.replicates(f, w, [name])[name],
            groups,
            settings.confidence_level,
        )
        reason = reasons.get(name)
        if not reason and used == 0 and registry.has_interval(name):
            reason = "no bootstrap resample could be evaluated"
        metrics[name] = {
            "estimate": values.get(name, float("nan")),
            "ci_low": low,
            "ci_high": high,
            "resamples": used,
            "interval": interval if registry.has_interval(name) else None,
            "reason": reason,
        }
    return {
        "metrics": metrics,
        "method": settings.method,
        "survival_times": times,
        "ibs_range": [float(grid[0]), float(grid[-1])] if grid is not None else None,
        "tau": tau,
        "tau_source": tau_source,
        "frame": f,
        "weights": W,
        "grid": grid,
    }


# -- evaluation of one prediction frame --------------------------------------------------------------------------
def read_predictions(prediction_files: list[Path]) -> pd.DataFrame:
    """Each fold's ``test_predictions.csv``, pooled (every patient must be tested in one fold only)."""
    frames = []
    for path in prediction_files:
        if not Path(path).exists():
            raise InputFileError(path, "test predictions not found (run the train rule for this fold)")
        frames.append(pd.read_csv(path, dtype={"sample_id": str, "case_id": str}))
    preds = pd.concat(frames, ignore_index=True)
    if preds["case_id"].duplicated().any() and preds.groupby("case_id")["fold"].nunique().max() > 1:
        raise InputFileError(prediction_files[0], "a patient is tested in more than one fold")
    return preds


def fold_summary(per_fold: dict[int, dict[str, float]], names: list[str]) -> dict[str, Any]:
    """Per metric over the folds that could compute it: ``mean``, ``std`` (ddof = 1; NaN below two folds),
    ``computed`` (k) of ``n_folds`` (K) and the per-fold ``folds`` values. P-values get no mean or std (a mean of
    p-values is not a p-value): their folds only."""
    summary = {}
    for key in names:
        values = np.array([m.get(key, np.nan) for m in per_fold.values()], dtype=float)
        finite = values[np.isfinite(values)]
        averaged = registry.has_interval(key)
        summary[key] = {
            "mean": float(finite.mean()) if finite.size and averaged else float("nan"),
            "std": float(finite.std(ddof=1)) if finite.size > 1 and averaged else float("nan"),
            "computed": int(finite.size),
            "n_folds": int(values.size),
            "folds": values.tolist(),
        }
    return summary


def evaluate_predictions(
    preds: pd.DataFrame,
    kind: str,
    classes: list[str],
    out_dir: str | Path,
    title: str,
    settings: dict[str, Any] | EvaluationSettings | None = None,
    survival_times: list[float] | None = None,
    time_unit: str | None = None,
) -> dict[str, Any]:
    """Metrics of one pooled prediction frame (the columns of ``test_predictions.csv``; ``fold`` optional): writes
    ``metrics.json``, ``predictions.csv`` and the plots named by :func:`mambamil.paths.evaluation_outputs` into
    ``out_dir`` and returns the metrics. Per-fold mean ± std only when a ``fold`` column holds more than one fold.
    ``settings``: the ``evaluation`` config section (schema defaults when None).

    Optional columns: ``threshold`` (classification: the operating point on the positive class's probability,
    per row, for sensitivity/specificity; ``threshold_reason`` when missing) and ``surv_k`` / ``surv_time_k``
    (survival: the model's curve, for the integrated Brier score; :func:`add_survival_times`), ``risk_cutoff``
    (survival: the risk-group cut-off per row). ``survival_times``: the development cohort's (external cohorts);
    ``time_unit``: the unit of the times, written beside them."""
    settings = as_settings(settings)
    study = metrics_with_intervals(preds, kind, classes, settings, survival_times)
    names = list(study["metrics"])
    folds = sorted(preds["fold"].unique()) if "fold" in preds.columns else []
    per_fold: dict[int, dict[str, float]] = {}
    fold_reasons: dict[int, dict[str, str]] = {}
    if len(folds) > 1:
        times, grid, tau = study["survival_times"], study["grid"], study["tau"]
        for fold, rows in preds.groupby("fold"):
            values, reasons = registry.estimates(prepare(rows, kind, classes, settings, times, grid, tau), names)
            per_fold[int(fold)] = {**_legacy(rows, kind, classes), **values}
            fold_reasons[int(fold)] = reasons
    summary = fold_summary(per_fold, names) if per_fold else {}
    pooled = {**_legacy(preds, kind, classes), **{k: m["estimate"] for k, m in study["metrics"].items()}}
    result = {
        "kind": kind,
        "n_patients": study["frame"].n_patients,
        "n_rows": len(preds),
        "n_folds": len(folds),
        "interval_method": study["method"],
        "settings": asdict(settings),
        "survival_times": study["survival_times"],
        "ibs_range": study["ibs_range"],
        "tau": study["tau"],
        "tau_source": study["tau_source"],
        "time_unit": time_unit if kind == "survival" else None,
        "operating_point": cutoff_summary(preds, "threshold", OPERATING_POINT_METHOD),
        "risk_cutoff": _risk_cutoff_summary(study["frame"], preds) if kind == "survival" else None,
        "metrics": study["metrics"],
        "warnings": small_sample_warnings(preds, kind, classes, settings.min_per_class),
        "summary": summary,
        "pooled": pooled,
        "per_fold": per_fold,
        "per_fold_reasons": fold_reasons,
    }
    outputs = evaluation_outputs(out_dir)
    write_json(outputs["metrics"], json_safe(result))
    with atomic_output(outputs["predictions"]) as tmp:
        preds.to_csv(tmp, index=False)
    _plots(study, kind, classes, outputs, title, settings, time_unit)
    return result


def _risk_cutoff_summary(f, preds: pd.DataFrame) -> dict[str, Any]:
    """The risk-group cut-offs as :func:`risk_groups` used them: each fold's, or the frame's median."""
    _, how = risk_groups(f)
    if how == MEDIAN_CUTOFF:
        return {"development": float(np.median(f.risk)) if len(f.risk) else float("nan"), "per_fold": {},
                "method": how}  # fmt: skip
    return cutoff_summary(preds, "risk_cutoff", RISK_CUTOFF_METHOD)


def _legacy(rows: pd.DataFrame, kind: str, classes: list[str]) -> dict[str, Any]:
    """The counts and confusion matrix (classification: with the metrics of :mod:`mambamil.evaluation.metrics`,
    also used by training); survival: patients and events (its metrics are the registry's)."""
    if kind == "classification":
        probs = rows[[probability_column(c) for c in classes]].to_numpy()
        with warnings.catch_warnings():  # a fold whose predictions name a class its patients lack
            warnings.simplefilter("ignore", UserWarning)
            return classification_metrics(rows["target"].to_numpy(), probs, classes)
    return {"n": len(rows), "events": int(rows["event"].to_numpy(dtype=float).sum())}


def json_safe(obj: Any) -> Any:
    """NaN → null, numpy scalars → Python (metrics.json stays strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _plots(study: dict, kind: str, classes: list[str], outputs: dict, title: str, settings, time_unit: str | None):
    f, W = study["frame"], study["weights"]
    if kind == "classification":
        roc_pr_plot(f.y, f.probs, classes, W, outputs["curves"], title, settings.confidence_level)
        calibration_plot(*calibration_pairs(f.y, f.probs), settings.calibration_bins, outputs["calibration"], title,
                         "positive class " + classes[1] if len(classes) == 2 else "top class")  # fmt: skip
    else:
        high, how = risk_groups(f)
        km_plot(f.time, f.event, high, outputs["curves"], title, how, time_unit)
        time_auc_plot(study["metrics"], study["survival_times"], outputs["time_auc"], title, time_unit)


def evaluate_folds(
    prediction_files: list[Path],
    kind: str,
    classes: list[str],
    out_dir: str | Path,
    title: str,
    settings: dict[str, Any] | EvaluationSettings | None = None,
    time_unit: str | None = None,
) -> dict[str, Any]:
    """Read each fold's ``test_predictions.csv`` (and the ``val_predictions.csv`` beside it, which fixes the fold's
    operating point (binary tasks) or risk-group cut-off (survival)) and evaluate the pooled out-of-fold
    predictions (:func:`evaluate_predictions`)."""
    preds = read_predictions(prediction_files)
    val_files = {}
    for path in prediction_files:
        folds = pd.read_csv(path, usecols=["fold"])["fold"].unique()
        val_files.update({int(k): fold_outputs(Path(path).parent)["val_predictions"] for k in folds})
    if kind == "classification" and len(classes) == 2:
        preds = add_operating_thresholds(preds, val_files, classes)
    elif kind == "survival":
        preds = add_risk_cutoffs(preds, val_files)
    return evaluate_predictions(preds, kind, classes, out_dir, title, settings, time_unit=time_unit)


