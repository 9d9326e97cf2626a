"""The heatmaps stage: per-patch scores from trained models drawn back onto the slide, and review exports.

For one slide and one or more checkpoints (one fold, or every fold model averaged):

- ``attention``: the pooling weights, averaged over models, as rank percentiles;
- ``gradxinput``: for attention-pooled models, gradient × input of each instance towards the predicted class
  (survival: towards the risk), independent of the pooling weights, also as rank percentiles.

Both come from one forward pass per model (:mod:`mambamil.inference`), on the sequence order stored in the
checkpoint, together with the slide's prediction (``<slide_id>.prediction.json``, with the checkpoints used).

Rendering is block by block at the chosen µm/px: the only whole-image array is the output RGB (uint8) at that
resolution; nothing is allocated at slide resolution. Outputs in ``OUT``::

    <slide_id>.<score>.png          heatmap over the slide thumbnail, with a colour bar
    <slide_id>.scores.csv           per-patch x, y (level 0), raw scores and percentiles
    <slide_id>.patches.geojson      patch squares with scores as measurements (QuPath: Import objects)
    <slide_id>.top.png / .bottom.png  top-k / bottom-k patch montages with their scores
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from matplotlib import colormaps

from mambamil.columns import percentile_column
from mambamil.config import settings_from_config
from mambamil.errors import InputFileError
from mambamil.fileio import atomic_output, write_json, write_png
from mambamil.inference import bag_outputs, check_features_match, load_bag, load_ensemble
from mambamil.paths import heatmap_outputs
from mambamil.slide import Slide, open_slide

log = logging.getLogger(__name__)

#: Output rows rendered at a time.
BAND_ROWS = 512


@dataclass(frozen=True)
class HeatmapSettings:
    """The ``heatmaps`` section of the config; defaults live in the schema only (use :meth:`from_config`)."""

    mpp: float
    cmap: str
    alpha: float
    smooth_um: float
    top_k: int

    @classmethod
    def from_config(cls, section: dict[str, Any] | None = None, **overrides: Any) -> HeatmapSettings:
        """Settings from a (validated) ``heatmaps`` config section, then non-None keyword overrides."""
        return settings_from_config(cls, "heatmaps", section, **overrides)


def rank_percentiles(scores: np.ndarray) -> np.ndarray:
    """Scores → rank percentiles in [0, 1] (ties share their mean rank)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) <= 1:
        return np.ones_like(scores)
    return (pd.Series(scores).rank(method="average").to_numpy() - 1) / (len(scores) - 1)


def colour_lut(cmap: str) -> np.ndarray:
    """A 256×3 uint8 lookup table of a matplotlib colormap."""
    try:
        cm = colormaps[cmap]
    except KeyError as exc:
        raise ValueError(f"unknown colormap {cmap!r}") from exc
    return (cm(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def render_heatmap(
    coords: np.ndarray,
    values: np.ndarray,
    patch_size0: float,
    level0_dims: tuple[int, int],
    slide_mpp: float,
    settings: HeatmapSettings,
    background: Slide | None = None,
) -> np.ndarray:
    """Draw ``values`` (in [0, 1]) of patches at level-0 ``coords`` over the slide at ``settings.mpp``.

    Renders bands of :data:`BAND_ROWS` output rows; each band reads its background from the slide (if given, at
    its own µm/px, which ``slide_mpp`` must equal) block by block as the tile stage does
    (:meth:`~mambamil.slide.Slide.read_box_at_mpp`: every OpenSlide request at most
    :data:`~mambamil.slide.READ_BLOCK` px on a side, even on a slide with one huge level), accumulates the
    patches that overlap it (mean where they overlap), smooths with a halo, and blends.
    """
    scale = slide_mpp / settings.mpp  # output px per level-0 px
    out_w, out_h = max(1, round(level0_dims[0] * scale)), max(1, round(level0_dims[1] * scale))
    out = np.empty((out_h, out_w, 3), np.uint8)
    lut = colour_lut(settings.cmap)
    sigma = settings.smooth_um / settings.mpp
    halo = math.ceil(3 * sigma) if sigma > 0 else 0
    x0 = np.floor(coords[:, 0] * scale).astype(np.int64)
    y0 = np.floor(coords[:, 1] * scale).astype(np.int64)
    side = max(1, round(patch_size0 * scale))
    order = np.argsort(y0, kind="stable")
    y_sorted = y0[order]
    for top in range(0, out_h, BAND_ROWS):
        bottom = min(out_h, top + BAND_ROWS)
        lo, hi = top - halo, bottom + halo  # band with halo, in output rows
        band_h = hi - lo
        total = np.zeros((band_h, out_w), np.float32)
        count = np.zeros((band_h, out_w), np.float32)
        first = np.searchsorted(y_sorted, lo - side, side="right")
        last = np.searchsorted(y_sorted, hi, side="left")
        for i in order[first:last]:
            ya, yb = max(lo, y0[i]) - lo, min(hi, y0[i] + side) - lo
            xa, xb = max(0, x0[i]), min(out_w, x0[i] + side)
            if ya < yb and xa < xb:
                total[ya:yb, xa:xb] += values[i]
                count[ya:yb, xa:xb] += 1
        covered = count > 0
        mean = np.divide(total, count, out=np.zeros_like(total), where=covered)
        if sigma > 0:
            weight = cv2.GaussianBlur(covered.astype(np.float32), (0, 0), sigma)
            mean = np.divide(cv2.GaussianBlur(mean, (0, 0), sigma), weight, out=mean, where=weight > 1e-3)
        mean, covered = mean[top - lo : bottom - lo], covered[top - lo : bottom - lo]
        if background is not None:
            bg = background.read_box_at_mpp(0, top, (out_w, bottom - top), settings.mpp)  # block by block
        else:
            bg = np.full((bottom - top, out_w, 3), 255, np.uint8)
        colour = lut[np.clip((mean * 255).round(), 0, 255).astype(np.uint8)]
        blended = (settings.alpha * colour + (1 - settings.alpha) * bg).round().astype(np.uint8)
        out[top:bottom] = np.where(covered[..., None], blended, bg)
    return out


def add_colour_bar(image: np.ndarray, cmap: str, label: str) -> np.ndarray:
    """Append a horizontal colour bar (0–100th percentile) under the image."""
    w = image.shape[1]
    bar_h, pad = max(12, w // 60), max(18, w // 40)
    strip = np.full((bar_h + 2 * pad, w, 3), 255, np.uint8)
    x0, x1 = w // 10, w - w // 10
    ramp = colour_lut(cmap)[np.linspace(0, 255, max(1, x1 - x0)).astype(int)]
    strip[pad // 2 : pad // 2 + bar_h, x0:x1] = ramp[None]
    scale = max(0.35, w / 2000)
    font = cv2.FONT_HERSHEY_SIMPLEX
    y = pad // 2 + bar_h + int(16 * scale) + 2
    for text, x in (("0", x0), (f"{label} percentile", w // 2 - int(70 * scale)), ("100", x1 - int(30 * scale))):
        cv2.putText(strip, text, (x, y), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([image, strip], axis=0)


def patch_montage(
    slide: Slide, coords: np.ndarray, scores: np.ndarray, patch_size0: float, size: int = 160
) -> np.ndarray:
    """A grid of patches with their score printed on each."""
    n = len(coords)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    canvas = np.full((rows * (size + 4), cols * (size + 4), 3), 255, np.uint8)
    for k, ((x, y), s) in enumerate(zip(coords, scores, strict=True)):
        patch = slide.read_region(float(x), float(y), (patch_size0, patch_size0), (size, size)).copy()
        cv2.putText(patch, f"{s:.3f}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(patch, f"{s:.3f}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(k, cols)
        canvas[r * (size + 4) : r * (size + 4) + size, c * (size + 4) : c * (size + 4) + size] = patch
    return canvas


def patches_feature_collection(coords: np.ndarray, patch_size0: float, measurements: dict[str, np.ndarray]) -> dict:
    """Patch squares as QuPath detections with per-patch measurements."""
    features = []
    for i, (x, y) in enumerate(coords.tolist()):
        x1, y1 = x + patch_size0, y + patch_size0
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]]},
                "properties": {
                    "objectType": "detection",
                    "measurements": {k: round(float(v[i]), 6) for k, v in measurements.items()},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def heatmap_slide(
    slide_path: str | Path,
    features_path: str | Path,
    checkpoints: list[Path],
    out_dir: str | Path,
    settings: HeatmapSettings | None = None,
    slide_id: str | None = None,
    mpp: float | None = None,
    original: dict[str, Any] | None = None,
    device: str = "cpu",
    order: str | None = None,
) -> dict[str, Any]:
    """All heatmap outputs of one slide (see the module docstring). ``original`` gives the metadata of original
    MambaMIL state dicts; ``order`` overrides the sequence order stored in the checkpoint (None: the stored one;
    an override warns). Returns a summary with the slide's prediction."""
    settings = settings or HeatmapSettings.from_config()
    ensemble = load_ensemble([Path(c) for c in checkpoints], device, original, order)
    bag = load_bag(features_path, ensemble.in_dim, slide_id=Path(features_path).stem, encoder=ensemble.encoder)
    check_features_match(bag, ensemble)
    if bag.coords is None:
        raise InputFileError(features_path, "the bag has no patch coordinates, so it cannot be drawn on the slide")
    coords = bag.coords
    result = bag_outputs(ensemble, bag, gradients=True)
    scores = {
        name: v for name, v in (("attention", result.attention), ("gradxinput", result.gradxinput)) if v is not None
    }
    with open_slide(slide_path, mpp=mpp, slide_id=slide_id) as slide:
        meta = bag.coords_meta  # CLAM/TRIDENT bags may lack patch_size_level0: their patch_size is the fallback
        size0 = float((meta.patch_size_level0 or meta.patch_size or 0) if meta is not None else 0)
        if not size0:
            raise InputFileError(features_path, "the bag's coords carry no patch size, so it cannot be drawn")
        sid = slide.slide_id
        files = heatmap_outputs(out_dir, sid, tuple(scores))
        table = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1]})
        written = {}
        for name, raw in scores.items():
            pct = rank_percentiles(raw)
            table[name], table[percentile_column(name)] = raw, pct
            img = render_heatmap(coords, pct, size0, slide.dimensions, slide.mpp, settings, background=slide)
            written[name] = files[name]
            write_png(written[name], add_colour_bar(img, settings.cmap, name))
        main = "attention" if "attention" in scores else next(iter(scores))
        ranked = np.argsort(-table[main].to_numpy(), kind="stable")
        k = min(settings.top_k, len(ranked))
        for name, idx in (("top", ranked[:k]), ("bottom", ranked[::-1][:k])):
            montage = patch_montage(slide, coords[idx], table[main].to_numpy()[idx], size0)
            write_png(files[name], montage)
        with atomic_output(files["scores"]) as tmp:
            table.to_csv(tmp, index=False)
        measures = {c: table[c].to_numpy() for c in table.columns if c not in ("x", "y")}
        write_json(files["geojson"], patches_feature_collection(coords, size0, measures), indent=None)
        used = [str(Path(c).resolve()) for c in checkpoints]  # which models drew it (the workflow: the test fold's)
        write_json(files["prediction"], {**result.prediction, "checkpoints": used})
    return {
        "slide_id": sid,
        "n_patches": len(coords),
        "scores": list(scores),
        "prediction": result.prediction,
        "outputs": [str(p) for p in written.values()],
    }
