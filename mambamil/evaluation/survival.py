"""Survival metrics of one prediction frame: the model's survival curve, the evaluation times, point estimates
(lifelines, scikit-survival) and bootstrap replicates (:mod:`mambamil.evaluation.bootstrap`), one function each.
The registry (:mod:`mambamil.evaluation.registry`) names them."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from mambamil.evaluation import bootstrap as bs
from mambamil.evaluation.frame import EvaluationSettings, Frame, Unavailable
from mambamil.evaluation.metrics import c_index, survival_metrics

#: Prediction columns of the model's survival curve: ``surv_k`` = predicted probability of surviving past
#: ``surv_time_k``, the end of time bin k (k = 1 … n_bins).
SURV_COLUMN = re.compile(r"^surv_(\d+)$")
SURV_GRID_POINTS = 100


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


# -- shared pieces -----------------------------------------------------------------------------------------------
def check_events(f: Frame) -> None:
    """Raise when no survival metric can be computed on the frame."""
    if not f.event.any():
        raise Unavailable("no events")


def survival_array(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=event.astype(bool), time=time.astype(float))


def _outcome(f: Frame) -> np.ndarray:
    if "outcome" not in f.cache:
        f.cache["outcome"] = survival_array(f.time, f.event)
    return f.cache["outcome"]


def _censoring(f: Frame):
    """The Kaplan–Meier censoring distribution of the frame and each row's inverse weight 1/G(tᵢ) (0 where the
    censoring survival is 0: the estimates carry that reason)."""
    if "censoring" not in f.cache:
        from sksurv.nonparametric import CensoringDistributionEstimator

        cens = CensoringDistributionEstimator().fit(_outcome(f))
        try:
            ipcw = cens.predict_ipcw(_outcome(f))
        except ValueError:
            ipcw = np.zeros(len(f.time))
        f.cache["censoring"] = (cens, ipcw)
    return f.cache["censoring"]


def time_reason(f: Frame, t: float) -> str | None:
    """Why the time-dependent AUC at ``t`` cannot be computed, or None."""
    if not (f.time.min() <= t < f.time.max()):
        return f"t={t:g} outside the follow-up [{f.time.min():g}, {f.time.max():g})"
    if not ((f.time <= t) & f.event).any():
        return f"no events by t={t:g}"
    return None


# -- point estimates ----------------------------------------------------------------------------------------------
def harrell_c_index(f: Frame) -> float:
    check_events(f)
    value = c_index(f.time, f.event, f.risk)
    if np.isnan(value):
        raise Unavailable("no comparable pairs")
    return value


def uno_c_index(f: Frame) -> float:
    from sksurv.metrics import concordance_index_ipcw

    check_events(f)
    y = _outcome(f)
    return float(concordance_index_ipcw(y, y, f.risk)[0])


def td_auc(f: Frame, t: float) -> float:
    from sksurv.metrics import cumulative_dynamic_auc

    check_events(f)
    why = time_reason(f, t)
    if why:
        raise Unavailable(why)
    y = _outcome(f)
    return float(cumulative_dynamic_auc(y, y, f.risk, [t])[0][0])


def ibs(f: Frame) -> float:
    from sksurv.metrics import integrated_brier_score

    check_events(f)
    if f.surv_grid is None:
        raise Unavailable("no per-bin survival curves (surv_k, surv_time_k) in the predictions")
    if f.grid is None or len(f.grid) < 2:
        raise Unavailable("no time range for the integrated Brier score")
    y = _outcome(f)
    return float(integrated_brier_score(y, y, f.surv_grid, f.grid))


def logrank_p(f: Frame) -> float:
    check_events(f)
    value = survival_metrics(f.time, f.event, f.risk)["logrank_p"]
    if np.isnan(value):
        raise Unavailable("one risk group only")
    return value


# -- bootstrap replicates (resamples W × rows) ---------------------------------------------------------------------
def harrell_c_index_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    return bs.concordance(f.time, f.event, f.risk, W)


def uno_c_index_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    _, ipcw = _censoring(f)
    return bs.concordance(f.time, f.event, f.risk, W, row_weight=np.square(ipcw))


def td_auc_replicates(f: Frame, W: np.ndarray, t: float) -> np.ndarray:
    _, ipcw = _censoring(f)
    case = (f.time <= t) & f.event
    return bs.weighted_mann_whitney(f.risk, W * (case * ipcw), W * (f.time > t))


def ibs_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    cens, _ = _censoring(f)
    g_time, g_grid = cens.predict_proba(f.time), cens.predict_proba(f.grid)
    brier = bs.survival_brier(f.time, f.event, f.surv_grid, f.grid, g_time, g_grid, W)
    return bs.integrated(brier, f.grid)
