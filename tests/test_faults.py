"""Faults are not bad slides (issue 22): a condition of the environment (a file cut short, a read that fails after
the slide opened, a full disk, too many open files, memory) fails the job with one line and leaves nothing behind;
an excluded slide is retried when its file changes, or with `mambamil qc-retry` (real files, real OpenSlide/h5py)."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from mambamil import demo
from mambamil.bags import Sample
from mambamil.cli import main
from mambamil.errors import FAULT_EXIT, FaultError, fault_from
from mambamil.paths import tile_outputs
from mambamil.qc import QCOutcome, SlideStat, read_stub, run_slide_stage, write_stub
from mambamil.slide import open_slide
from mambamil.tiling import TilingSettings, tile_slide
from mambamil.train.engine import bag_out_of_memory

ENCODER = ("--encoder", "timm:test_convnext", "--weights", "random", "--device", "cpu", "--num-workers", "0")


def run(*args, capsys) -> tuple[int, str]:
    rc = main(["--quiet", *[str(a) for a in args]])
    return rc, capsys.readouterr().err.strip()


def cut(path: Path, fraction: int = 3) -> None:
    os.truncate(path, path.stat().st_size // fraction)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only); skipped where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root/CAP_SYS_ADMIN): {res.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# -- classify causes ------------------------------------------------------------------------------------------
def test_slide_cut_short_before_it_opens_fails_the_job_and_is_not_excluded(
    real_slide: Path, tmp_path: Path, capsys
) -> None:
    """The issue's case: the SVS cut to a third (its TIFF directory now lies past the end): OpenSlide cannot open it,
    but that is a copy cut short, not a slide format problem: exit 75, one line, no QC stub."""
    slide = tmp_path / "cmu.svs"
    shutil.copy(real_slide, slide)
    cut(slide)
    out = tmp_path / "tiles"
    rc, err = run("tile", slide, "--out", out, "--on-bad-slide", "exclude", capsys=capsys)
    assert rc == FAULT_EXIT and len(err.splitlines()) == 1, err
    assert "failed, retry" in err and "cmu.svs" in err and "file cut short: TIFF directory 1 starts at byte" in err
    assert "not a slide format" not in err and "unexpected" not in err
    assert not out.exists() or list(out.iterdir()) == []  # no stub: nothing is excluded on its account

    # Not a TIFF at all (a text file named .svs) stays an exclusion: that is the file, not the moment.
    slide.write_text("not a slide\n" * 50)
    assert run("tile", slide, "--out", out, "--on-bad-slide", "exclude", capsys=capsys)[0] == 0
    assert "not a slide format" in read_stub(out / "cmu.h5").cause


def test_read_failing_after_the_slide_opened_is_a_fault(real_slide: Path, tmp_path: Path) -> None:
    """OpenSlide opened the file, then it was cut short underneath: the read fails; the stage raises a FaultError
    (exclude mode notwithstanding) and leaves none of its outputs, no stub."""
    slide = tmp_path / "cmu.svs"
    shutil.copy(real_slide, slide)
    outputs = tile_outputs(tmp_path / "tiles", "cmu")

    def work_after_open() -> None:
        with open_slide(slide) as s:  # opened whole, then cut: every later read fails
            cut(slide)
            s.read_whole_at_mpp(8.0)

    with pytest.raises(FaultError, match=r"changed size while it was read \(1938955 → 646318 bytes\)"):
        run_slide_stage("tile", "cmu", outputs.values(), [slide], "exclude", work_after_open, slide_file=slide)
    assert not any(p.exists() for p in outputs.values())


def test_damaged_image_data_in_an_intact_file_stay_an_exclusion(demo_cohort: Path, tmp_path: Path) -> None:
    """Bytes that are all there but do not decode (zeroed JPEG tiles, same size as the day it was excluded) are a
    property of the file: the stage excludes the slide, and the stub records its size and mtime."""
    import tifffile

    sid = demo.slide_ids(4)[0]
    slide = tmp_path / f"{sid}.tiff"
    data = bytearray(demo.slide_path(demo_cohort, sid).read_bytes())
    with tifffile.TiffFile(demo.slide_path(demo_cohort, sid)) as tif:
        for page in tif.pages:
            for off, n in zip(page.dataoffsets, page.databytecounts, strict=True):
                data[off + 20 : off + n] = bytes(n - 20)
    slide.write_bytes(bytes(data))
    outputs = tile_outputs(tmp_path / "tiles", sid)
    outcome = run_slide_stage(
        "tile",
        sid,
        outputs.values(),
        [slide],
        "exclude",
        lambda: tile_slide(slide, tmp_path / "tiles", TilingSettings.from_config(), sid),
        slide_file=slide,
    )
    assert isinstance(outcome, QCOutcome) and "image data are damaged" in outcome.cause
    stub = read_stub(outputs["coords"])
    assert stub.slide == SlideStat.of(slide) and stub.slide.size == len(data)


# -- retry what was excluded ----------------------------------------------------------------------------------
def test_truncate_then_restore_is_retried_and_ends_included(demo_cohort: Path, tmp_path: Path, capsys) -> None:
    """A slide excluded while its file was cut short (the stub an older version wrote then), restored later with
    its original modification time: `qc-retry` removes its stubs at every stage; redone, the QC table shows it ok.
    (The workflow retries such a slide by itself: tests/test_qc_workflow.py.)"""
    sid = demo.slide_ids(4)[1]
    slide = tmp_path / "slides" / f"{sid}.tiff"
    slide.parent.mkdir()
    shutil.copy2(demo.slide_path(demo_cohort, sid), slide)
    mtime = slide.stat().st_mtime_ns
    cut(slide)
    results = tmp_path / "results"
    tiles = results / "tiles"
    rc, err = run("tile", slide, "--out", tiles, "--on-bad-slide", "exclude", capsys=capsys)
    assert rc == FAULT_EXIT and "file cut short" in err  # today: a fault, no stub
    # The stubs an older version left at every stage, recording the cut file, as in the issue.
    cause = QCOutcome(sid, "tile", "not a slide format OpenSlide can read", SlideStat.of(slide))
    feats = results / "features" / "enc" / f"{sid}.h5"
    order = results / "features" / "enc" / "order" / "hilbert" / f"{sid}.npy"
    for path in (*tile_outputs(tiles, sid).values(), feats, order):
        write_stub(path, cause)
    shutil.copy(demo.slide_path(demo_cohort, sid), slide)  # restored, with its original mtime
    os.utime(slide, ns=(mtime, mtime))

    rc, _ = run("qc-retry", results, "--cause", "no tissue", capsys=capsys)  # no match: nothing removed
    assert rc == 0 and read_stub(tiles / f"{sid}.h5") is not None
    assert main(["qc-retry", str(results), "--cause", "slide FORMAT"]) == 0
    assert f"{sid}: retrying (was excluded at tile: not a slide format" in capsys.readouterr().out
    assert not any(p.exists() for p in (*tile_outputs(tiles, sid).values(), feats, order))

    assert run("tile", slide, "--out", tiles, "--on-bad-slide", "exclude", capsys=capsys)[0] == 0
    sheet = tmp_path / "slides.csv"
    sheet.write_text(f"slide_id,path,case_id\n{sid},{slide},p1\n")
    rc, _ = run(
        "qc", "--slides", sheet, "--stage-file", tiles / "{slide_id}.h5", "--out", results / "qc", capsys=capsys
    )
    assert rc == 0
    qc = pd.read_csv(results / "qc" / "slides.csv", keep_default_na=False)
    assert qc.loc[0, "slide_id"] == sid and qc.loc[0, "status"] == "ok" and qc.loc[0, "cause"] == ""


# -- resources run out cleanly --------------------------------------------------------------------------------
def test_disk_full_during_tile_is_one_line_and_leaves_nothing(demo_cohort: Path, tmp_path: Path, capsys) -> None:
    sid = demo.slide_ids(4)[0]
    with small_disk(tmp_path / "disk", "16k") as disk:
        rc, err = run(
            "tile", demo.slide_path(demo_cohort, sid), "--out", disk, "--on-bad-slide", "exclude", capsys=capsys
        )
        left = sorted(p.name for p in disk.iterdir())
    assert rc == FAULT_EXIT and len(err.splitlines()) == 1, err
    assert "[ENOSPC] no space left on device (disk full)" in err and str(disk) in err and "unexpected" not in err
    assert left == []  # no partial output, no temporary file, no stub


def test_disk_full_during_features_is_one_line_and_leaves_nothing(demo_cohort: Path, tmp_path: Path) -> None:
    sid = demo.slide_ids(4)[0]
    slide = demo.slide_path(demo_cohort, sid)
    coords = tile_slide(slide, tmp_path / "tiles", TilingSettings.from_config(), sid).outputs["coords"]
    with small_disk(tmp_path / "disk", "12k") as disk:
        out = disk / f"{sid}.h5"
        # In its own process, as in the workflow: HDF5 keeps state about a file it failed to close.
        argv = ["features", slide, "--coords", coords, "--out", out, *ENCODER, "--on-bad-slide", "exclude"]
        res = subprocess.run(
            [sys.executable, "-m", "mambamil", "--quiet", *map(str, argv)], capture_output=True, text=True
        )
        rc, err = res.returncode, res.stderr.strip()
        left = sorted(p.name for p in disk.iterdir())
    # the random test encoder's own warnings aside (random weights, timm-config normalisation)
    lines = [ln for ln in err.splitlines() if " WARNING mambamil.features.encoders: " not in ln]
    assert rc == FAULT_EXIT and len(lines) == 1, err  # exit 75, not a crash while HDF5 tears down
    assert "[ENOSPC] no space left on device" in err and sid in err and "unexpected" not in err
    assert left == []


def test_too_many_open_files_is_one_line_naming_the_slide(demo_cohort: Path, tmp_path: Path) -> None:
    """The open-file limit reached (EMFILE) when the slide is opened: a fault naming the slide and the limit."""
    slide = demo.slide_path(demo_cohort, demo.slide_ids(4)[0])
    code = (
        "import resource, sys\n"
        "from mambamil.errors import FaultError\n"
        "from mambamil.paths import tile_outputs\n"
        "from mambamil.qc import run_slide_stage\n"
        "from mambamil.tiling import TilingSettings, tile_slide\n"
        "slide, out = sys.argv[1], sys.argv[2]\n"
        "settings = TilingSettings.from_config()\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "held = []\n"
        "try:\n"
        "    while True: held.append(open(slide, 'rb'))\n"
        "except OSError:\n"
        "    pass\n"
        "try:\n"
        "    work = lambda: tile_slide(slide, out, settings, 's')\n"
        "    run_slide_stage('tile', 's', tile_outputs(out, 's').values(), [slide], 'exclude', work, slide)\n"
        "except FaultError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(75)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(slide), str(tmp_path / "never")], capture_output=True, text=True
    )
    assert res.returncode == FAULT_EXIT, res.stderr[-2000:]
    line = res.stdout.strip()
    assert "[EMFILE] too many open files" in line and slide.name in line and "\n" not in line
    assert not (tmp_path / "never").exists()


def test_out_of_memory_names_the_batch_size_and_what_to_change(demo_cohort: Path, tmp_path: Path, capsys) -> None:
    """A batch the host cannot allocate (torch's own allocator error): one line with the batch size and the fix."""
    sid = demo.slide_ids(4)[0]
    slide = demo.slide_path(demo_cohort, sid)
    coords = tile_slide(slide, tmp_path / "tiles", TilingSettings.from_config(), sid).outputs["coords"]
    out = tmp_path / "f" / f"{sid}.h5"
    rc, err = run("features", slide, "--coords", coords, "--out", out, *ENCODER, "--batch-size", 10**8, capsys=capsys)
    assert rc == FAULT_EXIT and len(err.splitlines()) == 1, err
    assert "host out of memory embedding batches of 100000000 patches" in err
    assert "lower features.batch_size (e.g. --batch-size 50000000)" in err and not out.exists()

    # Training: a bag too large for the device names its size and what to change.
    try:
        torch.empty(10**14, dtype=torch.uint8)
    except RuntimeError as exc:
        fault = bag_out_of_memory(exc, torch.zeros(123, 8), Sample("s1", "p1", ["s1"]), torch.device("cpu"), "fp32")
    assert "bag of 123 instances × 8 features" in str(fault) and "training.precision bf16" in str(fault)
    assert (
        bag_out_of_memory(RuntimeError("shape mismatch"), torch.zeros(1, 8), Sample("s", "p", ["s"]), "cpu", "x")
        is None
    )
    assert "out of memory" in str(fault_from(MemoryError(), tmp_path))


# -- faults while reading weights and QC stubs (issue 28) -------------------------------------------------------
def fail_opening(monkeypatch, path: Path, exc: BaseException, after: int = 0) -> None:
    """``open(path)`` raises ``exc`` from its ``after + 1``-th call on, as a failing disk or NFS mount does (only
    Python's file-open builtin is replaced: torch, h5py and OpenSlide run as they are)."""
    real, target, calls = builtins.open, path.resolve(), [0]

    def flaky_open(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike) and Path(file).resolve() == target:
            calls[0] += 1
            if calls[0] > after:
                raise exc
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", flaky_open)


def test_eio_while_reading_encoder_weights_is_a_fault(demo_cohort: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """torch.load's read of the checkpoint fails with EIO: exit 75 ('failed, retry', the file named), not exit 1
    'truncated or corrupt', and no features file."""
    import timm

    sid = demo.slide_ids(4)[0]
    slide = demo.slide_path(demo_cohort, sid)
    coords = tile_slide(slide, tmp_path / "tiles", TilingSettings.from_config(), sid).outputs["coords"]
    ckpt = tmp_path / "weights" / "convnext.pth"
    ckpt.parent.mkdir()
    torch.save(timm.create_model("test_convnext").state_dict(), ckpt)
    out = tmp_path / "f" / f"{sid}.h5"
    args = ["features", slide, "--coords", coords, "--out", out, "--encoder", "timm:test_convnext", "--weights", ckpt,
            "--device", "cpu", "--num-workers", "0"]  # fmt: skip
    fail_opening(monkeypatch, ckpt, OSError(errno.EIO, os.strerror(errno.EIO), str(ckpt)))
    rc, err = run(*args, capsys=capsys)
    assert rc == FAULT_EXIT and len(err.splitlines()) == 1, err
    assert "failed, retry" in err and "[EIO]" in err and str(ckpt) in err and "corrupt" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "exc", [OSError(errno.ESTALE, "Stale file handle"), MemoryError()], ids=["ESTALE", "MemoryError"]
)
def test_environment_faults_loading_weights_are_faults_not_corrupt_checkpoints(tmp_path: Path, monkeypatch, exc):
    import timm

    from mambamil.features.encoders import create_encoder

    ckpt = tmp_path / "convnext.pth"
    torch.save(timm.create_model("test_convnext").state_dict(), ckpt)
    fail_opening(monkeypatch, ckpt, exc)
    with pytest.raises(FaultError) as err:
        create_encoder("timm:test_convnext", str(ckpt))
    assert ("ESTALE" if isinstance(exc, OSError) else "MemoryError") in str(err.value)


def test_unreadable_qc_stub_is_a_fault_not_an_output(tmp_path: Path, capsys, monkeypatch) -> None:
    """A stage output that cannot be read (EIO) is neither a stub nor a normal output: `mambamil qc` exits 75 and
    writes no table (before: taken for a normal output, the slide counted as ok)."""
    feats = tmp_path / "features" / "s1.h5"
    feats.parent.mkdir()
    write_stub(feats, QCOutcome("s1", "features", "no tissue found", None))
    sheet = tmp_path / "slides.csv"
    sheet.write_text(f"slide_id,path,case_id\ns1,{tmp_path / 's1.svs'},p1\n")
    qc_args = ["qc", "--slides", sheet, "--stage-file", tmp_path / "features" / "{slide_id}.h5", "--out"]
    assert run(*qc_args, tmp_path / "qc_ok", capsys=capsys)[0] == 0  # readable: the stub is found
    assert pd.read_csv(tmp_path / "qc_ok" / "slides.csv").loc[0, "status"] == "excluded"
    fail_opening(monkeypatch, feats, OSError(errno.EIO, os.strerror(errno.EIO), str(feats)))
    rc, err = run(*qc_args, tmp_path / "qc", capsys=capsys)
    assert rc == FAULT_EXIT and "[EIO]" in err and str(feats) in err, err
    assert not (tmp_path / "qc" / "slides.csv").exists()
