"""Tile-stage throughput: mambamil's segmentation + integral-image grid vs a naive per-patch read and vs CLAM.

The naive baseline (what many scripts do) reads every grid candidate at full resolution with read_region and
keeps it when enough of its pixels are saturated. Both run in this process on the same slides, so the ratio is
meaningful on a noisy machine. Prints Markdown tables.

The CLAM baseline is a compact re-implementation, in this file only (CLAM is not a dependency and nothing is
downloaded), of CLAM's ``create_patches_fp.py`` segmentation + patching with the ``tcga.csv`` preset
(``WholeSlideImage.segmentTissue`` / ``process_contours`` / ``process_contour`` / ``isInContourV3_Easy`` /
``isInHoles`` / ``save_hdf5``): segmentation at the level OpenSlide picks for downsample 64, median-blurred HSV
saturation (7) above a fixed 8, 4×4 close, RETR_CCOMP contours filtered by area (a_t=100, a_h=16 reference
512-px patches, up to 8 holes), a 256-px grid at level 0 over each contour's bounding box (use_padding=True),
kept by the four-point test (centre ± 64 px diagonally, pointPolygonTest ≥ 0) unless the centre lies in a hole;
coordinates go to an H5 ``coords`` dataset (int64); the mask preview that the script always writes
(``visWSI`` at the level for downsample 64, contours drawn, JPEG) is written too. One deliberate difference: CLAM
tests the candidates with a ``multiprocessing.Pool`` of up to 4 workers; here they are tested serially in this
process (on 2 busy cores the pool would only add start-up and pickling cost, so this favours CLAM). Stitching
(``--stitch``) is not run. The two methods keep different patches by design (CLAM: any of four points in a contour
at 8× coarser segmentation; mambamil: tissue fraction of the patch ≥ ``tissue_threshold``).

    python benchmarks/tiling.py [--quick] [--slide PATH] [--n-slides N] [--n-big N] [--clam-only]
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import openslide
from PIL import Image

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


# --- CLAM create_patches_fp.py re-implementation (baseline; tcga.csv preset) ---------------------------------
CLAM_TCGA = {"sthresh": 8, "sthresh_up": 255, "mthresh": 7, "close": 4, "a_t": 100, "a_h": 16, "max_n_holes": 8}


def _clam_filter_contours(contours, hierarchy: np.ndarray, a_t: float, a_h: float, max_n_holes: int):
    """CLAM's _filter_contours: regions (no parent) whose area minus their holes' exceeds a_t; big holes."""
    filtered, all_holes = [], []
    for cont_idx in np.flatnonzero(hierarchy[:, 1] == -1):
        holes = np.flatnonzero(hierarchy[:, 1] == cont_idx)
        a = cv2.contourArea(contours[cont_idx]) - np.array([cv2.contourArea(contours[h]) for h in holes]).sum()
        if a == 0:
            continue
        if a_t < a:
            filtered.append(cont_idx)
            all_holes.append(holes)
    foreground = [contours[i] for i in filtered]
    hole_contours = []
    for hole_ids in all_holes:
        unfiltered = sorted((contours[i] for i in hole_ids), key=cv2.contourArea, reverse=True)[:max_n_holes]
        hole_contours.append([h for h in unfiltered if cv2.contourArea(h) > a_h])
    return foreground, hole_contours


def clam_segment(wsi: openslide.OpenSlide, downsamples: list[tuple[float, float]], p: dict = CLAM_TCGA):
    """CLAM's segmentTissue (seg_level -1 → get_best_level_for_downsample(64)); contours scaled to level 0."""
    seg_level = 0 if wsi.level_count == 1 else wsi.get_best_level_for_downsample(64)
    img = np.array(wsi.read_region((0, 0), seg_level, wsi.level_dimensions[seg_level]))
    img_hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # CLAM passes the RGBA array as is
    img_med = cv2.medianBlur(img_hsv[:, :, 1], p["mthresh"])
    _, img_bin = cv2.threshold(img_med, p["sthresh"], p["sthresh_up"], cv2.THRESH_BINARY)
    if p["close"] > 0:
        img_bin = cv2.morphologyEx(img_bin, cv2.MORPH_CLOSE, np.ones((p["close"], p["close"]), np.uint8))
    scale = downsamples[seg_level]
    scaled_ref_patch_area = int(512**2 / (scale[0] * scale[1]))
    contours, hierarchy = cv2.findContours(img_bin, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return [], []
    hierarchy = np.squeeze(hierarchy, axis=(0,))[:, 2:]
    fg, holes = _clam_filter_contours(
        contours, hierarchy, p["a_t"] * scaled_ref_patch_area, p["a_h"] * scaled_ref_patch_area, p["max_n_holes"]
    )
    fg = [np.array(c * scale, dtype="int32") for c in fg]
    holes = [[np.array(h * scale, dtype="int32") for h in hs] for hs in holes]
    return fg, holes


def _clam_keep(cont: np.ndarray, holes: list[np.ndarray], pt: np.ndarray, patch_size: int) -> bool:
    """isInContours(isInContourV3_Easy(center_shift=0.5), pt, holes): four points, then not in a hole."""
    shift = int(patch_size // 2 * 0.5)
    cx, cy = pt[0] + patch_size // 2, pt[1] + patch_size // 2
    four = ((cx - shift, cy - shift), (cx + shift, cy + shift), (cx + shift, cy - shift), (cx - shift, cy + shift))
    if not any(cv2.pointPolygonTest(cont, (float(x), float(y)), False) >= 0 for x, y in four):
        return False
    centre = (float(pt[0] + patch_size / 2), float(pt[1] + patch_size / 2))
    return not any(cv2.pointPolygonTest(h, centre, False) > 0 for h in holes)


def clam_mask(wsi: openslide.OpenSlide, downsamples, contours, holes_tissue, out: Path, line_thickness: int = 250):
    """CLAM's visWSI + ``mask.save(<slide_id>.jpg)``, which create_patches_fp.py always runs (``save_mask=True``):
    the level for downsample 64 read whole, tissue contours (green) and holes (blue) drawn, saved as JPEG by PIL."""
    vis_level = 0 if wsi.level_count == 1 else wsi.get_best_level_for_downsample(64)
    img = np.array(wsi.read_region((0, 0), vis_level, wsi.level_dimensions[vis_level]).convert("RGB"))
    scale = [1 / downsamples[vis_level][0], 1 / downsamples[vis_level][1]]
    thickness = int(line_thickness * math.sqrt(scale[0] * scale[1]))
    scaled = [np.array(c * scale, dtype="int32") for c in contours]
    cv2.drawContours(img, scaled, -1, (0, 255, 0), thickness, lineType=cv2.LINE_8)
    for holes in holes_tissue:
        cv2.drawContours(img, [np.array(h * scale, dtype="int32") for h in holes], -1, (0, 0, 255), thickness)
    Image.fromarray(img).save(out)


def clam_tile(path: Path, out_dir: Path, params: dict = CLAM_TCGA, patch_size: int = 256, step_size: int = 256) -> int:
    """CLAM create_patches_fp.py --seg --patch (tcga preset, patch_level 0): segment, save the mask JPEG, patch,
    write the H5."""
    with openslide.OpenSlide(str(path)) as wsi:
        dim0 = wsi.level_dimensions[0]
        downsamples = [(dim0[0] / w, dim0[1] / h) for w, h in wsi.level_dimensions]  # _assertLevelDownsamples
        contours, holes_tissue = clam_segment(wsi, downsamples, params)
        clam_mask(wsi, downsamples, contours, holes_tissue, out_dir / f"{path.stem}.jpg")
    out = out_dir / f"{path.stem}.h5"
    n, mode = 0, "w"
    for cont, holes in zip(contours, holes_tissue, strict=True):
        start_x, start_y, w, h = cv2.boundingRect(cont)
        xs, ys = np.meshgrid(
            np.arange(start_x, start_x + w, step_size), np.arange(start_y, start_y + h, step_size), indexing="ij"
        )
        cands = np.array([xs.flatten(), ys.flatten()]).transpose()
        kept = np.array([c for c in cands if _clam_keep(cont, holes, c, patch_size)])
        if len(kept) == 0:
            continue
        with h5py.File(out, mode) as f:  # save_hdf5: create on the first contour, append on later ones
            if mode == "w":
                dset = f.create_dataset("coords", shape=kept.shape, maxshape=(None, 2), chunks=(1, 2), dtype=kept.dtype)
                dset[:] = kept
                dset.attrs.update(
                    patch_size=patch_size, patch_level=0, downsample=(1.0, 1.0), level_dim=dim0, name=path.stem
                )
            else:
                dset = f["coords"]
                dset.resize(len(dset) + len(kept), axis=0)
                dset[-len(kept) :] = kept
        mode = "a"
        n += len(kept)
    return n


def bench_clam(name: str, paths: list[Path], settings: TilingSettings, out: Path) -> dict:
    """The tile stages on the same slides, in this process: CLAM (tcga), ours, CLAM (tcga with a_t=1).

    The tcga preset's a_t=100 reference patches is 100 × 512² px of level 0 (26 Mpx): a tissue piece of a small
    slide (demo slides are ~28 Mpx in all) never reaches it, so CLAM keeps no region and lays no grid. The
    second CLAM run lowers a_t to 1 reference patch so that its patching work is measured too.
    """
    (out / "clam").mkdir(parents=True, exist_ok=True)
    (out / "clam1").mkdir(parents=True, exist_ok=True)
    clam_tile(paths[0], out / "clam"), tile_slide(paths[0], out / "ours", settings)  # warm-up, untimed
    t0 = time.perf_counter()
    n_clam = sum(clam_tile(p, out / "clam") for p in paths)
    clam = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_ours = sum(tile_slide(p, out / "ours", settings).n_patches for p in paths)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    sum(coords_only(p, settings) for p in paths)
    grid = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_clam1 = sum(clam_tile(p, out / "clam1", {**CLAM_TCGA, "a_t": 1}) for p in paths)
    clam1 = time.perf_counter() - t0
    for h5 in (out / "clam1").glob("*.h5"):
        with h5py.File(h5) as f:
            assert f["coords"].dtype == np.int64
    return {
        "name": name,
        "slides": len(paths),
        "ours": n_ours,
        "clam": n_clam,
        "clam1": n_clam1,
        "ours_s": ours,
        "grid_s": grid,
        "clam_s": clam,
        "clam1_s": clam1,
    }


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
    ap.add_argument("--quick", action="store_true", help="3 demo slides instead of 8 in the naive table")
    ap.add_argument("--slide", type=Path, default=REAL, help="real slide (default: shared CMU-1-Small-Region)")
    ap.add_argument("--n-slides", type=int, default=32, help="demo slides (6144 × 4608 nominal) for the CLAM table")
    ap.add_argument("--clam-only", action="store_true", help="only the CLAM comparison (skip the naive table)")
    ap.add_argument("--n-big", type=int, default=2, help="large demo slides (16384 × 12288) for the CLAM table")
    args = ap.parse_args()
    settings = TilingSettings.from_config()
    rows, clam_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        demo.generate_cohort(tmp / "clam_demo", n_slides=args.n_slides, seed=1, size=(6144, 4608), progress=False)
        print(f"generated {args.n_slides} demo slides (6144 × 4608 nominal) in {time.perf_counter() - t0:.1f} s")
        paths = [demo.slide_path(tmp / "clam_demo", s) for s in demo.slide_ids(args.n_slides)]
        clam_rows.append(bench_clam(f"demo 6144×4608 ({args.n_slides} slides)", paths, settings, tmp / "c1"))
        if args.n_big:
            t0 = time.perf_counter()
            demo.generate_cohort(tmp / "big_demo", n_slides=args.n_big, seed=2, size=(16384, 12288), progress=False)
            print(f"generated {args.n_big} demo slides (16384 × 12288 nominal) in {time.perf_counter() - t0:.1f} s")
            big = [demo.slide_path(tmp / "big_demo", s) for s in demo.slide_ids(args.n_big)]
            clam_rows.append(bench_clam(f"demo 16384×12288 ({args.n_big} slides)", big, settings, tmp / "c3"))
        if args.slide.exists():
            clam_rows.append(bench_clam(f"real: {args.slide.name}", [args.slide], settings, tmp / "c2"))
        if not args.clam_only:
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
    print()
    print("ours = mambamil.tiling.tile_slide (project defaults: segmentation, grid, preview PNG, GeoJSON, H5);")
    print("CLAM = create_patches_fp.py --seg --patch recipe, tcga preset, with its mask JPEG (re-implemented, serial);")
    print("CLAM a_t=1 = the same with the region area threshold at 1 reference patch; grid = ours without outputs")
    print("(segmentation + grid only). Patch counts differ by design.")
    print(
        "| data | slides | patches (ours / CLAM / CLAM a_t=1) | ours s | grid s | CLAM s | CLAM a_t=1 s "
        "| ours ÷ CLAM | ours ÷ CLAM a_t=1 | grid ÷ CLAM a_t=1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in clam_rows:
        print(
            f"| {r['name']} | {r['slides']} | {r['ours']} / {r['clam']} / {r['clam1']} | {r['ours_s']:.2f} | "
            f"{r['grid_s']:.2f} | {r['clam_s']:.2f} | {r['clam1_s']:.2f} | {r['ours_s'] / r['clam_s']:.2f}× | "
            f"{r['ours_s'] / r['clam1_s']:.2f}× | {r['grid_s'] / r['clam1_s']:.2f}× |"
        )
    if not rows:
        return
    print()
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
