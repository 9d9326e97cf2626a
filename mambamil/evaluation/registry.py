"""The metric registry: adding a metric is one entry here (its name, the report's label, which direction is
better, the task kind, the point estimate and the bootstrap replicates). Evaluation, the bootstrap intervals
and the report all read it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mambamil.errors import one_line
from mambamil.evaluation import classification as cls
from mambamil.evaluation import survival as surv
from mambamil.evaluation.frame import Frame, Unavailable


@dataclass(frozen=True)
class Metric:
    """One metric. ``estimate(frame[, t])`` returns the value or raises :class:`Unavailable` with the reason;
    ``replicates(frame, W[, t])`` evaluates every bootstrap resample at once (None: no interval, e.g. a test's
    p-value). ``per_time`` metrics are evaluated at each evaluation time (named ``<name>_<t>``)."""

    name: str
    label: str
    kind: str  # "classification" | "survival"
    direction: str  # "higher" | "lower" is better, or "p-value"
    estimate: Callable[..., float]
    replicates: Callable[..., np.ndarray] | None
    per_time: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("auc", "AUC", "classification", "higher", cls.auc, cls.auc_replicates),
    Metric("average_precision", "average precision", "classification", "higher", cls.average_precision,
           cls.average_precision_replicates),
    Metric("balanced_accuracy", "balanced accuracy", "classification", "higher", cls.balanced_accuracy,
           cls.balanced_accuracy_replicates),
    Metric("weighted_f1", "weighted F1", "classification", "higher", cls.weighted_f1, cls.weighted_f1_replicates),
    Metric("brier", "Brier score", "classification", "lower", cls.brier, cls.brier_replicates),
    Metric("ece", "expected calibration error", "classification", "lower", cls.ece, cls.ece_replicates),
    Metric("sensitivity", "sensitivity (validation-chosen threshold)", "classification", "higher",
           cls.sensitivity, cls.sensitivity_replicates),
    Metric("specificity", "specificity (validation-chosen threshold)", "classification", "higher",
           cls.specificity, cls.specificity_replicates),
    Metric("c_index", "Harrell's c-index", "survival", "higher", surv.harrell_c_index,
           surv.harrell_c_index_replicates),
    Metric("uno_c_index", "Uno's c-index (IPCW)", "survival", "higher", surv.uno_c_index,
           surv.uno_c_index_replicates),
    Metric("td_auc", "AUC(t = {t})", "survival", "higher", surv.td_auc, surv.td_auc_replicates, per_time=True),
    Metric("ibs", "integrated Brier score", "survival", "lower", surv.ibs, surv.ibs_replicates),
    Metric("ibs_km", "integrated Brier score, Kaplan–Meier (no skill)", "survival", "lower", surv.ibs_km,
           surv.ibs_km_replicates),
    Metric("ipa", "index of prediction accuracy (1 − IBS / IBS KM)", "survival", "higher", surv.ipa,
           surv.ipa_replicates),
    Metric("logrank_p", "log-rank p (risk groups at the validation cut-off)", "survival", "p-value",
           surv.logrank_p, None),
)  # fmt: skip
BY_NAME = {m.name: m for m in METRICS}


def time_key(name: str, t: float) -> str:
    """The name of a per-time metric at time ``t`` (``td_auc_36.8``)."""
    return f"{name}_{t:g}"


def lookup(key: str) -> tuple[Metric, tuple[float, ...]]:
    """The metric behind a (possibly per-time) metric name and its time argument."""
    if key in BY_NAME:
        return BY_NAME[key], ()
    for m in METRICS:
        if m.per_time and key.startswith(m.name + "_"):
            return m, (float(key.removeprefix(m.name + "_")),)
    raise KeyError(key)


def metric_names(kind: str, times: list[float]) -> list[str]:
    """The metrics of a task kind, in report order."""
    names = []
    for m in METRICS:
        if m.kind == kind:
            names += [time_key(m.name, t) for t in times] if m.per_time else [m.name]
    return names


def label(key: str) -> str:
    """The report's label of a metric name (per-time metrics named by their time); unknown names as they are."""
    try:
        m, args = lookup(key)
    except KeyError:
        return key
    return m.label.format(t=f"{args[0]:g}") if args else m.label


def has_interval(key: str) -> bool:
    """Whether the metric gets a bootstrap interval (p-values do not)."""
    try:
        return lookup(key)[0].replicates is not None
    except KeyError:
        return False


def estimates(f: Frame, names: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """The point estimate of each metric, or its reason (a metric that cannot be computed is never an error)."""
    values: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for key in names:
        m, args = lookup(key)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values[key] = float(m.estimate(f, *args))
        except Unavailable as exc:
            reasons[key] = str(exc)
        except (ValueError, ZeroDivisionError) as exc:
            reasons[key] = one_line(exc) or type(exc).__name__  # the reason of a NaN metric
    return values, reasons


def replicates(f: Frame, W: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The bootstrap replicates of each metric that has them (resamples ``W`` × rows)."""
    out = {}
    for key in names:
        m, args = lookup(key)
        if m.replicates is not None:
            out[key] = m.replicates(f, W, *args)
    return out
