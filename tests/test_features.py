"""The features stage: real-slide extraction, batched == one-by-one, resnet50_trunc == CLAM's recipe,
resume, bag readers (CLAM/TRIDENT/.pt), and every bad input as a one-line error with no output left behind."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from test_h5layout import documented_attrs

from mambamil import demo
from mambamil.cli import main
from mambamil.errors import InputFileError, MambamilError, SlideError
from mambamil.features import encoder_tag
from mambamil.features.encoders import IMAGENET_MEAN, IMAGENET_STD, create_encoder
from mambamil.features.extract import FeatureSettings, extract_slide
from mambamil.h5layout import read_bag, read_coords, read_features, write_coords
from mambamil.slide import open_slide
from mambamil.tiling import TilingSettings, tile_slide

TINY = "timm:test_convnext"  # 64-d, 160 px, mean/std 0.5: fast, and not ImageNet-normalised


def _settings(**kw) -> FeatureSettings:
    base = {"encoder": TINY, "weights": "random", "batch_size": 8, "num_workers": 2, "device": "cpu"}
    return FeatureSettings.from_config({**base, **kw})


@pytest.fixture(scope="module")
def real_coords(real_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiles")
    return tile_slide(real_slide, out, TilingSettings.from_config()).outputs["coords"]


@pytest.fixture(scope="module")
def real_features(real_slide: Path, real_coords: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("features") / "real.h5"
    result = extract_slide(real_slide, real_coords, out, _settings(), progress=False)
    assert not result.skipped and result.n_patches > 10
    return out


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# -- the real slide -------------------------------------------------------------------------------------------
def test_real_slide_features(real_features: Path, real_coords: Path) -> None:
    bag = read_features(real_features)
    coords = read_coords(real_coords).coords
    assert bag.source == "mambamil"
    assert bag.features.shape == (len(coords), 64)
    assert bag.features.dtype == np.float32
    assert np.isfinite(bag.features).all()
    assert np.array_equal(bag.coords, coords) and bag.coords.dtype == np.int64
    assert bag.features.std(axis=0).max() > 1e-4  # patches differ
    a = bag.feature_meta
    assert a.encoder == TINY and a.weights == "random" and a.random_weights
    assert "RANDOM" in a.warning
    assert a.input_size == (160, 160) and a.mean == (0.5, 0.5, 0.5) and a.std == (0.5, 0.5, 0.5)
    assert a.target_mpp == 0.5 and a.patch_size == 256 and a.feature_dim == 64
    assert a.slide_id == "CMU-1-Small-Region" and a.mambamil_version and not a.extra
    assert len(a.state_dict_sha256) == 64
    assert bag.coords_meta == read_coords(real_coords).meta
    with h5py.File(real_features, "r") as f:  # CLAM/TRIDENT readers find the tile stage's attributes on coords
        assert f["coords"].attrs["patch_level"] == 0 and f["coords"].attrs["patch_size"] == 256


def test_written_attributes_are_the_documented_ones(real_coords: Path, real_features: Path) -> None:
    with h5py.File(real_coords, "r") as c, h5py.File(real_features, "r") as f:
        assert set(c["coords"].attrs) == documented_attrs("coords")
        assert set(f["features"].attrs) == documented_attrs("features")
        for k, v in c["coords"].attrs.items():  # the feature file's coords carry the tile stage's, unchanged
            copied = np.asarray(f["coords"].attrs[k])
            assert np.array_equal(copied, v) and copied.dtype == np.asarray(v).dtype, k


def test_batched_workers_equal_one_by_one(real_slide: Path, real_features: Path, real_coords: Path) -> None:
    batched = read_features(real_features).features
    cf = read_coords(real_coords)
    enc = create_encoder(TINY, "random")
    with open_slide(real_slide, mpp=cf.meta.slide_mpp) as s, torch.inference_mode():
        size0 = cf.patch_size * cf.target_mpp / s.mpp
        for i, (x, y) in enumerate(cf.coords[:12]):  # 12 patches span two batches of 8
            img = s.read_region(float(x), float(y), (size0, size0), (160, 160))
            one = enc.model(enc.preprocess(torch.from_numpy(img)[None])).numpy()[0]
            # ≤ 1e-3 relative: the device resize matches cv2 except rounding ties (~1e-5 of pixels, one level).
            np.testing.assert_allclose(batched[i], one, rtol=0, atol=1e-3 * np.abs(one).max(), err_msg=f"patch {i}")


def test_deterministic_and_resumable(real_slide: Path, real_coords: Path, real_features: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.h5"
    extract_slide(real_slide, real_coords, again, _settings(), progress=False)
    assert np.array_equal(read_features(again).features, read_features(real_features).features)
    mtime = again.stat().st_mtime_ns
    # Batch size and workers do not change the numbers, so a rerun with them changed is skipped.
    res = extract_slide(real_slide, real_coords, again, _settings(batch_size=5, num_workers=0), progress=False)
    assert res.skipped and again.stat().st_mtime_ns == mtime
    # fp16 storage changes the output: recomputed.
    res = extract_slide(real_slide, real_coords, again, _settings(fp16_storage=True), progress=False)
    half = read_features(again)
    assert not res.skipped and half.features.dtype == np.float16 and half.feature_meta.storage_dtype == "float16"
    np.testing.assert_allclose(half.features, read_features(real_features).features, rtol=2e-3, atol=2e-3)
    # A corrupt existing output is recomputed, not trusted.
    again.write_bytes(b"garbage")
    res = extract_slide(real_slide, real_coords, again, _settings(), progress=False)
    assert not res.skipped and read_features(again).features.shape[1] == 64


def test_cli_with_config(real_slide: Path, real_coords: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"slides: s.csv\nlabels: l.csv\nfeatures:\n  encoder: {TINY}\n  weights: random\n  batch_size: 4\n")
    out = tmp_path / "f" / "x.h5"
    argv = ["-q", "features", str(real_slide), "--coords", str(real_coords), "--out", str(out), "--config", str(cfg)]
    assert main([*argv, "--num-workers", "0", "--fp16-storage"]) == 0
    assert "patches × 64" in capsys.readouterr().out
    assert read_features(out).features.dtype == np.float16
    assert main([*argv, "--num-workers", "0", "--fp16-storage"]) == 0
    assert "up to date" in capsys.readouterr().out


# -- encoders -------------------------------------------------------------------------------------------------
def test_resnet50_trunc_matches_clam_recipe(tmp_path: Path) -> None:
    """Same numbers as torchvision ResNet-50 run through layer3 + average pool (CLAM's resnet50_baseline)."""
    import torchvision

    torch.manual_seed(1)
    tv = torchvision.models.resnet50(weights=None).eval()
    for m in tv.modules():  # non-trivial BN statistics so a wrong layer order would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    ckpt = tmp_path / "resnet50_tv.pth"
    torch.save(tv.state_dict(), ckpt)  # includes layer4 and fc, which the truncation drops
    enc = create_encoder("resnet50_trunc", str(ckpt))
    assert enc.dim == 1024
    assert enc.spec.input_size == (224, 224) and enc.spec.mean == IMAGENET_MEAN and enc.spec.std == IMAGENET_STD
    assert enc.weights == "checkpoint" and enc.weights_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref = tv.layer3(tv.layer2(tv.layer1(h))).mean(dim=(2, 3))
        out = enc.model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 1024)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_preprocess_normalises_with_the_encoder_config() -> None:
    enc = create_encoder("resnet50_trunc", "random")
    img = torch.zeros(1, 224, 224, 3, dtype=torch.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 128, 0
    x = enc.preprocess(img)
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert x.shape == (1, 3, 224, 224) and x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x[0, :, 5, 7], torch.tensor(expected, dtype=torch.float32))
    r18 = create_encoder("timm:resnet18", "random")  # timm's own pretrained config
    assert r18.dim == 512 and r18.spec.input_size == (224, 224) and r18.spec.mean == IMAGENET_MEAN


def test_random_weights_are_seeded() -> None:
    a, b = create_encoder(TINY, "random"), create_encoder(TINY, "random")
    assert a.state_dict_sha256 == b.state_dict_sha256


def test_checkpoint_wrappers_load(tmp_path: Path) -> None:
    ref = create_encoder(TINY, "random")
    ckpt = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.model.state_dict().items()}, "epoch": 3}, ckpt)
    enc = create_encoder(TINY, str(ckpt))
    assert enc.state_dict_sha256 == ref.state_dict_sha256 and enc.weights_path == str(ckpt.resolve())


def test_encoder_tag() -> None:
    assert encoder_tag("resnet50_trunc", "hub") == "resnet50_trunc"
    assert encoder_tag("timm:resnet18", "random") == "timm-resnet18-random"
    assert encoder_tag("timm:hf-hub:MahmoodLab/uni", "/m/uni.bin") == "timm-hf-hub-MahmoodLab-uni"
    assert encoder_tag("timm:resnet18", "random", tag="mine") == "mine"


# -- bags from other tools ------------------------------------------------------------------------------------
def test_reads_clam_trident_and_pt_bags(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(7, 1024)).astype(np.float32)
    coords = rng.integers(0, 10_000, size=(7, 2)).astype(np.int32)
    clam_dir = tmp_path / "clam"
    (clam_dir / "h5_files").mkdir(parents=True)
    (clam_dir / "pt_files").mkdir()
    with h5py.File(clam_dir / "h5_files" / "s1.h5", "w") as f:  # CLAM: resizable chunked datasets, no attrs
        f.create_dataset("features", data=feats, maxshape=(None, 1024), chunks=(1, 1024))
        f.create_dataset("coords", data=coords, maxshape=(None, 2), chunks=(1, 2))
    torch.save(torch.from_numpy(feats), clam_dir / "pt_files" / "s1.pt")
    clam = read_bag(clam_dir / "h5_files" / "s1.h5")
    assert clam.source == "clam" and np.array_equal(clam.features, feats) and np.array_equal(clam.coords, coords)
    pt = read_bag(clam_dir / "pt_files" / "s1.pt")  # coords from the sibling h5_files/
    assert pt.source == "pt" and np.array_equal(pt.features, feats) and np.array_equal(pt.coords, coords)

    trident = tmp_path / "features_uni_v1" / "s2.h5"
    trident.parent.mkdir()
    with h5py.File(trident, "w") as f:
        ds = f.create_dataset("features", data=feats[:, :16])
        ds.attrs.update({"name": "s2", "savetodir": str(trident.parent)})
        cs = f.create_dataset("coords", data=coords)
        cs.attrs.update({"patch_size": 256, "target_magnification": 20, "level0_magnification": 40})
    bag = read_bag(trident)
    assert bag.source == "trident" and bag.dim == 16 and bag.coords_meta.extra["target_magnification"] == 20

    lone = tmp_path / "lone.pt"  # TRIDENT's .pt holds a numpy array; no coords anywhere
    torch.save(feats[:, :8], lone)
    bag = read_bag(lone)
    assert bag.coords is None and bag.features.shape == (7, 8)
    nosuffix = tmp_path / "bag_without_suffix"
    shutil.copy(trident, nosuffix)
    assert read_bag(nosuffix).source == "trident"


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (None, "not found"),
        (b"", "empty"),
        (b"not a bag at all", "neither an HDF5 nor a PyTorch file"),
        ({"coords": np.zeros((3, 2))}, "no 'features' dataset"),
        ({"features": np.zeros((3, 4)), "coords": np.zeros((2, 2))}, "3 feature rows but 2 coords"),
        ({"features": np.zeros(5)}, "expected (N, D)"),
    ],
)
def test_bad_bags(tmp_path: Path, content, cause: str) -> None:
    path = tmp_path / ("bag" if isinstance(content, bytes) else "bag.h5")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        with h5py.File(path, "w") as f:
            for k, v in content.items():
                f.create_dataset(k, data=v)
    with pytest.raises(InputFileError, match=cause.replace("(", r"\(").replace(")", r"\)")) as exc:
        read_bag(path)
    assert str(path) in str(exc.value)


# -- bad input through the CLI --------------------------------------------------------------------------------
def _coords_variant(real_coords: Path, out: Path, coords=None, **attrs) -> Path:
    cf = read_coords(real_coords)
    c = cf.coords if coords is None else coords
    write_coords(out, c, replace(cf.meta, **attrs), np.ones(len(c), np.float32))
    return out


BAD_CASES = [
    "coords_missing",
    "coords_empty_file",
    "coords_corrupt",
    "coords_no_patches",
    "coords_outside",
    "coords_other_slide",
    "no_weights",
    "checkpoint_missing",
    "checkpoint_corrupt",
    "checkpoint_mismatch",
    "unknown_encoder",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_one_line_no_output(case: str, real_slide: Path, real_coords: Path, tmp_path: Path, capsys) -> None:
    coords, weights, encoder = real_coords, "random", TINY
    expect: list[str]
    if case == "coords_missing":
        coords, expect = tmp_path / "nope.h5", ["nope.h5", "not found"]
    elif case == "coords_empty_file":
        coords = tmp_path / "empty.h5"
        coords.write_bytes(b"")
        expect = ["empty.h5", "empty"]
    elif case == "coords_corrupt":
        coords = tmp_path / "corrupt.h5"
        coords.write_bytes(real_coords.read_bytes()[:300])
        expect = ["corrupt.h5", "not a readable HDF5"]
    elif case == "coords_no_patches":
        coords = _coords_variant(real_coords, tmp_path / "none.h5", coords=np.zeros((0, 2), np.int64))
        expect = ["none.h5", "no patches", "CMU-1-Small-Region"]
    elif case == "coords_outside":
        c = read_coords(real_coords).coords.copy()
        c[3] = (2100, 100)  # 2100 + 257 > 2220
        coords = _coords_variant(real_coords, tmp_path / "outside.h5", coords=c)
        expect = ["CMU-1-Small-Region", "1 of", "outside the 2220x2967 px slide", "#3 at (2100, 100)"]
    elif case == "coords_other_slide":
        coords = _coords_variant(real_coords, tmp_path / "other.h5", level0_dim=(4000, 3000))
        expect = ["CMU-1-Small-Region", "4000x3000", "wrong slide"]
    elif case == "no_weights":
        weights, expect = None, ["no encoder weights given", "random"]
    elif case == "checkpoint_missing":
        weights, expect = str(tmp_path / "uni.bin"), ["uni.bin", "checkpoint not found"]
    elif case == "checkpoint_corrupt":
        weights = str(tmp_path / "bad.pth")
        Path(weights).write_bytes(b"PK\x03\x04 truncated zip")
        expect = ["bad.pth", "not a loadable checkpoint"]
    elif case == "checkpoint_mismatch":
        weights = str(tmp_path / "r18.pth")
        torch.save(create_encoder("timm:resnet18", "random").model.state_dict(), weights)
        expect = ["r18.pth", f"does not match encoder '{TINY}'", "missing", "unexpected"]
    else:
        encoder, expect = "timm:no_such_model", ["timm:no_such_model", "no such model"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.h5"
    argv = ["-q", "features", str(real_slide), "--coords", str(coords), "--out", str(out), "--encoder", encoder]
    argv += ["--num-workers", "0"] + (["--weights", weights] if weights else [])
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mambamil features: error:") and "\n" not in err, err
    for piece in expect:
        assert piece in err, err
    assert not out.exists() and _leftovers(out_dir) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_slide_failing_mid_read(demo_cohort: Path, tmp_path: Path, workers: int) -> None:
    """A slide whose later JPEG tiles are corrupt: one-line SlideError naming slide and patch, no output."""
    sid = demo.slide_ids(4)[0]
    src = demo.slide_path(demo_cohort, sid)
    coords = tile_slide(src, tmp_path / "tiles", TilingSettings.from_config(), slide_id=sid).outputs["coords"]
    bad = tmp_path / f"{sid}.tiff"
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    for k in range(len(offsets) // 2, len(offsets)):  # zero the second half of level 0's tiles
        data[offsets[k] + 20 : offsets[k] + counts[k]] = bytes(counts[k] - 20)
    bad.write_bytes(bytes(data))
    out = tmp_path / "out" / f"{sid}.h5"
    with pytest.raises(SlideError) as exc:
        extract_slide(bad, coords, out, _settings(num_workers=workers, batch_size=4), slide_id=sid, progress=False)
    msg = str(exc.value)
    assert sid in msg and "reading patch" in msg and "\n" not in msg
    assert not out.exists() and (not out.parent.exists() or _leftovers(out.parent) == [])


def test_cuda_requested_without_cuda(real_slide: Path, real_coords: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(MambamilError, match="CUDA is not available"):
        extract_slide(real_slide, real_coords, tmp_path / "x.h5", _settings(device="cuda"), progress=False)
