"""Slide access: µm/px resolution order, level choice, block-wise reads, and bad slides."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from mambamil import demo
from mambamil import slide as slide_module
from mambamil.errors import FaultError, SlideError
from mambamil.slide import open_slide


def test_real_slide_mpp_and_levels(real_slide: Path) -> None:
    with open_slide(real_slide) as s:
        assert s.mpp == pytest.approx(0.499)
        assert s.mpp_source == "openslide.mpp"
        assert s.dimensions == (2220, 2967)
        choice = s.level_for_mpp(0.5)
        assert choice.level == 0 and choice.downsample == 1.0


def test_mpp_override_wins(real_slide: Path) -> None:
    with open_slide(real_slide, mpp=0.25) as s:
        assert s.mpp == 0.25 and s.mpp_source == "override"


def test_demo_slide_is_generic_tiff_with_resolution(demo_cohort: Path) -> None:
    sid = demo.slide_ids(4)[0]
    with open_slide(demo.slide_path(demo_cohort, sid)) as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert s.mpp == pytest.approx(demo.DEMO_MPP)
        assert s.level_downsamples == pytest.approx(demo.PYRAMID_DOWNSAMPLES)
        # Coarsest level at or below the target: 8 µm/px → level 2 (16× of 0.5), 4 µm/px → level 1.
        assert s.level_for_mpp(8.0).level == 2
        assert s.level_for_mpp(4.0).level == 1
        assert s.level_for_mpp(1.9).level == 0


def test_read_at_mpp_shape_and_content(demo_cohort: Path) -> None:
    with open_slide(demo.slide_path(demo_cohort, demo.slide_ids(4)[0])) as s:
        patch = s.read_at_mpp(0, 0, (64, 48), 1.0)
        assert patch.shape == (48, 64, 3) and patch.dtype == np.uint8
        full = s.read_whole_at_mpp(8.0)
        assert full.shape[:2] == (s.size_at_mpp(8.0)[1], s.size_at_mpp(8.0)[0])


def test_blockwise_read_matches_single_read(real_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slide whose only level is large is downsampled block by block; the blocks agree with one read."""
    with open_slide(real_slide) as s:
        whole = s.read_whole_at_mpp(4.0)
        monkeypatch.setattr(slide_module, "READ_BLOCK", 128)
        blocks = s.read_whole_at_mpp(4.0)
    assert blocks.shape == whole.shape
    diff = np.abs(blocks.astype(int) - whole.astype(int))
    assert np.median(diff) <= 2 and diff.mean() < 6


def test_whole_read_refuses_huge_output(real_slide: Path) -> None:
    with open_slide(real_slide) as s, pytest.raises(SlideError, match="choose a coarser resolution"):
        s.read_whole_at_mpp(0.5, max_pixels=1000)


# -- bad slides -----------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="file not found"):
        open_slide(tmp_path / "nope.svs")


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.svs"
    p.touch()
    with pytest.raises(SlideError, match="empty"):
        open_slide(p)


def test_not_a_slide(tmp_path: Path) -> None:
    p = tmp_path / "notes.svs"
    p.write_text("this is not a slide\n" * 100)
    with pytest.raises(SlideError, match="not a slide format"):
        open_slide(p)


def test_truncated_slide(demo_cohort: Path, tmp_path: Path) -> None:
    """A file shorter than its own TIFF directories say is a copy cut short: a fault (retry), not a bad slide."""
    src = demo.slide_path(demo_cohort, demo.slide_ids(4)[1])
    p = tmp_path / "truncated.tiff"
    data = src.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(FaultError, match=r"truncated\.tiff.*file cut short: TIFF directory \d+ starts at byte"):
        open_slide(p)


def test_no_resolution(tmp_path: Path) -> None:
    p = tmp_path / "nores.tiff"
    img = np.full((512, 512, 3), 230, np.uint8)
    tifffile.imwrite(p, img, tile=(256, 256), photometric="rgb", compression="jpeg")
    with pytest.raises(SlideError, match="no µm/px"):
        open_slide(p)
    with open_slide(p, mpp=0.5) as s:  # the sheet's override rescues it
        assert s.mpp == 0.5


def test_screen_dpi_is_not_a_resolution(tmp_path: Path) -> None:
    p = tmp_path / "dpi72.tiff"
    img = np.full((512, 512, 3), 230, np.uint8)
    tifffile.imwrite(p, img, tile=(256, 256), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(SlideError, match="not a microscope resolution"):
        open_slide(p)


def test_copy_keeps_working(demo_cohort: Path, tmp_path: Path) -> None:
    """Sanity: a byte copy of a demo slide opens, so the truncation test fails for the right reason."""
    src = demo.slide_path(demo_cohort, demo.slide_ids(4)[1])
    dst = tmp_path / "copy.tiff"
    shutil.copy(src, dst)
    with open_slide(dst) as s:
        img = s.read_whole_at_mpp(8.0)
    assert cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1].max() > 50
