"""External validation in the workflow: a second demo cohort (another seed, the same slide ids as the development
cohort) is tiled, embedded and QC'd under results/external/<cohort>/, predicted by the fold ensemble (the mean of
the folds' probabilities) and by the final model, pooled into patients, and scored where labelled; label rows that
cannot be scored are reported row by row. Kept tiny: a small encoder, small slides, one mean-pooling model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mambamil import demo
from mambamil.inference import load_ensemble, predict_cohort

SIZE = (1536, 1024)


def snakemake(repo_root: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo_root / "Snakefile"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=repo_root)


def config(root: Path, external: dict, final_model: bool = True) -> Path:
    cfg = {
        "slides": str(root / "dev" / "slides.csv"),
        "labels": str(root / "dev" / "labels.csv"),
        "results": str(root / "results"),
        "tiling": {"target_mpp": 1.0, "patch_size": 128},
        "features": {"encoder": "timm:test_resnet", "weights": "random", "batch_size": 32, "num_workers": 0},
        "order": {"methods": ["raster"]},
        "tasks": {"subtype": {"type": "classification", "classes": ["normal", "tumor"]}},
        "models": {"mean": {"model": "mean"}},
        "training": {
            # val_fraction 0.45: two validation patients per fold, one of each class, fix an operating point
            **{"seed": 1, "folds": 2, "epochs": 3, "min_epochs": 1, "patience": 1, "val_fraction": 0.45},
            **{"device": "cpu", "final_model": final_model},
        },
        "evaluation": {"min_patients": 2},  # the external cohort scores 2 patients
        "external": external,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def external_cohort(root: Path) -> dict:
    """3 demo slides (seed 11) + a blank slide (its own patient, excluded by QC); labels with an unknown class and
    a patient without slides."""
    demo.generate_cohort(root, n_slides=3, seed=11, size=SIZE, progress=False)
    demo.write_pyramidal_tiff(root / "slides" / "blank.tiff", np.full((1024, 1536, 3), 245, np.uint8), demo.DEMO_MPP)
    slides = pd.read_csv(root / "slides.csv", dtype=str)
    slides.loc[len(slides)] = {"slide_id": "blank", "path": "slides/blank.tiff", "case_id": "blank_case"}
    slides.to_csv(root / "slides.csv", index=False)
    labels = pd.read_csv(root / "labels.csv", dtype=str)
    labels.loc[labels["slide_id"] == "demo_002", "label"] = "lymphoma"
    labels.loc[labels["slide_id"] == "demo_000", "label"] = "normal"  # the two scored patients: one of each class
    labels.loc[labels["slide_id"] == "demo_001", "label"] = "tumor"
    labels.loc[len(labels)] = ["gone_case", "gone", "tumor", "3", "1"]  # a patient without slides
    labels.loc[len(labels)] = ["blank_case", "blank", "normal", "5", "0"]  # its one slide is excluded by QC
    labels.to_csv(root / "labels.csv", index=False)
    return {"slides": str(root / "slides.csv"), "labels": str(root / "labels.csv")}


def test_unlabelled_cohort_plans_predictions_only(repo_root: Path, tmp_path: Path) -> None:
    demo_dir = tmp_path / "dev"
    demo_dir.mkdir()
    (demo_dir / "slides.csv").write_text("slide_id,path\na,a.tiff\n")
    (demo_dir / "labels.csv").write_text("case_id,slide_id,label\na,a,normal\n")
    (tmp_path / "ext.csv").write_text("slide_id,path,case_id\na,a.tiff,p1\n")
    cfg = config(tmp_path, {"site_b": {"slides": str(tmp_path / "ext.csv")}}, final_model=False)
    res = snakemake(repo_root, "-n", "--cores", "1", "--configfile", str(cfg), "--replace-workflow-config")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "external/site_b/subtype/mean/cohort_predictions.csv" in out
    assert "external/site_b/subtype/mean/metrics.json" not in out and "train_final" not in out
    bad = config(tmp_path, {"site b": {"slides": str(tmp_path / "ext.csv")}})
    res = snakemake(repo_root, "-n", "--cores", "1", "--configfile", str(bad), "--replace-workflow-config")
    assert res.returncode != 0 and "site b" in res.stdout + res.stderr


def test_the_report_is_rebuilt_when_an_external_metrics_file_changes(repo_root: Path, tmp_path: Path) -> None:
    """The report shows the external cohorts' metrics (fold ensemble and final model): they are inputs of its rule,
    so a changed metrics file plans the report again (and the report is never built before they exist)."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "slides.csv").write_text("slide_id,path\na,a.tiff\n")
    (tmp_path / "dev" / "labels.csv").write_text("case_id,slide_id,label\na,a,normal\n")
    (tmp_path / "ext.csv").write_text("slide_id,path,case_id\na,a.tiff,p1\n")
    (tmp_path / "ext_labels.csv").write_text("case_id,slide_id,label\np1,a,normal\n")
    labelled = {"slides": str(tmp_path / "ext.csv"), "labels": str(tmp_path / "ext_labels.csv")}
    cfg = config(tmp_path, {"site_b": labelled})
    results = tmp_path / "results"
    ext = results / "external" / "site_b" / "subtype" / "mean"
    inputs = [results / "evaluation" / "summary.csv", results / "evaluation" / "comparison.csv",
              results / "qc" / "slides.csv", ext / "metrics.json", ext / "final" / "metrics.json"]  # fmt: skip
    for path in [*inputs, results / "report.html"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        os.utime(path, (1e9, 1e9 if path.name != "report.html" else 1e9 + 100))  # the report is newer

    def plan() -> str:
        options = ["--configfile", str(cfg), "--replace-workflow-config", "--rerun-triggers", "mtime"]
        target = str(results / "report.html")
        res = snakemake(repo_root, "-n", "--cores", "1", *options, "--allowed-rules", "report", target)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        return res.stdout + res.stderr

    assert "Nothing to be done" in plan()
    for changed in (ext / "metrics.json", ext / "final" / "metrics.json"):
        os.utime(changed, (1e9 + 200, 1e9 + 200))
        out = plan()
        assert "rule report:" in out and str(changed) in out.split("rule report:")[1].split("rule ")[0], out[-3000:]
        os.utime(changed, (1e9, 1e9))


@pytest.mark.slow
def test_external_cohort_predictions_and_metrics(repo_root: Path, tmp_path: Path) -> None:
    demo.generate_cohort(tmp_path / "dev", n_slides=8, seed=3, size=SIZE, progress=False)
    cfg = config(tmp_path, {"site_b": external_cohort(tmp_path / "ext")})
    results = tmp_path / "results"
    ext = results / "external" / "site_b"
    wanted = [ext / "subtype" / "mean" / "metrics.json", ext / "subtype" / "mean" / "final" / "metrics.json"]
    res = snakemake(repo_root, *map(str, wanted), "--cores", "2", "--configfile", str(cfg), "--replace-workflow-config")
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]

    # QC of the external slides, in the cohort's own table; same slide ids as the development cohort, own files.
    qc = pd.read_csv(ext / "qc" / "slides.csv", dtype=str, keep_default_na=False).set_index("slide_id")
    assert qc.loc["blank", "status"] == "excluded" and "no tissue found" in qc.loc["blank", "cause"]
    assert (qc.drop(index="blank")["status"] == "ok").all()
    assert "external cohort site_b: QC: 1 of 4 slide(s) EXCLUDED" in res.stderr  # listed at the end of the run
    assert "blank (patient blank_case) at tile" in res.stderr
    ext_feats = sorted((ext / "features" / "timm-test_resnet-random").glob("demo_*.h5"))
    dev_feat = results / "features" / "timm-test_resnet-random" / "demo_000.h5"
    assert len(ext_feats) == 3 and ext_feats[0].read_bytes() != dev_feat.read_bytes()

    # The fold ensemble's patient predictions are the mean of the folds' own predictions.
    pred = pd.read_csv(ext / "subtype" / "mean" / "cohort_predictions.csv", dtype={"sample_id": str})
    pred = pred.set_index("sample_id")
    assert sorted(pred.index) == ["case_000", "case_001", "case_002"]  # blank_case: no usable slide
    folds = [results / "models" / "subtype" / "mean" / f"fold_{k}" / "checkpoint.pt" for k in (0, 1)]
    cases = pd.read_csv(tmp_path / "ext" / "slides.csv", dtype=str).set_index("slide_id")["case_id"].to_dict()
    per_fold = [predict_cohort(load_ensemble([c], "cpu"), ext_feats, cases, "patient").set_index("sample_id")
                for c in folds]  # fmt: skip
    mean = (per_fold[0]["prob_tumor"] + per_fold[1]["prob_tumor"]) / 2
    np.testing.assert_allclose(pred["prob_tumor"], mean.loc[pred.index], rtol=1e-6)

    # Labels beside predictions; the unknown class and the patient without slides reported row by row.
    lymphoma_case = pred.index[pred["slide_ids"].str.contains("demo_002")][0]
    assert pred.loc[lymphoma_case, "target"] == -1
    metrics = json.loads((ext / "subtype" / "mean" / "metrics.json").read_text())
    assert metrics["n"] == 2 and (ext / "subtype" / "mean" / "predictions.csv").exists()
    problems = metrics["settings"]["label_problems"]
    assert any("'lymphoma' is not one the model knows" in p and "line 4" in p for p in problems), problems
    assert any("patient gone_case has no slide" in p for p in problems), problems
    assert any("patient blank_case has no slide" in p for p in problems), problems
    log = (results / "logs" / "external" / "site_b" / "predict" / "subtype" / "mean.log").read_text()
    assert "lymphoma" in log and "slide blank EXCLUDED by QC" in log
    # The final model: trained on all development patients for the median of the folds' selected epochs.
    summary = json.loads((results / "models" / "subtype" / "mean" / "final" / "summary.json").read_text())
    fold_epochs = [json.loads((f.parent / "summary.json").read_text())["best_epoch"] + 1 for f in folds]
    assert summary["fold_epochs"] == fold_epochs and summary["epochs"] == int(np.floor(np.median(fold_epochs) + 0.5))
    assert len(pd.read_csv(results / "models" / "subtype" / "mean" / "final" / "log.csv")) == summary["epochs"]
    final = pd.read_csv(ext / "subtype" / "mean" / "final" / "cohort_predictions.csv", dtype={"sample_id": str})
    assert sorted(final["sample_id"]) == sorted(pred.index)
    assert json.loads((ext / "subtype" / "mean" / "final" / "metrics.json").read_text())["n"] == 2

    # The development operating point is carried over: external sensitivity and specificity exist (issue 26).
    development = json.loads((results / "evaluation" / "subtype" / "mean" / "metrics.json").read_text())
    threshold = development["operating_point"]["development"]
    for folder in (ext / "subtype" / "mean", ext / "subtype" / "mean" / "final"):
        scored = pd.read_csv(folder / "predictions.csv")
        assert np.allclose(scored["threshold"], threshold)
        m = json.loads((folder / "metrics.json").read_text())["metrics"]
        for name in ("sensitivity", "specificity"):
            assert m[name]["estimate"] is not None, (folder, name, m[name])
