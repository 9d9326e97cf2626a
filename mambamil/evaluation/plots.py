"""Plots people would rather look at than read: loss curves, ROC and precision–recall curves with bootstrap bands,
reliability curves, Kaplan–Meier curves, time-dependent AUC."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from mambamil.evaluation import bootstrap as bs
from mambamil.fileio import atomic_output


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def loss_curves(log: pd.DataFrame, path: str | Path, monitor: str) -> None:
    """Training/validation loss per epoch, and the monitored validation metric."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(log["epoch"], log["train_loss"], label="train")
    axes[0].plot(log["epoch"], log["val_loss"], label="validation")
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[0].legend()
    axes[1].plot(log["epoch"], log[monitor], color="C2")
    best = log.loc[log["is_best"].astype(bool), "epoch"]
    for e in best.tail(1):
        axes[1].axvline(e, color="grey", ls="--", lw=1, label=f"best epoch {e}")
    axes[1].set(xlabel="epoch", ylabel=monitor, title=f"validation {monitor}")
    axes[1].legend()
    _save(fig, path)


def roc_plot(y_true: np.ndarray, probs: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    """One-vs-rest ROC curves on the held-out test predictions."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    indices = [1] if len(classes) == 2 else range(len(classes))
    for k in indices:
        positive = np.asarray(y_true) == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, k])
        ax.plot(fpr, tpr, label=classes[k])
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    _save(fig, path)


def km_plot(
    time: np.ndarray,
    event: np.ndarray,
    high: np.ndarray,
    path: str | Path,
    title: str,
    cutoff: str = "",
    time_unit: str | None = None,
) -> None:
    """Kaplan–Meier curves of predicted high- vs low-risk patients (``high``: risk above the cut-off, ``cutoff``
    says how it was fixed)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    high = np.asarray(high, dtype=bool)
    for mask, name in ((~high, "low risk"), (high, "high risk")):
        if mask.any():
            KaplanMeierFitter(label=f"{name} (n={int(mask.sum())})").fit(
                time[mask], event[mask]
            ).plot_survival_function(ax=ax, ci_show=False)
    ax.set(xlabel=f"time ({time_unit})" if time_unit else "time", ylabel="survival probability", title=title)
    if cutoff:
        fig.text(0.5, -0.02, f"risk groups: {cutoff}", ha="center", fontsize=8)
    _save(fig, path)


def _band(ax: plt.Axes, grid: np.ndarray, replicates: np.ndarray, level: float, color: str) -> None:
    """Pointwise percentile band of bootstrap curves (rows of ``replicates``, NaN rows left out)."""
    valid = replicates[np.isfinite(replicates).all(axis=1)]
    if len(valid):
        alpha = (1 - level) / 2
        low, high = np.quantile(valid, [alpha, 1 - alpha], axis=0)
        ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)


def roc_pr_plot(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    W: np.ndarray,
    path: str | Path,
    title: str,
    level: float = 0.95,
) -> None:
    """ROC and precision–recall curves (one-vs-rest per class for multiclass tasks) on the pooled test
    predictions, each with its pointwise bootstrap band (the resamples ``W`` of the intervals)."""
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4.2))
    grid = np.linspace(0, 1, 101)
    indices = [1] if len(classes) == 2 else range(len(classes))
    for i, k in enumerate(indices):
        positive = np.asarray(y_true) == k
        if positive.all() or not positive.any():
            continue
        color = f"C{i}"
        fpr, tpr, _ = roc_curve(positive, probs[:, k])
        roc_ax.plot(fpr, tpr, color=color, label=classes[k])
        _band(roc_ax, grid, bs.roc_band(probs[:, k], positive, W, grid), level, color)
        precision, recall, _ = precision_recall_curve(positive, probs[:, k])
        pr_ax.step(
            recall, precision, where="post", color=color, label=f"{classes[k]} (prevalence {positive.mean():.2f})"
        )
        _band(pr_ax, grid, bs.pr_band(probs[:, k], positive, W, grid), level, color)
    roc_ax.plot([0, 1], [0, 1], color="grey", ls=":")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC — {title}")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision–recall", ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8)
    fig.text(0.5, -0.02, f"bands: pointwise {100 * level:g} % patient-bootstrap percentiles", ha="center", fontsize=8)
    _save(fig, path)


def calibration_plot(
    confidence: np.ndarray, outcome: np.ndarray, n_bins: int, path: str | Path, title: str, what: str
) -> None:
    """Reliability curve (scikit-learn's equal-width bins) over a histogram of the predicted probabilities."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.8, 5.2), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="perfectly calibrated")
    if len(np.unique(outcome)) > 1:
        observed, predicted = calibration_curve(outcome, confidence, n_bins=n_bins, strategy="uniform")
        ax.plot(predicted, observed, marker="o", label="model")
    ax.set(ylabel="observed frequency", title=f"calibration — {title}", ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    hist.hist(confidence, bins=np.linspace(0, 1, n_bins + 1), color="C0", alpha=0.6)
    hist.set(xlabel=f"predicted probability ({what})", ylabel="patients")
    _save(fig, path)


def time_auc_plot(
    metrics: dict, times: list[float], path: str | Path, title: str, time_unit: str | None = None
) -> None:
    """Time-dependent (cumulative/dynamic) AUC at each evaluation time with its bootstrap interval, beside
    Harrell's and Uno's c-index."""
    fig, ax = plt.subplots(figsize=(5, 3.8))
    pts = [(t, metrics[f"td_auc_{t:g}"]) for t in times if np.isfinite(metrics[f"td_auc_{t:g}"]["estimate"])]
    if pts:
        t = np.array([p[0] for p in pts])
        est = np.array([p[1]["estimate"] for p in pts])
        low = np.array([p[1]["ci_low"] for p in pts])
        high = np.array([p[1]["ci_high"] for p in pts])
        # the interval drawn from its ends, not as errors around the estimate: a pooled estimate may lie outside
        # its bootstrap interval (matplotlib refuses negative error bars)
        ax.vlines(t, low, high, color="C0", lw=1.5)
        ax.plot(t, est, marker="o", color="C0", label="AUC(t) with its interval")
    for name, style in (("c_index", "--"), ("uno_c_index", ":")):
        value = metrics.get(name, {}).get("estimate", float("nan"))
        if np.isfinite(value):
            ax.axhline(value, color="grey", ls=style, lw=1, label=f"{name} {value:.3f}")
    ax.axhline(0.5, color="black", lw=0.5)
    ax.set(xlabel=f"time ({time_unit})" if time_unit else "time", ylabel="cumulative/dynamic AUC",
           title=f"time-dependent AUC — {title}", ylim=(0, 1.02))  # fmt: skip
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
