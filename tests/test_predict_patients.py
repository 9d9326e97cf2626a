"""``mambamil predict`` at patient level: with a slide sheet, a patient's prediction is the model's output on the
concatenation of its slides' sequences, exactly as training built the patient's bag (the fold's test predictions);
labels from a label sheet are written beside the predictions, and rows that cannot be scored (a class the model
does not know, a patient without slides) are reported one per line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambamil.cli import main
from mambamil.config import default_section
from mambamil.external import attach_labels
from mambamil.h5layout import CoordsAttrs, FeatureAttrs, write_features
from mambamil.inference import load_ensemble, predict_cohort
from mambamil.train.engine import final_epochs

DIM, ORDER_SEED, METHOD = 16, 5, "random"
TASK = {"type": "classification", "classes": ["normal", "tumor"], "label_column": "label"}
MODEL = {"model": "mambamil", "layer": "srmamba", "rate": 5, "n_layers": 1, "d_model": 32}


def run(*args: object) -> None:
    assert main(["--quiet", "--threads", "1", *[str(a) for a in args]]) == 0, args


def bag(path: Path, rng: np.random.Generator, tumor: bool, patch_size: int = 256) -> None:
    n = int(rng.integers(20, 40))
    cells = rng.choice(8 * 11, size=n, replace=False)
    coords = np.stack([(cells % 8) * 256, (cells // 8) * 256], axis=1)
    feats = rng.normal(size=(n, DIM)).astype(np.float32) + 0.8 * tumor
    meta = CoordsAttrs(patch_size=patch_size, patch_size_level0=256, step_level0=256)
    write_features(path, feats, coords, FeatureAttrs(patch_size=patch_size), meta)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 patients, every second one with two slides; one patient-level model (fold 0) on random orders."""
    root = tmp_path_factory.mktemp("patient_cohort")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(10):
        tumor = i % 2 == 1
        for j in range(1 + (i % 2 == 0)):
            sid = f"S{i:02d}{'ab'[j]}"
            bag(root / "features" / f"{sid}.h5", rng, tumor)
            rows.append({"case_id": f"P{i:02d}", "slide_id": sid, "label": "tumor" if tumor else "normal"})
    labels = pd.DataFrame(rows)
    labels.to_csv(root / "labels.csv", index=False)
    labels.assign(path=labels["slide_id"] + ".tiff")[["slide_id", "path", "case_id"]].to_csv(
        root / "slides.csv", index=False
    )
    for sid in labels["slide_id"]:
        run("order", root / "features" / f"{sid}.h5", "--method", METHOD, "--seed", ORDER_SEED,
            "--out", root / "order" / f"{sid}.npy")  # fmt: skip
    training = {**default_section("training"), "folds": 3, "val_fraction": 0.25, "level": "patient", "order": METHOD,
                "epochs": 2, "min_epochs": 1, "patience": 1, "device": "cpu"}  # fmt: skip
    spec = json.dumps({"task_name": "subtype", "task": TASK, "training": training, "model_name": "mambamil",
                       "model": MODEL, "order_seed": ORDER_SEED})  # fmt: skip
    (root / "spec.json").write_text(spec)
    common = ["--labels", root / "labels.csv", "--features-dir", root / "features", "--settings", spec]
    run("splits", *common, "--out", root / "splits.csv")
    run("train", *common, "--order-dir", root / "order", "--splits", root / "splits.csv", "--fold", 0,
        "--out", root / "model")  # fmt: skip
    return root


def test_patient_prediction_is_the_trained_patient_bag(cohort: Path, tmp_path: Path) -> None:
    test = pd.read_csv(cohort / "model" / "test_predictions.csv", dtype={"sample_id": str}).set_index("sample_id")
    assert (test["slide_ids"].str.count(";") == 1).any(), "the test fold should hold a two-slide patient"
    feats = sorted((cohort / "features").glob("*.h5"))
    ckpt = cohort / "model" / "checkpoint.pt"
    out = tmp_path / "patients.csv"
    run("predict", *feats, "--checkpoint", ckpt, "--slides", cohort / "slides.csv", "--out", out)
    pred = pd.read_csv(out, dtype={"sample_id": str}).set_index("sample_id")
    assert len(pred) == 10 and (pred["case_id"] == pred.index).all()  # one row per patient (trained level)
    cols = ["prob_normal", "prob_tumor"]
    np.testing.assert_array_equal(pred.loc[test.index, cols].to_numpy(), test[cols].to_numpy())
    assert (pred.loc[test.index, "slide_ids"] == test["slide_ids"]).all()
    assert (pred.loc[test.index, "n_instances"] == test["n_instances"]).all()

    # Slide level gives one row per slide, and a two-slide patient's pooled bag is not the mean of its slides.
    ensemble = load_ensemble([ckpt], "cpu")
    slides = predict_cohort(ensemble, feats, None).set_index("sample_id")
    assert len(slides) == 15
    two = pred.index[pred["slide_ids"].str.contains(";")][0]
    a, b = pred.loc[two, "slide_ids"].split(";")
    assert pred.loc[two, "n_instances"] == slides.loc[a, "n_instances"] + slides.loc[b, "n_instances"]
    assert not np.isclose(pred.loc[two, "prob_tumor"], slides.loc[[a, b], "prob_tumor"].mean())

    # Features embedded differently (another patch size) are refused, naming the file.
    other = tmp_path / "S99.h5"
    bag(other, np.random.default_rng(0), True, patch_size=512)
    with pytest.raises(Exception, match=r"patch_size 512.*trained on 256") as info:
        predict_cohort(ensemble, [other], None)
    assert "S99.h5" in str(info.value)


def test_labels_beside_predictions_and_row_problems(cohort: Path, tmp_path: Path, caplog) -> None:
    labels = pd.read_csv(cohort / "labels.csv", dtype=str)
    labels.loc[labels["case_id"] == "P03", "label"] = "lymphoma"  # a class the model does not know
    extra = pd.DataFrame([{"case_id": "P42", "slide_id": "S42a", "label": "tumor"}])  # a patient without slides
    labels = pd.concat([labels, extra], ignore_index=True)
    sheet = tmp_path / "labels.csv"
    labels.to_csv(sheet, index=False)
    feats = sorted((cohort / "features").glob("*.h5"))
    out, metrics = tmp_path / "pred.csv", tmp_path / "metrics"
    with caplog.at_level(logging.WARNING, logger="mambamil"):
        run("predict", *feats, "--checkpoint", cohort / "model" / "checkpoint.pt", "--slides", cohort / "slides.csv",
            "--labels", sheet, "--metrics-dir", metrics, "--out", out)  # fmt: skip
    pred = pd.read_csv(out, dtype={"sample_id": str}, keep_default_na=False).set_index("sample_id")
    assert pred.loc["P03", "target"] == -1 and pred.loc["P03", "label"] == ""
    assert pred.loc["P01", "label"] == "tumor" and pred.loc["P01", "target"] == 1
    assert pred.loc["P00", "label"] == "normal" and pred.loc["P00", "target"] == 0
    p03_line = int(np.flatnonzero(labels["case_id"] == "P03")[0]) + 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"line {p03_line}" in w and "'lymphoma' is not one the model knows" in w for w in warnings), warnings
    assert any(f"line {len(labels) + 1}" in w and "patient P42 has no slide" in w for w in warnings), warnings
    assert all("\n" not in w for w in warnings)
    result = json.loads((metrics / "metrics.json").read_text())
    assert result["n"] == 9  # 10 patients, P03's label unknown
    scored = pd.read_csv(metrics / "predictions.csv", dtype={"sample_id": str})
    assert "P03" not in set(scored["sample_id"]) and len(scored) == 9
    # 9 scored patients are fewer than evaluation.min_patients (10): NaN (null) with the reason, never a number
    assert result["pooled"]["auc"] is None and (metrics / "test_curves.png").exists()
    assert result["metrics"]["auc"]["reason"] == "fewer than 10 patients (9)"


def test_attach_labels_survival_and_slide_level() -> None:
    ids = ["s1", "s2", "s3"]
    preds = pd.DataFrame({"sample_id": ids, "case_id": ["p1", "p1", "p2"], "slide_ids": ids,
                          "n_instances": [3, 4, 5], "risk": [0.1, 0.2, 0.3]})  # fmt: skip
    labels = pd.DataFrame({"case_id": ["p1", "p1", "p2", "p3"], "slide_id": ["s1", "s2", "s3", "s4"],
                           "time": [5.0, 5.0, 9.0, 1.0], "event": [1, 1, 0, 1]})  # fmt: skip
    out, problems = attach_labels(preds, labels, "survival", [], "slide", bin_edges=[0, 4, 8, 20])
    assert out["time"].tolist() == [5.0, 5.0, 9.0] and out["event"].tolist() == [1, 1, 0]
    assert out["target"].tolist() == [1, 1, 2]
    assert problems == [
        "label sheet line 5: slide s4 has no slide with usable features in this cohort (not in the slide sheet, "
        "excluded by QC, or not embedded); not scored"
    ]


def test_final_model_trains_for_the_folds_median_epoch(cohort: Path, tmp_path: Path) -> None:
    assert final_epochs([{"best_epoch": 0}, {"best_epoch": 3}]) == 3  # median 2.5 rounds half up
    assert final_epochs([{"best_epoch": 1}, {"best_epoch": 1}, {"best_epoch": 6}]) == 2
    summaries = []
    for k, best in enumerate((0, 2)):
        summaries.append(tmp_path / f"fold_{k}.json")
        summaries[-1].write_text(json.dumps({"best_epoch": best}))
    spec = cohort.joinpath("spec.json").read_text()
    run("train-final", "--labels", cohort / "labels.csv", "--features-dir", cohort / "features", "--settings", spec,
        "--order-dir", cohort / "order", "--fold-summaries", *summaries, "--out", tmp_path / "final")  # fmt: skip
    summary = json.loads((tmp_path / "final" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["fold_epochs"] == [1, 3] and summary["n_train"] == 10
    assert len(pd.read_csv(tmp_path / "final" / "log.csv")) == 2
    ensemble = load_ensemble([tmp_path / "final" / "checkpoint.pt"], "cpu")
    assert ensemble.members[0].extra["final_model"]["epochs"] == 2
    assert ensemble.members[0].order == (METHOD, ORDER_SEED)
