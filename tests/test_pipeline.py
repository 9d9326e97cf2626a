"""End to end on a demo cohort made by the project's generator: tile → features → order → splits → train →
evaluate → heatmaps, through the CLI verbs the Snakemake rules call. Checks that MambaMIL learns both demo tasks,
that reruns are bit-identical, and that attention lands on the lesion."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import shapely.geometry
import torch

from mambamil import demo
from mambamil.cli import main
from mambamil.config import default_section
from mambamil.geometry import feature_collection_to_mask

N_SLIDES = 30
SIZE = (3072, 2304)
FOLDS = 4
# The paper's width (d_model 512): at 128 or 256 the survival c-index fell below 0.6 on this cohort (0.59, 0.56).
MODEL = {"model": "mambamil", "layer": "srmamba", "rate": 5, "n_layers": 2, "dropout": 0.25}
TASKS = {
    "subtype": {"type": "classification", "classes": ["normal", "tumor"], "label_column": "label"},
    "survival": {"type": "survival", "n_bins": 4},
}

pytestmark = pytest.mark.slow


def spec(task: str, **training) -> str:
    train = {
        **default_section("training"),
        "folds": FOLDS,
        "epochs": 12,
        "min_epochs": 3,
        "patience": 3,
        "val_fraction": 0.2,
        "standardize_features": True,
        "device": "cpu",
        **training,
    }
    return json.dumps(
        {"task_name": task, "task": TASKS[task], "training": train, "model_name": "mambamil", "model": MODEL}
    )


def run(*args: str) -> None:
    assert main(["--quiet", "--threads", "1", *[str(a) for a in args]]) == 0, args


def train_and_evaluate(root: Path, task: str, out: Path, folds=range(FOLDS)) -> None:
    common = ["--labels", root / "demo" / "labels.csv", "--features-dir", root / "features", "--settings", spec(task)]
    run("splits", *common, "--out", root / "splits" / f"{task}.csv")
    for fold in folds:
        run(
            "train",
            *common,
            "--order-dir",
            root / "order",
            "--splits",
            root / "splits" / f"{task}.csv",
            "--fold",
            fold,
            "--out",
            out / f"fold_{fold}",
        )
    preds = [out / f"fold_{f}" / "test_predictions.csv" for f in folds]
    run("evaluate", *preds, "--settings", spec(task), "--out", out / "evaluation")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    demo.generate_cohort(root / "demo", n_slides=N_SLIDES, seed=7, size=SIZE, progress=False)
    for sid in demo.slide_ids(N_SLIDES):
        slide = demo.slide_path(root / "demo", sid)
        run("tile", slide, "--out", root / "tiles", "--slide-id", sid)
        run(
            "features",
            slide,
            "--coords",
            root / "tiles" / f"{sid}.h5",
            "--out",
            root / "features" / f"{sid}.h5",
            "--encoder",
            "timm:resnet18",
            "--weights",
            "random",
            "--batch-size",
            "64",
            "--num-workers",
            "0",
        )
        run("order", root / "features" / f"{sid}.h5", "--method", "raster", "--out", root / "order" / f"{sid}.npy")
    for task in TASKS:
        train_and_evaluate(root, task, root / "models" / task)
    return root


def test_subtyping_auc_well_above_chance(cohort: Path) -> None:
    metrics = json.loads((cohort / "models" / "subtype" / "evaluation" / "metrics.json").read_text())
    # Pooled over the test folds (every patient tested once, ~25 patients): a random scorer reaches 0.8 with
    # probability ~1 %.
    assert metrics["pooled"]["auc"] >= 0.8, metrics["pooled"]
    assert metrics["summary"]["auc"]["mean"] >= 0.75
    assert (cohort / "models" / "subtype" / "evaluation" / "test_curves.png").stat().st_size > 1000


def test_survival_c_index_above_chance(cohort: Path) -> None:
    metrics = json.loads((cohort / "models" / "survival" / "evaluation" / "metrics.json").read_text())
    # The demo's own ceiling (true lesion burden as risk) is ~0.67 on these 25 patients; a random scorer's mean
    # over 4 folds of ~6 patients has sd ~0.075, so it passes 0.6 with probability < 10 %.
    assert metrics["summary"]["c_index"]["mean"] >= 0.6, metrics["summary"]
    assert metrics["pooled"]["c_index"] > 0.55, metrics["pooled"]


def test_predictions_cover_every_patient_once(cohort: Path) -> None:
    preds = pd.read_csv(cohort / "models" / "subtype" / "evaluation" / "predictions.csv")
    labels = pd.read_csv(cohort / "demo" / "labels.csv")
    assert sorted(preds["case_id"]) == sorted(labels["case_id"].unique())
    assert np.allclose(preds[["prob_normal", "prob_tumor"]].sum(axis=1), 1, atol=1e-5)
    fold0 = pd.read_csv(cohort / "models" / "subtype" / "fold_0" / "log.csv")
    assert {"epoch", "train_loss", "val_loss", "is_best"} <= set(fold0.columns)


def test_same_seed_same_metrics(cohort: Path, tmp_path: Path) -> None:
    """Two runs of one fold with the same seed are bit-identical on CPU (2 epochs each: the log, the checkpoint's
    weights and the test predictions)."""
    common = ["--labels", cohort / "demo" / "labels.csv", "--features-dir", cohort / "features"]
    for name in ("a", "b"):
        run(
            "train",
            *common,
            "--settings",
            spec("subtype", epochs=2, min_epochs=2),
            "--order-dir",
            cohort / "order",
            "--splits",
            cohort / "splits" / "subtype.csv",
            "--fold",
            0,
            "--out",
            tmp_path / name,
        )
    a, b = (pd.read_csv(tmp_path / name / "log.csv") for name in ("a", "b"))
    assert len(a) == 2
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    pa, pb = (pd.read_csv(tmp_path / name / "test_predictions.csv") for name in ("a", "b"))
    pd.testing.assert_frame_equal(pa, pb, check_exact=True)
    wa, wb = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["state_dict"] for name in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_predict_ensemble(cohort: Path, tmp_path: Path) -> None:
    ckpts = sorted((cohort / "models" / "subtype").glob("fold_*/checkpoint.pt"))
    feats = sorted((cohort / "features").glob("*.h5"))[:4]
    run("predict", *feats, "--checkpoint", *ckpts, "--out", tmp_path / "p.csv", "--order", "raster")
    df = pd.read_csv(tmp_path / "p.csv")
    assert len(df) == 4 and df["predicted"].isin(["normal", "tumor"]).all()


def _test_fold_checkpoint(cohort: Path, slide_id: str) -> Path:
    splits = pd.read_csv(cohort / "splits" / "subtype.csv")
    labels = pd.read_csv(cohort / "demo" / "labels.csv").set_index("slide_id")
    case = labels.loc[slide_id, "case_id"]
    fold = splits.loc[(splits["case_id"] == case) & (splits["split"] == "test"), "fold"].item()
    return cohort / "models" / "subtype" / f"fold_{fold}" / "checkpoint.pt"


def test_attention_concentrates_on_the_lesion(cohort: Path, tmp_path: Path) -> None:
    truth = pd.read_csv(cohort / "demo" / "truth.csv")
    top_shares, lesion_shares = [], []
    for sid in truth.loc[truth["label"] == "tumor", "slide_id"]:
        out = tmp_path / sid
        run(
            "heatmap",
            demo.slide_path(cohort / "demo", sid),
            "--features",
            cohort / "features" / f"{sid}.h5",
            "--checkpoint",
            _test_fold_checkpoint(cohort, sid),
            "--out",
            out,
            "--slide-id",
            sid,
            "--top-k",
            "4",
        )
        scores = pd.read_csv(out / f"{sid}.scores.csv")
        fc = json.loads(demo.lesion_path(cohort / "demo", sid).read_text())
        lesion = feature_collection_to_mask(fc, (SIZE[1] * 2 // 16, SIZE[0] * 2 // 16), 16.0)
        centre = ((scores[["x", "y"]].to_numpy() + 128) // 16).astype(int)
        inside = lesion[centre[:, 1], centre[:, 0]]
        top = scores["attention_percentile"].to_numpy() >= 0.9
        top_shares.append(inside[top].mean())
        lesion_shares.append(inside.mean())
    # The share of top-decile patches inside the lesion is far above the lesion's share of the tissue.
    assert np.mean(top_shares) >= 2.5 * np.mean(lesion_shares), (top_shares, lesion_shares)


def test_heatmap_outputs(cohort: Path, tmp_path: Path) -> None:
    sid = demo.slide_ids(N_SLIDES)[0]
    slide = demo.slide_path(cohort / "demo", sid)
    for mpp in (8.0, 4.0):
        out = tmp_path / str(mpp)
        run(
            "heatmap",
            slide,
            "--features",
            cohort / "features" / f"{sid}.h5",
            "--checkpoint",
            _test_fold_checkpoint(cohort, sid),
            "--out",
            out,
            "--slide-id",
            sid,
            "--mpp",
            mpp,
            "--smooth-um",
            16,
        )
        img = cv2.imread(str(out / f"{sid}.attention.png"))
        import openslide

        w0, h0 = openslide.OpenSlide(str(slide)).dimensions
        assert img.shape[1] == round(w0 * 0.5 / mpp)  # PNG width follows the chosen resolution
        assert img.shape[0] > round(h0 * 0.5 / mpp)  # plus the colour bar strip
        assert (out / f"{sid}.gradxinput.png").exists() and (out / f"{sid}.top.png").exists()
    scores = pd.read_csv(tmp_path / "8.0" / f"{sid}.scores.csv")
    fc = json.loads((tmp_path / "8.0" / f"{sid}.patches.geojson").read_text())
    assert len(fc["features"]) == len(scores)
    for feature, (x, y) in zip(fc["features"], scores[["x", "y"]].to_numpy(), strict=True):
        poly = shapely.geometry.shape(feature["geometry"])
        assert poly.bounds[:2] == (x, y) and poly.area > 0
        assert "attention" in feature["properties"]["measurements"]


def test_feature_dim_mismatch_is_a_clear_error(cohort: Path, tmp_path: Path, capsys) -> None:
    import h5py

    bad = tmp_path / "other_encoder.h5"
    with h5py.File(bad, "w") as f:  # a CLAM-style bag from a 1024-d encoder
        f["features"] = np.ones((5, 1024), np.float32)  # all-zero bags are refused
        f["coords"] = np.zeros((5, 2), np.int64)
    ckpt = cohort / "models" / "subtype" / "fold_0" / "checkpoint.pt"
    rc = main(["predict", str(bad), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert rc == 1 and "feature dimension 1024" in err and "other_encoder.h5" in err
    assert not (tmp_path / "p.csv").exists()


def test_class_weights_and_weighted_sampler_train(cohort: Path, tmp_path: Path) -> None:
    common = ["--labels", cohort / "demo" / "labels.csv", "--features-dir", cohort / "features"]
    s = spec("subtype", class_weights="balanced", sampler="weighted", epochs=2, min_epochs=1)
    run(
        "train",
        *common,
        "--settings",
        s,
        "--splits",
        cohort / "splits" / "subtype.csv",
        "--fold",
        1,
        "--out",
        tmp_path / "fold_1",
    )
    log = pd.read_csv(tmp_path / "fold_1" / "log.csv")
    assert len(log) == 2 and np.isfinite(log["train_loss"]).all()
