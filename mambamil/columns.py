"""Column names of the tables the pipeline writes and reads: the prediction tables (``test_predictions.csv``,
``predictions.csv``) that inference writes and evaluation, review and the report read, the heatmap scores table,
and the label sheet's label column: one place for each name."""

from __future__ import annotations

#: Prefix of a class-probability column (``prob_<class>``).
PROBABILITY_PREFIX = "prob_"

#: Suffix of a score map's rank-percentile column in ``<slide_id>.scores.csv`` (``attention_percentile``).
PERCENTILE_SUFFIX = "_percentile"

#: The label sheet's classification label column (a task's ``label_column`` default, as in the config schema).
LABEL_COLUMN = "label"


def probability_column(name: str) -> str:
    """The prediction CSV column of one class's probability."""
    return f"{PROBABILITY_PREFIX}{name}"


def percentile_column(score_map: str) -> str:
    """The heatmap scores table's column of one score map's rank percentiles (beside the raw ``score_map``)."""
    return f"{score_map}{PERCENTILE_SUFFIX}"
