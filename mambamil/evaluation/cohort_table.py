"""What a reader needs to know about the patients behind the numbers (TRIPOD+AI items 5, 7, 13): the cohort's
characteristics (patients, slides, classes, events, median follow-up by reverse Kaplan–Meier), the counts of every
test fold, the participant flow from slides in to patients analysed (QC exclusions by cause), and the warning for
a test set too small to carry its interval."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mambamil.qc import EXCLUDED, OK


def median_follow_up(time: np.ndarray, event: np.ndarray) -> float:
    """Median follow-up by the reverse Kaplan–Meier method (Schemper & Smith 1996): the median of the
    Kaplan–Meier estimate with censoring as the event (lifelines); NaN without any censored patient or when the
    curve never falls to 0.5."""
    from lifelines import KaplanMeierFitter

    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=float).astype(bool)
    if not (~event).any():
        return float("nan")
    median = KaplanMeierFitter().fit(time, event_observed=~event).median_survival_time_
    return float(median) if np.isfinite(median) else float("nan")


def _class_counts(preds: pd.DataFrame, classes: list[str]) -> dict[str, int]:
    y = preds["target"].to_numpy(dtype=int)
    return {f"class {name}": int((y == k).sum()) for k, name in enumerate(classes)}


def cohort_characteristics(
    preds: pd.DataFrame, kind: str, classes: list[str], slides: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Patients, slides (QC-usable slides of these patients, from the QC slide table; None without it), the
    patients of each class (classification) or the events, censored patients, median follow-up (reverse
    Kaplan–Meier) and the range of follow-up times (survival) of one prediction frame."""
    cases = preds["case_id"].astype(str)
    patients = preds.drop_duplicates("case_id")
    out: dict[str, Any] = {"patients": int(cases.nunique())}
    out["slides"] = _usable_slides(slides, cases) if slides is not None else None
    if kind == "classification":
        out.update(_class_counts(patients, classes))
        return out
    time = patients["time"].to_numpy(dtype=float)
    event = patients["event"].to_numpy(dtype=float).astype(bool)
    out["events"] = int(event.sum())
    out["censored"] = int((~event).sum())
    out["median follow-up (reverse KM)"] = median_follow_up(time, event)
    out["follow-up range"] = f"{time.min():.3g}–{time.max():.3g}" if len(time) else ""
    return out


def _usable_slides(slides: pd.DataFrame, cases: pd.Series) -> int:
    """QC-usable slides (QC slide table) of the patients ``cases``."""
    return len(slides[(slides["status"] == OK) & slides["case_id"].astype(str).isin(set(cases.astype(str)))])


def fold_counts(preds: pd.DataFrame, kind: str, classes: list[str], slides: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per test fold (and ``all``): patients (and their usable slides, given the QC slide table) and the
    patients of each class, or events and censored."""
    rows = []
    groups = list(preds.groupby("fold")) if "fold" in preds.columns else []
    for fold, rows_ in [*groups, ("all", preds)]:
        patients = rows_.drop_duplicates("case_id")
        row: dict[str, Any] = {"test fold": fold, "patients": len(patients)}
        if slides is not None:
            row["slides"] = _usable_slides(slides, patients["case_id"])
        if kind == "classification":
            row.update(_class_counts(patients, classes))
        else:
            event = patients["event"].to_numpy(dtype=float).astype(bool)
            row.update(events=int(event.sum()), censored=int((~event).sum()))
        rows.append(row)
    return pd.DataFrame(rows)


def small_sample_warnings(preds: pd.DataFrame, kind: str, classes: list[str], minimum: int) -> list[str]:
    """One line for each test set (the pooled one, each fold) with fewer than ``minimum`` patients of a class
    (classification) or events (survival): its bootstrap intervals under-cover (benchmarks/interval_coverage.py)."""
    warnings = []
    table = fold_counts(preds, kind, classes)
    columns = [f"class {c}" for c in classes] if kind == "classification" else ["events"]
    noun = "patients" if kind == "classification" else ""
    for row in table.itertuples(index=False):
        values = dict(zip(table.columns, row, strict=True))
        short = [
            f"{values[c]} {c.replace('class ', noun + ' of class ')}".strip() for c in columns if values[c] < minimum
        ]
        if short:
            where = "pooled test set" if values["test fold"] == "all" else f"test fold {values['test fold']}"
            warnings.append(f"{where}: {', '.join(short)}, fewer than {minimum}; intervals may under-cover")
    return warnings


def participant_flow(slides: pd.DataFrame, analysed: dict[str, int]) -> pd.DataFrame:
    """The flow from slides in to patients analysed, one row per step (step, slides, patients): every slide of
    the QC table, each exclusion cause (stage: cause), the usable slides and patients (≥ 1 usable slide), the
    patients excluded (no usable slide), and for each task the patients analysed (``analysed``: task → patients
    with a prediction and a label)."""
    slides = slides.astype({"case_id": str})
    all_cases = set(slides["case_id"])
    rows: list[dict[str, Any]] = [{"step": "slides in", "slides": len(slides), "patients": len(all_cases)}]
    bad = slides[slides["status"] == EXCLUDED]
    for (stage, cause), group in bad.groupby(["stage", "cause"], sort=True):
        rows.append({"step": f"excluded at {stage}: {cause}", "slides": -len(group), "patients": None})
    usable = slides[slides["status"] == OK]
    usable_cases = set(usable["case_id"])
    rows.append({"step": "usable after QC", "slides": len(usable), "patients": len(usable_cases)})
    rows.append({"step": "patients without a usable slide", "slides": None, "patients": -len(all_cases - usable_cases)})
    for task, n in analysed.items():
        rows.append({"step": f"analysed, task {task} (labelled, predicted)", "slides": None, "patients": n})
    return pd.DataFrame(rows, columns=["step", "slides", "patients"], dtype=object)
