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
from mambamil.evaluation.classification import add_operating_thresholds, calibration_pairs
from mambamil.evaluation.frame import EvaluationSettings, as_settings, prepare
from mambamil.evaluation.metrics import classification_metrics, survival_metrics
from mambamil.evaluation.plots import calibration_plot, km_plot, roc_pr_plot, time_auc_plot
from mambamil.evaluation.survival import evaluation_times
from mambamil.fileio import atomic_output, write_json
from mambamil.paths import evaluation_outputs, fold_outputs


def metrics_with_intervals(
    preds: pd.DataFrame,
    kind: str,
    classes: list[str],
    settings: dict[str, Any] | EvaluationSettings | None = None,
) -> dict[str, Any]:
    """Every metric of the pooled frame: ``metrics`` {name: {estimate, ci_low, ci_high, resamples, reason}}, the
    interval ``method``, the ``survival_times`` and IBS range; and, for the plots (not JSON), the prepared
    ``frame``, the bootstrap ``weights`` and the IBS ``grid``."""
    settings = as_settings(settings)
    times, grid = evaluation_times(preds, settings) if kind == "survival" else ([], None)
    names = registry.metric_names(kind, times)
    f = prepare(preds, kind, classes, settings, times, grid)
    if f.n_patients < settings.min_patients:
        values, reasons = {}, dict.fromkeys(names, f"fewer than {settings.min_patients} patients ({f.n_patients})")
    else:
        values, reasons = registry.estimates(f, names)
    W = bs.bootstrap_weights(preds["case_id"].to_numpy(), settings.n_resamples, settings.seed)
    todo = [n for n in names if n in values and registry.has_interval(n)]
    replicates = registry.replicates(f, W, todo) if todo else {}
    metrics = {}
    for name in names:
        low, high, used = bs.percentile_interval(replicates.get(name, []), settings.confidence_level)
        reason = reasons.get(name)
        if not reason and used == 0 and registry.has_interval(name):
            reason = "no bootstrap resample could be evaluated"
        metrics[name] = {
            "estimate": values.get(name, float("nan")),
            "ci_low": low,
            "ci_high": high,
            "resamples": used,
            "reason": reason,
        }
    return {
        "metrics": metrics,
        "method": settings.method,
        "survival_times": times,
        "ibs_range": [float(grid[0]), float(grid[-1])] if grid is not None else None,
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


def _fold_summary(per_fold: dict[int, dict[str, float]], names: list[str]) -> dict[str, Any]:
    summary = {}
    for key in names:
        values = np.array([m.get(key, np.nan) for m in per_fold.values()], dtype=float)
        finite = values[np.isfinite(values)]
        summary[key] = {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "std": float(finite.std()) if finite.size else float("nan"),
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
) -> dict[str, Any]:
    """Metrics of one pooled prediction frame (the columns of ``test_predictions.csv``; ``fold`` optional): writes
    ``metrics.json``, ``predictions.csv`` and the plots named by :func:`mambamil.paths.evaluation_outputs` into
    ``out_dir`` and returns the metrics. Per-fold mean ± std only when a ``fold`` column holds more than one fold.
    ``settings``: the ``evaluation`` config section (schema defaults when None).

    Optional columns: ``threshold`` (classification: the operating point on the positive class's probability,
    per row, for sensitivity/specificity; ``threshold_reason`` when missing) and ``surv_k`` / ``surv_time_k``
    (survival: the model's curve, for the integrated Brier score; :func:`add_survival_times`)."""
    settings = as_settings(settings)
    study = metrics_with_intervals(preds, kind, classes, settings)
    names = list(study["metrics"])
    folds = sorted(preds["fold"].unique()) if "fold" in preds.columns else []
    per_fold: dict[int, dict[str, float]] = {}
    fold_reasons: dict[int, dict[str, str]] = {}
    if len(folds) > 1:
        times, grid = study["survival_times"], study["grid"]
        for fold, rows in preds.groupby("fold"):
            values, reasons = registry.estimates(prepare(rows, kind, classes, settings, times, grid), names)
            per_fold[int(fold)] = {**_legacy(rows, kind, classes), **values}
            fold_reasons[int(fold)] = reasons
    summary = _fold_summary(per_fold, names) if per_fold else {}
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
        "metrics": study["metrics"],
        "summary": summary,
        "pooled": pooled,
        "per_fold": per_fold,
        "per_fold_reasons": fold_reasons,
    }
    outputs = evaluation_outputs(out_dir)
    write_json(outputs["metrics"], json_safe(result))
    with atomic_output(outputs["predictions"]) as tmp:
        preds.to_csv(tmp, index=False)
    _plots(study, preds, kind, classes, outputs, title, settings)
    return result


def _legacy(rows: pd.DataFrame, kind: str, classes: list[str]) -> dict[str, Any]:
    """The counts, confusion matrix and metrics of :mod:`mambamil.evaluation.metrics` (also used by training)."""
    if kind == "classification":
        probs = rows[[probability_column(c) for c in classes]].to_numpy()
        with warnings.catch_warnings():  # a fold whose predictions name a class its patients lack
            warnings.simplefilter("ignore", UserWarning)
            return classification_metrics(rows["target"].to_numpy(), probs, classes)
    return survival_metrics(rows["time"].to_numpy(), rows["event"].to_numpy(), rows["risk"].to_numpy())


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


def _plots(study: dict, preds: pd.DataFrame, kind: str, classes: list[str], outputs: dict, title: str, settings):
    f, W = study["frame"], study["weights"]
    if kind == "classification":
        roc_pr_plot(f.y, f.probs, classes, W, outputs["curves"], title, settings.confidence_level)
        calibration_plot(*calibration_pairs(f.y, f.probs), settings.calibration_bins, outputs["calibration"], title,
                         "positive class " + classes[1] if len(classes) == 2 else "top class")  # fmt: skip
    else:
        km_plot(f.time, f.event, f.risk, outputs["curves"], title)
        time_auc_plot(study["metrics"], study["survival_times"], outputs["time_auc"], title)


def evaluate_folds(
    prediction_files: list[Path],
    kind: str,
    classes: list[str],
    out_dir: str | Path,
    title: str,
    settings: dict[str, Any] | EvaluationSettings | None = None,
) -> dict[str, Any]:
    """Read each fold's ``test_predictions.csv`` (and, for binary tasks, the ``val_predictions.csv`` beside it,
    which picks the fold's operating point) and evaluate the pooled out-of-fold predictions
    (:func:`evaluate_predictions`)."""
    preds = read_predictions(prediction_files)
    if kind == "classification" and len(classes) == 2:
        val_files = {}
        for path in prediction_files:
            folds = pd.read_csv(path, usecols=["fold"])["fold"].unique()
            val_files.update({int(k): fold_outputs(Path(path).parent)["val_predictions"] for k in folds})
        preds = add_operating_thresholds(preds, val_files, classes)
    return evaluate_predictions(preds, kind, classes, out_dir, title, settings)


