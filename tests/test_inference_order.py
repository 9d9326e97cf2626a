"""The trained sequence order is the order used at inference: models trained on ``random`` and ``hilbert`` orders
(order stage files, seed per slide) give, through ``predict`` and ``heatmap`` (which recompute the order from the
checkpoint), the same scores as the training-time evaluation of the same slides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mambamil.bags import BagDataset, Sample
from mambamil.cli import main
from mambamil.config import default_section
from mambamil.h5layout import CoordsAttrs, FeatureAttrs, write_features
from mambamil.inference import bag_outputs, checkpoint_order, load_bag, load_ensemble
from mambamil.models import load_checkpoint
from mambamil.order import read_order

N_SLIDES, DIM, ORDER_SEED = 12, 16, 3
TASK = {"type": "classification", "classes": ["normal", "tumor"], "label_column": "label"}
MODEL = {"model": "mambamil", "layer": "srmamba", "rate": 5, "n_layers": 1, "d_model": 32}


def run(*args: object) -> None:
    assert main(["--quiet", "--threads", "1", *[str(a) for a in args]]) == 0, args


def spec(method: str) -> str:
    training = {**default_section("training"), "folds": 3, "val_fraction": 0.25, "level": "slide", "order": method,
                "epochs": 2, "min_epochs": 1, "patience": 1, "device": "cpu"}  # fmt: skip
    return json.dumps({"task_name": "subtype", "task": TASK, "training": training, "model_name": "mambamil",
                       "model": MODEL, "order_seed": ORDER_SEED})  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic feature bags on patch grids that fit on the real test slide (2220 × 2967 px)."""
    root = tmp_path_factory.mktemp("order_cohort")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_SLIDES):
        sid, tumor = f"S{i:02d}", i % 2 == 1
        n = int(rng.integers(40, 80))
        cells = rng.choice(8 * 11, size=n, replace=False)
        coords = np.stack([(cells % 8) * 256, (cells // 8) * 256], axis=1)
        feats = rng.normal(size=(n, DIM)).astype(np.float32) + (0.8 * tumor) * (coords[:, :1] < 700)
        meta = CoordsAttrs(patch_size=256, patch_size_level0=256, step_level0=256)
        write_features(root / "features" / f"{sid}.h5", feats, coords, FeatureAttrs(patch_size=256), meta)
        rows.append({"case_id": f"P{i:02d}", "slide_id": sid, "label": "tumor" if tumor else "normal"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    for method in ("random", "hilbert"):
        for i in range(N_SLIDES):
            feats = root / "features" / f"S{i:02d}.h5"
            out = root / "order" / method / f"S{i:02d}.npy"
            run("order", feats, "--method", method, "--seed", ORDER_SEED, "--out", out)
        common = ["--labels", root / "labels.csv", "--features-dir", root / "features", "--settings", spec(method)]
        run("splits", *common, "--out", root / "splits.csv")
        run("train", *common, "--order-dir", root / "order" / method, "--splits", root / "splits.csv", "--fold", 0,
            "--out", root / "models" / method)  # fmt: skip
    return root


@pytest.mark.parametrize("method", ["random", "hilbert"])
def test_predict_equals_training_evaluation(cohort: Path, tmp_path: Path, method: str, caplog) -> None:
    ckpt = cohort / "models" / method / "checkpoint.pt"
    assert checkpoint_order(load_checkpoint(ckpt)[1]) == (method, ORDER_SEED)
    test = pd.read_csv(cohort / "models" / method / "test_predictions.csv").set_index("sample_id")
    feats = [cohort / "features" / f"{sid}.h5" for sid in test.index]
    run("predict", *feats, "--checkpoint", ckpt, "--out", tmp_path / "p.csv")  # no --order: the trained one
    pred = pd.read_csv(tmp_path / "p.csv").set_index("sample_id").loc[test.index]
    cols = ["prob_normal", "prob_tumor"]
    np.testing.assert_array_equal(pred[cols].to_numpy(), test[cols].to_numpy())
    assert (pred["predicted"] == test["predicted"]).all()
    # An explicit different order is honoured (with a warning) and reads another sequence.
    with caplog.at_level("WARNING", logger="mambamil"):
        run("predict", *feats, "--checkpoint", ckpt, "--out", tmp_path / "raster.csv", "--order", "raster")
    assert f"trained on {method} order; overriding with --order raster" in caplog.text
    raster = pd.read_csv(tmp_path / "raster.csv").set_index("sample_id").loc[test.index]
    assert not np.allclose(raster[cols].to_numpy(), test[cols].to_numpy(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", ["random", "hilbert"])
def test_heatmap_uses_the_trained_order(cohort: Path, tmp_path: Path, real_slide: Path, method: str) -> None:
    ckpt = cohort / "models" / method / "checkpoint.pt"
    test = pd.read_csv(cohort / "models" / method / "test_predictions.csv")
    sid = test["sample_id"].iloc[0]
    feats = cohort / "features" / f"{sid}.h5"
    out = tmp_path / "heat"
    run("heatmap", real_slide, "--features", feats, "--checkpoint", ckpt, "--out", out, "--slide-id", sid)
    prediction = json.loads((out / f"{sid}.prediction.json").read_text())
    np.testing.assert_allclose(prediction["prob_tumor"], test["prob_tumor"].iloc[0], rtol=0, atol=1e-6)
    # Attention equals the model's on the training sequence (the order stage's file), mapped back to file order.
    bag = load_bag(feats)
    perm = read_order(cohort / "order" / method / f"{sid}.npy", len(bag.features))
    model = load_ensemble([ckpt]).members[0].model
    x, _ = BagDataset([Sample(sid, sid, [sid])], {sid: feats}, {sid: perm})[0]
    with torch.no_grad():
        att = model(x)["attention"].reshape(-1).numpy()
    expected = np.empty_like(att)
    expected[perm] = att
    scores = pd.read_csv(out / f"{sid}.scores.csv")
    np.testing.assert_allclose(scores["attention"].to_numpy(), expected, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(bag_outputs(load_ensemble([ckpt]), bag).attention, expected, rtol=1e-6, atol=1e-9)


def test_inference_paths_do_not_import_the_training_engine() -> None:
    import subprocess
    import sys

    code = "import sys, mambamil.heatmaps, mambamil.inference; print('mambamil.train.engine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
