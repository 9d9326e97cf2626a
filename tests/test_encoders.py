"""Encoder presets: model-card values pinned, full-size architectures against the release key layouts (meta
device, no download), reduced-depth copies on a real patch of CMU-1-Small-Region.svs loaded from files in the
release's format and key layout and compared with an independent forward of each recipe, clear errors for
another preset's or truncated weights, the timm: overrides, and the encoder identity that train/predict/heatmap
check downstream."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mambamil.cli import main
from mambamil.errors import InputFileError, MambamilError
from mambamil.features.datapath import DeviceResize
from mambamil.features.encoders import (
    TimmOverrides,
    build_preset,
    create_encoder,
    list_encoders,
    matching_presets,
    release_to_model_keys,
)
from mambamil.features.presets import PRESETS
from mambamil.h5layout import (
    CoordsAttrs,
    FeatureAttrs,
    check_one_encoder,
    encoder_identity,
    write_features,
)
from mambamil.inference import load_bag

IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

TRIDENT = "https://github.com/mahmoodlab/TRIDENT/blob/a91fa8490e0210ebbbe58452c3babe009e0ab7ca/"
TRIDENT_LOAD = TRIDENT + "trident/patch_encoder_models/load.py"
CLAM = "https://github.com/mahmoodlab/CLAM/blob/53e2409d4a8189c682c173382964a85f114f923c/"
CLAM_2024_03 = "https://github.com/mahmoodlab/CLAM/blob/2e5bb7db6beefe2404ad311197aa94ba2211d338/"  # before d613a3d

#: Facts as their sources state them, each with the place it was read (not a copy of the preset table):
#: (preset, attribute, value, source).
FACTS = [
    # CLAM today: --target_patch_size 224 (extract_features_fp.py L60), transforms.Resize(target_img_size) on a PIL
    # image (utils/transform_utils.py L7: torchvision's default BILINEAR, antialiased on PIL); TRIDENT
    # ResNet50InferenceEncoder: target_img_size=224, InterpolationMode.BILINEAR, antialias=True (load.py L715).
    ("resnet50_trunc", "input_size", 224, CLAM + "extract_features_fp.py#L60"),
    ("resnet50_trunc", "interpolation", "bilinear", CLAM + "utils/transform_utils.py#L7"),
    ("resnet50_trunc", "interpolation", "bilinear", TRIDENT_LOAD + "#L715"),
    ("resnet50_trunc", "mean", IMNET[0], TRIDENT_LOAD + "#L714 (get_constants('imagenet'))"),
    # CLAM before April 2024: --target_patch_size default -1 (extract_features_fp.py L69) → no resize
    # (datasets/dataset_h5.py L126-L131); the MambaMIL paper: 512 × 512 patches at 20×.
    ("resnet50_trunc_native", "tiling", (512, 0.5), CLAM_2024_03 + "extract_features_fp.py#L69"),
    ("resnet50_trunc_native", "input_size", 512, CLAM_2024_03 + "datasets/dataset_h5.py#L126-L131"),
    # CONCH v1.5: TRIDENT's table "--patch_size 512 --mag 20" (README.md L129), resized to img_size=448 (load.py L1302).
    ("conch_v1_5", "tiling", (512, 0.5), TRIDENT + "README.md#L129"),
    ("conch_v1_5", "input_size", 448, TRIDENT_LOAD + "#L1302"),
    # Phikon: "layer_norm_eps": 1e-06 in the released config (https://huggingface.co/owkin/phikon/blob/main/
    # config.json), as iBOT's ViT (partial(nn.LayerNorm, eps=1e-6)).
    ("phikon", "layer_norm_eps", 1e-6, "https://huggingface.co/owkin/phikon/blob/main/config.json"),
    (
        "phikon",
        "layer_norm_eps",
        1e-6,
        "https://github.com/bytedance/ibot/blob/da316d82636a7a7356835ef224b13d5f3ace0489/models/vision_transformer.py#L138",
    ),
    ("phikon", "interpolation", "bilinear", TRIDENT_LOAD + "#L486"),
    # Virchow2: "Scaling Self-Supervised Mixed Magnification Models in Pathology" (5×, 10×, 20×, 40× tiles).
    ("virchow2", "mpp", None, "https://huggingface.co/papers/2408.00738"),
    ("virchow2", "interpolation", "bicubic", TRIDENT_LOAD + "#L1103"),
    ("virchow", "interpolation", "bicubic", TRIDENT_LOAD + "#L1027"),
    # H-optimus-0: the hub page asks to agree to share contact information (gated, automatic approval).
    ("h_optimus_0", "gated", True, "https://huggingface.co/bioptimus/H-optimus-0"),
    ("h_optimus_0", "mean", (0.707223, 0.578729, 0.703617), TRIDENT_LOAD + "#L1175"),
    # Prov-GigaPath: Resize(256, BICUBIC), CenterCrop(224) (load.py L955-L956).
    ("gigapath", "interpolation", "bicubic", TRIDENT_LOAD + "#L955"),
    ("gigapath", "crop_pct", 224 / 256, TRIDENT_LOAD + "#L956"),
]


@pytest.mark.parametrize(("name", "attribute", "value", "source"), FACTS)
def test_preset_fact_from_its_source(name: str, attribute: str, value, source: str) -> None:
    p = PRESETS[name]
    got = p.arch_kwargs[attribute] if attribute in p.arch_kwargs else getattr(p, attribute)
    assert got == (pytest.approx(value) if isinstance(value, float) else value), f"{name}.{attribute} ({source})"


def test_conch_v1_5_sees_a_coarser_grid_than_its_tiles() -> None:
    """512 px at 0.5 µm/px resized to 448 px: the model sees ≈ 0.571 µm/px."""
    assert PRESETS["conch_v1_5"].seen_mpp == pytest.approx(512 * 0.5 / 448)
    assert PRESETS["uni_v1"].seen_mpp == 0.5


# -- full-size architectures on the meta device -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_full_size_architecture_has_the_release_layout(name: str) -> None:
    p = PRESETS[name]
    with torch.device("meta"):
        built = build_preset(p)
    own = built.target.state_dict()
    shapes = {k: tuple(v.shape) for k, v in own.items()}
    release = release_to_model_keys(dict(p.release_keys), own, p.strip_prefix, p.key_renames)
    for key, shape in release.items():
        assert shapes.get(key) == tuple(shape), f"{name}: {key} is {shapes.get(key)}, the release has {shape}"
    n = sum(v.numel() for v in built.target.parameters())
    assert n == pytest.approx(p.params_m * 1e6, rel=0.01), f"{name}: {n / 1e6:.2f} M parameters"


# -- reduced-depth copies on a real patch ---------------------------------------------------------------------
#: transformers ≥ 5 names → the names the Phikon releases carry (written independently of the loader's rules).
TO_RELEASE = [
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.", "encoder.layer."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
]
LAYERSCALE = re.compile(r"(\.ls[12]\.gamma|\.layer_scale[12]\.lambda1)$")


def release_state(name: str, depth: int | None) -> dict[str, torch.Tensor]:
    """A random reduced-depth state dict in the release's key layout, LayerScale gammas at 1 (input-sensitive)."""
    torch.manual_seed(7)
    built = build_preset(PRESETS[name], depth)
    state = {}
    for key, value in built.target.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        value = torch.ones_like(value) if LAYERSCALE.search(key) else value.clone()
        for rx, repl in TO_RELEASE if name in ("phikon", "phikon_v2") else []:
            key = re.sub(rx, repl, key)
        state[key] = value.contiguous()
    if name == "plip":  # the release is a whole CLIPModel: its text tower is present and unused
        state["text_model.embeddings.token_embedding.weight"] = torch.zeros(8, 4)
        state["text_projection.weight"], state["logit_scale"] = torch.zeros(512, 4), torch.tensor(2.6)
    return state


def save_release(state: dict[str, torch.Tensor], folder: Path, file_name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    if file_name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def real_patch(real_slide: Path) -> np.ndarray:
    """A 256 px tissue patch of CMU-1-Small-Region.svs at level 0 (≈ 0.5 µm/px), uint8 RGB."""
    import openslide

    with openslide.OpenSlide(str(real_slide)) as s:
        return np.asarray(s.read_region((1000, 1400), 0, (256, 256)).convert("RGB"))


def reference_input(patch: np.ndarray, name: str, mean=None, std=None) -> torch.Tensor:
    """The model card's preprocessing with PIL/torchvision: Resize(input / crop_pct) with the row's interpolation,
    CenterCrop(input), ToTensor, Normalize."""
    from PIL import Image
    from torchvision import transforms as T

    p = PRESETS[name]
    mean, std = mean or p.mean, std or p.std
    mode = T.InterpolationMode.BICUBIC if p.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    resize = T.Resize(round(p.input_size / p.crop_pct), interpolation=mode)
    x = T.ToTensor()(T.CenterCrop(p.input_size)(resize(Image.fromarray(patch))))
    return T.Normalize(mean, std)(x)[None]


def reference_forward(enc, name: str, x: torch.Tensor) -> torch.Tensor:
    """Each recipe written out independently of the encoder's wrapper (what the model cards / TRIDENT do)."""
    p, target = PRESETS[name], enc.model
    if p.family == "resnet_trunc":
        return target(x)
    if p.family == "timm_vit":
        vit = target.backbone
        if name.startswith("virchow"):
            out = vit(x)  # global_pool "": every token
            return torch.cat([out[:, 0], out[:, p.prefix_tokens :].mean(1)], dim=-1)
        return vit(x)  # timm's own class-token pooling
    if name == "plip":
        clip = target.model  # CLIP's image features: projection of the post-LayerNorm class token
        return clip.visual_projection(clip.vision_model(pixel_values=x).pooler_output)
    if p.family in ("hf_vit", "hf_dinov2"):
        return target.backbone(pixel_values=x).last_hidden_state[:, 0]
    assert name == "conch_v1_5"
    tokens = target.tokens(x)
    pool = target.attn_pool_contrast
    q = pool.to_q(pool.ln_q(pool.query))[None]
    k, v = pool.to_kv(pool.ln_k(tokens)).chunk(2, dim=-1)
    heads = pool.heads
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).permute(0, 2, 1, 3) for t in (q, k, v))
    attn = (torch.einsum("bhid,bhjd->bhij", q * q.shape[-1] ** -0.5, k)).softmax(-1)
    out = torch.einsum("bhij,bhjd->bhid", attn, v).permute(0, 2, 1, 3).flatten(2)
    return target.ln_contrast(pool.to_out(out)[:, 0])


@pytest.mark.parametrize("name", list(PRESETS))
def test_reduced_depth_preset_on_a_real_patch(name: str, real_patch: np.ndarray, tmp_path: Path) -> None:
    p = PRESETS[name]
    depth = None if p.family == "resnet_trunc" else 1
    folder = tmp_path / name  # a downloaded hub snapshot: the release's file name in a folder
    save_release(release_state(name, depth), folder, p.files[0])
    kwargs = {} if depth is None else {"depth": depth}
    enc = create_encoder(name, str(folder), **kwargs)
    assert enc.dim == p.dim and enc.weights == "checkpoint" and enc.weights_path.endswith(p.files[0])
    size = p.input_size
    resize = DeviceResize((256, 256), (size, size), enc.spec.mean, enc.spec.std, torch.device("cpu"),
                          enc.spec.interpolation, enc.spec.crop_pct)  # fmt: skip
    with torch.inference_mode():
        ours = enc.model(resize(torch.from_numpy(real_patch)[None]))
        ref = reference_forward(enc, name, reference_input(real_patch, name))
        wrong = reference_forward(enc, name, reference_input(real_patch, name, (0.5,) * 3, (0.5,) * 3))
    assert ours.shape == (1, p.dim)
    err = float((ours - ref).norm() / ref.norm())
    sensitivity = float((wrong - ref).norm() / ref.norm())
    assert err < 0.02, f"{name}: pipeline vs model-card recipe differ by {err:.2%}"
    assert sensitivity > 5 * err and sensitivity > 0.02, f"{name}: normalisation changes features by {sensitivity:.2%}"


# -- errors ---------------------------------------------------------------------------------------------------
def test_another_presets_weights_are_refused(tmp_path: Path) -> None:
    path = save_release(release_state("uni_v1", 1), tmp_path / "UNI", "pytorch_model.bin")
    with pytest.raises(InputFileError) as err:
        create_encoder("uni_v2", str(tmp_path / "UNI"), depth=1)
    msg = str(err.value)
    assert "\n" not in msg and "'uni_v2'" in msg and str(path) in msg
    assert "missing" in msg and "reg_token" in msg and "mis-shaped" in msg


def test_full_size_weights_are_recognised_by_preset() -> None:
    with torch.device("meta"):
        uni = build_preset(PRESETS["uni_v1"]).target.state_dict()
        virchow2 = build_preset(PRESETS["virchow2"]).target.state_dict()
    assert matching_presets(uni) == ["uni_v1"]
    assert matching_presets(virchow2) == ["virchow2"]


@pytest.mark.parametrize("file_name", ["pytorch_model.bin", "model.safetensors"])
def test_truncated_weights_name_preset_and_file(file_name: str, tmp_path: Path) -> None:
    state = release_state("phikon", 1) if file_name.endswith("safetensors") else release_state("uni_v1", 1)
    name = "phikon" if file_name.endswith("safetensors") else "uni_v1"
    path = save_release(state, tmp_path, file_name)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputFileError) as err:
        create_encoder(name, str(path), depth=1)
    assert str(path) in str(err.value) and f"'{name}'" in str(err.value) and "truncated" in str(err.value)


def test_snapshot_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputFileError, match="no weight file"):
        create_encoder("uni_v1", str(tmp_path))


def test_presets_refuse_overrides_and_kwargs() -> None:
    with pytest.raises(MambamilError, match="timm:<model> encoders only"):
        create_encoder("uni_v1", "random", overrides=TimmOverrides(mean=(0.5, 0.5, 0.5)))
    with pytest.raises(MambamilError, match="is a preset"):
        create_encoder("uni_v1", "random", init_values=1.0)


def test_timm_overrides_and_normalisation_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        plain = create_encoder("timm:test_vit", "random")
    assert "timm config's mean (0.5, 0.5, 0.5)" in caplog.text
    caplog.clear()
    over = TimmOverrides(mean=IMNET[0], std=IMNET[1], input_size=96, interpolation="bicubic", pooling="cls+mean")
    with caplog.at_level(logging.WARNING):
        enc = create_encoder("timm:test_vit", "random", overrides=over)
    assert "timm config's mean" not in caplog.text
    assert enc.spec.mean == IMNET[0] and enc.spec.input_size == (96, 96) and enc.spec.interpolation == "bicubic"
    assert enc.dim == 2 * plain.dim and enc.attrs().output == "cls+mean"


def test_encoders_verb_lists_every_preset(capsys: pytest.CaptureFixture) -> None:
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for name, p in PRESETS.items():
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {p.dim} |" in row and p.hub_id in row


def test_encoders_verb_filters_by_name_or_builder_tag(capsys: pytest.CaptureFixture) -> None:
    """`mambamil encoders PATTERN` lists what `list_encoders(PATTERN)` lists (name or builder.name tag, as timm's
    list_models); a pattern matching nothing is one line, exit 1."""
    assert main(["encoders", "timm_vit.*"]) == 0
    listed = {line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert listed - {"name"} == set(list_encoders("timm_vit.*")) and "resnet50_trunc" not in listed
    assert main(["encoders", "resnet50*"]) == 0
    assert "| resnet50_trunc_native |" in capsys.readouterr().out
    assert main(["encoders", "no_such_model"]) == 1
    assert "no encoder preset matches 'no_such_model'" in capsys.readouterr().err


# -- one encoder downstream -----------------------------------------------------------------------------------
def _bag(path: Path, **attrs) -> Path:
    rng = np.random.default_rng(0)
    meta = FeatureAttrs(feature_dim=4, **attrs)
    coords = CoordsAttrs(patch_size=256, target_mpp=0.5, patch_size_level0=512)
    write_features(path, rng.normal(size=(3, 4)).astype(np.float32), np.zeros((3, 2), np.int64), meta, coords)
    return path


def test_bags_of_another_encoder_are_refused(tmp_path: Path) -> None:
    r18 = dict(encoder="timm:resnet18", encoder_kwargs="{}", mean=IMNET[0], std=IMNET[1], state_dict_sha256="aa")
    r34 = {**r18, "encoder": "timm:resnet34", "state_dict_sha256": "bb"}
    a, b = _bag(tmp_path / "a.h5", **r18), _bag(tmp_path / "b.h5", **r34)
    trained = encoder_identity(r18)
    assert load_bag(a, 4, encoder=trained).features.shape == (3, 4)
    with pytest.raises(InputFileError) as err:
        load_bag(b, 4, encoder=trained)
    assert "timm:resnet34" in str(err.value) and "timm:resnet18" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputFileError, match="cannot mix two encoders"):
        check_one_encoder({"a": a, "b": b})
    # an older file (no preset/output attributes) of the same encoder still passes
    old = _bag(tmp_path / "old.h5", **{k: v for k, v in r18.items()})
    new = _bag(tmp_path / "new.h5", **r18, output="pooled", interpolation="area", preset="")
    assert check_one_encoder({"old": old, "new": new})["encoder"] == "timm:resnet18"


def test_tile_resolution_is_checked_against_the_preset() -> None:
    from mambamil.features.encoders import check_tile_resolution

    enc = create_encoder("phikon", "random", depth=1)
    assert check_tile_resolution(enc, 0.5, 256) is None and check_tile_resolution(enc, 0.53, 224) is None
    msg = check_tile_resolution(enc, 1.0, 256, "S1")
    assert msg is not None and "S1" in msg and "0.5 µm/px" in msg and "'phikon'" in msg
    timm_enc = create_encoder("timm:test_vit", "random")
    assert check_tile_resolution(timm_enc, 2.0, 256) is None  # no trained resolution to compare with


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_device_resize_matches_pil(mode: str, real_patch: np.ndarray) -> None:
    """The presets' bilinear/bicubic resize is PIL's (torchvision Resize on images): within one uint8 level for
    ≥ 99.5 % of pixels of a real patch; cv2-area weights (the default) are not."""
    from PIL import Image

    pil = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[mode]
    ref = np.asarray(Image.fromarray(real_patch).resize((224, 224), pil)).astype(np.float64)
    off = {}
    for m in (mode, "area"):
        resize = DeviceResize((256, 256), (224, 224), (0.0,) * 3, (1.0,) * 3, torch.device("cpu"), m)
        out = resize(torch.from_numpy(real_patch.copy())[None])[0].permute(1, 2, 0).numpy() * 255
        off[m] = float((np.abs(out - ref) > 1.5).mean())
    assert off[mode] < 0.005 and off["area"] > 0.1, off
    crop = DeviceResize((256, 256), (224, 224), (0.0,) * 3, (1.0,) * 3, torch.device("cpu"), mode, 224 / 256)
    x = torch.from_numpy(real_patch.copy())[None]
    assert crop(x).shape == (1, 3, 224, 224) and crop.resize_to == (256, 256) and crop.crop == (16, 16, 224, 224)
    torch.testing.assert_close(crop(x)[0], x[0, 16:240, 16:240].permute(2, 0, 1).float() / 255)  # 256 px: crop only


def test_conch_tiling_mismatch_is_named() -> None:
    """448-px tiles at 0.5 µm/px pass the µm/px check but are a 12.5 % smaller field than TITAN's 512-px tiles."""
    from mambamil.features.encoders import check_tile_resolution

    enc = create_encoder("conch_v1_5", "random", depth=1)
    assert check_tile_resolution(enc, 0.5, 512) is None
    msg = check_tile_resolution(enc, 0.5, 448, "S1")
    assert msg is not None and "S1" in msg and "512-px tiles at 0.5 µm/px resized to 448" in msg
    assert "0.571 µm/px seen" in msg and "tiling.patch_size to 512" in msg


def test_area_resized_resnet_bags_are_refused_next_to_a_bilinear_checkpoint(tmp_path: Path) -> None:
    """Features made before the fix (resnet50_trunc with cv2 area weights) carry interpolation=area."""
    common = dict(encoder="resnet50_trunc", encoder_kwargs="{}", preset="resnet50_trunc", mean=IMNET[0],
                  std=IMNET[1], input_size=(224, 224), output="pooled", crop_pct=1.0,
                  state_dict_sha256="aa")  # fmt: skip
    old = _bag(tmp_path / "old.h5", **common, interpolation="area")
    new = _bag(tmp_path / "new.h5", **common, interpolation="bilinear", stain_norm="none")
    trained = encoder_identity({**common, "interpolation": "bilinear"})
    assert load_bag(new, 4, encoder=trained).features.shape == (3, 4)
    with pytest.raises(InputFileError) as err:
        load_bag(old, 4, encoder=trained)
    assert "interpolation area vs bilinear" in str(err.value) or "interpolation bilinear vs area" in str(err.value)
    with pytest.raises(InputFileError, match="interpolation"):
        check_one_encoder({"old": old, "new": new})


@pytest.mark.parametrize("name", ["resnet50_trunc", "gigapath"])
def test_enlarge_path_matches_the_model_card_pipeline(name: str, demo_cohort: Path, tmp_path: Path) -> None:
    """A slide coarser than the encoder input (112-px patches for a 224-px model): the features equal the model
    card's PIL/torchvision pipeline (one Resize from the read pixels, CenterCrop, Normalize) on the same pixels."""
    import h5py
    import openslide
    from PIL import Image
    from torchvision import transforms as T

    from mambamil import demo
    from mambamil.features.extract import FeatureSettings, extract_slide
    from mambamil.h5layout import read_coords, write_coords
    from mambamil.tiling import TilingSettings, tile_slide

    sid = demo.slide_ids(4)[1]
    path = demo.slide_path(demo_cohort, sid)
    tiling = TilingSettings.from_config(patch_size=112, target_mpp=0.5, tissue_threshold=0.5)
    full = read_coords(tile_slide(path, tmp_path, tiling, slide_id=sid).outputs["coords"])
    coords = tmp_path / "first16.h5"  # 16 tissue patches keep the test fast
    write_coords(coords, full.coords[:16], full.meta, np.ones(16, np.float32))
    kwargs = {} if name == "resnet50_trunc" else {"depth": 1}
    settings = FeatureSettings.from_config(
        {"encoder": name, "weights": "random", "encoder_kwargs": kwargs, "num_workers": 0, "device": "cpu"}
    )
    out = extract_slide(path, coords, tmp_path / "f.h5", settings, progress=False).output
    with h5py.File(out, "r") as f:
        feats, xy, resized = f["features"][:12], f["coords"][:12], str(f["features"].attrs["resize"])
        assert float(f["coords"].attrs["slide_mpp"]) == pytest.approx(0.5, rel=0.05)  # level 0 read: 112 px
    # The model card (TRIDENT load.py L715 for ResNet-50, L955-L956 for GigaPath), written out independently.
    mode, size, crop = ("bilinear", 224, 224) if name == "resnet50_trunc" else ("bicubic", 256, 224)
    interp = T.InterpolationMode.BILINEAR if mode == "bilinear" else T.InterpolationMode.BICUBIC
    card = T.Compose([T.Resize(size, interpolation=interp), T.CenterCrop(crop), T.ToTensor(), T.Normalize(*IMNET)])
    assert f"112x112 → {size}x{size} px" in resized and "once" in resized
    enc = create_encoder(name, "random", **kwargs)
    with openslide.OpenSlide(str(path)) as s:
        pixels = [np.asarray(s.read_region((int(a), int(b)), 0, (112, 112)).convert("RGB")) for a, b in xy]
    x = torch.stack([card(Image.fromarray(p)) for p in pixels])
    ours = DeviceResize((112, 112), (224, 224), IMNET[0], IMNET[1], torch.device("cpu"), mode, 224 / size)
    levels = (ours(torch.from_numpy(np.stack(pixels))) - x) * torch.tensor(IMNET[1]).view(1, 3, 1, 1) * 255
    assert float((levels.abs() > 1.5).float().mean()) < 0.005  # the same pixels up to uint8 rounding
    with torch.inference_mode():
        ref = enc.model(x).numpy()
    err = np.linalg.norm(feats - ref) / np.linalg.norm(ref)
    assert err < 0.01, f"{name}: features vs model-card pipeline differ by {err:.2%}"


def test_one_registry_of_builders_and_tagged_rows() -> None:
    """Every preset names a registered builder; list_encoders filters names and builder.name tags (timm's shape);
    a new encoder is a row of a registered builder."""
    from dataclasses import replace

    from mambamil.features.encoders import _REGISTRY, list_encoders, register_preset

    assert all(p.family in _REGISTRY for p in PRESETS.values())
    assert list_encoders("resnet50*") == ["resnet50_trunc", "resnet50_trunc_native"]
    assert set(list_encoders("timm_vit.*")) == {n for n, p in PRESETS.items() if p.family == "timm_vit"}
    assert list_encoders() == list(PRESETS)
    with pytest.raises(ValueError, match="already registered"):
        register_preset(PRESETS["uni_v1"])
    with pytest.raises(ValueError, match="no builder"):
        register_preset(replace(PRESETS["uni_v1"], name="mine", family="nope"))


def test_original_recipe_feeds_native_512px_patches() -> None:
    """config/mambamil_original.yaml: the paper's features, CLAM's ResNet-50 on 512-px patches at 20×, unresized."""
    import yaml

    from mambamil.features.encoders import check_tile_resolution

    cfg = yaml.safe_load((Path(__file__).parents[1] / "config" / "mambamil_original.yaml").read_text())
    p = PRESETS[cfg["features"]["encoder"]]
    assert p.name == "resnet50_trunc_native"
    assert (cfg["tiling"]["patch_size"], cfg["tiling"]["target_mpp"]) == p.tiling == (512, 0.5)
    enc = create_encoder(p.name, "random")
    assert check_tile_resolution(enc, 0.5, 512) is None and "512-px tiles" in check_tile_resolution(enc, 0.5, 256)
    same = DeviceResize((512, 512), (512, 512), p.mean, p.std, torch.device("cpu"), p.interpolation, p.crop_pct)
    assert same.identity and same.describe() == "none: read at 512x512 px"
    shrink = DeviceResize((1024, 1024), (512, 512), p.mean, p.std, torch.device("cpu"), p.interpolation)
    assert shrink.describe().startswith("once on the device, 1024x1024 → 512x512 px: antialiased bilinear")
