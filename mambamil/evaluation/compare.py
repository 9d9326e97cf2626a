"""Paired model comparison on the patients two models both predicted: difference of the primary metric with its
paired-bootstrap interval and p-value."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from mambamil.evaluation import bootstrap as bs
from mambamil.evaluation import registry
from mambamil.evaluation.frame import EvaluationSettings, Frame, as_settings, prepare

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
    settings = as_settings(settings)
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
    fa, fb = prepare(frame_a, kind, classes, settings), prepare(frame_b, kind, classes, settings)
    row["n_patients"] = fa.n_patients
    nan = float("nan")
    row.update(estimate_a=nan, estimate_b=nan, difference=nan, ci_low=nan, ci_high=nan, p_value=nan, reason=None,
               p_value_text="NaN", resamples=0)  # fmt: skip
    if fa.n_patients < settings.min_patients:
        row["reason"] = f"fewer than {settings.min_patients} shared patients ({fa.n_patients})"
        return row
    est_a, why_a = _primary(fa, metric)
    est_b, why_b = _primary(fb, metric)
    row.update(estimate_a=est_a, estimate_b=est_b)
    if why_a or why_b:
        row["reason"] = why_a or why_b
        return row
    groups = frame_a["case_id"].to_numpy()
    W = bs.bootstrap_weights(groups, settings.n_resamples, settings.seed)

    def difference(w: np.ndarray) -> np.ndarray:
        return registry.replicates(fa, w, [metric])[metric] - registry.replicates(fb, w, [metric])[metric]

    delta = difference(W)
    delta = delta[np.isfinite(delta)]
    low, high, used, _ = bs.interval(settings.interval, delta, difference, groups, settings.confidence_level)
    p = min(1.0, 2 * min(np.mean(delta <= 0), np.mean(delta >= 0))) if delta.size else nan
    row.update(difference=est_a - est_b, ci_low=low, ci_high=high, p_value=float(p), resamples=used,
               p_value_text=bs.format_p_value(float(p), used))  # fmt: skip
    if not delta.size:
        row["reason"] = "no bootstrap resample could be evaluated"
    return row


def _primary(f: Frame, metric: str) -> tuple[float, str | None]:
    values, reasons = registry.estimates(f, [metric])
    return values.get(metric, float("nan")), reasons.get(metric)


def _comparison_method(settings: EvaluationSettings) -> str:
    return (
        f"paired bootstrap: {settings.n_resamples} resamples of the shared patients (seed {settings.seed}), "
        f"{100 * settings.confidence_level:g} % {bs.INTERVALS[settings.interval]} interval of A − B, "
        "p = 2·min(P(Δ*≤0), P(Δ*≥0)) over the usable resamples B (0 is shown as < 2/B)"
    )
