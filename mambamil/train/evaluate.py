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


def read_predictions(prediction_files: list[Path]) -> pd.DataFrame:
    """Each fold's ``test_predictions.csv``, pooled (every patient must be tested in one fold only)."""
    frames = []
    for path in prediction_files:
        if not Path(path).exists():
            raise InputFileError(path, "test predictions not found (run the train rule for this fold)")
        frames.append(pd.read_csv(path, dtype={"sample_id": str, "case_id": str}))
    preds = pd.concat(frames, ignore_index=True)
    if preds["case_id"].duplicated().any() and preds.groupby("case_id")["fold"].nunique().max() > 1:
        raise InputFileError(prediction_files[0], "a patient is tested in more than one fold")
    return preds


def evaluate_predictions(
    preds: pd.DataFrame,
    kind: str,
    classes: list[str],
    out_dir: str | Path,
    title: str,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics of one pooled prediction frame (the columns of ``test_predictions.csv``; ``fold`` optional): writes
    ``metrics.json``, ``predictions.csv`` and the plots named by :func:`mambamil.paths.evaluation_outputs` into
    ``out_dir`` and returns the metrics. Per-fold mean ± std only when a ``fold`` column holds more than one fold.
    ``settings``: the ``evaluation`` config section (schema defaults when None)."""
    folds = sorted(preds["fold"].unique()) if "fold" in preds.columns else []
    per_fold = {int(f): _metrics(rows, kind, classes) for f, rows in preds.groupby("fold")} if len(folds) > 1 else {}
    keys = ["auc", "balanced_accuracy", "weighted_f1"] if kind == "classification" else ["c_index", "logrank_p"]
    summary = {}
    for key in keys if per_fold else []:
        values = np.array([m[key] for m in per_fold.values()], dtype=float)
        summary[key] = {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values)), "folds": values.tolist()}
    pooled = _metrics(preds, kind, classes)
    result = {"kind": kind, "n_folds": len(folds), "summary": summary, "pooled": pooled, "per_fold": per_fold}
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


def evaluate_folds(
    prediction_files: list[Path],
    kind: str,
    classes: list[str],
    out_dir: str | Path,
    title: str,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read each fold's ``test_predictions.csv`` and evaluate the pooled out-of-fold predictions
    (:func:`evaluate_predictions`)."""
    return evaluate_predictions(read_predictions(prediction_files), kind, classes, out_dir, title, settings)


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
