"""Stain normalisation before the encoder: torchstain's own output on a real CMU-1 patch, the blank-tile fallback,
the shipped reference, what the feature file records, and the refusal of bags normalised differently."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mambamil.errors import InputFileError
from mambamil.features.datapath import DeviceResize
from mambamil.features.stain import DEFAULT_REFERENCE, StainNormaliser, read_reference, render_default_reference
from mambamil.h5layout import CoordsAttrs, FeatureAttrs, check_one_encoder, encoder_identity, write_features
from mambamil.inference import load_bag

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def real_patch(real_slide: Path) -> np.ndarray:
    """A 224-px tissue patch of CMU-1-Small-Region.svs at level 0, uint8 RGB."""
    import openslide

    with openslide.OpenSlide(str(real_slide)) as s:
        return np.asarray(s.read_region((1000, 1400), 0, (224, 224)).convert("RGB"))


def _chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_is_torchstains_own_output(method: str, real_patch: np.ndarray) -> None:
    """torchstain's documented use (README: fit on the target as a 0…255 (C, H, W) tensor, normalize the tile)
    on the shipped reference and a real patch gives the pixels the encoder receives."""
    import torchstain

    ref, _ = read_reference(DEFAULT_REFERENCE)
    lib = (
        torchstain.normalizers.MacenkoNormalizer if method == "macenko" else torchstain.normalizers.ReinhardNormalizer
    )(backend="torch")
    lib.fit(_chw(ref))
    expected = (
        lib.normalize(I=_chw(real_patch), stains=False)[0] if method == "macenko" else lib.normalize(I=_chw(real_patch))
    )
    expected = expected.permute(2, 0, 1).float()

    stain = StainNormaliser(method, None, CPU)
    got = stain(_chw(real_patch)[None])[0]
    torch.testing.assert_close(got, expected)
    assert stain.fallbacks == 0 and float((got - _chw(real_patch)).abs().mean()) > 2.0  # it changed the tile
    # and through the device path: identity resize, then the normaliser, then mean/std 0/1 → pixels / 255
    resize = DeviceResize((224, 224), (224, 224), (0.0,) * 3, (1.0,) * 3, CPU, "bilinear", 1.0, stain)
    torch.testing.assert_close(resize(torch.from_numpy(real_patch.copy())[None])[0] * 255, expected)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_blank_tile_falls_back_to_its_pixels(method: str, real_patch: np.ndarray) -> None:
    stain = StainNormaliser(method, None, CPU)
    blank = np.full((224, 224, 3), 242, np.uint8)  # glass: no tissue colour to fit
    batch = torch.stack([_chw(blank), _chw(real_patch)])
    out = stain(batch)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], batch[0])  # kept unnormalised
    assert not torch.equal(out[1], batch[1])
    assert stain.fallbacks == 1 and stain.tiles == 2


def test_shipped_reference_is_the_demo_generators_tile() -> None:
    rgb, sha = read_reference(DEFAULT_REFERENCE)
    assert np.array_equal(rgb, render_default_reference())
    assert len(sha) == 64


def test_bad_reference_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "ref.png"
    bad.write_text("not an image")
    with pytest.raises(InputFileError) as err:
        StainNormaliser("macenko", bad, CPU)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(blank)
    with pytest.raises(InputFileError, match="too little tissue colour"):
        StainNormaliser("reinhard", blank, CPU)


def test_feature_file_records_the_normalisation(demo_cohort: Path, tmp_path: Path) -> None:
    from mambamil import demo
    from mambamil.features.extract import FeatureSettings, extract_slide
    from mambamil.tiling import TilingSettings, tile_slide

    sid = demo.slide_ids(4)[1]
    path = demo.slide_path(demo_cohort, sid)
    coords = tile_slide(path, tmp_path, TilingSettings.from_config(), slide_id=sid).outputs["coords"]
    base = {"encoder": "timm:test_convnext", "weights": "random", "num_workers": 0, "device": "cpu"}
    plain = extract_slide(path, coords, tmp_path / "plain.h5", FeatureSettings.from_config(base), progress=False)
    macenko = FeatureSettings.from_config({**base, "stain_norm": "macenko"})
    normed = extract_slide(path, coords, tmp_path / "macenko.h5", macenko, progress=False)
    with h5py.File(normed.output, "r") as f:
        attrs = f["features"].attrs
        assert (
            attrs["stain_norm"] == "macenko" and attrs["stain_reference_sha256"] == read_reference(DEFAULT_REFERENCE)[1]
        )
        fit = json.loads(attrs["stain_fit"])
        assert np.asarray(fit["stain_matrix_he"]).shape == (3, 2) and len(fit["max_concentration"]) == 2
        assert np.isfinite(f["features"][:]).all()
    with h5py.File(plain.output, "r") as f:
        assert f["features"].attrs["stain_norm"] == "none"
    with pytest.raises(InputFileError, match=r"stain_norm (none vs macenko|macenko vs none)"):
        check_one_encoder({"a": plain.output, "b": normed.output})  # training refuses the mix
    assert extract_slide(path, coords, normed.output, macenko, progress=False).skipped  # same settings: skipped


def _bag(path: Path, **attrs) -> Path:
    meta = FeatureAttrs(feature_dim=4, encoder="timm:resnet18", encoder_kwargs="{}", state_dict_sha256="aa", **attrs)
    coords = CoordsAttrs(patch_size=256, target_mpp=0.5, patch_size_level0=512)
    rng = np.random.default_rng(0)
    write_features(path, rng.normal(size=(3, 4)).astype(np.float32), np.zeros((3, 2), np.int64), meta, coords)
    return path


def test_mixed_normalisation_is_refused_at_training_and_predict(tmp_path: Path) -> None:
    old = _bag(tmp_path / "old.h5")  # written before stain normalisation: unnormalised
    plain = _bag(tmp_path / "plain.h5", stain_norm="none")
    macenko = _bag(tmp_path / "m.h5", stain_norm="macenko", stain_reference_sha256="r1")
    other_ref = _bag(tmp_path / "m2.h5", stain_norm="macenko", stain_reference_sha256="r2")
    assert check_one_encoder({"old": old, "plain": plain})["stain_norm"] == "none"
    with pytest.raises(InputFileError, match="a study cannot mix two encoders"):
        check_one_encoder({"old": old, "m": macenko})
    with pytest.raises(InputFileError, match="stain_reference_sha256"):
        check_one_encoder({"m": macenko, "m2": other_ref})
    trained = encoder_identity(FeatureAttrs(encoder="timm:resnet18", encoder_kwargs="{}", state_dict_sha256="aa"))
    assert load_bag(plain, 4, encoder=trained).features.shape == (3, 4)
    with pytest.raises(InputFileError) as err:
        load_bag(macenko, 4, encoder=trained)  # predict: a checkpoint trained on unnormalised features
    assert "macenko stain normalisation" in str(err.value) and "\n" not in str(err.value)
