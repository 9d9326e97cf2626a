"""The features data path (block reads, device resize) and many slides per process (lists, sheet, shards,
one bad slide among good ones) and the workflow's batch rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mambamil import demo
from mambamil.cli import main
from mambamil.errors import MambamilError
from mambamil.features.datapath import (
    BlockDataset,
    DeviceResize,
    area_weights,
    plan_blocks,
    plan_reads,
    worker_runs_order,
)
from mambamil.h5layout import read_coords, read_features
from mambamil.slide import open_slide, resize
from mambamil.slide_jobs import parse_shard, shard
from mambamil.tiling import TilingSettings, tile_slide

TINY = "timm:test_convnext"


@pytest.fixture(scope="module")
def tiles(demo_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Coordinates of three demo slides (50 % overlap, so blocks share pixels)."""
    out = tmp_path_factory.mktemp("tiles")
    settings = TilingSettings.from_config(overlap=0.5)
    return {
        sid: tile_slide(demo.slide_path(demo_cohort, sid), out, settings, slide_id=sid).outputs["coords"]
        for sid in demo.slide_ids(4)[:3]
    }


# -- data path ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target_mpp", [0.5, 2.0])  # level 0, and level 1 (4× downsample) of the demo pyramid
def test_block_reads_equal_per_patch_reads(demo_cohort: Path, tmp_path: Path, target_mpp: float) -> None:
    sid = demo.slide_ids(4)[0]
    path = demo.slide_path(demo_cohort, sid)
    settings = TilingSettings.from_config(overlap=0.5, target_mpp=target_mpp, tissue_threshold=0.0)
    cf = read_coords(tile_slide(path, tmp_path, settings, slide_id=sid).outputs["coords"])
    with open_slide(path) as slide:
        size0 = cf.patch_size * cf.target_mpp / slide.mpp
        plan = plan_reads(slide, size0, (224, 224))
        assert plan.level == (0 if target_mpp == 0.5 else 1)
        blocks = plan_blocks(cf.coords, plan.downsample, cell_px=512)
        assert sorted(np.concatenate(blocks).tolist()) == list(range(len(cf.coords)))  # each patch once
        assert max(len(b) for b in blocks) > 1  # neighbours really share a read
        ds = BlockDataset(str(path), cf.coords, blocks, plan, slide.mpp, sid)
        checked = 0
        for b in range(len(blocks)):
            item = ds[b]
            assert item["error"] is None
            for k, i in enumerate(item["index"].numpy()):
                x, y = cf.coords[i]
                one = slide.read_level_region(int(x), int(y), plan.level, plan.read_size)
                assert np.array_equal(item["patches"][k].numpy(), one), f"patch {i}"
                checked += 1
        ds.close()
    assert checked == len(cf.coords)


def test_device_resize_matches_cv2_area() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 257, 300, 3), dtype=np.uint8)
    ref = np.stack([resize(i, (224, 160)) for i in img]).astype(np.float32)
    r = DeviceResize((300, 257), (224, 160), (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), torch.device("cpu"))
    got = r(torch.from_numpy(img)).permute(0, 2, 3, 1).numpy()
    diff = np.abs(got - ref)
    assert diff.max() <= 1.0 + 1e-3  # rounding ties only
    assert (diff > 0.5).mean() < 1e-3
    np.testing.assert_allclose(area_weights(300, 224).sum(axis=1), 1.0)
    with pytest.raises(ValueError):
        area_weights(100, 200)


def test_worker_runs_order_gives_each_worker_a_contiguous_run() -> None:
    order = worker_runs_order(10, 3)
    assert sorted(order) == list(range(10))
    per_worker = [order[w::3] for w in range(3)]  # what DataLoader's round-robin hands worker w
    assert per_worker == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


# -- many slides ----------------------------------------------------------------------------------------------
def test_shards_are_disjoint_and_complete() -> None:
    rows = list(range(11))
    parts = [shard(rows, *parse_shard(f"{i}/3")) for i in range(3)]
    assert sorted(r for p in parts for r in p) == rows and parts[1] == [1, 4, 7, 10]
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(MambamilError, match="--shard"):
            parse_shard(bad)


def _base_args(tmp_path: Path) -> list[str]:
    return ["-q", "features", "--encoder", TINY, "--weights", "random", "--num-workers", "1", "--batch-size", "16"]


def test_many_slides_one_bad(demo_cohort: Path, tiles: dict[str, Path], tmp_path: Path, capsys) -> None:
    a, b = list(tiles)[:2]
    bad = tmp_path / "bad.tiff"
    bad.write_text("not a slide")
    slides = [demo.slide_path(demo_cohort, a), bad, demo.slide_path(demo_cohort, b)]
    outs = [tmp_path / "f" / f"{s}.h5" for s in (a, "bad", b)]
    argv = [*_base_args(tmp_path), *map(str, slides), "--coords", str(tiles[a]), str(tiles[a]), str(tiles[b])]
    argv += ["--out", *map(str, outs), "--slide-id", a, "bad", b]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    slide_lines = [ln for ln in err if "bad.tiff" in ln]
    assert len(slide_lines) == 1 and "slide 'bad'" in slide_lines[0] and "not a slide format" in slide_lines[0]
    assert "1 of 3 slide(s) failed: bad" in err[-1]
    assert outs[0].exists() and outs[2].exists() and not outs[1].exists()
    for sid, out in ((a, outs[0]), (b, outs[2])):
        bag = read_features(out)
        assert bag.feature_meta.slide_id == sid and len(bag.features) == len(read_coords(tiles[sid]).coords)
    # Same call again: the good slides are up to date (skipped), the bad one fails again.
    assert main(argv) == 1
    assert capsys.readouterr().out.count("up to date") == 2


def test_sheet_shard_and_profile(demo_cohort: Path, tiles: dict[str, Path], tmp_path: Path, capsys) -> None:
    ids = list(tiles)
    sheet = tmp_path / "slides.csv"
    sheet.write_text("slide_id,path\n" + "".join(f"{s},{demo.slide_path(demo_cohort, s)}\n" for s in ids))
    coords_dir = next(iter(tiles.values())).parent
    out = tmp_path / "f"
    argv = [*_base_args(tmp_path), "--sheet", str(sheet), "--coords-dir", str(coords_dir), "--out-dir", str(out)]
    assert main([*argv, "--shard", "1/2", "--profile"]) == 0
    assert sorted(p.stem for p in out.glob("*.h5")) == [ids[1]]
    printed = capsys.readouterr().out
    for stage in ("read_decode", "resize_normalise", "model", "write", "wait_for_readers"):
        assert f"| {stage} |" in printed
    assert main([*argv, "--shard", "0/2"]) == 0
    assert sorted(p.stem for p in out.glob("*.h5")) == sorted(ids)
    assert main([*argv, "--shard", "2/2"]) == 1
    assert "--shard" in capsys.readouterr().err


# -- workflow batches -----------------------------------------------------------------------------------------
def test_rule_batches_slides_per_job(repo_root: Path, tmp_path: Path) -> None:
    config = {
        "slides": str(tmp_path / "demo" / "slides.csv"),
        "labels": str(tmp_path / "demo" / "labels.csv"),
        "results": str(tmp_path / "results"),
        "demo_cohort": {"dir": str(tmp_path / "demo"), "n_slides": 5, "seed": 1},
        "features": {"encoder": TINY, "weights": "random", "slides_per_job": 2},
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    feats = tmp_path / "results" / "features" / "timm-test_convnext-random"
    targets = [str(feats / f"demo_00{i}.h5") for i in range(5)]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo_root / "Snakefile"), "-n", "--cores", "2"]
    res = subprocess.run(
        [*cmd, *targets, "--configfile", str(cfg)], capture_output=True, text=True, timeout=300, cwd=repo_root
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    out = res.stdout + res.stderr
    jobs = {ln.split()[0]: int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("features_batch")}
    assert jobs == {"features_batch0": 1, "features_batch1": 1, "features_batch2": 1}
    blocks = out.split("rule features_batch")[1:]
    wanted = {"0": ["demo_000", "demo_001"], "1": ["demo_002", "demo_003"], "2": ["demo_004"]}
    for block in blocks:
        number = block.split(":")[0]
        output_line = next(ln for ln in block.splitlines() if ln.strip().startswith("output:"))
        assert sorted(Path(p.strip()).stem for p in output_line.split(":", 1)[1].split(",")) == wanted[number]
