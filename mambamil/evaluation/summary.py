"""The cohort summary table: one row per (task, model) from each evaluation's ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def summary_table(metric_files: dict[tuple[str, str], Path]) -> pd.DataFrame:
    """One row per (task, model): fold mean ± std (k of K folds) of each metric, and the pooled estimate with its
    bootstrap interval (``<metric>_pooled``, ``<metric>_ci_low``, ``<metric>_ci_high``, the usable
    ``<metric>_resamples``; ``<metric>_reason`` when it is NaN), the interval method, the small-test-set
    ``warnings``, and for survival τ, the td-AUC times and their unit."""
    rows = []
    for (task, model), path in sorted(metric_files.items()):
        result = json.loads(Path(path).read_text())
        row: dict[str, Any] = {"task": task, "model": model, "n_patients": result.get("n_patients")}
        for key, stats in result["summary"].items():
            row[key] = fold_text(stats)
        for key, m in result.get("metrics", {}).items():
            row[f"{key}_pooled"] = m["estimate"]
            row[f"{key}_ci_low"] = m["ci_low"]
            row[f"{key}_ci_high"] = m["ci_high"]
            row[f"{key}_reason"] = m["reason"]
            row[f"{key}_resamples"] = m.get("resamples")
        row["ci_method"] = result.get("interval_method")
        row["warnings"] = "; ".join(result.get("warnings", []))
        if result.get("kind") == "survival":
            row["tau"], row["survival_times"] = result.get("tau"), result.get("survival_times")
            row["time_unit"] = result.get("time_unit")
        rows.append(row)
    return pd.DataFrame(rows)


def fold_text(stats: dict[str, Any]) -> str:
    """A fold summary as shown: 'mean ± std (k of K folds)' over the folds that could compute the metric; a
    p-value's folds only ('not averaged')."""
    mean, std = (np.nan if stats.get(k) is None else stats[k] for k in ("mean", "std"))
    k, n = stats.get("computed"), stats.get("n_folds")
    count = f" ({k} of {n} folds)" if k is not None and n is not None else ""
    if not np.isfinite(mean):
        return f"not averaged{count}" if k else f"NaN{count}"
    return f"{mean:.3f} ± {std:.3f}{count}"
