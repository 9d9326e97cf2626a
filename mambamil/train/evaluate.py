"""Evaluation on held-out test predictions only: per-fold metrics with mean ± std, metrics of the pooled
out-of-fold predictions with patient-level bootstrap intervals, calibration, time-dependent survival metrics,
paired model comparison and the plots.

The test predictions it reads are written by the training engine through :mod:`mambamil.inference` (the module
``predict`` and ``heatmap`` use), so evaluated scores are the scores those commands give. Point estimates come
from scikit-learn, lifelines and scikit-survival; the bootstrap replicates from the vectorised weighted
estimators of :mod:`mambamil.train.bootstrap` (each checked against those libraries in the tests). A metric that
cannot be computed is NaN with its reason, never an exception."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mambamil.config import settings_from_config
from mambamil.errors import InputFileError
from mambamil.evaluation.cohort_table import small_sample_warnings
from mambamil.fileio import atomic_output, write_json
from mambamil.inference import probability_column
from mambamil.paths import evaluation_outputs, fold_outputs
from mambamil.train import bootstrap as bs
from mambamil.train.metrics import c_index, classification_metrics, survival_metrics
from mambamil.train.plots import calibration_plot, km_plot, roc_pr_plot, time_auc_plot

#: Prediction columns of the model's survival curve: ``surv_k`` = predicted probability of surviving past
#: ``surv_time_k``, the end of time bin k (k = 1 … n_bins).
SURV_COLUMN = re.compile(r"^surv_(\d+)$")
SURV_GRID_POINTS = 100
#: Metrics that are test p-values, not estimates: reported without an interval.
P_VALUES = ("logrank_p",)


@dataclass(frozen=True)
class EvaluationSettings:
    """The ``evaluation`` section of the config (defaults live in the schema)."""

    n_resamples: int
    seed: int
    confidence_level: float
    min_patients: int
    calibration_bins: int
    survival_times: list[float]
    interval: str
    min_per_class: int

    @classmethod
    def from_config(cls, section: dict[str, Any] | None = None, **overrides: Any) -> EvaluationSettings:
        """Settings from a (validated) ``evaluation`` config section, then non-None keyword overrides."""
        return settings_from_config(cls, "evaluation", section, **overrides)

    @property
    def method(self) -> str:
        """The interval method in words, written next to the numbers."""
        return bs.METHOD.format(
            level=100 * self.confidence_level,
            interval=bs.INTERVALS[self.interval],
            n=self.n_resamples,
            seed=self.seed,
        )


def _settings(settings: dict[str, Any] | EvaluationSettings | None) -> EvaluationSettings:
    return settings if isinstance(settings, EvaluationSettings) else EvaluationSettings.from_config(settings)


# -- survival curves in prediction frames ----------------------------------------------------------------------
def add_survival_times(preds: pd.DataFrame, bin_edges: list[float]) -> pd.DataFrame:
    """Add ``surv_time_k`` = the end of time bin k (``bin_edges[k]``, the task's bin edges stored with the
    checkpoint) beside each ``surv_k`` column, so the frame carries the model's survival curves."""
    out = preds.copy()
    for k in range(1, len(bin_edges)):
        if f"surv_{k}" in out.columns:
            out[f"surv_time_{k}"] = float(bin_edges[k])
    return out


def survival_curves(preds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(times, survival) of each row's predicted curve (rows × bins), or None without ``surv_k`` and
    ``surv_time_k`` columns."""
    ks = sorted(int(m.group(1)) for c in preds.columns if (m := SURV_COLUMN.match(c)))
    if not ks or any(f"surv_time_{k}" not in preds.columns for k in ks):
        return None
    surv = preds[[f"surv_{k}" for k in ks]].to_numpy(dtype=float)
    times = preds[[f"surv_time_{k}" for k in ks]].to_numpy(dtype=float)
    return times, surv


def survival_at(curves: tuple[np.ndarray, np.ndarray], grid: np.ndarray) -> np.ndarray:
    """Each row's predicted survival at ``grid`` (rows × grid): linear between (0, 1) and the bin ends (the
    model gives survival at the end of each time bin only), constant after the last bin."""
    times, surv = curves
    return np.stack([np.interp(grid, np.r_[0.0, t], np.r_[1.0, s]) for t, s in zip(times, surv, strict=True)]).reshape(
        len(times), len(grid)
    )


# -- the operating point ---------------------------------------------------------------------------------------
def operating_threshold(val: pd.DataFrame, classes: list[str]) -> tuple[float, str | None]:
    """The threshold on the positive class's probability (``classes[1]``) that maximises Youden's J
    (sensitivity + specificity − 1) on validation predictions, or (NaN, reason)."""
    from sklearn.metrics import roc_curve

    if len(classes) != 2:
        return float("nan"), "operating point for binary tasks only"
    y = val["target"].to_numpy(dtype=int)
    if len(np.unique(y)) < 2:
        return float("nan"), "validation patients of one class only"
    fpr, tpr, thresholds = roc_curve(y == 1, val[probability_column(classes[1])].to_numpy(dtype=float))
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0)), None


def add_operating_thresholds(preds: pd.DataFrame, val_files: dict[int, Path], classes: list[str]) -> pd.DataFrame:
    """``threshold`` (and ``threshold_reason``) per test row: the operating point chosen on its own fold's
    validation predictions (:func:`operating_threshold`)."""
    out = preds.copy()
    out["threshold"] = np.nan
    out["threshold_reason"] = ""
    for fold in out["fold"].unique():
        path = val_files.get(int(fold))
        if path is None or not Path(path).exists():
            thr, why = float("nan"), f"no validation predictions for fold {fold} ({path})"
        else:
            thr, why = operating_threshold(pd.read_csv(path, dtype={"sample_id": str, "case_id": str}), classes)
            why = f"fold {fold}: {why}" if why else ""
        out.loc[out["fold"] == fold, ["threshold", "threshold_reason"]] = [thr, why]
    return out


# -- metrics: point estimates (libraries) and bootstrap replicates (vectorised) ---------------------------------
@dataclass
class _Frame:
    """What the metrics of one prediction frame need, prepared once."""

    kind: str
    classes: list[str]
    n_patients: int
    y: np.ndarray | None = None
    probs: np.ndarray | None = None
    threshold: np.ndarray | None = None
    threshold_reason: str | None = None
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    risk: np.ndarray | None = None
    surv_grid: np.ndarray | None = None  # predicted survival at the IBS grid (rows × grid)


def _frame(preds: pd.DataFrame, kind: str, classes: list[str], ibs_grid: np.ndarray | None) -> _Frame:
    f = _Frame(kind, list(classes), int(preds["case_id"].nunique()) if len(preds) else 0)
    if kind == "classification":
        f.y = preds["target"].to_numpy(dtype=int)
        f.probs = preds[[probability_column(c) for c in classes]].to_numpy(dtype=float)
        if "threshold" in preds.columns:
            f.threshold = preds["threshold"].to_numpy(dtype=float)
            reasons = sorted({r for r in preds.get("threshold_reason", pd.Series(dtype=str)).fillna("") if r})
            f.threshold_reason = "; ".join(reasons) or None
        return f
    f.time = preds["time"].to_numpy(dtype=float)
    f.event = preds["event"].to_numpy(dtype=float).astype(bool)
    f.risk = preds["risk"].to_numpy(dtype=float)
    curves = survival_curves(preds)
    if curves is not None and ibs_grid is not None:
        f.surv_grid = survival_at(curves, ibs_grid)
    return f


def _classification_estimates(f: _Frame, settings: EvaluationSettings) -> tuple[dict, dict]:
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        brier_score_loss,
        f1_score,
        recall_score,
        roc_auc_score,
    )
    from sklearn.preprocessing import label_binarize

    y, probs, k = f.y, f.probs, len(f.classes)
    pred = probs.argmax(axis=1)
    values: dict[str, float] = {}
    reasons: dict[str, str] = {}
    missing = [f.classes[c] for c in range(k) if not (y == c).any()]
    ranking_reason = None
    if len(np.unique(y)) < 2:
        ranking_reason = "only one class present"
    elif k > 2 and missing:
        ranking_reason = f"no patients of class {missing}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ranking_reason:
            reasons["auc"] = reasons["average_precision"] = ranking_reason
        elif k == 2:
            values["auc"] = roc_auc_score(y, probs[:, 1])
            values["average_precision"] = average_precision_score(y == 1, probs[:, 1])
        else:
            values["auc"] = roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(k)))
            values["average_precision"] = average_precision_score(
                label_binarize(y, classes=list(range(k))), probs, average="macro"
            )
        values["balanced_accuracy"] = balanced_accuracy_score(y, pred)
        values["weighted_f1"] = f1_score(y, pred, average="weighted", zero_division=0)
        if k == 2:
            values["brier"] = brier_score_loss(y, probs[:, 1], pos_label=1)
        else:
            values["brier"] = brier_score_loss(y, probs, labels=list(range(k)))
    values["ece"] = float(_classification_replicates(f, settings, np.ones((1, len(y))), ["ece"])["ece"][0])
    for name, cls in (("sensitivity", 1), ("specificity", 0)):
        if k != 2:
            reasons[name] = "operating point for binary tasks only"
        elif f.threshold is None:
            reasons[name] = "no operating point (validation predictions not given)"
        elif not np.isfinite(f.threshold).all():
            reasons[name] = f"no operating point ({f.threshold_reason or 'threshold missing'})"
        elif not (y == cls).any():
            reasons[name] = f"no {'positive' if cls else 'negative'} patients"
        else:
            called = (probs[:, 1] >= f.threshold).astype(int)
            values[name] = recall_score(y, called, pos_label=cls)
    return {n: float(v) for n, v in values.items()}, reasons


def _classification_replicates(
    f: _Frame, settings: EvaluationSettings, W: np.ndarray, names: list[str]
) -> dict[str, np.ndarray]:
    y, probs, k = f.y, f.probs, len(f.classes)
    pred = probs.argmax(axis=1)
    fns = {
        "auc": lambda: bs.macro_ovr_auc(y, probs, W),
        "average_precision": lambda: bs.macro_average_precision(y, probs, W),
        "balanced_accuracy": lambda: bs.balanced_accuracy(y, pred, k, W),
        "weighted_f1": lambda: bs.weighted_f1(y, pred, k, W),
        "brier": lambda: bs.weighted_mean(_brier_rows(y, probs), W),
        "ece": lambda: bs.expected_calibration_error(*_calibration_pairs(y, probs), settings.calibration_bins, W),
        "sensitivity": lambda: bs.recall(probs[:, 1] >= f.threshold, y == 1, W),
        "specificity": lambda: bs.recall(probs[:, 1] < f.threshold, y == 0, W),
    }
    return {name: fns[name]() for name in names if name in fns}


def _brier_rows(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-patient squared error: (p₁ − y)² (binary), Σₖ (pₖ − [y = k])² (multiclass), as scikit-learn's
    ``brier_score_loss``."""
    if probs.shape[1] == 2:
        return np.square(probs[:, 1] - (y == 1))
    return np.square(probs - np.eye(probs.shape[1])[y]).sum(axis=1)


def _calibration_pairs(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome) of the reliability curve: the positive class's probability and whether the patient
    is positive (binary), or the top-class probability and whether the top class is right (multiclass)."""
    if probs.shape[1] == 2:
        return probs[:, 1], (y == 1).astype(float)
    return probs.max(axis=1), (probs.argmax(axis=1) == y).astype(float)


def _survival_array(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=event.astype(bool), time=time.astype(float))


def _td_key(t: float) -> str:
    return f"td_auc_{t:g}"


def _survival_estimates(f: _Frame, times: list[float], grid: np.ndarray | None) -> tuple[dict, dict]:
    from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score

    values: dict[str, float] = {}
    reasons: dict[str, str] = {}
    names = ["c_index", "uno_c_index", *[_td_key(t) for t in times], "ibs", "logrank_p"]
    if not f.event.any():
        return values, dict.fromkeys(names, "no events")
    harrell = c_index(f.time, f.event, f.risk)
    if np.isnan(harrell):
        reasons["c_index"] = "no comparable pairs"
    else:
        values["c_index"] = harrell
    y = _survival_array(f.time, f.event)
    try:
        values["uno_c_index"] = float(concordance_index_ipcw(y, y, f.risk)[0])
    except (ValueError, ZeroDivisionError) as exc:
        reasons["uno_c_index"] = _one_line(exc)
    valid = []
    for t in times:
        why = _time_reason(f, t)
        if why:
            reasons[_td_key(t)] = why
        else:
            valid.append(t)
    if valid:
        try:
            aucs, _ = cumulative_dynamic_auc(y, y, f.risk, valid)
            values.update({_td_key(t): float(a) for t, a in zip(valid, aucs, strict=True)})
        except ValueError as exc:
            reasons.update(dict.fromkeys((_td_key(t) for t in valid), _one_line(exc)))
    if f.surv_grid is None:
        reasons["ibs"] = "no per-bin survival curves (surv_k, surv_time_k) in the predictions"
    elif grid is None or len(grid) < 2:
        reasons["ibs"] = "no time range for the integrated Brier score"
    else:
        try:
            values["ibs"] = float(integrated_brier_score(y, y, f.surv_grid, grid))
        except ValueError as exc:
            reasons["ibs"] = _one_line(exc)
    logrank = survival_metrics(f.time, f.event, f.risk)["logrank_p"]
    if np.isnan(logrank):
        reasons["logrank_p"] = "one risk group only"
    else:
        values["logrank_p"] = logrank
    return values, reasons


def _time_reason(f: _Frame, t: float) -> str | None:
    """Why the time-dependent AUC at ``t`` cannot be computed, or None."""
    if not (f.time.min() <= t < f.time.max()):
        return f"t={t:g} outside the follow-up [{f.time.min():g}, {f.time.max():g})"
    if not ((f.time <= t) & f.event).any():
        return f"no events by t={t:g}"
    return None


def _survival_replicates(
    f: _Frame, times: list[float], grid: np.ndarray | None, W: np.ndarray, names: list[str]
) -> dict[str, np.ndarray]:
    from sksurv.nonparametric import CensoringDistributionEstimator

    out: dict[str, np.ndarray] = {}
    if "c_index" in names:
        out["c_index"] = bs.concordance(f.time, f.event, f.risk, W)
    needs_ipcw = [n for n in names if n == "uno_c_index" or n == "ibs" or n.startswith("td_auc_")]
    if not needs_ipcw:
        return out
    y = _survival_array(f.time, f.event)
    cens = CensoringDistributionEstimator().fit(y)
    try:
        ipcw = cens.predict_ipcw(y)
    except ValueError:  # censoring survival 0 at an event time: the estimates already carry the reason
        ipcw = np.zeros(len(f.time))
    if "uno_c_index" in names:
        out["uno_c_index"] = bs.concordance(f.time, f.event, f.risk, W, row_weight=np.square(ipcw))
    for t in times:
        if _td_key(t) in names:
            case = (f.time <= t) & f.event
            out[_td_key(t)] = bs.weighted_mann_whitney(f.risk, W * (case * ipcw), W * (f.time > t))
    if "ibs" in names:
        g_time, g_grid = cens.predict_proba(f.time), cens.predict_proba(grid)
        brier = bs.survival_brier(f.time, f.event, f.surv_grid, grid, g_time, g_grid, W)
        out["ibs"] = bs.integrated(brier, grid)
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _estimates(f: _Frame, settings: EvaluationSettings, times: list[float], grid: np.ndarray | None):
    if f.kind == "classification":
        return _classification_estimates(f, settings)
    return _survival_estimates(f, times, grid)


def _replicates(f: _Frame, settings, times, grid, W, names: list[str]) -> dict[str, np.ndarray]:
    if f.kind == "classification":
        return _classification_replicates(f, settings, W, names)
    return _survival_replicates(f, times, grid, W, names)


def metric_names(kind: str, times: list[float]) -> list[str]:
    """The metrics of a task kind, in report order."""
    if kind == "classification":
        return ["auc", "average_precision", "balanced_accuracy", "weighted_f1", "brier", "ece", "sensitivity",
                "specificity"]  # fmt: skip
    return ["c_index", "uno_c_index", *[_td_key(t) for t in times], "ibs", "logrank_p"]


def evaluation_times(preds: pd.DataFrame, settings: EvaluationSettings) -> tuple[list[float], np.ndarray | None]:
    """Times of the time-dependent AUC (the settings', else the quartiles of the observed event times) and the
    grid of the integrated Brier score (100 points from the 10th to the 90th percentile of the observed times)."""
    time = preds["time"].to_numpy(dtype=float)
    observed = time[preds["event"].to_numpy(dtype=float) > 0]
    if settings.survival_times:
        times = sorted(float(t) for t in settings.survival_times)
    elif len(observed):
        times = sorted({float(np.round(t, 6)) for t in np.quantile(observed, [0.25, 0.5, 0.75])})
    else:
        times = []
    grid = None
    if len(time) >= 2:
        lo, hi = np.quantile(time, [0.1, 0.9])
        grid = np.linspace(lo, hi, SURV_GRID_POINTS) if hi > lo else None
    return times, grid


def metrics_with_intervals(
    preds: pd.DataFrame,
    kind: str,
    classes: list[str],
    settings: dict[str, Any] | EvaluationSettings | None = None,
) -> dict[str, Any]:
    """Every metric of the pooled frame: ``metrics`` {name: {estimate, ci_low, ci_high, resamples (usable),
    interval (the method that made it), reason}}, the interval ``method``, the ``survival_times`` and IBS range;
    and, for the plots (not JSON), the prepared
    ``frame``, the bootstrap ``weights`` and the IBS ``grid``."""
    settings = _settings(settings)
    times, grid = evaluation_times(preds, settings) if kind == "survival" else ([], None)
    names = metric_names(kind, times)
    f = _frame(preds, kind, classes, grid)
    if f.n_patients < settings.min_patients:
        values, reasons = {}, dict.fromkeys(names, f"fewer than {settings.min_patients} patients ({f.n_patients})")
    else:
        values, reasons = _estimates(f, settings, times, grid)
    groups = preds["case_id"].to_numpy()
    W = bs.bootstrap_weights(groups, settings.n_resamples, settings.seed)
    todo = [n for n in names if n in values and n not in P_VALUES]
    replicates = _replicates(f, settings, times, grid, W, todo) if todo else {}
    metrics = {}
    for name in names:
        low, high, used, interval = bs.interval(
            settings.interval if name in replicates else "percentile",
            replicates.get(name, []),
            lambda w, name=name: _replicates(f, settings, times, grid, w, [name])[name],
            groups,
            settings.confidence_level,
        )
        reason = reasons.get(name)
        if not reason and used == 0 and name not in P_VALUES:
            reason = "no bootstrap resample could be evaluated"
        metrics[name] = {
            "estimate": values.get(name, float("nan")),
            "ci_low": low,
            "ci_high": high,
            "resamples": used,
            "interval": interval if name not in P_VALUES else None,
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
    settings = _settings(settings)
    study = metrics_with_intervals(preds, kind, classes, settings)
    names = list(study["metrics"])
    folds = sorted(preds["fold"].unique()) if "fold" in preds.columns else []
    per_fold: dict[int, dict[str, float]] = {}
    fold_reasons: dict[int, dict[str, str]] = {}
    if len(folds) > 1:
        times, grid = study["survival_times"], study["grid"]
        for fold, rows in preds.groupby("fold"):
            values, reasons = _estimates(_frame(rows, kind, classes, grid), settings, times, grid)
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
    _plots(study, preds, kind, classes, outputs, title, settings)
    return result


def _legacy(rows: pd.DataFrame, kind: str, classes: list[str]) -> dict[str, Any]:
    """The counts, confusion matrix and metrics of :mod:`mambamil.train.metrics` (also used by training)."""
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
        calibration_plot(*_calibration_pairs(f.y, f.probs), settings.calibration_bins, outputs["calibration"], title,
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


# -- paired model comparison -------------------------------------------------------------------------------------
COMPARISON_COLUMNS = [
    "task", "metric", "model_a", "model_b", "n_patients", "estimate_a", "estimate_b", "difference", "ci_low",
    "ci_high", "p_value", "p_value_text", "resamples", "method", "reason",
]  # fmt: skip


def compare_models(
    predictions: dict[str, pd.DataFrame],
    kind: str,
    classes: list[str],
    task: str = "",
    settings: dict[str, Any] | EvaluationSettings | None = None,
) -> pd.DataFrame:
    """Every pair of models on the patients both predicted: difference in AUC (classification) or Harrell's
    c-index (survival), A − B, with its paired-bootstrap interval (the same resampled patients for both models)
    and two-sided p-value 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)) capped at 1 over the bootstrap replicates Δ*.

    DeLong's test is not included: no well-kept Python library provides it (scikit-learn, SciPy, statsmodels and
    scikit-survival do not)."""
    settings = _settings(settings)
    metric = "auc" if kind == "classification" else "c_index"
    rows = []
    for a, b in combinations(sorted(predictions), 2):
        rows.append(
            _compare_pair(predictions[a], predictions[b], a, b, kind, classes, metric, settings) | {"task": task}
        )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _compare_pair(pa, pb, a, b, kind, classes, metric, settings: EvaluationSettings) -> dict[str, Any]:
    merged = pa.merge(pb, on=["sample_id", "case_id"], suffixes=("_a", "_b"))

    def side(suffix: str) -> pd.DataFrame:
        cols = {c[: -len(suffix)]: merged[c] for c in merged.columns if c.endswith(suffix)}
        return pd.DataFrame({"sample_id": merged["sample_id"], "case_id": merged["case_id"], **cols})

    frame_a, frame_b = side("_a"), side("_b")
    row: dict[str, Any] = {"metric": metric, "model_a": a, "model_b": b, "method": _comparison_method(settings)}
    fa, fb = _frame(frame_a, kind, classes, None), _frame(frame_b, kind, classes, None)
    row["n_patients"] = fa.n_patients
    nan = float("nan")
    row.update(estimate_a=nan, estimate_b=nan, difference=nan, ci_low=nan, ci_high=nan, p_value=nan, reason=None,
               p_value_text="NaN", resamples=0)  # fmt: skip
    if fa.n_patients < settings.min_patients:
        row["reason"] = f"fewer than {settings.min_patients} shared patients ({fa.n_patients})"
        return row
    est_a, why_a = _primary(fa, metric, settings)
    est_b, why_b = _primary(fb, metric, settings)
    row.update(estimate_a=est_a, estimate_b=est_b)
    if why_a or why_b:
        row["reason"] = why_a or why_b
        return row
    groups = frame_a["case_id"].to_numpy()
    W = bs.bootstrap_weights(groups, settings.n_resamples, settings.seed)

    def difference(w: np.ndarray) -> np.ndarray:
        replicates_a = _replicates(fa, settings, [], None, w, [metric])[metric]
        return replicates_a - _replicates(fb, settings, [], None, w, [metric])[metric]

    delta = difference(W)
    delta = delta[np.isfinite(delta)]
    low, high, used, _ = bs.interval(settings.interval, delta, difference, groups, settings.confidence_level)
    p = min(1.0, 2 * min(np.mean(delta <= 0), np.mean(delta >= 0))) if delta.size else nan
    row.update(difference=est_a - est_b, ci_low=low, ci_high=high, p_value=float(p), resamples=used,
               p_value_text=bs.format_p_value(float(p), used))  # fmt: skip
    if not delta.size:
        row["reason"] = "no bootstrap resample could be evaluated"
    return row


def _primary(f: _Frame, metric: str, settings: EvaluationSettings) -> tuple[float, str | None]:
    values, reasons = _estimates(f, settings, [], None)
    return values.get(metric, float("nan")), reasons.get(metric)


def _comparison_method(settings: EvaluationSettings) -> str:
    return (
        f"paired bootstrap: {settings.n_resamples} resamples of the shared patients (seed {settings.seed}), "
        f"{100 * settings.confidence_level:g} % {bs.INTERVALS[settings.interval]} interval of A − B, "
        "p = 2·min(P(Δ*≤0), P(Δ*≥0)) over the usable resamples B (0 is shown as < 2/B)"
    )


# -- cohort tables ------------------------------------------------------------------------------------------------
def summary_table(metric_files: dict[tuple[str, str], Path]) -> pd.DataFrame:
    """One row per (task, model): fold mean ± std of each metric, and the pooled estimate with its bootstrap
    interval (``<metric>_pooled``, ``<metric>_ci_low``, ``<metric>_ci_high``, the usable ``<metric>_resamples``;
    ``<metric>_reason`` when it is NaN), the interval method and the small-test-set ``warnings``."""
    rows = []
    for (task, model), path in sorted(metric_files.items()):
        result = json.loads(Path(path).read_text())
        row: dict[str, Any] = {"task": task, "model": model, "n_patients": result.get("n_patients")}
        for key, stats in result["summary"].items():
            row[key] = _mean_std(stats)
        for key, m in result.get("metrics", {}).items():
            row[f"{key}_pooled"] = m["estimate"]
            row[f"{key}_ci_low"] = m["ci_low"]
            row[f"{key}_ci_high"] = m["ci_high"]
            row[f"{key}_reason"] = m["reason"]
            row[f"{key}_resamples"] = m.get("resamples")
        row["ci_method"] = result.get("interval_method")
        row["warnings"] = "; ".join(result.get("warnings", []))
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(stats: dict[str, Any]) -> str:
    mean, std = (np.nan if stats[k] is None else stats[k] for k in ("mean", "std"))
    return f"{mean:.3f} ± {std:.3f}"
