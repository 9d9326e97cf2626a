"""Stub-based exclusion seen from downstream, verb by verb: an excluded slide's stub carries the stage and cause
that excluded it through the order stage, the QC table names the first stage that excluded each slide, and splits
and train — given only the stubs in the features folder, no QC table — leave the slide (and a patient with no
other slide) out of the splits file and of the bags that are trained and predicted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mambamil.cli import main
from mambamil.config import default_section
from mambamil.h5layout import CoordsAttrs, FeatureAttrs, write_coords, write_features
from mambamil.qc import QCOutcome, read_stub, write_stub

DIM = 4


def run(*args: object) -> int:
    return main(["--quiet", "--threads", "1", *[str(a) for a in args]])


def bag(path: Path, feats: np.ndarray) -> Path:
    coords = np.stack([np.arange(len(feats)) * 256, np.zeros(len(feats))], axis=1)
    meta = CoordsAttrs(patch_size=256, patch_size_level0=256, step_level0=256)
    write_features(path, feats.astype(np.float32), coords, FeatureAttrs(feature_dim=DIM), meta)
    return path


def spec() -> str:
    training = {**default_section("training"), "folds": 2, "epochs": 1, "min_epochs": 1, "device": "cpu",
                "val_fraction": 0.25}  # fmt: skip
    task = {"type": "classification", "classes": ["normal", "tumor"]}
    return json.dumps({"task_name": "subtype", "task": task, "training": training, "model_name": "m",
                       "model": {"model": "mean", "hidden": 4, "dropout": 0.0}})  # fmt: skip


def test_order_passes_the_cause_on_and_the_table_names_the_first_excluding_stage(tmp_path: Path) -> None:
    feats = tmp_path / "features"
    bag(feats / "good.h5", np.random.default_rng(0).normal(size=(3, DIM)))
    write_stub(feats / "bad.h5", QCOutcome("bad", "features", "unreadable tile at level 0"))
    tiles = tmp_path / "tiles"
    for sid in ("good", "bad"):  # both tiled fine
        write_coords(tiles / f"{sid}.h5", np.zeros((3, 2)), CoordsAttrs(0.5, 256, 256), [1.0, 1.0, 1.0])
    order = tmp_path / "order"
    for sid in ("good", "bad"):
        assert run("order", feats / f"{sid}.h5", "--out", order / f"{sid}.npy", "--on-bad-slide", "exclude") == 0
    stub = read_stub(order / "bad.npy")
    assert stub is not None and (stub.stage, stub.cause) == ("features", "unreadable tile at level 0")
    assert read_stub(order / "good.npy") is None and np.load(order / "good.npy").tolist() == [0, 1, 2]

    sheet = tmp_path / "slides.csv"
    sheet.write_text("slide_id,path,case_id\ngood,g.svs,p1\nbad,b.svs,p2\n")
    patterns = [tiles / "{slide_id}.h5", feats / "{slide_id}.h5", order / "{slide_id}.npy"]
    args = [a for p in patterns for a in ("--stage-file", p)]
    assert run("qc", "--slides", sheet, *args, "--out", tmp_path / "qc") == 0
    table = pd.read_csv(tmp_path / "qc" / "slides.csv", keep_default_na=False).set_index("slide_id")
    assert table.loc["good", ["status", "stage", "cause"]].tolist() == ["ok", "", ""]
    bad = table.loc["bad", ["status", "stage", "cause"]].tolist()
    assert bad == ["excluded", "features", "unreadable tile at level 0"]
    patients = pd.read_csv(tmp_path / "qc" / "patients.csv", keep_default_na=False).set_index("case_id")
    assert patients.loc["p2", "status"] == "excluded" and patients.loc["p1", "n_usable"] == 1


def test_splits_and_train_leave_stubbed_slides_out_without_a_qc_table(tmp_path: Path) -> None:
    feats = tmp_path / "features"
    rng = np.random.default_rng(1)
    rows = []
    for i in range(8):
        bag(feats / f"s{i}.h5", rng.normal(size=(4, DIM)) + i % 2)
        rows.append((f"p{i}", f"s{i}", ["normal", "tumor"][i % 2]))
    # p0 has a second slide that QC excluded; p9's only slide was excluded.
    write_stub(feats / "s0b.h5", QCOutcome("s0b", "tile", "no tissue found"))
    write_stub(feats / "s9.h5", QCOutcome("s9", "tile", "no tissue found"))
    rows += [("p0", "s0b", "normal"), ("p9", "s9", "tumor")]
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["case_id", "slide_id", "label"]).to_csv(labels, index=False)
    common = ["--labels", labels, "--features-dir", feats, "--settings", spec()]

    splits = tmp_path / "splits.csv"
    assert run("splits", *common, "--out", splits) == 0
    table = pd.read_csv(splits, dtype=str)
    assert "p9" not in set(table["case_id"]) and {f"p{i}" for i in range(8)} == set(table["case_id"])

    fold = int(table.loc[(table["case_id"] == "p0") & (table["split"] == "test"), "fold"].iloc[0])
    out = tmp_path / "model"
    assert run("train", *common, "--splits", splits, "--fold", fold, "--out", out) == 0
    preds = pd.read_csv(out / "test_predictions.csv", dtype=str).set_index("case_id")
    assert preds.loc["p0", "slide_ids"] == "s0"  # the excluded slide is not part of the patient's bag
    assert int(preds.loc["p0", "n_instances"]) == 4
