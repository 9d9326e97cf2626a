"""The tile stage on the real Aperio slide and on demo slides; H5 layout; GeoJSON; bad input via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import shapely.geometry
import shapely.validation
import tifffile

from mambamil import demo
from mambamil.cli import main
from mambamil.errors import FAULT_EXIT, InputFileError
from mambamil.geometry import mask_polygons, polygons_to_feature_collection
from mambamil.h5layout import read_coords
from mambamil.slide import open_slide
from mambamil.tiling import TilingSettings, tile_slide


@pytest.fixture(scope="module")
def real_tiles(real_slide: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("tiles")
    return tile_slide(real_slide, out, TilingSettings.from_config())


def _saturation(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]


def test_real_slide_patches_are_on_tissue(real_slide: Path, real_tiles) -> None:
    cf = read_coords(real_tiles.outputs["coords"])
    assert len(cf.coords) == real_tiles.n_patches > 10
    with open_slide(real_slide) as s:
        background = _saturation(s.read_at_mpp(0, 0, (256, 256), 0.5))  # top-left corner is glass
        assert background.mean() < 15
        for x, y in cf.coords:
            patch = s.read_at_mpp(int(x), int(y), (256, 256), 0.5)
            sat = _saturation(patch)
            tissue_share = (sat > 40).mean()
            assert tissue_share > 0.25, f"patch at {(x, y)} is mostly background ({tissue_share:.2f})"
            assert patch.mean() < 225, f"patch at {(x, y)} is white"


def test_real_slide_count_matches_tissue_area(real_tiles) -> None:
    patch_area_mm2 = (256 * 0.5 / 1000) ** 2
    expected = real_tiles.tissue_area_mm2 / patch_area_mm2
    assert 0.5 * expected <= real_tiles.n_patches <= 1.3 * expected


def test_h5_layout(real_tiles, real_slide: Path) -> None:
    path = real_tiles.outputs["coords"]
    with h5py.File(path, "r") as f:
        ds = f["coords"]
        assert ds.dtype == np.int64 and ds.shape[1] == 2
        a = dict(ds.attrs)
        assert len(f["tissue_fraction"]) == ds.shape[0]
        assert (f["tissue_fraction"][()] >= 0.5).all()
    assert a["target_mpp"] == 0.5 and a["patch_size"] == 256
    assert a["slide_mpp"] == pytest.approx(0.499)
    assert a["patch_size_level0"] == round(256 * 0.5 / 0.499)
    assert a["patch_level"] == 0 and list(a["downsample"]) == [1.0, 1.0]
    assert list(a["level_dim"]) == [2220, 2967] and list(a["level0_dim"]) == [2220, 2967]
    assert a["name"] == "CMU-1-Small-Region"
    cf = read_coords(path)
    step = cf.meta.step_level0
    assert np.allclose(cf.coords / step, np.round(cf.coords / step), atol=0.51 / step)
    assert (cf.coords >= 0).all()
    assert (cf.coords[:, 0] + cf.patch_size_level0 <= 2220).all()
    assert (cf.coords[:, 1] + cf.patch_size_level0 <= 2967).all()


def test_geojson_is_valid_and_matches_tissue(real_tiles) -> None:
    fc = json.loads(real_tiles.outputs["tissue"].read_text())
    assert fc["type"] == "FeatureCollection" and fc["features"]
    area_px = 0.0
    for feature in fc["features"]:
        assert feature["properties"]["classification"]["name"] == "Tissue"
        rings = feature["geometry"]["coordinates"]
        assert all(r[0] == r[-1] for r in rings)
        poly = shapely.geometry.shape(feature["geometry"])
        assert poly.is_valid, shapely.validation.explain_validity(poly)
        minx, miny, maxx, maxy = poly.bounds
        assert minx >= 0 and miny >= 0 and maxx <= 2220 + 16 and maxy <= 2967 + 16
        area_px += poly.area
    area_mm2 = area_px * 0.499**2 / 1e6
    assert area_mm2 == pytest.approx(real_tiles.tissue_area_mm2, rel=0.15)


def test_preview_png(real_tiles) -> None:
    img = cv2.imread(str(real_tiles.outputs["preview"]))
    assert img is not None and max(img.shape[:2]) <= 2048
    green = (img[..., 1] > 150) & (img[..., 0] < 60) & (img[..., 2] < 60)
    assert green.sum() > 100  # tissue contours are drawn


def test_demo_patches_inside_generated_tissue(demo_cohort: Path, tmp_path: Path) -> None:
    specs = {s.slide_id: s for s in demo.cohort_specs(4, seed=0, size=(2048, 1536))}
    for sid in demo.slide_ids(4):
        result = tile_slide(demo.slide_path(demo_cohort, sid), tmp_path, TilingSettings.from_config())
        coords = read_coords(result.outputs["coords"]).coords
        _, tissue, _ = demo.render_slide(specs[sid])
        centres = (coords + 128) // 16
        inside = tissue[centres[:, 1], centres[:, 0]].mean()
        assert inside > 0.9, f"{sid}: only {inside:.2f} of patch centres on tissue"
        cells = tissue.sum() * (16 * 0.5) ** 2 / (128**2)
        assert 0.4 * cells <= len(coords) <= 1.3 * cells
        assert_valid_geojson(result.outputs["tissue"])


def assert_valid_geojson(path: Path) -> list[shapely.geometry.base.BaseGeometry]:
    """Every tissue geometry of a GeoJSON file is valid per shapely (OGC); returns them."""
    geoms = [shapely.geometry.shape(f["geometry"]) for f in json.loads(path.read_text())["features"]]
    assert geoms, path
    for geom in geoms:
        assert geom.is_valid, f"{path.name}: {shapely.validation.explain_validity(geom)}"
    return geoms


def test_rings_touching_themselves_are_written_valid() -> None:
    """OpenCV's contour of two squares touching at a corner passes that corner twice (ring self-intersection);
    the GeoJSON has them as a valid MultiPolygon of the same area, with the hole of one square kept."""
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15] = 1
    mask[15:25, 15:25] = 1  # touches the first square diagonally at one pixel corner
    mask[20:35, 25:38] = 1
    mask[24:30, 28:34] = 0  # a hole
    (poly,) = mask_polygons(mask)
    raw = shapely.geometry.Polygon(poly.exterior + 0.5, [h + 0.5 for h in poly.holes])
    assert not raw.is_valid  # the contour as OpenCV gives it
    (feature,) = polygons_to_feature_collection([poly], 2.0, "Tissue")["features"]
    geom = shapely.geometry.shape(feature["geometry"])
    assert geom.is_valid and geom.geom_type == "MultiPolygon"
    assert geom.area == pytest.approx(raw.area * 4)  # scale 2 → level-0 px²
    assert sorted(len(p.interiors) for p in geom.geoms) == [0, 1]
    assert not geom.contains(shapely.geometry.Point(31 * 2, 27 * 2))  # the hole's centre, level-0 px


def test_tissue_geojson_of_a_slide_with_a_hole_has_the_hole(tmp_path: Path) -> None:
    """An annulus of tissue (outer radius 400 µm, hole 150 µm) gives one valid polygon with one hole of the
    hole's area; a point in the hole is outside the tissue."""
    mpp, size, centre, outer, inner = 0.5, 2048, 1024, 800, 300  # level-0 px
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(xx - centre, yy - centre)
    rgb = np.full((size, size, 3), 245, np.uint8)
    rgb[(r <= outer) & (r >= inner)] = (200, 110, 170)
    demo.write_pyramidal_tiff(tmp_path / "ring.tiff", rgb, mpp)
    result = tile_slide(tmp_path / "ring.tiff", tmp_path / "tiles", TilingSettings.from_config())
    (geom,) = assert_valid_geojson(result.outputs["tissue"])
    assert geom.geom_type == "Polygon" and len(geom.interiors) == 1
    hole = shapely.geometry.Polygon(geom.interiors[0])
    assert hole.area == pytest.approx(np.pi * inner**2, rel=0.1)
    assert geom.area == pytest.approx(np.pi * (outer**2 - inner**2), rel=0.1)
    assert not geom.contains(shapely.geometry.Point(centre, centre))
    assert geom.contains(shapely.geometry.Point(centre + (outer + inner) / 2, centre))


def test_demo_slide_with_a_self_touching_contour_is_written_valid(tmp_path: Path) -> None:
    """Demo slide 6 of a 12-slide cohort (seed 0, 2048×1536) segments into a contour that touches itself (it was
    written as an invalid polygon before); its tissue GeoJSON is valid."""
    spec = demo.cohort_specs(12, seed=0, size=(2048, 1536))[6]
    rgb, _, _ = demo.render_slide(spec)
    demo.write_pyramidal_tiff(tmp_path / "s6.tiff", rgb, demo.DEMO_MPP)
    result = tile_slide(tmp_path / "s6.tiff", tmp_path / "tiles", TilingSettings.from_config())
    assert_valid_geojson(result.outputs["tissue"])


def test_overlap_and_resolution_change_the_grid(real_slide: Path, tmp_path: Path) -> None:
    base = tile_slide(real_slide, tmp_path / "a", TilingSettings.from_config())
    half = tile_slide(real_slide, tmp_path / "b", TilingSettings.from_config(overlap=0.5))
    coarse = tile_slide(real_slide, tmp_path / "c", TilingSettings.from_config(target_mpp=1.0))
    assert 3 * base.n_patches <= half.n_patches <= 5 * base.n_patches
    assert coarse.n_patches < base.n_patches / 2.5
    assert read_coords(coarse.outputs["coords"]).meta.patch_size_level0 == round(256 / 0.499)


# -- bad input through the CLI: one line, exit 1, nothing left behind ------------------------------------------
def _blank_slide(path: Path) -> Path:
    img = np.full((1024, 1024, 3), 242, np.uint8)
    tifffile.imwrite(
        path,
        img,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )
    return path


def _truncated(src: Path, path: Path) -> Path:
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "file not found"),
        ("empty", "empty (0 bytes)"),
        ("text", "not a slide format"),
        ("truncated", "truncated"),
        ("nores", "no µm/px"),
        ("blank", "no tissue found"),
    ],
)
def test_cli_bad_slides(case: str, message: str, demo_cohort: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    path = src / f"{case}.tiff"
    if case == "empty":
        path.touch()
    elif case == "text":
        path.write_text("hello\n")
    elif case == "truncated":
        _truncated(demo.slide_path(demo_cohort, demo.slide_ids(4)[0]), path)
    elif case == "nores":
        tifffile.imwrite(path, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    elif case == "blank":
        _blank_slide(path)
    out = tmp_path / "out"
    rc = main(["tile", str(path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == (FAULT_EXIT if case == "truncated" else 1)  # a file cut short is a fault: the job is retried
    assert len(err.splitlines()) == 1, err
    assert message in err and f"{case}.tiff" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir()), "partial output left behind"


def test_cli_tile_ok_and_config_options(real_slide: Path, tmp_path: Path, capsys) -> None:
    rc = main(["tile", str(real_slide), "--out", str(tmp_path), "--slide-id", "cmu", "--patch-size", "128"])
    assert rc == 0
    cf = read_coords(tmp_path / "cmu.h5")
    assert cf.patch_size == 128
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmu.h5", "cmu.preview.png", "cmu.tissue.geojson"]
    rc = main(["tile", str(real_slide), "--out", str(tmp_path), "--overlap", "1.5"])
    assert rc == 1 and "tiling.overlap" in capsys.readouterr().err


def test_debug_shows_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="file not found"):
        main(["--debug", "tile", str(tmp_path / "x.svs"), "--out", str(tmp_path)])


def test_read_coords_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        read_coords(tmp_path / "none.h5")
    (tmp_path / "empty.h5").touch()
    with pytest.raises(InputFileError, match="empty"):
        read_coords(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1]
    with pytest.raises(InputFileError, match="no 'coords'"):
        read_coords(tmp_path / "other.h5")


def test_preview_reuses_the_segmentation_read_when_coarse_enough(demo_cohort: Path) -> None:
    """A preview at most 2× finer than the segmentation is drawn from the segmentation image (one whole-slide decode
    per tile job); a finer preview reads the slide itself. A marker image stands in for the segmentation read."""
    from mambamil.tiling import draw_preview, patch_grid, segment_tissue

    slide_path = demo.slide_path(demo_cohort, demo.slide_ids(4)[0])
    marker = (1, 2, 3)
    for preview_max_px, reused in ((128, True), (2048, False)):
        settings = TilingSettings.from_config({"preview_max_px": preview_max_px})
        with open_slide(slide_path) as slide:
            seg_rgb = slide.read_whole_at_mpp(settings.seg_mpp)
            tissue = segment_tissue(slide, settings, seg_rgb)
            grid = patch_grid(slide, tissue, settings)
            fake = np.empty_like(seg_rgb)
            fake[:] = marker
            preview = draw_preview(slide, tissue, grid, settings, fake)
            expected_mpp = max(settings.seg_mpp, max(slide.dimensions) * slide.mpp / preview_max_px)
            share = float(np.all(preview == marker, axis=-1).mean())
            expected_size = slide.size_at_mpp(expected_mpp)
        if reused:
            assert preview.shape[1::-1] == expected_size
            assert share > 0.3  # background pixels come from the segmentation image, not a second read
        else:
            assert max(preview.shape[:2]) > max(seg_rgb.shape[:2])
            assert share == 0.0
