"""Heatmap rendering without a model: bounded memory, geometry, percentiles, QuPath GeoJSON."""

from __future__ import annotations

import tracemalloc

import numpy as np
import shapely.geometry

from mambamil import heatmaps
from mambamil.heatmaps import HeatmapSettings, patches_feature_collection, rank_percentiles, render_heatmap


def test_rank_percentiles() -> None:
    pct = rank_percentiles(np.array([0.3, 0.1, 0.2, 0.2]))
    assert pct.tolist() == [1.0, 0.0, 0.5, 0.5]
    assert rank_percentiles(np.array([5.0])).tolist() == [1.0]


def test_render_places_patches_and_follows_resolution() -> None:
    coords = np.array([[0, 0], [512, 0], [0, 512]])
    values = np.array([1.0, 0.0, 0.5])
    settings = HeatmapSettings.from_config(mpp=4.0, cmap="gray", alpha=1.0)
    img = render_heatmap(coords, values, 256, (2048, 1024), 0.5, settings)
    assert img.shape == (128, 256, 3)  # 2048 × 0.5 / 4 = 256 px wide
    assert (img[:32, :32] == 255).all()  # value 1 → white in gray
    assert (img[:32, 64:96] == 0).all()  # value 0 → black
    assert abs(int(img[70, 10, 0]) - 128) <= 1
    assert (img[100:, 100:] == 255).all()  # no patch → background
    coarse = render_heatmap(coords, values, 256, (2048, 1024), 0.5, HeatmapSettings.from_config(mpp=8.0))
    assert coarse.shape == (64, 128, 3)


def test_smoothing_spreads_within_tissue_only() -> None:
    coords = np.array([[x, 0] for x in range(0, 2048, 256)])
    values = np.r_[np.ones(4), np.zeros(4)]
    sharp = render_heatmap(
        coords, values, 256, (2048, 512), 1.0, HeatmapSettings.from_config(mpp=8, cmap="gray", alpha=1)
    )
    smooth = render_heatmap(
        coords, values, 256, (2048, 512), 1.0, HeatmapSettings.from_config(mpp=8, cmap="gray", alpha=1, smooth_um=64)
    )
    edge = 128  # output column of the 1 → 0 step
    assert sharp[10, edge - 1, 0] == 255 and sharp[10, edge + 1, 0] == 0
    assert 0 < smooth[10, edge + 1, 0] < 255
    assert (smooth[40:, :, 0] == 255).all()  # rows below the patches stay background


def test_memory_is_bounded_on_a_huge_slide() -> None:
    """200k patches on a 100k × 80k px slide: no array at slide resolution (that would be 24 GB)."""
    rng = np.random.default_rng(0)
    coords = np.stack([rng.integers(0, 100_000 - 256, 200_000), rng.integers(0, 80_000 - 256, 200_000)], axis=1)
    values = rng.random(200_000)
    settings = HeatmapSettings.from_config(mpp=4.0)  # slide at 0.25 µm/px → 6250 × 5000 px output (94 MB RGB)
    tracemalloc.start()
    img = render_heatmap(coords, values, 256, (100_000, 80_000), 0.25, settings)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert img.shape == (5000, 6250, 3)
    output_bytes = img.nbytes
    assert peak < output_bytes + 250 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert (img != 255).any(axis=2).mean() > 0.5  # 200k patches cover most of the slide


def test_bands_are_invisible(monkeypatch) -> None:
    """Rendering in bands of a few rows (patches and smoothing halos crossing band edges) gives the one-band image:
    exactly without smoothing; with it up to the Gaussian tail beyond the 3-sigma halo (a few levels, rarely)."""
    rng = np.random.default_rng(1)
    coords = rng.integers(0, 4096 - 256, (300, 2))
    values = rng.random(300)
    for settings in (HeatmapSettings.from_config(mpp=16.0), HeatmapSettings.from_config(mpp=16.0, smooth_um=64)):
        monkeypatch.setattr(heatmaps, "BAND_ROWS", 10**6)
        whole = render_heatmap(coords, values, 256, (4096, 3072), 1.0, settings)
        monkeypatch.setattr(heatmaps, "BAND_ROWS", 7)
        banded = render_heatmap(coords, values, 256, (4096, 3072), 1.0, settings)
        assert whole.shape == banded.shape == (192, 256, 3)
        diff = np.abs(whole.astype(int) - banded.astype(int))
        if settings.smooth_um == 0:
            assert (diff == 0).all()
        else:
            assert diff.max() <= 4 and (diff > 1).mean() < 0.01


def test_geojson_patch_squares_match_coordinates() -> None:
    coords = np.array([[100, 200], [356, 200]])
    fc = patches_feature_collection(coords, 256.0, {"attention": np.array([0.1, 0.9])})
    assert len(fc["features"]) == 2
    for (x, y), feature in zip(coords, fc["features"], strict=True):
        poly = shapely.geometry.shape(feature["geometry"])
        assert poly.is_valid and poly.bounds == (x, y, x + 256, y + 256) and poly.area == 256 * 256
        assert feature["properties"]["objectType"] == "detection"
    assert fc["features"][1]["properties"]["measurements"]["attention"] == 0.9
