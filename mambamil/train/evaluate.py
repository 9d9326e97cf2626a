"""Evaluation on held-out test folds only: per-fold metrics, mean ± std, pooled predictions and plots.

The test predictions it reads are written by the training engine through :mod:`mambamil.inference` (the module
``predict`` and ``heatmap`` use), so evaluated scores are the scores those commands give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mambamil.errors import InputFileError
from mambamil.fileio import atomic_output, write_json
from mambamil.inference import probability_column
from mambamil.paths import evaluation_outputs
from mambamil.train.metrics import classification_metrics, survival_metrics
from mambamil.train.plots import km_plot, roc_plot


def _metrics(df: pd.DataFrame, kind: str, classes: list[str]) -> dict[str, Any]:
    if kind == "classification":
        probs = df[[probability_column(c) for c in classes]].to_numpy()
        return classification_metrics(df["target"].to_numpy(), probs, classes)
    return survival_metrics(df["time"].to_numpy(), df["event"].to_numpy(), df["risk"].to_numpy())


def evaluate_folds(
    prediction_files: list[Path], kind: str, classes: list[str], out_dir: str | Path, title: str
) -> dict[str, Any]:
    """Read each fold's ``test_predictions.csv`` and write ``metrics.json`` (per fold + summary),
    ``predictions.csv`` (all test predictions with their fold) and ``test_curves.png`` (ROC curves for
    subtyping, Kaplan–Meier curves of predicted risk groups for survival)."""
    frames = []
    for path in prediction_files:
        if not Path(path).exists():
            raise InputFileError(path, "test predictions not found (run the train rule for this fold)")
        frames.append(pd.read_csv(path, dtype={"sample_id": str, "case_id": str}))
    preds = pd.concat(frames, ignore_index=True)
    if preds["case_id"].duplicated().any():
        raise InputFileError(prediction_files[0], "a patient is tested in more than one fold")
    per_fold = {int(f): _metrics(rows, kind, classes) for f, rows in preds.groupby("fold")}
    keys = ["auc", "balanced_accuracy", "weighted_f1"] if kind == "classification" else ["c_index", "logrank_p"]
    summary = {}
    for key in keys:
        values = np.array([m[key] for m in per_fold.values()], dtype=float)
        summary[key] = {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values)), "folds": values.tolist()}
    pooled = _metrics(preds, kind, classes)
    result = {"kind": kind, "n_folds": len(per_fold), "summary": summary, "pooled": pooled, "per_fold": per_fold}
    outputs = evaluation_outputs(out_dir)
    write_json(outputs["metrics"], result)
    with atomic_output(outputs["predictions"]) as tmp:
        preds.to_csv(tmp, index=False)
    curves = outputs["curves"]
    if kind == "classification":
        probs = preds[[probability_column(c) for c in classes]].to_numpy()
        roc_plot(preds["target"].to_numpy(), probs, classes, curves, title)
    else:
        km_plot(preds["time"].to_numpy(), preds["event"].to_numpy(), preds["risk"].to_numpy(), curves, title)
    return result


def evaluate_predictions(
    preds: pd.DataFrame,
    kind: str,
    classes: list[str],
    out_dir: str | Path,
    title: str,
    settings: dict | None = None,
) -> dict[str, Any]:
    """Metrics of one pooled prediction frame (the columns of ``test_predictions.csv``; ``fold`` optional), e.g.
    an external cohort's: writes ``metrics.json`` (pooled metrics), ``predictions.csv`` and the curves plot into
    ``out_dir`` (:func:`mambamil.paths.evaluation_outputs`)."""
    pooled = _metrics(preds, kind, classes)
    result = {"kind": kind, "n": len(preds), "pooled": pooled, "settings": settings or {}}
    outputs = evaluation_outputs(out_dir)
    write_json(outputs["metrics"], result)
    with atomic_output(outputs["predictions"]) as tmp:
        preds.to_csv(tmp, index=False)
    if kind == "classification":
        probs = preds[[probability_column(c) for c in classes]].to_numpy()
        roc_plot(preds["target"].to_numpy(), probs, classes, outputs["curves"], title)
    else:
        km_plot(preds["time"].to_numpy(), preds["event"].to_numpy(), preds["risk"].to_numpy(), outputs["curves"], title)
    return result


def summary_table(metric_files: dict[tuple[str, str], Path]) -> pd.DataFrame:
    """One row per (task, model): mean ± std of each summary metric, for the cohort-level overview."""
    rows = []
    import json

    for (task, model), path in sorted(metric_files.items()):
        result = json.loads(Path(path).read_text())
        row = {"task": task, "model": model}
        for key, stats in result["summary"].items():
            row[key] = f"{stats['mean']:.3f} ± {stats['std']:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)
