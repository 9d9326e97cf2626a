"""Classification metrics of one prediction frame: point estimates (scikit-learn) and bootstrap replicates
(:mod:`mambamil.evaluation.bootstrap`), one function each, and the operating point chosen on validation
predictions. The registry (:mod:`mambamil.evaluation.registry`) names them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mambamil.columns import probability_column
from mambamil.evaluation import bootstrap as bs
from mambamil.evaluation.frame import Frame, Unavailable, add_validation_cutoffs


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
    return add_validation_cutoffs(preds, val_files, "threshold", lambda val: operating_threshold(val, classes))


#: How the operating point is fixed, written beside it.
OPERATING_POINT_METHOD = (
    "Youden's J on each fold's validation predictions, carried to its test patients; external cohorts: the median "
    "over folds"
)


# -- shared pieces -----------------------------------------------------------------------------------------------
def predicted_class(f: Frame) -> np.ndarray:
    return f.probs.argmax(axis=1)


def brier_rows(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-patient squared error: (p₁ − y)² (binary), Σₖ (pₖ − [y = k])² (multiclass), as scikit-learn's
    ``brier_score_loss``."""
    if probs.shape[1] == 2:
        return np.square(probs[:, 1] - (y == 1))
    return np.square(probs - np.eye(probs.shape[1])[y]).sum(axis=1)


def calibration_pairs(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome) of the reliability curve: the positive class's probability and whether the patient
    is positive (binary), or the top-class probability and whether the top class is right (multiclass)."""
    if probs.shape[1] == 2:
        return probs[:, 1], (y == 1).astype(float)
    return probs.max(axis=1), (probs.argmax(axis=1) == y).astype(float)


def _check_ranking(f: Frame) -> None:
    """Raise the reason a ranking metric (AUC, average precision) cannot be computed."""
    k = len(f.classes)
    if len(np.unique(f.y)) < 2:
        raise Unavailable("only one class present")
    missing = [f.classes[c] for c in range(k) if not (f.y == c).any()]
    if k > 2 and missing:
        raise Unavailable(f"no patients of class {missing}")


def _check_operating_point(f: Frame, cls: int) -> None:
    """Raise the reason sensitivity (``cls`` 1) or specificity (0) cannot be computed."""
    if len(f.classes) != 2:
        raise Unavailable("operating point for binary tasks only")
    if f.threshold is None:
        raise Unavailable("no operating point (validation predictions not given)")
    if not np.isfinite(f.threshold).all():
        raise Unavailable(f"no operating point ({f.threshold_reason or 'threshold missing'})")
    if not (f.y == cls).any():
        raise Unavailable(f"no {'positive' if cls else 'negative'} patients")


# -- point estimates ----------------------------------------------------------------------------------------------
def auc(f: Frame) -> float:
    from sklearn.metrics import roc_auc_score

    _check_ranking(f)
    if len(f.classes) == 2:
        return roc_auc_score(f.y, f.probs[:, 1])
    k = len(f.classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return roc_auc_score(f.y, f.probs, multi_class="ovr", average="macro", labels=list(range(k)))


def average_precision(f: Frame) -> float:
    from sklearn.metrics import average_precision_score
    from sklearn.preprocessing import label_binarize

    _check_ranking(f)
    if len(f.classes) == 2:
        return average_precision_score(f.y == 1, f.probs[:, 1])
    k = len(f.classes)
    return average_precision_score(label_binarize(f.y, classes=list(range(k))), f.probs, average="macro")


def balanced_accuracy(f: Frame) -> float:
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return balanced_accuracy_score(f.y, predicted_class(f))


def weighted_f1(f: Frame) -> float:
    from sklearn.metrics import f1_score

    return f1_score(f.y, predicted_class(f), average="weighted", zero_division=0)


def brier(f: Frame) -> float:
    from sklearn.metrics import brier_score_loss

    if len(f.classes) == 2:
        return brier_score_loss(f.y, f.probs[:, 1], pos_label=1)
    return brier_score_loss(f.y, f.probs, labels=list(range(len(f.classes))))


def ece(f: Frame) -> float:
    """No library computes it: the bootstrap estimator at weight one (checked against ``calibration_curve``)."""
    return float(ece_replicates(f, np.ones((1, len(f.y))))[0])


def sensitivity(f: Frame) -> float:
    from sklearn.metrics import recall_score

    _check_operating_point(f, 1)
    return recall_score(f.y, (f.probs[:, 1] >= f.threshold).astype(int), pos_label=1)


def specificity(f: Frame) -> float:
    from sklearn.metrics import recall_score

    _check_operating_point(f, 0)
    return recall_score(f.y, (f.probs[:, 1] >= f.threshold).astype(int), pos_label=0)


# -- bootstrap replicates (resamples W × rows) ---------------------------------------------------------------------
def auc_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    return bs.macro_ovr_auc(f.y, f.probs, W)


def average_precision_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    return bs.macro_average_precision(f.y, f.probs, W)


def balanced_accuracy_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    return bs.balanced_accuracy(f.y, predicted_class(f), len(f.classes), W)


def weighted_f1_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    return bs.weighted_f1(f.y, predicted_class(f), len(f.classes), W)


def brier_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    return bs.weighted_mean(brier_rows(f.y, f.probs), W)


def ece_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    return bs.expected_calibration_error(*calibration_pairs(f.y, f.probs), f.settings.calibration_bins, W)


def sensitivity_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    return bs.recall(f.probs[:, 1] >= f.threshold, f.y == 1, W)


def specificity_replicates(f: Frame, W: np.ndarray) -> np.ndarray:
    return bs.recall(f.probs[:, 1] < f.threshold, f.y == 0, W)
