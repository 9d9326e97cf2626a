"""Foundation-model encoder presets: everything that decides an embedding, as data (one row per model).

Each :class:`Preset` pins the architecture (a builder ``family`` + its ``arch`` and keyword arguments), the
preprocessing the authors apply (input size, resize interpolation, crop, mean/std), the output recipe (class
token, class token + mean of the patch tokens after the class/register tokens, pooled, projection …), the output
dimension, the µm/px the model was trained at, where its weights come from (hub repository, file names of the
public release, key layout) and its licence. :mod:`mambamil.features.encoders` builds a model from a row with a
handful of builders; ``mambamil encoders`` prints the table.

Sources of the facts: each model's card on the Hugging Face hub (``hub_id``) and its reference loading code
(collected in TRIDENT's ``trident/patch_encoder_models/load.py``); ``reference`` names the recipe followed and
``sources`` where a fact was read (URL and line; ``tests/test_encoders.py`` pins the facts from them). A row's
``family`` names its builder in :mod:`mambamil.features.encoders`; ``<family>.<name>`` is its tag.

This module imports no torch, so listing presets is instant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

#: Output recipes: how a model's output becomes one vector per patch.
OUTPUTS = {
    "cls": "class token of the final (normed) tokens",
    "cls+mean": "concat(class token, mean of the patch tokens after the class and register tokens)",
    "mean": "mean of the patch tokens after the class and register tokens",
    "pooled": "the model's own pooled output (global average pool / timm's head-less forward)",
    "projection": "the image embedding after the model's projection head (CLIP image features)",
    "attn_pool": "contrastive attentional pooler + LayerNorm over the final tokens (CONCH)",
}
#: Resize interpolations the feature stage implements (``area``: cv2 INTER_AREA weights when shrinking).
INTERPOLATIONS = ("area", "bilinear", "bicubic")
#: Weight files a downloaded hub snapshot may hold, in the order they are looked for.
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model_vision.bin",
    "open_clip_pytorch_model.bin",
    "open_clip_model.safetensors",
)

# Symbolic values in ``arch_kwargs`` that the builders turn into Python objects (YAML cannot name them).
SWIGLU_PACKED = "timm.layers.SwiGLUPacked"
SILU = "torch.nn.SiLU"


@dataclass(frozen=True)
class Preset:
    """One encoder as its authors run it (see the module docstring)."""

    name: str
    title: str
    family: str  # builder: timm_vit | resnet_trunc | hf_clip | hf_vit | hf_dinov2 | conch_v1_5
    arch: str  # timm model name, or the transformers class / architecture it follows
    arch_kwargs: Mapping[str, Any]
    input_size: int
    interpolation: str
    crop_pct: float  # 1.0: the whole patch resized to input_size; < 1: resized to input/crop_pct, centre-cropped
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str
    prefix_tokens: int  # class + register tokens before the patch tokens
    dim: int
    mpp: float | None  # µm/px of the training patches (None: not a fixed resolution)
    hub_id: str
    files: tuple[str, ...]  # file names of the public release holding the weights this preset loads
    key_layout: str  # how the release's keys are named
    licence: str
    gated: bool
    reference: str
    ignore_prefixes: tuple[str, ...] = ()  # release keys the encoder does not use (text tower, classifier …)
    ignore_suffixes: tuple[str, ...] = ()  # buffers some releases store (e.g. CLIP position_ids)
    strip_prefix: str = ""  # removed when every release key carries it (e.g. ``vit.``)
    #: (regex, replacement) renames from the release's key names to the library's current ones, applied in order
    #: when the library no longer uses the release's names (transformers 5 renamed ViT/DINOv2 attention keys).
    key_renames: tuple[tuple[str, str], ...] = ()
    #: A few (key, shape) pairs of the release's state dict, and its parameter count (millions): what the tests
    #: check a full-size build against.
    release_keys: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    params_m: float = 0.0
    #: (patch px, µm/px) the authors tile at before resizing to ``input_size`` (None: tiles of ``input_size`` at
    #: ``mpp``); the tile-resolution check compares the tile stage's grid with it.
    tiling: tuple[int, float] | None = None
    #: Where each fact of this row was read (URL and line), for the tests that pin them.
    sources: tuple[str, ...] = ()

    @property
    def seen_mpp(self) -> float | None:
        """µm/px of the pixels the model sees: the tiling's µm/px scaled by the resize to ``input_size``."""
        if self.tiling is None:
            return self.mpp
        px, mpp = self.tiling
        return px * mpp / self.input_size

    @property
    def crop(self) -> str:
        if self.crop_pct >= 1.0:
            return "none (whole patch resized)"
        return f"resize to {round(self.input_size / self.crop_pct)} px, centre crop {self.input_size} px"

    def describe(self) -> dict[str, Any]:
        """A row of ``mambamil encoders``."""
        return {
            "name": self.name,
            "model": self.title,
            "dim": self.dim,
            "input": f"{self.input_size} px {self.interpolation}"
            + (f" crop {self.crop_pct:g}" if self.crop_pct < 1 else ""),
            "µm/px": "—"
            if self.mpp is None
            else f"{self.mpp:g}"
            + (f" ({self.tiling[0]} px → {self.input_size}, {self.seen_mpp:.3g} seen)" if self.tiling else ""),
            "output": self.output,
            "mean/std": f"{_fmt(self.mean)} / {_fmt(self.std)}",
            "weights": f"hf:{self.hub_id} ({', '.join(self.files)})",
            "licence": self.licence + (" (gated)" if self.gated else ""),
        }


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _kw(**kwargs: Any) -> Mapping[str, Any]:
    return MappingProxyType(kwargs)


# transformers ≤ 4 names (what the Phikon releases hold) → transformers ≥ 5 names.
_HF_ATTENTION = (
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
)
_HF_VIT = (
    *_HF_ATTENTION,
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layer.\1.mlp.fc2."),
    (r"^encoder\.layer\.", "layers."),
)

# Where the facts were read (commits as fetched on 2026-12-05).
_CLAM = "https://github.com/mahmoodlab/CLAM/blob/53e2409d4a8189c682c173382964a85f114f923c/"
_CLAM_2024_03 = "https://github.com/mahmoodlab/CLAM/blob/2e5bb7db6beefe2404ad311197aa94ba2211d338/"  # d613a3d~1
_TRIDENT = "https://github.com/mahmoodlab/TRIDENT/blob/a91fa8490e0210ebbbe58452c3babe009e0ab7ca/"
_TRIDENT_LOAD = _TRIDENT + "trident/patch_encoder_models/load.py"

_PRESETS = [
    Preset(
        name="resnet50_trunc",
        title="ResNet-50 (ImageNet) to layer3, bilinear to 224 px (CLAM / TRIDENT today)",
        family="resnet_trunc",
        arch="resnet50",
        arch_kwargs=_kw(),
        input_size=224,
        interpolation="bilinear",
        crop_pct=1.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="pooled",
        prefix_tokens=0,
        dim=1024,
        mpp=0.5,
        hub_id="timm/resnet50.tv_in1k",
        files=("model.safetensors", "pytorch_model.bin"),
        key_layout="torchvision/timm ResNet (conv1, bn1, layer1-4, fc); layer4 and fc unused",
        licence="BSD-3-Clause (torchvision weights)",
        gated=False,
        reference="CLAM extract_features_fp.py --target_patch_size 224 (torchvision Resize on PIL, antialiased "
        "bilinear) / TRIDENT resnet50",
        ignore_prefixes=("layer4.", "fc."),
        release_keys=_kw(**{"conv1.weight": (64, 3, 7, 7), "layer3.5.conv3.weight": (1024, 256, 1, 1)}),
        params_m=8.54,
        sources=(
            f"{_CLAM}extract_features_fp.py#L60 (--target_patch_size 224)",
            f"{_CLAM}utils/transform_utils.py#L7 (transforms.Resize)",
            f"{_TRIDENT_LOAD}#L715 (BILINEAR, antialias=True, 224)",
        ),
    ),
    Preset(
        name="resnet50_trunc_native",
        title="ResNet-50 (ImageNet) to layer3, native 512-px patches at 20× (CLAM ≤ 2024-03 / MambaMIL paper)",
        family="resnet_trunc",
        arch="resnet50",
        arch_kwargs=_kw(),
        input_size=512,
        interpolation="bilinear",
        crop_pct=1.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="pooled",
        prefix_tokens=0,
        dim=1024,
        mpp=0.5,
        hub_id="timm/resnet50.tv_in1k",
        files=("model.safetensors", "pytorch_model.bin"),
        key_layout="torchvision/timm ResNet (conv1, bn1, layer1-4, fc); layer4 and fc unused",
        licence="BSD-3-Clause (torchvision weights)",
        gated=False,
        reference="CLAM before d613a3d (target_patch_size=-1: no resize) on 512-px patches at 20×, as the MambaMIL "
        "paper's features",
        ignore_prefixes=("layer4.", "fc."),
        release_keys=_kw(**{"conv1.weight": (64, 3, 7, 7), "layer3.5.conv3.weight": (1024, 256, 1, 1)}),
        params_m=8.54,
        tiling=(512, 0.5),
        sources=(
            f"{_CLAM_2024_03}extract_features_fp.py#L69 (--target_patch_size default -1)",
            f"{_CLAM_2024_03}datasets/dataset_h5.py#L126-L131 (no resize when -1)",
        ),
    ),
    Preset(
        name="plip",
        title="PLIP (CLIP ViT-B/32, image embedding)",
        family="hf_clip",
        arch="CLIPVisionModelWithProjection",
        arch_kwargs=_kw(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
            projection_dim=512,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        input_size=224,
        interpolation="bicubic",
        crop_pct=1.0,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        output="projection",
        prefix_tokens=1,
        dim=512,
        mpp=None,
        hub_id="vinid/plip",
        files=("pytorch_model.bin", "model.safetensors"),
        key_layout="transformers CLIPModel (vision_model.*, visual_projection; text tower unused)",
        licence="research use (see model card)",
        gated=False,
        reference="PLIP model card (CLIPModel.get_image_features, CLIPProcessor); MambaMIL's second encoder",
        ignore_prefixes=("text_model.", "text_projection.", "logit_scale"),
        ignore_suffixes=("position_ids",),
        release_keys=_kw(
            **{
                "vision_model.embeddings.patch_embedding.weight": (768, 3, 32, 32),
                "vision_model.embeddings.position_embedding.weight": (50, 768),
                "visual_projection.weight": (512, 768),
            }
        ),
        params_m=87.85,
    ),
    Preset(
        name="uni_v1",
        title="UNI (ViT-L/16)",
        family="timm_vit",
        arch="vit_large_patch16_224",
        arch_kwargs=_kw(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True),
        input_size=224,
        interpolation="bilinear",
        crop_pct=1.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="cls",
        prefix_tokens=1,
        dim=1024,
        mpp=0.5,
        hub_id="MahmoodLab/UNI",
        files=("pytorch_model.bin",),
        key_layout="timm VisionTransformer",
        licence="CC-BY-NC-ND-4.0",
        gated=True,
        reference="UNI model card / TRIDENT uni_v1",
        release_keys=_kw(**{"pos_embed": (1, 197, 1024), "blocks.23.ls2.gamma": (1024,), "norm.weight": (1024,)}),
        params_m=303.35,
    ),
    Preset(
        name="uni_v2",
        title="UNI2-h (ViT-H/14, 8 registers, SwiGLU)",
        family="timm_vit",
        arch="vit_giant_patch14_224",
        arch_kwargs=_kw(
            img_size=224,
            patch_size=14,
            depth=24,
            num_heads=24,
            init_values=1e-5,
            embed_dim=1536,
            mlp_ratio=2.66667 * 2,
            no_embed_class=True,
            mlp_layer=SWIGLU_PACKED,
            act_layer=SILU,
            reg_tokens=8,
            dynamic_img_size=True,
        ),
        input_size=224,
        interpolation="bilinear",
        crop_pct=1.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="cls",
        prefix_tokens=9,
        dim=1536,
        mpp=0.5,
        hub_id="MahmoodLab/UNI2-h",
        files=("pytorch_model.bin",),
        key_layout="timm VisionTransformer (reg_token, SwiGLU fc1/fc2)",
        licence="CC-BY-NC-ND-4.0",
        gated=True,
        reference="UNI2-h model card / TRIDENT uni_v2",
        release_keys=_kw(
            **{
                "reg_token": (1, 8, 1536),
                "pos_embed": (1, 256, 1536),
                "blocks.23.mlp.fc1.weight": (8192, 1536),
                "blocks.23.mlp.fc2.weight": (1536, 4096),
            }
        ),
        params_m=681.0,
    ),
    Preset(
        name="conch_v1_5",
        title="CONCH v1.5 (ViT-L/16 vision tower, attentional pooler)",
        family="conch_v1_5",
        arch="vit_large_patch16_224",
        arch_kwargs=_kw(img_size=224, patch_size=16, init_values=1.0, pooler_dim=768, pooler_heads=8),
        input_size=448,
        interpolation="bilinear",
        crop_pct=1.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="attn_pool",
        prefix_tokens=1,
        dim=768,
        mpp=0.5,
        hub_id="MahmoodLab/conchv1_5",
        files=("pytorch_model_vision.bin",),
        key_layout="trunk.* (timm ViT-L/16), attn_pool_contrast.*, ln_contrast.*",
        licence="CC-BY-NC-ND-4.0",
        gated=True,
        reference="TITAN / TRIDENT conch_v15 (512-px tiles at 20× resized to 448 px, DINO position-embedding "
        "interpolation)",
        release_keys=_kw(
            **{
                "trunk.pos_embed": (1, 197, 1024),
                "trunk.blocks.23.ls1.gamma": (1024,),
                "attn_pool_contrast.query": (1, 768),
                "attn_pool_contrast.to_kv.weight": (1536, 1024),
                "ln_contrast.weight": (768,),
            }
        ),
        params_m=307.0,
        tiling=(512, 0.5),
        sources=(
            f"{_TRIDENT}README.md#L129 (conch_v15: --patch_size 512 --mag 20)",
            f"{_TRIDENT_LOAD}#L1302 (Conchv15InferenceEncoder._build(img_size=448))",
        ),
    ),
    Preset(
        name="virchow",
        title="Virchow (ViT-H/14, SwiGLU)",
        family="timm_vit",
        arch="vit_huge_patch14_224",
        arch_kwargs=_kw(
            img_size=224,
            init_values=1e-5,
            mlp_ratio=5.3375,
            global_pool="",
            dynamic_img_size=True,
            mlp_layer=SWIGLU_PACKED,
            act_layer=SILU,
        ),
        input_size=224,
        interpolation="bicubic",
        crop_pct=1.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="cls+mean",
        prefix_tokens=1,
        dim=2560,
        mpp=0.5,
        hub_id="paige-ai/Virchow",
        files=("pytorch_model.bin",),
        key_layout="timm VisionTransformer (SwiGLU fc1/fc2)",
        licence="Apache-2.0",
        gated=True,
        reference="Virchow model card (class token + mean of tokens 1…) / TRIDENT virchow",
        release_keys=_kw(
            **{
                "pos_embed": (1, 257, 1280),
                "blocks.31.mlp.fc1.weight": (6832, 1280),
                "blocks.31.mlp.fc2.weight": (1280, 3416),
            }
        ),
        params_m=631.2,
    ),
    Preset(
        name="virchow2",
        title="Virchow2 (ViT-H/14, 4 registers, SwiGLU)",
        family="timm_vit",
        arch="vit_huge_patch14_224",
        arch_kwargs=_kw(
            img_size=224,
            init_values=1e-5,
            mlp_ratio=5.3375,
            reg_tokens=4,
            global_pool="",
            dynamic_img_size=True,
            mlp_layer=SWIGLU_PACKED,
            act_layer=SILU,
        ),
        input_size=224,
        interpolation="bicubic",
        crop_pct=1.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="cls+mean",
        prefix_tokens=5,
        dim=2560,
        mpp=None,  # trained on mixed 5×/10×/20×/40× tiles: no one training resolution (20× is a usage choice)
        hub_id="paige-ai/Virchow2",
        files=("pytorch_model.bin",),
        key_layout="timm VisionTransformer (reg_token, SwiGLU fc1/fc2)",
        licence="CC-BY-NC-ND-4.0",
        gated=True,
        reference="Virchow2 model card (class token + mean of tokens 5…, after 4 registers) / TRIDENT virchow2",
        release_keys=_kw(
            **{"reg_token": (1, 4, 1280), "pos_embed": (1, 261, 1280), "blocks.31.mlp.fc1.weight": (6832, 1280)}
        ),
        params_m=631.2,
        sources=(
            "https://huggingface.co/papers/2408.00738 (Virchow 2: Scaling Self-Supervised Mixed Magnification "
            "Models in Pathology: 5×, 10×, 20×, 40× tiles)",
        ),
    ),
    Preset(
        name="h_optimus_0",
        title="H-optimus-0 (ViT-g/14, 4 registers)",
        family="timm_vit",
        arch="vit_giant_patch14_reg4_dinov2",
        arch_kwargs=_kw(img_size=224, init_values=1e-5, global_pool="token", dynamic_img_size=True),
        input_size=224,
        interpolation="bilinear",
        crop_pct=1.0,
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        output="cls",
        prefix_tokens=5,
        dim=1536,
        mpp=0.5,
        hub_id="bioptimus/H-optimus-0",
        files=("pytorch_model.bin",),
        key_layout="timm VisionTransformer (reg_token)",
        licence="Apache-2.0",
        gated=True,  # access requests on the hub page, approved automatically
        reference="H-optimus-0 model card / TRIDENT hoptimus0",
        release_keys=_kw(
            **{"reg_token": (1, 4, 1536), "pos_embed": (1, 256, 1536), "blocks.39.mlp.fc1.weight": (8192, 1536)}
        ),
        params_m=1134.8,
        sources=("https://huggingface.co/bioptimus/H-optimus-0 (gated: agree to share contact information)",),
    ),
    Preset(
        name="h_optimus_1",
        title="H-optimus-1 (ViT-g/14, 4 registers)",
        family="timm_vit",
        arch="vit_giant_patch14_reg4_dinov2",
        arch_kwargs=_kw(img_size=224, init_values=1e-5, global_pool="token", dynamic_img_size=True),
        input_size=224,
        interpolation="bilinear",
        crop_pct=1.0,
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        output="cls",
        prefix_tokens=5,
        dim=1536,
        mpp=0.5,
        hub_id="bioptimus/H-optimus-1",
        files=("pytorch_model.bin",),
        key_layout="timm VisionTransformer (reg_token)",
        licence="non-commercial (see model card)",
        gated=True,
        reference="H-optimus-1 model card / TRIDENT hoptimus1",
        release_keys=_kw(
            **{"reg_token": (1, 4, 1536), "pos_embed": (1, 256, 1536), "blocks.39.mlp.fc1.weight": (8192, 1536)}
        ),
        params_m=1134.8,
    ),
    Preset(
        name="gigapath",
        title="Prov-GigaPath tile encoder (ViT-g/16)",
        family="timm_vit",
        arch="vit_giant_patch14_dinov2",
        arch_kwargs=_kw(
            img_size=224,
            in_chans=3,
            patch_size=16,
            embed_dim=1536,
            depth=40,
            num_heads=24,
            init_values=1e-5,
            mlp_ratio=5.33334,
            dynamic_img_size=True,
        ),
        input_size=224,
        interpolation="bicubic",
        crop_pct=224 / 256,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="cls",
        prefix_tokens=1,
        dim=1536,
        mpp=0.5,
        hub_id="prov-gigapath/prov-gigapath",
        files=("pytorch_model.bin",),
        key_layout="timm VisionTransformer",
        licence="Apache-2.0",
        gated=True,
        reference="Prov-GigaPath model card (Resize 256 bicubic, CenterCrop 224) / TRIDENT gigapath",
        release_keys=_kw(**{"pos_embed": (1, 197, 1536), "blocks.39.mlp.fc1.weight": (8192, 1536)}),
        params_m=1134.8,
    ),
    Preset(
        name="phikon",
        title="Phikon (iBOT ViT-B/16)",
        family="hf_vit",
        arch="ViTModel",
        arch_kwargs=_kw(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            image_size=224,
            patch_size=16,
            qkv_bias=True,
            layer_norm_eps=1e-6,
        ),
        input_size=224,
        interpolation="bilinear",
        crop_pct=1.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="cls",
        prefix_tokens=1,
        dim=768,
        mpp=0.5,
        hub_id="owkin/phikon",
        files=("model.safetensors", "pytorch_model.bin"),
        key_layout="transformers ViTModel (embeddings.*, encoder.layer.*, layernorm; pooler unused)",
        licence="Owkin non-commercial",
        gated=False,
        reference="Phikon model card (last_hidden_state[:, 0]) / TRIDENT phikon",
        ignore_prefixes=("pooler.",),
        strip_prefix="vit.",
        key_renames=_HF_VIT,
        release_keys=_kw(
            **{
                "embeddings.cls_token": (1, 1, 768),
                "embeddings.position_embeddings": (1, 197, 768),
                "encoder.layer.11.output.dense.weight": (768, 3072),
            }
        ),
        params_m=85.8,
        sources=(
            'https://huggingface.co/owkin/phikon/blob/main/config.json ("layer_norm_eps": 1e-06)',
            "https://github.com/bytedance/ibot/blob/da316d82636a7a7356835ef224b13d5f3ace0489/models/"
            "vision_transformer.py#L138 (norm_layer=partial(nn.LayerNorm, eps=1e-6))",
        ),
    ),
    Preset(
        name="phikon_v2",
        title="Phikon-v2 (DINOv2 ViT-L/16)",
        family="hf_dinov2",
        arch="Dinov2Model",
        arch_kwargs=_kw(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            mlp_ratio=4,
            image_size=224,
            patch_size=16,
            layerscale_value=1e-5,
            layer_norm_eps=1e-6,
        ),
        input_size=224,
        interpolation="bilinear",
        crop_pct=1.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="cls",
        prefix_tokens=1,
        dim=1024,
        mpp=0.5,
        hub_id="owkin/phikon-v2",
        files=("model.safetensors",),
        key_layout="transformers Dinov2Model (embeddings.*, encoder.layer.*, layernorm)",
        licence="Owkin non-commercial",
        gated=False,
        reference="Phikon-v2 model card (last_hidden_state[:, 0]) / TRIDENT phikon_v2",
        key_renames=_HF_ATTENTION,
        release_keys=_kw(
            **{
                "embeddings.position_embeddings": (1, 197, 1024),
                "encoder.layer.23.layer_scale2.lambda1": (1024,),
                "encoder.layer.23.mlp.fc1.weight": (4096, 1024),
            }
        ),
        params_m=303.4,
    ),
]

#: Every preset by name.
PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}


def matches(preset: Preset, pattern: str) -> bool:
    """Whether the preset's name or its ``family.name`` tag matches a shell-style ``pattern`` (as timm's
    ``list_models``: ``timm_vit.*`` matches the timm ViT presets)."""
    from fnmatch import fnmatchcase

    return fnmatchcase(preset.name, pattern) or fnmatchcase(f"{preset.family}.{preset.name}", pattern)


def preset_table(pattern: str = "*") -> list[dict[str, Any]]:
    """The rows of ``mambamil encoders`` (the presets :func:`matches` ``pattern``)."""
    return [p.describe() for p in _PRESETS if matches(p, pattern)]
