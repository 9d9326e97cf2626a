"""The Snakemake workflow: dry run, and a real run of the tile stage on a small demo cohort."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mambamil.h5layout import read_coords


def snakemake(repo_root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo_root / "Snakefile"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=repo_root)


def _config(tmp_path: Path, **extra) -> Path:
    config = {
        "slides": str(tmp_path / "demo" / "slides.csv"),
        "labels": str(tmp_path / "demo" / "labels.csv"),
        "results": str(tmp_path / "results"),
        "demo_cohort": {"dir": str(tmp_path / "demo"), "n_slides": 3, "seed": 1},
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_dry_run_plans_demo_and_tiles(repo_root: Path, tmp_path: Path) -> None:
    res = snakemake(repo_root, "-n", "--cores", "1", "--configfile", str(_config(tmp_path)))
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert "demo_cohort" in out and "tile" in out


def test_invalid_config_stops_the_workflow(repo_root: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tiling={"target_mpp": 0})
    res = snakemake(repo_root, "-n", "--cores", "1", "--configfile", str(cfg))
    assert res.returncode != 0
    assert "target_mpp" in res.stdout + res.stderr


@pytest.mark.slow
def test_tile_stage_runs_and_keeps_going(repo_root: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    target = [str(tmp_path / "results" / "tiles" / f"demo_00{i}.h5") for i in range(3)]
    res = snakemake(repo_root, *target, "--cores", "2", "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    for path in target:
        assert len(read_coords(path).coords) > 5
        assert Path(path.replace(".h5", ".preview.png")).exists()
        assert Path(path.replace(".h5", ".tissue.geojson")).exists()
    assert (tmp_path / "results" / "logs" / "tile" / "demo_000.log").read_text().strip()
    # The demo slides were made in that run, after it was planned: each tile job recorded the slide_state of the
    # file it tiled (evaluated when the job ran), so a second run has nothing to do.
    again = snakemake(repo_root, "-n", *target, "--cores", "1", "--configfile", str(cfg))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]

    # A user cohort with one corrupt slide: with --keep-going (and qc stop) the good slides still finish.
    slides = tmp_path / "user" / "slides.csv"
    slides.parent.mkdir()
    shutil.copy(tmp_path / "demo" / "slides" / "demo_000.tiff", slides.parent / "good.tiff")
    (slides.parent / "bad.tiff").write_text("not a slide")
    slides.write_text("slide_id,path\ngood,good.tiff\nbad,bad.tiff\n")
    # qc.on_bad_slide: stop is the old behaviour (the default, exclude, is tested in test_qc_workflow.py).
    user_cfg = _config(
        tmp_path, slides=str(slides), results=str(tmp_path / "user_results"), qc={"on_bad_slide": "stop"}
    )
    wanted = [str(tmp_path / "user_results" / "tiles" / f"{s}.h5") for s in ("good", "bad")]
    res = snakemake(repo_root, *wanted, "--cores", "2", "--keep-going", "--configfile", str(user_cfg))
    assert res.returncode != 0
    assert Path(wanted[0]).exists() and not Path(wanted[1]).exists()
    log = (tmp_path / "user_results" / "logs" / "tile" / "bad.log").read_text()
    assert "not a slide format" in log and "bad.tiff" in log
