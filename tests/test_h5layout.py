"""The H5 attribute records: documented names, round trips, foreign files."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from mambamil import __version__
from mambamil.errors import InputFileError
from mambamil.h5layout import CoordsAttrs, FeatureAttrs, read_bag, read_coords, write_coords, write_features
from mambamil.train.engine import feature_attrs

COORDS = CoordsAttrs(
    target_mpp=0.5,
    patch_size=256,
    patch_size_level0=257,
    slide_mpp=0.499,
    mpp_source="aperio",
    level0_dim=(2220, 2967),
    patch_level=0,
    downsample=(1.0, 1.0),
    level_dim=(2220, 2967),
    downsampled_level_dim=(2220, 2967),
    overlap=0.0,
    step_level0=256.5,
    tissue_threshold=0.5,
    name="s1",
    slide_path="/data/s1.svs",
)


def documented_attrs(dataset: str) -> set[str]:
    """The attribute names docs/h5.md (the layout page :mod:`mambamil.h5layout` points to) lists for ``coords`` (of
    a coordinates file) or ``features``."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "h5.md").read_text()
    section = doc.split("Coordinates file" if dataset == "coords" else "Feature file")[1]
    block = section.split(f"\n    /{dataset} ")[1].split("attrs:")[1].split("\n    /")[0]
    names = {w.strip() for w in re.sub(r"\([^)]*\)", "", block).split(",")}
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names), names
    return names


def _raw_names(path: Path, dataset: str) -> set[str]:
    with h5py.File(path, "r") as f:
        return set(f[dataset].attrs)


@pytest.mark.parametrize(("record", "dataset"), [(CoordsAttrs, "coords"), (FeatureAttrs, "features")])
def test_records_name_the_documented_attributes(record: type, dataset: str) -> None:
    assert {f.name for f in fields(record)} - {"extra"} == documented_attrs(dataset)


def test_coords_round_trip(tmp_path: Path) -> None:
    assert CoordsAttrs.from_attrs(COORDS.to_attrs(), "x") == COORDS
    path = tmp_path / "c.h5"
    write_coords(path, np.zeros((3, 2)), COORDS, np.ones(3))
    assert _raw_names(path, "coords") == documented_attrs("coords")
    assert read_coords(path).meta == replace(COORDS, mambamil_version=__version__)
    with h5py.File(path, "r") as f:  # types on disk as the tile stage always wrote them
        a = f["coords"].attrs
        assert a["level0_dim"].dtype == np.int64 and a["downsample"].dtype == np.float64
        assert a["patch_size_level0"].dtype == np.int64 and isinstance(a["name"], str)


def test_features_round_trip_keeps_unknown_attributes(tmp_path: Path) -> None:
    meta = FeatureAttrs(encoder="e", feature_dim=4, input_size=(224, 224), mean=(0.5,) * 3, extra={"custom": "x"})
    path = tmp_path / "f.h5"
    coords_meta = replace(COORDS, extra={"save_path": "/clam"})
    write_features(path, np.ones((3, 4), np.float32), np.zeros((3, 2)), meta, coords_meta)
    bag = read_bag(path)
    assert bag.source == "mambamil" and bag.coords_meta == coords_meta
    assert bag.feature_meta == replace(meta, mambamil_version=__version__)
    assert _raw_names(path, "features") == {
        "encoder",
        "feature_dim",
        "input_size",
        "mean",
        "custom",
        "mambamil_version",
    }
    stored = feature_attrs(path)  # what checkpoints keep: both datasets' attributes, JSON-safe
    assert (
        stored["input_size"] == [224, 224] and stored["save_path"] == "/clam" and stored["level0_dim"] == [2220, 2967]
    )


def test_a_coordinates_file_lacking_an_attribute_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f["coords"] = np.zeros((2, 2), np.int64)
        f["coords"].attrs.update({"patch_size": 256, "patch_size_level0": 256})
    with pytest.raises(InputFileError, match="'coords' lacks attributes \\['target_mpp'\\]") as exc:
        read_coords(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_foreign_bags_read_with_few_or_no_attributes(tmp_path: Path) -> None:
    feats, coords = np.ones((5, 8), np.float32), np.arange(10).reshape(5, 2) * 256
    bare = tmp_path / "h5_files" / "s1.h5"  # CLAM: two datasets, no attributes
    bare.parent.mkdir()
    with h5py.File(bare, "w") as f:
        f["features"], f["coords"] = feats, coords
    bag = read_bag(bare)
    assert bag.source == "clam" and bag.coords_meta is None and bag.feature_meta is None
    assert feature_attrs(bare) == {}
    clam = {"patch_level": 0, "patch_size": 256, "downsample": [1.0, 1.0], "level_dim": [9, 9], "save_path": "/x"}
    with h5py.File(bare, "a") as f:
        f["coords"].attrs.update(clam)
    meta = read_bag(bare).coords_meta
    assert meta.patch_size == 256 and meta.downsample == (1.0, 1.0) and meta.extra == {"save_path": "/x"}
    assert meta.target_mpp is None and meta.to_attrs() == {**clam, "downsample": (1.0, 1.0), "level_dim": (9, 9)}
    torch = pytest.importorskip("torch")
    pt = tmp_path / "pt_files" / "s1.pt"  # a CLAM .pt bag takes coordinates and their attributes from h5_files/
    pt.parent.mkdir()
    torch.save(torch.from_numpy(feats), pt)
    bag = read_bag(pt)
    assert bag.source == "pt" and bag.coords_meta == meta and bag.coords_from == bare
    assert feature_attrs(pt)["coords_from"] == str(bare)
