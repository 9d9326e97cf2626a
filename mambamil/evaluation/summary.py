"""The cohort summary table: one row per (task, model) from each evaluation's ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def summary_table(metric_files: dict[tuple[str, str], Path]) -> pd.DataFrame:
    """One row per (task, model): fold mean ± std of each metric, and the pooled estimate with its bootstrap
    interval (``<metric>_pooled``, ``<metric>_ci_low``, ``<metric>_ci_high``; ``<metric>_reason`` when it is NaN)
    and the interval method."""
    rows = []
    for (task, model), path in sorted(metric_files.items()):
        result = json.loads(Path(path).read_text())
        row: dict[str, Any] = {"task": task, "model": model, "n_patients": result.get("n_patients")}
        for key, stats in result["summary"].items():
            row[key] = _mean_std(stats)
        for key, m in result.get("metrics", {}).items():
            row[f"{key}_pooled"] = m["estimate"]
            row[f"{key}_ci_low"] = m["ci_low"]
            row[f"{key}_ci_high"] = m["ci_high"]
            row[f"{key}_reason"] = m["reason"]
        row["ci_method"] = result.get("interval_method")
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(stats: dict[str, Any]) -> str:
    mean, std = (np.nan if stats[k] is None else stats[k] for k in ("mean", "std"))
    return f"{mean:.3f} ± {std:.3f}"
