"""Column names of the tables the pipeline reads and writes, each written once."""

from __future__ import annotations

#: The label sheet's classification label column (a task's ``label_column`` default, as in the config schema).
LABEL_COLUMN = "label"
PROBABILITY_PREFIX = "prob_"
PERCENTILE_SUFFIX = "_percentile"


def probability_column(class_name: str) -> str:
    """The prediction tables' column of one class's probability."""
    return f"{PROBABILITY_PREFIX}{class_name}"


def percentile_column(score_map: str) -> str:
    """The heatmap scores table's column of one score map's rank percentiles (beside the raw ``score_map``)."""
    return f"{score_map}{PERCENTILE_SUFFIX}"
