"""Checks of a finished workflow's results folder, shared by the workflow tests (local and on SLURM)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mambamil import paths


def assert_heatmaps_drawn_by_test_fold_models(results: Path, labels: Path, task: str, model: str) -> int:
    """Every drawn heatmap was made by the model of a fold whose test split holds the slide's patient: the
    checkpoint the heatmap job used (recorded in ``<slide_id>.prediction.json``) against the splits file the
    workflow wrote. Returns the number of heatmaps checked."""
    splits = pd.read_csv(paths.splits_file(results, task), dtype={"case_id": str})
    case_of = pd.read_csv(labels, dtype={"case_id": str, "slide_id": str}).set_index("slide_id")["case_id"]
    index = pd.read_csv(paths.heatmaps_index(results), dtype=str, keep_default_na=False)
    drawn = index.loc[index["status"] == "drawn", "slide_id"].tolist()
    fold_of = {
        (paths.fold_dir(results, task, model, k) / "checkpoint.pt").resolve(): int(k) for k in splits["fold"].unique()
    }
    for sid in drawn:
        prediction = json.loads(paths.heatmap_outputs(paths.heatmap_dir(results, sid), sid)["prediction"].read_text())
        (used,) = prediction["checkpoints"]  # one fold model per slide
        assert Path(used) in fold_of, f"{sid}: drawn by {used}, not a fold model of {task}/{model}"
        fold = fold_of[Path(used)]
        row = splits[(splits["case_id"] == case_of[sid]) & (splits["fold"] == fold)]
        where = row["split"].tolist()
        assert where == ["test"], f"{sid}: drawn by the fold {fold} model, whose {where} split holds its patient"
    return len(drawn)
