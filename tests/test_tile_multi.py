"""`mambamil tile` with several slides (or a sheet shard) in one process; the schema is parsed once."""

from __future__ import annotations

from pathlib import Path

from mambamil import config, demo
from mambamil.cli import main


def test_tile_many_slides_one_bad(demo_cohort: Path, tmp_path: Path, capsys) -> None:
    a, b = demo.slide_ids(4)[:2]
    bad = tmp_path / "bad.tiff"
    bad.write_text("not a slide")
    slides = [str(demo.slide_path(demo_cohort, a)), str(bad), str(demo.slide_path(demo_cohort, b))]
    out = tmp_path / "tiles"
    assert main(["-q", "tile", *slides, "--out", str(out), "--slide-id", a, "bad", b]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    named = [ln for ln in err if "bad.tiff" in ln]
    assert len(named) == 1 and "slide 'bad'" in named[0] and "not a slide format" in named[0]
    assert "1 of 3 slide(s) failed: bad" in err[-1]
    assert sorted(p.name for p in out.glob("*.h5")) == [f"{a}.h5", f"{b}.h5"]


def test_tile_sheet_shard(demo_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    assert main(["-q", "tile", "--sheet", str(demo_cohort / "slides.csv"), "--shard", "1/3", "--out", str(out)]) == 0
    ids = demo.slide_ids(4)
    assert sorted(p.stem for p in out.glob("*.h5")) == [ids[1]]


def test_schema_is_parsed_once_per_process() -> None:
    config.default_section("tiling")
    before = config._schema_and_validator.cache_info().misses
    for _ in range(3):
        config.default_section("features")
    assert config._schema_and_validator.cache_info().misses == before
    schema = config.load_schema()
    schema["properties"].clear()  # callers get a copy: the cached schema is not theirs to change
    assert config.load_schema()["properties"]
