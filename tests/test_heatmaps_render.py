"""Heatmap rendering without a model: bounded memory, geometry, percentiles, QuPath GeoJSON."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely.geometry
import tifffile

from mambamil import heatmaps
from mambamil import slide as slide_module
from mambamil.heatmaps import HeatmapSettings, patches_feature_collection, rank_percentiles, render_heatmap
from mambamil.slide import Slide


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


@pytest.mark.slow
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


class CountingSlide(Slide):
    """The project's slide class, recording the (level, width, height) of every OpenSlide request."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.requests: list[tuple[int, int, int]] = []

    def read_level_rgba(self, x0: int, y0: int, level: int, size: tuple[int, int]) -> np.ndarray:
        self.requests.append((level, int(size[0]), int(size[1])))
        return super().read_level_rgba(x0, y0, level, size)


def single_level_slide(path: Path) -> np.ndarray:
    """A 4096² TIFF at 0.25 µm/px without a pyramid (lossless), of 48-px cells of random colour; returns its
    pixels. Cells straddle the 32-px footprint of an 8 µm/px output pixel, so a misplaced read shows."""
    cells = np.random.default_rng(2).integers(0, 256, (86, 86, 3), dtype=np.uint8)
    rgb = np.ascontiguousarray(cells.repeat(48, axis=0).repeat(48, axis=1)[:4096, :4096])
    tifffile.imwrite(
        path, rgb, tile=(256, 256), photometric="rgb", compression="zlib", resolution=(4e4, 4e4),
        resolutionunit="CENTIMETER", metadata=None,
    )  # fmt: skip
    return rgb


def test_background_is_read_block_by_block_on_a_single_level_slide(tmp_path: Path, monkeypatch) -> None:
    """The heatmap background of a one-level slide is read in blocks of at most READ_BLOCK px a side, not one
    request across the slide's width per band (64 MiB here for a 48 KiB output band), and the image is the one
    that one read per band gives, with the slide's own pixels where there are no patches."""
    path = tmp_path / "flat.tiff"
    expected_bg = cv2.resize(single_level_slide(path), (128, 128), interpolation=cv2.INTER_AREA)
    coords = np.array([[0, 0], [1024, 1024], [2048, 0]])
    values = np.array([0.0, 0.5, 1.0])
    settings = HeatmapSettings.from_config(mpp=8.0, alpha=0.5)
    monkeypatch.setattr(slide_module, "READ_BLOCK", 1024)
    with CountingSlide(path) as s:
        assert s.level_count == 1 and s.mpp == 0.25
        tracemalloc.start()
        img = render_heatmap(coords, values, 1024, s.dimensions, s.mpp, settings, background=s)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        blocks = s.requests
    assert img.shape == (128, 128, 3)
    assert len(blocks) == 16 and {(lv, w, h) for lv, w, h in blocks} == {(0, 1024, 1024)}
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # one 4096² RGBA read alone is 64 MiB
    covered = np.zeros((128, 128), bool)
    for x, y in coords // 32:
        covered[y : y + 32, x : x + 32] = True
    assert np.array_equal(img[~covered], expected_bg[~covered])
    assert not np.array_equal(img[covered], expected_bg[covered])  # patches are drawn over it

    monkeypatch.setattr(slide_module, "READ_BLOCK", 10**9)  # the previous method: one request per band
    with CountingSlide(path) as s:
        previous = render_heatmap(coords, values, 1024, s.dimensions, s.mpp, settings, background=s)
        assert s.requests == [(0, 4096, 4096)]
    assert np.array_equal(img, previous)
