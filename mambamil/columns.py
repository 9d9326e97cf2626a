"""Column names of the prediction tables (``test_predictions.csv``, ``predictions.csv``) that inference writes and
evaluation, review and the report read: one place for each name."""

from __future__ import annotations

#: Prefix of a class-probability column (``prob_<class>``).
PROBABILITY_PREFIX = "prob_"


def probability_column(name: str) -> str:
    """The prediction CSV column of one class's probability."""
    return f"{PROBABILITY_PREFIX}{name}"
