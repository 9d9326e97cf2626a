"""Per-fold metrics shared with training: AUC, balanced accuracy, F1, confusion matrix, Harrell's c-index
(lifelines), Kaplan–Meier log-rank (lifelines)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """AUC (binary, or macro one-vs-rest), balanced accuracy, weighted F1 and the confusion matrix."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    pred = probs.argmax(axis=1)
    out: dict[str, Any] = {
        "n": len(y_true),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)) if len(y_true) else float("nan"),
        "weighted_f1": float(f1_score(y_true, pred, average="weighted", zero_division=0)),
        "confusion_matrix": confusion_matrix(y_true, pred, labels=list(range(len(classes)))).tolist(),
        "classes": list(classes),
    }
    present = np.unique(y_true)
    if len(present) < 2:
        out["auc"] = float("nan")
    elif len(classes) == 2:
        out["auc"] = float(roc_auc_score(y_true, probs[:, 1]))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["auc"] = float(
                roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=list(range(len(classes))))
            )
    return out


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index: higher risk should mean shorter time (lifelines)."""
    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    if len(time) < 2 or event.sum() == 0:
        return float("nan")
    try:
        return float(concordance_index(time, -risk, event))
    except ZeroDivisionError:  # no admissible pairs
        return float("nan")


def survival_metrics(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> dict[str, Any]:
    """c-index, and a log-rank test between predicted high- and low-risk groups (split at the median risk)."""
    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    high = risk > np.median(risk)
    out: dict[str, Any] = {"n": len(time), "events": int(event.sum()), "c_index": c_index(time, event, risk)}
    if high.any() and (~high).any():
        res = logrank_test(time[high], time[~high], event_observed_A=event[high], event_observed_B=event[~high])
        out["logrank_p"] = float(res.p_value)
    else:
        out["logrank_p"] = float("nan")
    return out
