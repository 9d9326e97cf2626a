"""Patient-level, stratified k-fold splits: each fold tests a disjoint set of patients and carves its
validation set out of its training patients. Saved as one CSV per task and reused by every model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from mambamil.bags import Sample, TaskSpec
from mambamil.errors import InputFileError, MambamilError
from mambamil.fileio import atomic_output


def strata(samples: list[Sample], task: TaskSpec) -> pd.DataFrame:
    """One row per patient with its stratification key: the class, or event × time bin for survival."""
    rows = {}
    for s in samples:
        key = str(s.label) if task.kind == "classification" else f"{s.event}_{s.label}"
        rows.setdefault(s.case_id, key)
    return pd.DataFrame({"case_id": list(rows), "stratum": list(rows.values())})


def _stratify_or_none(keys: pd.Series, n_splits: int) -> pd.Series | None:
    return keys if keys.value_counts().min() >= n_splits else None


def make_splits(
    samples: list[Sample], task: TaskSpec, n_folds: int = 5, val_fraction: float = 0.15, seed: int = 0
) -> pd.DataFrame:
    """Rows (case_id, fold, split) with split in {train, val, test}; every patient is tested exactly once."""
    patients = strata(samples, task)
    if len(patients) < n_folds:
        raise MambamilError(f"task '{task.name}': {len(patients)} patients cannot make {n_folds} folds")
    keys = patients["stratum"].copy()
    # Merge strata too small to stratify on into their class (survival) or a shared bucket.
    counts = keys.value_counts()
    small = counts[counts < n_folds].index
    if len(small):
        keys[keys.isin(small)] = keys[keys.isin(small)].str.split("_").str[0] + "_rare"
        counts = keys.value_counts()
        keys[keys.isin(counts[counts < n_folds].index)] = "rare"
    stratified = keys.value_counts().min() >= n_folds
    y = keys.to_numpy() if stratified else np.zeros(len(keys))
    kfold = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    out = []
    for fold, (train_idx, test_idx) in enumerate(kfold.split(np.zeros(len(y)), y)):
        train_cases = patients["case_id"].to_numpy()[train_idx]
        train_keys = keys.to_numpy()[train_idx]
        n_val = max(1, round(val_fraction * len(train_cases)))
        strat = (
            train_keys if pd.Series(train_keys).value_counts().min() >= 2 and n_val >= len(set(train_keys)) else None
        )
        tr, va = train_test_split(train_cases, test_size=n_val, random_state=seed + fold, stratify=strat)
        out += [(c, fold, "train") for c in tr] + [(c, fold, "val") for c in va]
        out += [(c, fold, "test") for c in patients["case_id"].to_numpy()[test_idx]]
    splits = pd.DataFrame(out, columns=["case_id", "fold", "split"]).sort_values(["fold", "split", "case_id"])
    check_splits(splits, samples, task)
    return splits.reset_index(drop=True)


def check_splits(splits: pd.DataFrame, samples: list[Sample], task: TaskSpec) -> None:
    """Invariants and trainability: no patient in two sets of a fold; each training set has every class (and
    each survival test/validation set at least one event), naming the fold when not."""
    by_case = {s.case_id: s for s in samples}
    for fold, rows in splits.groupby("fold"):
        if rows["case_id"].duplicated().any():
            raise MambamilError(f"fold {fold}: a patient is in two sets")
        for split in ("train", "val", "test"):
            cases = rows.loc[rows["split"] == split, "case_id"]
            members = [by_case[c] for c in cases if c in by_case]
            if not members:
                raise MambamilError(f"task '{task.name}' fold {fold}: empty {split} set")
            if task.kind == "classification" and split == "train":
                present = {m.label for m in members}
                if len(present) < 2:
                    raise MambamilError(
                        f"task '{task.name}' fold {fold}: training set has one class only "
                        f"({task.classes[present.pop()]}); use fewer folds or more patients"
                    )
            if task.kind == "survival" and split in ("train", "test") and not any(m.event for m in members):
                raise MambamilError(f"task '{task.name}' fold {fold}: {split} set has no observed events")


def write_splits(path: str | Path, splits: pd.DataFrame) -> None:
    with atomic_output(path) as tmp:
        splits.to_csv(tmp, index=False)


def read_splits(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "splits file not found (run the splits rule)")
    df = pd.read_csv(path, dtype={"case_id": str})
    if not {"case_id", "fold", "split"} <= set(df.columns):
        raise InputFileError(path, "splits file needs columns case_id, fold, split")
    return df
