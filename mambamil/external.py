"""External validation: a label sheet's labels beside an ensemble's predictions, every label row that cannot be
scored reported on its own line (never an exception), and the labelled patients' metrics.

Used by ``mambamil predict --labels`` and by the workflow's external cohorts (README "External validation")."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mambamil.bags import assign_bins
from mambamil.columns import LABEL_COLUMN
from mambamil.errors import InputFileError
from mambamil.fileio import write_json
from mambamil.paths import evaluation_outputs

log = logging.getLogger(__name__)


def _lines(positions: list[int]) -> str:
    """Label-sheet line numbers (line 1 is the header) of row positions."""
    lines = [int(p) + 2 for p in positions]
    return f"line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))}"


def attach_labels(
    preds: pd.DataFrame,
    labels: pd.DataFrame,
    kind: str,
    classes: list[str],
    level: str,
    label_column: str = LABEL_COLUMN,
    bin_edges: list[float] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """``preds`` (one row per slide or patient, as :func:`mambamil.inference.predict_cohort` writes) with the
    label sheet's ``target`` and ``label`` (classification) or ``time``, ``event`` and time-bin ``target``
    (survival); rows that cannot be scored get ``target`` -1 and no label.

    Returns the frame and one message per problem: a label the model does not know, a patient (or slide) of the
    label sheet without a prediction, conflicting labels of one patient, a prediction without a label row."""
    labels = labels.reset_index(drop=True)
    key = "case_id" if level == "patient" else "slide_id"
    labels = labels.assign(_key=labels[key].astype(str))
    problems: list[str] = []
    if kind == "classification":
        if label_column not in labels.columns:
            return _unlabelled(preds, kind), [f"label sheet has no column '{label_column}': predictions only"]
        values = labels[label_column]
        unknown = values.notna() & ~values.astype(str).isin(classes)
        for i in np.flatnonzero(unknown):
            row = labels.iloc[i]
            problems.append(
                f"label sheet {_lines([i])} (slide {row['slide_id']}, patient {row['case_id']}): class "
                f"{str(row[label_column])!r} is not one the model knows {classes}; not scored"
            )
        usable = labels[values.notna() & ~unknown].assign(label=lambda d: d[label_column].astype(str))
        fields = ["label"]
    else:
        if "time" not in labels.columns:
            return _unlabelled(preds, kind), ["label sheet has no 'time' and 'event': predictions only"]
        usable = labels[labels["time"].notna()]
        fields = ["time", "event"]
    predicted = set(preds["sample_id"].astype(str))
    for k, rows in sorted(labels.groupby("_key"), key=lambda group: group[1].index.min()):  # in sheet order
        if k not in predicted:
            what = "patient" if level == "patient" else "slide"
            problems.append(
                f"label sheet {_lines(rows.index.tolist())}: {what} {k} has no slide with usable features in this "
                "cohort (not in the slide sheet, excluded by QC, or not embedded); not scored"
            )
    per_key: dict[str, dict[str, Any]] = {}
    for k, rows in usable.groupby("_key", sort=True):
        distinct = rows[fields].drop_duplicates()
        if len(distinct) > 1:
            problems.append(
                f"label sheet {_lines(rows.index.tolist())}: patient {k} has conflicting labels "
                f"{distinct.to_dict('records')}; not scored"
            )
            continue
        per_key[k] = rows.iloc[0][fields].to_dict()
    out = _unlabelled(preds, kind)
    all_keys = set(labels["_key"])
    for i, sample in enumerate(out["sample_id"].astype(str)):
        if sample not in all_keys:
            problems.append(f"{sample}: no row in the label sheet; predicted, not scored")
        if sample not in per_key:
            continue
        found = per_key[sample]
        if kind == "classification":
            out.loc[i, "label"] = found["label"]
            out.loc[i, "target"] = classes.index(found["label"])
        else:
            out.loc[i, "time"], out.loc[i, "event"] = float(found["time"]), int(found["event"])
            if bin_edges is not None:
                out.loc[i, "target"] = int(assign_bins(np.array([found["time"]]), np.asarray(bin_edges))[0])
    return out, problems


def _unlabelled(preds: pd.DataFrame, kind: str) -> pd.DataFrame:
    """``preds`` with empty label columns (target -1) in the column order of ``test_predictions.csv``."""
    out = preds.reset_index(drop=True).copy()
    out.insert(out.columns.get_loc("n_instances") + 1, "target", -1)
    if kind == "classification":
        predicted = out.pop("predicted")
        out["label"] = ""
        out["predicted"] = predicted
    else:
        out["time"], out["event"] = np.nan, np.nan
    return out


def labelled(preds: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The rows of :func:`attach_labels`' frame that can be scored."""
    mask = preds["target"] >= 0 if kind == "classification" else preds["time"].notna() & preds["event"].notna()
    return preds[mask].reset_index(drop=True)


def read_development(path: str | Path) -> dict[str, Any]:
    """What external scoring carries over from the development evaluation's ``metrics.json``: the operating point
    (``threshold``), the risk-group cut-off (``risk_cutoff``), the ``survival_times``, the evaluation ``settings``
    (the same intervals and minimum counts) and the ``path``."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "development metrics not found (run the evaluate rule of this task and model)")
    try:
        dev = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"not a metrics.json ({exc})") from None
    value = lambda key: (dev.get(key) or {}).get("development")  # noqa: E731
    return {"threshold": value("operating_point"), "risk_cutoff": value("risk_cutoff"), "path": str(path),
            "survival_times": dev.get("survival_times"), "settings": dev.get("settings")}  # fmt: skip


def carry_development(preds: pd.DataFrame, kind: str, development: dict[str, Any]) -> pd.DataFrame:
    """``preds`` with the development cohort's operating point (``threshold``, binary tasks) or risk-group cut-off
    (``risk_cutoff``, survival) on every row, and the reason where the development evaluation had none."""
    column = "threshold" if kind == "classification" else "risk_cutoff"
    value = development.get(column)
    out = preds.copy()
    out[column] = float("nan") if value is None else float(value)
    out[f"{column}_reason"] = "" if value is not None else f"no development {column} in {development.get('path')}"
    return out


def evaluate_cohort(
    preds: pd.DataFrame,
    kind: str,
    classes: list[str],
    out_dir: str | Path,
    title: str,
    problems: list[str],
    info: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    development: dict[str, Any] | None = None,
    time_unit: str | None = None,
) -> dict[str, Any]:
    """Metrics of the labelled rows of ``preds`` (:func:`mambamil.evaluation.evaluate.evaluate_predictions`, the
    development cohort's metrics and intervals; ``evaluation``: that config section, else the development
    evaluation's settings, else the schema defaults) in
    ``out_dir``; with no labelled row, ``metrics.json`` says why. ``info`` (checkpoints, level), the label problems
    and the counts are recorded under ``settings`` beside the evaluation settings. ``development``
    (:func:`read_development`): the operating point, risk-group cut-off and survival times carried over."""
    from mambamil.evaluation.evaluate import evaluate_predictions, json_safe

    scored = labelled(preds, kind)
    provenance = {**(info or {}), "label_problems": problems, "n_predicted": len(preds), "n_scored": len(scored)}
    if scored.empty:
        result = {"kind": kind, "n": 0, "pooled": {}, "reason": "no labelled patient with a prediction",
                  "settings": provenance}  # fmt: skip
        write_json(evaluation_outputs(out_dir)["metrics"], result)
        return result
    if kind == "survival":
        scored["event"] = scored["event"].astype(int)
    times = None
    if development is not None and evaluation is None:
        evaluation = development.get("settings")
    if development is not None:
        scored = carry_development(scored, kind, development)
        provenance["development_metrics"] = development["path"]
        times = development.get("survival_times") if kind == "survival" else None
    result = evaluate_predictions(scored, kind, classes, out_dir, title, evaluation, times, time_unit)
    result["n"] = len(scored)
    result["settings"] = {**result["settings"], **provenance}
    write_json(evaluation_outputs(out_dir)["metrics"], json_safe(result))
    return result
