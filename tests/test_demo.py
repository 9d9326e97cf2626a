"""The demo-cohort generator: sheets, lesion ground truth, survival that follows lesion burden."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambamil import demo
from mambamil.geometry import feature_collection_to_mask
from mambamil.sheets import read_label_sheet, read_slide_sheet


def test_sheets(demo_cohort: Path) -> None:
    slides = read_slide_sheet(demo_cohort / "slides.csv")
    labels = read_label_sheet(demo_cohort / "labels.csv")
    assert slides["slide_id"].tolist() == demo.slide_ids(4)
    assert all(Path(p).exists() for p in slides["path"])
    assert set(labels["label"]) == set(demo.CLASSES)
    assert set(labels["event"]) <= {0, 1}
    assert (labels["time"] > 0).all()


def test_lesion_ground_truth_round_trips(demo_cohort: Path) -> None:
    truth = pd.read_csv(demo_cohort / "truth.csv")
    specs = {s.slide_id: s for s in demo.cohort_specs(4, seed=0, size=(2048, 1536))}
    n_positive = 0
    for row in truth.itertuples():
        fc = json.loads(demo.lesion_path(demo_cohort, row.slide_id).read_text())
        _, tissue, lesion = demo.render_slide(specs[row.slide_id])
        if row.label == "normal":
            assert fc["features"] == [] and not lesion.any()
            continue
        n_positive += 1
        raster = feature_collection_to_mask(fc, lesion.shape, 16.0)
        iou = (raster & lesion).sum() / (raster | lesion).sum()
        assert iou > 0.9, f"{row.slide_id}: IoU {iou:.3f}"
        burden = lesion.sum() / tissue.sum()
        assert 0.02 < burden < 0.3
        assert row.lesion_burden == pytest.approx(burden)
    assert n_positive >= 1


def test_deterministic(tmp_path: Path) -> None:
    a = demo.render_slide(demo.cohort_specs(2, seed=3, size=(512, 512))[0])[0]
    b = demo.render_slide(demo.cohort_specs(2, seed=3, size=(512, 512))[0])[0]
    c = demo.render_slide(demo.cohort_specs(2, seed=4, size=(512, 512))[0])[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_lesion_texture_is_darker_and_denser(demo_cohort: Path) -> None:
    specs = demo.cohort_specs(4, seed=0, size=(2048, 1536))
    spec = next(s for s in specs if s.positive)
    rgb, tissue, lesion = demo.render_slide(spec)
    big = lambda m: np.kron(m, np.ones((16, 16), bool))[: rgb.shape[0], : rgb.shape[1]]  # noqa: E731
    gray = rgb.mean(axis=2)
    lesion_px, stroma_px = gray[big(lesion)], gray[big(tissue & ~lesion)]
    assert lesion_px.mean() < stroma_px.mean() - 15


def test_survival_depends_on_burden() -> None:
    rng = np.random.default_rng(0)
    burden = np.r_[np.zeros(400), np.full(400, 0.15)]
    time, event = demo.survival_from_burden(rng, burden)
    assert np.median(time[400:]) < 0.7 * np.median(time[:400])
    assert 0.3 < event.mean() < 0.98
