"""Survival metrics of one prediction frame: the model's survival curve, the evaluation times, point estimates
(lifelines, scikit-survival) and bootstrap replicates (:mod:`mambamil.evaluation.bootstrap`), one function each.
The registry (:mod:`mambamil.evaluation.registry`) names them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from mambamil.errors import MambamilError
from mambamil.evaluation import bootstrap as bs
from mambamil.evaluation.frame import EvaluationSettings, Frame, Unavailable, add_validation_cutoffs
from mambamil.evaluation.metrics import c_index

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
    """Each row's predicted survival at ``grid`` (rows × grid), the model's curve as the discrete-time model defines
    it: a right-continuous step function, 1 before the end of the first time bin and ``surv_k`` from the end of bin
    k on (``surv_k`` = P(surviving past that end)). The one definition IBS, td metrics, ensembles and plots use."""
    times, surv = curves
    out = np.empty((len(times), len(grid)))
    for i, (t, s) in enumerate(zip(times, surv, strict=True)):
        out[i] = np.r_[1.0, s][np.searchsorted(t, grid, side="right")]
    return out


def evaluation_times(preds: pd.DataFrame, settings: EvaluationSettings) -> tuple[list[float], np.ndarray | None]:
    """Times of the time-dependent AUC (``evaluation.survival_times``, else the three quartiles of the observed
    event times of ``preds``, the development cohort) and the grid of the integrated Brier score (100 points from
    the first to the last of those times)."""
    observed = preds["time"].to_numpy(dtype=float)[preds["event"].to_numpy(dtype=float) > 0]
    if settings.survival_times:
        times = sorted(float(t) for t in settings.survival_times)
    elif len(observed):
        times = sorted({float(np.round(t, 6)) for t in np.quantile(observed, [0.25, 0.5, 0.75])})
    else:
        times = []
    return times, ibs_grid(times)


def ibs_grid(times: list[float]) -> np.ndarray | None:
    """The integrated Brier score's grid: 100 points from the first to the last evaluation time (None below two)."""
    return np.linspace(times[0], times[-1], SURV_GRID_POINTS) if len(times) >= 2 else None


def positive_censoring_time(time: np.ndarray, event: np.ndarray) -> float:
    """The end of the time range in which the Kaplan–Meier censoring survival is positive: the first observed time
    at which it reaches 0, else infinity (NaN without events). Metrics truncated at τ (strictly before it) never
    divide by a zero censoring survival."""
    from sksurv.nonparametric import CensoringDistributionEstimator

    try:
        cens = CensoringDistributionEstimator().fit(survival_array(time, event))
    except ValueError:  # no events: no survival metric either, each NaN with its reason
        return float("nan")
    unique = np.unique(time)
    zero = unique[cens.predict_proba(unique) <= 0]
    return float(zero.min()) if zero.size else float("inf")


def truncation_time(preds: pd.DataFrame, settings: EvaluationSettings, external: bool = False) -> tuple[float, str]:
    """τ of Uno's c-index, the time-dependent AUC and the IBS, and where it comes from: ``evaluation.tau``, else the
    largest time at which the censoring survival is positive in every fold (``fold`` column; the whole frame
    without one). On the development cohort a τ beyond the follow-up, or survival times outside every fold's
    follow-up, are errors naming the setting; an ``external`` cohort whose follow-up is shorter falls back to its
    own default τ (said in the source) and NaN metrics with their reasons."""
    time = preds["time"].to_numpy(dtype=float)
    groups = [rows for _, rows in preds.groupby("fold")] if "fold" in preds.columns else [preds]
    spans = [(rows["time"].min(), rows["time"].max()) for rows in groups]
    for t in [] if external else settings.survival_times:
        if not any(lo <= t < hi for lo, hi in spans):
            raise MambamilError(
                f"evaluation.survival_times: t={t:g} is outside the follow-up of every fold "
                f"({', '.join(f'[{lo:g}, {hi:g})' for lo, hi in spans)})"
            )
    note = ""
    if settings.tau is not None:
        if not len(time) or time.min() < settings.tau <= time.max():
            return float(settings.tau), "evaluation.tau"
        if not external:
            raise MambamilError(
                f"evaluation.tau = {settings.tau:g} is beyond the follow-up [{time.min():g}, {time.max():g}] of the "
                "evaluated patients"
            )
        note = f" (evaluation.tau = {settings.tau:g} is beyond this cohort's follow-up)"
    taus = np.array([positive_censoring_time(rows["time"].to_numpy(float), rows["event"].to_numpy(float))
                     for rows in groups])  # fmt: skip
    where = "every fold" if len(groups) > 1 else "the evaluated patients"
    if not np.isfinite(taus).any():
        return float("nan"), f"none: censoring survival > 0 through the last follow-up in {where}{note}"
    return float(np.nanmin(taus)), f"end of the times with censoring survival > 0 in {where}{note}"


# -- shared pieces -----------------------------------------------------------------------------------------------
def check_events(f: Frame) -> None:
    """Raise when no survival metric can be computed on the frame."""
    if not f.event.any():
        raise Unavailable("no events")


def survival_array(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event).astype(bool), time=np.asarray(time, dtype=float))


def truncated(f: Frame) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) censored at τ: an event at or after τ counts as censored at τ. For times t < τ the IPCW
    estimators are unchanged (as scikit-survival's ``tau``), and a censoring tied with an event at the last
    follow-up no longer zeroes the censoring survival at an event."""
    if f.tau is None or not np.isfinite(f.tau):
        return f.time, f.event
    return np.minimum(f.time, f.tau), f.event & (f.time < f.tau)


def _outcome(f: Frame) -> np.ndarray:
    """The truncated outcome as scikit-survival's structured array (cached)."""
    if "outcome" not in f.cache:
        f.cache["outcome"] = survival_array(*truncated(f))
    return f.cache["outcome"]


def _censoring(f: Frame):
    """The Kaplan–Meier censoring distribution of the truncated frame and each row's inverse weight 1/G(tᵢ) (0
    where the censoring survival is 0: the estimates carry that reason)."""
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
    if f.tau is not None and np.isfinite(f.tau) and t >= f.tau:
        return f"t={t:g} not before τ={f.tau:g}"
    if not (f.time.min() <= t < f.time.max()):
        return f"t={t:g} outside the follow-up [{f.time.min():g}, {f.time.max():g})"
    if not ((f.time <= t) & f.event).any():
        return f"no events by t={t:g}"
    return None


def _check_grid(f: Frame) -> None:
    if f.grid is None or len(f.grid) < 2:
        raise Unavailable("no time range for the integrated Brier score (needs two survival times)")
    if f.tau is not None and np.isfinite(f.tau) and f.grid[-1] >= f.tau:
        raise Unavailable(f"integrated Brier score range ends at {f.grid[-1]:g}, not before τ={f.tau:g}")
    if f.grid[-1] >= f.time.max():
        raise Unavailable(f"integrated Brier score range ends at {f.grid[-1]:g}, after the last follow-up")


def kaplan_meier_at(time: np.ndarray, event: np.ndarray, W: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Kaplan–Meier survival at ``grid`` per resample (resamples ``W`` × grid), each patient weighted by its
    resampling count; row of ones = scikit-survival's ``SurvivalFunctionEstimator`` (the no-skill model)."""
    event = np.asarray(event, dtype=bool)
    at = np.unique(time[event])
    if at.size == 0:
        return np.ones((W.shape[0], len(grid)))
    deaths = W @ ((time[:, None] == at[None, :]) & event[:, None]).astype(float)
    at_risk = W @ (time[:, None] >= at[None, :]).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        hazard = np.where(at_risk > 0, deaths / np.where(at_risk > 0, at_risk, 1), 0.0)
    surv = np.concatenate([np.ones((W.shape[0], 1)), np.cumprod(1 - hazard, axis=1)], axis=1)
    return surv[:, np.searchsorted(at, grid, side="right")]


#: How the risk-group cut-off is fixed, written beside it.
RISK_CUTOFF_METHOD = (
    "median risk of each fold's validation patients, carried to its test patients; external cohorts: the median "
    "over folds"
)


#: The risk groups' cut-off when no fold has one (a bare prediction frame, or a fold without validation risks).
MEDIAN_CUTOFF = "median risk of the evaluated patients (no validation cut-off for every patient)"


def risk_cutoff(val: pd.DataFrame) -> tuple[float, str | None]:
    """The risk-group cut-off fixed on one fold's validation predictions: their median risk, or (NaN, reason)."""
    risk = val["risk"].to_numpy(dtype=float) if "risk" in val.columns else np.array([])
    risk = risk[np.isfinite(risk)]
    return (float(np.median(risk)), None) if risk.size else (float("nan"), "no validation risks")


def add_risk_cutoffs(preds: pd.DataFrame, val_files: dict[int, Path]) -> pd.DataFrame:
    """``risk_cutoff`` (and ``risk_cutoff_reason``) per test row from its own fold's validation predictions."""
    return add_validation_cutoffs(preds, val_files, "risk_cutoff", risk_cutoff)


def risk_groups(f: Frame) -> tuple[np.ndarray, str]:
    """High-risk rows (risk above the row's cut-off) and how the cut-off was fixed: each fold's cut-off from its
    validation patients (``risk_cutoff`` column), or the median risk of the frame when none was given."""
    if f.risk_cutoff is not None and np.isfinite(f.risk_cutoff).all():
        return f.risk > f.risk_cutoff, "cut-off fixed on validation predictions"
    return f.risk > np.median(f.risk), MEDIAN_CUTOFF


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
    y = survival_array(f.time, f.event)
    tau = f.tau if f.tau is not None and np.isfinite(f.tau) else None
    return float(concordance_index_ipcw(y, y, f.risk, tau=tau)[0])


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
    _check_grid(f)
    y = _outcome(f)
    return float(integrated_brier_score(y, y, f.surv_grid, f.grid))


def ibs_km(f: Frame) -> float:
    from sksurv.metrics import integrated_brier_score
    from sksurv.nonparametric import SurvivalFunctionEstimator

    check_events(f)
    _check_grid(f)
    km = SurvivalFunctionEstimator().fit(survival_array(f.time, f.event)).predict_proba(f.grid)
    y = _outcome(f)
    return float(integrated_brier_score(y, y, np.broadcast_to(km, (len(f.time), len(f.grid))), f.grid))


def ipa(f: Frame) -> float:
    return 1.0 - ibs(f) / ibs_km(f)


def logrank_p(f: Frame) -> float:
    from lifelines.statistics import logrank_test

    check_events(f)
    high, _ = risk_groups(f)
    if high.all() or not high.any():
        raise Unavailable("one risk group only")
    res = logrank_test(f.time[high], f.time[~high], event_observed_A=f.event[high], event_observed_B=f.event[~high])
    return float(res.p_value)


# -- bootstrap replicates (resamples W × rows) ---------------------------------------------------------------------
def harrell_c_index_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    return bs.concordance(f.time, f.event, f.risk, W)


def uno_c_index_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    _, ipcw = _censoring(f)
    time, event = truncated(f)
    return bs.concordance(time, event, f.risk, W, row_weight=np.square(ipcw))


def td_auc_replicates(f: Frame, W: np.ndarray, t: float) -> np.ndarray:
    _, ipcw = _censoring(f)
    time, event = truncated(f)
    case = (time <= t) & event
    return bs.weighted_mann_whitney(f.risk, W * (case * ipcw), W * (time > t))


def _brier_parts(f: Frame, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per resample and grid time, the IPCW-weighted sums of the cases (events by t, 1/G(tᵢ)) and of the controls
    (alive at t, 1/G(t)), each divided by the resample's size: Brier(t) = S(t)²·cases + (1 − S(t))²·controls for a
    curve S shared by every patient."""
    cens, ipcw = _censoring(f)
    time, event = truncated(f)
    g_grid = cens.predict_proba(f.grid)
    inv_grid = np.where(g_grid > 0, 1.0 / np.where(g_grid > 0, g_grid, 1), 0.0)
    cases = W @ (((time[:, None] <= f.grid[None, :]) & event[:, None]) * ipcw[:, None])
    controls = (W @ (time[:, None] > f.grid[None, :]).astype(float)) * inv_grid[None, :]
    size = W.sum(axis=1, keepdims=True)
    return cases / size, controls / size


def ibs_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    cens, _ = _censoring(f)
    time, event = truncated(f)
    g_time, g_grid = cens.predict_proba(time), cens.predict_proba(f.grid)
    brier = bs.survival_brier(time, event, f.surv_grid, f.grid, g_time, g_grid, W)
    return bs.integrated(brier, f.grid)


def ibs_km_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    km = kaplan_meier_at(f.time, f.event, W, f.grid)
    cases, controls = _brier_parts(f, W)
    return bs.integrated(np.square(km) * cases + np.square(1 - km) * controls, f.grid)


def ipa_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - ibs_replicates(f, W) / ibs_km_replicates(f, W)
