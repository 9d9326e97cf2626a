"""Order stage (sequences over the patch grid) and patient-level splits, survival bins and metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mambamil.bags import Sample, TaskSpec, assign_bins, build_samples, survival_bin_edges
from mambamil.errors import InputFileError, MambamilError
from mambamil.evaluation.metrics import c_index, classification_metrics, survival_metrics
from mambamil.order import METHODS, order_permutation, read_order, window_spread, write_order
from mambamil.train.losses import nll_survival_loss
from mambamil.train.splits import check_splits, make_splits


def _tissue_grid(seed: int = 0, n: int = 40) -> np.ndarray:
    """Level-0 coordinates of an irregular blob of patches on a 256-px grid."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n]
    blob = ((xx - n / 2) ** 2 / 1.5 + (yy - n / 2) ** 2) < (n / 2.3) ** 2
    blob &= rng.random(blob.shape) > 0.1
    return np.stack([xx[blob], yy[blob]], axis=1) * 256 + 1000


@pytest.mark.parametrize("method", METHODS)
def test_orders_are_permutations(method: str) -> None:
    coords = _tissue_grid()
    perm = order_permutation(coords, method, step=256)
    assert sorted(perm.tolist()) == list(range(len(coords)))


def test_raster_is_row_major_and_snake_alternates() -> None:
    coords = _tissue_grid()
    raster = coords[order_permutation(coords, "raster", 256)]
    assert (np.diff(raster[:, 1]) >= 0).all()
    snake = coords[order_permutation(coords, "snake", 256)]
    rows = np.unique(snake[:, 1])
    first, second = snake[snake[:, 1] == rows[0]], snake[snake[:, 1] == rows[1]]
    assert (np.diff(first[:, 0]) > 0).all() and (np.diff(second[:, 0]) < 0).all()


def test_hilbert_has_better_locality_than_raster() -> None:
    coords = _tissue_grid()
    spread = {m: window_spread(coords, order_permutation(coords, m, 256), window=16) for m in METHODS}
    assert spread["hilbert"] < 0.75 * spread["raster"]
    assert spread["raster"] < spread["random"]
    # On a full 2^k grid consecutive Hilbert positions are always grid neighbours.
    yy, xx = np.mgrid[0:32, 0:32]
    full = np.stack([xx.ravel(), yy.ravel()], 1) * 256
    steps = np.abs(np.diff(full[order_permutation(full, "hilbert", 256)] // 256, axis=0)).sum(1)
    assert (steps == 1).all()


def test_random_order_is_seeded(tmp_path: Path) -> None:
    coords = _tissue_grid()
    a, b = order_permutation(coords, "random", seed=1), order_permutation(coords, "random", seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, order_permutation(coords, "random", seed=2))
    write_order(tmp_path / "o.npy", a)
    assert np.array_equal(read_order(tmp_path / "o.npy", len(a)), a)
    with pytest.raises(InputFileError, match="not a permutation"):
        read_order(tmp_path / "o.npy", len(a) + 1)


def _labels(n_cases: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        label = "tumor" if c % 2 else "normal"
        for s in range(1 + (c % 5 == 0)):
            rows.append(
                {
                    "case_id": f"c{c}",
                    "slide_id": f"c{c}_s{s}",
                    "label": label,
                    "time": float(rng.uniform(1, 100)),
                    "event": int(rng.random() < 0.6),
                }
            )
    df = pd.DataFrame(rows)
    df["time"] = df.groupby("case_id")["time"].transform("first")
    df["event"] = df.groupby("case_id")["event"].transform("first")
    return df


CLS = TaskSpec("subtype", "classification", ("normal", "tumor"))
SURV = TaskSpec("survival", "survival", n_bins=4)


@pytest.mark.parametrize("task", [CLS, SURV], ids=["subtyping", "survival"])
def test_split_invariants(task: TaskSpec) -> None:
    labels = _labels()
    files = {s: Path(f"{s}.h5") for s in labels["slide_id"]}
    samples, _ = build_samples(labels, files, task, level="patient")
    assert len(samples) == 40 and sum(len(s.slide_ids) == 2 for s in samples) == 8
    splits = make_splits(samples, task, n_folds=5, val_fraction=0.2, seed=0)
    for _, rows in splits.groupby("fold"):
        assert not rows["case_id"].duplicated().any()  # no patient in two sets of a fold
        assert set(rows["case_id"]) == {s.case_id for s in samples}
    tested = splits[splits["split"] == "test"]["case_id"]
    assert sorted(tested) == sorted(s.case_id for s in samples)  # every patient tested exactly once
    if task.kind == "classification":
        label = {s.case_id: s.label for s in samples}
        for _, rows in splits[splits["split"] == "test"].groupby("fold"):
            share = np.mean([label[c] for c in rows["case_id"]])
            assert 0.35 <= share <= 0.65  # stratified: both classes in every test fold
    assert splits.equals(make_splits(samples, task, n_folds=5, val_fraction=0.2, seed=0))  # seeded


def test_slide_level_keeps_patients_together() -> None:
    labels = _labels()
    files = {s: Path(f"{s}.h5") for s in labels["slide_id"]}
    samples, _ = build_samples(labels, files, CLS, level="slide")
    assert len(samples) == len(labels)
    splits = make_splits(samples, CLS, n_folds=4, seed=1)
    for _, rows in splits.groupby("fold"):
        assert not rows["case_id"].duplicated().any()


def test_bad_cohorts_name_the_ids() -> None:
    labels = _labels(10)
    files = {s: Path(f"{s}.h5") for s in labels["slide_id"]}
    with pytest.raises(MambamilError, match="no features: \\['c0_s0'\\]"):
        build_samples(labels, {k: v for k, v in files.items() if k != "c0_s0"}, CLS)
    with pytest.raises(MambamilError, match="features with no label: \\['stray'\\]"):
        build_samples(labels, {**files, "stray": Path("stray.h5")}, CLS)
    samples, _ = build_samples(labels, {**files, "stray": Path("stray.h5")}, CLS, on_missing="warn")
    assert len(samples) == 10
    bad = labels.copy()
    bad.loc[0, "label"] = "lymphoma"
    with pytest.raises(MambamilError, match="lymphoma"):
        build_samples(bad, files, CLS)
    one_class = labels.assign(label="tumor")
    samples, _ = build_samples(one_class, files, CLS)
    with pytest.raises(MambamilError, match="one class"):
        make_splits(samples, CLS, n_folds=2)
    no_events = labels.assign(event=0)
    with pytest.raises(MambamilError, match="observed events"):
        build_samples(no_events, files, SURV)


def test_survival_bins_cover_all_times() -> None:
    times = np.array([1.0, 5, 7, 9, 20, 30, 50, 80, 100, 120])
    events = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 1])
    edges = survival_bin_edges(times, events, 4)
    bins = assign_bins(times, edges)
    assert edges[0] < times.min() and edges[-1] > times.max()
    assert bins.min() == 0 and bins.max() == 3
    assert np.all(np.diff(bins[np.argsort(times)]) >= 0)


def test_check_splits_rejects_overlap() -> None:
    samples = [Sample("a", "a", ["a"], 0), Sample("b", "b", ["b"], 1), Sample("c", "c", ["c"], 1)]
    splits = pd.DataFrame({"case_id": ["a", "a", "b", "c"], "fold": 0, "split": ["train", "test", "train", "val"]})
    with pytest.raises(MambamilError, match="two sets"):
        check_splits(splits, samples, CLS)


def test_metrics() -> None:
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(y, np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]), ["a", "b"])
    assert m["auc"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["confusion_matrix"] == [[2, 0], [0, 2]]
    time, event = np.array([1.0, 2, 3, 4]), np.array([1, 1, 1, 1])
    assert c_index(time, event, np.array([4.0, 3, 2, 1])) == 1.0
    assert c_index(time, event, np.array([1.0, 2, 3, 4])) == 0.0
    s = survival_metrics(np.r_[time, time + 10], np.ones(8), np.r_[np.ones(4) * 5, np.zeros(4)])
    assert s["c_index"] > 0.75 and 0 < s["logrank_p"] < 0.05  # ties within each group count one half


def test_nll_survival_loss_prefers_the_true_bin() -> None:
    def loss_for(logits: list[float], y: int, event: int) -> float:
        hazards = torch.sigmoid(torch.tensor([logits]))
        surv = torch.cumprod(1 - hazards, dim=1)
        return float(nll_survival_loss(hazards, surv, torch.tensor([y]), torch.tensor([event])))

    # An event in bin 0: a high first hazard is better. Censored in bin 3: low hazards are better.
    assert loss_for([3, 0, 0, 0], 0, 1) < loss_for([-3, 0, 0, 0], 0, 1)
    assert loss_for([-3, -3, -3, -3], 3, 0) < loss_for([3, 3, 3, 3], 3, 0)
