"""Tile-stage throughput: mambamil's segmentation + integral-image grid vs a naive per-patch read.

The naive baseline (what many scripts do) reads every grid candidate at full resolution with read_region and
keeps it when enough of its pixels are saturated. Both run in this process on the same slides, so the ratio is
meaningful on a noisy machine. Prints a Markdown table.

    python benchmarks/tiling.py [--quick] [--slide PATH]
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from mambamil import demo
from mambamil.slide import open_slide
from mambamil.tiling import TilingSettings, patch_grid, segment_tissue, tile_slide

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "CMU-1-Small-Region.svs"


def naive_tile(path: Path, settings: TilingSettings) -> int:
    """Read each candidate patch with read_region and test its saturation: the baseline."""
    kept = 0
    with open_slide(path) as s:
        size0 = settings.patch_size * settings.target_mpp / s.mpp
        w0, h0 = s.dimensions
        for y in np.arange(0, h0 - size0 + 1, size0):
            for x in np.arange(0, w0 - size0 + 1, size0):
                patch = s.read_level_region(round(x), round(y), 0, (math.ceil(size0), math.ceil(size0)))
                sat = cv2.cvtColor(patch, cv2.COLOR_RGB2HSV)[..., 1]
                kept += (sat > 20).mean() >= settings.tissue_threshold
    return kept


def coords_only(path: Path, settings: TilingSettings) -> int:
    """Segmentation + grid, without writing the preview/GeoJSON/H5."""
    with open_slide(path) as s:
        return len(patch_grid(s, segment_tissue(s, settings), settings).coords)


def bench(name: str, paths: list[Path], settings: TilingSettings, out: Path) -> dict:
    t0 = time.perf_counter()
    n_ours = sum(tile_slide(p, out, settings).n_patches for p in paths)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    sum(coords_only(p, settings) for p in paths)
    grid_only = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_naive = sum(naive_tile(p, settings) for p in paths)
    naive = time.perf_counter() - t0
    return {
        "name": name,
        "slides": len(paths),
        "patches": n_ours,
        "naive_patches": n_naive,
        "ours_s": ours,
        "grid_s": grid_only,
        "naive_s": naive,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 demo slides instead of 8")
    ap.add_argument("--slide", type=Path, default=REAL, help="real slide (default: shared CMU-1-Small-Region)")
    args = ap.parse_args()
    settings = TilingSettings.from_config()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = 3 if args.quick else 8
        demo.generate_cohort(tmp / "demo", n_slides=n, seed=0, progress=False)
        demo_paths = [demo.slide_path(tmp / "demo", s) for s in demo.slide_ids(n)]
        rows.append(bench(f"demo cohort ({n} slides)", demo_paths, settings, tmp / "tiles"))
        if not args.quick:
            big = demo.cohort_specs(1, seed=5, size=(16384, 12288))[0]
            rgb, _, _ = demo.render_slide(big)
            demo.write_pyramidal_tiff(tmp / "big.tiff", rgb, demo.DEMO_MPP)
            del rgb
            rows.append(bench("demo slide 16k×12k px", [tmp / "big.tiff"], settings, tmp / "tiles"))
        if args.slide.exists():
            rows.append(bench(f"real: {args.slide.name}", [args.slide], settings, tmp / "tiles"))
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    print("ours = full tile stage (segmentation, grid, preview PNG, GeoJSON, H5); grid = segmentation + grid only;")
    print("naive = read every candidate patch at level 0 and threshold its saturation.")
    print(
        "| data | slides | patches (ours / naive) | ours s | grid s | naive s | ours patches/s | ours slides/s "
        "| naive ÷ ours | naive ÷ grid |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['slides']} | {r['patches']} / {r['naive_patches']} | {r['ours_s']:.2f} | "
            f"{r['grid_s']:.2f} | {r['naive_s']:.2f} | {r['patches'] / r['ours_s']:.0f} | "
            f"{r['slides'] / r['ours_s']:.2f} | {r['naive_s'] / r['ours_s']:.1f}× | {r['naive_s'] / r['grid_s']:.1f}× |"
        )


if __name__ == "__main__":
    main()
