"""Bad input, handled: QC stubs for bad slides, bags that would give meaningless predictions, every sheet and
config problem at once, and the corner cases of issue 13 (real files, the real CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mambamil import demo
from mambamil.cli import main
from mambamil.config import default_section
from mambamil.errors import InputFileError
from mambamil.h5layout import CoordsAttrs, FeatureAttrs, read_bag, read_coords, write_coords, write_features
from mambamil.models import create_model, save_checkpoint
from mambamil.order import read_order
from mambamil.qc import SlideExcludedError, read_stub

DIM = 8

#: the features stage builds its encoder once per job, before any slide: a tiny one with random weights
ENCODER = ("--encoder", "timm:test_convnext", "--weights", "random", "--device", "cpu")


def run(*args, capsys=None) -> tuple[int, str]:
    rc = main(["--quiet", *[str(a) for a in args]])
    err = capsys.readouterr().err if capsys else ""
    return rc, err


def blank_slide(path: Path) -> Path:
    demo.write_pyramidal_tiff(path, np.full((1024, 1536, 3), 245, dtype=np.uint8), demo.DEMO_MPP)
    return path


def bag_file(path: Path, features: np.ndarray) -> Path:
    n = len(features)
    coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1)
    write_features(
        path,
        features.astype(np.float32),
        coords,
        FeatureAttrs(feature_dim=features.shape[1]),
        CoordsAttrs(patch_size=256),
    )
    return path


def checkpoint(path: Path, broken: bool = False) -> Path:
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=DIM, n_classes=2)
    if broken:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    extra = {"task": "subtype", "task_kind": "classification", "classes": ["normal", "tumor"], "in_dim": DIM}
    save_checkpoint(path, model, extra)
    return path


# -- QC stubs through the per-slide stages ------------------------------------------------------------------
def test_blank_slide_is_excluded_through_every_stage(tmp_path: Path, capsys) -> None:
    slide = blank_slide(tmp_path / "blank.tiff")
    tiles = tmp_path / "tiles"
    rc, _ = run("tile", slide, "--out", tiles, "--on-bad-slide", "exclude", capsys=capsys)
    assert rc == 0
    outcome = read_stub(tiles / "blank.h5")
    assert outcome is not None and outcome.stage == "tile" and "no tissue found" in outcome.cause
    assert (tiles / "blank.preview.png").exists() and (tiles / "blank.tissue.geojson").exists()
    with pytest.raises(SlideExcludedError, match="excluded by QC at the tile stage: no tissue found"):
        read_coords(tiles / "blank.h5")

    feats = tmp_path / "features" / "blank.h5"
    rc, _ = run(
        "features", slide, "--coords", tiles / "blank.h5", "--out", feats, *ENCODER, "--on-bad-slide", "exclude"
    )
    assert rc == 0 and read_stub(feats).stage == "tile"  # the cause travels on
    order = tmp_path / "order" / "blank.npy"
    assert run("order", feats, "--out", order, "--on-bad-slide", "exclude")[0] == 0
    assert "no tissue" in read_stub(order).cause
    with pytest.raises(SlideExcludedError):
        read_order(order, 3)
    with pytest.raises(SlideExcludedError):
        read_bag(feats)

    # stop mode: a stub input (or the bad slide itself) is a one-line error and writes nothing.
    rc, err = run("order", feats, "--out", tmp_path / "x.npy", capsys=capsys)
    assert rc == 1 and "excluded by QC" in err and len(err.strip().splitlines()) == 1
    rc, err = run("tile", slide, "--out", tmp_path / "stop", "--on-bad-slide", "stop", capsys=capsys)
    assert rc == 1 and "no tissue found" in err and not (tmp_path / "stop" / "blank.h5").exists()


def test_zero_byte_slide_and_empty_coords_are_excluded(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    assert run("tile", empty, "--out", tmp_path / "t", "--on-bad-slide", "exclude")[0] == 0
    assert "empty (0 bytes)" in read_stub(tmp_path / "t" / "empty.h5").cause

    # An empty bag (0 patches) reaching features: excluded, or a one-line error in stop mode.
    slide = blank_slide(tmp_path / "s.tiff")
    coords = tmp_path / "c" / "s.h5"
    write_coords(coords, np.zeros((0, 2)), CoordsAttrs(0.5, 256, 256), [])
    rc, err = run("features", slide, "--coords", coords, "--out", tmp_path / "f.h5", *ENCODER, capsys=capsys)
    assert rc == 1 and "0 coordinates" in err and not (tmp_path / "f.h5").exists()
    out = tmp_path / "f" / "s.h5"
    assert run("features", slide, "--coords", coords, "--out", out, *ENCODER, "--on-bad-slide", "exclude")[0] == 0
    assert read_stub(out).stage == "features" and "0 coordinates" in read_stub(out).cause


def test_a_config_error_is_not_an_exclusion(tmp_path: Path, capsys) -> None:
    slide = blank_slide(tmp_path / "s.tiff")
    rc, err = run("tile", slide, "--out", tmp_path, "--target-mpp", "-1", "--on-bad-slide", "exclude", capsys=capsys)
    assert rc == 1 and "target_mpp" in err and not (tmp_path / "s.h5").exists()


def test_qc_table_names_every_excluded_slide_and_patient(tmp_path: Path, capsys) -> None:
    tiles = tmp_path / "tiles"
    blank = blank_slide(tmp_path / "blank.tiff")
    (tmp_path / "empty.tiff").write_bytes(b"")
    for s in ("blank", "empty"):
        assert run("tile", tmp_path / f"{s}.tiff", "--out", tiles, "--on-bad-slide", "exclude")[0] == 0
    good = tmp_path / "good.h5"
    write_coords(good, np.zeros((1, 2)), CoordsAttrs(0.5, 256, 256), [1.0])
    (tiles / "good.h5").write_bytes(good.read_bytes())
    sheet = tmp_path / "slides.csv"
    sheet.write_text(f"slide_id,path,case_id\ngood,{blank},p1\nblank,{blank},p1\nempty,x.tiff,p2\n")
    capsys.readouterr()
    assert run("qc", "--slides", sheet, "--stage-file", tiles / "{slide_id}.h5", "--out", tmp_path / "qc")[0] == 0
    assert "2 of 3 slide(s) EXCLUDED" in capsys.readouterr().out
    slides = pd.read_csv(tmp_path / "qc" / "slides.csv", keep_default_na=False).set_index("slide_id")
    assert slides["status"].to_dict() == {"good": "ok", "blank": "excluded", "empty": "excluded"}
    patients = pd.read_csv(tmp_path / "qc" / "patients.csv", keep_default_na=False).set_index("case_id")
    assert patients.loc["p1", "status"] == "ok" and patients.loc["p2", "status"] == "excluded"
    assert "empty: " in patients.loc["p2", "cause"] and "0 bytes" in patients.loc["p2", "cause"]


# -- bags that must not become a prediction -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("nan", r"non-finite features \(NaN\) in 1 of 6 rows, first rows 3"),
        ("inf", r"non-finite features \(inf\) in 2 of 6 rows, first rows 1, 4"),
        ("zeros", "all 6 feature rows are zero"),
        ("empty", "empty bag: 0 patches"),
    ],
)
def test_bad_bags_are_refused_naming_the_rows(tmp_path: Path, values: str, message: str) -> None:
    x = np.random.default_rng(0).normal(size=(6, DIM))
    if values == "nan":
        x[3, 2] = np.nan
    elif values == "inf":
        x[[1, 4], 0] = np.inf
    elif values == "zeros":
        x[:] = 0
    else:
        x = x[:0]
    path = bag_file(tmp_path / "bag.h5", x)
    with pytest.raises(InputFileError, match=message) as info:
        read_bag(path)
    assert str(path) in str(info.value)


def test_predict_refuses_nan_features_and_nan_outputs(tmp_path: Path, capsys) -> None:
    ckpt = checkpoint(tmp_path / "ckpt.pt")
    x = np.random.default_rng(0).normal(size=(5, DIM))
    good = bag_file(tmp_path / "good.h5", x)
    x[2] = np.nan
    bad = bag_file(tmp_path / "bad.h5", x)
    out = tmp_path / "pred.csv"
    rc, err = run("predict", good, bad, "--checkpoint", ckpt, "--out", out, "--device", "cpu", capsys=capsys)
    assert rc == 1 and "bad.h5" in err and "first rows 2" in err and not out.exists()

    broken = checkpoint(tmp_path / "broken.pt", broken=True)
    rc, err = run("predict", good, "--checkpoint", broken, "--out", out, "--device", "cpu", capsys=capsys)
    assert rc == 1 and "non-finite" in err and "good.h5" in err and not out.exists()
    assert run("predict", good, "--checkpoint", ckpt, "--out", out, "--device", "cpu")[0] == 0
    assert pd.read_csv(out)[["prob_normal", "prob_tumor"]].notna().all().all()


def test_truncated_checkpoint_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    ckpt = checkpoint(tmp_path / "ckpt.pt")
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    bag = bag_file(tmp_path / "b.h5", np.ones((3, DIM)))
    rc, err = run("predict", bag, "--checkpoint", ckpt, "--out", tmp_path / "p.csv", capsys=capsys)
    assert rc == 1 and "ckpt.pt" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_empty_bag_reaching_heatmap_is_a_clear_error(tmp_path: Path, capsys) -> None:
    slide = blank_slide(tmp_path / "s.tiff")
    bag = bag_file(tmp_path / "s.h5", np.zeros((0, DIM)))
    ckpt = checkpoint(tmp_path / "ckpt.pt")
    rc, err = run("heatmap", slide, "--features", bag, "--checkpoint", ckpt, "--out", tmp_path / "h", capsys=capsys)
    assert rc == 1 and "empty bag: 0 patches" in err and "s.h5" in err


# -- cohort commands: QC table, one-class folds, all censored ----------------------------------------------
def cohort(tmp_path: Path, n: int = 8, survival: bool = False) -> tuple[Path, Path]:
    feats = tmp_path / "features"
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        bag_file(feats / f"s{i}.h5", rng.normal(size=(4, DIM)) + (i % 2))
        rows.append(
            {
                "case_id": f"p{i}",
                "slide_id": f"s{i}",
                "label": ["normal", "tumor"][i % 2],
                "time": 5 + i,
                "event": 0 if survival else 1,
            }
        )
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return feats, labels


def spec(task: str = "subtype", **training) -> str:
    tasks = {
        "subtype": {"type": "classification", "classes": ["normal", "tumor"]},
        "survival": {"type": "survival", "n_bins": 2},
    }
    train = {**default_section("training"), "folds": 2, "epochs": 1, "min_epochs": 1, "device": "cpu", **training}
    return json.dumps(
        {"task_name": task, "task": tasks[task], "training": train, "model_name": "m", "model": {"model": "mean"}}
    )


def test_splits_and_train_leave_out_qc_excluded_slides(tmp_path: Path, caplog) -> None:
    from mambamil.qc import QCOutcome, write_stub

    feats, labels = cohort(tmp_path)
    write_stub(feats / "s9.h5", QCOutcome("s9", "tile", "no tissue found"))
    with open(labels, "a") as fh:
        fh.write("p9,s9,tumor,9,1\n")
    qc = tmp_path / "qc.csv"
    table = pd.DataFrame({"slide_id": [f"s{i}" for i in (*range(8), 9)], "status": "ok", "stage": "", "cause": ""})
    table["case_id"] = table["slide_id"].str.replace("s", "p")
    table.loc[8, ["status", "stage", "cause"]] = ["excluded", "tile", "no tissue found"]
    table.to_csv(qc, index=False)
    splits = tmp_path / "splits.csv"
    common = ["--labels", labels, "--features-dir", feats, "--settings", spec()]
    rc = main(["splits", *map(str, common), "--qc", str(qc), "--out", str(splits)])
    assert rc == 0
    assert "slide s9 EXCLUDED by QC (tile: no tissue found)" in caplog.text and "['p9']" in caplog.text
    assert "p9" not in set(pd.read_csv(splits, dtype=str)["case_id"])
    # Without the table, the stubs in the features folder say the same.
    assert run("splits", *common, "--out", tmp_path / "s2.csv")[0] == 0
    assert run("train", *common, "--qc", qc, "--splits", splits, "--fold", 0, "--out", tmp_path / "m")[0] == 0
    assert (tmp_path / "m" / "test_predictions.csv").exists()


def test_one_class_training_fold_and_all_censored_are_clear_errors(tmp_path: Path, capsys) -> None:
    feats, labels = cohort(tmp_path)
    df = pd.read_csv(labels)
    df["label"] = "normal"
    df.loc[0, "label"] = "tumor"  # only one tumor patient: some fold trains on one class
    df.to_csv(labels, index=False)
    rc, err = run(
        "splits",
        "--labels",
        labels,
        "--features-dir",
        feats,
        "--settings",
        spec(),
        "--out",
        tmp_path / "s.csv",
        capsys=capsys,
    )
    assert rc == 1 and "one class only" in err

    feats, labels = cohort(tmp_path / "surv", survival=True)
    rc, err = run(
        "splits",
        "--labels",
        labels,
        "--features-dir",
        feats,
        "--settings",
        spec("survival"),
        "--out",
        tmp_path / "s.csv",
        capsys=capsys,
    )
    assert rc == 1 and "only 0 observed events" in err and len(err.strip().splitlines()) == 1


# -- every problem of a file at once ------------------------------------------------------------------------
def test_label_sheet_reports_every_problem_with_lines(tmp_path: Path) -> None:
    from mambamil.sheets import read_label_sheet

    p = tmp_path / "labels.csv"
    p.write_text(
        "case_id,slide_id,label,time,event\nc1,s1,tumor,10,1\nc1,s1,tumor,10,1\nc2,s2,x,-3,1\nc3,s3,normal,4,2\n"
    )
    with pytest.raises(InputFileError) as info:
        read_label_sheet(p)
    msg = str(info.value)
    assert "3 problems" in msg and "duplicate slide_id(s) ['s1'] on lines 2, 3" in msg
    assert "line 4 (slide s2): time '-3" in msg and "line 5 (slide s3): event '2" in msg


def test_sheets_cross_check_reports_everything(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.tiff").write_bytes(b"x")
    (tmp_path / "slides.csv").write_text("slide_id,path\na,a.tiff\nb,missing.tiff\n")
    (tmp_path / "labels.csv").write_text("case_id,slide_id,label\nc1,a,tumor\nc3,zz,maybe\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"slides: {tmp_path / 'slides.csv'}\nlabels: {tmp_path / 'labels.csv'}\n"
        "tasks: {subtype: {type: classification, classes: [normal, tumor]}}\n"
    )
    rc, err = run("validate-config", cfg, "--sheets", capsys=capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "4 sheet problem(s)" in err
    assert "['zz'] on line 3 are not in the slide sheet" in err
    assert "['b'] on line 3 have no row in the label sheet" in err
    assert "missing.tiff" in err and "do not exist" in err
    assert "['maybe'] on line 3 are not in classes" in err

    cfg.write_text(f"slides: {tmp_path / 'nope.csv'}\nlabels: {tmp_path / 'labels.csv'}\n")
    rc, err = run("validate-config", cfg, "--sheets", capsys=capsys)
    assert rc == 1 and "nope.csv: slide sheet not found" in err


def test_validate_config_reports_every_schema_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("slides: a\nlabels: b\ntiling: {patch_size: 3, overlap: 2}\nqc: {on_bad_slide: maybe}\n")
    rc, err = run("validate-config", bad, capsys=capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "3 errors" in err
    assert "tiling.patch_size" in err and "tiling.overlap" in err and "qc.on_bad_slide" in err
