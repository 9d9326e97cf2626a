"""The evaluation settings and one prediction frame prepared for its metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mambamil.columns import probability_column
from mambamil.config import settings_from_config
from mambamil.evaluation import bootstrap as bs


@dataclass(frozen=True)
class EvaluationSettings:
    """The ``evaluation`` section of the config (defaults live in the schema)."""

    n_resamples: int
    seed: int
    confidence_level: float
    min_patients: int
    calibration_bins: int
    survival_times: list[float]
    tau: float | None
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


def as_settings(settings: dict[str, Any] | EvaluationSettings | None) -> EvaluationSettings:
    """``settings`` as :class:`EvaluationSettings` (a config section, or the schema defaults when None)."""
    return settings if isinstance(settings, EvaluationSettings) else EvaluationSettings.from_config(settings)


class Unavailable(Exception):
    """A metric that cannot be computed on this frame; its message is the reason written beside the NaN."""


@dataclass
class Frame:
    """What the metrics of one prediction frame need, prepared once."""

    kind: str
    classes: list[str]
    n_patients: int
    settings: EvaluationSettings
    times: list[float] = field(default_factory=list)  # time-dependent AUC times (survival)
    grid: np.ndarray | None = None  # integrated Brier score grid (survival)
    y: np.ndarray | None = None
    probs: np.ndarray | None = None
    threshold: np.ndarray | None = None
    threshold_reason: str | None = None
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    risk: np.ndarray | None = None
    risk_cutoff: np.ndarray | None = None  # per row: its fold's risk-group cut-off
    tau: float | None = None  # truncation time of the IPCW metrics
    surv_grid: np.ndarray | None = None  # predicted survival at the IBS grid (rows × grid)
    cache: dict[str, Any] = field(default_factory=dict)


def prepare(
    preds: pd.DataFrame,
    kind: str,
    classes: list[str],
    settings: EvaluationSettings,
    times: list[float] | None = None,
    grid: np.ndarray | None = None,
    tau: float | None = None,
) -> Frame:
    """The arrays of ``preds`` (the columns of ``test_predictions.csv``) its metrics read."""
    from mambamil.evaluation.survival import survival_at, survival_curves

    f = Frame(kind, list(classes), int(preds["case_id"].nunique()) if len(preds) else 0, settings, times or [], grid)
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
    f.tau = tau
    if "risk_cutoff" in preds.columns:
        f.risk_cutoff = preds["risk_cutoff"].to_numpy(dtype=float)
    curves = survival_curves(preds)
    if curves is not None and grid is not None:
        f.surv_grid = survival_at(curves, grid)
    return f


def add_validation_cutoffs(
    preds: pd.DataFrame,
    val_files: dict[int, Path],
    column: str,
    choose: Callable[[pd.DataFrame], tuple[float, str | None]],
) -> pd.DataFrame:
    """``column`` (and ``<column>_reason``) per test row: ``choose`` applied to its own fold's validation
    predictions (``val_files``: fold → ``val_predictions.csv``), so a cut-off is fixed before the test patients are
    seen and carried to them."""
    out = preds.copy()
    out[column] = np.nan
    out[f"{column}_reason"] = ""
    for fold in out["fold"].unique():
        path = val_files.get(int(fold))
        if path is None or not Path(path).exists():
            value, why = float("nan"), f"no validation predictions for fold {fold} ({path})"
        else:
            value, why = choose(pd.read_csv(path, dtype={"sample_id": str, "case_id": str}))
            why = f"fold {fold}: {why}" if why else ""
        out.loc[out["fold"] == fold, [column, f"{column}_reason"]] = [value, why]
    return out


def cutoff_summary(preds: pd.DataFrame, column: str, method: str) -> dict[str, Any] | None:
    """The cut-off ``column`` of a prediction frame as reported: each fold's value, and the development value
    external cohorts carry over (the median over folds); None without the column."""
    if column not in preds.columns:
        return None
    if "fold" in preds.columns:
        per_fold = {int(k): float(v) for k, v in preds.groupby("fold")[column].first().items()}
    else:
        per_fold = {}
    values = np.array(list(per_fold.values()) or preds[column].dropna().unique().tolist(), dtype=float)
    finite = values[np.isfinite(values)]
    return {"development": float(np.median(finite)) if finite.size else float("nan"), "per_fold": per_fold,
            "method": method}  # fmt: skip
