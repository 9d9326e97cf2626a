"""Apply one checkpoint, or the ensemble of fold checkpoints, to new slides."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mambamil.errors import InputFileError
from mambamil.fileio import atomic_output
from mambamil.h5layout import read_bag
from mambamil.order import bag_permutation
from mambamil.train.data import BagDataset, Sample, TaskSpec
from mambamil.train.engine import load_trained, predict, resolve_device


def load_models(checkpoints: list[Path], device) -> tuple[list, dict]:
    """Load checkpoints saved by ``mambamil train``; they must agree on task, classes and input dim."""
    models, extras = [], []
    for path in checkpoints:
        model, extra = load_trained(path)
        models.append(model.to(device).eval())
        extras.append(extra)
    first = extras[0]
    for path, extra in zip(checkpoints[1:], extras[1:], strict=True):
        for key in ("task_kind", "classes", "in_dim"):
            if extra.get(key) != first.get(key):
                raise InputFileError(path, f"checkpoint's {key} {extra.get(key)} differs from {checkpoints[0]}")
    return models, first


def predict_slides(
    features: list[Path], checkpoints: list[Path], out: Path, order: str | None = None, device: str = "auto"
) -> pd.DataFrame:
    """Slide-level predictions (probabilities or risk) averaged over ``checkpoints``; writes ``out`` CSV."""
    dev = resolve_device(device)
    models, extra = load_models(checkpoints, dev)
    task = TaskSpec(
        name=extra.get("task", "task"),
        kind=extra.get("task_kind", "classification"),
        classes=tuple(extra.get("classes", ())),
        n_bins=models[0].n_classes,
    )
    files = {Path(p).stem: Path(p) for p in features}
    orders = {}
    for sid, path in files.items():
        bag = read_bag(path)
        if bag.features.shape[1] != extra.get("in_dim", bag.features.shape[1]):
            raise InputFileError(
                path, f"feature dimension {bag.features.shape[1]} does not match the checkpoint's {extra['in_dim']}"
            )
        if order and bag.coords is not None:
            orders[sid] = bag_permutation(bag.coords, bag.attrs, order)
    samples = [Sample(sample_id=sid, case_id=sid, slide_ids=[sid]) for sid in files]
    df = predict(models, BagDataset(samples, files, orders, cache=False), dev, task)
    df = df.drop(columns=["target", "label"], errors="ignore")
    with atomic_output(out) as tmp:
        df.to_csv(tmp, index=False)
    return df
