"""The workflow with bad slides: one blank and one unreadable slide are excluded, the study still finishes,
the QC table names both, and fixing a slide reruns only its chain. Also: two runs in one results folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _workflow_checks import assert_heatmaps_drawn_by_test_fold_models

from mambamil import demo

pytestmark = pytest.mark.slow


def snakemake(repo_root: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo_root / "Snakefile"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=repo_root)


def write_blank_slide(path: Path) -> None:
    """A white, tissue-free pyramidal TIFF with µm/px, as a blank scan."""
    demo.write_pyramidal_tiff(path, np.full((1536, 2048, 3), 245, dtype=np.uint8), demo.DEMO_MPP)


def bad_cohort(root: Path) -> Path:
    """8 demo slides + a blank slide (its own patient), a zero-byte file (a second slide of demo patient 0) and
    a sheet row whose file does not exist (a second slide of demo patient 2)."""
    demo.generate_cohort(root / "demo", n_slides=8, seed=3, size=(2048, 1536), progress=False)
    slides = pd.read_csv(root / "demo" / "slides.csv", dtype=str)
    labels = pd.read_csv(root / "demo" / "labels.csv", dtype={"case_id": str, "slide_id": str})
    write_blank_slide(root / "demo" / "slides" / "blank.tiff")
    (root / "demo" / "slides" / "empty.tiff").write_bytes(b"")
    case0, case2 = slides.loc[0, "case_id"], slides.loc[2, "case_id"]
    slides = pd.concat(
        [
            slides,
            pd.DataFrame(
                {
                    "slide_id": ["blank", "empty", "missing"],
                    "path": ["slides/blank.tiff", "slides/empty.tiff", "slides/missing.tiff"],
                    "case_id": ["blank_case", case0, case2],
                }
            ),
        ]
    )
    first = labels[labels["case_id"] == case0].iloc[0]
    extra = pd.DataFrame(
        [
            {"case_id": "blank_case", "slide_id": "blank", "label": "normal", "time": 10.0, "event": 1},
            {**first.to_dict(), "slide_id": "empty"},
            {**labels[labels["case_id"] == case2].iloc[0].to_dict(), "slide_id": "missing"},
        ]
    )
    slides.to_csv(root / "demo" / "slides.csv", index=False)
    pd.concat([labels, extra]).to_csv(root / "demo" / "labels.csv", index=False)
    config = {
        "slides": str(root / "demo" / "slides.csv"),
        "labels": str(root / "demo" / "labels.csv"),
        "results": str(root / "results"),
        "features": {
            "encoder": "timm:resnet18",
            "weights": "random",
            "batch_size": 32,
            "num_workers": 0,
            "slides_per_job": 4,  # batches: demo_000-003, demo_004-007, blank + empty + missing
        },
        "order": {"methods": ["raster"]},
        "tasks": {"subtype": {"type": "classification", "classes": ["normal", "tumor"]}},
        "models": {"mean": {"model": "mean"}},
        "training": {
            "seed": 1,
            "folds": 2,
            "epochs": 2,
            "min_epochs": 1,
            "patience": 1,
            "val_fraction": 0.25,
            "device": "cpu",
        },
        "heatmaps": {"mpp": 16.0, "top_k": 2},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_bad_slides_are_excluded_and_the_study_finishes(repo_root: Path, tmp_path: Path) -> None:
    cfg = bad_cohort(tmp_path)
    # Only this config's one task and one model (not merged into the repository's config.yaml).
    res = snakemake(repo_root, "--cores", "2", "--configfile", str(cfg), "--replace-workflow-config")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    results = tmp_path / "results"

    qc = pd.read_csv(results / "qc" / "slides.csv", dtype=str, keep_default_na=False).set_index("slide_id")
    assert qc.loc["blank", "status"] == "excluded" and qc.loc["blank", "stage"] == "tile"
    assert "no tissue found" in qc.loc["blank", "cause"]
    assert qc.loc["empty", "status"] == "excluded" and "empty (0 bytes)" in qc.loc["empty", "cause"]
    assert qc.loc["missing", "status"] == "excluded" and "file not found" in qc.loc["missing", "cause"]
    assert (qc.drop(index=["blank", "empty", "missing"])["status"] == "ok").all()
    patients = pd.read_csv(results / "qc" / "patients.csv", dtype=str, keep_default_na=False).set_index("case_id")
    assert patients.loc["blank_case", "status"] == "excluded"
    assert "no usable slide" in patients.loc["blank_case", "cause"]
    assert patients.loc[qc.loc["empty", "case_id"], "status"] == "ok"  # it still has a good slide

    # Loud: end-of-run log, summary counts, heatmap index; splits leave the excluded patient out.
    assert "EXCLUDED" in out and "blank" in out and "empty" in out
    summary = pd.read_csv(results / "evaluation" / "summary.csv")
    assert summary.loc[0, "n_slides_used"] == 8 and summary.loc[0, "n_slides_excluded"] == 3
    assert summary.loc[0, "n_patients_excluded"] == 1
    splits = pd.read_csv(results / "splits" / "subtype.csv", dtype={"case_id": str})
    assert "blank_case" not in set(splits["case_id"])
    index = pd.read_csv(results / "heatmaps" / "index.csv", dtype=str, keep_default_na=False).set_index("slide_id")
    assert index.loc["blank", "status"].startswith("excluded by QC")
    assert (index["status"] == "drawn").sum() == 8
    # No slide is drawn by a model that trained on it: the workflow's choice of fold model per heatmap.
    n = assert_heatmaps_drawn_by_test_fold_models(results, tmp_path / "demo" / "labels.csv", "subtype", "mean")
    assert n == 8
    assert "no tissue found" in (results / "logs" / "tile" / "blank.log").read_text()

    # Fixing the blank slide (a new file, new mtime) reruns only its chain and what depends on it.
    shutil.copy(tmp_path / "demo" / "slides" / "demo_001.tiff", tmp_path / "demo" / "slides" / "blank.tiff")
    dry = snakemake(repo_root, "-n", "--cores", "1", "--configfile", str(cfg), "--replace-workflow-config")
    assert dry.returncode == 0, dry.stderr[-3000:]
    plan = dry.stdout + dry.stderr
    counts = dict(
        (parts[0], int(parts[1]))
        for line in plan.splitlines()
        if len(parts := line.split()) == 2 and parts[1].isdigit()
    )
    # The slide's features batch job reruns (its other slides are skipped by their fingerprint, not recomputed),
    # and so do the order jobs of that batch's slides; no other batch and no other slide's tile job.
    features_jobs = {name: n for name, n in counts.items() if name.startswith("features_batch")}
    assert counts.get("tile") == 1 and features_jobs == {"features_batch2": 1}, plan[-3000:]
    assert counts.get("order") == 3, plan[-3000:]
    assert counts.get("qc") == 1 and counts.get("splits") == 1


def test_second_run_in_same_results_folder_is_refused_clearly(repo_root: Path, tmp_path: Path) -> None:
    """Snakemake's lock: a run that holds (or died holding) the results folder's lock refuses another."""
    config = {
        "slides": str(tmp_path / "demo" / "slides.csv"),
        "labels": str(tmp_path / "demo" / "labels.csv"),
        "results": str(tmp_path / "results"),
        "demo_cohort": {"dir": str(tmp_path / "demo"), "n_slides": 3, "seed": 1},
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "work"  # the lock lives in <workdir>/.snakemake/locks
    workdir.mkdir()
    args = ["--cores", "1", "--configfile", str(cfg), "--directory", str(workdir)]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo_root / "Snakefile"), *args]
    first = subprocess.Popen(
        cmd, cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    locks = workdir / ".snakemake" / "locks"
    try:
        while first.poll() is None and not (locks.exists() and any(locks.iterdir())):
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before it took the lock"
        os.killpg(first.pid, signal.SIGKILL)  # the first run dies holding the lock (as after a crash)
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    second = snakemake(repo_root, *args, timeout=300)
    msg = second.stdout + second.stderr
    assert second.returncode != 0
    assert "cannot be locked" in msg and "--unlock" in msg, msg[-2000:]
    assert snakemake(repo_root, "--unlock", *args, timeout=300).returncode == 0
    assert snakemake(repo_root, "-n", *args, timeout=300).returncode == 0


def planned(res: subprocess.CompletedProcess) -> dict[str, int]:
    """Jobs per rule in a dry run's job table."""
    text = res.stdout + res.stderr
    return {p[0]: int(p[1]) for line in text.splitlines() if len(p := line.split()) == 2 and p[1].isdigit()}


def mtimes(root: Path) -> dict[str, int]:
    """Every file under ``root`` (recursively) → its modification time (ns)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_slide_cut_short_fails_and_once_restored_is_retried(repo_root: Path, tmp_path: Path) -> None:
    """Issue 22 in the workflow: a slide cut to a third fails its tile job (no exclusion). Issue 28: a slide excluded
    by the workflow (a file that is not a slide) and later restored with its original, older modification time is
    retried (its tile job's slide_state parameter changed) and then stays done; `snakemake -n` plans that retry and
    changes no file under results/ (parsing the workflow has no side effects)."""
    from mambamil.qc import read_stub

    demo.generate_cohort(tmp_path / "demo", n_slides=2, seed=3, size=(2048, 1536), progress=False)
    config = {
        "slides": str(tmp_path / "demo" / "slides.csv"),
        "labels": str(tmp_path / "demo" / "labels.csv"),
        "results": str(tmp_path / "results"),
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    slide = demo.slide_path(tmp_path / "demo", "demo_000")
    intact, mtime = slide.read_bytes(), slide.stat().st_mtime_ns
    os.truncate(slide, len(intact) // 3)
    results = tmp_path / "results"
    tiles = results / "tiles"
    targets = [str(tiles / "demo_000.h5"), str(tiles / "demo_001.h5")]
    args = ["--cores", "1", "--configfile", str(cfg), "--replace-workflow-config", *targets]

    res = snakemake(repo_root, "--keep-going", *args)
    assert res.returncode != 0  # the cut slide's job failed: Snakemake's --retries / the cluster would retry it
    log = (results / "logs" / "tile" / "demo_000.log").read_text()
    assert "failed, retry" in log and "file cut short" in log and "EXCLUDED" not in log
    assert not (tiles / "demo_000.h5").exists() and read_stub(tiles / "demo_001.h5") is None

    # Not a slide at all: the workflow excludes it (QC stubs at the tile outputs).
    slide.write_text("not a slide\n" * 50)
    assert snakemake(repo_root, *args).returncode == 0
    assert "not a slide format" in read_stub(tiles / "demo_000.h5").cause
    before = mtimes(results)
    dry = snakemake(repo_root, "-n", *args)
    assert dry.returncode == 0 and planned(dry).get("tile") is None, dry.stdout[-2000:]  # the stub stands

    slide.write_bytes(intact)  # the intact file back, with its original modification time: older than the stubs
    os.utime(slide, ns=(mtime, mtime))
    dry = snakemake(repo_root, "-n", *args)
    assert dry.returncode == 0 and planned(dry).get("tile") == 1, (dry.stdout + dry.stderr)[-3000:]
    assert mtimes(results) == before  # the dry runs changed nothing under results/
    assert "Params have changed since last execution" in dry.stdout + dry.stderr

    assert snakemake(repo_root, *args).returncode == 0
    assert read_stub(tiles / "demo_000.h5") is None  # included now
    again = snakemake(repo_root, "-n", *args)
    assert again.returncode == 0 and planned(again).get("tile") is None  # and it stays done
