"""The tile stage: tissue segmentation and the patch grid at a target µm/px.

For one slide it writes, under the output folder::

    <slide_id>.h5              patch coordinates (layout in :mod:`mambamil.h5layout`)
    <slide_id>.tissue.geojson  tissue polygons with holes, level-0 px (QuPath: File → Import objects)
    <slide_id>.preview.png     thumbnail with tissue contours (green), holes (blue) and kept patches
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mambamil.config import settings_from_config
from mambamil.fileio import write_json, write_png
from mambamil.geometry import Polygon, mask_polygons, polygons_to_feature_collection, polygons_to_mask
from mambamil.h5layout import CoordsAttrs, write_coords
from mambamil.paths import tile_outputs
from mambamil.slide import Slide, open_slide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TilingSettings:
    """The ``tiling`` section of the config; defaults live in the schema only (use :meth:`from_config`)."""

    target_mpp: float
    patch_size: int
    overlap: float
    tissue_threshold: float
    seg_mpp: float
    saturation_threshold: int | str
    min_saturation: int
    median_blur: int
    close_um: float
    min_tissue_area_um2: float
    min_hole_area_um2: float
    preview_max_px: int

    @classmethod
    def from_config(cls, section: dict[str, Any] | None = None, **overrides: Any) -> TilingSettings:
        """Settings from a (validated) ``tiling`` config section, then non-None keyword overrides."""
        return settings_from_config(cls, "tiling", section, **overrides)


@dataclass
class TissueMask:
    """Tissue segmented at ``mpp`` µm/px; ``scale`` = level-0 pixels per mask pixel."""

    mask: np.ndarray
    polygons: list[Polygon]
    mpp: float
    scale: float
    threshold: int


@dataclass
class PatchGrid:
    """Kept patches: level-0 top-left corners and their tissue fractions."""

    coords: np.ndarray
    tissue_fraction: np.ndarray
    patch_size_level0: float
    step_level0: float
    n_candidates: int


@dataclass
class TileResult:
    slide_id: str
    n_patches: int
    n_candidates: int
    tissue_area_mm2: float
    seconds: float
    outputs: dict[str, Path]


def segment_tissue(slide: Slide, settings: TilingSettings, rgb: np.ndarray | None = None) -> TissueMask:
    """HSV saturation → median blur → Otsu (floored at ``min_saturation``) or fixed threshold → closing →
    contours with holes, dropping regions and holes below the configured areas (in µm²). ``rgb``: the slide
    already read at ``seg_mpp`` (read here when not given)."""
    if rgb is None:
        rgb = slide.read_whole_at_mpp(settings.seg_mpp)
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    k = max(1, int(settings.median_blur)) | 1
    if k > 1:
        sat = cv2.medianBlur(sat, k)
    if settings.saturation_threshold == "otsu":
        otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        threshold = max(int(otsu), settings.min_saturation)
    else:
        threshold = int(settings.saturation_threshold)
    mask = (sat > threshold).astype(np.uint8)
    ksize = round(settings.close_um / settings.seg_mpp)
    if ksize >= 2:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ksize, ksize))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    px_area = settings.seg_mpp**2
    polygons = mask_polygons(mask, settings.min_tissue_area_um2 / px_area, settings.min_hole_area_um2 / px_area)
    if not polygons:
        raise slide.error(
            f"no tissue found (saturation threshold {threshold}, min tissue area "
            f"{settings.min_tissue_area_um2:g} µm² at {settings.seg_mpp:g} µm/px)"
        )
    clean = polygons_to_mask(polygons, mask.shape)
    scale = slide.dimensions[0] / mask.shape[1]
    return TissueMask(clean, polygons, settings.seg_mpp, scale, threshold)


def patch_grid(slide: Slide, tissue: TissueMask, settings: TilingSettings) -> PatchGrid:
    """A grid aligned at level-0 (0, 0); keep patches whose tissue fraction ≥ ``tissue_threshold``.

    Tissue fractions come from an integral image of the tissue mask, so the cost is O(candidates).
    """
    w0, h0 = slide.dimensions
    size0 = settings.patch_size * settings.target_mpp / slide.mpp
    step0 = size0 * (1.0 - settings.overlap)
    nx = max(0, math.floor((w0 - size0) / step0) + 1)
    ny = max(0, math.floor((h0 - size0) / step0) + 1)
    gx, gy = np.meshgrid(np.arange(nx) * step0, np.arange(ny) * step0)  # row-major
    x = np.round(gx.ravel()).astype(np.int64)
    y = np.round(gy.ravel()).astype(np.int64)

    integral = cv2.integral(tissue.mask.astype(np.uint8))  # (h+1, w+1)
    mh, mw = tissue.mask.shape
    x1 = np.clip(np.round(x / tissue.scale), 0, mw).astype(np.int64)
    y1 = np.clip(np.round(y / tissue.scale), 0, mh).astype(np.int64)
    x2 = np.clip(np.round((x + size0) / tissue.scale), 0, mw).astype(np.int64)
    y2 = np.clip(np.round((y + size0) / tissue.scale), 0, mh).astype(np.int64)
    x2, y2 = np.maximum(x2, x1 + 1).clip(max=mw), np.maximum(y2, y1 + 1).clip(max=mh)
    inside = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
    area = np.maximum((x2 - x1) * (y2 - y1), 1)
    fraction = inside / area
    keep = fraction >= max(settings.tissue_threshold, 1e-9)
    coords = np.stack([x[keep], y[keep]], axis=1)
    return PatchGrid(coords, fraction[keep].astype(np.float32), size0, step0, int(nx * ny))


def draw_preview(
    slide: Slide, tissue: TissueMask, grid: PatchGrid, settings: TilingSettings, seg_rgb: np.ndarray | None = None
) -> np.ndarray:
    """RGB thumbnail with tissue contours, holes and the kept patch squares.

    Like a pyramid level, the segmentation image (``seg_rgb``, the slide already read at ``seg_mpp``) serves when it
    is at most 2× coarser than the preview's resolution, and is preferred to a pyramid level then: the slide is
    decoded once per tile job, not twice (on large slides the preview is coarser than the segmentation, so this is
    the common case)."""
    w0, h0 = slide.dimensions
    preview_mpp = max(slide.mpp, max(w0, h0) * slide.mpp / settings.preview_max_px)
    if seg_rgb is not None and tissue.mpp <= 2 * preview_mpp:
        preview_mpp = max(preview_mpp, tissue.mpp)
        rgb = cv2.resize(seg_rgb, slide.size_at_mpp(preview_mpp), interpolation=cv2.INTER_AREA)  # a new array
    else:
        # Snap to a pyramid level up to 2× coarser, so the preview never decodes a much finer level than it shows.
        coarser = [slide.level_mpp(lv) for lv in range(slide.level_count) if slide.level_mpp(lv) >= preview_mpp]
        if coarser and min(coarser) <= 2 * preview_mpp:
            preview_mpp = min(coarser)
        rgb = slide.read_whole_at_mpp(preview_mpp).copy()
    f = slide.mpp / preview_mpp  # preview px per level-0 px
    overlay = rgb.copy()
    side = max(1, round(grid.patch_size_level0 * f))
    for x, y in grid.coords:
        p = (round(x * f), round(y * f))
        cv2.rectangle(overlay, p, (p[0] + side - 1, p[1] + side - 1), (20, 20, 120), 1)
    rgb = cv2.addWeighted(overlay, 0.7, rgb, 0.3, 0)
    ratio = tissue.scale * f  # preview px per mask px
    thickness = max(1, round(max(rgb.shape[:2]) / 800))
    for poly in tissue.polygons:
        ext = np.round((poly.exterior + 0.5) * ratio).astype(np.int32)
        cv2.polylines(rgb, [ext], True, (0, 170, 0), thickness)
        holes = [np.round((h + 0.5) * ratio).astype(np.int32) for h in poly.holes]
        if holes:
            cv2.polylines(rgb, holes, True, (0, 90, 255), thickness)
    return rgb


def tile_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    settings: TilingSettings | None = None,
    slide_id: str | None = None,
    mpp: float | None = None,
) -> TileResult:
    """Segment tissue, lay the patch grid and write coordinates, GeoJSON and preview for one slide."""
    settings = settings or TilingSettings.from_config()
    start = time.perf_counter()
    with open_slide(slide_path, mpp=mpp, slide_id=slide_id) as slide:
        log.info(
            "%s: %dx%d px, %.4g µm/px (%s), %d level(s)",
            slide.slide_id,
            *slide.dimensions,
            slide.mpp,
            slide.mpp_source,
            slide.level_count,
        )
        if settings.target_mpp < slide.mpp * (1 - 0.02):
            raise slide.error(f"target {settings.target_mpp} µm/px is finer than the scan ({slide.mpp:.4g} µm/px)")
        seg_rgb = slide.read_whole_at_mpp(settings.seg_mpp)
        tissue = segment_tissue(slide, settings, seg_rgb)
        grid = patch_grid(slide, tissue, settings)
        if len(grid.coords) == 0:
            raise slide.error(
                f"tissue found but no patch reaches tissue fraction {settings.tissue_threshold} "
                f"at {settings.patch_size} px × {settings.target_mpp} µm/px"
            )
        choice = slide.level_for_mpp(settings.target_mpp)
        paths = tile_outputs(out_dir, slide.slide_id)
        tissue_geojson = polygons_to_feature_collection(tissue.polygons, tissue.scale, "Tissue")
        write_json(paths["tissue"], tissue_geojson, indent=None)
        preview = draw_preview(slide, tissue, grid, settings, seg_rgb)
        del seg_rgb
        write_png(paths["preview"], preview)
        ds = choice.downsample
        meta = CoordsAttrs(
            target_mpp=settings.target_mpp,
            patch_size=settings.patch_size,
            overlap=settings.overlap,
            patch_size_level0=round(grid.patch_size_level0),
            step_level0=grid.step_level0,
            tissue_threshold=settings.tissue_threshold,
            slide_mpp=slide.mpp,
            mpp_source=slide.mpp_source,
            level0_dim=slide.dimensions,
            patch_level=choice.level,
            downsample=(ds, ds),
            level_dim=slide.level_dimensions[choice.level],
            downsampled_level_dim=slide.level_dimensions[choice.level],
            name=slide.slide_id,
            slide_path=str(Path(slide_path).resolve()),
        )
        write_coords(paths["coords"], grid.coords, meta, grid.tissue_fraction)
        tissue_mm2 = float(tissue.mask.sum()) * (tissue.scale * slide.mpp) ** 2 / 1e6
        seconds = time.perf_counter() - start
        log.info(
            "%s: %d patches of %d candidates, tissue %.2f mm², %.2f s",
            slide.slide_id,
            len(grid.coords),
            grid.n_candidates,
            tissue_mm2,
            seconds,
        )
        return TileResult(slide.slide_id, len(grid.coords), grid.n_candidates, tissue_mm2, seconds, paths)
