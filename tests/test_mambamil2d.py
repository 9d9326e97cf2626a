"""mambamil_2d: trained, saved, loaded, predicted, ensembled and drawn like the other models; its checkpoint keeps
the grid step; predictions do not depend on the order the patches are stored in; grid errors name the slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mambamil.cli import main
from mambamil.config import default_section
from mambamil.errors import MambamilError
from mambamil.h5layout import CoordsAttrs, FeatureAttrs, write_features
from mambamil.inference import bag_outputs, load_bag, load_ensemble
from mambamil.models import InstanceCoords, call_model, create_model, load_checkpoint, save_checkpoint
from mambamil.models.mambamil2d import sr_grid
from mambamil.ops.scan2d import GridError, ScanGrid

N_SLIDES, DIM, STEP = 10, 12, 256
TASK = {"type": "classification", "classes": ["normal", "tumor"], "label_column": "label"}
MODEL = {"model": "mambamil_2d", "rate": 3, "n_layers": 1, "d_model": 16}


def run(*args: object) -> None:
    assert main(["--quiet", "--threads", "1", *[str(a) for a in args]]) == 0, args


def write_slide(path: Path, feats: np.ndarray, coords: np.ndarray, step: int = STEP) -> None:
    meta = CoordsAttrs(patch_size=step, patch_size_level0=step, step_level0=step, target_mpp=0.5)
    write_features(path, feats, coords, FeatureAttrs(patch_size=step), meta)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bags on patch grids with holes that fit on the real test slide (2220 x 2967 px); one fold trained."""
    root = tmp_path_factory.mktemp("grid_cohort")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_SLIDES):
        sid, tumor = f"S{i:02d}", i % 2 == 1
        cells = rng.choice(8 * 11, size=int(rng.integers(30, 60)), replace=False)
        coords = np.stack([(cells % 8) * STEP, (cells // 8) * STEP], axis=1)
        feats = rng.normal(size=(len(cells), DIM)).astype(np.float32) + 0.8 * tumor
        write_slide(root / "features" / f"{sid}.h5", feats, coords)
        rows.append({"case_id": f"P{i:02d}", "slide_id": sid, "label": "tumor" if tumor else "normal"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    training = {**default_section("training"), "folds": 2, "val_fraction": 0.25, "level": "slide", "epochs": 2,
                "min_epochs": 1, "patience": 1, "device": "cpu"}  # fmt: skip
    spec = json.dumps({"task_name": "subtype", "task": TASK, "training": training, "model_name": "mambamil_2d",
                       "model": MODEL})  # fmt: skip
    common = ["--labels", root / "labels.csv", "--features-dir", root / "features", "--settings", spec]
    run("splits", *common, "--out", root / "splits.csv")
    for fold in (0, 1):
        run("train", *common, "--splits", root / "splits.csv", "--fold", fold, "--out", root / "models" / str(fold))
    return root


def test_checkpoint_records_grid_step_and_predict_matches_training(cohort: Path, tmp_path: Path) -> None:
    ckpt = cohort / "models" / "0" / "checkpoint.pt"
    model, _ = load_checkpoint(ckpt)
    assert model.config["name"] == "mambamil_2d" and model.config["grid_step"] == STEP
    test = pd.read_csv(cohort / "models" / "0" / "test_predictions.csv").set_index("sample_id")
    feats = [cohort / "features" / f"{sid}.h5" for sid in test.index]
    run("predict", *feats, "--checkpoint", ckpt, "--out", tmp_path / "p.csv")
    pred = pd.read_csv(tmp_path / "p.csv").set_index("sample_id").loc[test.index]
    cols = ["prob_normal", "prob_tumor"]
    np.testing.assert_allclose(pred[cols].to_numpy(), test[cols].to_numpy(), rtol=0, atol=1e-6)


def test_ensemble_and_heatmap(cohort: Path, tmp_path: Path, real_slide: Path) -> None:
    ckpts = [cohort / "models" / f / "checkpoint.pt" for f in ("0", "1")]
    sid = "S03"
    feats = cohort / "features" / f"{sid}.h5"
    ensemble = load_ensemble(ckpts)
    result = bag_outputs(ensemble, load_bag(feats))
    singles = [bag_outputs(load_ensemble([c]), load_bag(feats)) for c in ckpts]
    np.testing.assert_allclose(result.attention, np.mean([s.attention for s in singles], axis=0), rtol=1e-6)
    out = tmp_path / "heat"
    run("heatmap", real_slide, "--features", feats, "--checkpoint", ckpts[0], "--out", out, "--slide-id", sid)
    scores = pd.read_csv(out / f"{sid}.scores.csv")
    np.testing.assert_allclose(scores["attention"].to_numpy(), singles[0].attention, rtol=1e-5, atol=1e-8)


def test_predictions_do_not_depend_on_the_stored_patch_order(cohort: Path, tmp_path: Path) -> None:
    ckpt = cohort / "models" / "0" / "checkpoint.pt"
    src = load_bag(cohort / "features" / "S05.h5")
    perm = np.random.default_rng(1).permutation(len(src.features))
    write_slide(tmp_path / "S05.h5", src.features.numpy()[perm], src.coords[perm])
    ensemble = load_ensemble([ckpt])
    a = bag_outputs(ensemble, src)
    b = bag_outputs(ensemble, load_bag(tmp_path / "S05.h5"))
    assert a.prediction["prob_tumor"] == pytest.approx(b.prediction["prob_tumor"], abs=1e-6)
    np.testing.assert_allclose(b.attention, a.attention[perm], rtol=1e-5, atol=1e-9)


def test_bag_with_another_stride_is_refused(cohort: Path, tmp_path: Path) -> None:
    src = load_bag(cohort / "features" / "S02.h5")
    write_slide(tmp_path / "X.h5", src.features.numpy(), src.coords * 2, step=2 * STEP)
    with pytest.raises(MambamilError, match=r"slide X: patches at a stride of 512 px, but the model.s grid step"):
        bag_outputs(load_ensemble([cohort / "models" / "0" / "checkpoint.pt"]), load_bag(tmp_path / "X.h5"))


def test_off_grid_bag_names_slide_and_step() -> None:
    model = create_model("mambamil_2d", DIM, 2, d_model=8, n_layers=1, grid_step=STEP)
    coords = np.array([[0, 0], [256, 0], [384, 256]])
    meta = CoordsAttrs(patch_size=STEP, patch_size_level0=STEP, step_level0=STEP)
    with pytest.raises(GridError, match=r"slide T1: patch \(384, 256\) is 128 px off the patch grid of step 256 px"):
        call_model(model, torch.randn(3, DIM), InstanceCoords.of_slide(coords, "T1", meta))


def test_grid_limit_is_configured() -> None:
    model = create_model("mambamil_2d", DIM, 2, d_model=8, n_layers=1, grid_step=STEP, max_grid_cells=100)
    coords = np.array([[0, 0], [STEP * 20, STEP * 20]])
    meta = CoordsAttrs(patch_size=STEP, patch_size_level0=STEP, step_level0=STEP)
    with pytest.raises(GridError, match="slide T2: the patch grid is 21 x 21 = 441 cells, over the limit of 100 cells"):
        call_model(model, torch.randn(2, DIM), InstanceCoords.of_slide(coords, "T2", meta))


def test_patient_bag_places_slides_side_by_side(tmp_path: Path) -> None:
    model = create_model("mambamil_2d", DIM, 2, d_model=8, n_layers=1, grid_step=STEP)
    a = InstanceCoords.of_slide(np.array([[0, 0], [256, 0]]), "A")
    b = InstanceCoords.of_slide(np.array([[0, 0], [0, 256]]), "B")
    grid = model.grid(InstanceCoords.concat([a, b]))
    assert (grid.cols.tolist(), grid.rows.tolist(), grid.width, grid.height) == ([0, 1, 3, 3], [0, 0, 0, 1], 4, 2)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model)
    assert load_checkpoint(path)[0].config["grid_step"] == STEP


def test_sr_grid_interleaves_rows_and_columns() -> None:
    grid = ScanGrid.from_positions(np.array([(c, r) for r in range(4) for c in range(5)]))
    sr = sr_grid(grid, 2)
    assert sr.cols[:5].tolist() == [0, 3, 1, 4, 2] and sr.rows[::5].tolist() == [0, 2, 1, 3]
    assert len({(r, c) for r, c in zip(sr.rows, sr.cols, strict=True)}) == 20
