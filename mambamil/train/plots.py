"""Plots people would rather look at than read: loss curves, ROC curves, Kaplan–Meier curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from sklearn.metrics import roc_curve

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


def km_plot(time: np.ndarray, event: np.ndarray, risk: np.ndarray, path: str | Path, title: str) -> None:
    """Kaplan–Meier curves of predicted high- vs low-risk patients (split at the median risk)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    high = np.asarray(risk) > np.median(risk)
    for mask, name in ((~high, "low risk"), (high, "high risk")):
        if mask.any():
            KaplanMeierFitter(label=f"{name} (n={int(mask.sum())})").fit(
                time[mask], event[mask]
            ).plot_survival_function(ax=ax, ci_show=False)
    ax.set(xlabel="time", ylabel="survival probability", title=title)
    _save(fig, path)
